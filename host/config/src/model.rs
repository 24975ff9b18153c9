//! The validated configuration: what `gateway.toml` means once every key has been checked.
//!
//! Every type here is plain data. Values that later stages may still reject (a private key a TLS
//! library cannot use, say) carry the [`Location`] they were written at, so those stages can report
//! `FILE:LINE:COL` too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::{Diagnostic, Location};

/// A whole gateway configuration, loaded from one file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from; relative paths in it were resolved against its folder.
    pub file: PathBuf,
    /// `[gateway]`: listeners and connection-level limits.
    pub gateway: Gateway,
    /// `[upstreams.NAME]`, in file order.
    pub upstreams: Vec<Upstream>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<Route>,
    /// Where each key is written, by dotted path (`gateway.admin`, `routes[2].plugins[0].config`).
    pub(crate) locations: HashMap<String, Location>,
}

impl Config {
    /// Where `key`, a dotted path such as `gateway.plugin_cache_dir`, is written in the file;
    /// `None` when the file does not set it (its default applies).
    pub fn location_of(&self, key: &str) -> Option<Location> {
        self.locations.get(key).copied()
    }

    /// A problem with `key` found after loading (a file that cannot be opened, a setting the
    /// system refuses), located where the key is written, or at no position for a default.
    pub fn diagnostic(&self, key: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            location: self.location_of(key),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// The upstream called `name`, if the configuration defines one.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// `[gateway]`.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// `listen`: plain-text listeners serving HTTP/1.1 and h2c (prior knowledge). Default `["127.0.0.1:8080"]`.
    pub listen: Vec<SocketAddr>,
    /// `plugins_dir`: where plugin names resolve (`<plugins_dir>/<name>.wasm`). Default `plugins`.
    pub plugins_dir: PathBuf,
    /// `[gateway.tls]`: TLS listeners, absent when not configured.
    pub tls: Option<Tls>,
    /// `header_read_timeout`: how long a client may take to send a request's header section. Default 10 s.
    pub header_read_timeout: Duration,
    /// `idle_timeout`: how long a keep-alive connection may sit without a request in flight. Default 60 s.
    pub idle_timeout: Duration,
    /// `send_timeout`: how long a response may wait for the client to take more of it before the
    /// connection is closed. Default 60 s.
    pub send_timeout: Duration,
    /// `max_header_size`: the largest request header section accepted, in bytes (431 beyond). Default 64 KiB.
    pub max_header_size: usize,
    /// `max_headers`: the most request header fields accepted (431 beyond). Default 100.
    pub max_headers: usize,
    /// `shutdown_grace`: how long in-flight requests may run after SIGTERM/SIGINT. Default 30 s.
    pub shutdown_grace: Duration,
    /// `[gateway.http2]`: HTTP/2 server limits.
    pub http2: Http2,
    /// `[gateway.dns]`: how targets given by a DNS name are discovered.
    pub dns: Dns,
    /// `[gateway.tracing]`: OpenTelemetry traces; absent (the default): no tracing.
    pub tracing: Option<Tracing>,
    /// `[gateway.state]`: where plugins' shared state (rate-limit counters, KV) lives. Default
    /// [`StateBackend::Memory`].
    pub state: StateBackend,
    /// `max_connections`: the most client connections open at once on each listener (0, the
    /// default: no limit); more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// `max_connections_per_client`: the most client connections open at once from one IP
    /// address across the listeners (0, the default: no limit).
    pub max_connections_per_client: usize,
    /// `max_request_body`: the largest request body accepted, in bytes (413 beyond; 0: no
    /// limit). Default 100 MiB.
    pub max_request_body: u64,
    /// `trusted_proxies`: the networks of the proxies in front of the gateway (load balancers,
    /// CDNs) whose `client_address_header` is believed. Empty (the default): the client is
    /// always the connection's peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `proxy_protocol`: every connection to the listeners starts with a PROXY protocol header
    /// (v1 or v2) from one of `trusted_proxies`, naming the client. Default `false`.
    pub proxy_protocol: bool,
    /// `client_address_header`: the header trusted proxies add the client's address to.
    /// Default [`ClientAddressHeader::XForwardedFor`].
    pub client_address_header: ClientAddressHeader,
    /// `merge_slashes`: repeated slashes in a request path are one (`//a///b` is `/a/b`) for
    /// routing, plugins and the upstream. Default `true`.
    pub merge_slashes: bool,
    /// `escaped_slashes`: what an encoded slash or backslash (`%2F`, `%5C`) or a raw `\` in a
    /// request path does. Default [`EscapedSlashes::Reject`].
    pub escaped_slashes: EscapedSlashes,
    /// `plugin_cache_dir`: where compiled plugins are cached, keyed by content hash. Default
    /// `$XDG_CACHE_HOME/wasmgate` (or `~/.cache/wasmgate`); `""` turns the cache off.
    pub plugin_cache_dir: Option<PathBuf>,
    /// `admin`: the admin listener (health, readiness, metrics, routes, plugins, config, reload).
    /// Absent: no admin listener. It has no authentication: bind it to loopback or a private
    /// network only.
    pub admin: Option<SocketAddr>,
    /// `admin_token` (or `admin_token_file`, a file holding it): when set, every admin endpoint
    /// requires `Authorization: Bearer <token>`.
    pub admin_token: Option<Secret>,
    /// `access_log`: where one JSON line per request goes. Default `"stdout"`.
    pub access_log: AccessLog,
    /// `watch`: reload when the config file or a plugin file changes. Default `true`.
    pub watch: bool,
    /// `workers`: data-path threads, each running its own event loop, accepting from the shared
    /// listeners and keeping its own upstream connections. A connection stays on the worker that
    /// accepted it. Default: the CPUs the process may run on.
    pub workers: usize,
    /// `[gateway.compression]`: compression for every route that does not set its own
    /// `compression`. Absent: none.
    pub compression: Option<Compression>,
}

/// `[gateway.dns]`: the resolver that discovers the addresses of targets given by a DNS name.
/// Every address a name resolves to is a target, re-resolved when its TTL runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// `nameservers`: the DNS servers asked (`IP` or `IP:PORT`, port 53 by default), over UDP
    /// then TCP. Empty (the default): those of `/etc/resolv.conf`, with its search domains.
    pub nameservers: Vec<SocketAddr>,
    /// `lookup`: which address families a name's targets come from. Default
    /// [`DnsLookup::Ipv4ThenIpv6`].
    pub lookup: DnsLookup,
    /// `min_ttl`: the shortest time a resolved answer is used before the name is resolved
    /// again (a TTL of 0 would otherwise ask on every turn). Default 1 s.
    pub min_ttl: Duration,
    /// `max_ttl`: the longest; a longer TTL is cut to it. Default 60 s.
    pub max_ttl: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            lookup: DnsLookup::Ipv4ThenIpv6,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
        }
    }
}

