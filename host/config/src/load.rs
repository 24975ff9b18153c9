//! Turns the TOML document into a [`Config`], collecting every problem instead of stopping at the first.
//!
//! serde's derive stops at the first error and loses the position of most of them, so the document
//! is parsed into `toml`'s spanned tree and read key by key here.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Report, did_you_mean};
use crate::model::*;

type Value<'i> = Spanned<DeValue<'i>>;

const GATEWAY_KEYS: &[&str] = &[
    "listen",
    "plugins_dir",
    "tls",
    "header_read_timeout",
    "idle_timeout",
    "send_timeout",
    "max_header_size",
    "max_headers",
    "shutdown_grace",
    "http2",
    "dns",
    "tracing",
    "state",
    "merge_slashes",
    "escaped_slashes",
    "max_request_body",
    "max_connections",
    "max_connections_per_client",
    "trusted_proxies",
    "client_address_header",
    "proxy_protocol",
    "plugin_cache_dir",
    "admin",
    "admin_token",
    "admin_token_file",
    "access_log",
    "watch",
    "workers",
    "compression",
];
const HTTP2_KEYS: &[&str] = &[
    "max_concurrent_streams",
    "max_pending_reset_streams",
    "max_local_reset_streams",
    "keepalive_interval",
    "keepalive_timeout",
];
const DNS_KEYS: &[&str] = &["nameservers", "lookup", "min_ttl", "max_ttl"];
const STATE_KEYS: &[&str] = &[
    "backend",
    "url",
    "cluster",
    "pool_size",
    "timeout",
    "on_unavailable",
    "key_prefix",
    "ca",
];
const TRACING_KEYS: &[&str] = &[
    "endpoint",
    "sample_ratio",
    "service_name",
    "headers",
    "timeout",
    "export_interval",
];
const TLS_KEYS: &[&str] = &["listen", "certificates", "client_auth"];
const CLIENT_AUTH_KEYS: &[&str] = &["ca", "required"];
const CERT_KEYS: &[&str] = &["cert", "key"];
const UPSTREAM_KEYS: &[&str] = &[
    "targets",
    "protocol",
    "tls",
    "connect_timeout",
    "timeout",
    "pool_idle_timeout",
    "pool_max_idle",
    "balance",
    "hash_on",
    "outlier_detection",
    "max_requests",
    "max_connections",
    "max_pending",
    "health_check",
    "retries",
];
const HEALTH_CHECK_KEYS: &[&str] = &[
    "type",
    "path",
    "host",
    "statuses",
    "interval",
    "timeout",
    "healthy",
    "unhealthy",
];
const RETRIES_KEYS: &[&str] = &[
    "attempts",
    "statuses",
    "methods",
    "max_body",
    "per_try_timeout",
    "backoff",
    "max_backoff",
    "budget_percent",
    "min_retry_concurrency",
];
const OUTLIER_KEYS: &[&str] = &[
    "consecutive_errors",
    "consecutive_5xx",
    "base_ejection",
    "max_ejection",
    "max_ejection_percent",
];
const TARGET_KEYS: &[&str] = &["address", "weight"];
const UPSTREAM_TLS_KEYS: &[&str] = &["ca", "cert", "key", "server_name", "verify"];
const ROUTE_KEYS: &[&str] = &[
    "name",
    "hosts",
    "paths",
    "methods",
    "headers",
    "upstream",
    "respond",
    "strip_path",
    "protocols",
    "https_redirect",
    "preserve_host",
    "case_sensitive",
    "max_body",
    "plugins",
    "upstreams",
    "sticky",
    "mirror",
    "cache",
    "compression",
];
const BACKEND_KEYS: &[&str] = &["name", "weight", "headers", "cookies"];
const MIRROR_KEYS: &[&str] = &["upstream", "percent", "max_body", "max_in_flight"];
const CACHE_KEYS: &[&str] = &[
    "ttl",
    "max_size",
    "max_entry_size",
    "methods",
    "vary",
    "client_no_cache",
    "lock_timeout",
    "keep",
];
const COMPRESSION_KEYS: &[&str] = &[
    "codecs",
    "min_size",
    "types",
    "gzip_level",
    "brotli_level",
    "zstd_level",
    "decompress_requests",
];
const PLUGIN_KEYS: &[&str] = &[
    "name",
    "path",
    "config",
    "memory",
    "timeout",
    "on_error",
    "isolation",
    "max_instances",
];
const RESPOND_KEYS: &[&str] = &["status", "body", "headers"];

pub(crate) fn parse(file: &Path, text: &str) -> Result<Config, crate::ConfigError> {
    let mut report = Report::new(file, text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        // Only the first: after a syntax error the parser's recovery guesses, and its later
        // complaints are mostly echoes of the first.
        if let Some(e) = syntax_errors.first() {
            let span = e.span().unwrap_or(0..0);
            let message = format!("invalid TOML: {}", e.message().trim_end());
            report.error(&span, "", message);
        }
        return Err(report
            .finish()
            .err()
            .unwrap_or(crate::ConfigError::Invalid(Vec::new())));
    }
    // Absolute, so that relative paths in the file mean the same wherever they are used from
    // (wasmtime's compile cache refuses a relative directory) and name the real place in errors.
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty());
    let base = std::path::absolute(folder.unwrap_or(Path::new(".")))
        .unwrap_or_else(|_| folder.unwrap_or(Path::new("")).to_path_buf());
    let mut reader = Reader {
        report,
        base: &base,
        tls_listeners: false,
        compression: None,
    };
    let mut config = reader.config(file, doc.get_ref(), &doc.span());
    config.locations = std::mem::take(&mut reader.report.keys);
    reader.report.finish()?;
    Ok(config)
}

fn default_gateway(base: &Path) -> Gateway {
    Gateway {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
        plugins_dir: base.join("plugins"),
        tls: None,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(60),
        max_header_size: 64 * 1024,
        max_headers: 100,
        shutdown_grace: Duration::from_secs(30),
        http2: Http2 {
            max_concurrent_streams: 128,
            max_pending_reset_streams: 20,
            max_local_reset_streams: 1024,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
        },
        dns: Dns::default(),
        tracing: None,
        state: StateBackend::Memory,
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
        max_request_body: 100 << 20,
        max_connections: 0,
        max_connections_per_client: 0,
        trusted_proxies: Vec::new(),
        proxy_protocol: false,
        client_address_header: ClientAddressHeader::XForwardedFor,
        plugin_cache_dir: default_cache_dir(),
        admin: None,
        admin_token: None,
        access_log: AccessLog::Stdout,
        watch: true,
        workers: default_workers(),
        compression: None,
    }
}

/// The CPUs this process may run on (its affinity mask and cgroup quota, so 1 under
/// `taskset -c 0`).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wasmgate"))
}

struct Reader<'r> {
    report: Report<'r>,
    base: &'r Path,
    /// Whether `[gateway.tls]` has listeners: routes check `protocols` against it.
    tls_listeners: bool,
    /// `[gateway.compression]`: what routes without their own `compression` get.
    compression: Option<Compression>,
}

/// A table whose keys have been checked against the known ones.
struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    span: Range<usize>,
    path: String,
}

impl<'t, 'i> Table<'t, 'i> {
    fn get(&self, key: &str) -> Option<&'t Value<'i>> {
        self.table.get(key)
    }

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'r> Reader<'r> {
    fn err(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        self.report.error(span, key, message);
    }

    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        let message = format!("expected {expected}, found {}", type_name(v.get_ref()));
        self.err(&v.span(), key, message);
    }

    /// Checks `v` is a table and reports each key not in `known`.
    fn table<'t, 'i>(
        &mut self,
        v: &'t Value<'i>,
        path: &str,
        known: &[&str],
    ) -> Option<Table<'t, 'i>> {
        let DeValue::Table(table) = v.get_ref() else {
            self.wrong_type(v, path, "a table");
            return None;
        };
        Some(self.checked_table(table, v.span(), path, known))
    }

