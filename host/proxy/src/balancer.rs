//! How an upstream chooses a target for each request (`balance`): weighted random, power of
//! two choices over requests in flight, and consistent hashing on a ring. Round-robin's
//! schedule lives with the upstream, which also uses it for retries and as the hash's
//! fallback.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;

use http::header::COOKIE;
use wasmgate_config::HashOn;

/// Points each unit of weight puts on the ring: enough that each target's share of the keys
/// stays within a few percent of its weight's (Ketama uses 160 per server).
const POINTS_PER_WEIGHT: u32 = 160;

/// The most points a ring has (4 MiB): beyond it, every weight unit gets fewer points.
const MAX_POINTS: u64 = 1 << 18;

/// A consistent-hash ring: each target owns the keys that hash between the point before one of
/// its points and that point. A target's points depend only on its address and weight, so
/// adding or removing a target moves only the keys it takes or had.
#[derive(Debug)]
pub(crate) struct Ring {
    /// `(point, target index)`, sorted by point.
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// A ring of `targets` given as `(address, weight)`. Weights are not reduced by a common
    /// divisor: a target's points must not depend on the other targets' weights. Only when the
    /// total weight is above 1638 (`MAX_POINTS` / 160) do all targets get fewer points per unit.
    pub(crate) fn new<'a>(targets: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let targets: Vec<(&str, u32)> = targets.into_iter().collect();
        let total: u64 = targets.iter().map(|&(_, w)| u64::from(w)).sum();
        let per_weight = if total * u64::from(POINTS_PER_WEIGHT) <= MAX_POINTS {
            POINTS_PER_WEIGHT
        } else {
            u32::try_from(MAX_POINTS / total.max(1)).unwrap_or(1).max(1)
        };
        let mut points = Vec::new();
        for (index, &(address, weight)) in targets.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            for replica in 0..weight.max(1) * per_weight {
                points.push((hash_of(&(address, replica)), index));
            }
        }
        points.sort_unstable();
        Self {
            points: points.into_boxed_slice(),
        }
    }

    /// The targets in the order a key hashing to `key` tries them: its owner first, then the
    /// owners of the following points (with repeats), once around the ring.
    pub(crate) fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&(point, _)| point < key);
        let (after, before) = self.points.split_at(start);
        before.iter().chain(after).map(|&(_, index)| index as usize)
    }
}

/// The request's key for `on`, hashed; `None` when the request has none (no such header or
/// cookie).
pub(crate) fn request_key(on: &HashOn, req: &http::request::Parts, client: IpAddr) -> Option<u64> {
    match on {
        HashOn::Ip => Some(hash_of(&client)),
        HashOn::Path => Some(hash_of(req.uri.path())),
        HashOn::Header(name) => req.headers.get(name).map(|v| hash_of(v.as_bytes())),
        HashOn::Cookie(name) => req
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| hash_of(c.value())),
    }
}

/// An index drawn at random with probability proportional to its weight, among those `usable`
/// says may be drawn; `None` when none may.
pub(crate) fn weighted_random(
    weights: &[u32],
    usable: impl Fn(usize) -> bool,
    rng: &mut impl rand::Rng,
) -> Option<usize> {
    let total: u64 = (0..weights.len())
        .filter(|&i| usable(i))
        .map(|i| u64::from(weights[i]))
        .sum();
    if total == 0 {
        return None;
    }
    let mut draw = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if !usable(i) {
            continue;
        }
        let w = u64::from(w);
        if draw < w {
            return Some(i);
        }
        draw -= w;
    }
    None
}

/// Of `a` and `b`, the one with fewer requests in flight for its weight (`a` on a tie).
pub(crate) fn less_loaded(a: (usize, usize, u32), b: (usize, usize, u32)) -> usize {
    let (a_index, a_in_flight, a_weight) = a;
    let (b_index, b_in_flight, b_weight) = b;
    // in_flight / weight compared without division.
    if (b_in_flight as u64) * u64::from(a_weight) < (a_in_flight as u64) * u64::from(b_weight) {
        b_index
    } else {
        a_index
    }
}

/// SipHash with fixed keys: the same key gets the same point on every gateway running the same
/// build, so several gateways behind a load balancer agree on each key's target.
fn hash_of(value: &(impl Hash + ?Sized)) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

