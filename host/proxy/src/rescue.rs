//! The one place where data-path failures become HTTP responses.
//!
//! Every failure answers with a small JSON body, `{"error": "...", "message": "...", "request_id":
//! "..."}`, and the request id header; plugin refusals (`reject`) get the same shape. The `error`
//! code and `message` are fixed per kind: details (addresses, OS errors) go to the logs, never to
//! the client.

use std::time::Duration;

use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use http::{Method, Response, StatusCode};

use bytes::Bytes;
use wasmgate_runtime::{FailureKind, PluginRejection, ResponseView};

use crate::body::Body;
use crate::forward::REQUEST_ID;
use crate::pool::ConnectError;

/// Why a request could not be served normally.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request header section too large: {0}")]
    HeadersTooLarge(&'static str),
    #[error("request body larger than the route's max_body")]
    PayloadTooLarge,
    #[error(
        "client paused longer than header_read_timeout while sending a body buffered for plugins"
    )]
    BodyTimeout,
    #[error("upstream response body failed while buffering it for plugins")]
    UpstreamBody,
    #[error(transparent)]
    Plugin(wasmgate_runtime::Failure),
    #[error("no route for this request")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed(HeaderValue),
    #[error("plain-HTTP request to a route served over https only")]
    HttpsRequired { http1: bool },
    #[error("upstream {upstream} target {target}: connect failed: {source}")]
    Connect {
        upstream: String,
        target: String,
        source: ConnectError,
    },
    #[error("upstream {upstream} target {target}: request failed: {source}")]
    Upstream {
        upstream: String,
        target: String,
        source: hyper::Error,
    },
    #[error("upstream {upstream} target {target}: no response within {timeout:?}")]
    Timeout {
        upstream: String,
        target: String,
        timeout: Duration,
    },
}

impl Rejection {
    /// The status, the error code and the message the client gets.
    fn answer(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", "bad request"),
            Self::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "request header fields too large",
            ),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no_route", "no route matched"),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body too large",
            ),
            Self::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "request body timed out",
            ),
            Self::UpstreamBody => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "upstream unavailable",
            ),
            Self::Plugin(f) => match f.kind {
                FailureKind::Timeout | FailureKind::Unavailable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "plugin_unavailable",
                    "plugin unavailable",
                ),
                FailureKind::Error | FailureKind::Trap | FailureKind::OutOfMemory => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "plugin_failed",
                    "plugin failed",
                ),
            },
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            ),
            Self::HttpsRequired { .. } => (
                StatusCode::UPGRADE_REQUIRED,
                "https_required",
                "this route is served over https only",
            ),
            Self::Connect { .. } | Self::Upstream { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "upstream unavailable",
            ),
            Self::Timeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "upstream timed out",
            ),
        }
    }

    /// The response for this rejection. `request_id` is echoed in the body and header.
    pub(crate) fn into_response(self, request_id: &HeaderValue, method: &Method) -> Response<Body> {
        let (status, error, message) = self.answer();
        match (&self, status) {
            // The chain already logged the failure with its route, plugin and detail.
            (Self::Plugin(_), _) => {}
            (_, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT) => {
                tracing::warn!(request_id = ?request_id, error = %self, "upstream failure");
            }
            _ => tracing::debug!(request_id = ?request_id, error = %self, "request rejected"),
        }
        let (mut parts, body) = error_answer(status, error, message, request_id);
        match self {
            Self::MethodNotAllowed(allow) => {
                parts.headers.insert(ALLOW, allow);
            }
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to. HTTP/2 has no Upgrade
            // (RFC 9113 §8.2.2), so only HTTP/1 answers carry it.
            Self::HttpsRequired { http1: true } => {
                parts
                    .headers
                    .insert(UPGRADE, HeaderValue::from_static("TLS/1.2, HTTP/1.1"));
                // RFC 9110 §7.8: an Upgrade field comes with the "upgrade" connection option.
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            }
            _ => {}
        }
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            Body::full(body)
        };
        Response::from_parts(parts, body)
    }
}

/// A plugin's refusal, answered like the gateway's own errors: its status and headers, the JSON
/// body with its code and message and the request id.
pub(crate) fn plugin_rejection(r: PluginRejection, request_id: &HeaderValue) -> ResponseView {
    let (mut parts, body) = error_answer(r.status, &r.error, &r.message, request_id);
    let mut headers = r.headers;
    for (name, value) in parts.headers.drain() {
        if let Some(name) = name {
            headers.insert(name, value);
        }
    }
    parts.headers = headers;
    ResponseView {
        parts,
        body: Some(body),
        body_replaced: true,
    }
}

/// Every error answer's head and body: `status`, `{"error": …, "message": …, "request_id": …}`
/// as `application/json`, and the request id header.
fn error_answer(
    status: StatusCode,
    error: &str,
    message: &str,
    request_id: &HeaderValue,
) -> (http::response::Parts, Bytes) {
    let body = serde_json::json!({
        "error": error,
        "message": message,
        "request_id": request_id.to_str().unwrap_or_default(),
    })
    .to_string();
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = status;
    let headers = &mut parts.headers;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(REQUEST_ID, request_id.clone());
    (parts, Bytes::from(body))
}
