//! The response a plugin sees in [`Plugin::on_response`](crate::Plugin::on_response).

use std::fmt;

use http::StatusCode;

use crate::__bindings::wasmgate::plugin::types;
use crate::HeaderError;
use crate::request::{from_wit, owned, owned_pairs};

/// The response being returned to the client, valid during one
/// [`Plugin::on_response`](crate::Plugin::on_response) call.
///
/// Like [`Request`](crate::Request), it stays in the gateway and every method is one call across
/// the sandbox boundary. Edits apply to what the client receives and to the plugins that run after
/// this one (the response phase runs in reverse plugin order).
pub struct Response<'a> {
    backend: Backend<'a>,
}

enum Backend<'a> {
    Host(&'a types::Response),
    #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
    Mock(Box<mock::MockResponse>),
}

impl fmt::Debug for Response<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Host(response) => f
                .debug_struct("Response")
                .field("host_handle", &response.handle())
                .finish(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(mock) => fmt::Debug::fmt(mock, f),
        }
    }
}

impl<'a> Response<'a> {
    pub(crate) fn from_host(response: &'a types::Response) -> Self {
        Self {
            backend: Backend::Host(response),
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        match &self.backend {
            // The gateway only sends valid codes (100-999); the fallback only keeps this total.
            Backend::Host(r) => {
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.status,
        }
    }

    /// Changes the status code. Fails outside 100–999.
    pub fn set_status(&mut self, status: u16) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(r) => r.set_status(status).map_err(from_wit),
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
            Backend::Host(r) => r.header(name),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.header(name),
        }
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        match &self.backend {
            Backend::Host(r) => r.header_all(name),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.header_all(name),
        }
    }

    /// The first value of each of several headers.
    ///
    /// The ABI has no batched read for responses yet, so this is one call to the gateway per name.
    pub fn headers_get(&self, names: &[&str]) -> Vec<Option<String>> {
        names.iter().map(|name| self.header(name)).collect()
    }

    /// Every header as `(name, value)` pairs, names in lowercase.
    pub fn headers(&self) -> Vec<(String, String)> {
        match &self.backend {
            Backend::Host(r) => r.headers(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.headers(),
        }
    }

    /// Replaces every value of header `name` with `value`. Fails on an invalid name or value.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(r) => r.set_header(name, value).map_err(from_wit),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.set(name, value),
        }
    }

    /// Adds `value` to header `name`, keeping the existing values. Fails on an invalid name or
    /// value.
    pub fn append_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(r) => r.append_header(name, value).map_err(from_wit),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.append(name, value),
        }
    }

    /// Removes every value of header `name`; no effect when absent.
    pub fn remove_header(&mut self, name: &str) {
        match &mut self.backend {
            Backend::Host(r) => r.remove_header(name),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.remove(name),
        }
    }

    /// Several header edits in one call to the gateway: [`set_header`](Self::set_header) for each
    /// pair of `set`, in order, then [`remove_header`](Self::remove_header) for each name of
    /// `remove`.
    pub fn edit_headers(
        &mut self,
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(r) => r
                .edit_headers(&owned_pairs(set), &owned(remove))
                .map_err(from_wit),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.headers.edit(set, remove),
        }
    }

    /// The buffered body, when the plugin asked for bodies ([`Plugin::needs_body`]) and the body
    /// fit within the route's `max_body`; otherwise `None`.
    ///
    /// [`Plugin::needs_body`]: crate::Plugin::needs_body
    pub fn body(&self) -> Option<Vec<u8>> {
        match &self.backend {
            Backend::Host(r) => r.body(),
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
            Backend::Host(r) => r.set_body(&body.into()).map_err(from_wit),
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
