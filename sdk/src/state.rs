//! State that outlives a request, shared by every instance of the plugin across the gateway.
//!
//! Plugin instances are pooled and reused, and several run at once, so a plugin must not keep
//! cross-request state in its own memory: counters and values live in the gateway (in memory now;
//! with a shared backend, across gateways). Keys are private to the plugin: two plugins using the
//! same key see different values.
//!
//! ```
//! use std::time::Duration;
//! use wasmgate_sdk::state;
//!
//! // At most 100 requests per client and minute (fixed windows).
//! let counter = state::counter_add("203.0.113.7", 1, Duration::from_secs(60));
//! if counter.value > 100 {
//!     let retry_after = counter.reset.as_secs().max(1);
//!     # let _ = retry_after;
//! }
//! ```
//!
//! In native tests the state is in memory, per thread; `wasmgate_sdk::testing::reset_state`
//! clears it and `wasmgate_sdk::testing::freeze_clock` controls time (feature `testing`).

use std::time::Duration;

#[cfg(not(target_arch = "wasm32"))]
use crate::mock as backend;
#[cfg(target_arch = "wasm32")]
use host as backend;

/// A windowed counter's state after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The count in the current window, after the update.
    pub value: i64,
    /// Time until the current window ends and the count starts again from zero (zero for a
    /// counter that never resets).
    pub reset: Duration,
}

/// Whole milliseconds, rounded up (so a non-zero duration never becomes "0: never").
fn millis_ceil(duration: Duration) -> u64 {
    let ms = duration.as_millis() + u128::from(!duration.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Atomically adds `delta` (may be negative) to the counter `key` and returns its new state.
///
/// Windows are fixed, aligned on multiples of `window` since the UNIX epoch (so every gateway
/// agrees on them): the count starts again from zero when a window ends. `Duration::ZERO`: the
/// counter never resets. Durations are rounded up to whole milliseconds.
pub fn counter_add(key: &str, delta: i64, window: Duration) -> Counter {
    let window_ms = millis_ceil(window);
    backend::counter_add(key, delta, window_ms)
}

/// Reads the counter `key` in the current window of `window`, without changing it (a count of
/// zero when absent or when its window has ended).
pub fn counter_get(key: &str, window: Duration) -> Counter {
    let window_ms = millis_ceil(window);
    backend::counter_get(key, window_ms)
}

/// The value stored under `key`, unless absent or expired.
pub fn kv_get(key: &str) -> Option<String> {
    backend::kv_get(key)
}

/// Stores `value` under `key`. It expires after `ttl` (rounded up to whole milliseconds), never
/// with `None`.
pub fn kv_set(key: &str, value: &str, ttl: Option<Duration>) {
    let ttl_ms = ttl.map_or(0, millis_ceil);
    backend::kv_set(key, value, ttl_ms)
}

/// Stores `value` under `key` only if the current value equals `expected` (`None`: only if absent
/// or expired), atomically. Returns whether it was stored. `ttl` as in [`kv_set`].
///
/// The building block for read-modify-write: read with [`kv_get`], compute, then swap; retry when
/// it returns `false`.
pub fn kv_compare_and_swap(
    key: &str,
    expected: Option<&str>,
    value: &str,
    ttl: Option<Duration>,
) -> bool {
    let ttl_ms = ttl.map_or(0, millis_ceil);
    backend::kv_compare_and_swap(key, expected, value, ttl_ms)
}

/// Removes `key`; no effect when absent.
pub fn kv_delete(key: &str) {
    backend::kv_delete(key)
}

/// How [`limit`] counts: fixed windows, a sliding window or a token bucket.
pub use wasmgate_counters::Algorithm;

/// How a limit is counted when several gateways share the state (`[gateway.state] backend =
/// "redis"`); no difference with the memory backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accuracy {
    /// Every decision is the shared backend's: the limit holds exactly across gateways, for one
    /// round trip per call.
    Exact,
    /// Each gateway decides alone while the limit is far and sends its counts every
    /// `sync_interval` (rounded up to whole milliseconds); near the limit it asks the backend.
    /// Almost no latency, for a small overshoot when traffic surges.
    Batched {
        /// How often counts are sent.
        sync_interval: Duration,
    },
}

/// A rate limit: `limit` units per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Units allowed per window; at least 1.
    pub limit: u64,
    /// The window (rounded up to whole milliseconds); at least 1 ms.
    pub window: Duration,
    /// How requests are counted.
    pub algorithm: Algorithm,
    /// How exactly, across gateways.
    pub accuracy: Accuracy,
}

