use proptest::prelude::*;

use super::*;

const SECOND: u64 = 1_000;

fn quota(limit: u64, window_ms: u64, algorithm: Algorithm) -> Quota {
    Quota {
        limit,
        window_ms,
        algorithm,
    }
}

/// Decides `requests` (instant, cost) in order from `state`: the last state and the verdicts.
fn run(
    q: Quota,
    mut state: Option<LimitState>,
    requests: &[(u64, u64)],
) -> (Option<LimitState>, Vec<Verdict>) {
    let mut verdicts = Vec::with_capacity(requests.len());
    for &(now, cost) in requests {
        let (s, v) = decide(state, now, q, cost);
        state = Some(s);
        verdicts.push(v);
    }
    (state, verdicts)
}

/// The allowed/denied pattern of verdicts.
fn allowed(verdicts: &[Verdict]) -> Vec<bool> {
    verdicts.iter().map(|v| v.allowed).collect()
}

/// `previous * (w - e) + current * w`: a sliding state's estimate `E` times `w`, at `now`.
fn sliding_estimate_times_w(state: LimitState, now: u64, w: u64) -> u128 {
    let LimitState::Sliding {
        window_start_ms,
        current,
        previous,
    } = state
    else {
        panic!("not a sliding state: {state:?}");
    };
    assert_eq!(window_start_ms, Window::containing(now, w).start_ms);
    u128::from(previous) * u128::from(w - (now - window_start_ms))
        + u128::from(current) * u128::from(w)
}

fn any_algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::FixedWindow),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::TokenBucket),
    ]
}

/// Requests in time order from a random instant: gaps from 0 to `2 * w`, mostly unit costs.
fn traffic(w: u64, limit: u64, len: usize) -> impl Strategy<Value = Vec<(u64, u64)>> {
    let gap = prop_oneof![Just(0u64), 0..=w.div_ceil(8), 0..=2 * w];
    let cost = prop_oneof![3 => Just(1u64), 1 => 1..=limit];
    (
        0u64..2_000_000_000_000,
        prop::collection::vec((gap, cost), 1..len),
    )
        .prop_map(|(start, steps)| {
            let mut now = start;
            steps
                .into_iter()
                .map(|(gap, cost)| {
                    now += gap;
                    (now, cost)
                })
                .collect()
        })
}

/// A quota of `algorithm` with a limit and window in the ranges, and traffic for it.
fn scenario(
    algorithm: impl Strategy<Value = Algorithm>,
    limits: std::ops::RangeInclusive<u64>,
    windows: std::ops::RangeInclusive<u64>,
) -> impl Strategy<Value = (Quota, Vec<(u64, u64)>)> {
    (algorithm, limits, windows).prop_flat_map(|(algorithm, limit, w)| {
        (Just(quota(limit, w, algorithm)), traffic(w, limit, 80))
    })
}

#[test]
fn fixed_allows_exactly_limit_of_same_instant_requests_and_restarts_next_window() {
    let q = quota(5, 60 * SECOND, Algorithm::FixedWindow);
    let (state, verdicts) = run(q, None, &[(61_000, 1); 8]);
    assert_eq!(
        allowed(&verdicts),
        [true, true, true, true, true, false, false, false]
    );
    assert_eq!(
        verdicts.iter().map(|v| v.remaining).collect::<Vec<_>>(),
        [4, 3, 2, 1, 0, 0, 0, 0]
    );
    assert!(verdicts.iter().all(|v| v.reset_ms == 59_000));
    assert_eq!(verdicts[4].retry_after_ms, 0);
    assert_eq!(verdicts[5].retry_after_ms, 59_000);
    assert_eq!(
        state,
        Some(LimitState::Fixed {
            window_start_ms: 60_000,
            count: 8
        }),
        "denied requests count too"
    );
    let (_, v) = decide(state, 119_999, q, 1);
    assert!(!v.allowed);
    assert_eq!(v.retry_after_ms, 1);
    let (_, v) = decide(state, 120_000, q, 1);
    assert_eq!(
        v,
        Verdict {
            allowed: true,
            remaining: 4,
            reset_ms: 60_000,
            retry_after_ms: 0
        }
    );
}

