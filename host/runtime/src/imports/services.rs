//! The services a plugin imports besides the messages: the per-request context (reads of keys
//! it did not declare), logging into the gateway's log, its own Prometheus counters, and the
//! shared state (windowed counters, rate limits, a KV store) behind
//! [`SharedState`](crate::SharedState), whose calls may await Redis.

use std::time::Duration;

use wasmgate_state::{Accuracy, Algorithm, Quota, Refused, Verdict};
use wasmgate_telemetry::{CounterError, MAX_PLUGIN_COUNTERS};

use super::HostState;
use crate::bindings::wasmgate::plugin::{context, log, metrics, shared_state};

impl context::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.exchange.context.get(&key).map(str::to_owned))
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

impl HostState {
    /// How long a shared-state call may wait for the network: what is left of the running
    /// hook's `timeout` (the epoch only interrupts guest code, not a host call awaiting Redis),
    /// less a fifth of it and at least two ticks, kept for the plugin to finish with the answer.
    /// Without that reserve a call that waited it all out returned to a guest already past its
    /// deadline: a timeout trap, whatever `on_unavailable` said.
    fn budget(&self) -> Duration {
        let now = self.epoch.load(std::sync::atomic::Ordering::Relaxed);
        let used = now.saturating_sub(self.ticks.start);
        let left = self.ticks.limit.saturating_sub(used);
        let wait = left.saturating_sub((left / 5).max(2)).max(1);
        crate::engine::EPOCH_TICK.saturating_mul(u32::try_from(wait).unwrap_or(u32::MAX))
    }

    /// The answer of a shared-state call, or `neutral` when it was refused (`on_unavailable =
    /// "deny"`): the guest goes on, and the hook's verdict becomes a 503 once it returns.
    fn answered<T>(&mut self, result: Result<T, Refused>, neutral: T) -> T {
        result.unwrap_or_else(|refused| {
            self.exchange.state_refused.get_or_insert(refused.0);
            neutral
        })
    }
}

fn counter(c: wasmgate_state::Counter) -> shared_state::Counter {
    shared_state::Counter {
        value: c.value,
        reset_ms: u64::try_from(c.reset.as_millis()).unwrap_or(u64::MAX),
    }
}

const NO_COUNTER: shared_state::Counter = shared_state::Counter {
    value: 0,
    reset_ms: 0,
};

impl shared_state::Host for HostState {
    async fn counter_add(
        &mut self,
        key: String,
        delta: i64,
        window_ms: u64,
    ) -> wasmtime::Result<shared_state::Counter> {
        let result = self
            .shared
            .counter_add(
                &self.namespaced(&key),
                delta,
                Duration::from_millis(window_ms),
                self.budget(),
            )
            .await
            .map(counter);
        Ok(self.answered(result, NO_COUNTER))
    }

    async fn counter_get(
        &mut self,
        key: String,
        window_ms: u64,
    ) -> wasmtime::Result<shared_state::Counter> {
        let result = self
            .shared
            .counter_get(
                &self.namespaced(&key),
                Duration::from_millis(window_ms),
                self.budget(),
            )
            .await
            .map(counter);
        Ok(self.answered(result, NO_COUNTER))
    }

    async fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        let result = self
            .shared
            .kv_get(&self.namespaced(&key), self.budget())
            .await;
        Ok(self.answered(result, None))
    }

    async fn kv_set(&mut self, key: String, value: String, ttl_ms: u64) -> wasmtime::Result<()> {
        let result = self
            .shared
            .kv_set(
                &self.namespaced(&key),
                value,
                Duration::from_millis(ttl_ms),
                self.budget(),
            )
            .await;
        self.answered(result, ());
        Ok(())
    }

    async fn kv_compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        value: String,
        ttl_ms: u64,
    ) -> wasmtime::Result<bool> {
        let result = self
            .shared
            .kv_compare_and_swap(
                &self.namespaced(&key),
                expected.as_deref(),
                value,
                Duration::from_millis(ttl_ms),
                self.budget(),
            )
            .await;
        Ok(self.answered(result, false))
    }

    async fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        let result = self
            .shared
            .kv_delete(&self.namespaced(&key), self.budget())
            .await;
        self.answered(result, ());
        Ok(())
    }

    async fn limit(
        &mut self,
        key: String,
        cost: u64,
        quota: shared_state::Quota,
    ) -> wasmtime::Result<shared_state::Verdict> {
        let accuracy = if quota.sync_ms == 0 {
            Accuracy::Exact
        } else {
            Accuracy::Batched {
                sync_interval: Duration::from_millis(quota.sync_ms),
            }
        };
        let algorithm = match quota.algorithm {
            shared_state::Algorithm::FixedWindow => Algorithm::FixedWindow,
            shared_state::Algorithm::SlidingWindow => Algorithm::SlidingWindow,
            shared_state::Algorithm::TokenBucket => Algorithm::TokenBucket,
        };
        let quota = Quota {
            limit: quota.limit,
            window_ms: quota.window_ms.max(1),
            algorithm,
        };
        let result = self
            .shared
            .limit(
                &self.namespaced(&key),
                quota,
                cost.max(1),
                accuracy,
                self.budget(),
            )
            .await;
        let refused = Verdict {
            allowed: false,
            remaining: 0,
            reset_ms: 0,
            retry_after_ms: 1000,
        };
        let v = self.answered(result, refused);
        Ok(shared_state::Verdict {
            allowed: v.allowed,
            remaining: v.remaining,
            reset_ms: v.reset_ms,
            retry_after_ms: v.retry_after_ms,
        })
    }
}
