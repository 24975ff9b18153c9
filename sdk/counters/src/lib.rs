//! The semantics of Wasmgate's shared-state counters, in one place: the gateway's in-memory
//! store and the SDK's test double both count with these functions, so a plugin's native tests
//! and the gateway agree.
//!
//! A counter is identified by its key *and* its window length: `counter_add("k", 1, 1m)` and
//! `counter_add("k", 1, 1h)` count separately. Windows are fixed and aligned on multiples of their
//! length since the UNIX epoch, so every gateway of a cluster agrees on where a window starts;
//! a window length of 0 never resets.
//!
//! [`limit`] holds the rate limits built on the same windows: fixed window, sliding window and
//! token bucket (GCRA).

#![warn(missing_docs)]

pub mod limit;

pub use limit::{Algorithm, LimitState, Quota, Verdict, absorb, decide, ttl_ms};

/// The window of length `length_ms` that contains an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Where it starts, in ms since the UNIX epoch (0 for a counter that never resets).
    pub start_ms: u64,
    /// Time left until it ends, in ms (0 for a counter that never resets).
    pub remaining_ms: u64,
}

impl Window {
    /// The window of length `length_ms` containing `now_ms` (ms since the UNIX epoch).
    pub fn containing(now_ms: u64, length_ms: u64) -> Self {
        if length_ms == 0 {
            return Self {
                start_ms: 0,
                remaining_ms: 0,
            };
        }
        let start_ms = now_ms - now_ms % length_ms;
        Self {
            start_ms,
            remaining_ms: start_ms.saturating_add(length_ms) - now_ms,
        }
    }

    /// When it ends, in ms since the UNIX epoch; `u64::MAX` for a counter that never resets.
    pub fn end_ms(&self, length_ms: u64) -> u64 {
        if length_ms == 0 {
            u64::MAX
        } else {
            self.start_ms.saturating_add(length_ms)
        }
    }
}

/// What a store keeps per counter: the window its count belongs to, and the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The start of the window `value` was counted in, in ms since the UNIX epoch.
    pub window_start_ms: u64,
    /// The count.
    pub value: i64,
}

/// A counter's state as a plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The count in the current window, after the update.
    pub value: i64,
    /// Ms until the current window ends and the count starts again from zero (0: never).
    pub reset_ms: u64,
}

/// Adds `delta` (0 reads) to a counter whose store holds `stored` (none when it was never
/// counted or was swept), at `now_ms`: what to store and what to report. A count from an earlier
/// window counts as zero; the count saturates instead of overflowing.
pub fn add(stored: Option<Stored>, now_ms: u64, length_ms: u64, delta: i64) -> (Stored, Counter) {
    let window = Window::containing(now_ms, length_ms);
    let current = stored
        .filter(|s| s.window_start_ms == window.start_ms)
        .map_or(0, |s| s.value);
    let value = current.saturating_add(delta);
    (
        Stored {
            window_start_ms: window.start_ms,
            value,
        },
        Counter {
            value,
            reset_ms: window.remaining_ms,
        },
    )
}

/// Whether a stored count can be forgotten at `now_ms`: its window has ended (never for counters
/// that never reset).
pub fn expired(stored: Stored, now_ms: u64, length_ms: u64) -> bool {
    length_ms != 0 && stored.window_start_ms.saturating_add(length_ms) <= now_ms
}

/// The key a store files a counter under: the window length and the plugin's key, so the same
/// key counted with two window lengths makes two counters.
pub fn storage_key(key: &str, length_ms: u64) -> String {
    format!("{length_ms}:{key}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn counts_within_a_window_and_restarts_in_the_next() {
        let minute = 60_000;
        let (s, c) = add(None, 61_000, minute, 1);
        assert_eq!(
            c,
            Counter {
                value: 1,
                reset_ms: 59_000
            }
        );
        let (s, c) = add(Some(s), 119_999, minute, 2);
        assert_eq!(
            c,
            Counter {
                value: 3,
                reset_ms: 1
            }
        );
        let (_, c) = add(Some(s), 120_000, minute, 1);
        assert_eq!(
            c,
            Counter {
                value: 1,
                reset_ms: minute
            }
        );
    }

    #[test]
    fn a_zero_window_never_resets_and_delta_zero_reads() {
        let (s, c) = add(None, 5, 0, 7);
        assert_eq!(
            c,
            Counter {
                value: 7,
                reset_ms: 0
            }
        );
        let (_, c) = add(Some(s), u64::MAX / 2, 0, 0);
        assert_eq!(c.value, 7);
        assert!(!expired(s, u64::MAX, 0));
    }

    #[test]
    fn the_same_key_with_two_windows_is_two_counters() {
        assert_ne!(storage_key("k", 60_000), storage_key("k", 3_600_000));
        assert_ne!(
            storage_key("1:k", 0),
            storage_key("k", 1),
            "no ambiguity from the separator"
        );
    }

    proptest! {
        #[test]
        fn windows_are_aligned_and_contain_now(now in 0u64..u64::MAX / 2, length in 1u64..10_000_000) {
            let w = Window::containing(now, length);
            prop_assert_eq!(w.start_ms % length, 0);
            prop_assert!(w.start_ms <= now && now < w.end_ms(length));
            prop_assert_eq!(w.remaining_ms, w.end_ms(length) - now);
        }

        #[test]
        fn a_count_expires_exactly_when_its_window_ends(now in 0u64..u64::MAX / 2, length in 1u64..10_000_000) {
            let (s, _) = add(None, now, length, 1);
            let end = Window::containing(now, length).end_ms(length);
            prop_assert!(!expired(s, end - 1, length));
            prop_assert!(expired(s, end, length));
            let (_, c) = add(Some(s), end, length, 1);
            prop_assert_eq!(c.value, 1);
        }
    }
}
