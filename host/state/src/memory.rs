//! Shared state in this process: the `memory` backend, and what the `redis` backend falls back
//! to with `on_unavailable = "local"`. Counters count with `wasmgate_counters`, as the SDK's
//! test double does, so a plugin's native tests and the gateway agree: a counter is its key and
//! its window length, in fixed windows aligned on the UNIX epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use wasmgate_counters::{LimitState, Quota, Verdict};

use crate::{Counter, millis, now_ms};

/// Shared state in this process's memory. Counters whose window ended and expired values are
/// swept every [`SWEEP_EVERY`] new keys, so keys chosen by clients (a limit per IP) do not grow
/// memory without bound.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// By `wasmgate_counters::storage_key`: the stored count and the window length.
    counters: DashMap<String, (wasmgate_counters::Stored, u64)>,
    kv: DashMap<String, (String, Option<u64>)>,
    /// Rate limits by key: the algorithm's state and how long it matters (ms since the epoch).
    limits: DashMap<String, (LimitState, u64)>,
    new_keys: AtomicU64,
}

/// New keys between two sweeps of dead entries.
pub(crate) const SWEEP_EVERY: u64 = 4096;

fn counter(c: wasmgate_counters::Counter) -> Counter {
    Counter {
        value: c.value,
        reset: Duration::from_millis(c.reset_ms),
    }
}

impl MemoryState {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters, limits and values held, live or not yet swept.
    pub fn len(&self) -> usize {
        self.counters.len() + self.kv.len() + self.limits.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn counter_at(&self, key: &str, delta: i64, window: Duration, now: u64) -> Counter {
        let length = millis(window);
        let key = wasmgate_counters::storage_key(key, length);
        if let Some(mut entry) = self.counters.get_mut(&key) {
            let (stored, reported) = wasmgate_counters::add(Some(entry.0), now, length, delta);
            entry.0 = stored;
            return counter(reported);
        }
        let reported = {
            let mut entry = self.counters.entry(key).or_insert((
                wasmgate_counters::Stored {
                    window_start_ms: wasmgate_counters::Window::containing(now, length).start_ms,
                    value: 0,
                },
                length,
            ));
            let (stored, reported) = wasmgate_counters::add(Some(entry.0), now, length, delta);
            entry.0 = stored;
            reported
        };
        self.created(now);
        counter(reported)
    }

    pub(crate) fn counter_get_at(&self, key: &str, window: Duration, now: u64) -> Counter {
        let length = millis(window);
        let stored = self
            .counters
            .get(&wasmgate_counters::storage_key(key, length))
            .map(|e| e.0);
        counter(wasmgate_counters::add(stored, now, length, 0).1)
    }

    /// Counts a new key; every [`SWEEP_EVERY`] of them, drops dead entries.
    fn created(&self, now: u64) {
        let n = self.new_keys.fetch_add(1, Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.counters
                .retain(|_, (stored, length)| !wasmgate_counters::expired(*stored, now, *length));
            self.kv
                .retain(|_, (_, expires)| expires.is_none_or(|e| e > now));
            self.limits.retain(|_, (_, until)| *until > now);
        }
    }

    /// Decides a request costing `cost` against `quota` for `key` at `now`, and records it.
    pub(crate) fn limit_at(&self, key: &str, quota: Quota, cost: u64, now: u64) -> Verdict {
        let decide = |held: Option<&(LimitState, u64)>| {
            let state = held.filter(|(_, until)| *until > now).map(|(s, _)| *s);
            let (state, verdict) = wasmgate_counters::decide(state, now, quota, cost);
            let until = now.saturating_add(wasmgate_counters::ttl_ms(state, now, quota));
            ((state, until), verdict)
        };
        if let Some(mut entry) = self.limits.get_mut(key) {
            let (held, verdict) = decide(Some(&entry));
            *entry = held;
            return verdict;
        }
        let verdict = match self.limits.entry(key.to_owned()) {
            dashmap::Entry::Occupied(mut o) => {
                let (held, verdict) = decide(Some(o.get()));
                o.insert(held);
                return verdict;
            }
            dashmap::Entry::Vacant(v) => {
                let (held, verdict) = decide(None);
                v.insert(held);
                verdict
            }
        };
        self.created(now);
        verdict
    }
}

fn live(entry: &(String, Option<u64>), now: u64) -> Option<&str> {
    match entry.1 {
        Some(expires) if expires <= now => None,
        _ => Some(entry.0.as_str()),
    }
}

impl MemoryState {
    /// Adds `delta` to `key` in fixed windows of `window` (zero: never resets).
    pub fn counter_add(&self, key: &str, delta: i64, window: Duration) -> Counter {
        self.counter_at(key, delta, window, now_ms())
    }

    /// Reads `key` without changing it.
    pub fn counter_get(&self, key: &str, window: Duration) -> Counter {
        self.counter_get_at(key, window, now_ms())
    }

