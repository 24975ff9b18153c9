//! A route's plugin chain: the request phase in route order, the response phase in reverse.
//!
//! * A `respond` in the request phase skips the rest of the request phase and the upstream; the
//!   response phase then runs for the plugins that already saw the request (those before the one
//!   that answered), in reverse order. So a CORS plugin placed before an auth plugin still decorates
//!   the auth plugin's 401.
//! * A `respond` in the response phase replaces the response; the plugins before it in route
//!   order still see the replacement.
//! * A failure with `on_error = "deny"` ends the request with a 5xx made by the proxy; the
//!   response phase does not run. With `on_error = "allow"` the plugin is skipped for this request
//!   (and the failure counted and logged).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::bindings::wasmgate::plugin::types::{Rejection as WitRejection, ResponseSpec};
use crate::host::MAX_HEADERS;
use crate::host::{Context, RequestView, ResponseView};
use crate::pool::{Binding, Failure, FailureKind, Outcome};
use wasmgate_config::OnError;

/// The plugin chain of one route.
#[derive(Debug)]
pub struct Chain {
    bindings: Vec<Arc<Binding>>,
    needs_body: bool,
    has_response_hooks: bool,
}

/// How the request phase ended.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Every plugin let the request continue.
    Continue,
    /// A plugin answered; run the response phase for the first `ran` plugins on this response.
    Respond {
        /// The answer.
        response: ResponseView,
        /// How many plugins saw the request before the answer.
        ran: usize,
    },
    /// A plugin refused the request; render the refusal, then run the response phase for the
    /// first `ran` plugins on it.
    Reject {
        /// The refusal.
        rejection: PluginRejection,
        /// How many plugins saw the request before the refusal.
        ran: usize,
    },
    /// A plugin failed with `on_error = "deny"`.
    Failed(Failure),
}

/// How (a stretch of) the response phase ended.
#[derive(Debug)]
pub enum ResponseOutcome {
    /// Every plugin let the response continue.
    Done,
    /// A plugin replaced the response with a refusal; render it, then go on with the response
    /// phase of the first `remaining` plugins.
    Reject {
        /// The refusal.
        rejection: PluginRejection,
        /// The plugins still to run, before the one that refused.
        remaining: usize,
    },
}

/// A plugin's refusal (`reject`), checked: the proxy answers it in the gateway's error format.
#[derive(Debug)]
pub struct PluginRejection {
    /// 400-599.
    pub status: StatusCode,
    /// The error code: 1-64 characters of `a-z`, `0-9` and `_`.
    pub error: String,
    /// The message for people.
    pub message: String,
    /// The plugin's extra headers (invalid ones dropped).
    pub headers: HeaderMap,
}

impl Chain {
    pub(crate) fn new(bindings: Vec<Arc<Binding>>) -> Self {
        let needs_body = bindings.iter().any(|b| b.needs_body);
        let has_response_hooks = bindings.iter().any(|b| b.hooks.response);
        Self {
            bindings,
            needs_body,
            has_response_hooks,
        }
    }

    /// Whether any plugin of the chain needs buffered bodies.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Whether the response phase has anything to run.
    pub fn has_response_hooks(&self) -> bool {
        self.has_response_hooks
    }

    /// The chain's bindings, in route order.
    pub fn bindings(&self) -> &[Arc<Binding>] {
        &self.bindings
    }

    /// Runs the request phase. The view and context are handed back, edited.
    pub async fn on_request(
        &self,
        mut view: RequestView,
        mut ctx: Context,
        request_id: &HeaderValue,
    ) -> (RequestView, Context, RequestOutcome) {
        for (i, binding) in self.bindings.iter().enumerate() {
            if !binding.hooks.request {
                continue;
            }
            let result;
            (view, ctx, result) = binding.on_request(view, ctx, request_id).await;
            match result {
                Ok(Outcome::Continue) => {}
                Ok(Outcome::Respond(spec)) => match reply(spec) {
                    Ok(response) => {
                        return (view, ctx, RequestOutcome::Respond { response, ran: i });
                    }
                    Err(detail) => {
                        let failure = binding.failure(FailureKind::Error, detail);
                        if !self.tolerated(binding, &failure, request_id) {
                            return (view, ctx, RequestOutcome::Failed(failure));
                        }
                    }
                },
                Ok(Outcome::Reject(rejection)) => match checked(rejection) {
                    Ok(rejection) => {
                        return (view, ctx, RequestOutcome::Reject { rejection, ran: i });
                    }
                    Err(detail) => {
                        let failure = binding.failure(FailureKind::Error, detail);
                        if !self.tolerated(binding, &failure, request_id) {
                            return (view, ctx, RequestOutcome::Failed(failure));
                        }
                    }
                },
                Err(failure) => {
                    if !self.tolerated(binding, &failure, request_id) {
                        return (view, ctx, RequestOutcome::Failed(failure));
                    }
                }
            }
        }
        (view, ctx, RequestOutcome::Continue)
    }

