//! Plugins' shared state: windowed counters, rate limits and a KV store with TTL and
//! compare-and-swap, behind the `shared-state` interface of `wit/`.
//!
//! With `[gateway.state] backend = "memory"` (the default) it lives in this process
//! ([`MemoryState`]). With `backend = "redis"` it lives in Redis, shared by every gateway that
//! uses the same server or cluster: each call is one round trip (a Lua script where a call reads
//! and writes), sent on a multiplexed connection that pipelines concurrent calls. A call awaits
//! the network and never blocks the worker; it waits at most the smaller of `timeout` and what
//! is left of the plugin's own `timeout`, and when Redis cannot answer in that time
//! `on_unavailable` answers instead.
//!
//! Rate limits (`limit`) are counted `exact` (each decision is Redis's) or `batched` (each
//! gateway decides alone while the limit is far, sends its counts every `sync_interval`, and asks
//! Redis once the limit is near): see [`Accuracy`].

mod batch;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmgate_config::{OnUnavailable, StateBackend};
use wasmgate_telemetry::StateMetrics;

pub use memory::MemoryState;
pub use wasmgate_counters::{Algorithm, Quota, Verdict};

use crate::batch::Batches;
use crate::redis::RedisStore;

/// A windowed counter's state after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The count in the current window.
    pub value: i64,
    /// Time left until the window ends (zero for counters that never reset).
    pub reset: Duration,
}

/// How a rate limit is counted when the state is shared by several gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accuracy {
    /// Every decision is made by the shared backend: the limit is never exceeded across
    /// gateways, for one round trip per request.
    Exact,
    /// Each gateway decides alone while the limit is far, and sends what it counted every
    /// `sync_interval`; once the remaining quota is within twice what the other gateways used in
    /// the last interval, it asks the backend for each request. The overshoot is bounded by how
    /// much faster the others' traffic grows from one interval to the next.
    Batched {
        /// How often counts are sent.
        sync_interval: Duration,
    },
}

/// A call refused because the shared backend could not answer and `on_unavailable = "deny"`:
/// the request gets a 503.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared state unavailable: {0}")]
pub struct Refused(pub String);

/// Plugins' shared state, as the gateway's configuration says: in memory or in Redis.
#[derive(Debug)]
pub struct SharedState {
    /// The `memory` backend, or the `local` fallback of `redis`.
    memory: MemoryState,
    redis: Option<Shared>,
}

/// The Redis side: the store, what to do without it, and the batched limits' local counts.
#[derive(Debug)]
struct Shared {
    store: Arc<RedisStore>,
    policy: OnUnavailable,
    batches: Arc<Batches>,
    metrics: StateMetrics,
}

/// The state of the shared backend, for `/ready` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `"memory"` or `"redis"`.
    pub backend: &'static str,
    /// Whether the last command (or the periodic PING) got an answer in time.
    pub available: bool,
    /// What calls do while it is unavailable: `"local"`, `"deny"` or `"allow"`.
    pub on_unavailable: &'static str,
}

impl Default for SharedState {
    fn default() -> Self {
        Self::memory()
    }
}

impl SharedState {
    /// State in this process only.
    pub fn memory() -> Self {
        Self {
            memory: MemoryState::new(),
            redis: None,
        }
    }

    /// The backend `config` names. With Redis, connections are opened in the background (and
    /// again whenever one breaks): the gateway starts while Redis is down, and `on_unavailable`
    /// answers until it is up. Must be called inside a tokio runtime that outlives the state
    /// (the connections' tasks run on it).
    pub fn from_config(config: &StateBackend, metrics: StateMetrics) -> Result<Self, StateError> {
        let StateBackend::Redis(redis) = config else {
            metrics.set_available(true);
            return Ok(Self::memory());
        };
        let store = Arc::new(RedisStore::connect(redis, metrics.clone())?);
        store.watch_health();
        let batches = Batches::new(store.clone(), metrics.clone());
        Ok(Self {
            memory: MemoryState::new(),
            redis: Some(Shared {
                store,
                policy: redis.on_unavailable,
                batches,
                metrics,
            }),
        })
    }

