//! Native testing of plugins, without wasm and without a gateway (feature `testing`).
//!
//! Enable it for tests only:
//!
//! ```toml
//! [dev-dependencies]
//! wasmgate-sdk = { path = "...", features = ["testing"] }
//! ```
//!
//! Then build the plugin from JSON as the gateway does ([`instance`]), build requests and responses
//! in memory ([`Request::builder`](crate::Request::builder),
//! [`Response::builder`](crate::Response::builder)), pass a [`Context::new`](crate::Context::new),
//! call the hooks and inspect the results. [`state`](crate::state) and [`log`](crate::log) work in
//! memory: [`logs`] returns the captured lines, [`reset_state`] starts over and [`freeze_clock`] /
//! [`advance_clock`] make windowed counters and TTLs deterministic.
//!
//! All of it is per thread: `cargo test` runs each test on its own thread, so tests never see each
//! other's state or logs.

use std::time::{Duration, SystemTime};

use crate::log::Level;
use crate::{Action, ConfigError, Context, Error, Hooks, Plugin, Request, Response};

/// Builds the plugin from `config_json` exactly as the gateway's `init` does: JSON →
/// [`Plugin::Config`] (an error reads `invalid config: <serde's message>`) → [`Plugin::new`].
///
/// ```
/// use wasmgate_sdk::prelude::*;
///
/// #[derive(Deserialize)]
/// struct Config { limit: u32 }
///
/// struct Limiter { limit: u32 }
///
/// impl Plugin for Limiter {
///     type Config = Config;
///     fn new(config: Config) -> Result<Self, ConfigError> {
///         Ok(Self { limit: config.limit })
///     }
/// }
///
/// assert_eq!(wasmgate_sdk::testing::instance::<Limiter>(r#"{"limit": 5}"#).unwrap().limit, 5);
/// let err = wasmgate_sdk::testing::instance::<Limiter>(r#"{"limit": "five"}"#).err().unwrap();
/// assert!(err.message().starts_with("invalid config: limit: invalid type"), "{err}");
/// ```
pub fn instance<T: Plugin>(config_json: &str) -> Result<T, ConfigError> {
    crate::export::instantiate(config_json)
}

/// The request phase of `plugin`, as the gateway runs it: its fixed request edits
/// ([`Plugin::fixed_edits`]), then [`Plugin::on_request`] when [`Plugin::hooks`] asks for it
/// (`Continue` otherwise).
pub fn on_request<T: Plugin>(
    plugin: &T,
    req: &mut Request<'_>,
    ctx: &Context,
) -> Result<Action, Error> {
    req.apply_fixed(plugin.fixed_edits().request())?;
    if plugin.hooks().contains(Hooks::REQUEST) {
        plugin.on_request(req, ctx)
    } else {
        Ok(Action::Continue)
    }
}

/// The response phase of `plugin` for a request that went through [`on_request`], as the gateway
/// runs it: its fixed response edits, the response edits its request hook scheduled on `req`
/// ([`Request::set_response_header`] and the others), then [`Plugin::on_response`] when
/// [`Plugin::hooks`] asks for it (`Continue` otherwise).
pub fn on_response<T: Plugin>(
    plugin: &T,
    req: &Request<'_>,
    resp: &mut Response<'_>,
    ctx: &Context,
) -> Result<Action, Error> {
    resp.apply(plugin.fixed_edits().response())?;
    resp.apply(req.response_edits())?;
    if plugin.hooks().contains(Hooks::RESPONSE) {
        plugin.on_response(resp, ctx)
    } else {
        Ok(Action::Continue)
    }
}

/// The log lines written so far on this thread, oldest first.
pub fn logs() -> Vec<(Level, String)> {
    crate::mock::logs()
}

/// What [`metrics::counter_add`](crate::metrics::counter_add) added to counter `name` on this
/// thread so far (0 when never counted).
pub fn counter(name: &str) -> u64 {
    crate::mock::metric(name)
}

/// Forgets the log lines written so far on this thread.
pub fn clear_logs() {
    crate::mock::clear_logs();
}

/// Starts over: clears this thread's in-memory shared state (counters and KV), its captured logs
/// and metrics counters, and unfreezes its clock.
pub fn reset_state() {
    crate::mock::reset();
}

/// Freezes this thread's clock (used by [`state`](crate::state) windows and TTLs) at `at`.
pub fn freeze_clock(at: SystemTime) {
    crate::mock::freeze_clock(at);
}

/// Moves this thread's clock forward by `by`, freezing it first at the current time if needed.
pub fn advance_clock(by: Duration) {
    crate::mock::advance_clock(by);
}

/// Lets this thread's clock follow the system clock again.
pub fn unfreeze_clock() {
    crate::mock::unfreeze_clock();
}
