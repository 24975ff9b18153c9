//! Rate limiting: the pure decisions of three algorithms, shared by the gateway's in-memory store,
//! its per-node batching layer and the SDK's test double, and mirrored by the Redis Lua script.
//!
//! Everything is integer math on ms since the UNIX epoch; products are taken in `u128` and results
//! saturate instead of overflowing. Notation used below: `L` = [`Quota::limit`], `w` =
//! [`Quota::window_ms`], `c` = the cost of a request, `now` = the decision's instant.
//!
//! - **Fixed window** ([`Algorithm::FixedWindow`]): windows of `w` ms aligned on the epoch (as
//!   [`Window::containing`]); every request counts, denied ones too; allowed iff the window's count
//!   including this request is `<= L`.
//! - **Sliding window** ([`Algorithm::SlidingWindow`]): the same aligned windows, with the previous
//!   window's count weighted by the share of the sliding window still over it: with
//!   `e = now - window start`, the estimate is `E = previous * (w - e) / w + current`. Compared
//!   exactly, without division: allowed iff `previous * (w - e) + (current + c) * w <= L * w`.
//!   Only allowed requests count.
//! - **Token bucket** ([`Algorithm::TokenBucket`]) as GCRA: a bucket of `L` units refilling `L`
//!   per `w` ms, i.e. one unit per emission interval `T = w / L` ms. `T` is kept exact by counting
//!   time in *slots* of `T` since the epoch: `slot(t) = floor(t * L / w)`, and slot `j` starts at
//!   `start(j) = ceil(j * w / L)` ms (the first ms `t` with `slot(t) >= j`). The state is the
//!   theoretical arrival time *in slots*, `tat_slot`, so that sub-ms arrival times stay exact: the
//!   bucket's level (units in use) is `level = max(tat_slot - slot(now), 0)` and a request is
//!   allowed iff `level + c <= L`; an allowed one stores `tat_slot = slot(now) + level + c`. This
//!   is exact for any `L` and `w`, also when `L > w` (several units per ms): a full bucket takes
//!   exactly `L` unit requests at one instant, and over any `d` ms at most
//!   `L + floor(d * L / w) + 1` units pass. The bucket is full again from `start(tat_slot)` ms on.
//!
//! A Lua mirror working in doubles (exact up to 2^53) should avoid `t * L` and `j * w` on absolute
//! times and slots: with `t = a * w + r` (`0 <= r < w`), `slot(t) = a * L + floor(r * L / w)`, and
//! with `j = b * L + q` (`0 <= q < L`), `start(j) = b * w + ceil(q * w / L)`, so only remainders
//! are multiplied. With `L * w <= 2^53` and, for the bucket, `L <= 1000 * w`, every term (slots of
//! today's times included, about `1.8e12 * L / w`) stays below 2^53.
//!
//! A [`Quota`] is meant to have `window_ms >= 1` and `limit >= 1`; defensively a `window_ms` of 0
//! counts as 1 and a `limit` of 0 denies every request.

use crate::Window;

/// How a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Windows of `window_ms` aligned on the epoch, each allowing `limit` units; every request
    /// counts, denied ones too.
    FixedWindow,
    /// Aligned windows where the previous window's count weighs by the share of the last
    /// `window_ms` it still covers (Cloudflare's and Kong's "sliding"); only allowed requests count.
    SlidingWindow,
    /// A bucket of `limit` units refilling `limit` per `window_ms` (GCRA); only allowed requests
    /// take from it.
    TokenBucket,
}

/// A limit: `limit` units per `window_ms` (window_ms >= 1, limit >= 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Units allowed per window (the bucket's size, for [`Algorithm::TokenBucket`]).
    pub limit: u64,
    /// The window's length in ms (the time to refill an empty bucket, for
    /// [`Algorithm::TokenBucket`]).
    pub window_ms: u64,
    /// How requests are counted against the limit.
    pub algorithm: Algorithm,
}

/// The decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Units still allowed right after this decision (0 when denied or used up).
    pub remaining: u64,
    /// Ms until the limit is fully available again (fixed: end of the window; sliding: end of the window; token bucket: until the bucket is full again).
    pub reset_ms: u64,
    /// When denied: ms after which the same request would be allowed (>= 1); 0 when allowed.
    pub retry_after_ms: u64,
}