    /// The shared backend's state; `None` with the memory backend.
    pub fn health(&self) -> Health {
        match &self.redis {
            None => Health {
                backend: "memory",
                available: true,
                on_unavailable: "local",
            },
            Some(shared) => Health {
                backend: "redis",
                available: shared.store.available(),
                on_unavailable: policy_name(shared.policy),
            },
        }
    }

    /// Atomically adds `delta` to `key` in fixed windows of `window` (zero: never resets).
    pub async fn counter_add(
        &self,
        key: &str,
        delta: i64,
        window: Duration,
        budget: Duration,
    ) -> Result<Counter, Refused> {
        let Some(shared) = &self.redis else {
            return Ok(self.memory.counter_add(key, delta, window));
        };
        let now = now_ms();
        match shared
            .store
            .counter_add(key, delta, window, now, budget)
            .await
        {
            Ok(c) => Ok(c),
            Err(e) => shared.fall_back(
                e,
                || self.memory.counter_add(key, delta, window),
                || Counter {
                    value: delta,
                    reset: Duration::from_millis(
                        wasmgate_counters::Window::containing(now, millis(window)).remaining_ms,
                    ),
                },
            ),
        }
    }

    /// Reads `key` in the current window of `window` without changing it.
    pub async fn counter_get(
        &self,
        key: &str,
        window: Duration,
        budget: Duration,
    ) -> Result<Counter, Refused> {
        let Some(shared) = &self.redis else {
            return Ok(self.memory.counter_get(key, window));
        };
        let now = now_ms();
        match shared.store.counter_get(key, window, now, budget).await {
            Ok(c) => Ok(c),
            Err(e) => shared.fall_back(
                e,
                || self.memory.counter_get(key, window),
                || Counter {
                    value: 0,
                    reset: Duration::from_millis(
                        wasmgate_counters::Window::containing(now, millis(window)).remaining_ms,
                    ),
                },
            ),
        }
    }

    /// The value under `key` unless absent or expired.
    pub async fn kv_get(&self, key: &str, budget: Duration) -> Result<Option<String>, Refused> {
        let Some(shared) = &self.redis else {
            return Ok(self.memory.kv_get(key));
        };
        match shared.store.kv_get(key, budget).await {
            Ok(v) => Ok(v),
            Err(e) => shared.fall_back(e, || self.memory.kv_get(key), || None),
        }
    }

    /// Stores `value` under `key`, expiring after `ttl` (zero: never).
    pub async fn kv_set(
        &self,
        key: &str,
        value: String,
        ttl: Duration,
        budget: Duration,
    ) -> Result<(), Refused> {
        let Some(shared) = &self.redis else {
            self.memory.kv_set(key, value, ttl);
            return Ok(());
        };
        match shared.store.kv_set(key, &value, ttl, budget).await {
            Ok(()) => Ok(()),
            Err(e) => shared.fall_back(e, || self.memory.kv_set(key, value, ttl), || ()),
        }
    }

