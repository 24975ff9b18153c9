//! The limiter's arithmetic: from a window's count to the answer and the numbers the client sees.

use std::time::Duration;

/// The outcome of counting one request against its limit in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The limit that applied (`RateLimit-Limit`).
    pub(crate) limit: u64,
    /// Requests still allowed in this window after this one (`RateLimit-Remaining`); never
    /// negative, 0 once the limit is reached.
    pub(crate) remaining: u64,
    /// Whole seconds until the window ends, rounded up and at least 1 (`RateLimit-Reset`, and
    /// `Retry-After` when refused). At least 1 because "0" would invite an immediate retry that
    /// may still land in the closing window.
    pub(crate) reset_secs: u64,
    /// Whether this request is within the limit.
    pub(crate) allowed: bool,
}

impl Decision {
    /// `count` is the window's count after this request was added (so the first request of a
    /// window has count 1); `reset` is the time left in the window.
    ///
    /// Refused requests are counted too (the counter is added to before the answer is known), so
    /// `count` may exceed `limit` by any amount; a negative count (not produced by this plugin)
    /// counts as zero.
    pub(crate) fn new(limit: u64, count: i64, reset: Duration) -> Self {
        let used = u64::try_from(count).unwrap_or(0);
        Self {
            limit,
            remaining: limit.saturating_sub(used),
            reset_secs: secs_rounded_up(reset).max(1),
            allowed: used <= limit,
        }
    }
}

/// Whole seconds in `duration`, rounded up.
pub(crate) fn secs_rounded_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn first_request_of_a_window_leaves_limit_minus_one() {
        let d = Decision::new(10, 1, Duration::from_millis(59_001));
        assert_eq!(
            d,
            Decision {
                limit: 10,
                remaining: 9,
                reset_secs: 60,
                allowed: true
            }
        );
    }

    #[test]
    fn the_request_at_the_limit_passes_and_the_next_is_refused() {
        assert!(Decision::new(3, 3, Duration::from_secs(1)).allowed);
        let over = Decision::new(3, 4, Duration::from_secs(1));
        assert!(!over.allowed);
        assert_eq!(over.remaining, 0);
    }

    #[test]
    fn reset_is_at_least_one_second() {
        assert_eq!(Decision::new(1, 1, Duration::ZERO).reset_secs, 1);
        assert_eq!(Decision::new(1, 1, Duration::from_millis(1)).reset_secs, 1);
    }

    proptest! {
        #[test]
        fn remaining_never_goes_negative_and_counts_down_by_one(
            limit in 1u64..1_000_000,
            count in -5i64..2_000_000,
            reset_ms in 0u64..100_000_000,
        ) {
            let d = Decision::new(limit, count, Duration::from_millis(reset_ms));
            let used = u64::try_from(count).unwrap_or(0);
            prop_assert!(d.remaining <= limit);
            prop_assert_eq!(d.allowed, used <= limit);
            if d.allowed {
                prop_assert_eq!(d.remaining, limit - used);
            } else {
                prop_assert_eq!(d.remaining, 0);
            }
            let next = Decision::new(limit, count.saturating_add(1), Duration::from_millis(reset_ms));
            if count >= 0 {
                prop_assert_eq!(next.remaining, d.remaining.saturating_sub(1));
            }
        }

        #[test]
        fn reset_rounds_the_time_left_up_to_whole_seconds(reset_ms in 0u64..100_000_000) {
            let d = Decision::new(1, 1, Duration::from_millis(reset_ms));
            prop_assert!(d.reset_secs >= 1);
            prop_assert!(d.reset_secs * 1000 >= reset_ms, "never promises a reset too early");
            prop_assert!(reset_ms == 0 || (d.reset_secs - 1) * 1000 < reset_ms, "at most 1 s late");
        }
    }
}
