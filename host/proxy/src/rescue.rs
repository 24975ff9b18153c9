//! The one place where data-path failures become HTTP responses.
//!
//! Every failure answers with a small JSON body, `{"error": "...", "request_id": "..."}`, and the
//! request id header. The `error` text is fixed per kind: details (addresses, OS errors) go to the
//! logs, never to the client.

use std::time::Duration;

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};

use wasmgate_runtime::FailureKind;

use crate::body::Body;
use crate::forward::REQUEST_ID;

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
    #[error("upstream {upstream} target {target}: connect failed: {source}")]
    Connect {
        upstream: String,
        target: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {upstream} target {target}: request failed: {source}")]
    Upstream {
        upstream: String,
        target: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("upstream {upstream} target {target}: no response within {timeout:?}")]
    Timeout {
        upstream: String,
        target: String,
        timeout: Duration,
    },
}

impl Rejection {
    fn status_and_text(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad request"),
            Self::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large",
            ),
            Self::NoRoute => (StatusCode::NOT_FOUND, "no route matched"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request body timed out"),
            Self::UpstreamBody => (StatusCode::BAD_GATEWAY, "upstream unavailable"),
            Self::Plugin(f) => match f.kind {
                FailureKind::Timeout | FailureKind::Unavailable => {
                    (StatusCode::SERVICE_UNAVAILABLE, "plugin unavailable")
                }
                FailureKind::Error | FailureKind::Trap | FailureKind::OutOfMemory => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "plugin failed")
                }
            },
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            Self::Connect { .. } | Self::Upstream { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream unavailable")
            }
            Self::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
        }
    }

    /// The response for this rejection. `request_id` is echoed in the body and header.
    pub(crate) fn into_response(self, request_id: &HeaderValue, method: &Method) -> Response<Body> {
        let (status, text) = self.status_and_text();
        match (&self, status) {
            // The chain already logged the failure with its route, plugin and detail.
            (Self::Plugin(_), _) => {}
            (_, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT) => {
                tracing::warn!(request_id = ?request_id, error = %self, "upstream failure");
            }
            _ => tracing::debug!(request_id = ?request_id, error = %self, "request rejected"),
        }
        let body = serde_json::json!({
            "error": text,
            "request_id": request_id.to_str().unwrap_or_default(),
        })
        .to_string();
        let len = body.len();
        let mut response = Response::new(if method == Method::HEAD {
            Body::empty()
        } else {
            Body::full(body)
        });
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        headers.insert(REQUEST_ID, request_id.clone());
        if let Self::MethodNotAllowed(allow) = self {
            headers.insert(ALLOW, allow);
        }
        response
    }
}
