//! Counters in the gateway's Prometheus metrics, for what only the plugin knows: keys rejected,
//! tokens expired, cache hits.
//!
//! Each counter appears on the admin listener's `/metrics` as
//! `wasmgate_plugin_counter_total{route="…", plugin="…", name="…"}`.
//!
//! ```
//! use wasmgate_sdk::metrics;
//!
//! metrics::counter_inc("rejected_expired");
//! metrics::counter_add("bytes_rewritten", 512);
//! ```
//!
//! Names are 1–64 characters of `a-z`, `0-9` and `_`; each plugin entry may keep up to 64 names.
//! The gateway ignores an invalid name or one more (and logs it once), so counting never fails a
//! request. In native tests the counts are kept per thread (see `wasmgate_sdk::testing::counter`,
//! feature `testing`).

#[cfg(target_arch = "wasm32")]
use crate::__bindings::wasmgate::plugin::metrics as wit;

/// Adds `delta` to the counter `name`.
pub fn counter_add(name: &str, delta: u64) {
    #[cfg(target_arch = "wasm32")]
    wit::counter_add(name, delta);
    #[cfg(not(target_arch = "wasm32"))]
    crate::mock::metric_add(name, delta);
}

/// Adds one to the counter `name`.
pub fn counter_inc(name: &str) {
    counter_add(name, 1);
}
