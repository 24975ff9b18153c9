//! Traffic splits: a route's `upstreams = [...]`, choosing the upstream of each request by a pin
//! (a header or cookie value), else by weight, at random or sticky by a hash of a request key.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::COOKIE;
use http::{HeaderName, HeaderValue};
use wasmgate_config::HashOn;
use wasmgate_telemetry::{Metrics, SplitMetrics};

use crate::balancer::{request_key, weighted_random};
use crate::upstream::Upstream;

/// A route's split, built once per configuration.
#[derive(Debug)]
pub(crate) struct Split {
    backends: Vec<Backend>,
    /// Each backend's weight, by index, for the draw.
    weights: Vec<u32>,
    sticky: Option<HashOn>,
}

#[derive(Debug)]
struct Backend {
    upstream: Arc<Upstream>,
    headers: Vec<(HeaderName, HeaderValue)>,
    cookies: Vec<(String, String)>,
    metrics: SplitMetrics,
}

impl Split {
    pub(crate) fn new(
        config: &wasmgate_config::Split,
        upstreams: &[Arc<Upstream>],
        route: &str,
        metrics: &Metrics,
    ) -> Self {
        let backends = config
            .backends
            .iter()
            .map(|b| {
                let upstream = upstreams[b.upstream].clone();
                Backend {
                    metrics: metrics.split(route, &upstream.name),
                    upstream,
                    headers: b.headers.clone(),
                    cookies: b.cookies.clone(),
                }
            })
            .collect();
        Self {
            backends,
            weights: config.backends.iter().map(|b| b.weight).collect(),
            sticky: config.sticky.clone(),
        }
    }

    /// The upstream for a request: the first backend pinning it, else one by weight.
    pub(crate) fn choose(&self, parts: &http::request::Parts, client: IpAddr) -> &Arc<Upstream> {
        if let Some(pinned) = self.backends.iter().find(|b| b.pins(parts)) {
            pinned.metrics.pinned.inc();
            return &pinned.upstream;
        }
        let drawn = match self
            .sticky
            .as_ref()
            .and_then(|on| request_key(on, parts, client))
        {
            // Decorrelated from the same key's hash for a `balance = "hash"` upstream, so a
            // split band does not map onto a subset of that upstream's targets.
            Some(key) => by_point(&self.weights, mix(key)),
            None => weighted_random(&self.weights, |_| true, &mut rand::rng()),
        };
        // The config guarantees a positive total weight; the first backend is a safe answer
        // should that ever not hold.
        let backend = &self.backends[drawn.unwrap_or(0)];
        backend.metrics.weighted.inc();
        &backend.upstream
    }
}

impl Backend {
    /// Whether every header and cookie of the backend is on the request with its value (never
    /// for a backend without any).
    fn pins(&self, parts: &http::request::Parts) -> bool {
        if self.headers.is_empty() && self.cookies.is_empty() {
            return false;
        }
        let headers = self
            .headers
            .iter()
            .all(|(name, value)| parts.headers.get_all(name).iter().any(|v| v == value));
        headers
            && self.cookies.iter().all(|(name, value)| {
                parts
                    .headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(cookie::Cookie::split_parse)
                    .filter_map(Result::ok)
                    .any(|c| c.name() == name && c.value() == value)
            })
    }
}

/// The backend whose share of the weights holds `point` (a hash spread over the whole `u64`
/// range, scaled to the total): changing one weight moves only the keys between the old and new
/// edges of the shares.
fn by_point(weights: &[u32], point: u64) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let mut at = ((u128::from(point) * u128::from(total)) >> 64) as u64;
    for (i, &w) in weights.iter().enumerate() {
        let w = u64::from(w);
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    None
}

/// SplitMix64's finalizer: spreads a hash over all bits again, differently from its input.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn points_fall_in_shares_proportional_to_weights() {
        let weights = [90, 10];
        let mut counts = [0u32; 2];
        for k in 0..100_000u64 {
            counts[by_point(&weights, mix(k)).unwrap()] += 1;
        }
        assert!((89_000..91_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn a_zero_weight_backend_gets_no_drawn_request() {
        for k in 0..10_000u64 {
            assert_eq!(by_point(&[0, 5, 0], mix(k)), Some(1));
        }
        assert_eq!(by_point(&[0, 0], 7), None);
    }

    proptest! {
        /// Moving weight from one backend to another moves only keys between those two: no
        /// key leaves or joins a third.
        #[test]
        fn shifting_weight_between_two_backends_moves_no_other_key(
            a in 0u32..1000, b in 1u32..1000, c in 0u32..1000, shift in 0u32..1000, key in any::<u64>(),
        ) {
            let shift = shift.min(a);
            let before = by_point(&[a, b, c], key).unwrap();
            let after = by_point(&[a - shift, b + shift, c], key).unwrap();
            if before != after {
                prop_assert_eq!((before, after), (0, 1));
            }
        }
    }
}
