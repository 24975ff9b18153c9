//! Upstreams: targets chosen by the upstream's `balance`, each with its connection pool, passive
//! ejection.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;

use wasmgate_config::{Balance, OutlierDetection};
use wasmgate_telemetry::{Metrics, TargetMetrics};

use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::balancer::{self, Ring, gcd};
use crate::body::InFlight;
use crate::pool::{Pool, Settings, Tls};

/// One `[upstreams.NAME]`, ready to take requests.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) targets: Vec<Target>,
    strategy: Strategy,
    /// Each target's weight, by index.
    weights: Box<[u32]>,
    /// Smooth weighted round-robin order, computed once: indices into `targets`. Also the
    /// order of retries, and of `hash` requests without a key.
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
    pub(crate) timeout: Duration,
    outlier: OutlierDetection,
    /// The `targets` entries this upstream was built from: a reload that keeps them (and
    /// `outlier_detection`) keeps the targets' health.
    defined: Vec<wasmgate_config::Target>,
    balance: &'static str,
    /// `max_requests` (0: none), and the requests in flight it limits.
    max_requests: usize,
    in_flight: Arc<AtomicUsize>,
    overflows: prometheus_client::metrics::counter::Counter,
}

#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) authority: Authority,
    /// `Host` naming the target (its address without the scheme's default port), built once.
    pub(crate) host: http::HeaderValue,
    pub(crate) metrics: TargetMetrics,
    /// The target's connections, per worker.
    pub(crate) pool: Arc<Pool>,
    /// Shared with the same target of the snapshot before when a reload kept the upstream's
    /// targets: an ejected target stays ejected across reloads.
    health: Arc<Health>,
    /// Requests sent to the target whose response has not ended yet (shared likewise).
    in_flight: Arc<AtomicUsize>,
}

/// What outlier detection knows of a target. Times are milliseconds since [`epoch`].
#[derive(Debug, Default)]
struct Health {
    /// Until when the target is skipped; 0 when healthy.
    ejected_until: AtomicU64,
    /// When its last ejection ended or ends.
    last_ejection_end: AtomicU64,
    /// Connect failures and timeouts in a row.
    errors_in_row: AtomicU32,
    /// 5xx responses in a row.
    server_errors_in_row: AtomicU32,
    /// Ejections in a row: each lasts one `base_ejection` longer than the one before.
    ejections: AtomicU32,
}

/// The process's clock origin for [`Health`] times, shared by every snapshot.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Target {
    /// Counts a request to this target in flight until the returned guard is dropped.
    pub(crate) fn begin(&self) -> InFlight {
        InFlight::begin(&self.in_flight)
    }
}

/// The algorithm of `balance`, with what it precomputes.
#[derive(Debug)]
enum Strategy {
    RoundRobin,
    LeastRequest,
    Random,
    Hash {
        on: wasmgate_config::HashOn,
        ring: Ring,
    },
}

impl Upstream {
    /// `client` is the TLS configuration for its `https://` targets (see
    /// [`client_config`](crate::tls::client_config)).
    /// `previous` is the upstream of the same name in the snapshot being replaced, if any: its
    /// targets' health is kept when the targets and `outlier_detection` are unchanged.
    pub(crate) fn new(
        config: &wasmgate_config::Upstream,
        client: Option<&Arc<rustls::ClientConfig>>,
        workers: usize,
        metrics: &Metrics,
        previous: Option<&Upstream>,
    ) -> Self {
        let kept = previous
            .filter(|p| p.defined == config.targets && p.outlier == config.outlier_detection);
        let settings = Settings {
            protocol: config.protocol,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle: config.pool_max_idle,
        };
        let weights: Vec<u32> = config.targets.iter().map(|t| t.weight).collect();
        Self {
            name: config.name.clone(),
            targets: config
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let metrics = metrics.target(&config.name, t.address.as_str());
                    let tls = match client {
                        Some(client) if t.tls => Some(Tls {
                            connector: TlsConnector::from(client.clone()),
                            upgrade_connector: TlsConnector::from(http1_only(client)),
                            server_name: server_name(config, &t.address),
                        }),
                        _ => None,
                    };
                    Target {
                        host: host_header(t),
                        authority: t.address.clone(),
                        pool: Arc::new(Pool::new(
                            t.address.clone(),
                            tls,
                            settings.clone(),
                            metrics.clone(),
                            workers,
                        )),
                        metrics,
                        health: kept.map_or_else(Arc::default, |p| p.targets[i].health.clone()),
                        in_flight: kept
                            .map_or_else(Arc::default, |p| p.targets[i].in_flight.clone()),
                    }
                })
                .collect(),
            strategy: match &config.balance {
                Balance::RoundRobin => Strategy::RoundRobin,
                Balance::LeastRequest => Strategy::LeastRequest,
                Balance::Random => Strategy::Random,
                Balance::Hash(on) => Strategy::Hash {
                    on: on.clone(),
                    ring: Ring::new(
                        config
                            .targets
                            .iter()
                            .map(|t| (t.address.as_str(), t.weight)),
                    ),
                },
            },
            schedule: smooth_weighted_schedule(&weights).into_boxed_slice(),
            weights: weights.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
            timeout: config.timeout,
            outlier: config.outlier_detection.clone(),
            defined: config.targets.clone(),
            balance: config.balance.as_str(),
            max_requests: config.max_requests as usize,
            in_flight: kept.map_or_else(Arc::default, |p| p.in_flight.clone()),
            overflows: metrics.upstream_overflows(&config.name),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn healthy(&self, target: &Target, now: u64) -> bool {
        let until = target.health.ejected_until.load(Ordering::Relaxed);
        until == 0 || until <= now
    }

