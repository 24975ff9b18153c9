//! The `request` and `response` resources: what a hook reads beyond its declared inputs, and the
//! edits it makes before returning (path, status, body, header edits it needs applied at once).
//!
//! There is one request (or response) per call, so a handle carries no data: the host serves the
//! call's [`Exchange`](super::Exchange).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderValue, TRANSFER_ENCODING};
use http::{StatusCode, Uri};
use wasmtime::component::Resource;

use super::HostState;
use crate::bindings::wasmgate::plugin::types;
use crate::exchange::{self, Edit, client_address, text};

/// The `request` resource's representation.
#[derive(Debug)]
#[expect(
    unreachable_pub,
    reason = "bindgen re-exports resource types with `pub use`"
)]
pub struct RequestHandle;

/// The `response` resource's representation.
#[derive(Debug)]
#[expect(
    unreachable_pub,
    reason = "bindgen re-exports resource types with `pub use`"
)]
pub struct ResponseHandle;

fn header_error(message: String) -> types::HeaderError {
    types::HeaderError { message }
}

/// A plugin's header edits, checked as HTTP: the first invalid one is the error.
pub(crate) fn edits(wit: Vec<types::HeaderEdit>) -> Result<Vec<Edit>, String> {
    let mut out = Vec::with_capacity(wit.len());
    for edit in wit {
        match edit {
            types::HeaderEdit::Set((name, value)) => out.push(Edit::set(&name, &value)?),
            types::HeaderEdit::Append((name, value)) => out.push(Edit::append(&name, &value)?),
            types::HeaderEdit::Remove(name) => out.extend(Edit::remove(&name)),
        }
    }
    Ok(out)
}

/// Applies a hook's header edits now (`edit-headers`): all or nothing.
fn edit_now(
    headers: &mut HeaderMap,
    wit: Vec<types::HeaderEdit>,
) -> Result<(), types::HeaderError> {
    let edits = edits(wit).map_err(header_error)?;
    exchange::apply(headers, &edits).map_err(header_error)
}

fn headers_get(headers: &HeaderMap, names: Vec<String>) -> Vec<Option<String>> {
    names
        .iter()
        .map(|n| headers.get(n.as_str()).map(text))
        .collect()
}

fn all(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), text(v)))
        .collect()
}

fn replace_body(headers: &mut HeaderMap, body: &[u8]) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
}

fn body_not_requested() -> types::HeaderError {
    header_error("set-body needs the plugin to ask for bodies (plugin-info.needs-body)".to_owned())
}

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    fn method(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.request()?.parts.method.as_str().to_owned())
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.request()?.parts.uri.path().to_owned())
    }

    fn query(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.parts.uri.query().map(str::to_owned))
    }

    fn path_with_query(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        let uri = &self.request()?.parts.uri;
        Ok(uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()))
    }

    fn set_path_with_query(
        &mut self,
        _: Resource<RequestHandle>,
        path_with_query: String,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        let req = self.request()?;
        if !path_with_query.starts_with('/') {
            return Ok(Err(header_error(format!(
                "path must start with '/': {path_with_query:?}"
            ))));
        }
        let mut parts = req.parts.uri.clone().into_parts();
        parts.path_and_query = match path_with_query.parse() {
            Ok(p) => Some(p),
            Err(_) => {
                return Ok(Err(header_error(format!(
                    "invalid path {path_with_query:?}"
                ))));
            }
        };
        match Uri::from_parts(parts) {
            Ok(uri) => {
                // Only a new path turns `strip_path` off: a plugin that edits the query alone
                // (e.g. removes a credential) leaves the route's path handling as it was.
                if uri.path() != req.parts.uri.path() {
                    req.path_rewritten = true;
                }
                req.parts.uri = uri;
                Ok(Ok(()))
            }
            Err(_) => Ok(Err(header_error(format!(
                "invalid path {path_with_query:?}"
            )))),
        }
    }

    fn authority(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<String>> {
        Ok(exchange::authority(&self.request()?.parts))
    }

    fn client_address(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(client_address(self.request()?.client))
    }

    fn scheme(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(if self.request()?.tls { "https" } else { "http" }.to_owned())
    }

    fn header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.request()?.parts.headers.get(name.as_str()).map(text))
    }

    fn header_all(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        let h = &self.request()?.parts.headers;
        Ok(h.get_all(name.as_str()).iter().map(text).collect())
    }

    fn headers_get(
        &mut self,
        _: Resource<RequestHandle>,
        names: Vec<String>,
    ) -> wasmtime::Result<Vec<Option<String>>> {
        Ok(headers_get(&self.request()?.parts.headers, names))
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(all(&self.request()?.parts.headers))
    }

    fn edit_headers(
        &mut self,
        _: Resource<RequestHandle>,
        edits: Vec<types::HeaderEdit>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(edit_now(&mut self.request()?.parts.headers, edits))
    }

    fn body(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.request()?.body.as_ref().map(|b| b.to_vec()))
    }

    fn set_body(
        &mut self,
        _: Resource<RequestHandle>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        if !self.body_allowed {
            return Ok(Err(body_not_requested()));
        }
        let req = self.request()?;
        replace_body(&mut req.parts.headers, &body);
        req.body = Some(Bytes::from(body));
        req.body_replaced = true;
        Ok(Ok(()))
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostResponse for HostState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<u16> {
        Ok(self.response()?.parts.status.as_u16())
    }

    fn set_status(
        &mut self,
        _: Resource<ResponseHandle>,
        status: u16,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        match StatusCode::from_u16(status) {
            Ok(s) => {
                self.response()?.parts.status = s;
                Ok(Ok(()))
            }
            Err(_) => Ok(Err(header_error(format!("invalid status {status}")))),
        }
    }

    fn header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.response()?.parts.headers.get(name.as_str()).map(text))
    }

    fn header_all(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        let h = &self.response()?.parts.headers;
        Ok(h.get_all(name.as_str()).iter().map(text).collect())
    }

    fn headers_get(
        &mut self,
        _: Resource<ResponseHandle>,
        names: Vec<String>,
    ) -> wasmtime::Result<Vec<Option<String>>> {
        Ok(headers_get(&self.response()?.parts.headers, names))
    }

    fn headers(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(all(&self.response()?.parts.headers))
    }

    fn edit_headers(
        &mut self,
        _: Resource<ResponseHandle>,
        edits: Vec<types::HeaderEdit>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(edit_now(&mut self.response()?.parts.headers, edits))
    }

    fn body(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.response()?.body.as_ref().map(|b| b.to_vec()))
    }

    fn set_body(
        &mut self,
        _: Resource<ResponseHandle>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        if !self.body_allowed {
            return Ok(Err(body_not_requested()));
        }
        let resp = self.response()?;
        replace_body(&mut resp.parts.headers, &body);
        resp.body = Some(Bytes::from(body));
        resp.body_replaced = true;
        Ok(Ok(()))
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}