/// The decision [`limit`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request is within the limit.
    pub allowed: bool,
    /// Units still allowed right after this decision.
    pub remaining: u64,
    /// Time until the limit is entirely available again.
    pub reset: Duration,
    /// When refused: how long until the same request would be allowed; zero when allowed.
    pub retry_after: Duration,
}

/// Decides a request costing `cost` units (at least 1) against `quota` for `key`, and counts it,
/// atomically across the plugin's instances (and gateways, with a shared backend).
///
/// Keys count separately per algorithm and window, so two quotas on one key with different
/// windows are two limits.
///
/// ```
/// use std::time::Duration;
/// use wasmgate_sdk::state::{self, Accuracy, Algorithm, Quota};
///
/// let quota = Quota {
///     limit: 100,
///     window: Duration::from_secs(60),
///     algorithm: Algorithm::SlidingWindow,
///     accuracy: Accuracy::Exact,
/// };
/// let verdict = state::limit("203.0.113.7", 1, quota);
/// assert!(verdict.allowed);
/// assert_eq!(verdict.remaining, 99);
/// ```
pub fn limit(key: &str, cost: u64, quota: Quota) -> Verdict {
    backend::limit(key, cost.max(1), quota)
}

/// The gateway's implementation, through the component's imports.
#[cfg(target_arch = "wasm32")]
mod host {
    use std::time::Duration;

    pub(super) use wit::{kv_compare_and_swap, kv_delete, kv_get, kv_set};

    use super::Counter;
    use crate::__bindings::wasmgate::plugin::shared_state as wit;

    fn from_wit(counter: wit::Counter) -> Counter {
        Counter {
            value: counter.value,
            reset: Duration::from_millis(counter.reset_ms),
        }
    }

    pub(super) fn counter_add(key: &str, delta: i64, window_ms: u64) -> Counter {
        from_wit(wit::counter_add(key, delta, window_ms))
    }

    pub(super) fn counter_get(key: &str, window_ms: u64) -> Counter {
        from_wit(wit::counter_get(key, window_ms))
    }

    pub(super) fn limit(key: &str, cost: u64, quota: super::Quota) -> super::Verdict {
        let algorithm = match quota.algorithm {
            super::Algorithm::FixedWindow => wit::Algorithm::FixedWindow,
            super::Algorithm::SlidingWindow => wit::Algorithm::SlidingWindow,
            super::Algorithm::TokenBucket => wit::Algorithm::TokenBucket,
        };
        let sync_ms = match quota.accuracy {
            super::Accuracy::Exact => 0,
            super::Accuracy::Batched { sync_interval } => super::millis_ceil(sync_interval).max(1),
        };
        let v = wit::limit(
            key,
            cost,
            wit::Quota {
                limit: quota.limit,
                window_ms: super::millis_ceil(quota.window).max(1),
                algorithm,
                sync_ms,
            },
        );
        super::Verdict {
            allowed: v.allowed,
            remaining: v.remaining,
            reset: Duration::from_millis(v.reset_ms),
            retry_after: Duration::from_millis(v.retry_after_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_milliseconds() {
        assert_eq!(millis_ceil(Duration::ZERO), 0);
        assert_eq!(millis_ceil(Duration::from_micros(1)), 1);
        assert_eq!(millis_ceil(Duration::from_millis(1500)), 1500);
        assert_eq!(millis_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(millis_ceil(Duration::MAX), u64::MAX);
    }
}
