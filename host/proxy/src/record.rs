//! What the gateway remembers of each request until its response body has been sent: then the
//! request is counted (`wasmgate_requests_total`, `wasmgate_request_duration_seconds`) and
//! logged (one access log line). A client that goes away mid-body is recorded when the body is
//! dropped, so every request is recorded exactly once.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderValue, Method};
use http_body::{Frame, SizeHint};
use wasmgate_telemetry::{AccessEntry, AccessLog, RouteMetrics, millis};

use crate::body::{Body, BodyError};
use crate::spans::RequestSpan;

/// What the request path learns on the way: filled in by `serve`.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// The index of the route that matched.
    pub(crate) route: Option<usize>,
    /// The upstream target the request went to.
    pub(crate) target: Option<Authority>,
    /// Time spent in plugin hooks.
    pub(crate) plugins: Duration,
    /// The route cache's answer: `HIT`, `MISS` or `BYPASS`.
    pub(crate) cache: Option<&'static str>,
    /// The coding the gateway compressed the response with.
    pub(crate) encoding: Option<&'static str>,
}

/// The access log's fields known when the request arrives; gathered only when the log is on.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub(crate) time: SystemTime,
    pub(crate) client: IpAddr,
    pub(crate) host: Option<String>,
    pub(crate) path: String,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) client_cert: Option<Arc<str>>,
}

/// Everything needed to record one finished request.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) start: Instant,
    pub(crate) method: Method,
    pub(crate) status: u16,
    pub(crate) request_id: HeaderValue,
    pub(crate) route: Arc<RouteMetrics>,
    pub(crate) trace: Trace,
    pub(crate) arrival: Option<Box<Arrival>>,
    pub(crate) log: Arc<AccessLog>,
    /// The server span, ended here (`[gateway.tracing]`).
    pub(crate) span: Option<Box<RequestSpan>>,
}

impl Record {
    fn finish(self, bytes_out: u64) {
        let elapsed = self.start.elapsed();
        self.route.finished(&self.method, self.status, elapsed);
        let trace_id = self.span.map(|span| {
            let id = span.trace_id();
            span.finish(self.status);
            id
        });
        let Some(arrival) = self.arrival else { return };
        let trace_id = trace_id.map(|id| id.to_string());
        let target = self.trace.target.as_ref().map(Authority::as_str);
        let route = self.trace.route.map(|_| self.route.name());
        self.log.write(&AccessEntry {
            time: arrival.time,
            request_id: self.request_id.to_str().unwrap_or(""),
            client: arrival.client,
            method: self.method.as_str(),
            host: arrival.host.as_deref(),
            path: &arrival.path,
            route,
            upstream: target,
            status: self.status,
            bytes_in: arrival.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            duration_ms: millis(elapsed),
            plugin_ms: millis(self.trace.plugins),
            client_cert: arrival.client_cert.as_deref(),
            trace_id: trace_id.as_deref(),
            cache: self.trace.cache,
            encoding: self.trace.encoding,
        });
    }
}

/// A response body that records its request once it has been sent or dropped.
#[derive(Debug)]
pub(crate) struct Recorded {
    inner: Body,
    sent: u64,
    record: Option<Box<Record>>,
}

impl Recorded {
    pub(crate) fn new(inner: Body, record: Record) -> Self {
        Self {
            inner,
            sent: 0,
            record: Some(Box::new(record)),
        }
    }

    fn finish(&mut self) {
        if let Some(record) = self.record.take() {
            record.finish(self.sent);
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