    /// The target for a request, by the upstream's `balance`, skipping ejected targets while
    /// any is healthy (when none is, trying one beats refusing all traffic).
    pub(crate) fn pick(&self, req: &http::request::Parts, client: IpAddr) -> &Target {
        match &self.strategy {
            Strategy::RoundRobin => self.round_robin(),
            Strategy::Random => {
                let now = self.now_ms();
                let mut rng = rand::rng();
                let healthy = |i: usize| self.healthy(&self.targets[i], now);
                let index = balancer::weighted_random(&self.weights, healthy, &mut rng)
                    .or_else(|| balancer::weighted_random(&self.weights, |_| true, &mut rng))
                    .unwrap_or(0);
                &self.targets[index]
            }
            Strategy::LeastRequest => self.least_request(),
            Strategy::Hash { on, ring } => match balancer::request_key(on, req, client) {
                Some(key) => {
                    let now = self.now_ms();
                    let healthy = |i: usize| self.healthy(&self.targets[i], now);
                    let mut owners = ring.walk(key);
                    let first = owners.next().unwrap_or(0);
                    // With every target ejected, the walk would visit the whole ring in vain.
                    if healthy(first) || !(0..self.targets.len()).any(healthy) {
                        return &self.targets[first];
                    }
                    &self.targets[owners.find(|&i| healthy(i)).unwrap_or(first)]
                }
                None => self.round_robin(),
            },
        }
    }

    fn round_robin(&self) -> &Target {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let len = self.schedule.len();
        let first = &self.targets[self.schedule[start % len] as usize];
        if first.health.ejected_until.load(Ordering::Relaxed) == 0 {
            return first;
        }
        let now = self.now_ms();
        for step in 0..len {
            let t = &self.targets[self.schedule[(start + step) % len] as usize];
            if self.healthy(t, now) {
                return t;
            }
        }
        first
    }

    /// Power of two choices: two different targets drawn by weight, the less loaded one.
    fn least_request(&self) -> &Target {
        let now = self.now_ms();
        let mut rng = rand::rng();
        let healthy = |i: usize| self.healthy(&self.targets[i], now);
        let any_healthy = (0..self.targets.len()).any(healthy);
        let usable = |i: usize| !any_healthy || healthy(i);
        let Some(a) = balancer::weighted_random(&self.weights, usable, &mut rng) else {
            return &self.targets[0];
        };
        let Some(b) = balancer::weighted_random(&self.weights, |i| i != a && usable(i), &mut rng)
        else {
            return &self.targets[a];
        };
        let load = |i: usize| {
            (
                i,
                self.targets[i].in_flight.load(Ordering::Relaxed),
                self.weights[i],
            )
        };
        &self.targets[balancer::less_loaded(load(a), load(b))]
    }

    /// Another target than `failed`, for a retry: the next one in weighted order that is not
    /// ejected, or when every other one is, one of them all the same; `None` with one target.
    pub(crate) fn pick_other(&self, failed: &Target) -> Option<&Target> {
        if self.targets.len() < 2 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let len = self.schedule.len();
        let now = self.now_ms();
        let mut fallback = None;
        for step in 0..len {
            let t = &self.targets[self.schedule[(start + step) % len] as usize];
            if std::ptr::eq(t, failed) {
                continue;
            }
            if self.healthy(t, now) {
                return Some(t);
            }
            fallback.get_or_insert(t);
        }
        fallback
    }

