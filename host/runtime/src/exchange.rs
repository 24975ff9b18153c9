//! What the plugin chain works on for one request: the request and response as plugins see and
//! edit them, the per-request context, and the header edits and declared inputs that cross the
//! sandbox boundary in one piece.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};

/// The most header fields a plugin may leave on a request or response, or put in an answer.
pub(crate) const MAX_HEADERS: usize = 1000;

/// The most inputs a plugin may declare per hook.
pub(crate) const MAX_INPUTS: usize = 64;

/// A request as plugins see and edit it.
#[derive(Debug)]
pub struct RequestView {
    /// Method, URI, headers.
    pub parts: http::request::Parts,
    /// The buffered body, when the chain asked for bodies and it fit in `max_body`.
    pub body: Option<Bytes>,
    /// Whether a plugin replaced the body (the proxy then fixes `content-length`).
    pub body_replaced: bool,
    /// Whether a plugin rewrote the path (the route's `strip_path` then no longer applies).
    pub path_rewritten: bool,
    /// The client's address.
    pub client: IpAddr,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

/// A response as plugins see and edit it.
#[derive(Debug)]
pub struct ResponseView {
    /// Status and headers.
    pub parts: http::response::Parts,
    /// The buffered body, when the chain asked for bodies and it fit in `max_body`.
    pub body: Option<Bytes>,
    /// Whether a plugin replaced the body.
    pub body_replaced: bool,
}

/// What travels along the chain with one request, through both phases: the context's key/value
/// strings, the response edits each plugin's request hook scheduled, and, when tracing asked for
/// it, the hook calls made.
#[derive(Debug, Default, Clone)]
pub struct Context {
    entries: Vec<(String, String)>,
    /// (plugin's position in the chain, its scheduled edits), in the order the hooks ran.
    pub(crate) scheduled: Vec<(usize, Vec<Edit>)>,
    /// The hook calls made, when recorded ([`Context::record_hooks`]).
    pub(crate) hooks: Option<Vec<HookCall>>,
}

/// One plugin hook call, as tracing shows it.
#[derive(Debug, Clone)]
pub struct HookCall {
    /// The plugin's name.
    pub plugin: Arc<str>,
    /// `on_response` (or else `on_request`).
    pub response: bool,
    /// When the call started.
    pub started: Instant,
    /// How long it took.
    pub elapsed: Duration,
    /// How it ended: `continue`, `respond`, `reject`, or the failure's kind (`error`, `trap`,
    /// `timeout`, `oom`, `unavailable`).
    pub outcome: &'static str,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records every hook call from now on, for [`Context::take_hooks`].
    pub fn record_hooks(&mut self) {
        self.hooks.get_or_insert_with(Vec::new);
    }

