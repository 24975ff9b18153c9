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
use http::{HeaderName, HeaderValue, StatusCode};

use crate::bindings::wasmgate::plugin::types::ResponseSpec;
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
    /// A plugin failed with `on_error = "deny"`.
    Failed(Failure),
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
    /// reached the upstream), in reverse order.
    pub async fn on_response(
        &self,
        ran: usize,
        mut view: ResponseView,
        mut ctx: Context,
        request_id: &HeaderValue,
    ) -> (ResponseView, Context, Result<(), Failure>) {
        for binding in self.bindings[..ran.min(self.bindings.len())].iter().rev() {
            if !binding.hooks.response {
                continue;
            }
            let result;
            (view, ctx, result) = binding.on_response(view, ctx, request_id).await;
            match result {
                Ok(Outcome::Continue) => {}
                Ok(Outcome::Respond(spec)) => match reply(spec) {
                    Ok(replacement) => view = replacement,
                    Err(detail) => {
                        let failure = binding.failure(FailureKind::Error, detail);
                        if !self.tolerated(binding, &failure, request_id) {
                            return (view, ctx, Err(failure));
                        }
                    }
                },
                Err(failure) => {
                    if !self.tolerated(binding, &failure, request_id) {
                        return (view, ctx, Err(failure));
                    }
                }
            }
        }
        (view, ctx, Ok(()))
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

/// A plugin's `respond` as a response. Invalid headers from the plugin are dropped (and logged);
/// an answer with more than [`MAX_HEADERS`] headers is a plugin failure.
fn reply(spec: ResponseSpec) -> Result<ResponseView, String> {
    if spec.headers.len() > MAX_HEADERS {
        return Err(format!(
            "answered with {} headers (at most {MAX_HEADERS})",
            spec.headers.len()
        ));
    }
    let mut response = http::Response::new(());
    *response.status_mut() =
        StatusCode::from_u16(spec.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in spec.headers {
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