#[test]
fn fixed_cost_above_the_limit_never_passes_but_points_at_the_window_end() {
    let q = quota(5, 60 * SECOND, Algorithm::FixedWindow);
    let (s, v) = decide(None, 61_000, q, 6);
    assert!(!v.allowed);
    assert_eq!(v.retry_after_ms, 59_000);
    let (_, v) = decide(Some(s), 61_000 + 59_000, q, 6);
    assert!(!v.allowed);
}

#[test]
fn sliding_previous_window_weight_decays_linearly() {
    // 10 per 10 s; the previous window's 10 weigh 10 * (w - e) / w.
    let q = quota(10, 10 * SECOND, Algorithm::SlidingWindow);
    let (s, v) = run(q, None, &[(5_000, 1); 11]);
    assert_eq!(allowed(&v), [[true; 10].as_slice(), &[false]].concat());
    assert_eq!(v[9].remaining, 0);
    // current + 1 > 10: in the next window, once 10 * (w - e') / w <= 9, i.e. e' = 1 000.
    assert_eq!(v[10].retry_after_ms, 5_000 + 1_000);
    assert_eq!(v[10].reset_ms, 5_000);

    // e = 0: E = 10, full; it takes 1 s for the previous window's weight to free one unit.
    let (_, v) = decide(s, 10_000, q, 1);
    assert_eq!((v.allowed, v.retry_after_ms), (false, 1_000));
    let (_, v) = decide(s, 10_999, q, 1);
    assert!(!v.allowed);

    // e = 2.5 s: E = 7.5, room for 2 (9.5), not 3 (10.5) until e = 3 s (7 + 3).
    let (s, v) = run(q, s, &[(12_500, 1); 3]);
    assert_eq!(allowed(&v), [true, true, false]);
    assert_eq!((v[0].remaining, v[1].remaining), (1, 0));
    assert_eq!(v[2].retry_after_ms, 500);
    let (s, v) = run(q, s, &[(13_000, 1), (13_000, 1)]);
    assert_eq!(allowed(&v), [true, false]);
    assert_eq!(v[1].retry_after_ms, 1_000);

    // e = 5 s: E = 5 + 3 = 8: room for 2.
    let (s, v) = run(q, s, &[(15_000, 1); 3]);
    assert_eq!(allowed(&v), [true, true, false]);
    assert_eq!(
        s,
        Some(LimitState::Sliding {
            window_start_ms: 10_000,
            current: 5,
            previous: 10
        })
    );

    // The next window: the 5 become the previous count: E = 5 at e = 0, room for 5.
    let (s, v) = run(q, s, &[(20_000, 1); 6]);
    assert_eq!(allowed(&v), [true, true, true, true, true, false]);
    assert_eq!(v[0].remaining, 4);
    // Two windows later nothing weighs any more.
    let (_, v) = run(q, s, &[(40_000, 1); 11]);
    assert_eq!(allowed(&v), [[true; 10].as_slice(), &[false]].concat());
}

#[test]
fn sliding_cost_above_the_limit_never_passes() {
    let q = quota(3, 10 * SECOND, Algorithm::SlidingWindow);
    let (s, v) = decide(None, 12_000, q, 4);
    assert!(!v.allowed);
    assert_eq!(v.retry_after_ms, 8_000 + 10_000);
    for later in [12_001, 20_000, 30_000, 100_000] {
        assert!(!decide(Some(s), later, q, 4).1.allowed);
    }
}