    /// The hook calls recorded so far, in the order they ran; none unless
    /// [`Context::record_hooks`] was called.
    pub fn take_hooks(&mut self) -> Vec<HookCall> {
        self.hooks.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`.
    pub fn set(&mut self, key: String, value: String) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) {
        self.entries.retain(|(k, _)| k != key);
    }

    /// Applies a hook's writes in order.
    pub(crate) fn write(&mut self, writes: Vec<(String, Option<String>)>) {
        for (key, value) in writes {
            match value {
                Some(value) => self.set(key, value),
                None => self.remove(&key),
            }
        }
    }

    /// The response edits scheduled by the plugin at `position`, taken out.
    pub(crate) fn take_scheduled(&mut self, position: usize) -> Option<Vec<Edit>> {
        let i = self.scheduled.iter().position(|(p, _)| *p == position)?;
        Some(self.scheduled.swap_remove(i).1)
    }
}

/// A checked header edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Edit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))
}

fn header_value(name: &HeaderName, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))
}

impl Edit {
    /// `set`, checked as HTTP; the message names what is wrong.
    pub(crate) fn set(name: &str, value: &str) -> Result<Self, String> {
        let name = header_name(name)?;
        let value = header_value(&name, value)?;
        Ok(Self::Set(name, value))
    }

    /// `append`, checked as HTTP.
    pub(crate) fn append(name: &str, value: &str) -> Result<Self, String> {
        let name = header_name(name)?;
        let value = header_value(&name, value)?;
        Ok(Self::Append(name, value))
    }

    /// `remove`; none for a name no header can have.
    pub(crate) fn remove(name: &str) -> Option<Self> {
        HeaderName::from_bytes(name.as_bytes())
            .ok()
            .map(Self::Remove)
    }
}

/// Applies `edits` to `headers` in order, all or nothing: refused when the message would carry
/// more than [`MAX_HEADERS`] fields.
pub(crate) fn apply(headers: &mut HeaderMap, edits: &[Edit]) -> Result<(), String> {
    let added = edits
        .iter()
        .filter(|e| match e {
            Edit::Append(..) => true,
            Edit::Set(name, _) => !headers.contains_key(name),
            Edit::Remove(_) => false,
        })
        .count();
    if headers.len() + added > MAX_HEADERS {
        return Err(format!(
            "a message may carry at most {MAX_HEADERS} header fields"
        ));
    }
    for edit in edits {
        match edit {
            Edit::Set(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            Edit::Append(name, value) => {
                headers.append(name.clone(), value.clone());
            }
            Edit::Remove(name) => {
                headers.remove(name);
            }
        }
    }
    Ok(())
}

/// Something a hook declared it reads on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    Header(HeaderName),
    Context(String),
    Method,
    PathWithQuery,
    Authority,
    ClientAddress,
    Scheme,
    Status,
}

/// The text of a header value (lossy for the rare non-UTF-8 value).
pub(crate) fn text(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

/// The client address as plugins see it: an IPv4-mapped IPv6 peer is its IPv4 address.
pub(crate) fn client_address(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute form) or `Host`.
pub(crate) fn authority(parts: &http::request::Parts) -> Option<String> {
    match parts.uri.authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => parts.headers.get(HOST).map(text),
    }
}

/// The values of `inputs` for a request hook, in order.
pub(crate) fn request_inputs(
    inputs: &[Input],
    view: &RequestView,
    ctx: &Context,
) -> Vec<Option<String>> {
    inputs
        .iter()
        .map(|input| match input {
            Input::Header(name) => view.parts.headers.get(name).map(text),
            Input::Context(key) => ctx.get(key).map(str::to_owned),
            Input::Method => Some(view.parts.method.as_str().to_owned()),
            Input::PathWithQuery => Some(
                view.parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned(),
            ),
            Input::Authority => authority(&view.parts),
            Input::ClientAddress => Some(client_address(view.client)),
            Input::Scheme => Some(if view.tls { "https" } else { "http" }.to_owned()),
            Input::Status => None,
        })
        .collect()
}

/// The values of `inputs` for a response hook, in order.
pub(crate) fn response_inputs(
    inputs: &[Input],
    view: &ResponseView,
    ctx: &Context,
) -> Vec<Option<String>> {
    inputs
        .iter()
        .map(|input| match input {
            Input::Header(name) => view.parts.headers.get(name).map(text),
            Input::Context(key) => ctx.get(key).map(str::to_owned),
            Input::Status => Some(view.parts.status.as_str().to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn edits_apply_in_order() {
        let mut h = headers(&[("a", "1"), ("b", "2")]);
        let edits = [
            Edit::set("a", "x").unwrap(),
            Edit::append("a", "y").unwrap(),
            Edit::remove("b").unwrap(),
            Edit::set("c", "3").unwrap(),
        ];
        apply(&mut h, &edits).unwrap();
        let a: Vec<_> = h.get_all("a").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(a, ["x", "y"]);
        assert!(!h.contains_key("b"));
        assert_eq!(h["c"], "3");
    }

    #[test]
    fn edits_are_checked_and_bounded() {
        assert_eq!(
            Edit::set("a b", "x").unwrap_err(),
            r#"invalid header name "a b""#
        );
        assert!(
            Edit::append("a", "x\ny")
                .unwrap_err()
                .contains("invalid value")
        );
        assert_eq!(Edit::remove("a b"), None);
        let mut h = HeaderMap::new();
        let many: Vec<Edit> = (0..=MAX_HEADERS)
            .map(|i| Edit::set(&format!("h{i}"), "v").unwrap())
            .collect();
        assert!(apply(&mut h, &many).is_err());
        assert!(h.is_empty(), "all or nothing");
    }

    #[test]
    fn context_writes_and_scheduled_edits() {
        let mut ctx = Context::new();
        ctx.write(vec![
            ("a".into(), Some("1".into())),
            ("b".into(), Some("2".into())),
            ("a".into(), None),
        ]);
        assert_eq!(ctx.get("a"), None);
        assert_eq!(ctx.get("b"), Some("2"));
        ctx.scheduled.push((1, vec![Edit::remove("x").unwrap()]));
        assert!(ctx.take_scheduled(0).is_none());
        assert_eq!(ctx.take_scheduled(1).map(|e| e.len()), Some(1));
        assert!(ctx.take_scheduled(1).is_none());
    }
}