/// `[gateway.tracing]`: OpenTelemetry traces of every request, exported over OTLP/HTTP
/// (protobuf) to a collector. The W3C `traceparent` and `tracestate` of a client are continued
/// and sent upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// `endpoint`: the collector's OTLP/HTTP URL (`http://` or `https://`); `/v1/traces` is
    /// added when the URL has no path. Required.
    pub endpoint: String,
    /// `sample_ratio`: the share of requests that start a trace, 0.0 to 1.0. A request whose
    /// client sent a `traceparent` follows the client's sampling decision instead. Default 1.0.
    pub sample_ratio: f64,
    /// `service_name`: the `service.name` of the spans. Default `wasmgate`.
    pub service_name: String,
    /// `headers`: HTTP header fields sent with every export (a collector's API key). Default none.
    pub headers: Vec<(String, String)>,
    /// `timeout`: how long one export may take. Default 10 s.
    pub timeout: Duration,
    /// `export_interval`: how often finished spans are sent, in batches. Default 5 s.
    pub export_interval: Duration,
}

/// `[gateway.state]`: where plugins' shared state lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// `backend = "memory"`: in this process; every gateway counts for itself. The default.
    #[default]
    Memory,
    /// `backend = "redis"`: in Redis, shared by every gateway using it.
    Redis(Redis),
}