#[test]
fn bucket_worked_example_with_an_inexact_emission_interval() {
    // 3 per second: T = 333.33 ms, slots start at 0, 334, 667, 1 000, 1 334 ...
    let q = quota(3, SECOND, Algorithm::TokenBucket);
    let (s, v) = run(q, None, &[(10_000, 1); 4]);
    assert_eq!(allowed(&v), [true, true, true, false]);
    assert_eq!(
        v.iter().map(|v| v.remaining).collect::<Vec<_>>(),
        [2, 1, 0, 0]
    );
    // Slot 30 at 10 s, three units: the bucket is full again from slot 33, at 11 000.
    assert_eq!(s, Some(LimitState::Bucket { tat_slot: 33 }));
    assert_eq!(ttl_ms(s.unwrap(), 10_000, q), 1_000);
    assert_eq!(
        (v[0].reset_ms, v[1].reset_ms, v[2].reset_ms),
        (334, 667, 1_000)
    );
    assert_eq!(v[3].retry_after_ms, 334);
    let (_, v) = decide(s, 10_333, q, 1);
    assert!(!v.allowed);
    let (s, v) = decide(s, 10_334, q, 1);
    assert_eq!(
        v,
        Verdict {
            allowed: true,
            remaining: 0,
            reset_ms: 1_000,
            retry_after_ms: 0
        }
    );
    // Full again (tat 11 334); a request of 2 waits for two slots to drain, until slot 33 at 11 000.
    let (_, v) = decide(Some(s), 10_400, q, 2);
    assert_eq!((v.allowed, v.retry_after_ms), (false, 600));
}

#[test]
fn bucket_with_more_units_than_ms_is_exact() {
    // 10 000 per second: 10 units per ms, slots of 0.1 ms.
    let q = quota(10_000, SECOND, Algorithm::TokenBucket);
    let (s, v) = run(q, None, &[(5_000_000, 1); 10_001]);
    // A burst of exactly L at one instant.
    assert!(v[..10_000].iter().all(|v| v.allowed));
    assert_eq!((v[0].remaining, v[9_999].remaining), (9_999, 0));
    assert_eq!((v[0].reset_ms, v[9_999].reset_ms), (1, SECOND));
    assert_eq!(
        s,
        Some(LimitState::Bucket {
            tat_slot: 50_000_000 + 10_000
        })
    );
    // The next ms brings 10 slots back.
    assert_eq!((v[10_000].allowed, v[10_000].retry_after_ms), (false, 1));
    let (_, v) = run(q, s, &[(5_000_001, 1); 11]);
    assert_eq!(allowed(&v), [[true; 10].as_slice(), &[false]].concat());
    // Sub-ms costs: 3 units take 0.3 ms; 3 333 of them fit at one instant.
    let (_, v) = run(q, None, &[(5_000_000, 3); 3_334]);
    assert_eq!(v.iter().filter(|v| v.allowed).count(), 3_333);
    assert_eq!((v[3_332].remaining, v[3_333].retry_after_ms), (1, 1));

    // What a node absorbs is exact too, and matches deciding it.
    let s = absorb(None, 5_000_000, q, 9_995);
    assert_eq!(
        s,
        LimitState::Bucket {
            tat_slot: 50_009_995
        }
    );
    assert_eq!(ttl_ms(s, 5_000_000, q), SECOND);
    assert!(decide(Some(s), 5_000_000, q, 5).1.allowed);
    let (_, v) = decide(Some(s), 5_000_000, q, 6);
    assert_eq!((v.allowed, v.retry_after_ms), (false, 1));
    let (decided, _) = run(q, Some(s), &[(5_000_000, 2), (5_000_000, 3)]);
    assert_eq!(Some(absorb(Some(s), 5_000_000, q, 5)), decided);
    // A state past its slot counts from now.
    assert_eq!(
        absorb(Some(s), 6_000_000, q, 1),
        LimitState::Bucket {
            tat_slot: 60_000_001
        }
    );

    // 7 per 3 ms: slots of 3/7 ms start at 0, 1, 1, 2, 2, 3, 3, 3 ...
    let q = quota(7, 3, Algorithm::TokenBucket);
    let (s, v) = run(q, None, &[(30, 1); 8]);
    assert_eq!(allowed(&v), [[true; 7].as_slice(), &[false]].concat());
    assert_eq!(s, Some(LimitState::Bucket { tat_slot: 70 + 7 }));
    // slot(31) = 72: 2 free; slot(32) = 74: 4 free.
    assert_eq!(v[7].retry_after_ms, 1);
    let (_, v) = run(q, s, &[(31, 1); 3]);
    assert_eq!(allowed(&v), [true, true, false]);
    let (_, v) = run(q, s, &[(32, 4), (32, 1)]);
    assert_eq!(allowed(&v), [true, false]);
}