    /// Counts a request in flight to the upstream, or refuses it when `max_requests` are
    /// already (`Err`, counted); `None` when the upstream has no limit.
    pub(crate) fn admit(&self) -> Result<Option<InFlight>, usize> {
        if self.max_requests == 0 {
            return Ok(None);
        }
        let admitted = InFlight::begin(&self.in_flight);
        if self.in_flight.load(Ordering::Relaxed) > self.max_requests {
            self.overflows.inc();
            return Err(self.max_requests);
        }
        Ok(Some(admitted))
    }

    /// What the upstream's targets look like now, for the admin API.
    pub(crate) fn state(&self) -> crate::UpstreamState {
        let now = self.now_ms();
        crate::UpstreamState {
            name: self.name.clone(),
            balance: self.balance,
            targets: self
                .targets
                .iter()
                .zip(&self.defined)
                .map(|(t, defined)| {
                    let until = t.health.ejected_until.load(Ordering::Relaxed);
                    crate::TargetState {
                        address: if defined.tls {
                            format!("https://{}", defined.address)
                        } else {
                            defined.address.to_string()
                        },
                        weight: defined.weight,
                        ejected_for: (until > now).then(|| Duration::from_millis(until - now)),
                        ejections_in_row: t.health.ejections.load(Ordering::Relaxed),
                        errors_in_row: t.health.errors_in_row.load(Ordering::Relaxed),
                        server_errors_in_row: t.health.server_errors_in_row.load(Ordering::Relaxed),
                        in_flight: t.in_flight.load(Ordering::Relaxed),
                    }
                })
                .collect(),
        }
    }

    /// Counts a failure of `target`, and ejects it when it has failed that way
    /// `outlier_detection` times in a row.
    pub(crate) fn failed(&self, target: &Target, failure: Failure) {
        let (in_row, other, threshold) = match failure {
            Failure::Error => (
                &target.health.errors_in_row,
                &target.health.server_errors_in_row,
                self.outlier.consecutive_errors,
            ),
            Failure::ServerError => (
                &target.health.server_errors_in_row,
                &target.health.errors_in_row,
                self.outlier.consecutive_5xx,
            ),
        };
        clear(other);
        if threshold == 0 || in_row.fetch_add(1, Ordering::Relaxed) + 1 < threshold {
            return;
        }
        self.eject(target, failure);
    }

    /// Skips `target` for `base_ejection` times its ejections in a row (at most `max_ejection`),
    /// unless that would eject more than `max_ejection_percent` of the targets (at least one may
    /// always be).
    fn eject(&self, target: &Target, failure: Failure) {
        let now = self.now_ms();
        if !self.healthy(target, now) {
            return;
        }
        let ejected = self
            .targets
            .iter()
            .filter(|t| !self.healthy(t, now))
            .count();
        let allowed =
            (self.targets.len() * self.outlier.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            tracing::debug!(
                upstream = %self.name,
                target = %target.authority,
                ejected,
                "not ejected: max_ejection_percent of the targets are ejected already"
            );
            return;
        }
        let times = target.health.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = self
            .outlier
            .base_ejection
            .saturating_mul(times)
            .min(self.outlier.max_ejection);
        let until = now + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        target
            .health
            .ejected_until
            .store(until.max(1), Ordering::Relaxed);
        target
            .health
            .last_ejection_end
            .store(until, Ordering::Relaxed);
        clear(&target.health.errors_in_row);
        clear(&target.health.server_errors_in_row);
        target.metrics.ejected();
        tracing::warn!(
            upstream = %self.name,
            target = %target.authority,
            ?duration,
            reason = failure.as_str(),
            "target ejected"
        );
    }