/// `[gateway.state]` with `backend = "redis"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    /// `url` (one server: `redis://[user:password@]host[:port][/db]`, `rediss://` for TLS) or
    /// `cluster` (the seed nodes of a Redis Cluster, each such a URL); exactly one is given.
    pub servers: RedisServers,
    /// `pool_size`: connections per server, each pipelining every command sent on it. Default 4.
    pub pool_size: usize,
    /// `timeout`: how long one command, or connecting, may take before Redis counts as
    /// unavailable for it. Default 250 ms.
    pub timeout: Duration,
    /// `on_unavailable`: what a plugin's shared-state call does when Redis cannot answer.
    /// Default [`OnUnavailable::Local`].
    pub on_unavailable: OnUnavailable,
    /// `key_prefix`: put before every key, so several gateway clusters can share one Redis.
    /// Default `"wasmgate:"`.
    pub key_prefix: String,
    /// `ca`: a PEM file of the certificate authorities a `rediss://` server is verified
    /// against, instead of the system's roots.
    pub ca: Option<PathBuf>,
}

/// `gateway.state.url` or `gateway.state.cluster`.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisServers {
    /// `url`: one server.
    Single(String),
    /// `cluster`: seed nodes of a Redis Cluster.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisServers {
    /// URLs without their password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(url) => f.debug_tuple("Single").field(&redact(url)).finish(),
            Self::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(|u| redact(u)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// A Redis URL with its password replaced by `***`, for logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// `gateway.state.on_unavailable`: what a shared-state call does when Redis cannot answer in
/// time (down, unreachable, or slower than `timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// `"local"`: this gateway's memory answers instead, so each gateway counts its own share
    /// until Redis is back (a limit of N may admit up to N per gateway). The default.
    Local,
    /// `"deny"`: the request is refused with 503 (`state_unavailable`).
    Deny,
    /// `"allow"`: the call answers as if nothing were stored: counters read 0 (limits let
    /// traffic through), values are absent, writes are dropped.
    Allow,
}

/// `gateway.dns.lookup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookup {
    /// `"ipv4_then_ipv6"`: the A records; the AAAA records only when there is no A record
    /// (Envoy's `V4_PREFERRED`). The default.
    Ipv4ThenIpv6,
    /// `"ipv6_then_ipv4"`: the AAAA records; the A records only when there is no AAAA record.
    Ipv6ThenIpv4,
    /// `"ipv4_and_ipv6"`: every A and AAAA record.
    Ipv4AndIpv6,
    /// `"ipv4"`: A records only.
    Ipv4,
    /// `"ipv6"`: AAAA records only.
    Ipv6,
}

/// A secret from the config, or from a file it names: never shown in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(crate) String);

impl Secret {
    /// The secret itself, for comparing with what a client presents.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `gateway.client_address_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddressHeader {
    /// `"x-forwarded-for"`: `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// `"forwarded"`: RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// `gateway.escaped_slashes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// `"reject"`: the request gets a 400 (the default: what it means depends on the upstream).
    Reject,
    /// `"keep"`: stays escaped (`%2F`, `%5C`; a raw `\` becomes `%5C`): part of a segment,
    /// not a separator, for routing and upstream alike.
    Keep,
    /// `"decode"`: becomes `/`, a separator, for routing and upstream alike.
    Decode,
}

/// `gateway.access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// `"stdout"`: to standard output (the default).
    Stdout,
    /// A file path, relative to the config file: appended to, created when missing.
    File(PathBuf),
    /// `"off"`: no access log.
    Off,
}

/// `[gateway.http2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2 {
    /// `max_concurrent_streams` a client may open on one connection. Default 128.
    pub max_concurrent_streams: u32,
    /// `max_pending_reset_streams`: streams a client may open and reset before the server has seen
    /// them (CVE-2023-44487 "rapid reset"); the connection is closed beyond. Default 20.
    pub max_pending_reset_streams: usize,
    /// `max_local_reset_streams`: streams the server may reset because of client protocol errors
    /// (the 2025 "MadeYouReset" attack) before it closes the connection. Default 1024.
    pub max_local_reset_streams: usize,
    /// `keepalive_interval`: how often to PING an idle client; `"0s"` turns PINGs off. Default 30 s.
    pub keepalive_interval: Option<Duration>,
    /// `keepalive_timeout`: how long to wait for a PING's answer before closing. Default 10 s.
    pub keepalive_timeout: Duration,
}