    /// The value under `key` unless absent or expired.
    pub fn kv_get(&self, key: &str) -> Option<String> {
        let entry = self.kv.get(key)?;
        live(&entry, now_ms()).map(str::to_owned)
    }

    /// Stores `value` under `key`, expiring after `ttl` (zero: never).
    pub fn kv_set(&self, key: &str, value: String, ttl: Duration) {
        if self
            .kv
            .insert(key.to_owned(), (value, expiry(ttl)))
            .is_none()
        {
            self.created(now_ms());
        }
    }

    /// Stores `value` if the current value is `expected` (`None`: absent); whether it stored.
    pub fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        value: String,
        ttl: Duration,
    ) -> bool {
        let now = now_ms();
        if let Some(mut entry) = self.kv.get_mut(key) {
            if live(&entry, now) != expected {
                return false;
            }
            *entry = (value, expiry(ttl));
            return true;
        }
        if expected.is_some() {
            // Absent is not the expected value; and a failed swap leaves nothing behind.
            return false;
        }
        match self.kv.entry(key.to_owned()) {
            dashmap::Entry::Occupied(mut o) => {
                // Stored between the two looks: compare again under the entry's lock.
                if live(o.get(), now).is_some() {
                    return false;
                }
                o.insert((value, expiry(ttl)));
            }
            dashmap::Entry::Vacant(v) => {
                v.insert((value, expiry(ttl)));
                self.created(now);
            }
        }
        true
    }

    /// Removes `key`.
    pub fn kv_delete(&self, key: &str) {
        self.kv.remove(key);
    }
}

fn expiry(ttl: Duration) -> Option<u64> {
    (!ttl.is_zero())
        .then(|| now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counter_resets_at_window_boundaries() {
        let s = MemoryState::new();
        let w = Duration::from_secs(60);
        assert_eq!(s.counter_at("k", 1, w, 120_000).value, 1);
        let c = s.counter_at("k", 1, w, 179_999);
        assert_eq!((c.value, c.reset), (2, Duration::from_millis(1)));
        assert_eq!(s.counter_at("k", 1, w, 180_000).value, 1, "new window");
    }

    #[test]
    fn the_same_key_with_two_windows_is_two_counters() {
        let s = MemoryState::new();
        let minute = Duration::from_secs(60);
        let hour = Duration::from_secs(3600);
        assert_eq!(s.counter_at("k", 1, minute, 120_000).value, 1);
        assert_eq!(s.counter_at("k", 5, hour, 120_000).value, 5);
        assert_eq!(s.counter_at("k", 1, minute, 120_500).value, 2);
        assert_eq!(s.counter_get_at("k", hour, 120_500).value, 5);
        assert_eq!(s.counter_get_at("k", minute, 120_500).value, 2);
    }

    #[test]
    fn compare_and_swap_only_replaces_the_expected_value() {
        let s = MemoryState::new();
        assert!(s.kv_compare_and_swap("k", None, "a".into(), Duration::ZERO));
        assert!(!s.kv_compare_and_swap("k", None, "b".into(), Duration::ZERO));
        assert!(!s.kv_compare_and_swap("k", Some("x"), "b".into(), Duration::ZERO));
        assert!(s.kv_compare_and_swap("k", Some("a"), "b".into(), Duration::ZERO));
        assert_eq!(s.kv_get("k").as_deref(), Some("b"));
        s.kv_delete("k");
        assert_eq!(s.kv_get("k"), None);
    }

    #[test]
    fn dead_counters_and_expired_values_are_swept() {
        let s = MemoryState::new();
        let w = Duration::from_secs(1);
        for i in 0..SWEEP_EVERY - 1 {
            s.counter_at(&format!("ip-{i}"), 1, w, 1_000);
        }
        assert_eq!(s.len() as u64, SWEEP_EVERY - 1);
        // The next new key, in a later window, triggers the sweep of every ended window.
        s.counter_at("late", 1, w, 5_000);
        assert_eq!(s.len(), 1);
        assert!(!s.kv_compare_and_swap("missing", Some("x"), "y".into(), Duration::ZERO));
        assert_eq!(
            s.len(),
            1,
            "a failed compare-and-swap leaves nothing behind"
        );
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let s = std::sync::Arc::new(MemoryState::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        s.counter_add("k", 1, Duration::ZERO);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(s.counter_get("k", Duration::ZERO).value, 4000);
    }

    proptest! {
        #[test]
        fn counter_sums_deltas_within_one_window(deltas in prop::collection::vec(-100i64..100, 1..50)) {
            let s = MemoryState::new();
            let mut last = 0;
            for d in &deltas {
                last = s.counter_at("k", *d, Duration::from_secs(1), 5_000).value;
            }
            prop_assert_eq!(last, deltas.iter().sum::<i64>());
        }
    }
}
