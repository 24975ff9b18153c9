//! The host side of the ABI: what a plugin instance's store holds and the capabilities it imports
//! (request and response resources, context, log, shared state, sandboxed WASI).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode, Uri};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmgate_telemetry::{CounterError, MAX_PLUGIN_COUNTERS, PluginMetrics};

use crate::bindings::wasmgate::plugin::{context, log, metrics, shared_state, types};
use crate::shared::SharedState;

/// The `request` resource's representation: there is one request per call, so the handle carries
/// no data and the host looks at the call's [`Exchange`].
#[derive(Debug)]
#[expect(
    unreachable_pub,
    reason = "bindgen re-exports resource types with `pub use`"
)]
pub struct RequestHandle;

/// The `response` resource's representation, like [`RequestHandle`].
#[derive(Debug)]
#[expect(
    unreachable_pub,
    reason = "bindgen re-exports resource types with `pub use`"
)]
pub struct ResponseHandle;

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

/// Per-request key/value strings shared along the chain.
#[derive(Debug, Default, Clone)]
pub struct Context {
    entries: Vec<(String, String)>,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
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
}

/// What one hook call works on, moved into the store for the call and out after it.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    pub(crate) request: Option<RequestView>,
    pub(crate) response: Option<ResponseView>,
    pub(crate) context: Context,
    pub(crate) request_id: Option<HeaderValue>,
}

/// Who a store belongs to, for logs and state namespacing.
#[derive(Debug)]
pub(crate) struct Tags {
    pub(crate) route: Arc<str>,
    pub(crate) plugin: Arc<str>,
    pub(crate) metrics: PluginMetrics,
    /// Whether a refused counter name was logged already (once per entry, not per call).
    pub(crate) counter_refused: std::sync::atomic::AtomicBool,
}

/// Memory and table limits of one instance; remembers whether the memory limit was hit so a
/// trap that follows can be reported as out-of-memory.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) memory: usize,
    pub(crate) hit_memory_limit: bool,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit_memory_limit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Everything a plugin instance's store holds.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limits,
    pub(crate) exchange: Exchange,
    pub(crate) deadline: Instant,
    /// When a running call starts yielding to the executor at epoch ticks.
    pub(crate) yield_at: Instant,
    pub(crate) tags: Arc<Tags>,
    pub(crate) shared: Arc<dyn SharedState>,
    pub(crate) body_allowed: bool,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("tags", &self.tags)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub(crate) fn new(tags: Arc<Tags>, shared: Arc<dyn SharedState>, memory: usize) -> Self {
        // No preopened directories, no environment, no arguments, no network: the guest sees an
        // empty machine. Its stdout and stderr go to the gateway's log.
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput {
                tags: tags.clone(),
                stream: "stdout",
            })
            .stderr(GuestOutput {
                tags: tags.clone(),
                stream: "stderr",
            })
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits: Limits {
                memory,
                hit_memory_limit: false,
            },
            exchange: Exchange::default(),
            deadline: Instant::now(),
            yield_at: Instant::now(),
            tags,
            shared,
            body_allowed: false,
        }
    }

    fn request(&mut self) -> wasmtime::Result<&mut RequestView> {
        self.exchange
            .request
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("the request is not available in this hook"))
    }

    fn response(&mut self) -> wasmtime::Result<&mut ResponseView> {
        self.exchange
            .response
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("the response is not available in this hook"))
    }

    fn namespaced(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.tags.plugin.len() + 1 + key.len());
        k.push_str(&self.tags.plugin);
        k.push('\u{0}');
        k.push_str(key);
        k
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn header_error(message: String) -> types::HeaderError {
    types::HeaderError { message }
}

fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), types::HeaderError> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| header_error(format!("invalid header name {name:?}")))?;
    let v = HeaderValue::from_str(value)
        .map_err(|_| header_error(format!("invalid value for header {name}")))?;
    Ok((n, v))
}

