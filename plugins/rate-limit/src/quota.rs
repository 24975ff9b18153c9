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

    /// The three numbers as one context value, `"LIMIT REMAINING RESET"`.
    pub(crate) fn encode(&self) -> String {
        format!("{} {} {}", self.limit, self.remaining, self.reset_secs)
    }
}

/// Whole seconds in `duration`, rounded up.
pub(crate) fn secs_rounded_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The three header values from a context value made by [`Decision::encode`]; `None` when it is
/// not one (another plugin overwrote the key).
pub(crate) fn decode(value: &str) -> Option<[&str; 3]> {
    let mut parts = value.split(' ');
    let numbers = [parts.next()?, parts.next()?, parts.next()?];
    let all_digits = numbers
        .iter()
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (parts.next().is_none() && all_digits).then_some(numbers)
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

    #[test]
    fn decode_reads_back_what_encode_wrote_and_nothing_else() {
        let d = Decision::new(100, 42, Duration::from_secs(7));
        assert_eq!(decode(&d.encode()), Some(["100", "58", "7"]));
        for bad in ["", "1 2", "1 2 3 4", "a 2 3", "1  3", "-1 2 3"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
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

        #[test]
        fn decisions_survive_the_trip_through_the_context(
            limit in 1u64..u64::MAX,
            count in any::<i64>(),
            reset_ms in any::<u32>(),
        ) {
            let d = Decision::new(limit, count, Duration::from_millis(reset_ms.into()));
            let remaining = d.remaining.to_string();
            let reset = d.reset_secs.to_string();
            let limit = limit.to_string();
            let encoded = d.encode();
            prop_assert_eq!(
                decode(&encoded),
                Some([limit.as_str(), remaining.as_str(), reset.as_str()])
            );
        }
    }
}
