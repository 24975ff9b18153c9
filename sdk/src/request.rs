//! The request a plugin sees in [`Plugin::on_request`](crate::Plugin::on_request).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use http::Method;

use crate::__bindings::wasmgate::plugin::types;
use crate::inputs::{Declared, Input};
use crate::message::HostMessage;
use crate::{HeaderEdit, HeaderError};

/// The request being handled, valid during one [`Plugin::on_request`](crate::Plugin::on_request)
/// call.
///
/// The request stays in the gateway. What the plugin declared in
/// [`Plugin::inputs`](crate::Plugin::inputs) arrives with the call and is read for free; anything
/// else is one call across the sandbox boundary, so read what you use, once. Header edits are
/// collected and handed back when the hook returns (a read of an edited header sends them first,
/// so reads always see the edits).
///
/// Edits (headers, path, body) apply to the request sent upstream and to the plugins after this
/// one. Edits of the response can be scheduled here too
/// ([`set_response_header`](Self::set_response_header)), so a plugin that only decorates
/// responses needs no [`on_response`](crate::Plugin::on_response) call.
pub struct Request<'a> {
    backend: Backend<'a>,
}

enum Backend<'a> {
    Host(Box<Host<'a>>),
    #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
    Mock(Box<mock::MockRequest>),
}

/// A request in the gateway, seen through one hook call.
struct Host<'a> {
    msg: HostMessage<'a, types::Request>,
    /// Edits of the response, applied when it passes this plugin on its way back.
    response_edits: Vec<HeaderEdit>,
    /// The path was changed during the call: the declared path is stale.
    path_changed: bool,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Host(host) => f
                .debug_struct("Request")
                .field("message", &host.msg)
                .field("response_edits", &host.response_edits)
                .finish(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(mock) => fmt::Debug::fmt(mock, f),
        }
    }
}

impl<'a> Request<'a> {
    pub(crate) fn from_host(
        handle: &'a types::Request,
        declared: &'a Declared,
        inputs: Vec<Option<String>>,
    ) -> Self {
        Self {
            backend: Backend::Host(Box::new(Host {
                msg: HostMessage::new(handle, declared, inputs),
                response_edits: Vec::new(),
                path_changed: false,
            })),
        }
    }