    fn checked_table<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        span: Range<usize>,
        path: &str,
        known: &[&str],
    ) -> Table<'t, 'i> {
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            let location = self.report.locate(&key.span());
            self.report.keys.insert(join(path, name), location);
            if !known.contains(&name) {
                let message = match did_you_mean(name, known.iter().copied()) {
                    Some(m) => format!("unknown key `{name}`, did you mean `{m}`?"),
                    None => format!(
                        "unknown key `{name}` (expected one of: {})",
                        known.join(", ")
                    ),
                };
                self.err(&key.span(), &join(path, name), message);
            }
        }
        Table {
            table,
            span,
            path: path.to_owned(),
        }
    }

    fn string<'v>(&mut self, v: &'v Value<'_>, key: &str) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.wrong_type(v, key, "a string");
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(v, key, "a boolean (true or false)");
                None
            }
        }
    }

    fn integer(&mut self, v: &Value<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(v, key, "an integer");
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= 0 && (min..=max).contains(&n.unsigned_abs()) => Some(n.unsigned_abs()),
            _ => {
                let message = format!("{i} is out of range (expected {min} to {max})");
                self.err(&v.span(), key, message);
                None
            }
        }
    }

    fn array<'t, 'i>(&mut self, v: &'t Value<'i>, key: &str) -> Option<&'t [Value<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.wrong_type(v, key, "an array");
                None
            }
        }
    }

    fn duration(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        let DeValue::String(s) = v.get_ref() else {
            self.wrong_type(
                v,
                key,
                "a duration string such as \"250ms\", \"2s\" or \"1m\"",
            );
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                let message =
                    format!("invalid duration {s:?}: {e} (write e.g. \"250ms\", \"2s\" or \"1m\")");
                self.err(&v.span(), key, message);
                None
            }
        }
    }

    /// A duration that must be positive.
    fn timeout(&mut self, v: &Value<'_>, key: &str) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d.is_zero() {
            self.err(&v.span(), key, "must be greater than zero");
            return None;
        }
        Some(d)
    }

    fn size(&mut self, v: &Value<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let n = match v.get_ref() {
            DeValue::Integer(_) => return self.integer(v, key, min, max),
            DeValue::String(s) => match s.parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(e) => {
                    let message =
                        format!("invalid size {s:?}: {e} (write e.g. \"64KiB\" or a byte count)");
                    self.err(&v.span(), key, message);
                    return None;
                }
            },
            _ => {
                self.wrong_type(v, key, "a size such as \"64KiB\" or a byte count");
                return None;
            }
        };
        if !(min..=max).contains(&n) {
            let message = format!("{n} bytes is out of range (expected {min} to {max})");
            self.err(&v.span(), key, message);
            return None;
        }
        Some(n)
    }

    fn path(&mut self, v: &Value<'_>, key: &str) -> Option<PathBuf> {
        let s = self.string(v, key)?;
        if s.is_empty() {
            self.err(&v.span(), key, "must not be empty");
            return None;
        }
        Some(self.base.join(s))
    }

    fn socket_addrs(&mut self, v: &Value<'_>, key: &str) -> Vec<SocketAddr> {
        let Some(items) = self.array(v, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            let Some(s) = self.string(item, &k) else {
                continue;
            };
            match s.parse::<SocketAddr>() {
                Ok(a) => out.push(a),
                Err(_) => self.err(
                    &item.span(),
                    &k,
                    format!("invalid listen address {s:?} (expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"),
                ),
            }
        }
        out
    }

    fn header_map(&mut self, v: &Value<'_>, key: &str) -> Vec<(HeaderName, HeaderValue)> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(v, key, "a table of header names to values");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, value) in t.iter() {
            let k = join(key, name.get_ref());
            let header = match HeaderName::from_bytes(name.get_ref().as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    let message = format!("invalid header name {:?}", name.get_ref());
                    self.err(&name.span(), &k, message);
                    None
                }
            };
            let Some(text) = self.string(value, &k) else {
                continue;
            };
            let parsed = match HeaderValue::from_str(text) {
                Ok(h) => Some(h),
                Err(_) => {
                    let message = format!(
                        "invalid header value {text:?} (control characters are not allowed)"
                    );
                    self.err(&value.span(), &k, message);
                    None
                }
            };
            if let (Some(h), Some(v)) = (header, parsed) {
                out.push((h, v));
            }
        }
        out
    }

    fn config(&mut self, file: &Path, doc: &DeTable<'_>, span: &Range<usize>) -> Config {
        let root = self.checked_table(doc, span.clone(), "", &["gateway", "upstreams", "routes"]);
        let gateway = match root.get("gateway") {
            Some(v) => self.gateway(v),
            None => default_gateway(self.base),
        };
        self.tls_listeners = gateway.tls.as_ref().is_some_and(|t| !t.listen.is_empty());
        self.compression = gateway.compression.clone();
        let upstreams = match root.get("upstreams") {
            Some(v) => self.upstreams(v),
            None => Vec::new(),
        };
        let routes = match root.get("routes") {
            Some(v) => self.routes(v, &upstreams, &gateway.plugins_dir),
            None => Vec::new(),
        };
        if let Some(v) = root.get("routes")
            && v.get_ref().as_array().is_some_and(|a| a.is_empty())
        {
            self.err(
                &v.span(),
                "routes",
                "no routes are configured: add at least one [[routes]] table",
            );
        }
        if routes.is_empty() && root.get("routes").is_none() {
            self.err(
                &(0..0),
                "routes",
                "no routes are configured: add at least one [[routes]] table",
            );
        }
        Config {
            file: file.to_path_buf(),
            gateway,
            upstreams,
            routes,
            locations: std::collections::HashMap::new(),
        }
    }

    fn gateway(&mut self, v: &Value<'_>) -> Gateway {
        let mut g = default_gateway(self.base);
        let Some(t) = self.table(v, "gateway", GATEWAY_KEYS) else {
            return g;
        };
        if let Some(v) = t.get("listen") {
            g.listen = self.socket_addrs(v, &t.key("listen"));
        }
        if let Some(v) = t.get("plugins_dir")
            && let Some(p) = self.path(v, &t.key("plugins_dir"))
        {
            g.plugins_dir = p;
        }
        if let Some(v) = t.get("header_read_timeout")
            && let Some(d) = self.timeout(v, &t.key("header_read_timeout"))
        {
            g.header_read_timeout = d;
        }
        if let Some(v) = t.get("idle_timeout")
            && let Some(d) = self.timeout(v, &t.key("idle_timeout"))
        {
            g.idle_timeout = d;
        }
        if let Some(v) = t.get("send_timeout")
            && let Some(d) = self.timeout(v, &t.key("send_timeout"))
        {
            g.send_timeout = d;
        }
        if let Some(v) = t.get("shutdown_grace")
            && let Some(d) = self.duration(v, &t.key("shutdown_grace"))
        {
            g.shutdown_grace = d;
        }
        if let Some(v) = t.get("max_header_size")
            && let Some(n) = self.size(v, &t.key("max_header_size"), 8192, 1 << 24)
        {
            g.max_header_size = n as usize;
        }
        if let Some(v) = t.get("max_headers")
            && let Some(n) = self.integer(v, &t.key("max_headers"), 1, 10_000)
        {
            g.max_headers = n as usize;
        }
        if let Some(v) = t.get("plugin_cache_dir")
            && let Some(p) = self.string(v, &t.key("plugin_cache_dir"))
        {
            g.plugin_cache_dir = (!p.is_empty()).then(|| self.base.join(p));
        }
        if let Some(v) = t.get("admin")
            && let Some(s) = self.string(v, &t.key("admin"))
        {
            match s.parse::<SocketAddr>() {
                Ok(a) => g.admin = Some(a),
                Err(_) => self.err(
                    &v.span(),
                    &t.key("admin"),
                    format!(
                        "invalid admin address {s:?} (expected IP:PORT, e.g. \"127.0.0.1:9901\")"
                    ),
                ),
            }
        }
        match (t.get("admin_token"), t.get("admin_token_file")) {
            (Some(_), Some(file)) => self.err(
                &file.span(),
                &t.key("admin_token_file"),
                "give the admin token once: admin_token or admin_token_file, not both",
            ),
            (Some(v), None) => {
                if let Some(s) = self.string(v, &t.key("admin_token")) {
                    g.admin_token = self.token(s, &v.span(), &t.key("admin_token"));
                }
            }
            (None, Some(v)) => {
                if let Some(path) = self.path(v, &t.key("admin_token_file")) {
                    match std::fs::read_to_string(&path) {
                        Ok(text) => {
                            g.admin_token =
                                self.token(text.trim(), &v.span(), &t.key("admin_token_file"));
                        }
                        Err(e) => {
                            let message = format!("cannot read {}: {e}", path.display());
                            self.err(&v.span(), &t.key("admin_token_file"), message);
                        }
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(v) = t.get("access_log")
            && let Some(s) = self.string(v, &t.key("access_log"))
        {
            g.access_log = match s {
                "stdout" => AccessLog::Stdout,
                "off" => AccessLog::Off,
                "" => {
                    self.err(
                        &v.span(),
                        &t.key("access_log"),
                        "must not be empty: \"stdout\", \"off\" or a file path",
                    );
                    AccessLog::Stdout
                }
                path => AccessLog::File(self.base.join(path)),
            };
        }
        if let Some(v) = t.get("watch")
            && let Some(b) = self.boolean(v, &t.key("watch"))
        {
            g.watch = b;
        }
        if let Some(v) = t.get("workers")
            && let Some(n) = self.integer(v, &t.key("workers"), 1, 1024)
        {
            g.workers = n as usize;
        }
        if let Some(v) = t.get("http2") {
            self.http2(v, &mut g.http2);
        }
        if let Some(v) = t.get("dns") {
            self.dns(v, &mut g.dns);
        }
        if let Some(v) = t.get("tracing") {
            g.tracing = self.tracing(v);
        }
        if let Some(v) = t.get("state")
            && let Some(state) = self.state(v)
        {
            g.state = state;
        }
        if let Some(v) = t.get("compression") {
            g.compression = self.compression(v, &t.key("compression"));
        }
        for (name, field) in [
            ("max_connections", &mut g.max_connections),
            (
                "max_connections_per_client",
                &mut g.max_connections_per_client,
            ),
        ] {
            if let Some(v) = t.get(name)
                && let Some(n) = self.integer(v, &t.key(name), 0, 10_000_000)
            {
                *field = n as usize;
            }
        }
        if let Some(v) = t.get("max_request_body")
            && let Some(n) = self.size(v, &t.key("max_request_body"), 0, 1 << 40)
        {
            g.max_request_body = n;
        }
        if let Some(v) = t.get("trusted_proxies")
            && let Some(items) = self.array(v, &t.key("trusted_proxies"))
        {
            for (i, item) in items.iter().enumerate() {
                let key = format!("{}[{i}]", t.key("trusted_proxies"));
                let Some(s) = self.string(item, &key) else {
                    continue;
                };
                match (s.parse::<ipnet::IpNet>(), s.parse::<std::net::IpAddr>()) {
                    (Ok(net), _) => g.trusted_proxies.push(net.trunc()),
                    (_, Ok(ip)) => g.trusted_proxies.push(ipnet::IpNet::from(ip)),
                    _ => self.err(
                        &item.span(),
                        &key,
                        format!("invalid network {s:?} (expected an address or CIDR, e.g. \"10.0.0.0/8\" or \"192.168.1.7\")"),
                    ),
                }
            }
        }
        if let Some(v) = t.get("client_address_header")
            && let Some(s) = self.string(v, &t.key("client_address_header"))
        {
            match s.to_ascii_lowercase().as_str() {
                "x-forwarded-for" => g.client_address_header = ClientAddressHeader::XForwardedFor,
                "forwarded" => g.client_address_header = ClientAddressHeader::Forwarded,
                _ => {
                    let message = format!(
                        "invalid client_address_header {s:?} (expected \"x-forwarded-for\" or \"forwarded\")"
                    );
                    self.err(&v.span(), &t.key("client_address_header"), message);
                }
            }
            if g.trusted_proxies.is_empty() {
                self.err(
                    &v.span(),
                    &t.key("client_address_header"),
                    "applies with trusted_proxies only: the header is believed from those proxies",
                );
            }
        }
        if let Some(v) = t.get("proxy_protocol")
            && let Some(b) = self.boolean(v, &t.key("proxy_protocol"))
        {
            g.proxy_protocol = b;
            if b && g.trusted_proxies.is_empty() {
                self.err(
                    &v.span(),
                    &t.key("proxy_protocol"),
                    "needs trusted_proxies: a PROXY header is only believed from those proxies",
                );
            }
        }
        if let Some(v) = t.get("merge_slashes")
            && let Some(b) = self.boolean(v, &t.key("merge_slashes"))
        {
            g.merge_slashes = b;
        }
        if let Some(v) = t.get("escaped_slashes")
            && let Some(s) = self.string(v, &t.key("escaped_slashes"))
        {
            match s {
                "reject" => g.escaped_slashes = EscapedSlashes::Reject,
                "keep" => g.escaped_slashes = EscapedSlashes::Keep,
                "decode" => g.escaped_slashes = EscapedSlashes::Decode,
                other => {
                    let message = format!(
                        "invalid escaped_slashes {other:?} (expected \"reject\", \"keep\" or \"decode\")"
                    );
                    self.err(&v.span(), &t.key("escaped_slashes"), message);
                }
            }
        }
        if let Some(v) = t.get("tls") {
            g.tls = self.tls(v);
        }
        let tls_listen = g.tls.as_ref().map_or(0, |t| t.listen.len());
        if g.listen.is_empty() && tls_listen == 0 {
            let span = t.get("listen").map_or(t.span.clone(), |v| v.span());
            self.err(
                &span,
                "gateway.listen",
                "no listeners: give at least one address in gateway.listen or gateway.tls.listen",
            );
        }
        let mut seen = HashSet::new();
        let all = g
            .listen
            .iter()
            .chain(g.tls.iter().flat_map(|t| t.listen.iter()));
        for addr in all {
            if addr.port() != 0 && !seen.insert(*addr) {
                let span = t.get("listen").map_or(t.span.clone(), |v| v.span());
                self.err(
                    &span,
                    "gateway.listen",
                    format!("address {addr} is listed twice"),
                );
            }
        }
        g
    }

    fn http2(&mut self, v: &Value<'_>, h: &mut Http2) {
        let Some(t) = self.table(v, "gateway.http2", HTTP2_KEYS) else {
            return;
        };
        if let Some(v) = t.get("max_concurrent_streams")
            && let Some(n) = self.integer(v, &t.key("max_concurrent_streams"), 1, 1 << 20)
        {
            h.max_concurrent_streams = n as u32;
        }
        if let Some(v) = t.get("max_pending_reset_streams")
            && let Some(n) = self.integer(v, &t.key("max_pending_reset_streams"), 1, 1 << 20)
        {
            h.max_pending_reset_streams = n as usize;
        }
        if let Some(v) = t.get("max_local_reset_streams")
            && let Some(n) = self.integer(v, &t.key("max_local_reset_streams"), 1, 1 << 20)
        {
            h.max_local_reset_streams = n as usize;
        }
        if let Some(v) = t.get("keepalive_interval")
            && let Some(d) = self.duration(v, &t.key("keepalive_interval"))
        {
            h.keepalive_interval = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = t.get("keepalive_timeout")
            && let Some(d) = self.timeout(v, &t.key("keepalive_timeout"))
        {
            h.keepalive_timeout = d;
        }
    }

    /// An admin token: long enough that guessing it is hopeless, and sendable in a header.
    fn token(&mut self, token: &str, span: &Range<usize>, key: &str) -> Option<Secret> {
        if token.len() < 16 {
            self.err(
                span,
                key,
                "the admin token must be at least 16 characters (e.g. `openssl rand -hex 32`)",
            );
            return None;
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            self.err(
                span,
                key,
                "the admin token must be printable ASCII without spaces",
            );
            return None;
        }
        Some(Secret(token.to_owned()))
    }

    fn state(&mut self, v: &Value<'_>) -> Option<StateBackend> {
        let t = self.table(v, "gateway.state", STATE_KEYS)?;
        let backend = match t.get("backend") {
            None => "memory",
            Some(b) => match self.string(b, &t.key("backend"))? {
                s @ ("memory" | "redis") => s,
                other => {
                    let message =
                        format!("unknown backend {other:?} (expected \"memory\" or \"redis\")");
                    self.err(&b.span(), &t.key("backend"), message);
                    return None;
                }
            },
        };
        if backend == "memory" {
            for (name, _) in t.table.iter() {
                if name.get_ref() != "backend" {
                    self.err(
                        &name.span(),
                        &t.key(name.get_ref()),
                        "applies with backend = \"redis\" only",
                    );
                }
            }
            return Some(StateBackend::Memory);
        }
        let url = t.get("url").and_then(|url| {
            let text = self.string(url, &t.key("url"))?;
            self.redis_url(text, &url.span(), &t.key("url"))
        });
        let cluster = t.get("cluster").and_then(|cluster| {
            let items = self.array(cluster, &t.key("cluster"))?;
            if items.is_empty() {
                self.err(
                    &cluster.span(),
                    &t.key("cluster"),
                    "give at least one node, e.g. [\"redis://10.0.0.1:6379\"]",
                );
                return None;
            }
            let mut urls = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let key = format!("{}[{i}]", t.key("cluster"));
                if let Some(url) = self
                    .string(item, &key)
                    .and_then(|s| self.redis_url(s, &item.span(), &key))
                {
                    urls.push(url);
                }
            }
            (urls.len() == items.len()).then_some(urls)
        });
        let servers = match (t.get("url"), t.get("cluster")) {
            (Some(_), None) => url.map(RedisServers::Single),
            (None, Some(_)) => cluster.map(RedisServers::Cluster),
            (Some(_), Some(c)) => {
                self.err(
                    &c.span(),
                    &t.key("cluster"),
                    "give either url (one server) or cluster (a Redis Cluster's nodes), not both",
                );
                None
            }
            (None, None) => {
                self.err(
                    &v.span(),
                    &t.key("url"),
                    "missing: backend = \"redis\" needs url, e.g. \"redis://127.0.0.1:6379\" (or cluster)",
                );
                None
            }
        };
        let mut redis = Redis {
            servers: RedisServers::Cluster(Vec::new()),
            pool_size: 4,
            timeout: Duration::from_millis(250),
            on_unavailable: OnUnavailable::Local,
            key_prefix: "wasmgate:".to_owned(),
            ca: None,
        };
        if let Some(v) = t.get("pool_size")
            && let Some(n) = self.integer(v, &t.key("pool_size"), 1, 64)
        {
            redis.pool_size = n as usize;
        }
        if let Some(v) = t.get("timeout")
            && let Some(d) = self.timeout(v, &t.key("timeout"))
        {
            redis.timeout = d;
        }
        if let Some(v) = t.get("on_unavailable")
            && let Some(s) = self.string(v, &t.key("on_unavailable"))
        {
            redis.on_unavailable = match s {
                "local" => OnUnavailable::Local,
                "deny" => OnUnavailable::Deny,
                "allow" => OnUnavailable::Allow,
                other => {
                    let message = format!(
                        "unknown policy {other:?} (expected \"local\", \"deny\" or \"allow\")"
                    );
                    self.err(&v.span(), &t.key("on_unavailable"), message);
                    OnUnavailable::Local
                }
            };
        }
        if let Some(v) = t.get("key_prefix")
            && let Some(s) = self.string(v, &t.key("key_prefix"))
        {
            s.clone_into(&mut redis.key_prefix);
        }
        if let Some(v) = t.get("ca")
            && let Some((path, _)) = self.ca_file(v, &t.key("ca"))
        {
            let urls = match &servers {
                Some(RedisServers::Single(url)) => std::slice::from_ref(url),
                Some(RedisServers::Cluster(urls)) => urls.as_slice(),
                None => &[],
            };
            if urls.iter().any(|u| !u.starts_with("rediss://")) {
                self.err(
                    &v.span(),
                    &t.key("ca"),
                    "applies to rediss:// (TLS) URLs only",
                );
            }
            redis.ca = Some(path);
        }
        redis.servers = servers?;
        Some(StateBackend::Redis(redis))
    }

    /// `redis://[user:password@]host[:port][/db]` or `rediss://…`.
    fn redis_url(&mut self, url: &str, span: &Range<usize>, key: &str) -> Option<String> {
        let problem = match url.split_once("://") {
            Some(("redis" | "rediss", rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let host_port = authority.rsplit('@').next().unwrap_or("");
                let db_ok = matches!(path, "" | "/") || path[1..].parse::<u16>().is_ok();
                // What follows the host: nothing or `:PORT` (after `[…]` for IPv6).
                let after_host = match host_port.strip_prefix('[') {
                    Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
                    None => host_port.find(':').map_or("", |i| &host_port[i..]),
                };
                let port_ok = after_host.is_empty()
                    || after_host
                        .strip_prefix(':')
                        .is_some_and(|p| p.parse::<u16>().is_ok());
                match host_port.parse::<http::uri::Authority>() {
                    _ if host_port.is_empty() => Some("no host"),
                    Ok(a) if a.host().is_empty() => Some("no host"),
                    Ok(_) if !port_ok => Some("invalid port"),
                    Ok(_) if !db_ok => Some("the path must be a database number, e.g. /0"),
                    Ok(_) => None,
                    Err(_) => Some("invalid host or port"),
                }
            }
            _ => Some("the scheme must be redis:// or rediss:// (TLS)"),
        };
        match problem {
            None => Some(url.to_owned()),
            Some(why) => {
                let message = format!(
                    "invalid Redis URL {:?}: {why} (expected e.g. \"redis://:password@10.0.0.5:6379/0\")",
                    redact(url)
                );
                self.err(span, key, message);
                None
            }
        }
    }

    fn tracing(&mut self, v: &Value<'_>) -> Option<Tracing> {
        let t = self.table(v, "gateway.tracing", TRACING_KEYS)?;
        let Some(endpoint) = t.get("endpoint") else {
            self.err(
                &v.span(),
                &t.key("endpoint"),
                "missing: the collector's OTLP/HTTP URL, e.g. \"http://127.0.0.1:4318\"",
            );
            return None;
        };
        let endpoint = self.string(endpoint, &t.key("endpoint")).and_then(|url| {
            match url.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.host().is_some_and(|h| !h.is_empty()) =>
                {
                    Some(url.to_owned())
                }
                _ => {
                    let message = format!(
                        "invalid endpoint {url:?} (expected an http:// or https:// URL such as \"http://collector:4318\")"
                    );
                    self.err(&endpoint.span(), &t.key("endpoint"), message);
                    None
                }
            }
        });
        let valid = endpoint.is_some();
        let mut tracing = Tracing {
            endpoint: endpoint.unwrap_or_default(),
            sample_ratio: 1.0,
            service_name: "wasmgate".to_owned(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            export_interval: Duration::from_secs(5),
        };
        if let Some(v) = t.get("sample_ratio")
            && let Some(ratio) = self.ratio(v, &t.key("sample_ratio"))
        {
            tracing.sample_ratio = ratio;
        }
        if let Some(v) = t.get("service_name")
            && let Some(name) = self.string(v, &t.key("service_name"))
        {
            if name.is_empty() {
                self.err(&v.span(), &t.key("service_name"), "must not be empty");
            }
            name.clone_into(&mut tracing.service_name);
        }
        for (name, field) in [
            ("timeout", &mut tracing.timeout),
            ("export_interval", &mut tracing.export_interval),
        ] {
            if let Some(v) = t.get(name)
                && let Some(d) = self.timeout(v, &t.key(name))
            {
                *field = d;
            }
        }
        if let Some(v) = t.get("headers") {
            let path = t.key("headers");
            if let DeValue::Table(table) = v.get_ref() {
                for (name, value) in table.iter() {
                    let key = join(&path, name.get_ref());
                    let Some(value) = self.string(value, &key) else {
                        continue;
                    };
                    let valid = HeaderName::from_bytes(name.get_ref().as_bytes()).is_ok()
                        && HeaderValue::from_str(value).is_ok();
                    if valid {
                        tracing
                            .headers
                            .push((name.get_ref().to_string(), value.to_owned()));
                    } else {
                        self.err(&name.span(), &key, "not a valid HTTP header field");
                    }
                }
            } else {
                self.wrong_type(v, &path, "a table of header names to values");
            }
        }
        valid.then_some(tracing)
    }

    /// A number from 0.0 to 1.0 (`1` and `0` as integers too).
    fn ratio(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i.as_str().parse::<f64>().ok(),
            _ => {
                self.wrong_type(v, key, "a number from 0.0 to 1.0");
                return None;
            }
        };
        match n {
            Some(n) if (0.0..=1.0).contains(&n) => Some(n),
            Some(n) => {
                self.err(
                    &v.span(),
                    key,
                    format!("{n} is out of range (expected 0.0 to 1.0)"),
                );
                None
            }
            None => {
                self.err(&v.span(), key, "not a number (expected 0.0 to 1.0)");
                None
            }
        }
    }

    fn dns(&mut self, v: &Value<'_>, d: &mut Dns) {
        let Some(t) = self.table(v, "gateway.dns", DNS_KEYS) else {
            return;
        };
        if let Some(v) = t.get("nameservers")
            && let Some(items) = self.array(v, &t.key("nameservers"))
        {
            for (i, item) in items.iter().enumerate() {
                let key = format!("{}[{i}]", t.key("nameservers"));
                let Some(s) = self.string(item, &key) else {
                    continue;
                };
                match (s.parse::<SocketAddr>(), s.parse::<std::net::IpAddr>()) {
                    (Ok(addr), _) => d.nameservers.push(addr),
                    (_, Ok(ip)) => d.nameservers.push(SocketAddr::new(ip, 53)),
                    _ => self.err(
                        &item.span(),
                        &key,
                        format!("invalid nameserver {s:?} (expected an IP address, or IP:PORT such as \"10.0.0.2:53\" or \"[::1]:53\")"),
                    ),
                }
            }
        }
        if let Some(v) = t.get("lookup")
            && let Some(s) = self.string(v, &t.key("lookup"))
        {
            d.lookup = match s {
                "ipv4_then_ipv6" => DnsLookup::Ipv4ThenIpv6,
                "ipv6_then_ipv4" => DnsLookup::Ipv6ThenIpv4,
                "ipv4_and_ipv6" => DnsLookup::Ipv4AndIpv6,
                "ipv4" => DnsLookup::Ipv4,
                "ipv6" => DnsLookup::Ipv6,
                other => {
                    let message = format!(
                        "invalid lookup {other:?} (expected \"ipv4_then_ipv6\", \"ipv6_then_ipv4\", \"ipv4_and_ipv6\", \"ipv4\" or \"ipv6\")"
                    );
                    self.err(&v.span(), &t.key("lookup"), message);
                    d.lookup
                }
            };
        }
        for (name, field) in [("min_ttl", &mut d.min_ttl), ("max_ttl", &mut d.max_ttl)] {
            if let Some(v) = t.get(name)
                && let Some(ttl) = self.timeout(v, &t.key(name))
            {
                *field = ttl;
            }
        }
        if d.max_ttl < d.min_ttl
            && let Some(v) = t.get("max_ttl").or(t.get("min_ttl"))
        {
            let message = format!(
                "max_ttl ({:?}) is shorter than min_ttl ({:?})",
                d.max_ttl, d.min_ttl
            );
            self.err(&v.span(), &t.key("max_ttl"), message);
        }
    }

    fn tls(&mut self, v: &Value<'_>) -> Option<Tls> {
        let t = self.table(v, "gateway.tls", TLS_KEYS)?;
        let listen = match t.get("listen") {
            Some(v) => self.socket_addrs(v, "gateway.tls.listen"),
            None => {
                self.err(&t.span, "gateway.tls.listen", "missing key `listen`");
                Vec::new()
            }
        };
        let mut certificates = Vec::new();
        match t.get("certificates") {
            Some(v) => {
                if let Some(items) = self.array(v, "gateway.tls.certificates") {
                    if items.is_empty() {
                        self.err(
                            &v.span(),
                            "gateway.tls.certificates",
                            "at least one certificate is needed",
                        );
                    }
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("gateway.tls.certificates[{i}]");
                        if let Some(c) = self.certificate(item, &key) {
                            certificates.push(c);
                        }
                    }
                }
            }
            None => self.err(
                &t.span,
                "gateway.tls.certificates",
                "missing key `certificates`",
            ),
        }
        let client_auth = t
            .get("client_auth")
            .and_then(|v| self.client_auth(v, "gateway.tls.client_auth"));
        Some(Tls {
            listen,
            certificates,
            client_auth,
        })
    }

    fn client_auth(&mut self, v: &Value<'_>, path: &str) -> Option<ClientAuth> {
        let t = self.table(v, path, CLIENT_AUTH_KEYS)?;
        let required = match t.get("required") {
            Some(v) => self.boolean(v, &t.key("required")).unwrap_or(true),
            None => true,
        };
        let Some(ca) = t.get("ca") else {
            self.err(&t.span, &t.key("ca"), "missing key `ca`");
            return None;
        };
        let ca = self.ca_file(ca, &t.key("ca"))?;
        Some(ClientAuth { ca, required })
    }

    /// A PEM file of certificate authorities, read and parsed.
    fn ca_file(
        &mut self,
        v: &Value<'_>,
        key: &str,
    ) -> Option<(PathBuf, Vec<CertificateDer<'static>>)> {
        let p = self.path(v, key)?;
        match std::fs::read(&p) {
            Ok(pem) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    let message = format!("no PEM certificate found in {}", p.display());
                    self.err(&v.span(), key, message);
                    None
                } else {
                    Some((p, certs))
                }
            }
            Err(e) => {
                let message = format!("cannot read {}: {e}", p.display());
                self.err(&v.span(), key, message);
                None
            }
        }
    }

    fn certificate(&mut self, v: &Value<'_>, path: &str) -> Option<Certificate> {
        let t = self.table(v, path, CERT_KEYS)?;
        self.certificate_files(&t, v)
    }

    /// The `cert` and `key` files of table `t` (the value `v`), read and parsed.
    fn certificate_files(&mut self, t: &Table<'_, '_>, v: &Value<'_>) -> Option<Certificate> {
        let location = self.report.locate(&v.span());
        let file = |me: &mut Self, name: &str| -> Option<(PathBuf, Vec<u8>, Range<usize>)> {
            let key = t.key(name);
            let Some(v) = t.get(name) else {
                me.err(&t.span, &key, format!("missing key `{name}`"));
                return None;
            };
            let p = me.path(v, &key)?;
            match std::fs::read(&p) {
                Ok(bytes) => Some((p, bytes, v.span())),
                Err(e) => {
                    let message = format!("cannot read {}: {e}", p.display());
                    me.err(&v.span(), &key, message);
                    None
                }
            }
        };
        let cert = file(self, "cert");
        let key = file(self, "key");
        let (cert_path, cert_pem, cert_span) = cert?;
        let (key_path, key_pem, key_span) = key?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            let message = format!("no PEM certificate found in {}", cert_path.display());
            self.err(&cert_span, &t.key("cert"), message);
        }
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => Some(k),
            Err(e) => {
                let message = format!("no PEM private key found in {}: {e}", key_path.display());
                self.err(&key_span, &t.key("key"), message);
                None
            }
        };
        if chain.is_empty() {
            return None;
        }
        Some(Certificate {
            cert_path,
            key_path,
            chain,
            key: key?,
            location,
        })
    }

    fn upstreams(&mut self, v: &Value<'_>) -> Vec<Upstream> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(
                v,
                "upstreams",
                "a table of named upstreams ([upstreams.NAME])",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, value) in t.iter() {
            let path = format!("upstreams.{}", name.get_ref());
            let location = self.report.locate(&name.span());
            self.report.keys.insert(path.clone(), location);
            if let Some(u) = self.upstream(name.get_ref(), value, &path) {
                out.push(u);
            }
        }
        out
    }

    fn upstream(&mut self, name: &str, v: &Value<'_>, path: &str) -> Option<Upstream> {
        let t = self.table(v, path, UPSTREAM_KEYS)?;
        let mut u = Upstream {
            name: name.to_owned(),
            targets: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle: 256,
            protocol: UpstreamProtocol::Auto,
            balance: Balance::RoundRobin,
            outlier_detection: OutlierDetection::default(),
            max_requests: 0,
            max_connections: 0,
            max_pending: 1024,
            health_check: None,
            retries: Retries::default(),
            tls: None,
        };
        match t.get("targets") {
            Some(v) => {
                if let Some(items) = self.array(v, &t.key("targets")) {
                    if items.is_empty() {
                        self.err(
                            &v.span(),
                            &t.key("targets"),
                            "at least one target is needed",
                        );
                    }
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("{}[{i}]", t.key("targets"));
                        if let Some(target) = self.target(item, &key) {
                            u.targets.push(target);
                        }
                    }
                }
            }
            None => self.err(&t.span, &t.key("targets"), "missing key `targets`"),
        }
        if let Some(v) = t.get("connect_timeout")
            && let Some(d) = self.timeout(v, &t.key("connect_timeout"))
        {
            u.connect_timeout = d;
        }
        if let Some(v) = t.get("timeout")
            && let Some(d) = self.timeout(v, &t.key("timeout"))
        {
            u.timeout = d;
        }
        if let Some(v) = t.get("pool_idle_timeout")
            && let Some(d) = self.timeout(v, &t.key("pool_idle_timeout"))
        {
            u.pool_idle_timeout = d;
        }
        if let Some(v) = t.get("pool_max_idle")
            && let Some(n) = self.integer(v, &t.key("pool_max_idle"), 0, 1 << 16)
        {
            u.pool_max_idle = n as usize;
        }
        self.balance(&t, &mut u);
        if let Some(v) = t.get("max_requests")
            && let Some(n) = self.integer(v, &t.key("max_requests"), 0, 1_000_000)
        {
            u.max_requests = n as u32;
        }
        if let Some(v) = t.get("max_connections")
            && let Some(n) = self.integer(v, &t.key("max_connections"), 0, 1_000_000)
        {
            u.max_connections = n as u32;
        }
        if let Some(v) = t.get("max_pending")
            && let Some(n) = self.integer(v, &t.key("max_pending"), 0, 1_000_000)
        {
            u.max_pending = n as u32;
            if u.max_connections == 0 {
                self.err(
                    &v.span(),
                    &t.key("max_pending"),
                    "applies with max_connections only: requests wait for a connection when max_connections are open",
                );
            }
        }
        if let Some(v) = t.get("outlier_detection") {
            self.outlier_detection(v, &t.key("outlier_detection"), &mut u.outlier_detection);
        }
        if let Some(v) = t.get("health_check") {
            u.health_check = self.health_check(v, &t.key("health_check"));
        }
        if let Some(v) = t.get("retries") {
            self.retries(v, &t.key("retries"), &mut u.retries);
        }
        if let Some(v) = t.get("tls") {
            u.tls = self.upstream_tls(v, &t.key("tls"));
            if !u.targets.iter().any(|target| target.tls) {
                self.err(
                    &v.span(),
                    &t.key("tls"),
                    "applies to https:// targets, and none of this upstream's targets is one",
                );
            }
        }
        if u.tls.as_ref().is_none_or(|tls| tls.server_name.is_none())
            && let Some(v) = t.get("targets")
        {
            for target in u.targets.iter().filter(|target| target.tls) {
                let host = target.host();
                if rustls_pki_types::ServerName::try_from(host).is_err() {
                    let message = format!(
                        "target https://{}: {host:?} is neither a DNS name nor an IP address, so no certificate can be checked against it; set `tls.server_name`",
                        target.address
                    );
                    self.err(&v.span(), &t.key("targets"), message);
                }
            }
        }
        if let Some(v) = t.get("protocol")
            && let Some(s) = self.string(v, &t.key("protocol"))
        {
            let key = t.key("protocol");
            let plain = u.targets.iter().find(|target| !target.tls);
            let secure = u.targets.iter().find(|target| target.tls);
            match (s, plain, secure) {
                ("auto", ..) => u.protocol = UpstreamProtocol::Auto,
                ("http1", ..) => u.protocol = UpstreamProtocol::Http1,
                ("h2", None, _) => u.protocol = UpstreamProtocol::H2,
                ("h2c", _, None) => u.protocol = UpstreamProtocol::H2c,
                ("h2", Some(target), _) => {
                    let message = format!(
                        "\"h2\" is HTTP/2 over TLS, and target {} is plain http (for HTTP/2 without TLS write \"h2c\")",
                        target.address
                    );
                    self.err(&v.span(), &key, message);
                }
                ("h2c", _, Some(target)) => {
                    let message = format!(
                        "\"h2c\" is HTTP/2 without TLS, and target https://{} uses TLS (for HTTP/2 over TLS write \"h2\" or \"auto\")",
                        target.address
                    );
                    self.err(&v.span(), &key, message);
                }
                (other, ..) => self.err(
                    &v.span(),
                    &key,
                    format!(
                        "invalid protocol {other:?} (expected \"auto\", \"http1\", \"h2\" or \"h2c\")"
                    ),
                ),
            }
        }
        Some(u)
    }

    fn balance(&mut self, t: &Table<'_, '_>, u: &mut Upstream) {
        if let Some(v) = t.get("balance")
            && let Some(s) = self.string(v, &t.key("balance"))
        {
            u.balance = match s {
                "round_robin" => Balance::RoundRobin,
                "least_request" => Balance::LeastRequest,
                "random" => Balance::Random,
                "hash" => Balance::Hash(HashOn::Ip),
                other => {
                    let message = format!(
                        "invalid balance {other:?} (expected \"round_robin\", \"least_request\", \"random\" or \"hash\")"
                    );
                    self.err(&v.span(), &t.key("balance"), message);
                    return;
                }
            };
        }
        let Some(v) = t.get("hash_on") else { return };
        let key = t.key("hash_on");
        if !matches!(u.balance, Balance::Hash(_)) {
            self.err(
                &v.span(),
                &key,
                "applies to balance = \"hash\" only; add it, or remove `hash_on`",
            );
            return;
        }
        let Some(on) = self.hash_key(v, &key) else {
            return;
        };
        u.balance = Balance::Hash(on);
    }

    fn outlier_detection(&mut self, v: &Value<'_>, path: &str, o: &mut OutlierDetection) {
        let Some(t) = self.table(v, path, OUTLIER_KEYS) else {
            return;
        };
        for (name, field) in [
            ("consecutive_errors", &mut o.consecutive_errors),
            ("consecutive_5xx", &mut o.consecutive_5xx),
        ] {
            if let Some(v) = t.get(name)
                && let Some(n) = self.integer(v, &t.key(name), 0, 1000)
            {
                *field = n as u32;
            }
        }
        if let Some(v) = t.get("max_ejection_percent")
            && let Some(n) = self.integer(v, &t.key("max_ejection_percent"), 0, 100)
        {
            o.max_ejection_percent = n as u32;
        }
        for (name, field) in [
            ("base_ejection", &mut o.base_ejection),
            ("max_ejection", &mut o.max_ejection),
        ] {
            if let Some(v) = t.get(name)
                && let Some(d) = self.timeout(v, &t.key(name))
            {
                *field = d;
            }
        }
        if o.max_ejection < o.base_ejection
            && let Some(v) = t.get("max_ejection").or(t.get("base_ejection"))
        {
            let message = format!(
                "max_ejection ({:?}) is shorter than base_ejection ({:?})",
                o.max_ejection, o.base_ejection
            );
            self.err(&v.span(), &t.key("max_ejection"), message);
        }
    }

    fn health_check(&mut self, v: &Value<'_>, path: &str) -> Option<HealthCheck> {
        let t = self.table(v, path, HEALTH_CHECK_KEYS)?;
        let mut check = HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        };
        let http = match t.get("type") {
            None => true,
            Some(v) => match self.string(v, &t.key("type")) {
                Some("tcp") => false,
                Some("http") | None => true,
                Some(other) => {
                    let message = format!("invalid type {other:?} (expected \"http\" or \"tcp\")");
                    self.err(&v.span(), &t.key("type"), message);
                    true
                }
            },
        };
        if http {
            let mut path = http::uri::PathAndQuery::from_static("/");
            if let Some(v) = t.get("path")
                && let Some(s) = self.string(v, &t.key("path"))
            {
                match s.parse::<http::uri::PathAndQuery>() {
                    Ok(p) if s.starts_with('/') => path = p,
                    _ => {
                        let message = format!("invalid path {s:?} (expected e.g. \"/health\")");
                        self.err(&v.span(), &t.key("path"), message);
                    }
                }
            }
            let mut host = None;
            if let Some(v) = t.get("host")
                && let Some(s) = self.string(v, &t.key("host"))
            {
                match s.parse::<http::uri::Authority>() {
                    Ok(_) => host = HeaderValue::from_str(s).ok(),
                    Err(_) => {
                        let message =
                            format!("invalid host {s:?} (expected e.g. \"api.internal\")");
                        self.err(&v.span(), &t.key("host"), message);
                    }
                }
            }
            let statuses = t
                .get("statuses")
                .and_then(|v| self.statuses(v, &t.key("statuses")));
            check.probe = Probe::Http {
                path,
                host,
                statuses,
            };
        } else {
            for key in ["path", "host", "statuses"] {
                if let Some(v) = t.get(key) {
                    self.err(
                        &v.span(),
                        &t.key(key),
                        "applies to type = \"http\" only; remove it for a tcp check",
                    );
                }
            }
        }
        for (name, field) in [
            ("interval", &mut check.interval),
            ("timeout", &mut check.timeout),
        ] {
            if let Some(v) = t.get(name)
                && let Some(d) = self.timeout(v, &t.key(name))
            {
                *field = d;
            }
        }
        for (name, field) in [
            ("healthy", &mut check.healthy),
            ("unhealthy", &mut check.unhealthy),
        ] {
            if let Some(v) = t.get(name)
                && let Some(n) = self.integer(v, &t.key(name), 1, 100)
            {
                *field = n as u32;
            }
        }
        Some(check)
    }

    /// A non-empty array of HTTP status codes.
    fn statuses(&mut self, v: &Value<'_>, key: &str) -> Option<Vec<u16>> {
        let items = self.array(v, key)?;
        if items.is_empty() {
            self.err(&v.span(), key, "at least one status is needed");
            return None;
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(n) = self.integer(item, &format!("{key}[{i}]"), 100, 599) {
                out.push(n as u16);
            }
        }
        Some(out)
    }

    fn retries(&mut self, v: &Value<'_>, path: &str, r: &mut Retries) {
        let Some(t) = self.table(v, path, RETRIES_KEYS) else {
            return;
        };
        if let Some(v) = t.get("attempts")
            && let Some(n) = self.integer(v, &t.key("attempts"), 0, 10)
        {
            r.attempts = n as u32;
        }
        if let Some(v) = t.get("statuses")
            && let Some(statuses) = self.statuses(v, &t.key("statuses"))
        {
            r.statuses = statuses;
        }
        if let Some(v) = t.get("methods")
            && let Some(s) = self.string(v, &t.key("methods"))
        {
            match s {
                "idempotent" => r.all_methods = false,
                "all" => r.all_methods = true,
                other => {
                    let message =
                        format!("invalid methods {other:?} (expected \"idempotent\" or \"all\")");
                    self.err(&v.span(), &t.key("methods"), message);
                }
            }
        }
        if let Some(v) = t.get("max_body")
            && let Some(n) = self.size(v, &t.key("max_body"), 0, 64 << 20)
        {
            r.max_body = n;
        }
        if let Some(v) = t.get("per_try_timeout") {
            r.per_try_timeout = self.timeout(v, &t.key("per_try_timeout"));
        }
        for (name, field) in [
            ("backoff", &mut r.backoff),
            ("max_backoff", &mut r.max_backoff),
        ] {
            if let Some(v) = t.get(name)
                && let Some(d) = self.duration(v, &t.key(name))
            {
                *field = d;
            }
        }
        if r.max_backoff < r.backoff
            && let Some(v) = t.get("max_backoff").or(t.get("backoff"))
        {
            let message = format!(
                "max_backoff ({:?}) is shorter than backoff ({:?})",
                r.max_backoff, r.backoff
            );
            self.err(&v.span(), &t.key("max_backoff"), message);
        }
        if let Some(v) = t.get("budget_percent")
            && let Some(n) = self.integer(v, &t.key("budget_percent"), 1, 100)
        {
            r.budget_percent = n as u32;
        }
        if let Some(v) = t.get("min_retry_concurrency")
            && let Some(n) = self.integer(v, &t.key("min_retry_concurrency"), 0, 10_000)
        {
            r.min_retry_concurrency = n as u32;
        }
    }

    fn upstream_tls(&mut self, v: &Value<'_>, path: &str) -> Option<UpstreamTls> {
        let t = self.table(v, path, UPSTREAM_TLS_KEYS)?;
        let mut tls = UpstreamTls {
            ca: None,
            client: None,
            server_name: None,
            verify: true,
        };
        if let Some(v) = t.get("ca") {
            tls.ca = self.ca_file(v, &t.key("ca"));
        }
        match (t.get("cert"), t.get("key")) {
            (Some(_), Some(_)) => tls.client = self.certificate_files(&t, v),
            (Some(v), None) => self.err(
                &v.span(),
                &t.key("cert"),
                "a client certificate needs its private key: add `key`",
            ),
            (None, Some(v)) => self.err(
                &v.span(),
                &t.key("key"),
                "a private key needs its client certificate: add `cert`",
            ),
            (None, None) => {}
        }
        if let Some(v) = t.get("server_name")
            && let Some(name) = self.string(v, &t.key("server_name"))
        {
            match rustls_pki_types::ServerName::try_from(name) {
                Ok(_) => tls.server_name = Some(name.to_owned()),
                Err(_) => {
                    let message = format!(
                        "invalid server name {name:?} (expected a DNS name or an IP address)"
                    );
                    self.err(&v.span(), &t.key("server_name"), message);
                }
            }
        }
        if let Some(v) = t.get("verify")
            && let Some(verify) = self.boolean(v, &t.key("verify"))
        {
            tls.verify = verify;
        }
        Some(tls)
    }

    fn target(&mut self, v: &Value<'_>, key: &str) -> Option<Target> {
        let (address, weight) = match v.get_ref() {
            DeValue::String(_) => (v, None),
            DeValue::Table(_) => {
                let t = self.table(v, key, TARGET_KEYS)?;
                let weight = match t.get("weight") {
                    Some(w) => Some(self.integer(w, &t.key("weight"), 1, 1000)? as u32),
                    None => None,
                };
                let Some(address) = t.get("address") else {
                    self.err(&t.span, &t.key("address"), "missing key `address`");
                    return None;
                };
                (address, weight)
            }
            _ => {
                self.wrong_type(
                    v,
                    key,
                    "an address string or a table { address = \"HOST:PORT\", weight = N }",
                );
                return None;
            }
        };
        let address_key = if matches!(v.get_ref(), DeValue::Table(_)) {
            join(key, "address")
        } else {
            key.to_owned()
        };
        let text = self.string(address, &address_key)?;
        let (tls, authority) = match text.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => (false, text),
        };
        match authority.parse::<http::uri::Authority>() {
            Ok(a)
                if a.port_u16().is_some_and(|p| p != 0)
                    && !a.host().is_empty()
                    && !authority.contains('@') =>
            {
                Some(Target {
                    address: a,
                    tls,
                    weight: weight.unwrap_or(1),
                })
            }
            _ => {
                let message = format!(
                    "invalid target address {text:?} (expected HOST:PORT or https://HOST:PORT, e.g. \"127.0.0.1:9001\" or \"https://users.internal:8443\")"
                );
                self.err(&address.span(), &address_key, message);
                None
            }
        }
    }

    fn routes(&mut self, v: &Value<'_>, upstreams: &[Upstream], plugins_dir: &Path) -> Vec<Route> {
        let Some(items) = self.array(v, "routes") else {
            return Vec::new();
        };
        let mut names: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            let name = item.get_ref().as_table().and_then(|t| t.get("name"));
            if let Some(name) = name
                && let Some(text) = name.get_ref().as_str()
                && !names.insert(text.to_owned())
            {
                let message = format!("duplicate route name {text:?}");
                self.err(&name.span(), &format!("{path}.name"), message);
            }
            if let Some(route) = self.route(item, &path, upstreams, plugins_dir) {
                out.push(route);
            }
        }
        out
    }

    fn route(
        &mut self,
        v: &Value<'_>,
        path: &str,
        upstreams: &[Upstream],
        plugins_dir: &Path,
    ) -> Option<Route> {
        let t = self.table(v, path, ROUTE_KEYS)?;
        let location = self.report.locate(&v.span());
        let name = match t.get("name") {
            Some(n) => {
                let s = self.string(n, &t.key("name"));
                if s.is_some_and(str::is_empty) {
                    self.err(&n.span(), &t.key("name"), "must not be empty");
                }
                s.map(str::to_owned)
            }
            None => {
                self.err(&t.span, &t.key("name"), "missing key `name`");
                None
            }
        };
        let hosts = t
            .get("hosts")
            .map_or_else(Vec::new, |v| self.hosts(v, &t.key("hosts")));
        let paths = match t.get("paths") {
            Some(v) => self.paths(v, &t.key("paths")),
            None => vec![PathPattern::Prefix("/".to_owned())],
        };
        let methods = t
            .get("methods")
            .map_or_else(Vec::new, |v| self.methods(v, &t.key("methods")));
        let headers = t
            .get("headers")
            .map_or_else(Vec::new, |v| self.header_map(v, &t.key("headers")));
        let strip_path = t
            .get("strip_path")
            .and_then(|v| self.boolean(v, &t.key("strip_path")))
            .unwrap_or(false);
        let protocols = t
            .get("protocols")
            .map_or(Protocols::ALL, |v| self.protocols(v, &t.key("protocols")));
        let https_redirect = t
            .get("https_redirect")
            .and_then(|v| self.boolean(v, &t.key("https_redirect")))
            .unwrap_or(false);
        if https_redirect && protocols.http {
            let span = t.get("https_redirect").map_or(t.span.clone(), |v| v.span());
            self.err(
                &span,
                &t.key("https_redirect"),
                "redirects plain-HTTP requests, so it needs protocols = [\"https\"]",
            );
        }
        if !protocols.http && !self.tls_listeners {
            let span = t.get("protocols").map_or(t.span.clone(), |v| v.span());
            self.err(
                &span,
                &t.key("protocols"),
                "the route serves https only, but no gateway.tls listener is configured",
            );
        }
        let preserve_host = t
            .get("preserve_host")
            .and_then(|v| self.boolean(v, &t.key("preserve_host")))
            .unwrap_or(true);
        let case_sensitive = t
            .get("case_sensitive")
            .and_then(|v| self.boolean(v, &t.key("case_sensitive")))
            .unwrap_or(true);
        let max_body = t
            .get("max_body")
            .and_then(|v| self.size(v, &t.key("max_body"), 0, 1 << 30))
            .map_or(1024 * 1024, |n| n as usize);
        let plugins = t.get("plugins").map_or_else(Vec::new, |v| {
            self.plugins(v, &t.key("plugins"), plugins_dir)
        });
        let action = match (t.get("upstream"), t.get("upstreams"), t.get("respond")) {
            (Some(u), None, None) => self
                .upstream_ref(u, &t.key("upstream"), upstreams)
                .map(RouteAction::Upstream),
            (None, Some(u), None) => self
                .split(
                    u,
                    t.get("sticky"),
                    &t.key("upstreams"),
                    &t.key("sticky"),
                    upstreams,
                )
                .map(RouteAction::Split),
            (None, None, Some(r)) => self.respond(r, &t.key("respond")).map(RouteAction::Respond),
            (None, None, None) => {
                self.err(
                    &t.span,
                    path,
                    "missing key `upstream`, `upstreams` or `respond`: a route must say where requests go",
                );
                None
            }
            (first, second, third) => {
                let named: Vec<&str> = [
                    ("upstream", first),
                    ("upstreams", second),
                    ("respond", third),
                ]
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| *k)
                .collect();
                let last = named[named.len() - 1];
                let span = t.get(last).map_or(t.span.clone(), |v| v.span());
                let message = format!(
                    "a route has one of `upstream`, `upstreams` or `respond`, not {}",
                    named
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
                self.err(&span, &t.key(last), message);
                None
            }
        };
        if let Some(v) = t.get("sticky")
            && t.get("upstreams").is_none()
        {
            self.err(
                &v.span(),
                &t.key("sticky"),
                "applies to a split (`upstreams = [...]`) only; use an upstream's balance = \"hash\" to pin clients to targets",
            );
        }
        let mirror = t
            .get("mirror")
            .and_then(|v| self.mirror(v, &t.key("mirror"), upstreams));
        let cache = t.get("cache").and_then(|v| self.cache(v, &t.key("cache")));
        if cache.is_some()
            && let Some(RouteAction::Respond(_)) = &action
        {
            let span = t.get("cache").map_or(t.span.clone(), |v| v.span());
            self.err(
                &span,
                &t.key("cache"),
                "a `respond` route answers from memory already; `cache` applies to routes with an upstream",
            );
        }
        let compression = match t.get("compression") {
            Some(v) => match v.get_ref() {
                DeValue::Boolean(false) => None,
                DeValue::Boolean(true) => {
                    self.err(
                        &v.span(),
                        &t.key("compression"),
                        "expected a table of settings, or false to turn [gateway.compression] off for the route",
                    );
                    None
                }
                _ => self.compression(v, &t.key("compression")),
            },
            None => self.compression.clone(),
        };
        Some(Route {
            name: name?,
            hosts,
            paths,
            methods,
            headers,
            action: action?,
            strip_path,
            protocols,
            https_redirect,
            preserve_host,
            case_sensitive,
            max_body,
            plugins,
            mirror,
            cache,
            compression,
            location,
        })
    }

    /// The index of the upstream a string names, or an error naming the defined ones.
    fn upstream_ref(&mut self, v: &Value<'_>, key: &str, upstreams: &[Upstream]) -> Option<usize> {
        let wanted = self.string(v, key)?;
        if let Some(i) = upstreams.iter().position(|x| x.name == wanted) {
            return Some(i);
        }
        let message = match did_you_mean(wanted, upstreams.iter().map(|x| x.name.as_str())) {
            Some(m) => format!("unknown upstream {wanted:?}, did you mean {m:?}?"),
            None if upstreams.is_empty() => {
                format!("unknown upstream {wanted:?} (no [upstreams.NAME] tables are defined)")
            }
            None => format!(
                "unknown upstream {wanted:?} (defined: {})",
                upstreams
                    .iter()
                    .map(|x| x.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.err(&v.span(), key, message);
        None
    }

    fn split(
        &mut self,
        v: &Value<'_>,
        sticky: Option<&Value<'_>>,
        key: &str,
        sticky_key: &str,
        upstreams: &[Upstream],
    ) -> Option<Split> {
        let items = self.array(v, key)?;
        if items.is_empty() {
            self.err(&v.span(), key, "must name at least one upstream");
            return None;
        }
        let mut backends = Vec::new();
        let mut valid = true;
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            let Some(t) = self.table(item, &k, BACKEND_KEYS) else {
                valid = false;
                continue;
            };
            let upstream = match t.get("name") {
                Some(n) => self.upstream_ref(n, &t.key("name"), upstreams),
                None => {
                    self.err(&t.span, &t.key("name"), "missing key `name` (the upstream)");
                    None
                }
            };
            if let (Some(u), Some(n)) = (upstream, t.get("name"))
                && backends.iter().any(|b: &Backend| b.upstream == u)
            {
                let message = format!("upstream {:?} is already in the split", upstreams[u].name);
                self.err(&n.span(), &t.key("name"), message);
                valid = false;
            }
            let weight = match t.get("weight") {
                Some(w) => self
                    .integer(w, &t.key("weight"), 0, 10_000)
                    .map(|n| n as u32),
                None => Some(1),
            };
            let headers = t
                .get("headers")
                .map_or_else(Vec::new, |h| self.header_map(h, &t.key("headers")));
            let cookies = t
                .get("cookies")
                .map_or_else(Vec::new, |c| self.cookie_map(c, &t.key("cookies")));
            match (upstream, weight) {
                (Some(upstream), Some(weight)) => backends.push(Backend {
                    upstream,
                    weight,
                    headers,
                    cookies,
                }),
                _ => valid = false,
            }
        }
        if valid && backends.iter().all(|b| b.weight == 0) {
            self.err(
                &v.span(),
                key,
                "every weight is 0: at least one backend must take the requests no pin decides",
            );
            valid = false;
        }
        let sticky = match sticky {
            Some(s) => {
                let on = self.hash_key(s, sticky_key);
                valid &= on.is_some();
                on
            }
            None => None,
        };
        valid.then_some(Split { backends, sticky })
    }

    /// A table of cookie names to values.
    fn cookie_map(&mut self, v: &Value<'_>, key: &str) -> Vec<(String, String)> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(v, key, "a table of cookie names to values");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, value) in t.iter() {
            let k = join(key, name.get_ref());
            if !is_token(name.get_ref()) {
                let message = format!("invalid cookie name {:?}", name.get_ref());
                self.err(&name.span(), &k, message);
                continue;
            }
            if let Some(text) = self.string(value, &k) {
                out.push((name.get_ref().to_string(), text.to_owned()));
            }
        }
        out
    }

    fn mirror(&mut self, v: &Value<'_>, key: &str, upstreams: &[Upstream]) -> Option<Mirror> {
        let t = self.table(v, key, MIRROR_KEYS)?;
        let upstream = match t.get("upstream") {
            Some(u) => self.upstream_ref(u, &t.key("upstream"), upstreams),
            None => {
                self.err(
                    &t.span,
                    &t.key("upstream"),
                    "missing key `upstream` (where the copies go)",
                );
                None
            }
        };
        let percent = match t.get("percent") {
            Some(p) => self.percent(p, &t.key("percent")),
            None => Some(100.0),
        };
        let max_body = match t.get("max_body") {
            Some(b) => self.size(b, &t.key("max_body"), 0, 64 << 20),
            None => Some(64 << 10),
        };
        let max_in_flight = match t.get("max_in_flight") {
            Some(n) => self
                .integer(n, &t.key("max_in_flight"), 1, 100_000)
                .map(|n| n as usize),
            None => Some(64),
        };
        Some(Mirror {
            upstream: upstream?,
            percent: percent?,
            max_body: max_body?,
            max_in_flight: max_in_flight?,
        })
    }

    /// A share from 0 to 100, an integer or a float.
    fn percent(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        let n = match v.get_ref() {
            DeValue::Integer(_) => self.integer(v, key, 0, 100)? as f64,
            DeValue::Float(f) => match f.as_str().parse::<f64>() {
                Ok(f) if (0.0..=100.0).contains(&f) => f,
                _ => {
                    let message = format!("{} is out of range (expected 0 to 100)", f.as_str());
                    self.err(&v.span(), key, message);
                    return None;
                }
            },
            _ => {
                self.wrong_type(v, key, "a percentage from 0 to 100");
                return None;
            }
        };
        Some(n)
    }

    fn cache(&mut self, v: &Value<'_>, key: &str) -> Option<Cache> {
        let t = self.table(v, key, CACHE_KEYS)?;
        let mut c = Cache::default();
        let mut valid = true;
        for (name, field) in [("ttl", &mut c.ttl), ("lock_timeout", &mut c.lock_timeout)] {
            if let Some(v) = t.get(name) {
                match self.timeout(v, &t.key(name)) {
                    Some(d) => *field = d,
                    None => valid = false,
                }
            }
        }
        if let Some(v) = t.get("keep") {
            match self.duration(v, &t.key("keep")) {
                Some(d) => c.keep = d,
                None => valid = false,
            }
        }
        if let Some(v) = t.get("max_size") {
            match self.size(v, &t.key("max_size"), 1024, 1 << 40) {
                Some(n) => c.max_size = n,
                None => valid = false,
            }
        }
        if let Some(v) = t.get("max_entry_size") {
            match self.size(v, &t.key("max_entry_size"), 1, 1 << 30) {
                Some(n) => c.max_entry_size = n,
                None => valid = false,
            }
        }
        if c.max_entry_size > c.max_size {
            let span = t
                .get("max_entry_size")
                .or(t.get("max_size"))
                .map_or(t.span.clone(), |v| v.span());
            let message = format!(
                "max_entry_size ({} bytes) is larger than max_size ({} bytes): no entry that large could be kept",
                c.max_entry_size, c.max_size
            );
            self.err(&span, &t.key("max_entry_size"), message);
            valid = false;
        }
        if let Some(v) = t.get("methods") {
            let methods = self.methods(v, &t.key("methods"));
            if let Some(m) = methods
                .iter()
                .find(|m| **m != Method::GET && **m != Method::HEAD)
            {
                let message =
                    format!("{m} responses are not cached (expected \"GET\" and/or \"HEAD\")");
                self.err(&v.span(), &t.key("methods"), message);
                valid = false;
            } else if methods.is_empty() {
                self.err(&v.span(), &t.key("methods"), "must name GET and/or HEAD");
                valid = false;
            }
            c.methods = methods;
        }
        if let Some(v) = t.get("vary") {
            let k = t.key("vary");
            for (s, item, k) in self.string_items(v, &k) {
                match HeaderName::from_bytes(s.as_bytes()) {
                    Ok(h) => c.vary.push(h),
                    Err(_) => {
                        self.err(&item.span(), &k, format!("invalid header name {s:?}"));
                        valid = false;
                    }
                }
            }
        }
        if let Some(v) = t.get("client_no_cache") {
            match self.boolean(v, &t.key("client_no_cache")) {
                Some(b) => c.client_no_cache = b,
                None => valid = false,
            }
        }
        valid.then_some(c)
    }

    fn compression(&mut self, v: &Value<'_>, key: &str) -> Option<Compression> {
        let t = self.table(v, key, COMPRESSION_KEYS)?;
        let mut rules = wasmgate_compression::Rules::default();
        let mut valid = true;
        if let Some(v) = t.get("codecs") {
            let k = t.key("codecs");
            let items = self.string_items(v, &k);
            let mut codecs = Vec::new();
            for (s, item, k) in items {
                match wasmgate_compression::Codec::from_token(s) {
                    Some(c) if !codecs.contains(&c) => codecs.push(c),
                    Some(_) => {}
                    None => {
                        let message =
                            format!("unknown codec {s:?} (expected \"zstd\", \"br\" or \"gzip\")");
                        self.err(&item.span(), &k, message);
                        valid = false;
                    }
                }
            }
            if codecs.is_empty() && valid {
                self.err(
                    &v.span(),
                    &k,
                    "must name at least one codec; write compression = false for none",
                );
                valid = false;
            }
            rules.codecs = codecs;
        }
        if let Some(v) = t.get("min_size") {
            match self.size(v, &t.key("min_size"), 0, 1 << 30) {
                Some(n) => rules.min_size = n,
                None => valid = false,
            }
        }
        if let Some(v) = t.get("types") {
            let k = t.key("types");
            let mut types = Vec::new();
            for (s, item, k) in self.string_items(v, &k) {
                match s.parse::<wasmgate_compression::MediaRange>() {
                    Ok(m) => types.push(m),
                    Err(e) => {
                        self.err(&item.span(), &k, e.to_string());
                        valid = false;
                    }
                }
            }
            rules.types = types;
        }
        if let Some(v) = t.get("gzip_level") {
            match self.integer(v, &t.key("gzip_level"), 1, 9) {
                Some(n) => rules.levels.gzip = n as u32,
                None => valid = false,
            }
        }
        if let Some(v) = t.get("brotli_level") {
            match self.integer(v, &t.key("brotli_level"), 0, 11) {
                Some(n) => rules.levels.brotli = n as u32,
                None => valid = false,
            }
        }
        if let Some(v) = t.get("zstd_level") {
            match self.integer(v, &t.key("zstd_level"), 1, 19) {
                Some(n) => rules.levels.zstd = n as i32,
                None => valid = false,
            }
        }
        let decompress_requests = match t.get("decompress_requests") {
            Some(v) => match self.boolean(v, &t.key("decompress_requests")) {
                Some(b) => b,
                None => {
                    valid = false;
                    false
                }
            },
            None => false,
        };
        valid.then_some(Compression {
            rules,
            decompress_requests,
        })
    }

    fn plugins(&mut self, v: &Value<'_>, key: &str, plugins_dir: &Path) -> Vec<PluginEntry> {
        let Some(items) = self.array(v, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(p) = self.plugin(item, &format!("{key}[{i}]"), plugins_dir) {
                out.push(p);
            }
        }
        out
    }

    fn plugin(&mut self, v: &Value<'_>, path: &str, plugins_dir: &Path) -> Option<PluginEntry> {
        let t = self.table(v, path, PLUGIN_KEYS)?;
        let location = self.report.locate(&v.span());
        let named = t.get("name").and_then(|n| {
            let s = self.string(n, &t.key("name"))?;
            let valid = !s.is_empty()
                && s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !s.starts_with('.');
            if !valid {
                let message = format!(
                    "invalid plugin name {s:?} (letters, digits, '-', '_' and '.'; it names <plugins_dir>/<name>.wasm)"
                );
                self.err(&n.span(), &t.key("name"), message);
                return None;
            }
            Some(s.to_owned())
        });
        let file_path = t.get("path").and_then(|p| self.path(p, &t.key("path")));
        let (name, file) = match (t.get("name"), t.get("path")) {
            (Some(_), Some(p)) => {
                self.err(
                    &p.span(),
                    &t.key("path"),
                    "give either `name` (from plugins_dir) or `path`, not both",
                );
                return None;
            }
            (Some(_), None) => {
                let name = named?;
                let file = plugins_dir.join(format!("{name}.wasm"));
                (name, file)
            }
            (None, Some(_)) => {
                let file = file_path?;
                let name = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, file)
            }
            (None, None) => {
                self.err(
                    &t.span,
                    path,
                    "missing key `name` (a plugin in plugins_dir) or `path` (a .wasm file)",
                );
                return None;
            }
        };
        let config = match t.get("config") {
            Some(c) => self.json(c, &t.key("config")),
            None => Some(serde_json::Value::Object(serde_json::Map::new())),
        };
        let memory = match t.get("memory") {
            Some(m) => self
                .size(m, &t.key("memory"), 1 << 20, 4 << 30)
                .map(|n| n as usize),
            None => Some(16 << 20),
        };
        let timeout = match t.get("timeout") {
            Some(d) => self.timeout(d, &t.key("timeout")),
            None => Some(Duration::from_millis(50)),
        };
        let on_error = match t.get("on_error") {
            Some(o) => match self.string(o, &t.key("on_error")) {
                Some("deny") => Some(OnError::Deny),
                Some("allow") => Some(OnError::Allow),
                Some(other) => {
                    let message =
                        format!("invalid on_error {other:?} (expected \"deny\" or \"allow\")");
                    self.err(&o.span(), &t.key("on_error"), message);
                    None
                }
                None => None,
            },
            None => Some(OnError::Deny),
        };
        let isolation = match t.get("isolation") {
            Some(o) => match self.string(o, &t.key("isolation")) {
                Some("pooled") => Some(Isolation::Pooled),
                Some("request") => Some(Isolation::Request),
                Some(other) => {
                    let message =
                        format!("invalid isolation {other:?} (expected \"pooled\" or \"request\")");
                    self.err(&o.span(), &t.key("isolation"), message);
                    None
                }
                None => None,
            },
            None => Some(Isolation::Pooled),
        };
        let max_instances = match t.get("max_instances") {
            Some(n) => self
                .integer(n, &t.key("max_instances"), 1, 4096)
                .map(|n| Some(n as usize)),
            None => Some(None),
        };
        Some(PluginEntry {
            name,
            file,
            config: config?,
            memory: memory?,
            timeout: timeout?,
            on_error: on_error?,
            isolation: isolation?,
            max_instances: max_instances?,
            location,
        })
    }

    /// A TOML value as JSON, for a plugin's `init`.
    fn json(&mut self, v: &Value<'_>, key: &str) -> Option<serde_json::Value> {
        use serde_json::Value as J;
        Some(match v.get_ref() {
            DeValue::String(s) => J::String(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => J::from(n),
                Err(_) => {
                    self.err(
                        &v.span(),
                        key,
                        format!("integer {i} does not fit in 64 bits"),
                    );
                    return None;
                }
            },
            DeValue::Float(f) => {
                match f
                    .as_str()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => J::Number(n),
                    None => {
                        let message =
                            format!("{f} cannot be given to a plugin (JSON has no inf or nan)");
                        self.err(&v.span(), key, message);
                        return None;
                    }
                }
            }
            DeValue::Boolean(b) => J::Bool(*b),
            DeValue::Datetime(d) => J::String(d.to_string()),
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.json(item, &format!("{key}[{i}]"))?);
                }
                J::Array(out)
            }
            DeValue::Table(t) => {
                let mut out = serde_json::Map::new();
                for (k, item) in t.iter() {
                    let value = self.json(item, &join(key, k.get_ref()))?;
                    out.insert(k.get_ref().to_string(), value);
                }
                J::Object(out)
            }
        })
    }

    /// `"ip"`, `"path"`, `"header:NAME"` or `"cookie:NAME"`: what keys a request for hashing.
    fn hash_key(&mut self, v: &Value<'_>, key: &str) -> Option<HashOn> {
        let s = self.string(v, key)?;
        let on = match s.split_once(':') {
            None if s == "ip" => HashOn::Ip,
            None if s == "path" => HashOn::Path,
            Some(("header", name)) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => HashOn::Header(name),
                Err(_) => {
                    let message = format!("invalid header name {name:?} in {s:?}");
                    self.err(&v.span(), key, message);
                    return None;
                }
            },
            Some(("cookie", name)) if is_token(name) => HashOn::Cookie(name.to_owned()),
            Some(("cookie", name)) => {
                let message = format!("invalid cookie name {name:?} in {s:?}");
                self.err(&v.span(), key, message);
                return None;
            }
            _ => {
                let message = format!(
                    "invalid {} {s:?} (expected \"ip\", \"path\", \"header:NAME\" or \"cookie:NAME\")",
                    key.rsplit('.').next().unwrap_or(key)
                );
                self.err(&v.span(), key, message);
                return None;
            }
        };
        Some(on)
    }

    fn string_items<'t, 'i>(
        &mut self,
        v: &'t Value<'i>,
        key: &str,
    ) -> Vec<(&'t str, &'t Value<'i>, String)> {
        let Some(items) = self.array(v, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            if let Some(s) = self.string(item, &k) {
                out.push((s, item, k));
            }
        }
        out
    }

    fn hosts(&mut self, v: &Value<'_>, key: &str) -> Vec<HostPattern> {
        let mut out = Vec::new();
        for (s, item, k) in self.string_items(v, key) {
            let lower = s.to_ascii_lowercase();
            let (wild, name) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, lower.as_str()),
            };
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid {
                let message = format!(
                    "invalid host {s:?} (expected a name like \"api.example.com\" or \"*.example.com\"; no port, no scheme)"
                );
                self.err(&item.span(), &k, message);
                continue;
            }
            out.push(if wild {
                HostPattern::Wildcard(format!(".{name}"))
            } else {
                HostPattern::Exact(name.to_owned())
            });
        }
        out
    }

    fn paths(&mut self, v: &Value<'_>, key: &str) -> Vec<PathPattern> {
        let errors_before = self.report.diagnostics.len();
        let mut out = Vec::new();
        for (s, item, k) in self.string_items(v, key) {
            let (exact, p) = match s.strip_prefix('=') {
                Some(rest) => (true, rest),
                None => (false, s),
            };
            let valid = p.starts_with('/')
                && !p.contains(['?', '#'])
                && p.parse::<http::uri::PathAndQuery>().is_ok();
            if !valid {
                let message = format!(
                    "invalid path {s:?} (expected a prefix like \"/users\" or an exact path like \"=/health\")"
                );
                self.err(&item.span(), &k, message);
                continue;
            }
            out.push(if exact {
                PathPattern::Exact(p.to_owned())
            } else {
                // "/users/" and "/users" mean the same prefix on segment boundaries.
                let trimmed = if p.len() > 1 {
                    p.trim_end_matches('/')
                } else {
                    p
                };
                PathPattern::Prefix(if trimmed.is_empty() {
                    "/".to_owned()
                } else {
                    trimmed.to_owned()
                })
            });
        }
        if out.is_empty() && self.report.diagnostics.len() == errors_before {
            self.err(
                &v.span(),
                key,
                "at least one path is needed (omit `paths` to match every path)",
            );
        }
        out
    }

    fn protocols(&mut self, v: &Value<'_>, key: &str) -> Protocols {
        let mut out = Protocols {
            http: false,
            https: false,
        };
        let items = self.string_items(v, key);
        if items.is_empty() && v.get_ref().as_array().is_some_and(|a| a.is_empty()) {
            self.err(
                &v.span(),
                key,
                "at least one protocol is needed: \"http\", \"https\" or both",
            );
            return Protocols::ALL;
        }
        for (s, item, k) in items {
            match s {
                "http" => out.http = true,
                "https" => out.https = true,
                other => {
                    let message =
                        format!("invalid protocol {other:?} (expected \"http\" or \"https\")");
                    self.err(&item.span(), &k, message);
                }
            }
        }
        if !out.http && !out.https {
            return Protocols::ALL;
        }
        out
    }

    fn methods(&mut self, v: &Value<'_>, key: &str) -> Vec<Method> {
        let mut out = Vec::new();
        for (s, item, k) in self.string_items(v, key) {
            match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                Ok(m) if !s.is_empty() => {
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
                _ => {
                    let message =
                        format!("invalid method {s:?} (expected e.g. \"GET\" or \"POST\")");
                    self.err(&item.span(), &k, message);
                }
            }
        }
        out
    }

    fn respond(&mut self, v: &Value<'_>, key: &str) -> Option<Respond> {
        let t = self.table(v, key, RESPOND_KEYS)?;
        let status = match t.get("status") {
            Some(s) => self
                .integer(s, &t.key("status"), 200, 599)
                .and_then(|n| StatusCode::from_u16(n as u16).ok()),
            None => Some(StatusCode::OK),
        };
        let body = match t.get("body") {
            Some(b) => self.string(b, &t.key("body")).map(str::to_owned),
            None => Some(String::new()),
        };
        let headers = t
            .get("headers")
            .map_or_else(Vec::new, |h| self.header_map(h, &t.key("headers")));
        let (status, body) = (status?, body?);
        if !body.is_empty() && matches!(status.as_u16(), 204 | 205 | 304) {
            let span = t.get("body").map_or(t.span.clone(), |b| b.span());
            let message = format!("a {} response cannot have a body", status.as_u16());
            self.err(&span, &t.key("body"), message);
            return None;
        }
        Some(Respond {
            status,
            body,
            headers,
        })
    }
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2), as cookie names are (RFC 6265 §4.1.1).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
