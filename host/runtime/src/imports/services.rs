//! The services a plugin imports besides the messages: the per-request context (reads of keys
//! it did not declare), logging into the gateway's log, its own Prometheus counters, and the
//! shared state (windowed counters, a KV store) behind [`SharedState`](crate::SharedState).

use std::time::Duration;

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
