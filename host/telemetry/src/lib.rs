//! What Wasmgate tells its operators: Prometheus metrics ([`Metrics`]) and the JSON access log
//! ([`AccessLog`]). Both outlive configuration reloads.

mod access_log;
mod metrics;
mod traces;

pub use access_log::{AccessEntry, AccessLog, millis};
pub use metrics::{
    CONTENT_TYPE, CacheMetrics, CheckMetrics, CounterError, FAILURE_KINDS, MAX_PLUGIN_COUNTERS,
    Metrics, MirrorMetrics, PluginMetrics, RouteMetrics, SplitMetrics, StateMetrics, TargetMetrics,
    TunnelGuard, UpstreamOutcome,
};
pub use traces::{Tracing, TracingError};
