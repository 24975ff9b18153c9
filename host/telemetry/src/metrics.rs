//! The gateway's Prometheus metrics.
//!
//! One [`Metrics`] lives as long as the process, across reloads, so counters never restart. The
//! data path never looks a series up by name: each route, upstream target and plugin binding gets
//! its handles once, when a configuration is loaded ([`Metrics::route`], [`Metrics::target`],
//! [`Metrics::plugin`]); only `wasmgate_requests_total` resolves its `method`/`status` labels per
//! request, from a small bounded set.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latencies, in seconds: 0.5 ms to 60 s.
const REQUEST_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Plugin hook latencies, in seconds: 5 µs to 1 s (hooks are limited to their `timeout`).
const PLUGIN_BUCKETS: [f64; 14] = [
    0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.05, 0.25, 1.0,
];

/// How many distinct counter names one plugin entry may create with the host API.
pub const MAX_PLUGIN_COUNTERS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<String>,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Arc<String>,
    target: Arc<String>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOnlyLabels {
    upstream: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: Arc<String>,
    target: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    upstream: Arc<String>,
    target: Arc<String>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    upstream: Arc<String>,
    target: Arc<String>,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginPhaseLabels {
    route: Arc<String>,
    plugin: Arc<String>,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginKindLabels {
    route: Arc<String>,
    plugin: Arc<String>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCounterLabels {
    route: Arc<String>,
    plugin: Arc<String>,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SplitLabels {
    route: Arc<String>,
    upstream: Arc<String>,
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    route: Arc<String>,
    upstream: Arc<String>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    route: Arc<String>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodecLabels {
    route: Arc<String>,
    codec: &'static str,
    direction: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the gateway, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabels>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: HistogramFamily<TargetLabels>,
    upstream_connections: Family<TargetLabels, Counter>,
    tunnels: Family<TargetLabels, Counter>,
    tunnels_open: Family<TargetLabels, Gauge>,
    upstream_retries: Family<TargetLabels, Counter>,
    upstream_ejections: Family<TargetLabels, Counter>,
    upstream_overflows: Family<UpstreamOnlyLabels, Counter>,
    retry_overflows: Family<UpstreamOnlyLabels, Counter>,
    upstream_pending: Family<UpstreamOnlyLabels, Gauge>,
    connections_refused: Family<ReasonLabels, Counter>,
    health_checks: Family<CheckLabels, Counter>,
    health_transitions: Family<TransitionLabels, Counter>,
    target_healthy: Family<TargetLabels, Gauge>,
    plugin_duration: HistogramFamily<PluginPhaseLabels>,
    plugin_failures: Family<PluginKindLabels, Counter>,
    plugin_counters: Family<PluginCounterLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    file_checks: Family<ResultLabels, Counter>,
    connections: Gauge,
    access_log_dropped: Counter,
    send_timeouts: Counter,
    state: StateMetrics,
    traffic: TrafficFamilies,
}

/// The series of traffic splits, mirrors, caches and compression.
#[derive(Clone, Debug, Default)]
struct TrafficFamilies {
    split: Family<SplitLabels, Counter>,
    mirror: Family<MirrorLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
    cache_evictions: Family<RouteLabels, Counter>,
    cache_bytes: Family<RouteLabels, Gauge>,
    cache_entries: Family<RouteLabels, Gauge>,
    compression: Family<CodecLabels, Counter>,
}

/// The shared-state backend's metrics (`wasmgate_state_*`): Redis command latency and errors,
/// calls answered by the `on_unavailable` policy, and whether Redis answers.
#[derive(Clone, Debug)]
pub struct StateMetrics {
    duration: HistogramFamily<OpLabels>,
    errors: Family<OpLabels, Counter>,
    fallbacks: Family<PolicyLabels, Counter>,
    syncs: Counter,
    available: Gauge,
}

impl StateMetrics {
    /// A Redis command `op` took `elapsed`.
    pub fn observe(&self, op: &'static str, elapsed: Duration) {
        self.duration
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    /// A Redis command `op` failed or timed out.
    pub fn failed(&self, op: &'static str) {
        self.errors.get_or_create(&OpLabels { op }).inc();
    }

    /// A call was answered by the `on_unavailable` policy (`local`, `deny` or `allow`).
    pub fn fell_back(&self, policy: &'static str) {
        self.fallbacks.get_or_create(&PolicyLabels { policy }).inc();
    }

    /// A batched limit's local counts were sent to Redis.
    pub fn synced(&self) {
        self.syncs.inc();
    }

    /// Whether Redis answers (1) or not (0).
    pub fn set_available(&self, up: bool) {
        self.available.set(i64::from(up));
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wasmgate");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route (\"\" when none matched), method and status",
            requests.clone(),
        );
        let request_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival until its response body was sent, by route",
            request_duration.clone(),
        );
        let upstream_requests = Family::default();
        registry.register(
            "upstream_requests",
            "Requests sent to upstream targets, by outcome: response, connect_error, timeout, error",
            upstream_requests.clone(),
        );
        let upstream_duration: HistogramFamily<TargetLabels> =
            Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS));
        registry.register(
            "upstream_duration_seconds",
            "Time from handing a request to an upstream target until its response head arrived (connecting included), by upstream and target",
            upstream_duration.clone(),
        );
        let upstream_connections = Family::default();
        registry.register(
            "upstream_connections",
            "Connections opened to upstream targets (a request reusing a kept-alive or multiplexed connection opens none), by upstream and target",
            upstream_connections.clone(),
        );
        let upstream_retries = Family::default();
        registry.register(
            "upstream_retries",
            "Requests a target failed (no connection, or an idempotent request's connection lost before the response) that were sent again to another target, by upstream and the target that failed",
            upstream_retries.clone(),
        );
        let upstream_ejections = Family::default();
        registry.register(
            "upstream_ejections",
            "Times a target was ejected by outlier detection (connect failures, timeouts or 5xx responses in a row), by upstream and target",
            upstream_ejections.clone(),
        );
        let upstream_overflows = Family::default();
        registry.register(
            "upstream_overflows",
            "Requests answered 503 by circuit breaking: the upstream had max_requests in flight, or max_connections open and max_pending waiting, by upstream",
            upstream_overflows.clone(),
        );
        let retry_overflows = Family::default();
        registry.register(
            "upstream_retry_overflows",
            "Retries not made because the upstream's retry budget (retries.budget_percent of its requests in flight) was spent, by upstream",
            retry_overflows.clone(),
        );
        let upstream_pending = Family::default();
        registry.register(
            "upstream_pending_requests",
            "Requests waiting for a connection because the upstream has max_connections open, by upstream",
            upstream_pending.clone(),
        );
        let connections_refused: Family<ReasonLabels, Counter> = Family::default();
        registry.register(
            "connections_refused",
            "Client connections closed at once because a limit was reached, by reason: listener (max_connections) or client (max_connections_per_client)",
            connections_refused.clone(),
        );
        for reason in ["listener", "client"] {
            connections_refused
                .get_or_create(&ReasonLabels { reason })
                .get();
        }
        let health_checks = Family::default();
        registry.register(
            "upstream_health_checks",
            "Active health check probes, by upstream, target and result (pass or fail)",
            health_checks.clone(),
        );
        let health_transitions = Family::default();
        registry.register(
            "upstream_health_transitions",
            "Times a target's active health check state changed, by upstream, target and the state it changed to (healthy or unhealthy)",
            health_transitions.clone(),
        );
        let target_healthy = Family::default();
        registry.register(
            "upstream_target_healthy",
            "1 while a target passes its upstream's active health check, 0 while it fails it (absent without health_check), by upstream and target",
            target_healthy.clone(),
        );
        let tunnels = Family::default();
        registry.register(
            "upgraded_connections",
            "Connections upgraded (WebSocket and other HTTP/1.1 Upgrade protocols) and tunnelled to an upstream target, by upstream and target",
            tunnels.clone(),
        );
        let tunnels_open = Family::default();
        registry.register(
            "upgraded_connections_open",
            "Upgraded connections being tunnelled now, by upstream and target",
            tunnels_open.clone(),
        );
        let plugin_duration: HistogramFamily<PluginPhaseLabels> =
            Family::new_with_constructor(|| Histogram::new(PLUGIN_BUCKETS));
        registry.register(
            "plugin_duration_seconds",
            "Time spent in one plugin hook, including waiting for an instance, by route, plugin and phase",
            plugin_duration.clone(),
        );
        let plugin_failures = Family::default();
        registry.register(
            "plugin_failures",
            "Failed plugin calls by kind: error, trap, timeout, oom, unavailable",
            plugin_failures.clone(),
        );
        let plugin_counters = Family::default();
        registry.register(
            "plugin_counter",
            "Counters plugins keep through the host API, by route, plugin and name",
            plugin_counters.clone(),
        );
        let reloads: Family<ResultLabels, Counter> = Family::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result: success or failure",
            reloads.clone(),
        );
        for result in ["success", "failure"] {
            reloads.get_or_create(&ResultLabels { result }).get();
        }
        let file_checks: Family<ResultLabels, Counter> = Family::default();
        registry.register(
            "config_file_checks",
            "Changes the config file watcher saw, by result: changed (reloaded) or unchanged (same content, nothing done)",
            file_checks.clone(),
        );
        for result in ["changed", "unchanged"] {
            file_checks.get_or_create(&ResultLabels { result }).get();
        }
        let connections = Gauge::default();
        registry.register(
            "connections_active",
            "Client connections currently open",
            connections.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer could not keep up",
            access_log_dropped.clone(),
        );
        let send_timeouts = Counter::default();
        registry.register(
            "send_timeouts",
            "Client connections closed because a response waited longer than gateway.send_timeout for the client to take more of it",
            send_timeouts.clone(),
        );
        let state = StateMetrics {
            duration: Family::new_with_constructor(|| Histogram::new(PLUGIN_BUCKETS)),
            errors: Family::default(),
            fallbacks: Family::default(),
            syncs: Counter::default(),
            available: Gauge::default(),
        };
        registry.register(
            "state_redis_duration_seconds",
            "Redis commands of the shared state, by operation",
            state.duration.clone(),
        );
        registry.register(
            "state_redis_errors",
            "Redis commands of the shared state that failed or timed out, by operation",
            state.errors.clone(),
        );
        registry.register(
            "state_fallbacks",
            "Shared-state calls answered by gateway.state.on_unavailable because Redis could not answer",
            state.fallbacks.clone(),
        );
        registry.register(
            "state_batch_syncs",
            "Times a batched rate limit's local counts were sent to Redis",
            state.syncs.clone(),
        );
        registry.register(
            "state_redis_available",
            "Whether the shared state answers: Redis reachable (1), or not or not yet (0); always 1 with the memory backend",
            state.available.clone(),
        );
        let traffic = TrafficFamilies::default();
        registry.register(
            "split_decisions",
            "Requests of a traffic split (a route's `upstreams`), by upstream chosen and how: pin (a header or cookie) or weight",
            traffic.split.clone(),
        );
        registry.register(
            "mirror_requests",
            "Copies of requests for a route's mirror, by outcome: sent (answered), failed (no answer) or dropped (max_in_flight reached, or a body over max_body)",
            traffic.mirror.clone(),
        );
        registry.register(
            "cache_requests",
            "Requests on routes with a cache, by result: hit, miss or bypass",
            traffic.cache.clone(),
        );
        registry.register(
            "cache_evictions",
            "Cached responses evicted to keep a route's cache within max_size",
            traffic.cache_evictions.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held by a route's cache (bodies, headers and keys)",
            traffic.cache_bytes.clone(),
        );
        registry.register(
            "cache_entries",
            "Responses held by a route's cache",
            traffic.cache_entries.clone(),
        );
        registry.register(
            "compression_bytes",
            "Body bytes through compression, by codec and direction: in (as the upstream sent them) and out (as compressed); out / in is the compression ratio",
            traffic.compression.clone(),
        );
        Self {
            traffic,
            state,
            registry,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            upstream_connections,
            tunnels,
            tunnels_open,
            upstream_retries,
            upstream_ejections,
            upstream_overflows,
            retry_overflows,
            upstream_pending,
            connections_refused,
            health_checks,
            health_transitions,
            target_healthy,
            plugin_duration,
            plugin_failures,
            plugin_counters,
            reloads,
            file_checks,
            connections,
            access_log_dropped,
            send_timeouts,
        }
    }

    /// The shared-state backend's metrics.
    pub fn state(&self) -> &StateMetrics {
        &self.state
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]), which Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handles of route `name`.
    pub fn route(&self, name: &str) -> RouteMetrics {
        let route = Arc::new(name.to_owned());
        RouteMetrics {
            duration: self.request_duration.get_or_create_owned(&RouteLabels {
                route: route.clone(),
            }),
            requests: self.requests.clone(),
            hot: (0..METHODS.len() * HOT_STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            route,
        }
    }

    /// The handles of a traffic split of route `route` to upstream `upstream`.
    pub fn split(&self, route: &str, upstream: &str) -> SplitMetrics {
        let (route, upstream) = (Arc::new(route.to_owned()), Arc::new(upstream.to_owned()));
        let counter = |by| {
            self.traffic.split.get_or_create_owned(&SplitLabels {
                route: route.clone(),
                upstream: upstream.clone(),
                by,
            })
        };
        SplitMetrics {
            pinned: counter("pin"),
            weighted: counter("weight"),
        }
    }

    /// The handles of route `route`'s mirror to `upstream`.
    pub fn mirror(&self, route: &str, upstream: &str) -> MirrorMetrics {
        let (route, upstream) = (Arc::new(route.to_owned()), Arc::new(upstream.to_owned()));
        let counter = |outcome| {
            self.traffic.mirror.get_or_create_owned(&MirrorLabels {
                route: route.clone(),
                upstream: upstream.clone(),
                outcome,
            })
        };
        MirrorMetrics {
            sent: counter("sent"),
            failed: counter("failed"),
            dropped: counter("dropped"),
        }
    }

    /// The handles of route `route`'s cache.
    pub fn cache(&self, route: &str) -> CacheMetrics {
        let route = Arc::new(route.to_owned());
        let counter = |result| {
            self.traffic.cache.get_or_create_owned(&CacheLabels {
                route: route.clone(),
                result,
            })
        };
        let labels = RouteLabels {
            route: route.clone(),
        };
        CacheMetrics {
            hit: counter("hit"),
            miss: counter("miss"),
            bypass: counter("bypass"),
            revalidated: counter("revalidated"),
            evictions: self.traffic.cache_evictions.get_or_create_owned(&labels),
            bytes: self.traffic.cache_bytes.get_or_create_owned(&labels),
            entries: self.traffic.cache_entries.get_or_create_owned(&labels),
        }
    }

    /// The byte counters of route `route`'s compression with `codec` (`"gzip"`, `"br"`,
    /// `"zstd"`): in and out.
    pub fn compression(&self, route: &str, codec: &'static str) -> (Counter, Counter) {
        let route = Arc::new(route.to_owned());
        let counter = |direction| {
            self.traffic.compression.get_or_create_owned(&CodecLabels {
                route: route.clone(),
                codec,
                direction,
            })
        };
        (counter("in"), counter("out"))
    }

    /// Counts requests refused because upstream `upstream` had `max_requests` in flight.
    pub fn upstream_overflows(&self, upstream: &str) -> Counter {
        self.upstream_overflows
            .get_or_create_owned(&UpstreamOnlyLabels {
                upstream: Arc::new(upstream.to_owned()),
            })
    }

    /// Counts retries not made because upstream `upstream`'s retry budget was spent.
    pub fn retry_overflows(&self, upstream: &str) -> Counter {
        self.retry_overflows
            .get_or_create_owned(&UpstreamOnlyLabels {
                upstream: Arc::new(upstream.to_owned()),
            })
    }

    /// Counts client connections refused for `reason` (`"listener"` or `"client"`).
    pub fn connections_refused(&self, reason: &'static str) -> Counter {
        self.connections_refused
            .get_or_create_owned(&ReasonLabels { reason })
    }

    /// Counts requests waiting for a connection to upstream `upstream` (`max_pending`).
    pub fn upstream_pending(&self, upstream: &str) -> Gauge {
        self.upstream_pending
            .get_or_create_owned(&UpstreamOnlyLabels {
                upstream: Arc::new(upstream.to_owned()),
            })
    }

    /// The health check handles of one target of upstream `upstream` (created by its checker, so
    /// upstreams without `health_check` show none).
    pub fn target_checks(&self, upstream: &str, target: &str) -> CheckMetrics {
        let upstream = Arc::new(upstream.to_owned());
        let target = Arc::new(target.to_owned());
        let results = ["pass", "fail"].map(|result| {
            self.health_checks.get_or_create_owned(&CheckLabels {
                upstream: upstream.clone(),
                target: target.clone(),
                result,
            })
        });
        let transitions = ["healthy", "unhealthy"].map(|to| {
            self.health_transitions
                .get_or_create_owned(&TransitionLabels {
                    upstream: upstream.clone(),
                    target: target.clone(),
                    to,
                })
        });
        let healthy = self
            .target_healthy
            .get_or_create_owned(&TargetLabels { upstream, target });
        CheckMetrics {
            results,
            transitions,
            healthy,
        }
    }

    /// The handles of one target of upstream `upstream`.
    pub fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let upstream = Arc::new(upstream.to_owned());
        let target = Arc::new(target.to_owned());
        let outcomes = UpstreamOutcome::ALL.map(|outcome| {
            self.upstream_requests.get_or_create_owned(&UpstreamLabels {
                upstream: upstream.clone(),
                target: target.clone(),
                outcome: outcome.as_str(),
            })
        });
        let labels = TargetLabels { upstream, target };
        let duration = self.upstream_duration.get_or_create_owned(&labels);
        let connections = self.upstream_connections.get_or_create_owned(&labels);
        let tunnels = self.tunnels.get_or_create_owned(&labels);
        let tunnels_open = self.tunnels_open.get_or_create_owned(&labels);
        let retries = self.upstream_retries.get_or_create_owned(&labels);
        let ejections = self.upstream_ejections.get_or_create_owned(&labels);
        TargetMetrics {
            outcomes,
            duration,
            connections,
            tunnels,
            tunnels_open,
            retries,
            ejections,
        }
    }

    /// The handles of plugin `plugin` on route `route`.
    pub fn plugin(&self, route: &str, plugin: &str) -> PluginMetrics {
        let route = Arc::new(route.to_owned());
        let plugin = Arc::new(plugin.to_owned());
        let duration = ["request", "response"].map(|phase| {
            self.plugin_duration
                .get_or_create_owned(&PluginPhaseLabels {
                    route: route.clone(),
                    plugin: plugin.clone(),
                    phase,
                })
        });
        let failures = FAILURE_KINDS.map(|kind| {
            self.plugin_failures.get_or_create_owned(&PluginKindLabels {
                route: route.clone(),
                plugin: plugin.clone(),
                kind,
            })
        });
        PluginMetrics {
            duration,
            failures,
            counters: self.plugin_counters.clone(),
            names: Mutex::new(HashSet::new()),
            route,
            plugin,
        }
    }

    /// Counts a configuration reload.
    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a look at the config file after the watcher saw it written: whether its content
    /// (or that of a file it names) had changed.
    pub fn file_check(&self, changed: bool) {
        let result = if changed { "changed" } else { "unchanged" };
        self.file_checks
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Reloads counted so far with this result.
    pub fn reloads(&self, success: bool) -> u64 {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).get()
    }

    /// The open client connections gauge.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// Counts client connections closed by `gateway.send_timeout`.
    pub fn send_timeouts(&self) -> &Counter {
        &self.send_timeouts
    }

    pub(crate) fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }
}