    /// Records that `target` answered without a server error: its failure counts start over,
    /// an ejection ends, and once it has served for a `base_ejection` since its last ejection
    /// ended, the next ejection is a first one again.
    pub(crate) fn succeeded(&self, target: &Target) {
        clear(&target.health.errors_in_row);
        clear(&target.health.server_errors_in_row);
        if target.health.ejected_until.load(Ordering::Relaxed) != 0 {
            target.health.ejected_until.store(0, Ordering::Relaxed);
        }
        if target.health.ejections.load(Ordering::Relaxed) != 0 {
            let base = u64::try_from(self.outlier.base_ejection.as_millis()).unwrap_or(u64::MAX);
            let last = target.health.last_ejection_end.load(Ordering::Relaxed);
            if self.now_ms() >= last.saturating_add(base) {
                target.health.ejections.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// What counts against a target for `outlier_detection`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    /// No connection could be made, or no response came within the timeout.
    Error,
    /// A 5xx response.
    ServerError,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "consecutive_errors",
            Self::ServerError => "consecutive_5xx",
        }
    }
}

/// Zeroes a counter without writing (and so sharing its cache line) when it is zero already.
fn clear(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// `Host` for a target: its address, without `:80` for `http` and `:443` for `https`.
fn host_header(target: &wasmgate_config::Target) -> http::HeaderValue {
    let default_port = if target.tls { 443 } else { 80 };
    let address = &target.address;
    let text = if address.port_u16() == Some(default_port) {
        address.host()
    } else {
        address.as_str()
    };
    http::HeaderValue::from_str(text).unwrap_or(http::HeaderValue::from_static(""))
}

/// `client` offering only HTTP/1.1 by ALPN, for `Upgrade` requests.
fn http1_only(client: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut client = (**client).clone();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(client)
}

/// The name an `https://` target's certificate must carry: `tls.server_name`, else the target's
/// host (a DNS name or an IP address; `wasmgate check` refuses a host that is neither).
fn server_name(config: &wasmgate_config::Upstream, target: &Authority) -> ServerName<'static> {
    let name = config
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .unwrap_or_else(|| {
            target
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
    ServerName::try_from(name)
        .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
}

/// nginx's smooth weighted round-robin, unrolled into one period: each target appears `weight`
/// times (weights divided by their gcd), interleaved as evenly as possible.
pub(crate) fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .unwrap_or((0, &0));
        current[best] -= total;
        schedule.push(u32::try_from(best).unwrap_or(0));
    }
    if schedule.is_empty() {
        schedule.push(0);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn host_leaves_out_the_scheme_s_default_port_only() {
        let target = |address: &str, tls| wasmgate_config::Target {
            address: address.parse().expect("authority"),
            tls,
            weight: 1,
        };
        assert_eq!(host_header(&target("api:80", false)), "api");
        assert_eq!(host_header(&target("api:443", false)), "api:443");
        assert_eq!(host_header(&target("api:443", true)), "api");
        assert_eq!(host_header(&target("api:80", true)), "api:80");
        assert_eq!(
            host_header(&target("10.0.0.1:8080", false)),
            "10.0.0.1:8080"
        );
    }

    #[test]
    fn schedule_interleaves_like_nginx() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(smooth_weighted_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_schedule(&[1, 1]), [0, 1]);
        assert_eq!(smooth_weighted_schedule(&[2, 4]), [1, 0, 1]);
    }

    proptest! {
        #[test]
        fn each_target_gets_its_weight_share(weights in prop::collection::vec(1u32..50, 1..6)) {
            let schedule = smooth_weighted_schedule(&weights);
            let g = weights.iter().copied().fold(0, gcd);
            for (i, w) in weights.iter().enumerate() {
                let count = schedule.iter().filter(|&&s| s as usize == i).count() as u32;
                prop_assert_eq!(count, w / g);
            }
        }

        #[test]
        fn every_prefix_of_the_schedule_stays_close_to_the_weights(weights in prop::collection::vec(1u32..50, 1..6)) {
            // Smoothness: after any k picks, each target has had its ideal share k*w/total within
            // two picks (a burst to one target would break this; measured worst case is ~1.03).
            let schedule = smooth_weighted_schedule(&weights);
            let g = weights.iter().copied().fold(0, gcd);
            let reduced: Vec<f64> = weights.iter().map(|w| f64::from(w / g)).collect();
            let total: f64 = reduced.iter().sum();
            let mut counts = vec![0f64; weights.len()];
            for (k, &pick) in schedule.iter().enumerate() {
                counts[pick as usize] += 1.0;
                for (i, w) in reduced.iter().enumerate() {
                    let ideal = (k + 1) as f64 * w / total;
                    prop_assert!((counts[i] - ideal).abs() < 2.0, "target {} after {} picks in {:?}", i, k + 1, schedule);
                }
            }
        }
    }
}