/// What a store keeps per limited key, per algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitState {
    /// fixed window: the window's start and its count (every request counts, denied ones too, like today's rate-limit plugin: value = hits this window).
    Fixed {
        /// The start of the window `count` belongs to, in ms since the epoch.
        window_start_ms: u64,
        /// The units requested in that window, allowed or not.
        count: u64,
    },
    /// sliding window (weighted previous window, as Cloudflare/Kong "sliding"): the current window's start, its count and the previous window's count. Only allowed requests count.
    Sliding {
        /// The start of the window `current` belongs to, in ms since the epoch.
        window_start_ms: u64,
        /// The units allowed in that window.
        current: u64,
        /// The units allowed in the window just before it.
        previous: u64,
    },
    /// token bucket as GCRA: the theoretical arrival time, in slots. Only allowed requests advance it.
    Bucket {
        /// The theoretical arrival time, in slots of `w / L` ms since the UNIX epoch: the bucket
        /// holds `tat_slot - slot(now)` units in use and is full again from `start(tat_slot)` ms
        /// on (see the [module docs](self)).
        tat_slot: u64,
    },
}

/// Decides a request costing `cost` units (cost >= 1) at `now_ms` against `quota`, given the key's stored state (None: never seen or expired; a state of another algorithm's kind counts as None). Returns the state to store and the verdict.
///
/// With the notation of the [module docs](self) (`e = now - window start`):
///
/// - fixed: `count' = count (0 if from another window) + c`; allowed iff `count' <= L`;
///   `remaining = L - count'` (saturating); `reset_ms = retry_after_ms = w - e` (the window's end).
///   When `c > L` the request never passes and `retry_after_ms` is still the window's end.
/// - sliding: on a new window `previous = current` if the stored window is the one just before,
///   else 0, and `current = 0`; allowed iff `previous * (w - e) + (current + c) * w <= L * w`, then
///   `current += c`; `remaining = floor((L * w - previous * (w - e) - current * w) / w)`;
///   `reset_ms = w - e`. `retry_after_ms` is exact (the smallest `t >= 1` at which the same
///   request passes with no other traffic):
///   - `c <= L` and `current + c <= L`: later in this window, once the previous window's weight has
///     decayed: `t = (w - e) - floor((L - current - c) * w / previous)` (at most `w - e`: at the
///     next window's start `current` becomes the previous count and the request passes);
///   - `c <= L` and `current + c > L`: in the next window, where `current` is the previous count:
///     `t = (w - e) + w - floor((L - c) * w / current)`;
///   - `c > L`: never; `t = (w - e) + w`.
/// - token bucket: `level = max(tat_slot - slot(now), 0)`; allowed iff `level + c <= L`, then
///   `tat_slot = slot(now) + level + c`; `remaining = L - level - c`;
///   `reset_ms = start(tat_slot) - now` (saturating, the stored `tat_slot`). When denied the state
///   stays (an absent one as `tat_slot = slot(now)`, an empty bucket) and
///   `retry_after_ms = start(tat_slot + c - L) - now` (exact: the first ms whose slot leaves room
///   for `c`), or when `c > L` (never) `reset_ms + w`.
pub fn decide(
    state: Option<LimitState>,
    now_ms: u64,
    quota: Quota,
    cost: u64,
) -> (LimitState, Verdict) {
    let (limit, w) = (quota.limit, window_ms(quota));
    match quota.algorithm {
        Algorithm::FixedWindow => decide_fixed(state, now_ms, limit, w, cost),
        Algorithm::SlidingWindow => decide_sliding(state, now_ms, limit, w, cost),
        Algorithm::TokenBucket => decide_bucket(state, now_ms, limit, w, cost),
    }
}

/// Adds `used` units to a state unconditionally (no decision): what a node that decided requests locally (batched mode) sends to the shared store when it syncs. For fixed/sliding: adds to the current window's count (rolling the window at now_ms first); for the bucket: tat = max(tat, now) + used * emission interval. Returns the new state.
///
/// In slots (see the [module docs](self)), the bucket's `tat_slot = max(tat_slot, slot(now)) +
/// used` (saturating). A state of another algorithm's kind counts as None.
pub fn absorb(state: Option<LimitState>, now_ms: u64, quota: Quota, used: u64) -> LimitState {
    let (limit, w) = (quota.limit, window_ms(quota));
    match quota.algorithm {
        Algorithm::FixedWindow => {
            let window = Window::containing(now_ms, w);
            LimitState::Fixed {
                window_start_ms: window.start_ms,
                count: fixed_count(state, window.start_ms).saturating_add(used),
            }
        }
        Algorithm::SlidingWindow => {
            let s = Sliding::at(state, now_ms, w);
            LimitState::Sliding {
                window_start_ms: s.window.start_ms,
                current: s.current.saturating_add(used),
                previous: s.previous,
            }
        }
        Algorithm::TokenBucket => {
            let from = bucket_tat(state).max(slot(now_ms, limit, w));
            LimitState::Bucket {
                tat_slot: saturate(from.saturating_add(u128::from(used))),
            }
        }
    }
}

