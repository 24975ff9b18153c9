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
const POLICY_HEADER: &str = "ratelimit-policy";

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
    /// How requests are counted: `"fixed_window"` (windows aligned on the clock; every request
    /// counts, refused ones too), `"sliding_window"` (the previous window weighted by how much of
    /// it the last `window` still covers: no double burst across a boundary) or `"token_bucket"`
    /// (a bucket of `limit` refilling evenly over `window`: bursts up to `limit`, then a steady
    /// rate). Default `"fixed_window"`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// With `[gateway.state] backend = "redis"`: `"exact"` (every request decided by Redis; the
    /// limit holds exactly across gateways) or `"batched"` (each gateway decides alone while the
    /// limit is far and syncs every `sync_interval`; a small overshoot when traffic surges, for
    /// almost no latency). No effect with the memory backend. Default `"exact"`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// How often a `batched` limit syncs, at least 10ms. Default `"100ms"`.
    #[serde(default)]
    pub sync_interval: Option<Duration>,
}

fn default_algorithm() -> String {
    "fixed_window".to_owned()
}

fn default_mode() -> String {
    "exact".to_owned()
}

fn default_window() -> Duration {
    Duration::new(std::time::Duration::from_secs(60))
}

/// The largest limit per window: the Redis scripts count in doubles, exact below 2^53, and a
/// token bucket multiplies the limit by a window's milliseconds.
const MAX_LIMIT: u64 = 10_000_000;

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
    quota: state::Quota,
    /// `RateLimit-Policy` of the default limit, e.g. `100;w=60`.
    policy: String,
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
        let quota = state::Quota {
            limit,
            ..self.quota
        };
        let verdict = state::limit(&identity.counter_key(&self.key_prefix), 1, quota);
        let decision = Decision::new(limit, verdict);
        let policy = self.policy_for(limit);
        if !decision.allowed {
            // This plugin's own response turn does not run after its answer: the answer carries
            // the headers itself.
            return Ok(self.refusal(&decision, &policy));
        }
        req.set_response_header(POLICY_HEADER, &policy)?;
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
        let algorithm = match config.algorithm.as_str() {
            "fixed_window" => state::Algorithm::FixedWindow,
            "sliding_window" => state::Algorithm::SlidingWindow,
            "token_bucket" => state::Algorithm::TokenBucket,
            other => {
                return Err(ConfigError::new(format!(
                    r#"algorithm = {other:?}: expected "fixed_window", "sliding_window" or "token_bucket""#
                )));
            }
        };
        let accuracy = match (config.mode.as_str(), config.sync_interval) {
            ("exact", None) => state::Accuracy::Exact,
            ("exact", Some(_)) => {
                return Err(ConfigError::new(
                    r#"sync_interval: applies with mode = "batched" only"#,
                ));
            }
            ("batched", interval) => {
                let sync_interval =
                    interval.map_or(std::time::Duration::from_millis(100), |d| d.get());
                if sync_interval < std::time::Duration::from_millis(10) {
                    return Err(ConfigError::new(format!(
                        "sync_interval = {sync_interval:?}: must be at least 10ms"
                    )));
                }
                state::Accuracy::Batched { sync_interval }
            }
            (other, _) => {
                return Err(ConfigError::new(format!(
                    r#"mode = {other:?}: expected "exact" or "batched""#
                )));
            }
        };
        let too_high = std::iter::once(&config.limit)
            .chain(config.overrides.values())
            .find(|limit| **limit > MAX_LIMIT);
        if let Some(limit) = too_high {
            return Err(ConfigError::new(format!(
                "a limit of {limit}: at most {MAX_LIMIT} per window"
            )));
        }
        let window_ms = window.as_millis();
        let highest = std::iter::once(config.limit)
            .chain(config.overrides.values().copied())
            .max()
            .unwrap_or(config.limit);
        if u128::from(highest) * window_ms > 1 << 53 {
            return Err(ConfigError::new(format!(
                "a limit of {highest} per {window:?}: the limit times the window in milliseconds must stay below 2^53 (use a shorter window)"
            )));
        }
        if algorithm == state::Algorithm::TokenBucket && u128::from(highest) > 1000 * window_ms {
            return Err(ConfigError::new(format!(
                "a limit of {highest} per {window:?}: a token bucket refills at most 1000 per millisecond"
            )));
        }
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
            quota: state::Quota {
                limit: config.limit,
                window,
                algorithm,
                accuracy,
            },
            policy: quota::policy(config.limit, window),
        })
    }

    fn limit_for(&self, identity: &Identity) -> u64 {
        identity
            .name()
            .and_then(|name| self.overrides.get(name))
            .copied()
            .unwrap_or(self.limit)
    }

    /// `RateLimit-Policy` for `limit`: computed once for the default limit.
    fn policy_for(&self, limit: u64) -> std::borrow::Cow<'_, str> {
        if limit == self.limit {
            std::borrow::Cow::Borrowed(&self.policy)
        } else {
            std::borrow::Cow::Owned(quota::policy(limit, self.window))
        }
    }

    fn refusal(&self, decision: &Decision, policy: &str) -> Action {
        let limit = decision.limit.to_string();
        let reset = decision.reset_secs.to_string();
        let retry_after = decision.retry_after_secs.to_string();
        let message = format!(
            "rate limit of {} requests per {} s exceeded; retry in {} s",
            decision.limit,
            quota::secs_rounded_up(self.window),
            decision.retry_after_secs,
        );
        Action::reject(429, "rate_limited", message)
            .header("retry-after", retry_after.as_str())
            .header(POLICY_HEADER, policy)
            .header(LIMIT_HEADER, limit)
            .header(REMAINING_HEADER, "0")
            .header(RESET_HEADER, reset)
    }
}

wasmgate_sdk::export!(RateLimit);

#[cfg(test)]
mod tests;