pub(crate) fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn ring(targets: &[(String, u32)]) -> Ring {
        Ring::new(targets.iter().map(|(a, w)| (a.as_str(), *w)))
    }

    fn owner(ring: &Ring, targets: &[(String, u32)], key: u64) -> String {
        let index = ring.walk(key).next().expect("a point");
        targets[index].0.clone()
    }

    fn targets(count: usize, weights: &[u32]) -> Vec<(String, u32)> {
        (0..count)
            .map(|i| (format!("10.0.0.{i}:80"), weights[i % weights.len()]))
            .collect()
    }

    proptest! {
        #[test]
        fn removing_a_target_moves_only_its_own_keys(
            count in 2usize..8,
            weights in prop::collection::vec(1u32..5, 1..4),
            removed in 0usize..8,
            keys in prop::collection::vec(any::<u64>(), 200),
        ) {
            let all = targets(count, &weights);
            let removed = removed % count;
            let mut rest = all.clone();
            let gone = rest.remove(removed).0;
            let (before, after) = (ring(&all), ring(&rest));
            for key in keys {
                let was = owner(&before, &all, key);
                let is = owner(&after, &rest, key);
                if was != gone {
                    prop_assert_eq!(was, is, "a key of a remaining target moved");
                }
            }
        }

        #[test]
        fn adding_a_target_moves_keys_only_to_it(
            count in 1usize..8,
            weights in prop::collection::vec(1u32..5, 1..4),
            keys in prop::collection::vec(any::<u64>(), 200),
        ) {
            let before_targets = targets(count, &weights);
            let mut after_targets = before_targets.clone();
            after_targets.push(("10.0.1.1:80".to_owned(), 2));
            let (before, after) = (ring(&before_targets), ring(&after_targets));
            for key in keys {
                let was = owner(&before, &before_targets, key);
                let is = owner(&after, &after_targets, key);
                if was != is {
                    prop_assert_eq!(is, "10.0.1.1:80", "a key moved between old targets");
                }
            }
        }

        #[test]
        fn weighted_random_draws_only_usable_indices(
            weights in prop::collection::vec(0u32..5, 1..8),
            unusable in prop::collection::vec(any::<bool>(), 8),
            seed in any::<u64>(),
        ) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let usable = |i: usize| !unusable[i];
            match weighted_random(&weights, usable, &mut rng) {
                Some(i) => prop_assert!(usable(i) && weights[i] > 0),
                None => prop_assert!((0..weights.len()).all(|i| !usable(i) || weights[i] == 0)),
            }
        }
    }

    #[test]
    fn each_target_owns_about_its_weight_share_of_the_keys() {
        let all = vec![
            ("10.0.0.1:80".to_owned(), 1),
            ("10.0.0.2:80".to_owned(), 3),
            ("10.0.0.3:80".to_owned(), 2),
        ];
        let ring = ring(&all);
        let mut counts = [0u32; 3];
        for key in 0..60_000u64 {
            counts[ring.walk(hash_of(&key)).next().expect("a point")] += 1;
        }
        for (i, expected) in [10_000.0, 30_000.0, 20_000.0].into_iter().enumerate() {
            let share = f64::from(counts[i]) / expected;
            assert!((0.85..1.15).contains(&share), "target {i}: {counts:?}");
        }
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[weighted_random(&[1, 3], |_| true, &mut rng).expect("drawn")] += 1;
        }
        let share = f64::from(counts[1]) / 40_000.0;
        assert!((0.73..0.77).contains(&share), "{counts:?}");
    }

    #[test]
    fn the_less_loaded_target_for_its_weight_wins() {
        assert_eq!(less_loaded((0, 3, 1), (1, 1, 1)), 1);
        assert_eq!(
            less_loaded((0, 1, 1), (1, 1, 1)),
            0,
            "a tie keeps the first"
        );
        // 4 in flight on weight 4 is lighter than 2 on weight 1.
        assert_eq!(less_loaded((0, 2, 1), (1, 4, 4)), 1);
    }

    #[test]
    fn path_keys_ignore_the_query_and_ip_keys_follow_the_address() {
        let parts = |uri: &str| {
            http::Request::builder()
                .uri(uri)
                .body(())
                .expect("request")
                .into_parts()
                .0
        };
        let client = IpAddr::from([10, 0, 0, 7]);
        let path = |uri| request_key(&HashOn::Path, &parts(uri), client);
        assert_eq!(path("/a/b?x=1"), path("/a/b?y=2"));
        assert_ne!(path("/a/b"), path("/a/c"));
        let ip = |client| request_key(&HashOn::Ip, &parts("/"), client);
        assert_eq!(ip(client), ip(client));
        assert_ne!(ip(client), ip(IpAddr::from([10, 0, 0, 8])));
        assert!(ip(client).is_some());
    }

    #[test]
    fn cookie_keys_come_from_any_cookie_header() {
        let req = http::Request::builder()
            .header("cookie", "a=1; session=abc")
            .header("cookie", "other=2")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let client = IpAddr::from([127, 0, 0, 1]);
        let on = HashOn::Cookie("session".into());
        assert_eq!(request_key(&on, &req, client), Some(hash_of("abc")));
        let on = HashOn::Cookie("other".into());
        assert_eq!(request_key(&on, &req, client), Some(hash_of("2")));
        let on = HashOn::Cookie("missing".into());
        assert_eq!(request_key(&on, &req, client), None);
    }
}