/// `[gateway.tls]`.
#[derive(Debug, Clone)]
pub struct Tls {
    /// `listen`: TLS listeners serving HTTP/1.1 and h2, chosen by ALPN.
    pub listen: Vec<SocketAddr>,
    /// `certificates`: chosen per connection by the client's SNI against each certificate's names;
    /// the first one answers clients that send no SNI or a name no certificate covers.
    pub certificates: Vec<Certificate>,
    /// `client_auth`: client certificates asked for on the TLS listeners (mutual TLS).
    pub client_auth: Option<ClientAuth>,
}

/// `[gateway.tls] client_auth`, with its CA file already read.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// `ca`: the PEM file of the certificate authorities client certificates must chain to,
    /// with the certificates it holds.
    pub ca: (PathBuf, Vec<rustls_pki_types::CertificateDer<'static>>),
    /// `required`: whether a client without a certificate is refused at the handshake
    /// (default `true`); with `false` it is served, without a verified subject.
    pub required: bool,
}

/// One entry of `[gateway.tls] certificates`, with its files already read.
pub struct Certificate {
    /// `cert`: the PEM file, resolved against the config file's folder.
    pub cert_path: PathBuf,
    /// `key`: the PEM private key file, resolved against the config file's folder.
    pub key_path: PathBuf,
    /// The certificate chain in DER, leaf first.
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The private key in DER.
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
    /// Where this entry was written.
    pub location: Location,
}

impl Clone for Certificate {
    fn clone(&self) -> Self {
        Self {
            cert_path: self.cert_path.clone(),
            key_path: self.key_path.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            location: self.location,
        }
    }
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The table's name, as routes refer to it.
    pub name: String,
    /// `targets`: where requests go, each request to the one `balance` chooses.
    pub targets: Vec<Target>,
    /// `connect_timeout`: how long to wait for a TCP connection to a target (502 beyond). Default 5 s.
    pub connect_timeout: Duration,
    /// `timeout`: how long to wait for the response head, counted from when the request is
    /// handed to the pool (connecting and sending the request body included; 504 beyond), and
    /// the longest pause between two reads of the response body (the response is cut off
    /// beyond: its status was already sent). Default 30 s.
    pub timeout: Duration,
    /// `pool_idle_timeout`: how long an idle keep-alive connection to a target is kept. Default 60 s.
    pub pool_idle_timeout: Duration,
    /// `pool_max_idle`: idle keep-alive connections kept per target by each worker. Default 256.
    pub pool_max_idle: usize,
    /// `protocol`: how requests are sent to the targets. Default `"auto"`.
    pub protocol: UpstreamProtocol,
    /// `balance` (with `hash_on`): how each request's target is chosen. Default
    /// `"round_robin"`.
    pub balance: Balance,
    /// `outlier_detection`: when a failing target is ejected, and for how long.
    pub outlier_detection: OutlierDetection,
    /// `max_requests`: the most requests in flight to the upstream across the gateway; beyond,
    /// requests get a fast 503 (circuit breaking). 0, the default: no limit.
    pub max_requests: u32,
    /// `max_connections`: the most connections open to the upstream's targets across the
    /// gateway (0, the default: no limit).
    pub max_connections: u32,
    /// `max_pending`: with `max_connections`, the most requests waiting for a connection to free
    /// up (each for at most `connect_timeout`, then connecting within its own `connect_timeout`
    /// when what freed up is room for a new connection); beyond, a fast 503. Default 1024.
    pub max_pending: u32,
    /// `health_check`: probes each target on an interval, and takes traffic away from a target
    /// that fails them until it passes again. `None` (the default): no active checks.
    pub health_check: Option<HealthCheck>,
    /// `retries`: when a request that failed is sent again.
    pub retries: Retries,
    /// `tls`: how `https://` targets are verified and what the gateway presents to them.
    /// `None` when the table is absent (then: system roots, SNI from the target's host, no
    /// client certificate).
    pub tls: Option<UpstreamTls>,
}

/// `balance` of an upstream: how each request's target is chosen. Every algorithm honours the
/// targets' weights and skips ejected and unhealthy targets while another one is usable; with
/// none usable (panic mode) it chooses as if every target were.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    /// `"round_robin"`: smooth weighted round-robin, as nginx.
    #[default]
    RoundRobin,
    /// `"least_request"`: of two targets drawn at random by weight, the one with fewer requests
    /// in flight for its weight (power of two choices).
    LeastRequest,
    /// `"random"`: a target drawn at random by weight.
    Random,
    /// `"hash"`: consistent hashing of the request's `hash_on` key over a ring of the targets,
    /// so a key keeps its target, and adding or removing a target moves only the keys it takes
    /// or had.
    Hash(HashOn),
}