    /// Stores `value` if the current value is `expected` (`None`: absent), atomically; whether
    /// it stored.
    pub async fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        value: String,
        ttl: Duration,
        budget: Duration,
    ) -> Result<bool, Refused> {
        let Some(shared) = &self.redis else {
            return Ok(self.memory.kv_compare_and_swap(key, expected, value, ttl));
        };
        match shared
            .store
            .kv_compare_and_swap(key, expected, &value, ttl, budget)
            .await
        {
            Ok(stored) => Ok(stored),
            Err(e) => shared.fall_back(
                e,
                || self.memory.kv_compare_and_swap(key, expected, value, ttl),
                || false,
            ),
        }
    }

    /// Removes `key`.
    pub async fn kv_delete(&self, key: &str, budget: Duration) -> Result<(), Refused> {
        let Some(shared) = &self.redis else {
            self.memory.kv_delete(key);
            return Ok(());
        };
        match shared.store.kv_delete(key, budget).await {
            Ok(()) => Ok(()),
            Err(e) => shared.fall_back(e, || self.memory.kv_delete(key), || ()),
        }
    }

    /// Decides a request costing `cost` units against `quota` for `key`, and counts it.
    pub async fn limit(
        &self,
        key: &str,
        quota: Quota,
        cost: u64,
        accuracy: Accuracy,
        budget: Duration,
    ) -> Result<Verdict, Refused> {
        self.limit_at(key, quota, cost, accuracy, now_ms(), budget)
            .await
    }

    /// An exact [`SharedState::limit`] decided as if at `now_ms` (ms since the epoch), for tests
    /// that hold the backends' arithmetic side by side (Redis's scripts against the memory
    /// backend's Rust).
    #[doc(hidden)]
    pub async fn limit_exact_at(
        &self,
        key: &str,
        quota: Quota,
        cost: u64,
        now_ms: u64,
    ) -> Result<Verdict, Refused> {
        self.limit_at(
            key,
            quota,
            cost,
            Accuracy::Exact,
            now_ms,
            Duration::from_secs(5),
        )
        .await
    }

    async fn limit_at(
        &self,
        key: &str,
        quota: Quota,
        cost: u64,
        accuracy: Accuracy,
        now: u64,
        budget: Duration,
    ) -> Result<Verdict, Refused> {
        let key = &limit_key(key, quota);
        let Some(shared) = &self.redis else {
            return Ok(self.memory.limit_at(key, quota, cost, now));
        };
        let outcome = match accuracy {
            Accuracy::Exact => shared
                .store
                .limit(key, quota, 0, cost, now, budget)
                .await
                .map(|state| wasmgate_counters::decide(Some(state), now, quota, cost).1),
            Accuracy::Batched { sync_interval } => {
                shared
                    .batches
                    .limit(key, quota, cost, sync_interval, now, budget)
                    .await
            }
        };
        match outcome {
            Ok(verdict) => Ok(verdict),
            Err(e) => shared.fall_back(
                e,
                || self.memory.limit_at(key, quota, cost, now),
                || Verdict {
                    allowed: true,
                    remaining: quota.limit.saturating_sub(cost),
                    reset_ms: 0,
                    retry_after_ms: 0,
                },
            ),
        }
    }
}

impl Shared {
    /// What `on_unavailable` answers for a call Redis could not: `local` asks this process's
    /// memory, `allow` gives the neutral answer, `deny` refuses.
    fn fall_back<T>(
        &self,
        error: Unavailable,
        local: impl FnOnce() -> T,
        neutral: impl FnOnce() -> T,
    ) -> Result<T, Refused> {
        self.metrics.fell_back(policy_name(self.policy));
        tracing::debug!(
            policy = policy_name(self.policy),
            "redis unavailable: {error}"
        );
        match self.policy {
            OnUnavailable::Local => Ok(local()),
            OnUnavailable::Allow => Ok(neutral()),
            OnUnavailable::Deny => Err(Refused(error.to_string())),
        }
    }
}

/// Where a limit is kept: the plugin's key qualified by the algorithm and window (and, for a
/// token bucket, whose state is counted in slots of `window / limit`, the limit), so that a
/// reload changing a limit's kind starts a new count instead of misreading the old one.
/// `<plugin>\0<key>` becomes `<plugin>\0<algorithm>:<window>[:<limit>]:<key>`.
fn limit_key(key: &str, quota: Quota) -> String {
    let (plugin, key) = key.split_once('\0').unwrap_or(("", key));
    match quota.algorithm {
        Algorithm::FixedWindow => format!("{plugin}\0fixed:{}:{key}", quota.window_ms),
        Algorithm::SlidingWindow => format!("{plugin}\0sliding:{}:{key}", quota.window_ms),
        Algorithm::TokenBucket => {
            format!("{plugin}\0bucket:{}:{}:{key}", quota.window_ms, quota.limit)
        }
    }
}

fn policy_name(policy: OnUnavailable) -> &'static str {
    match policy {
        OnUnavailable::Local => "local",
        OnUnavailable::Deny => "deny",
        OnUnavailable::Allow => "allow",
    }
}

/// Why the shared backend could not serve a call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unavailable {
    /// No answer within the call's time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The command failed (connection refused or broken, an error reply).
    #[error("{0}")]
    Failed(String),
}

/// A state backend that cannot be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The Redis URL or cluster nodes were refused by the client.
    #[error("invalid redis configuration {url}: {reason}")]
    Redis {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
