//! Shared state behind the `shared-state` interface: windowed counters and a KV store with TTL
//! and compare-and-swap, shared by every instance of a plugin.
//!
//! [`SharedState`] is the seam for a cluster backend (Redis) later; [`MemoryState`] keeps it in
//! this process, lock-striped by `dashmap`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// A windowed counter's state after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The count in the current window.
    pub value: i64,
    /// Time left until the window ends (zero for counters that never reset).
    pub reset: Duration,
}

/// Where plugins' shared state lives. Keys arrive already namespaced per plugin.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// Atomically adds `delta` to `key` in fixed windows of `window` (zero: never resets).
    fn counter_add(&self, key: &str, delta: i64, window: Duration) -> Counter;
    /// Reads `key` without changing it.
    fn counter_get(&self, key: &str, window: Duration) -> Counter;
    /// The value under `key` unless absent or expired.
    fn kv_get(&self, key: &str) -> Option<String>;
    /// Stores `value` under `key`, expiring after `ttl` (zero: never).
    fn kv_set(&self, key: &str, value: String, ttl: Duration);
    /// Stores `value` if the current value is `expected` (`None`: absent); whether it stored.
    fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        value: String,
        ttl: Duration,
    ) -> bool;
    /// Removes `key`.
    fn kv_delete(&self, key: &str);
}

/// Shared state in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryState {
    counters: DashMap<String, (u64, i64)>,
    kv: DashMap<String, (String, Option<u64>)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The window containing `now` (aligned on multiples of `window` since the UNIX epoch, so every
/// gateway agrees on window boundaries) and the time left in it.
pub(crate) fn window_of(now: u64, window: Duration) -> (u64, Duration) {
    let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if w == 0 {
        return (0, Duration::ZERO);
    }
    let start = now - now % w;
    (start, Duration::from_millis(start + w - now))
}

impl MemoryState {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn counter_at(&self, key: &str, delta: i64, window: Duration, now: u64) -> Counter {
        let (start, reset) = window_of(now, window);
        let mut entry = self.counters.entry(key.to_owned()).or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        entry.1 = entry.1.saturating_add(delta);
        Counter {
            value: entry.1,
            reset,
        }
    }
}

impl SharedState for MemoryState {
    fn counter_add(&self, key: &str, delta: i64, window: Duration) -> Counter {
        self.counter_at(key, delta, window, now_ms())
    }

    fn counter_get(&self, key: &str, window: Duration) -> Counter {
        let (start, reset) = window_of(now_ms(), window);
        let value = self
            .counters
            .get(key)
            .filter(|e| e.0 == start)
            .map_or(0, |e| e.1);
        Counter { value, reset }
    }

    fn kv_get(&self, key: &str) -> Option<String> {
        let now = now_ms();
        let entry = self.kv.get(key)?;
        match entry.1 {
            Some(expires) if expires <= now => None,
            _ => Some(entry.0.clone()),
        }
    }

    fn kv_set(&self, key: &str, value: String, ttl: Duration) {
        self.kv.insert(key.to_owned(), (value, expiry(ttl)));
    }

    fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        value: String,
        ttl: Duration,
    ) -> bool {
        let now = now_ms();
        let mut entry = self
            .kv
            .entry(key.to_owned())
            .or_insert((String::new(), Some(0)));
        let live = match entry.1 {
            Some(expires) if expires <= now => None,
            _ => Some(entry.0.as_str()),
        };
        if live != expected {
            return false;
        }
        *entry = (value, expiry(ttl));
        true
    }

    fn kv_delete(&self, key: &str) {
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
        fn window_contains_now_and_reset_is_the_time_left(now in 0u64..10_000_000_000, w in 1u64..10_000_000) {
            let (start, reset) = window_of(now, Duration::from_millis(w));
            prop_assert!(start <= now && now < start + w);
            prop_assert_eq!(start % w, 0);
            prop_assert_eq!(reset.as_millis() as u64, start + w - now);
            prop_assert!(reset.as_millis() as u64 >= 1 && reset.as_millis() as u64 <= w);
        }

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
