//! The response a plugin sees in [`Plugin::on_response`](crate::Plugin::on_response).

use std::fmt;

use http::StatusCode;

use crate::__bindings::wasmgate::plugin::types;
use crate::inputs::{Declared, Input};
use crate::message::HostMessage;
use crate::request::from_wit;
use crate::{HeaderEdit, HeaderError};

/// The response being returned to the client, valid during one
/// [`Plugin::on_response`](crate::Plugin::on_response) call.
///
/// Like [`Request`](crate::Request), it stays in the gateway: declared inputs
/// ([`Inputs::response_header`](crate::Inputs::response_header),
/// [`Inputs::status`](crate::Inputs::status)) are read for free, anything else is one call across
/// the sandbox boundary, and header edits are handed back when the hook returns. Edits apply to
/// what the client receives and to the plugins that run after this one (the response phase runs
/// in reverse plugin order).
pub struct Response<'a> {
    backend: Backend<'a>,
}

enum Backend<'a> {
    Host(Box<Host<'a>>),
    #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
    Mock(Box<mock::MockResponse>),
}

/// A response in the gateway, seen through one hook call.
struct Host<'a> {
    msg: HostMessage<'a, types::Response>,
    /// The status changed during the call: the declared status is stale.
    status_changed: bool,
}

impl fmt::Debug for Response<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Host(host) => f
                .debug_struct("Response")
                .field("message", &host.msg)
                .finish(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(mock) => fmt::Debug::fmt(mock, f),
        }
    }
}

impl<'a> Response<'a> {
    pub(crate) fn from_host(
        handle: &'a types::Response,
        declared: &'a Declared,
        inputs: Vec<Option<String>>,
    ) -> Self {
        Self {
            backend: Backend::Host(Box::new(Host {
                msg: HostMessage::new(handle, declared, inputs),
                status_changed: false,
            })),
        }
    }

    /// The collected header edits, for the verdict.
    pub(crate) fn into_edits(self) -> Vec<HeaderEdit> {
        match self.backend {
            Backend::Host(host) => host.msg.into_edits(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(_) => Vec::new(),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match &self.backend {
            // The gateway only sends valid codes (100-999); the fallback only keeps this total.
            Backend::Host(h) => {
                let declared = h
                    .msg
                    .input(&Input::Status)
                    .filter(|_| !h.status_changed)
                    .map(|v| v.and_then(|v| v.parse::<u16>().ok()).unwrap_or(500));
                let code = declared.unwrap_or_else(|| h.msg.handle.status());
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.status,
        }
    }

    /// Changes the status code. Fails outside 100–999.
    pub fn set_status(&mut self, status: u16) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(h) => {
                h.msg.handle.set_status(status).map_err(from_wit)?;
                h.status_changed = true;
                Ok(())
            }
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => {
                m.status = StatusCode::from_u16(status)
                    .map_err(|_| HeaderError::new(format!("invalid status {status} (100-999)")))?;
                Ok(())
            }
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.backend {
            Backend::Host(h) => h.msg.header(name),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.header(name),
        }
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        match &self.backend {
            Backend::Host(h) => h.msg.header_all(name),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.header_all(name),
        }
    }

    /// The first value of each of several headers: declared ones for free, the others in one
    /// call to the gateway.
    pub fn headers_get(&self, names: &[&str]) -> Vec<Option<String>> {
        match &self.backend {
            Backend::Host(h) => h.msg.headers_get(names),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => names.iter().map(|name| m.headers.header(name)).collect(),
        }
    }

    /// Every header as `(name, value)` pairs, names in lowercase.
    pub fn headers(&self) -> Vec<(String, String)> {
        match &self.backend {
            Backend::Host(h) => h.msg.headers(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.headers(),
        }
    }

    /// Replaces every value of header `name` with `value`. Fails on an invalid name or value.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        let edit = HeaderEdit::set(name, value)?;
        self.edit(edit)
    }

    /// Adds `value` to header `name`, keeping the existing values. Fails on an invalid name or
    /// value.
    pub fn append_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        let edit = HeaderEdit::append(name, value)?;
        self.edit(edit)
    }

    /// Removes every value of header `name`; no effect when absent.
    pub fn remove_header(&mut self, name: &str) {
        let _ = self.edit(HeaderEdit::remove(name));
    }

    /// Several header edits at once: [`set_header`](Self::set_header) for each pair of `set`, in
    /// order, then [`remove_header`](Self::remove_header) for each name of `remove`. All or
    /// nothing: an invalid name or value refuses every edit.
    pub fn edit_headers(
        &mut self,
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<(), HeaderError> {
        for edit in HeaderEdit::batch(set, remove)? {
            self.edit(edit)?;
        }
        Ok(())
    }

    fn edit(&mut self, edit: HeaderEdit) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(h) => {
                h.msg.edit(edit);
                Ok(())
            }
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.apply(&edit),
        }
    }

