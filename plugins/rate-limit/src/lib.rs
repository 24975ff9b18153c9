//! `rate-limit`: a Wasmgate plugin that limits requests per client, consumer, header value or
//! route in fixed windows, with the IETF `RateLimit-*` headers on every response and `429` with
//! `Retry-After` over the limit.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "rate-limit"
//! config = { limit = 100, window = "1m", by = "consumer", overrides = { bob = 500 } }
//! ```
//!
//! Counters live in the gateway's shared state ([`wasmgate_sdk::state::counter_add`]), so the
//! limit holds across the plugin's pooled instances and concurrent requests. Windows are fixed
//! and aligned on the UNIX epoch (a `1m` window restarts at every full UTC minute).
//!
//! Per request: one call into the plugin, `on_request`, which receives what identifies the request
//! with the call (the context's `consumer` or the header, and the client address), makes one call
//! into the gateway (`counter_add`), and schedules the `RateLimit-*` response headers, which the
//! gateway adds on the way back without calling the plugin again. See the README for every key.

use std::collections::{BTreeMap, HashMap};

use wasmgate_sdk::config::Duration;
use wasmgate_sdk::prelude::*;
use wasmgate_sdk::state;

mod identity;
mod quota;

use identity::{By, Identity};
use quota::Decision;

const LIMIT_HEADER: &str = "ratelimit-limit";
const REMAINING_HEADER: &str = "ratelimit-remaining";
const RESET_HEADER: &str = "ratelimit-reset";

/// The route entry's `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests allowed per identity and window; at least 1. Required.
    pub limit: u64,
    /// The window length, at least 1 s (`"1m"`, `"1h"`, `"24h"`, or seconds). Default `"1m"`.
    #[serde(default = "default_window")]
    pub window: Duration,
    /// What requests are counted by: `"ip"`, `"consumer"` (the context's `consumer`, else the
    /// client IP), `"route"` (one counter for everyone) or `"header:NAME"` (the header's first
    /// value, else the client IP). Default `"consumer"`.
    #[serde(default = "default_by")]
    pub by: String,
    /// Limits for particular identities (consumer name, IP address or header value), each at
    /// least 1. Not allowed with `by = "route"`.
    #[serde(default)]
    pub overrides: BTreeMap<String, u64>,
    /// Entries with the same `namespace`, `window` and `by` share their counters, on any route;
    /// give entries different namespaces to count separately. Default `""`.
    #[serde(default)]
    pub namespace: String,
}

fn default_window() -> Duration {
    Duration::new(std::time::Duration::from_secs(60))
}

fn default_by() -> String {
    "consumer".to_owned()
}

/// The plugin, built once per instance from a [`Config`].
#[derive(Debug)]
pub struct RateLimit {
    by: By,
    limit: u64,
    overrides: HashMap<String, u64>,
    window: std::time::Duration,
    /// Start of every counter key: namespace and window, so that entries share counters only
    /// when both agree (the host namespaces keys per plugin name, not per route or entry; and
    /// one key must never be used with two windows, whose boundaries differ).
    key_prefix: String,
}

impl Plugin for RateLimit {
    /// Taken as JSON and read into [`Config`] in [`Plugin::new`], so that a type error names the
    /// key path (`overrides.bob: invalid type ...`).
    type Config = serde_json::Value;

    fn new(config: serde_json::Value) -> Result<Self, ConfigError> {
        Self::from_config(wasmgate_sdk::config::read(config)?)
    }

    /// What identifies a request comes with the call: the context's consumer or the header,
    /// and the client address to fall back on.
    fn inputs(&self) -> Inputs {
        let inputs = Inputs::new();
        match &self.by {
            By::Route => inputs,
            By::Ip => inputs.client_ip(),
            By::Consumer => inputs.context(identity::CONSUMER_KEY).client_ip(),
            By::Header(name) => inputs.request_header(name).client_ip(),
        }
    }

    /// One call per request: the counting, and the `RateLimit-*` headers scheduled for the
    /// response, which the gateway adds on the way back without calling the plugin again.
    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        let identity = self.by.identify(req, ctx);
        let limit = self.limit_for(&identity);
        let counter = state::counter_add(&identity.counter_key(&self.key_prefix), 1, self.window);
        let decision = Decision::new(limit, counter.value, counter.reset);
        if !decision.allowed {
            // This plugin's own response turn does not run after its answer: the answer carries
            // the headers itself.
            return Ok(self.refusal(&decision));
        }
        req.set_response_header(LIMIT_HEADER, &decision.limit.to_string())?;
        req.set_response_header(REMAINING_HEADER, &decision.remaining.to_string())?;
        req.set_response_header(RESET_HEADER, &decision.reset_secs.to_string())?;
        Ok(Action::Continue)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }
}

impl RateLimit {
    fn from_config(config: Config) -> Result<Self, ConfigError> {
        if config.limit == 0 {
            return Err(ConfigError::new(
                "limit = 0: must be at least 1 (to refuse every request, use another plugin)",
            ));
        }
        let window = config.window.get();
        if window < std::time::Duration::from_secs(1) {
            return Err(ConfigError::new(format!(
                "window = {window:?}: must be at least 1s (the RateLimit headers count whole seconds)"
            )));
        }
        let by = By::parse(&config.by)?;
        if by == By::Route && !config.overrides.is_empty() {
            return Err(ConfigError::new(
                r#"overrides: not allowed with by = "route" (there is one counter for everyone)"#,
            ));
        }
        if let Some((name, _)) = config.overrides.iter().find(|(_, limit)| **limit == 0) {
            return Err(ConfigError::new(format!(
                "overrides.{name} = 0: must be at least 1"
            )));
        }
        let window_ms = window.as_millis();
        let namespace = config.namespace;
        // Header values are counted per header: `by = "header:x-a"` and `"header:x-b"` entries
        // must not share a counter because two clients sent the same value in different headers.
        let header = match &by {
            By::Header(name) => format!("{name}\u{1f}"),
            _ => String::new(),
        };
        Ok(Self {
            key_prefix: format!("{namespace}\u{1f}{window_ms}\u{1f}{header}"),
            by,
            limit: config.limit,
            overrides: config.overrides.into_iter().collect(),
            window,
        })
    }

    fn limit_for(&self, identity: &Identity) -> u64 {
        identity
            .name()
            .and_then(|name| self.overrides.get(name))
            .copied()
            .unwrap_or(self.limit)
    }

    fn refusal(&self, decision: &Decision) -> Action {
        let limit = decision.limit.to_string();
        let reset = decision.reset_secs.to_string();
        let message = format!(
            "rate limit of {} requests per {} s exceeded; retry in {} s",
            decision.limit,
            quota::secs_rounded_up(self.window),
            decision.reset_secs,
        );
        Action::reject(429, "rate_limited", message)
            .header("retry-after", reset.as_str())
            .header(LIMIT_HEADER, limit)
            .header(REMAINING_HEADER, "0")
            .header(RESET_HEADER, reset)
    }
}

wasmgate_sdk::export!(RateLimit);

#[cfg(test)]
mod tests;
