//! OpenTelemetry spans of one request (`[gateway.tracing]`): a server span from arrival until
//! the response body was sent, a child for each plugin hook call, and a client span for each
//! try upstream, whose context goes to the target in `traceparent`. Attributes follow the OTel
//! HTTP semantic conventions.
//!
//! Nothing here runs when tracing is off: the session holds no [`RequestSpan`], and a client's
//! `traceparent` goes upstream untouched.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use http::{Method, Request, Version};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use wasmgate_runtime::HookCall;

use crate::upstream::Target;

/// Sets the propagator's fields but an empty one: the propagator writes `tracestate` even when
/// the trace has none (a trace the gateway started, a client that sent none), and an empty
/// field would reach the target, and every hop behind it, as if someone had sent it.
struct NonEmpty<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for NonEmpty<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            HeaderInjector(self.0).set(key, value);
        }
    }
}

/// The server span of a request, and what its children need.
#[derive(Debug)]
pub(crate) struct RequestSpan {
    tracer: SdkTracer,
    /// The client's context with the server span in it: the parent of every other span.
    cx: Context,
    /// One moment on both clocks, to place hook calls measured with `Instant`.
    clock: (SystemTime, Instant),
    /// The method as the conventions name it (`_OTHER` beyond the standard ones).
    method: &'static str,
}

impl RequestSpan {
    /// Starts the server span of `req`, in the trace of the client's `traceparent` when it sent
    /// a valid one.
    pub(crate) fn start<B>(
        tracer: &SdkTracer,
        req: &Request<B>,
        tls: bool,
        peer: IpAddr,
        client: IpAddr,
    ) -> Self {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        let clock = (SystemTime::now(), Instant::now());
        let method = method_name(req.method());
        let builder = tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_start_time(clock.0);
        let mut span = tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            let mut attributes = vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("url.path", req.uri().path().to_owned()),
                KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
                KeyValue::new("network.protocol.version", protocol_version(req.version())),
                KeyValue::new("client.address", client.to_string()),
                KeyValue::new("network.peer.address", peer.to_string()),
            ];
            let host = req
                .uri()
                .host()
                .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok());
            if let Some(host) = host {
                let (host, port) = split_host(host);
                attributes.push(KeyValue::new("server.address", host.to_owned()));
                if let Some(port) = port {
                    attributes.push(KeyValue::new("server.port", i64::from(port)));
                }
            }
            if let Some(agent) = req.headers().get(http::header::USER_AGENT)
                && let Ok(agent) = agent.to_str()
            {
                attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
            }
            span.set_attributes(attributes);
        }
        Self {
            tracer: tracer.clone(),
            cx: parent.with_span(span),
            clock,
            method,
        }
    }

    /// Whether the request is sampled: only then are its hook calls worth recording.
    pub(crate) fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// The request's trace, for the access log.
    pub(crate) fn trace_id(&self) -> TraceId {
        self.cx.span().span_context().trace_id()
    }

    /// Names the span after the route that matched (`GET users`).
    pub(crate) fn routed(&self, route: &str) {
        let span = self.cx.span();
        if span.is_recording() {
            span.update_name(format!("{} {route}", self.method));
            span.set_attribute(KeyValue::new("wasmgate.route", route.to_owned()));
        }
    }

    /// Adds a span for each plugin hook call made.
    pub(crate) fn hooks(&self, calls: Vec<HookCall>) {
        if !self.cx.span().is_recording() {
            return;
        }
        for call in calls {
            let hook = if call.response {
                "on_response"
            } else {
                "on_request"
            };
            let start = self.wall(call.started);
            let mut span = self.tracer.build_with_context(
                self.tracer
                    .span_builder(format!("plugin {} {hook}", call.plugin))
                    .with_kind(SpanKind::Internal)
                    .with_start_time(start)
                    .with_attributes([
                        KeyValue::new("wasmgate.plugin", call.plugin.to_string()),
                        KeyValue::new("wasmgate.plugin.hook", hook),
                        KeyValue::new("wasmgate.plugin.outcome", call.outcome),
                    ]),
                &self.cx,
            );
            if !matches!(call.outcome, "continue" | "respond" | "reject") {
                span.set_status(Status::error(call.outcome));
            }
            span.end_with_timestamp(start + call.elapsed);
        }
    }

    /// Starts the client span of one try at `target` and puts its context in the request's
    /// `traceparent` (and the client's `tracestate`), for the target to continue the trace.
    pub(crate) fn upstream<B>(
        &self,
        req: &mut Request<B>,
        upstream: &str,
        target: &Target,
        resend: u32,
    ) -> UpstreamSpan {
        let method = self.method;
        let mut span = self.tracer.build_with_context(
            self.tracer.span_builder(method).with_kind(SpanKind::Client),
            &self.cx,
        );
        if span.is_recording() {
            let (host, port) = split_host(target.authority.as_str());
            let scheme = if target.pool.is_tls() {
                "https"
            } else {
                "http"
            };
            let mut attributes = vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("server.address", host.to_owned()),
                // The query is left out: it may carry credentials.
                KeyValue::new(
                    "url.full",
                    format!("{scheme}://{}{}", target.authority, req.uri().path()),
                ),
                KeyValue::new("wasmgate.upstream", upstream.to_owned()),
                KeyValue::new("wasmgate.target", target.key.clone()),
            ];
            let port = port.unwrap_or(if target.pool.is_tls() { 443 } else { 80 });
            attributes.push(KeyValue::new("server.port", i64::from(port)));
            if resend > 0 {
                attributes.push(KeyValue::new(
                    "http.request.resend_count",
                    i64::from(resend),
                ));
            }
            span.set_attributes(attributes);
        }
        let cx = self
            .cx
            .with_remote_span_context(span.span_context().clone());
        TraceContextPropagator::new().inject_context(&cx, &mut NonEmpty(req.headers_mut()));
        UpstreamSpan { span }
    }

    /// Ends the server span with the status sent to the client.
    pub(crate) fn finish(self, status: u16) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                // Server spans: a 4xx is the client's error, not the gateway's.
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }

    fn wall(&self, at: Instant) -> SystemTime {
        let (system, instant) = self.clock;
        match at.checked_duration_since(instant) {
            Some(after) => system + after,
            None => system - instant.duration_since(at),
        }
    }
}

/// The client span of one try upstream; ends when dropped.
#[derive(Debug)]
pub(crate) struct UpstreamSpan {
    span: Span,
}

impl UpstreamSpan {
    /// The target answered with `status`.
    pub(crate) fn responded(&mut self, status: http::StatusCode) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() || status.is_client_error() {
                self.span
                    .set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
                self.span.set_status(Status::error(""));
            }
        }
    }

    /// The try failed before a response: `kind` names how (`timeout`, `connect`, …).
    pub(crate) fn failed(&mut self, kind: &'static str, detail: impl ToString) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new("error.type", kind));
            self.span.set_status(Status::error(detail.to_string()));
        }
    }
}

impl Drop for UpstreamSpan {
    fn drop(&mut self) {
        self.span.end();
    }
}

fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        // The conventions' name for methods outside the standard set: low cardinality.
        _ => "_OTHER",
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The host and port of `host[:port]` or `[v6]:port`.
fn split_host(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.split_once(':') {
        Some((host, port)) => (host, port.parse().ok()),
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_hosts_and_ports() {
        assert_eq!(split_host("api.example.com"), ("api.example.com", None));
        assert_eq!(
            split_host("api.example.com:8443"),
            ("api.example.com", Some(8443))
        );
        assert_eq!(split_host("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host("[::1]"), ("::1", None));
    }
}