/// Kinds of plugin failure, in the order of [`PluginMetrics::failed`]'s index.
pub const FAILURE_KINDS: [&str; 5] = ["error", "trap", "timeout", "oom", "unavailable"];

/// The metrics of one route.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    route: Arc<String>,
    requests: Family<RequestLabels, Counter>,
    /// The series of the commonest (method, status) pairs, found in `requests` once: a
    /// family lookup hashes the labels and takes a lock, per request.
    hot: Arc<[OnceLock<Counter>]>,
    duration: Histogram,
}

impl RouteMetrics {
    /// Counts a finished request and its duration.
    pub fn finished(&self, method: &Method, status: u16, elapsed: Duration) {
        let method = method_index(method);
        let series = || {
            self.requests.get_or_create_owned(&RequestLabels {
                route: self.route.clone(),
                method: METHODS[method],
                status,
            })
        };
        match HOT_STATUSES.iter().position(|&hot| hot == status) {
            Some(slot) => self.hot[method * HOT_STATUSES.len() + slot]
                .get_or_init(series)
                .inc(),
            None => series().inc(),
        };
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.route
    }
}

/// The `method` label's values: the standard methods, and `OTHER` for anything else, so
/// clients cannot create series at will.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

/// Statuses whose series each route keeps at hand (see [`RouteMetrics`]).
const HOT_STATUSES: [u16; 16] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504,
];