/// `outlier_detection` of an upstream: a target that fails several requests in a row is
/// skipped for a while (Envoy's outlier detection, nginx's `max_fails`/`fail_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `consecutive_errors`: connect failures and timeouts in a row that eject the target
    /// (0: never). Default 1, as nginx's `max_fails`.
    pub consecutive_errors: u32,
    /// `consecutive_5xx`: 5xx responses in a row that eject the target (0: never). Default 5.
    pub consecutive_5xx: u32,
    /// `base_ejection`: how long the first ejection lasts; each further ejection of the same
    /// target lasts one `base_ejection` longer. Default 10 s.
    pub base_ejection: Duration,
    /// `max_ejection`: the longest an ejection lasts. Default 300 s.
    pub max_ejection: Duration,
    /// `max_ejection_percent`: the most targets, in percent, ejected at once (at least one).
    /// Default 50.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_errors: 1,
            consecutive_5xx: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// `health_check` of an upstream: one checker for the whole gateway probes every target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `type` (`"http"`, the default, or `"tcp"`) with what the probe asks for.
    pub probe: Probe,
    /// `interval`: the time between two probes of a target. Default 5 s.
    pub interval: Duration,
    /// `timeout`: how long a probe may take (connecting included) before it fails. Default 1 s.
    pub timeout: Duration,
    /// `healthy`: passed probes in a row that bring an unhealthy target back. Default 2.
    pub healthy: u32,
    /// `unhealthy`: failed probes in a row that take a target out. Default 3.
    pub unhealthy: u32,
}

/// What a health check probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `type = "http"`: `GET path` on a connection of the checker's own, in the upstream's
    /// `protocol`; passes when the response status is one of `statuses` (`None`: any 2xx).
    Http {
        /// `path`: the path and query asked for. Default `"/"`.
        path: http::uri::PathAndQuery,
        /// `host`: the `Host` sent. Default: the target's address.
        host: Option<http::HeaderValue>,
        /// `statuses`: the response statuses that pass. Default: any 2xx.
        statuses: Option<Vec<u16>>,
    },
    /// `type = "tcp"`: passes when a TCP connection to the target opens.
    Tcp,
}

/// `retries` of an upstream: which failed requests are sent again, and how often.
///
/// Whatever the settings, a request is only sent again when that is safe: when the connection
/// failed before anything was sent, or, for `methods`, when its body (up to `max_body`) can
/// be sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// `attempts`: the most retries of one request (0: none at all). Default 1.
    pub attempts: u32,
    /// `statuses`: response statuses that are retried (e.g. 502, 503, 504). Default none.
    pub statuses: Vec<u16>,
    /// `methods`: `"idempotent"` (the default: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) or
    /// `"all"`: the requests retried once they were sent (a connection that failed before
    /// sending is retried whatever the method).
    pub all_methods: bool,
    /// `max_body`: the largest request body kept to be sent again; a request with a larger
    /// body is not retried once sent. Default 64 KiB.
    pub max_body: u64,
    /// `per_try_timeout`: how long each try waits for the response head; beyond, the try
    /// counts as a failure and is retried (`None`, the default: only the upstream's `timeout`,
    /// which always bounds all tries together).
    pub per_try_timeout: Option<Duration>,
    /// `backoff`: the base of the jittered exponential wait before a retry to a target that
    /// already failed the request, or after a retried status or timeout. Default 25 ms.
    pub backoff: Duration,
    /// `max_backoff`: the longest such wait; a `Retry-After` longer than it is not waited for
    /// (the response goes to the client). Default 250 ms.
    pub max_backoff: Duration,
    /// `budget_percent`: retries in flight may be at most this share of the upstream's
    /// requests in flight, so retries cannot multiply an outage. Default 20.
    pub budget_percent: u32,
    /// `min_retry_concurrency`: retries in flight always allowed whatever the budget says.
    /// Default 3.
    pub min_retry_concurrency: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: 1,
            statuses: Vec::new(),
            all_methods: false,
            max_body: 64 * 1024,
            per_try_timeout: None,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            budget_percent: 20,
            min_retry_concurrency: 3,
        }
    }
}