#[test]
fn a_state_of_another_algorithm_counts_as_none() {
    let states = [
        LimitState::Fixed {
            window_start_ms: 60_000,
            count: 100,
        },
        LimitState::Sliding {
            window_start_ms: 60_000,
            current: 100,
            previous: 100,
        },
        LimitState::Bucket {
            tat_slot: 1_000_000,
        },
    ];
    for (algorithm, own) in [
        (Algorithm::FixedWindow, 0),
        (Algorithm::SlidingWindow, 1),
        (Algorithm::TokenBucket, 2),
    ] {
        let q = quota(10, 60 * SECOND, algorithm);
        for (i, &state) in states.iter().enumerate() {
            if i != own {
                assert_eq!(
                    decide(Some(state), 61_000, q, 1),
                    decide(None, 61_000, q, 1)
                );
                assert_eq!(
                    absorb(Some(state), 61_000, q, 3),
                    absorb(None, 61_000, q, 3)
                );
            }
        }
    }
}

#[test]
fn a_zero_limit_denies_everything_and_a_zero_window_counts_as_one_ms() {
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ] {
        let (s, v) = run(
            quota(0, SECOND, algorithm),
            None,
            &[(5_000, 1), (50_000, 1)],
        );
        assert_eq!(allowed(&v), [false, false], "{algorithm:?}");
        assert!(v.iter().all(|v| v.retry_after_ms >= 1));
        let s = absorb(s, 60_000, quota(0, SECOND, algorithm), 0);
        assert!(ttl_ms(s, 60_000, quota(0, SECOND, algorithm)) <= 2 * SECOND);
        assert_eq!(
            run(quota(2, 0, algorithm), None, &[(7, 1); 3]),
            run(quota(2, 1, algorithm), None, &[(7, 1); 3]),
            "{algorithm:?}"
        );
    }
}