/// How long a store must keep the state after `now_ms` for it to still matter (fixed: until its window ends; sliding: until the end of the window after the current one; bucket: until tat). Used as the Redis key TTL and for sweeping memory.
///
/// fixed: `window_start_ms + w - now`; sliding: `window_start_ms + 2 * w - now`; bucket:
/// `start(tat_slot) - now`; all saturating at 0. From `now_ms + ttl_ms` on, the state decides as
/// None.
pub fn ttl_ms(state: LimitState, now_ms: u64, quota: Quota) -> u64 {
    let w = window_ms(quota);
    let until = match state {
        LimitState::Fixed {
            window_start_ms, ..
        } => window_start_ms.saturating_add(w),
        LimitState::Sliding {
            window_start_ms, ..
        } => window_start_ms.saturating_add(w.saturating_mul(2)),
        LimitState::Bucket { tat_slot } => slot_start_ms(u128::from(tat_slot), quota.limit, w),
    };
    until.saturating_sub(now_ms)
}

/// The window length actually used: a `window_ms` of 0 counts as 1.
fn window_ms(quota: Quota) -> u64 {
    quota.window_ms.max(1)
}

/// `x` as a `u64`, saturating.
fn saturate(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// The count a fixed-window state holds for the window starting at `start_ms` (0 for another
/// window or another kind of state).
fn fixed_count(state: Option<LimitState>, start_ms: u64) -> u64 {
    match state {
        Some(LimitState::Fixed {
            window_start_ms,
            count,
        }) if window_start_ms == start_ms => count,
        _ => 0,
    }
}

fn decide_fixed(
    state: Option<LimitState>,
    now_ms: u64,
    limit: u64,
    w: u64,
    cost: u64,
) -> (LimitState, Verdict) {
    let window = Window::containing(now_ms, w);
    let count = fixed_count(state, window.start_ms).saturating_add(cost);
    let allowed = count <= limit;
    (
        LimitState::Fixed {
            window_start_ms: window.start_ms,
            count,
        },
        Verdict {
            allowed,
            remaining: limit.saturating_sub(count),
            reset_ms: window.remaining_ms,
            // At least 1: a window cut short by the end of time has 0 ms left.
            retry_after_ms: if allowed {
                0
            } else {
                window.remaining_ms.max(1)
            },
        },
    )
}

/// A sliding-window state rolled to the window containing `now`.
struct Sliding {
    window: Window,
    /// `w - e`: the previous window's weight, in ms of the last `w`.
    weight: u64,
    current: u64,
    previous: u64,
}

impl Sliding {
    /// Rolls `state` to the window containing `now_ms`: the same window keeps its counts; the
    /// window just after the stored one takes its `current` as `previous`; any other starts empty.
    fn at(state: Option<LimitState>, now_ms: u64, w: u64) -> Self {
        let window = Window::containing(now_ms, w);
        let (current, previous) = match state {
            Some(LimitState::Sliding {
                window_start_ms,
                current,
                previous,
            }) => {
                if window_start_ms == window.start_ms {
                    (current, previous)
                } else if window_start_ms.checked_add(w) == Some(window.start_ms) {
                    (0, current)
                } else {
                    (0, 0)
                }
            }
            _ => (0, 0),
        };
        Self {
            window,
            weight: w - (now_ms - window.start_ms),
            current,
            previous,
        }
    }

    /// `previous * (w - e) + current * w`: the estimate `E` times `w`.
    fn used(&self, w: u64) -> u128 {
        u128::from(self.previous)
            .saturating_mul(u128::from(self.weight))
            .saturating_add(u128::from(self.current) * u128::from(w))
    }
}

fn decide_sliding(
    state: Option<LimitState>,
    now_ms: u64,
    limit: u64,
    w: u64,
    cost: u64,
) -> (LimitState, Verdict) {
    let mut s = Sliding::at(state, now_ms, w);
    let (w128, limit128, cost128) = (u128::from(w), u128::from(limit), u128::from(cost));
    let capacity = limit128 * w128;
    let allowed = s.used(w).saturating_add(cost128 * w128) <= capacity;
    let reset_ms = s.window.remaining_ms;
    let retry_after_ms = if allowed {
        0
    } else if cost > limit {
        // Never passes.
        reset_ms.saturating_add(w)
    } else if u128::from(s.current) + cost128 <= limit128 {
        // Passes in this window once previous * (w - e - t) <= (L - current - c) * w.
        let slack = (limit128 - u128::from(s.current) - cost128) * w128;
        let weight_then = slack / u128::from(s.previous.max(1));
        saturate(u128::from(s.weight).saturating_sub(weight_then)).max(1)
    } else {
        // Passes in the next window at e' = w - floor((L - c) * w / current), current being the
        // previous count there.
        let e_then = w128 - (limit128 - cost128) * w128 / u128::from(s.current.max(1));
        saturate(u128::from(s.weight) + e_then)
    };
    if allowed {
        s.current = s.current.saturating_add(cost);
    }
    let remaining = if allowed {
        saturate(capacity.saturating_sub(s.used(w)) / w128)
    } else {
        0
    };
    (
        LimitState::Sliding {
            window_start_ms: s.window.start_ms,
            current: s.current,
            previous: s.previous,
        },
        Verdict {
            allowed,
            remaining,
            reset_ms,
            retry_after_ms,
        },
    )
}

/// The bucket's `tat_slot` (0 if `state` is not a bucket: an empty bucket).
fn bucket_tat(state: Option<LimitState>) -> u128 {
    match state {
        Some(LimitState::Bucket { tat_slot }) => u128::from(tat_slot),
        _ => 0,
    }
}

/// `slot(t) = floor(t * L / w)`: the emission intervals (`T = w / L` ms) since the epoch.
fn slot(t_ms: u64, limit: u64, w: u64) -> u128 {
    u128::from(t_ms) * u128::from(limit) / u128::from(w)
}

/// `start(j) = ceil(j * w / L)`: the first ms whose slot is `j` or later (saturating; with `L = 0`,
/// never for `j > 0`).
fn slot_start_ms(j: u128, limit: u64, w: u64) -> u64 {
    if j == 0 {
        return 0;
    }
    match j.checked_mul(u128::from(w)) {
        Some(p) if limit > 0 => saturate(p.div_ceil(u128::from(limit))),
        _ => u64::MAX,
    }
}

fn decide_bucket(
    state: Option<LimitState>,
    now_ms: u64,
    limit: u64,
    w: u64,
    cost: u64,
) -> (LimitState, Verdict) {
    let (limit128, cost128) = (u128::from(limit), u128::from(cost));
    let now_slot = slot(now_ms, limit, w);
    let old_tat = match state {
        Some(LimitState::Bucket { tat_slot }) => Some(tat_slot),
        _ => None,
    };
    let level = bucket_tat(state).saturating_sub(now_slot);
    if level.saturating_add(cost128) <= limit128 {
        let tat_slot = saturate(now_slot + level + cost128);
        return (
            LimitState::Bucket { tat_slot },
            Verdict {
                allowed: true,
                remaining: saturate(limit128 - level - cost128),
                reset_ms: slot_start_ms(u128::from(tat_slot), limit, w).saturating_sub(now_ms),
                retry_after_ms: 0,
            },
        );
    }
    // Denied: the state stays (an absent one as an empty bucket).
    let tat_slot = old_tat.unwrap_or_else(|| saturate(now_slot));
    let reset_ms = slot_start_ms(u128::from(tat_slot), limit, w).saturating_sub(now_ms);
    let retry_after_ms = if cost > limit {
        // Never passes.
        reset_ms.saturating_add(w)
    } else {
        // Passes from the first ms with slot(now + t) >= tat_slot + c - L (> slot(now), as denied).
        let first = slot_start_ms(u128::from(tat_slot) + cost128 - limit128, limit, w);
        first.saturating_sub(now_ms).max(1)
    };
    (
        LimitState::Bucket { tat_slot },
        Verdict {
            allowed: false,
            remaining: 0,
            reset_ms,
            retry_after_ms,
        },
    )
}

#[cfg(test)]
mod tests;