/// `hash_on` of an upstream with `balance = "hash"`: what identifies a request's key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashOn {
    /// `"ip"`: the client's address (the default).
    #[default]
    Ip,
    /// `"path"`: the request's path, without the query.
    Path,
    /// `"header:NAME"`: the value of a request header.
    Header(HeaderName),
    /// `"cookie:NAME"`: the value of a request cookie.
    Cookie(String),
}

impl Balance {
    /// The value as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastRequest => "least_request",
            Self::Random => "random",
            Self::Hash(_) => "hash",
        }
    }
}

/// `protocol` of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// `"auto"`: HTTP/1.1 to `http://` targets; to `https://` targets, HTTP/2 or HTTP/1.1 as
    /// the target chooses by ALPN.
    #[default]
    Auto,
    /// `"http1"`: HTTP/1.1 only, one request at a time per connection, idle connections kept
    /// alive.
    Http1,
    /// `"h2"`: HTTP/2 over TLS (ALPN `h2`), `https://` targets only.
    H2,
    /// `"h2c"`: HTTP/2 over plain TCP by prior knowledge (RFC 9113 §3.3), `http://` targets
    /// only: requests multiplexed on one connection per target and worker.
    H2c,
}

impl UpstreamProtocol {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Http1 => "http1",
            Self::H2 => "h2",
            Self::H2c => "h2c",
        }
    }
}

/// `[upstreams.NAME] tls`, with its files already read.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// `ca`: the PEM file of the certificate authorities trusted for the targets, instead of
    /// the system's; with the certificates it holds.
    pub ca: Option<(PathBuf, Vec<rustls_pki_types::CertificateDer<'static>>)>,
    /// `cert` and `key`: the client certificate presented to the targets (mutual TLS).
    pub client: Option<Certificate>,
    /// `server_name`: the name sent in SNI and checked against the targets' certificates,
    /// instead of each target's host.
    pub server_name: Option<String>,
    /// `verify`: whether the targets' certificates are checked. Default `true`.
    pub verify: bool,
}

/// One entry of `targets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `address`: `host:port`, where host is an IP address or a DNS name (whose addresses are
    /// discovered, see [`Dns`]).
    pub address: http::uri::Authority,
    /// Whether the address was written `https://host:port`: the target is spoken to over TLS.
    pub tls: bool,
    /// `weight`: the target's share of requests, 1 to 1000. Default 1.
    pub weight: u32,
}

impl Target {
    /// The address's host without the brackets of an IPv6 address.
    pub fn host(&self) -> &str {
        self.address
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// Whether the host is a DNS name (whose addresses are discovered), not an IP address.
    pub fn is_named(&self) -> bool {
        self.host().parse::<std::net::IpAddr>().is_err()
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone)]
pub struct Route {
    /// `name`: unique among routes; names the route in logs and metrics.
    pub name: String,
    /// `hosts`: `api.example.com` or `*.example.com`; empty matches any host.
    pub hosts: Vec<HostPattern>,
    /// `paths`: prefixes on segment boundaries, or `=/exact`. Default `["/"]`.
    pub paths: Vec<PathPattern>,
    /// `methods`: empty matches any method.
    pub methods: Vec<Method>,
    /// `headers`: every named header must be present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What the route does with a request it matched.
    pub action: RouteAction,
    /// `strip_path`: remove the matched path prefix before forwarding. Default false.
    pub strip_path: bool,
    /// `protocols`: the client protocols the route serves, `http` (plain listeners) and/or
    /// `https` (TLS listeners). Default both.
    pub protocols: Protocols,
    /// `https_redirect`: answer a plain-HTTP request to an `https`-only route with a 308 redirect
    /// to the same URL over HTTPS, instead of a 426. Default false.
    pub https_redirect: bool,
    /// `preserve_host`: send the client's `Host` upstream (true), or the target's address
    /// (false, as nginx and Kong do by default). Default true.
    pub preserve_host: bool,
    /// `case_sensitive`: whether `paths` match the request path's letters exactly (`true`, the
    /// default) or in any case (`false`: `/admin` matches `/ADMIN/x`).
    pub case_sensitive: bool,
    /// `max_body`: the largest body buffered for plugins that ask for bodies (413 beyond for
    /// requests). Default 1 MiB.
    pub max_body: usize,
    /// `[[routes.plugins]]`: the plugin chain, in order.
    pub plugins: Vec<PluginEntry>,
    /// `mirror`: a copy of some requests sent to another upstream, its answer ignored.
    pub mirror: Option<Mirror>,
    /// `cache`: responses kept and answered from memory.
    pub cache: Option<Cache>,
    /// `compression`: the route's own, or else `[gateway.compression]`; `compression = false`
    /// turns the gateway's off for the route.
    pub compression: Option<Compression>,
    /// Where this route's `[[routes]]` header was written.
    pub location: Location,
}

/// `protocols`: which listeners' requests a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// `"http"`: requests on plain listeners.
    pub http: bool,
    /// `"https"`: requests on TLS listeners.
    pub https: bool,
}