    /// The collected request edits and the scheduled response edits, for the verdict.
    pub(crate) fn into_edits(self) -> (Vec<HeaderEdit>, Vec<HeaderEdit>) {
        match self.backend {
            Backend::Host(host) => (host.msg.into_edits(), host.response_edits),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(_) => (Vec::new(), Vec::new()),
        }
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> Method {
        match &self.backend {
            Backend::Host(h) => match h.msg.input(&Input::Method) {
                Some(value) => parse_method(value.unwrap_or_default()),
                None => parse_method(&h.msg.handle.method()),
            },
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.method.clone(),
        }
    }

    /// The declared path and query, unless the path changed during this call.
    fn declared_path(&self) -> Option<String> {
        match &self.backend {
            Backend::Host(h) if !h.path_changed => h
                .msg
                .input(&Input::PathWithQuery)
                .map(|v| v.unwrap_or("/").to_owned()),
            _ => None,
        }
    }

    /// The path without the query, e.g. `/users/7`.
    pub fn path(&self) -> String {
        if let Some(pq) = self.declared_path() {
            return pq
                .split_once('?')
                .map_or(pq.as_str(), |(p, _)| p)
                .to_owned();
        }
        match &self.backend {
            Backend::Host(h) => h.msg.handle.path(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.path().to_owned(),
        }
    }

    /// The query string without `?`, if the request has one.
    pub fn query(&self) -> Option<String> {
        if let Some(pq) = self.declared_path() {
            return pq.split_once('?').map(|(_, q)| q.to_owned());
        }
        match &self.backend {
            Backend::Host(h) => h.msg.handle.query(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.query().map(str::to_owned),
        }
    }

    /// Path and query, as sent upstream, e.g. `/users/7?x=1`.
    pub fn path_with_query(&self) -> String {
        if let Some(pq) = self.declared_path() {
            return pq;
        }
        match &self.backend {
            Backend::Host(h) => h.msg.handle.path_with_query(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.path_and_query.clone(),
        }
    }

    /// Replaces the path and query sent upstream, e.g. `/v2/users/7?x=1`. Fails unless it starts
    /// with `/` and is a valid HTTP path. A new path is sent as written (the route's `strip_path`
    /// no longer applies); the same path with another query keeps `strip_path`.
    pub fn set_path_with_query(&mut self, path_with_query: &str) -> Result<(), HeaderError> {
        match &mut self.backend {
            Backend::Host(h) => {
                h.msg
                    .handle
                    .set_path_with_query(path_with_query)
                    .map_err(from_wit)?;
                h.path_changed = true;
                Ok(())
            }
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.set_path_with_query(path_with_query),
        }
    }

    /// The host the client asked for (HTTP/2 `:authority` or the `Host` header), with the port if
    /// given, e.g. `api.example.com:8443`.
    pub fn authority(&self) -> Option<String> {
        match &self.backend {
            Backend::Host(h) => match h.msg.input(&Input::Authority) {
                Some(value) => value.map(str::to_owned),
                None => h.msg.handle.authority(),
            },
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.authority(),
        }
    }

    /// The client's IP address as the gateway saw it (the peer of the connection).
    pub fn client_ip(&self) -> IpAddr {
        match &self.backend {
            // The gateway always sends a valid address; the fallback only keeps this total.
            Backend::Host(h) => match h.msg.input(&Input::ClientIp) {
                Some(value) => value.and_then(|v| v.parse().ok()),
                None => h.msg.handle.client_address().parse().ok(),
            }
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.client_ip,
        }
    }

    /// `http` or `https`: how the client reached the gateway.
    pub fn scheme(&self) -> String {
        match &self.backend {
            Backend::Host(h) => match h.msg.input(&Input::Scheme) {
                Some(value) => value.unwrap_or("http").to_owned(),
                None => h.msg.handle.scheme(),
            },
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.scheme.clone(),
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
    ///
    /// ```
    /// # fn f(req: &wasmgate_sdk::Request<'_>) {
    /// let values = req.headers_get(&["x-api-key", "authorization"]);
    /// let (api_key, authorization) = (&values[0], &values[1]);
    /// # let _ = (api_key, authorization);
    /// # }
    /// ```
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

    /// Sets header `name` of the response when it passes this plugin on its way back to the
    /// client (the upstream's response, or a later plugin's answer), as
    /// [`Response::set_header`](crate::Response::set_header) in
    /// [`on_response`](crate::Plugin::on_response) would, without calling `on_response`. Not
    /// applied when this hook answers itself (put the headers in the answer). Fails on an
    /// invalid name or value.
    pub fn set_response_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        let edit = HeaderEdit::set(name, value)?;
        self.schedule(edit);
        Ok(())
    }

    /// Adds `value` to response header `name` on the way back, like
    /// [`set_response_header`](Self::set_response_header).
    pub fn append_response_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        let edit = HeaderEdit::append(name, value)?;
        self.schedule(edit);
        Ok(())
    }

    /// Removes response header `name` on the way back, like
    /// [`set_response_header`](Self::set_response_header).
    pub fn remove_response_header(&mut self, name: &str) {
        self.schedule(HeaderEdit::remove(name));
    }

    fn schedule(&mut self, edit: HeaderEdit) {
        match &mut self.backend {
            Backend::Host(h) => h.response_edits.push(edit),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(m) => m.response_edits.push(edit),
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

    /// Replaces the body sent upstream; the gateway updates `content-length`. Fails unless the
    /// plugin asked for bodies ([`Plugin::needs_body`]).
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

/// Methods the gateway sends are always valid; anything else (which cannot happen) becomes the
/// extension method `INVALID`, which matches no standard method, rather than a plausible one.
pub(crate) fn parse_method(method: &str) -> Method {
    Method::from_bytes(method.as_bytes())
        .or_else(|_| Method::from_bytes(b"INVALID"))
        .unwrap_or_default()
}

pub(crate) fn from_wit(err: types::HeaderError) -> HeaderError {
    HeaderError::new(err.message)
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub(crate) mod mock {
    use std::net::IpAddr;

    use http::Method;

    use crate::HeaderError;
    use crate::headers::MockHeaders;

    /// An in-memory request, for native tests.
    #[derive(Debug, Clone)]
    pub(crate) struct MockRequest {
        pub(crate) method: Method,
        pub(crate) path_and_query: String,
        pub(crate) authority: Option<String>,
        pub(crate) scheme: String,
        pub(crate) client_ip: IpAddr,
        pub(crate) headers: MockHeaders,
        pub(crate) body: Option<Vec<u8>>,
        /// Edits of the response scheduled by the hook.
        pub(crate) response_edits: Vec<crate::HeaderEdit>,
    }

    impl MockRequest {
        pub(crate) fn path(&self) -> &str {
            self.path_and_query
                .split_once('?')
                .map_or(self.path_and_query.as_str(), |(path, _)| path)
        }

        pub(crate) fn query(&self) -> Option<&str> {
            self.path_and_query.split_once('?').map(|(_, query)| query)
        }

        pub(crate) fn authority(&self) -> Option<String> {
            self.authority
                .clone()
                .or_else(|| self.headers.header("host"))
        }

        pub(crate) fn set_path_with_query(
            &mut self,
            path_with_query: &str,
        ) -> Result<(), HeaderError> {
            if !path_with_query.starts_with('/')
                || path_with_query.parse::<http::uri::PathAndQuery>().is_err()
            {
                return Err(HeaderError::new(format!(
                    "invalid path {path_with_query:?}: must be an HTTP path starting with '/'"
                )));
            }
            path_with_query.clone_into(&mut self.path_and_query);
            Ok(())
        }
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
mod testing {
    use std::net::{IpAddr, Ipv4Addr};

    use http::{Method, Uri};

    use super::{Backend, Request, mock::MockRequest};
    use crate::headers::MockHeaders;

    impl Request<'static> {
        /// A builder for an in-memory request, for native tests (feature `testing`).
        ///
        /// ```
        /// # #[cfg(feature = "testing")] {
        /// let req = wasmgate_sdk::Request::builder()
        ///     .method("POST")
        ///     .uri("/login?next=%2F")
        ///     .header("content-type", "application/json")
        ///     .client_ip("203.0.113.7")
        ///     .body(r#"{"user":"ann"}"#)
        ///     .build();
        /// assert_eq!(req.path(), "/login");
        /// assert_eq!(req.query().as_deref(), Some("next=%2F"));
        /// # }
        /// ```
        pub fn builder() -> RequestBuilder {
            RequestBuilder::default()
        }

        /// An in-memory request made from an `http::Request`, for native tests (feature `testing`).
        ///
        /// The scheme and authority come from the URI when it is absolute; the client IP is
        /// `127.0.0.1` unless the request's extensions hold an [`IpAddr`] or a
        /// [`SocketAddr`](std::net::SocketAddr). The body is available, as if the plugin asked for
        /// bodies.
        pub fn new(request: http::Request<Vec<u8>>) -> Self {
            let (parts, body) = request.into_parts();
            let client_ip = parts
                .extensions
                .get::<IpAddr>()
                .copied()
                .or_else(|| {
                    parts
                        .extensions
                        .get::<std::net::SocketAddr>()
                        .map(|a| a.ip())
                })
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            Self::mock(MockRequest {
                method: parts.method,
                path_and_query: path_and_query(&parts.uri),
                authority: parts.uri.authority().map(|a| a.as_str().to_owned()),
                scheme: parts.uri.scheme_str().unwrap_or("http").to_owned(),
                client_ip,
                headers: MockHeaders(parts.headers),
                body: Some(body),
                response_edits: Vec::new(),
            })
        }

        fn mock(request: MockRequest) -> Self {
            Self {
                backend: Backend::Mock(Box::new(request)),
            }
        }
    }

    impl Request<'_> {
        /// The edits of the response this request's hook scheduled
        /// ([`set_response_header`](Request::set_response_header) and the others), in order
        /// (feature `testing`). [`Response::apply`](crate::Response::apply) applies them to an
        /// in-memory response as the gateway would.
        pub fn response_edits(&self) -> &[crate::HeaderEdit] {
            match &self.backend {
                Backend::Mock(m) => &m.response_edits,
                Backend::Host(_) => &[],
            }
        }

        /// Applies header edits as the gateway does (feature `testing`).
        pub(crate) fn apply_fixed(
            &mut self,
            edits: &[crate::HeaderEdit],
        ) -> Result<(), crate::HeaderError> {
            for edit in edits {
                self.edit(edit.clone())?;
            }
            Ok(())
        }

        /// The request as it would go upstream, as an `http::Request` (feature `testing`): method,
        /// path and query (with the scheme and authority when known), headers and body (empty when
        /// unavailable).
        pub fn into_http(self) -> http::Request<Vec<u8>> {
            let mut uri = Uri::builder();
            if let Some(authority) = self.authority() {
                uri = uri.scheme(self.scheme().as_str()).authority(authority);
            }
            let uri = uri
                .path_and_query(self.path_with_query())
                .build()
                .unwrap_or_else(|_| Uri::from_static("/"));
            let mut request = http::Request::new(self.body().unwrap_or_default());
            *request.method_mut() = self.method();
            *request.uri_mut() = uri;
            *request.headers_mut() = crate::headers::header_map(self.headers());
            request.extensions_mut().insert(self.client_ip());
            request
        }
    }

    fn path_and_query(uri: &Uri) -> String {
        uri.path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned())
    }

    /// Builds an in-memory [`Request`] for native tests (feature `testing`); see
    /// [`Request::builder`].
    ///
    /// Defaults: `GET /`, scheme `http`, client IP `127.0.0.1`, no headers, an empty body that is
    /// available (as if the plugin asked for bodies).
    ///
    /// [`build`](Self::build) panics on invalid input (a test bug), naming it.
    #[derive(Debug, Clone, Default)]
    #[must_use]
    pub struct RequestBuilder {
        method: Option<String>,
        uri: Option<String>,
        headers: Vec<(String, String)>,
        client_ip: Option<String>,
        scheme: Option<String>,
        body: Vec<u8>,
        body_unavailable: bool,
    }

    impl RequestBuilder {
        /// The method, e.g. `POST` (default `GET`).
        pub fn method(mut self, method: &str) -> Self {
            self.method = Some(method.to_owned());
            self
        }

        /// The URI: a path with an optional query (`/x?y=1`), or an absolute URI
        /// (`https://api.example.com/x`) which also sets the scheme and authority. Default `/`.
        pub fn uri(mut self, uri: &str) -> Self {
            self.uri = Some(uri.to_owned());
            self
        }

        /// Adds a header value (repeat for several values).
        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.to_owned(), value.to_owned()));
            self
        }

        /// The client's IP address, e.g. `10.0.0.1` or `::1` (default `127.0.0.1`).
        pub fn client_ip(mut self, ip: &str) -> Self {
            self.client_ip = Some(ip.to_owned());
            self
        }

        /// The scheme, `http` or `https` (default `http`, or the absolute URI's).
        pub fn scheme(mut self, scheme: &str) -> Self {
            self.scheme = Some(scheme.to_owned());
            self
        }

        /// The body, available to the plugin as if it asked for bodies.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self.body_unavailable = false;
            self
        }

        /// Simulates a plugin that did not ask for bodies (or a body over the route's limit):
        /// [`Request::body`] returns `None` and [`Request::set_body`] fails.
        pub fn body_unavailable(mut self) -> Self {
            self.body_unavailable = true;
            self
        }

        /// The request. Panics on an invalid method, URI, header or IP address.
        pub fn build(self) -> Request<'static> {
            let method = self.method.as_deref().unwrap_or("GET");
            let method = Method::from_bytes(method.as_bytes())
                .unwrap_or_else(|_| panic!("RequestBuilder: invalid method {method:?}"));
            let uri_text = self.uri.as_deref().unwrap_or("/");
            let uri: Uri = uri_text
                .parse()
                .unwrap_or_else(|e| panic!("RequestBuilder: invalid uri {uri_text:?}: {e}"));
            let mut headers = MockHeaders::default();
            for (name, value) in &self.headers {
                headers
                    .append(name, value)
                    .unwrap_or_else(|e| panic!("RequestBuilder: {e}"));
            }
            let client_ip = self.client_ip.as_deref().unwrap_or("127.0.0.1");
            let client_ip: IpAddr = client_ip
                .parse()
                .unwrap_or_else(|_| panic!("RequestBuilder: invalid client IP {client_ip:?}"));
            let scheme = self
                .scheme
                .or_else(|| uri.scheme_str().map(str::to_owned))
                .unwrap_or_else(|| "http".to_owned());
            Request::mock(MockRequest {
                method,
                path_and_query: path_and_query(&uri),
                authority: uri.authority().map(|a| a.as_str().to_owned()),
                scheme,
                client_ip,
                headers,
                body: (!self.body_unavailable).then_some(self.body),
                response_edits: Vec::new(),
            })
        }
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub use testing::RequestBuilder;
