//! The limiter's arithmetic: from a window's count to the answer and the numbers the client sees.

use std::time::Duration;

use wasmgate_sdk::state::Verdict;

/// The answer to one request, in the numbers the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The limit that applied (`RateLimit-Limit`).
    pub(crate) limit: u64,
    /// Requests still allowed right after this one (`RateLimit-Remaining`); 0 once refused.
    pub(crate) remaining: u64,
    /// Whole seconds until the limit is entirely available again, rounded up and at least 1
    /// (`RateLimit-Reset`). At least 1 because "0" would invite an immediate retry that may
    /// still be refused.
    pub(crate) reset_secs: u64,
    /// When refused, whole seconds until the same request would pass, rounded up and at least 1
    /// (`Retry-After`).
    pub(crate) retry_after_secs: u64,
    /// Whether this request is within the limit.
    pub(crate) allowed: bool,
}

impl Decision {
    /// The gateway's `verdict` on a request under `limit`.
    pub(crate) fn new(limit: u64, verdict: Verdict) -> Self {
        Self {
            limit,
            remaining: if verdict.allowed {
                verdict.remaining
            } else {
                0
            },
            reset_secs: secs_rounded_up(verdict.reset).max(1),
            retry_after_secs: secs_rounded_up(verdict.retry_after).max(1),
            allowed: verdict.allowed,
        }
    }
}

/// The `RateLimit-Policy` field (draft-ietf-httpapi-ratelimit-headers): the quota and its
/// window in seconds, e.g. `100;w=60`.
pub(crate) fn policy(limit: u64, window: Duration) -> String {
    format!("{limit};w={}", secs_rounded_up(window))
}

/// Whole seconds in `duration`, rounded up.
pub(crate) fn secs_rounded_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn verdict(allowed: bool, remaining: u64, reset_ms: u64, retry_ms: u64) -> Verdict {
        Verdict {
            allowed,
            remaining,
            reset: Duration::from_millis(reset_ms),
            retry_after: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn an_allowed_request_shows_what_remains_and_when_it_resets() {
        let d = Decision::new(10, verdict(true, 9, 59_001, 0));
        assert_eq!(
            (d.limit, d.remaining, d.reset_secs, d.allowed),
            (10, 9, 60, true)
        );
    }

    #[test]
    fn a_refusal_shows_nothing_remaining_and_when_to_retry() {
        let d = Decision::new(3, verdict(false, 0, 30_000, 1_500));
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.retry_after_secs), (0, 2));
    }

    #[test]
    fn reset_and_retry_are_at_least_one_second() {
        let d = Decision::new(1, verdict(false, 0, 0, 1));
        assert_eq!((d.reset_secs, d.retry_after_secs), (1, 1));
    }

    #[test]
    fn the_policy_names_the_quota_and_its_window_in_seconds() {
        assert_eq!(policy(100, Duration::from_secs(60)), "100;w=60");
        assert_eq!(policy(5, Duration::from_millis(1500)), "5;w=2");
    }

    proptest! {
        #[test]
        fn reset_rounds_the_time_left_up_to_whole_seconds(reset_ms in 0u64..100_000_000) {
            let d = Decision::new(1, verdict(true, 0, reset_ms, 0));
            prop_assert!(d.reset_secs >= 1);
            prop_assert!(d.reset_secs * 1000 >= reset_ms, "never promises a reset too early");
            prop_assert!(reset_ms == 0 || (d.reset_secs - 1) * 1000 < reset_ms, "at most 1 s late");
        }
    }
}
