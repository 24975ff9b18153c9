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
    /// A request whose body length could be read two ways: answered, and its connection closed.
    #[error("bad request framing: {0}")]
    Framing(&'static str),
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
    #[error(
        "upstream {upstream} target {target}: answered the websocket handshake with a wrong sec-websocket-accept"
    )]
    WebSocketAccept { upstream: String, target: String },
    #[error("upstream {upstream}: {reason}")]
    Overloaded { upstream: String, reason: String },
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
            Self::BadRequest(_) | Self::Framing(_) => {
                (StatusCode::BAD_REQUEST, "bad_request", "bad request")
            }
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
            Self::Connect { .. } | Self::Upstream { .. } | Self::WebSocketAccept { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "upstream unavailable",
            ),
            Self::Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_overloaded",
                "upstream overloaded",
            ),
            Self::Timeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "upstream timed out",
            ),
        }
    }

    fn log(&self, status: StatusCode, request_id: &HeaderValue) {
        match (self, status) {
            // The chain already logged the failure with its route, plugin and detail.
            (Self::Plugin(_), _) => {}
            (_, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT) => {
                tracing::warn!(request_id = ?request_id, error = %self, "upstream failure");
            }
            _ => tracing::debug!(request_id = ?request_id, error = %self, "request rejected"),
        }
    }

    /// The answer to a gRPC request: a gRPC error with the status that says what happened
    /// (`DEADLINE_EXCEEDED` when the upstream's time, or the call's `grpc-timeout`, ran out).
    pub(crate) fn into_grpc_response(self, request_id: &HeaderValue) -> Response<Body> {
        let (status, _, message) = self.answer();
        self.log(status, request_id);
        let code = match self {
            Self::Timeout { .. } => grpc_code::DEADLINE_EXCEEDED,
            _ => grpc_code_for(status),
        };
        grpc_answer(http::HeaderMap::new(), code, message, request_id)
    }

    /// The response for this rejection. `request_id` is echoed in the body and header.
    pub(crate) fn into_response(self, request_id: &HeaderValue, method: &Method) -> Response<Body> {
        let (status, error, message) = self.answer();
        self.log(status, request_id);
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
            // What follows this request on its connection cannot be told apart from its body,
            // or is the rest of a body the gateway will not read.
            Self::Framing(_) | Self::PayloadTooLarge => {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("close"));
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

/// Marks a response the gateway or a plugin made itself rather than the upstream: for a gRPC
/// request it becomes a gRPC error (see [`grpc_local_reply`]).
#[derive(Debug, Clone)]
pub(crate) struct LocalReply {
    /// What the answer says, for `grpc-message`.
    pub(crate) message: String,
}

/// Whether the request is a gRPC call (`content-type: application/grpc` or `application/grpc+…`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// gRPC status codes the gateway answers with.
mod grpc_code {
    pub(super) const UNKNOWN: u8 = 2;
    pub(super) const DEADLINE_EXCEEDED: u8 = 4;
    pub(super) const PERMISSION_DENIED: u8 = 7;
    pub(super) const RESOURCE_EXHAUSTED: u8 = 8;
    pub(super) const UNIMPLEMENTED: u8 = 12;
    pub(super) const INTERNAL: u8 = 13;
    pub(super) const UNAVAILABLE: u8 = 14;
    pub(super) const UNAUTHENTICATED: u8 = 16;
}

/// The gRPC status for an HTTP error status, as gRPC's own HTTP mapping has it
/// (`doc/http-grpc-status-mapping.md`), except 429: `RESOURCE_EXHAUSTED` says what happened,
/// where the table's `UNAVAILABLE` would invite an immediate retry.
fn grpc_code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => grpc_code::INTERNAL,
        401 => grpc_code::UNAUTHENTICATED,
        403 => grpc_code::PERMISSION_DENIED,
        404 => grpc_code::UNIMPLEMENTED,
        429 => grpc_code::RESOURCE_EXHAUSTED,
        502..=504 => grpc_code::UNAVAILABLE,
        _ => grpc_code::UNKNOWN,
    }
}

/// A gRPC error as a trailers-only response (gRPC over HTTP/2, "Trailers-Only"): status 200,
/// `grpc-status` and `grpc-message` in the only HEADERS frame, no body. `headers` (a plugin's
/// `WWW-Authenticate`, `RateLimit-*`, CORS) are kept, but not the HTTP answer's content type
/// and length.
fn grpc_answer(
    mut headers: http::HeaderMap,
    code: u8,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Body> {
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    // Percent-encoded as the gRPC spec asks: anything outside printable ASCII, and `%`.
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE_ESCAPED).to_string();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        headers.insert(GRPC_MESSAGE, v);
    }
    headers.insert(REQUEST_ID, request_id.clone());
    let mut response = Response::new(Body::empty());
    *response.headers_mut() = headers;
    response
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b'%').add(0x7f);

/// A local reply (an error of the gateway's or a plugin's refusal) to a gRPC request, made a
/// gRPC error with the status its HTTP status maps to.
pub(crate) fn grpc_local_reply(
    response: Response<Body>,
    request_id: &HeaderValue,
) -> Response<Body> {
    let (parts, _) = response.into_parts();
    let message = parts
        .extensions
        .get::<LocalReply>()
        .map_or_else(String::new, |r| r.message.clone());
    grpc_answer(
        parts.headers,
        grpc_code_for(parts.status),
        &message,
        request_id,
    )
}

/// A plugin's refusal, answered like the gateway's own errors: its status and headers, the JSON
/// body with its code and message and the request id.
pub(crate) fn plugin_rejection(r: PluginRejection, request_id: &HeaderValue) -> ResponseView {
    let (mut parts, body) = error_answer(r.status, &r.error, &r.message, request_id);
    parts.extensions.insert(LocalReply {
        message: r.message.clone(),
    });
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