fn text(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

/// The most header fields a plugin may leave on a request or response, or put in an answer.
pub(crate) const MAX_HEADERS: usize = 1000;

/// Header reads and edits, shared by requests and responses.
mod headers {
    use super::*;

    pub(super) fn get(h: &HeaderMap, name: &str) -> Option<String> {
        h.get(name).map(text)
    }

    pub(super) fn get_all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name).iter().map(text).collect()
    }

    pub(super) fn all(h: &HeaderMap) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.as_str().to_owned(), text(v)))
            .collect()
    }

    pub(super) fn set(
        h: &mut HeaderMap,
        name: &str,
        value: &str,
    ) -> Result<(), types::HeaderError> {
        let (n, v) = parse_header(name, value)?;
        if h.len() >= MAX_HEADERS && !h.contains_key(&n) {
            return Err(too_many());
        }
        h.insert(n, v);
        Ok(())
    }

    pub(super) fn append(
        h: &mut HeaderMap,
        name: &str,
        value: &str,
    ) -> Result<(), types::HeaderError> {
        let (n, v) = parse_header(name, value)?;
        if h.len() >= MAX_HEADERS {
            return Err(too_many());
        }
        h.append(n, v);
        Ok(())
    }

    fn too_many() -> types::HeaderError {
        header_error(format!(
            "a message may carry at most {MAX_HEADERS} header fields"
        ))
    }

    pub(super) fn remove(h: &mut HeaderMap, name: &str) {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            h.remove(n);
        }
    }

    pub(super) fn edit(
        h: &mut HeaderMap,
        set_: Vec<(String, String)>,
        remove_: Vec<String>,
    ) -> Result<(), types::HeaderError> {
        // All or nothing: every edit is checked before any is applied.
        let parsed = set_
            .iter()
            .map(|(n, v)| parse_header(n, v))
            .collect::<Result<Vec<_>, _>>()?;
        let new_names = parsed.iter().filter(|(n, _)| !h.contains_key(n)).count();
        if h.len() + new_names > MAX_HEADERS {
            return Err(too_many());
        }
        for (n, v) in parsed {
            h.insert(n, v);
        }
        for n in &remove_ {
            remove(h, n);
        }
        Ok(())
    }

    pub(super) fn replace_body(h: &mut HeaderMap, body: &[u8]) {
        h.remove(http::header::TRANSFER_ENCODING);
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
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
        let req = self.request()?;
        Ok(match req.parts.uri.authority() {
            Some(a) => Some(a.as_str().to_owned()),
            None => req.parts.headers.get(http::header::HOST).map(text),
        })
    }

    fn client_address(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        let ip = self.request()?.client;
        Ok(match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or_else(|| v6.to_string(), |v4| v4.to_string()),
            IpAddr::V4(v4) => v4.to_string(),
        })
    }

    fn scheme(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(if self.request()?.tls { "https" } else { "http" }.to_owned())
    }

    fn header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(headers::get(&self.request()?.parts.headers, &name))
    }

    fn header_all(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(headers::get_all(&self.request()?.parts.headers, &name))
    }

    fn headers_get(
        &mut self,
        _: Resource<RequestHandle>,
        names: Vec<String>,
    ) -> wasmtime::Result<Vec<Option<String>>> {
        let h = &self.request()?.parts.headers;
        Ok(names.iter().map(|n| headers::get(h, n)).collect())
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(headers::all(&self.request()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(headers::set(
            &mut self.request()?.parts.headers,
            &name,
            &value,
        ))
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(headers::append(
            &mut self.request()?.parts.headers,
            &name,
            &value,
        ))
    }

    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) -> wasmtime::Result<()> {
        headers::remove(&mut self.request()?.parts.headers, &name);
        Ok(())
    }

    fn edit_headers(
        &mut self,
        _: Resource<RequestHandle>,
        set: Vec<(String, String)>,
        remove: Vec<String>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(headers::edit(
            &mut self.request()?.parts.headers,
            set,
            remove,
        ))
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
        headers::replace_body(&mut req.parts.headers, &body);
        req.body = Some(Bytes::from(body));
        req.body_replaced = true;
        Ok(Ok(()))
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

fn body_not_requested() -> types::HeaderError {
    header_error("set-body needs the plugin to ask for bodies (plugin-info.needs-body)".to_owned())
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
        Ok(headers::get(&self.response()?.parts.headers, &name))
    }

    fn header_all(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(headers::get_all(&self.response()?.parts.headers, &name))
    }

    fn headers(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(headers::all(&self.response()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(headers::set(
            &mut self.response()?.parts.headers,
            &name,
            &value,
        ))
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(headers::append(
            &mut self.response()?.parts.headers,
            &name,
            &value,
        ))
    }

    fn remove_header(&mut self, _: Resource<ResponseHandle>, name: String) -> wasmtime::Result<()> {
        headers::remove(&mut self.response()?.parts.headers, &name);
        Ok(())
    }

    fn edit_headers(
        &mut self,
        _: Resource<ResponseHandle>,
        set: Vec<(String, String)>,
        remove: Vec<String>,
    ) -> wasmtime::Result<Result<(), types::HeaderError>> {
        Ok(headers::edit(
            &mut self.response()?.parts.headers,
            set,
            remove,
        ))
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
        headers::replace_body(&mut resp.parts.headers, &body);
        resp.body = Some(Bytes::from(body));
        resp.body_replaced = true;
        Ok(Ok(()))
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl context::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.exchange.context.get(&key).map(str::to_owned))
    }

    fn set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        self.exchange.context.set(key, value);
        Ok(())
    }

    fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        self.exchange.context.remove(&key);
        Ok(())
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let route = &*self.tags.route;
        let plugin = &*self.tags.plugin;
        let request_id = self
            .exchange
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "wasmgate::plugin", $lvl, route, plugin, request_id, "{message}")
            };
        }
        match level {
            log::Level::Trace => emit!(tracing::Level::TRACE),
            log::Level::Debug => emit!(tracing::Level::DEBUG),
            log::Level::Info => emit!(tracing::Level::INFO),
            log::Level::Warn => emit!(tracing::Level::WARN),
            log::Level::Error => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }
}

impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        if let Err(e) = self.tags.metrics.counter_add(&name, delta)
            && !self
                .tags
                .counter_refused
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let why = match e {
                CounterError::InvalidName => {
                    "names are 1-64 characters of a-z, 0-9 and _".to_owned()
                }
                CounterError::TooMany => {
                    format!("a plugin entry may keep at most {MAX_PLUGIN_COUNTERS} counters")
                }
            };
            tracing::warn!(
                route = &*self.tags.route,
                plugin = &*self.tags.plugin,
                counter = name,
                "plugin counter ignored: {why} (logged once)"
            );
        }
        Ok(())
    }
}

impl shared_state::Host for HostState {
    fn counter_add(
        &mut self,
        key: String,
        delta: i64,
        window_ms: u64,
    ) -> wasmtime::Result<shared_state::Counter> {
        let c = self.shared.counter_add(
            &self.namespaced(&key),
            delta,
            Duration::from_millis(window_ms),
        );
        Ok(shared_state::Counter {
            value: c.value,
            reset_ms: u64::try_from(c.reset.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn counter_get(
        &mut self,
        key: String,
        window_ms: u64,
    ) -> wasmtime::Result<shared_state::Counter> {
        let c = self
            .shared
            .counter_get(&self.namespaced(&key), Duration::from_millis(window_ms));
        Ok(shared_state::Counter {
            value: c.value,
            reset_ms: u64::try_from(c.reset.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.shared.kv_get(&self.namespaced(&key)))
    }

    fn kv_set(&mut self, key: String, value: String, ttl_ms: u64) -> wasmtime::Result<()> {
        self.shared
            .kv_set(&self.namespaced(&key), value, Duration::from_millis(ttl_ms));
        Ok(())
    }

    fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        value: String,
        ttl_ms: u64,
    ) -> wasmtime::Result<bool> {
        Ok(self.shared.kv_compare_and_swap(
            &self.namespaced(&key),
            expected.as_deref(),
            value,
            Duration::from_millis(ttl_ms),
        ))
    }

    fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.shared.kv_delete(&self.namespaced(&key));
        Ok(())
    }
}

/// Guest stdout/stderr: each line becomes a log event tagged with route and plugin.
struct GuestOutput {
    tags: Arc<Tags>,
    stream: &'static str,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            tags: self.tags.clone(),
            stream: self.stream,
            line: Vec::new(),
        })
    }
}

/// Longest line kept; longer output is logged in pieces of this size.
const MAX_LINE: usize = 4096;

struct LineLogger {
    tags: Arc<Tags>,
    stream: &'static str,
    line: Vec<u8>,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        tracing::warn!(
            target: "wasmgate::plugin",
            route = &*self.tags.route,
            plugin = &*self.tags.plugin,
            stream = self.stream,
            "{}",
            text.trim_end()
        );
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.emit();
    }
}