    /// Runs the response phase over the first `ran` plugins (all of them when the request
    /// reached the upstream), in reverse order. It stops at a refusal, which the caller renders
    /// and hands back with the `remaining` plugins.
    pub async fn on_response(
        &self,
        ran: usize,
        mut view: ResponseView,
        mut ctx: Context,
        request_id: &HeaderValue,
    ) -> (ResponseView, Context, Result<ResponseOutcome, Failure>) {
        let ran = ran.min(self.bindings.len());
        for (i, binding) in self.bindings[..ran].iter().enumerate().rev() {
            if !binding.hooks.response {
                continue;
            }
            let result;
            (view, ctx, result) = binding.on_response(view, ctx, request_id).await;
            let detail = match result {
                Ok(Outcome::Continue) => continue,
                Ok(Outcome::Respond(spec)) => match reply(spec) {
                    Ok(replacement) => {
                        view = replacement;
                        continue;
                    }
                    Err(detail) => detail,
                },
                Ok(Outcome::Reject(rejection)) => match checked(rejection) {
                    Ok(rejection) => {
                        let outcome = ResponseOutcome::Reject {
                            rejection,
                            remaining: i,
                        };
                        return (view, ctx, Ok(outcome));
                    }
                    Err(detail) => detail,
                },
                Err(failure) => {
                    if !self.tolerated(binding, &failure, request_id) {
                        return (view, ctx, Err(failure));
                    }
                    continue;
                }
            };
            let failure = binding.failure(FailureKind::Error, detail);
            if !self.tolerated(binding, &failure, request_id) {
                return (view, ctx, Err(failure));
            }
        }
        (view, ctx, Ok(ResponseOutcome::Done))
    }

    /// Number of plugins in the chain.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    fn tolerated(&self, binding: &Binding, failure: &Failure, request_id: &HeaderValue) -> bool {
        let request_id = request_id.to_str().unwrap_or("");
        match binding.on_error {
            OnError::Allow => {
                tracing::warn!(
                    route = &*failure.route,
                    plugin = &*failure.plugin,
                    kind = failure.kind.as_str(),
                    request_id,
                    detail = %failure.detail,
                    "plugin failed; skipped (on_error = \"allow\")"
                );
                true
            }
            OnError::Deny => {
                tracing::error!(
                    route = &*failure.route,
                    plugin = &*failure.plugin,
                    kind = failure.kind.as_str(),
                    request_id,
                    detail = %failure.detail,
                    "plugin failed"
                );
                false
            }
        }
    }
}

/// A plugin's `reject`, checked like a `respond`: a status outside 400-599, an invalid code or
/// more than [`MAX_HEADERS`] headers is a plugin failure; invalid headers are dropped (and
/// logged).
fn checked(r: WitRejection) -> Result<PluginRejection, String> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| format!("rejected with status {} (400-599)", r.status))?;
    let valid_code = !r.error.is_empty()
        && r.error.len() <= 64
        && r.error
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_code {
        return Err(format!(
            "rejected with error code {:?} (1-64 characters of a-z, 0-9 and _)",
            r.error
        ));
    }
    Ok(PluginRejection {
        status,
        error: r.error,
        message: r.message,
        headers: header_map(r.headers)?,
    })
}

/// A plugin's answer headers; invalid ones are dropped (and logged).
fn header_map(pairs: Vec<(String, String)>) -> Result<HeaderMap, String> {
    if pairs.len() > MAX_HEADERS {
        return Err(format!(
            "answered with {} headers (at most {MAX_HEADERS})",
            pairs.len()
        ));
    }
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => {
                tracing::warn!(header = %name, "plugin response header is not valid HTTP; dropped")
            }
        }
    }
    Ok(headers)
}

/// A plugin's `respond` as a response. Invalid headers from the plugin are dropped (and logged);
/// an answer with more than [`MAX_HEADERS`] headers is a plugin failure.
fn reply(spec: ResponseSpec) -> Result<ResponseView, String> {
    let mut response = http::Response::new(());
    *response.status_mut() =
        StatusCode::from_u16(spec.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = header_map(spec.headers)?;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(spec.body.len()),
    );
    let (parts, ()) = response.into_parts();
    Ok(ResponseView {
        parts,
        body: Some(Bytes::from(spec.body)),
        body_replaced: true,
    })
}