    /// The buffered body, when the plugin asked for bodies ([`Plugin::needs_body`]) and the body
    /// fit within the route's `max_body`; otherwise `None`.
    ///
    /// [`Plugin::needs_body`]: crate::Plugin::needs_body
    pub fn body(&self) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Host(h) => h.msg.handle.body(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.body.clone(),
        }
    }

    /// Replaces the body sent to the client; the gateway updates `content-length`. Fails unless
    /// the plugin asked for bodies ([`Plugin::needs_body`]).
    ///
    /// [`Plugin::needs_body`]: crate::Plugin::needs_body
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(h) => {
                h.msg.touched("content-length");
                h.msg.handle.set_body(&body.into()).map_err(from_wit)
            }
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => crate::mock::set_body(&mut m.body, &mut m.headers, body.into()),
        }
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
mod mock {
    use http::StatusCode;

    use crate::headers::MockHeaders;

    /// An in-memory response, for native tests.
    #[derive(Debug, Clone)]
    pub(crate) struct MockResponse {
        pub(crate) status: StatusCode,
        pub(crate) headers: MockHeaders,
        pub(crate) body: Option<Vec<u8>>,
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
mod testing {
    use http::StatusCode;

    use super::{Backend, Response, mock::MockResponse};
    use crate::headers::MockHeaders;

    impl Response<'static> {
        /// A builder for an in-memory response, for native tests (feature `testing`).
        ///
        /// ```
        /// # #[cfg(feature = "testing")] {
        /// let resp = wasmgate_sdk::Response::builder()
        ///     .status(404)
        ///     .header("content-type", "text/plain")
        ///     .body("not found")
        ///     .build();
        /// assert_eq!(resp.status(), 404);
        /// # }
        /// ```
        pub fn builder() -> ResponseBuilder {
            ResponseBuilder::default()
        }

        /// An in-memory response made from an `http::Response`, for native tests (feature
        /// `testing`). The body is available, as if the plugin asked for bodies.
        pub fn new(response: http::Response<Vec<u8>>) -> Self {
            let (parts, body) = response.into_parts();
            Self::mock(MockResponse {
                status: parts.status,
                headers: MockHeaders(parts.headers),
                body: Some(body),
            })
        }

        fn mock(response: MockResponse) -> Self {
            Self {
                backend: Backend::Mock(Box::new(response)),
            }
        }
    }

    impl Response<'_> {
        /// Applies header edits as the gateway does, e.g. those a request hook scheduled
        /// ([`Request::response_edits`](crate::Request::response_edits)) (feature `testing`).
        pub fn apply(&mut self, edits: &[crate::HeaderEdit]) -> Result<(), crate::HeaderError> {
            for edit in edits {
                self.edit(edit.clone())?;
            }
            Ok(())
        }

        /// The response as the client would get it, as an `http::Response` (feature `testing`):
        /// status, headers and body (empty when unavailable).
        pub fn into_http(self) -> http::Response<Vec<u8>> {
            let mut response = http::Response::new(self.body().unwrap_or_default());
            *response.status_mut() = self.status();
            *response.headers_mut() = crate::headers::header_map(self.headers());
            response
        }
    }

    /// Builds an in-memory [`Response`] for native tests (feature `testing`); see
    /// [`Response::builder`].
    ///
    /// Defaults: status 200, no headers, an empty body that is available (as if the plugin asked
    /// for bodies).
    ///
    /// [`build`](Self::build) panics on invalid input (a test bug), naming it.
    #[derive(Debug, Clone, Default)]
    #[must_use]
    pub struct ResponseBuilder {
        status: Option<u16>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        body_unavailable: bool,
    }

    impl ResponseBuilder {
        /// The status code (default 200).
        pub fn status(mut self, status: u16) -> Self {
            self.status = Some(status);
            self
        }

        /// Adds a header value (repeat for several values).
        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.to_owned(), value.to_owned()));
            self
        }

        /// The body, available to the plugin as if it asked for bodies.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self.body_unavailable = false;
            self
        }

        /// Simulates a plugin that did not ask for bodies (or a body over the route's limit):
        /// [`Response::body`] returns `None` and [`Response::set_body`] fails.
        pub fn body_unavailable(mut self) -> Self {
            self.body_unavailable = true;
            self
        }

        /// The response. Panics on an invalid status or header.
        pub fn build(self) -> Response<'static> {
            let status = self.status.unwrap_or(200);
            let status = StatusCode::from_u16(status)
                .unwrap_or_else(|_| panic!("ResponseBuilder: invalid status {status}"));
            let mut headers = MockHeaders::default();
            for (name, value) in &self.headers {
                headers
                    .append(name, value)
                    .unwrap_or_else(|e| panic!("ResponseBuilder: {e}"));
            }
            Response::mock(MockResponse {
                status,
                headers,
                body: (!self.body_unavailable).then_some(self.body),
            })
        }
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub use testing::ResponseBuilder;