impl Protocols {
    /// Both, the default.
    pub const ALL: Self = Self {
        http: true,
        https: true,
    };

    /// Whether a request that came over TLS (`tls`) or not is served.
    pub fn allows(self, tls: bool) -> bool {
        if tls { self.https } else { self.http }
    }
}

/// One `[[routes.plugins]]` entry: a plugin bound to a route with its config.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// `name`, or the file stem of `path`: names the plugin in logs, metrics and errors.
    pub name: String,
    /// The `.wasm` file: `<plugins_dir>/<name>.wasm`, or `path` resolved against the config file.
    pub file: PathBuf,
    /// `config`: any TOML value, handed to the plugin's `init` as JSON. Default `{}`.
    pub config: serde_json::Value,
    /// `memory`: the most linear memory one instance may use. Default 16 MiB.
    pub memory: usize,
    /// `timeout`: the longest one hook call may run. Default 50 ms.
    pub timeout: Duration,
    /// `on_error`: what a failing plugin does to the request. Default [`OnError::Deny`].
    pub on_error: OnError,
    /// `isolation`: whether instances are reused across requests. Default [`Isolation::Pooled`].
    pub isolation: Isolation,
    /// `max_instances`: the most instances of the entry alive at once, busy or idle, shared out
    /// evenly among the workers (at least one each). `None`: 4 per worker.
    pub max_instances: Option<usize>,
    /// Where this entry was written.
    pub location: Location,
}

/// `on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// `"deny"`: the request fails (500, or 503 when no instance is available).
    Deny,
    /// `"allow"`: the plugin is skipped for this request and the failure is counted.
    Allow,
}

/// `isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// `"pooled"`: instances are initialised once and reused by many requests.
    Pooled,
    /// `"request"`: every hook call gets a fresh instance, `init`ed for it and dropped after it
    /// (for untrusted code: nothing survives from one request to the next; ~70 µs per call).
    Request,
}

/// A route's host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `api.example.com`: this host only (lowercase).
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` with at least one more label; holds the
    /// suffix including its leading dot (lowercase).
    Wildcard(String),
}

/// A route's path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathPattern {
    /// `/users`: `/users`, `/users/` and `/users/...`, but not `/usersx`.
    Prefix(String),
    /// `=/users`: exactly `/users`.
    Exact(String),
}

impl PathPattern {
    /// The path text, without the `=` marker.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Prefix(p) | Self::Exact(p) => p,
        }
    }
}

/// `upstream = "…"` or `respond = { … }`.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to this upstream (index into [`Config::upstreams`]).
    Upstream(usize),
    /// `upstreams = [...]`: forward to one of several upstreams.
    Split(Split),
    /// Answer directly.
    Respond(Respond),
}

/// `respond = { status, body, headers }`.
#[derive(Debug, Clone)]
pub struct Respond {
    /// `status`: default 200.
    pub status: StatusCode,
    /// `body`: default empty.
    pub body: String,
    /// `headers`: sent as given.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// `upstreams = [{ name, weight, headers, cookies }, ...]` (with `sticky`): a traffic split
/// between upstreams, for canary releases, blue/green and A/B tests.
///
/// A request goes to the first backend whose `headers` and `cookies` it all carries (a pin),
/// else to one drawn by weight: at random, or by a hash of its `sticky` key so that the same
/// key keeps going to the same backend while the weights stay the same (and changing a weight
/// moves only the keys it must).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The backends, in file order.
    pub backends: Vec<Backend>,
    /// `sticky`: `"ip"`, `"path"`, `"header:NAME"` or `"cookie:NAME"`; a request without the
    /// key is drawn at random. Absent: every request is drawn at random.
    pub sticky: Option<HashOn>,
}

/// One entry of a route's `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `name`: the upstream (index into [`Config::upstreams`]).
    pub upstream: usize,
    /// `weight`: its share of the requests no pin decides, 0 to 10000. Default 1. A backend of
    /// weight 0 gets pinned requests only.
    pub weight: u32,
    /// `headers`: request headers that pin a request here, each with the exact value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `cookies`: request cookies that pin a request here, each with the exact value.
    pub cookies: Vec<(String, String)>,
}

