//! In-memory stand-ins for the gateway on native (non-wasm) targets: shared state, log capture and
//! a clock that tests can freeze.
//!
//! Everything is per thread, so tests running in parallel (one thread each under `cargo test`)
//! never see each other's state.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::log::Level;
use crate::state::Counter;

#[derive(Default)]
struct World {
    /// By `wasmgate_counters::storage_key`, as the gateway files them.
    counters: HashMap<String, wasmgate_counters::Stored>,
    /// By algorithm, window and key, as the gateway files them.
    limits: HashMap<(crate::state::Algorithm, u64, String), wasmgate_counters::LimitState>,
    kv: HashMap<String, KvSlot>,
    logs: Vec<(Level, String)>,
    metrics: HashMap<String, u64>,
    frozen_now_ms: Option<u64>,
}

struct KvSlot {
    value: String,
    /// Expiry in ms since the UNIX epoch; `None`: never.
    expires_at: Option<u64>,
}

thread_local! {
    static WORLD: RefCell<World> = RefCell::default();
}

fn with<R>(f: impl FnOnce(&mut World) -> R) -> R {
    WORLD.with(|world| f(&mut world.borrow_mut()))
}

fn now_ms(world: &World) -> u64 {
    world.frozen_now_ms.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// The gateway's counter semantics (`wasmgate_counters`), on this thread's store.
fn counter(world: &mut World, key: &str, delta: i64, window_ms: u64) -> Counter {
    let now = now_ms(world);
    let key = wasmgate_counters::storage_key(key, window_ms);
    let stored = world.counters.get(&key).copied();
    let (stored, counter) = wasmgate_counters::add(stored, now, window_ms, delta);
    if delta != 0 {
        world.counters.insert(key, stored);
    }
    Counter {
        value: counter.value,
        reset: Duration::from_millis(counter.reset_ms),
    }
}

pub(crate) fn counter_add(key: &str, delta: i64, window_ms: u64) -> Counter {
    with(|world| counter(world, key, delta, window_ms))
}

pub(crate) fn counter_get(key: &str, window_ms: u64) -> Counter {
    with(|world| counter(world, key, 0, window_ms))
}

/// The gateway's limit semantics (`wasmgate_counters::decide`), on this thread's store: what the
/// memory backend does, and what Redis does in exact mode.
pub(crate) fn limit(key: &str, cost: u64, quota: crate::state::Quota) -> crate::state::Verdict {
    with(|world| {
        let now = now_ms(world);
        let window_ms = u64::try_from(quota.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let q = wasmgate_counters::Quota {
            limit: quota.limit,
            window_ms,
            algorithm: quota.algorithm,
        };
        let slot = (quota.algorithm, window_ms, key.to_owned());
        let held = world.limits.get(&slot).copied();
        let (state, v) = wasmgate_counters::decide(held, now, q, cost);
        world.limits.insert(slot, state);
        crate::state::Verdict {
            allowed: v.allowed,
            remaining: v.remaining,
            reset: Duration::from_millis(v.reset_ms),
            retry_after: Duration::from_millis(v.retry_after_ms),
        }
    })
}

fn live<'w>(world: &'w World, key: &str) -> Option<&'w KvSlot> {
    let now = now_ms(world);
    world
        .kv
        .get(key)
        .filter(|slot| slot.expires_at.is_none_or(|at| now < at))
}

fn expiry(world: &World, ttl_ms: u64) -> Option<u64> {
    (ttl_ms != 0).then(|| now_ms(world).saturating_add(ttl_ms))
}

pub(crate) fn kv_get(key: &str) -> Option<String> {
    with(|world| live(world, key).map(|slot| slot.value.clone()))
}

pub(crate) fn kv_set(key: &str, value: &str, ttl_ms: u64) {
    with(|world| {
        let expires_at = expiry(world, ttl_ms);
        world.kv.insert(
            key.to_owned(),
            KvSlot {
                value: value.to_owned(),
                expires_at,
            },
        );
    });
}

pub(crate) fn kv_compare_and_swap(
    key: &str,
    expected: Option<&str>,
    value: &str,
    ttl_ms: u64,
) -> bool {
    with(|world| {
        let current = live(world, key).map(|slot| slot.value.as_str());
        if current != expected {
            return false;
        }
        let expires_at = expiry(world, ttl_ms);
        world.kv.insert(
            key.to_owned(),
            KvSlot {
                value: value.to_owned(),
                expires_at,
            },
        );
        true
    })
}

pub(crate) fn kv_delete(key: &str) {
    with(|world| {
        world.kv.remove(key);
    });
}

pub(crate) fn metric_add(name: &str, delta: u64) {
    with(|world| {
        let count = world.metrics.entry(name.to_owned()).or_default();
        *count = count.saturating_add(delta);
    });
}

#[cfg(feature = "testing")]
pub(crate) fn metric(name: &str) -> u64 {
    with(|world| world.metrics.get(name).copied().unwrap_or(0))
}

pub(crate) fn log(level: Level, message: &str) {
    // Shown by `cargo test` for failing tests (libtest captures it otherwise).
    eprintln!("[wasmgate {level}] {message}");
    with(|world| world.logs.push((level, message.to_owned())));
}

#[cfg(feature = "testing")]
pub(crate) fn logs() -> Vec<(Level, String)> {
    with(|world| world.logs.clone())
}

#[cfg(feature = "testing")]
pub(crate) fn clear_logs() {
    with(|world| world.logs.clear());
}

#[cfg(feature = "testing")]
pub(crate) fn reset() {
    with(|world| *world = World::default());
}

#[cfg(feature = "testing")]
pub(crate) fn freeze_clock(at: SystemTime) {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    with(|world| world.frozen_now_ms = Some(ms));
}

#[cfg(feature = "testing")]
pub(crate) fn advance_clock(by: Duration) {
    let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
    with(|world| {
        let now = now_ms(world);
        world.frozen_now_ms = Some(now.saturating_add(by));
    });
}

#[cfg(feature = "testing")]
pub(crate) fn unfreeze_clock() {
    with(|world| world.frozen_now_ms = None);
}

/// `set-body` of a mock request or response: fails when the body is unavailable (the plugin did
/// not ask for bodies), else replaces it and updates `content-length` as the gateway does.
#[cfg(feature = "testing")]
pub(crate) fn set_body(
    slot: &mut Option<Vec<u8>>,
    headers: &mut crate::headers::MockHeaders,
    body: Vec<u8>,
) -> Result<(), crate::HeaderError> {
    let Some(current) = slot else {
        return Err(crate::HeaderError::new(
            "the body is not available: the plugin did not ask for bodies (Plugin::needs_body)",
        ));
    };
    let length = body.len().to_string();
    *current = body;
    headers.set("content-length", &length)
}