proptest! {
    #[test]
    fn fixed_allows_exactly_limit_per_window_at_one_instant(
        limit in 1u64..200, w in 1u64..100_000_000, now in 0u64..2_000_000_000_000, extra in 1usize..20,
    ) {
        let q = quota(limit, w, Algorithm::FixedWindow);
        let n = usize::try_from(limit).unwrap() + extra;
        let (s, v) = run(q, None, &vec![(now, 1); n]);
        prop_assert!(v.iter().take(n - extra).all(|v| v.allowed));
        prop_assert!(v.iter().skip(n - extra).all(|v| !v.allowed));
        let next = Window::containing(now, w).end_ms(w);
        let (_, v) = run(q, s, &vec![(next, 1); n]);
        prop_assert_eq!(v.iter().filter(|v| v.allowed).count(), n - extra);
    }

    #[test]
    fn sliding_never_allows_more_than_limit_within_one_aligned_window(
        (q, requests) in scenario(Just(Algorithm::SlidingWindow), 1..=30, 1..=5_000),
    ) {
        let (_, v) = run(q, None, &requests);
        let mut per_window = std::collections::HashMap::<u64, u64>::new();
        for (&(now, cost), v) in requests.iter().zip(&v) {
            if v.allowed {
                *per_window.entry(Window::containing(now, q.window_ms).start_ms).or_default() += cost;
            }
        }
        prop_assert!(per_window.values().all(|&n| n <= q.limit), "{:?}", per_window);
    }

    #[test]
    fn sliding_allows_at_most_twice_the_limit_over_any_window_length_interval(
        (q, requests) in scenario(Just(Algorithm::SlidingWindow), 1..=30, 1..=5_000),
    ) {
        let (_, v) = run(q, None, &requests);
        for &(from, _) in &requests {
            let in_interval: u64 = requests
                .iter()
                .zip(&v)
                .filter(|((now, _), v)| v.allowed && (from..from + q.window_ms).contains(now))
                .map(|((_, cost), _)| cost)
                .sum();
            prop_assert!(in_interval <= 2 * q.limit);
        }
    }

    #[test]
    fn sliding_steady_traffic_keeps_the_estimate_within_the_limit(
        limit in 1u64..50, w in 1u64..10_000, period in 1u64..3_000, start in 0u64..2_000_000_000_000,
    ) {
        let q = quota(limit, w, Algorithm::SlidingWindow);
        let mut state = None;
        let mut passed = 0;
        for k in 0..300 {
            let now = start + k * period;
            let (s, v) = decide(state, now, q, 1);
            state = Some(s);
            if v.allowed {
                passed += 1;
                prop_assert!(sliding_estimate_times_w(s, now, w) <= u128::from(limit) * u128::from(w));
            }
        }
        prop_assert!(passed > 0);
    }

    #[test]
    fn bucket_allows_a_burst_of_exactly_limit_from_empty(
        // Fewer or more units than ms.
        (limit, w) in (1u64..2_000).prop_flat_map(|limit| (Just(limit), prop_oneof![1..=limit, limit..=100_000])),
        now in 0u64..2_000_000_000_000,
    ) {
        let q = quota(limit, w, Algorithm::TokenBucket);
        let n = usize::try_from(limit).unwrap();
        let (_, v) = run(q, None, &vec![(now, 1); n + 1]);
        prop_assert!(v[..n].iter().all(|v| v.allowed));
        prop_assert!(!v[n].allowed);
        prop_assert_eq!(v[n - 1].remaining, 0);
        prop_assert_eq!(v[0].remaining, limit - 1);
        prop_assert!(v[n - 1].reset_ms <= w);
    }

    #[test]
    fn bucket_sustains_the_steady_rate_forever(
        // Fewer or more units than ms.
        (limit, w) in (1u64..100).prop_flat_map(|limit| (Just(limit), prop_oneof![1..=limit, limit..=100_000])),
        start in 0u64..2_000_000_000_000,
    ) {
        let q = quota(limit, w, Algorithm::TokenBucket);
        // A full burst at the start of every w ms...
        let mut state = None;
        for n in 0..50 {
            for _ in 0..limit {
                let (s, v) = decide(state, start + n * w, q, 1);
                prop_assert!(v.allowed);
                state = Some(s);
            }
        }
        // ...or one unit every w / L ms, rounded up to the ms.
        let mut state = None;
        for k in 0..20 * limit {
            let now = start + (k * w).div_ceil(limit);
            let (s, v) = decide(state, now, q, 1);
            prop_assert!(v.allowed, "request {} at +{} ms denied", k, now - start);
            state = Some(s);
        }
    }

    #[test]
    fn bucket_never_allows_more_than_limit_plus_the_refill_over_any_interval(
        // Fewer or more units than ms.
        (q, requests) in scenario(Just(Algorithm::TokenBucket), 1..=2_000, 1..=2_000),
    ) {
        let (_, v) = run(q, None, &requests);
        let (limit, w) = (u128::from(q.limit), u128::from(q.window_ms));
        for i in 0..requests.len() {
            let mut passed = 0u128;
            for j in i..requests.len() {
                if v[j].allowed {
                    passed += u128::from(requests[j].1);
                }
                // passed <= L + d * L / w + 1
                let d = u128::from(requests[j].0 - requests[i].0);
                prop_assert!(passed * w <= limit * w + d * limit + w, "{} units in {} ms", passed, d);
            }
        }
    }

    #[test]
    fn retry_after_is_exact_for_every_algorithm(
        (q, requests) in scenario(any_algorithm(), 1..=40, 1..=5_000),
        bucket_limit in 1u64..20_000,
        gap in 0u64..3_000,
        cost_share in 0.0f64..=1.0,
    ) {
        // The bucket also with more units than ms.
        let q = if q.algorithm == Algorithm::TokenBucket { quota(bucket_limit, q.window_ms, q.algorithm) } else { q };
        let (state, _) = run(q, None, &requests);
        let now = requests.last().unwrap().0 + gap;
        let cost = ((q.limit as f64 * cost_share) as u64).clamp(1, q.limit);
        let (after, v) = decide(state, now, q, cost);
        if v.allowed {
            prop_assert_eq!(v.retry_after_ms, 0);
        } else {
            let t = v.retry_after_ms;
            prop_assert!(t >= 1);
            prop_assert!(decide(Some(after), now + t, q, cost).1.allowed, "not allowed after {} ms", t);
            if t > 1 {
                prop_assert!(!decide(Some(after), now + t - 1, q, cost).1.allowed, "allowed before {} ms", t);
            }
        }
    }

    #[test]
    fn remaining_counts_the_unit_requests_still_allowed_at_that_instant(
        (q, requests) in scenario(any_algorithm(), 1..=40, 40..=5_000),
        bucket_limit in 1u64..20_000,
    ) {
        // The bucket also with more units than ms.
        let q = if q.algorithm == Algorithm::TokenBucket { quota(bucket_limit, q.window_ms, q.algorithm) } else { q };
        let (state, _) = run(q, None, &requests);
        let now = requests.last().unwrap().0;
        let (state, v) = decide(state, now, q, 1);
        if v.allowed {
            let n = usize::try_from(v.remaining).unwrap();
            let (_, more) = run(q, Some(state), &vec![(now, 1); n + 1]);
            prop_assert!(more[..n].iter().all(|v| v.allowed));
            prop_assert!(!more[n].allowed);
        } else {
            prop_assert_eq!(v.remaining, 0);
        }
    }

    #[test]
    fn absorbing_units_matches_deciding_them_when_all_were_allowed(
        (q, requests) in scenario(any_algorithm(), 1..=40, 40..=5_000),
        costs in prop::collection::vec(1u64..5, 1..10),
        gap in 0u64..3_000,
        bucket_limit in 1u64..20_000,
    ) {
        // The bucket also with more units than ms.
        let q = if q.algorithm == Algorithm::TokenBucket { quota(bucket_limit, q.window_ms, q.algorithm) } else { q };
        let (state, _) = run(q, None, &requests);
        let now = requests.last().unwrap().0 + gap;
        let batch: Vec<_> = costs.iter().map(|&cost| (now, cost)).collect();
        let (decided, v) = run(q, state, &batch);
        let absorbed = absorb(state, now, q, costs.iter().sum());
        if v.iter().all(|v| v.allowed) {
            prop_assert_eq!(Some(absorbed), decided);
        }
        for (later, cost) in [(now, 1), (now + q.window_ms / 2, 2), (now + q.window_ms, 1)] {
            if v.iter().all(|v| v.allowed) {
                prop_assert_eq!(decide(Some(absorbed), later, q, cost), decide(decided, later, q, cost));
            }
        }
    }

    #[test]
    fn a_state_past_its_ttl_decides_like_none(
        (q, requests) in scenario(any_algorithm(), 1..=40, 1..=5_000),
        extra in prop_oneof![Just(0u64), 0u64..10_000],
        cost in 1u64..50,
        bucket_limit in 1u64..20_000,
    ) {
        // The bucket also with more units than ms.
        let q = if q.algorithm == Algorithm::TokenBucket { quota(bucket_limit, q.window_ms, q.algorithm) } else { q };
        let (state, _) = run(q, None, &requests);
        let state = state.unwrap();
        let now = requests.last().unwrap().0;
        let later = now + ttl_ms(state, now, q) + extra;
        prop_assert_eq!(decide(Some(state), later, q, cost).1, decide(None, later, q, cost).1);
        prop_assert_eq!(ttl_ms(state, later, q), 0);
    }

    #[test]
    fn extreme_values_neither_panic_nor_break_the_verdict_contract(
        algorithm in any_algorithm(),
        limit in prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>()],
        w in prop_oneof![Just(u64::MAX), Just(0u64), any::<u64>()],
        now in prop_oneof![Just(u64::MAX), any::<u64>()],
        cost in prop_oneof![Just(u64::MAX), any::<u64>()],
        stored in any::<(u64, u64, u64)>(),
    ) {
        let q = quota(limit, w, algorithm);
        let (a, b, c) = stored;
        for state in [
            None,
            Some(LimitState::Fixed { window_start_ms: a, count: b }),
            Some(LimitState::Sliding { window_start_ms: a, current: b, previous: c }),
            Some(LimitState::Bucket { tat_slot: a }),
        ] {
            let (s, v) = decide(state, now, q, cost);
            prop_assert_eq!(v.allowed, v.retry_after_ms == 0);
            prop_assert!(v.allowed || v.remaining == 0);
            let _ = ttl_ms(s, now, q);
            let s = absorb(state, now, q, cost);
            let _ = ttl_ms(s, now, q);
        }
    }
}