impl Backend {
    /// Whether the backend pins requests at all.
    pub fn pins(&self) -> bool {
        !self.headers.is_empty() || !self.cookies.is_empty()
    }
}

/// `mirror = { upstream, percent, max_body, max_in_flight }`: copies of a route's requests
/// sent to another upstream (a new version under real traffic, a shadow environment). Fire and
/// forget: the mirror's answer, errors and latency never reach the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// `upstream`: where the copies go (index into [`Config::upstreams`]).
    pub upstream: usize,
    /// `percent`: the share of requests copied, 0 to 100. Default 100.
    pub percent: f64,
    /// `max_body`: the largest request body copied; a request with a larger (or unknown-length
    /// and then larger) body is not mirrored. Default 64 KiB.
    pub max_body: u64,
    /// `max_in_flight`: copies on their way at once, for the whole gateway; beyond, a copy is
    /// dropped (counted), so a slow mirror cannot hold memory. Default 64.
    pub max_in_flight: usize,
}

/// `cache = { ttl, max_size, ... }`: responses of the route kept in memory and answered from
/// there while fresh (RFC 9111, as a shared cache). Plugins run before the lookup: a request
/// they refuse never gets a cached answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// `ttl`: how long a response without its own lifetime (`s-maxage`, `max-age`, `Expires`)
    /// stays fresh. Default 30 s.
    pub ttl: Duration,
    /// `max_size`: memory for the route's entries; the least used go beyond it. Default 64 MiB.
    pub max_size: u64,
    /// `max_entry_size`: the largest response stored; larger ones pass through. Default 1 MiB.
    pub max_entry_size: u64,
    /// `methods`: `GET` and/or `HEAD`. Default both.
    pub methods: Vec<Method>,
    /// `vary`: request headers whose values are part of the key (besides those the upstream's
    /// `Vary` names). Default none.
    pub vary: Vec<HeaderName>,
    /// `client_no_cache`: whether a client's `Cache-Control: no-cache` (or `max-age=0`,
    /// `Pragma: no-cache`) sends the request upstream and refreshes the entry, and `no-store`
    /// skips the cache. Default `false`: clients cannot make the upstream work.
    pub client_no_cache: bool,
    /// `lock_timeout`: how long a request waits for another one fetching the same response
    /// before going upstream itself. Default 5 s.
    pub lock_timeout: Duration,
    /// `keep`: how long a response that went stale is still kept when it carries a validator
    /// (`ETag` or `Last-Modified`), so that the next request for it asks the upstream whether
    /// it changed (a conditional request) and a `304` refreshes it without sending the body
    /// again. Default 10 minutes; zero drops stale responses and refetches them whole.
    pub keep: Duration,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            max_size: 64 << 20,
            max_entry_size: 1 << 20,
            methods: vec![Method::GET, Method::HEAD],
            vary: Vec::new(),
            client_no_cache: false,
            lock_timeout: Duration::from_secs(5),
            keep: Duration::from_secs(600),
        }
    }
}

/// `compression = { codecs, min_size, types, ... }` of a route or `[gateway.compression]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compression {
    /// `codecs`, `min_size`, `types` and the levels (`gzip_level`, `brotli_level`,
    /// `zstd_level`): what responses are compressed, and how.
    pub rules: wasmgate_compression::Rules,
    /// `decompress_requests`: whether a request body sent with `Content-Encoding` gzip, br or
    /// zstd is decompressed (up to the route's `max_body`) before plugins that read bodies see
    /// it and the upstream gets it. Default `false`.
    pub decompress_requests: bool,
}