/// `method`'s place in [`METHODS`].
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// How a request to an upstream target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// The target answered (any status).
    Response,
    /// No connection could be made.
    ConnectError,
    /// No answer within the upstream's `timeout`.
    Timeout,
    /// The connection failed after it was made.
    Error,
}

impl UpstreamOutcome {
    const ALL: [Self; 4] = [
        Self::Response,
        Self::ConnectError,
        Self::Timeout,
        Self::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Keeps an upgraded connection counted as open; see [`TargetMetrics::tunnel`].
#[derive(Debug)]
pub struct TunnelGuard(Gauge);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metrics of one upstream target.
#[derive(Debug, Clone)]
pub struct TargetMetrics {
    outcomes: [Counter; 4],
    duration: Histogram,
    connections: Counter,
    tunnels: Counter,
    tunnels_open: Gauge,
    retries: Counter,
    ejections: Counter,
}

impl TargetMetrics {
    /// Counts an ejection of the target by outlier detection.
    pub fn ejected(&self) {
        self.ejections.inc();
    }

    /// Counts a request this target failed that was sent again to another target.
    pub fn retried(&self) {
        self.retries.inc();
    }

    /// Counts a connection opened to the target.
    pub fn connected(&self) {
        self.connections.inc();
    }

    /// Counts an upgraded connection tunnelled to the target, open until the guard is dropped.
    pub fn tunnel(&self) -> TunnelGuard {
        self.tunnels.inc();
        self.tunnels_open.inc();
        TunnelGuard(self.tunnels_open.clone())
    }

    /// Counts a request's outcome.
    pub fn count(&self, outcome: UpstreamOutcome) {
        self.outcomes[outcome as usize].inc();
    }

    /// Counts a response and how long its head took to arrive.
    pub fn responded(&self, elapsed: Duration) {
        self.outcomes[UpstreamOutcome::Response as usize].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The active health check metrics of one upstream target.
#[derive(Debug, Clone)]
pub struct CheckMetrics {
    results: [Counter; 2],
    transitions: [Counter; 2],
    healthy: Gauge,
}

impl CheckMetrics {
    /// Counts a probe and its result.
    pub fn probed(&self, passed: bool) {
        self.results[usize::from(!passed)].inc();
    }

    /// Records the target's state: `changed` when it is a transition, counted as one.
    pub fn state(&self, healthy: bool, changed: bool) {
        self.healthy.set(i64::from(healthy));
        if changed {
            self.transitions[usize::from(!healthy)].inc();
        }
    }
}

/// The metrics of one plugin entry of one route.
pub struct PluginMetrics {
    route: Arc<String>,
    plugin: Arc<String>,
    duration: [Histogram; 2],
    failures: [Counter; 5],
    counters: Family<PluginCounterLabels, Counter>,
    /// Counter names this entry has created, capped at [`MAX_PLUGIN_COUNTERS`].
    names: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for PluginMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginMetrics")
            .field("route", &self.route)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

/// Why a plugin's counter was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterError {
    /// The name is not 1–64 characters of `a-z`, `0-9` and `_`.
    InvalidName,
    /// The entry already has [`MAX_PLUGIN_COUNTERS`] names.
    TooMany,
}

impl PluginMetrics {
    /// A detached set of handles, registered nowhere (for plugins loaded outside a gateway).
    pub fn detached(route: &str, plugin: &str) -> Self {
        Metrics::new().plugin(route, plugin)
    }

    /// Records a hook's duration; `response` selects the phase.
    pub fn observe(&self, response: bool, elapsed: Duration) {
        self.duration[usize::from(response)].observe(elapsed.as_secs_f64());
    }

    /// Counts a failure; `kind` indexes [`FAILURE_KINDS`].
    pub fn failed(&self, kind: usize) {
        if let Some(c) = self.failures.get(kind) {
            c.inc();
        }
    }

    /// Adds `delta` to the plugin's own counter `name`.
    pub fn counter_add(&self, name: &str, delta: u64) -> Result<(), CounterError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(CounterError::InvalidName);
        }
        {
            let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            if !names.contains(name) {
                if names.len() >= MAX_PLUGIN_COUNTERS {
                    return Err(CounterError::TooMany);
                }
                names.insert(name.to_owned());
            }
        }
        self.counters
            .get_or_create(&PluginCounterLabels {
                route: self.route.clone(),
                plugin: self.plugin.clone(),
                name: name.to_owned(),
            })
            .inc_by(delta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_family_with_its_labels() {
        let m = Metrics::new();
        m.route("users")
            .finished(&Method::GET, 200, Duration::from_millis(3));
        m.route("users")
            .finished(&Method::from_bytes(b"BREW").unwrap(), 404, Duration::ZERO);
        let target = m.target("users", "127.0.0.1:9001");
        target.count(UpstreamOutcome::ConnectError);
        target.responded(Duration::from_millis(4));
        let p = m.plugin("users", "key-auth");
        p.observe(false, Duration::from_micros(20));
        p.failed(2);
        p.counter_add("rejected", 3).unwrap();
        m.reload(false);
        m.connections().inc();
        let text = m.encode();
        for needle in [
            r#"wasmgate_requests_total{route="users",method="GET",status="200"} 1"#,
            r#"wasmgate_requests_total{route="users",method="OTHER",status="404"} 1"#,
            r#"wasmgate_request_duration_seconds_count{route="users"} 2"#,
            r#"wasmgate_upstream_requests_total{upstream="users",target="127.0.0.1:9001",outcome="connect_error"} 1"#,
            r#"wasmgate_upstream_duration_seconds_bucket{le="0.005",upstream="users",target="127.0.0.1:9001"} 1"#,
            r#"wasmgate_plugin_duration_seconds_count{route="users",plugin="key-auth",phase="request"} 1"#,
            r#"wasmgate_plugin_failures_total{route="users",plugin="key-auth",kind="timeout"} 1"#,
            r#"wasmgate_plugin_counter_total{route="users",plugin="key-auth",name="rejected"} 3"#,
            r#"wasmgate_config_reloads_total{result="failure"} 1"#,
            r#"wasmgate_config_reloads_total{result="success"} 0"#,
            "wasmgate_connections_active 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn kept_series_count_into_the_same_family_as_the_rest() {
        let m = Metrics::new();
        let before = m.route("r");
        let clone = before.clone();
        for route in [&before, &clone, &m.route("r")] {
            route.finished(&Method::GET, 200, Duration::ZERO);
            route.finished(&Method::POST, 418, Duration::ZERO);
            route.finished(&Method::from_bytes(b"BREW").unwrap(), 503, Duration::ZERO);
        }
        let text = m.encode();
        for needle in [
            r#"wasmgate_requests_total{route="r",method="GET",status="200"} 3"#,
            r#"wasmgate_requests_total{route="r",method="POST",status="418"} 3"#,
            r#"wasmgate_requests_total{route="r",method="OTHER",status="503"} 3"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn plugin_counters_are_named_and_bounded() {
        let p = PluginMetrics::detached("r", "p");
        assert_eq!(p.counter_add("Bad Name", 1), Err(CounterError::InvalidName));
        assert_eq!(p.counter_add("", 1), Err(CounterError::InvalidName));
        for i in 0..MAX_PLUGIN_COUNTERS {
            p.counter_add(&format!("c{i}"), 1).unwrap();
        }
        assert_eq!(p.counter_add("one_more", 1), Err(CounterError::TooMany));
        assert_eq!(p.counter_add("c0", 1), Ok(()), "existing names still count");
    }
}

/// A traffic split's decisions for one upstream.
#[derive(Debug, Clone)]
pub struct SplitMetrics {
    /// Requests a header or cookie pinned to it.
    pub pinned: Counter,
    /// Requests the weights gave it.
    pub weighted: Counter,
}

/// A route mirror's copies.
#[derive(Debug, Clone)]
pub struct MirrorMetrics {
    /// Copies the mirror answered (whatever the status).
    pub sent: Counter,
    /// Copies that got no answer (connection failure, timeout).
    pub failed: Counter,
    /// Copies not made: `max_in_flight` reached, or a body over `max_body`.
    pub dropped: Counter,
}

/// A route cache's counts.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    /// Requests answered from the cache.
    pub hit: Counter,
    /// Requests looked up and sent upstream.
    pub miss: Counter,
    /// Requests the cache does not apply to.
    pub bypass: Counter,
    /// Misses on a stale entry that the upstream confirmed with a `304` (counted in `miss` too).
    pub revalidated: Counter,
    /// Entries evicted for room.
    pub evictions: Counter,
    /// Bytes held now.
    pub bytes: Gauge,
    /// Entries held now.
    pub entries: Gauge,
}
