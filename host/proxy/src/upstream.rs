//! Upstreams: targets chosen by the upstream's `balance`, each with its connection pool;
//! passive ejection (outlier detection), and the state the health checker keeps.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use rustls_pki_types::ServerName;
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;
use wasmgate_config::{Balance, HealthCheck, OutlierDetection};
use wasmgate_telemetry::{Metrics, TargetMetrics};

use crate::balancer::{self, Ring, gcd};
use crate::body::InFlight;
use crate::breaker::Breaker;
use crate::pool::{Pool, Settings, Tls};
use crate::retry::RetryPolicy;

/// One `[upstreams.NAME]`, ready to take requests.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) name: String,
    /// The targets now: shared with the upstream's health checker.
    set: Arc<ArcSwap<TargetSet>>,
    strategy: Strategy,
    cursor: AtomicUsize,
    pub(crate) timeout: Duration,
    pub(crate) retries: RetryPolicy,
    outlier: OutlierDetection,
    /// How its targets are built: from the `targets` entries, which a reload must keep (with
    /// `outlier_detection`) to keep the targets' health.
    blueprint: Arc<Blueprint>,
    health_check: Option<HealthCheck>,
    balance: &'static str,
    /// `max_requests` (0: none), and the requests in flight it limits.
    max_requests: usize,
    in_flight: Arc<AtomicUsize>,
    overflows: prometheus_client::metrics::counter::Counter,
    /// The health checker and the discovery of named targets, while this upstream serves.
    background: Mutex<Vec<AbortHandle>>,
    /// Whether this upstream's health checker may still record probes: cleared by
    /// [`stop`](Self::stop), because an aborted task can still finish a probe it had begun, and
    /// its result would then land in the state the next checker (or none) owns.
    checking: Arc<AtomicBool>,
}

/// An upstream's targets, with what choosing among them needs.
#[derive(Debug)]
pub(crate) struct TargetSet {
    pub(crate) targets: Vec<Target>,
    /// Each target's weight, by index.
    weights: Box<[u32]>,
    /// Smooth weighted round-robin order, computed once: indices into `targets`. Also the
    /// order of retries, and of `hash` requests without a key.
    schedule: Box<[u32]>,
    /// For `balance = "hash"`.
    ring: Option<Ring>,
}

#[derive(Debug)]
pub(crate) struct Target {
    /// The address as written in `targets`: what `Host`, SNI and the logs name.
    pub(crate) authority: Authority,
    /// Where the target comes from, and the address connected to.
    endpoint: Endpoint,
    /// The target's name in metrics, the admin API and the hash ring: its address as written,
    /// or for a discovered one, the address discovered (`10.0.0.3:8080`).
    pub(crate) key: String,
    /// `Host` naming the target (its address without the scheme's default port), built once.
    pub(crate) host: http::HeaderValue,
    pub(crate) metrics: TargetMetrics,
    /// The target's connections, per worker.
    pub(crate) pool: Arc<Pool>,
    /// Shared with the same target of the set before when a reload or a discovery kept it: an
    /// ejected target stays ejected.
    pub(crate) health: Arc<Health>,
    /// Requests sent to the target whose response has not ended yet (shared likewise).
    in_flight: Arc<AtomicUsize>,
}

/// One target of a set: the `targets` entry it comes from and, when that names a host that
/// was resolved, one of its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Endpoint {
    pub(crate) defined: usize,
    pub(crate) address: Option<SocketAddr>,
}

/// What building an upstream's targets needs, kept for when discovery changes them.
#[derive(Debug)]
pub(crate) struct Blueprint {
    pub(crate) name: String,
    pub(crate) defined: Vec<wasmgate_config::Target>,
    /// Each defined target's TLS settings, by index.
    tls: Vec<Option<Tls>>,
    settings: Settings,
    workers: usize,
    hash: bool,
    metrics: Arc<Metrics>,
}

impl Blueprint {
    /// The targets of `endpoints` (sorted), keeping the health and in-flight counts of those
    /// `previous` (of another configuration's upstream) has too; their connections are new.
    pub(crate) fn build(&self, endpoints: &[Endpoint], previous: Option<&TargetSet>) -> TargetSet {
        self.assemble(endpoints, previous, false)
    }

    /// The targets of `endpoints` (sorted) after a discovery changed them: those `previous`
    /// (built from this blueprint) has too keep their health, in-flight counts and connections.
    pub(crate) fn rebuild(&self, endpoints: &[Endpoint], previous: &TargetSet) -> TargetSet {
        self.assemble(endpoints, Some(previous), true)
    }

    fn assemble(
        &self,
        endpoints: &[Endpoint],
        previous: Option<&TargetSet>,
        keep_pools: bool,
    ) -> TargetSet {
        let targets: Vec<Target> = endpoints
            .iter()
            .map(|&endpoint| {
                let defined = &self.defined[endpoint.defined];
                let key = endpoint
                    .address
                    .map_or_else(|| defined.address.to_string(), |a| a.to_string());
                let before =
                    previous.and_then(|set| set.targets.iter().find(|t| t.endpoint == endpoint));
                let metrics = self.metrics.target(&self.name, &key);
                let pool = match before {
                    // Same blueprint: same TLS and pool settings, so the connections still fit.
                    Some(before) if keep_pools => before.pool.clone(),
                    _ => Arc::new(Pool::new(
                        defined.address.clone(),
                        endpoint.address,
                        self.tls[endpoint.defined].clone(),
                        self.settings.clone(),
                        metrics.clone(),
                        self.workers,
                    )),
                };
                Target {
                    host: host_header(defined),
                    authority: defined.address.clone(),
                    endpoint,
                    pool,
                    metrics,
                    key,
                    health: before.map_or_else(Arc::default, |b| b.health.clone()),
                    in_flight: before.map_or_else(Arc::default, |b| b.in_flight.clone()),
                }
            })
            .collect();
        let weights = endpoints
            .iter()
            .map(|e| self.defined[e.defined].weight)
            .collect();
        TargetSet::new(targets, weights, self.hash)
    }

    /// The entries of `targets` whose host is a name to discover, by index.
    pub(crate) fn names(&self) -> Vec<usize> {
        (0..self.defined.len())
            .filter(|&i| self.defined[i].is_named())
            .collect()
    }
}

/// What outlier detection and the health checker know of a target. Times are milliseconds
/// since [`epoch`].
#[derive(Debug, Default)]
pub(crate) struct Health {
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
    /// Whether the target fails its active health check: skipped until it passes again.
    pub(crate) down: AtomicBool,
    /// Probes passed, and failed, in a row.
    pub(crate) passes_in_row: AtomicU32,
    pub(crate) fails_in_row: AtomicU32,
    /// Whether an active health check has run on the target (for the admin API).
    pub(crate) checked: AtomicBool,
}

impl Health {
    /// Forgets what active health checks found: for an upstream that no longer has
    /// `health_check`, since no checker is left to bring a target marked down back.
    fn forget_checks(&self) {
        self.down.store(false, Ordering::Relaxed);
        self.passes_in_row.store(0, Ordering::Relaxed);
        self.fails_in_row.store(0, Ordering::Relaxed);
        self.checked.store(false, Ordering::Relaxed);
    }

    fn usable(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until == 0 || until <= now) && !self.down.load(Ordering::Relaxed)
    }

    /// Ends an ejection by outlier detection: the target answered.
    pub(crate) fn uneject(&self) {
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// The process's clock origin for [`Health`] times, shared by every snapshot.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Target {
    /// Counts a request to this target in flight until the returned guard is dropped.
    pub(crate) fn begin(&self) -> InFlight {
        InFlight::begin(&self.in_flight)
    }
}

/// The algorithm of `balance`.
#[derive(Debug)]
enum Strategy {
    RoundRobin,
    LeastRequest,
    Random,
    Hash(wasmgate_config::HashOn),
}

impl TargetSet {
    fn new(targets: Vec<Target>, weights: Vec<u32>, hash: bool) -> Self {
        let ring = hash.then(|| {
            Ring::new(
                targets
                    .iter()
                    .zip(&weights)
                    .map(|(t, &w)| (t.key.as_str(), w)),
            )
        });
        Self {
            targets,
            schedule: smooth_weighted_schedule(&weights).into_boxed_slice(),
            weights: weights.into_boxed_slice(),
            ring,
        }
    }

    fn usable(&self, i: usize, now: u64) -> bool {
        self.targets[i].health.usable(now)
    }

    /// Where each target comes from, in order.
    pub(crate) fn endpoints(&self) -> Vec<Endpoint> {
        self.targets.iter().map(|t| t.endpoint).collect()
    }

    fn any_usable(&self, now: u64) -> bool {
        (0..self.targets.len()).any(|i| self.usable(i, now))
    }
}

impl Upstream {
    /// `client` is the TLS configuration for its `https://` targets (see
    /// [`client_config`](crate::tls::client_config)).
    /// `previous` is the upstream of the same name in the snapshot being replaced, if any: its
    /// targets' health is kept when the targets and `outlier_detection` are unchanged, and its
    /// connection breaker (the connections it counts open and the requests waiting for one)
    /// when the targets, `max_connections` and `max_pending` are.
    pub(crate) fn new(
        config: &wasmgate_config::Upstream,
        client: Option<&Arc<rustls::ClientConfig>>,
        workers: usize,
        metrics: &Arc<Metrics>,
        previous: Option<&Upstream>,
    ) -> Self {
        let kept = previous.filter(|p| {
            p.blueprint.defined == config.targets && p.outlier == config.outlier_detection
        });
        let limits = (config.max_connections as usize, config.max_pending as usize);
        // The old pools' connections stay open (busy or idle) until the old snapshot is gone,
        // and a fresh count would let the new pools open `max_connections` more beside them.
        let kept_breaker = previous
            .filter(|p| p.blueprint.defined == config.targets)
            .and_then(|p| p.blueprint.settings.breaker.clone())
            .filter(|b| b.limits() == limits);
        let blueprint = Blueprint {
            name: config.name.clone(),
            defined: config.targets.clone(),
            tls: config
                .targets
                .iter()
                .map(|t| match client {
                    Some(client) if t.tls => Some(Tls {
                        connector: TlsConnector::from(client.clone()),
                        upgrade_connector: TlsConnector::from(http1_only(client)),
                        server_name: server_name(config, t),
                    }),
                    _ => None,
                })
                .collect(),
            settings: Settings {
                protocol: config.protocol,
                connect_timeout: config.connect_timeout,
                idle_timeout: config.pool_idle_timeout,
                max_idle: config.pool_max_idle,
                breaker: (config.max_connections > 0).then(|| {
                    kept_breaker.unwrap_or_else(|| {
                        Arc::new(Breaker::new(
                            limits.0,
                            limits.1,
                            metrics.upstream_overflows(&config.name),
                            metrics.upstream_pending(&config.name),
                        ))
                    })
                }),
            },
            workers,
            hash: matches!(config.balance, Balance::Hash(_)),
            metrics: metrics.clone(),
        };
        // A kept upstream keeps the addresses discovered so far, and the targets' health.
        let previous_set = kept.map(|p| p.set.load_full());
        let endpoints = match &previous_set {
            Some(set) => set.endpoints(),
            None => (0..config.targets.len())
                .map(|defined| Endpoint {
                    defined,
                    address: None,
                })
                .collect(),
        };
        let set = blueprint.build(&endpoints, previous_set.as_deref());
        Self {
            name: config.name.clone(),
            set: Arc::new(ArcSwap::from_pointee(set)),
            strategy: match &config.balance {
                Balance::RoundRobin => Strategy::RoundRobin,
                Balance::LeastRequest => Strategy::LeastRequest,
                Balance::Random => Strategy::Random,
                Balance::Hash(on) => Strategy::Hash(on.clone()),
            },
            cursor: AtomicUsize::new(0),
            timeout: config.timeout,
            retries: RetryPolicy::new(&config.retries, metrics.retry_overflows(&config.name)),
            outlier: config.outlier_detection.clone(),
            blueprint: Arc::new(blueprint),
            health_check: config.health_check.clone(),
            balance: config.balance.as_str(),
            max_requests: config.max_requests as usize,
            in_flight: kept.map_or_else(Arc::default, |p| p.in_flight.clone()),
            overflows: metrics.upstream_overflows(&config.name),
            background: Mutex::new(Vec::new()),
            checking: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Starts what keeps the upstream's targets current: the discovery of targets given by
    /// name (with `resolver`), and the health checker if it has `health_check`. They run on the
    /// current tokio runtime until [`stop`](Self::stop) or the upstream is dropped.
    pub(crate) fn start(&self, resolver: Option<&crate::discovery::Resolver>) {
        let mut background = lock(&self.background);
        if let Some(resolver) = resolver
            && !self.blueprint.names().is_empty()
        {
            let task = tokio::spawn(crate::discovery::run(
                self.blueprint.clone(),
                self.set.clone(),
                resolver.clone(),
            ));
            background.push(task.abort_handle());
        }
        if let Some(check) = &self.health_check {
            let task = tokio::spawn(crate::health::run(
                self.name.clone(),
                check.clone(),
                self.set.clone(),
                self.blueprint.metrics.clone(),
                self.checking.clone(),
            ));
            background.push(task.abort_handle());
        } else {
            // A reload that removed `health_check` kept the targets' state, and with it the
            // last checker's verdicts: a target it marked down would stay out for good.
            for target in &self.set.load().targets {
                if target.health.checked.load(Ordering::Relaxed) {
                    target.health.forget_checks();
                    self.blueprint
                        .metrics
                        .target_checks(&self.name, &target.key)
                        .state(true, false);
                }
            }
        }
    }

    /// Stops what [`start`](Self::start) started: its successor, from a reload, has its own.
    /// Once this returns, no probe of this upstream's checker changes a target's state.
    pub(crate) fn stop(&self) {
        self.checking.store(false, Ordering::Release);
        for task in lock(&self.background).drain(..) {
            task.abort();
        }
    }

    /// The targets as they are now.
    pub(crate) fn targets(&self) -> arc_swap::Guard<Arc<TargetSet>> {
        self.set.load()
    }

    /// The target for a request, by the upstream's `balance`, skipping ejected and unhealthy
    /// targets while any is usable (when none is, trying one beats refusing all traffic).
    pub(crate) fn pick(
        &self,
        set: &TargetSet,
        req: &http::request::Parts,
        client: IpAddr,
    ) -> usize {
        match &self.strategy {
            Strategy::RoundRobin => self.round_robin(set),
            Strategy::Random => {
                let now = now_ms();
                let mut rng = rand::rng();
                balancer::weighted_random(&set.weights, |i| set.usable(i, now), &mut rng)
                    .or_else(|| balancer::weighted_random(&set.weights, |_| true, &mut rng))
                    .unwrap_or(0)
            }
            Strategy::LeastRequest => least_request(set),
            Strategy::Hash(on) => match (balancer::request_key(on, req, client), &set.ring) {
                (Some(key), Some(ring)) => {
                    let now = now_ms();
                    let mut owners = ring.walk(key);
                    let first = owners.next().unwrap_or(0);
                    // With every target out, the walk would visit the whole ring in vain.
                    if set.usable(first, now) || !set.any_usable(now) {
                        return first;
                    }
                    owners.find(|&i| set.usable(i, now)).unwrap_or(first)
                }
                _ => self.round_robin(set),
            },
        }
    }

    fn round_robin(&self, set: &TargetSet) -> usize {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let len = set.schedule.len();
        let first = set.schedule[start % len] as usize;
        let health = &set.targets[first].health;
        if health.ejected_until.load(Ordering::Relaxed) == 0 && !health.down.load(Ordering::Relaxed)
        {
            return first;
        }
        let now = now_ms();
        (0..len)
            .map(|step| set.schedule[(start + step) % len] as usize)
            .find(|&i| set.usable(i, now))
            .unwrap_or(first)
    }

    /// A target for a retry: the next one in weighted order that has not been tried and is
    /// usable; else one not tried; else, with every target tried, a usable one (a retry may go
    /// back to a target when the upstream has only one, or all failed once).
    pub(crate) fn pick_retry(&self, set: &TargetSet, tried: &[usize]) -> usize {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let len = set.schedule.len();
        let now = now_ms();
        let order = || (0..len).map(move |step| set.schedule[(start + step) % len] as usize);
        order()
            .find(|i| !tried.contains(i) && set.usable(*i, now))
            .or_else(|| order().find(|i| !tried.contains(i)))
            .or_else(|| order().find(|&i| set.usable(i, now)))
            .unwrap_or_else(|| set.schedule[start % len] as usize)
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

    /// Requests in flight to the upstream's targets now.
    pub(crate) fn active_requests(&self, set: &TargetSet) -> usize {
        set.targets
            .iter()
            .map(|t| t.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// What the upstream's targets look like now, for the admin API.
    pub(crate) fn state(&self) -> crate::UpstreamState {
        let now = now_ms();
        let set = self.set.load();
        let breaker = self.blueprint.settings.breaker.as_ref();
        let counts = breaker.map(|b| b.counts());
        crate::UpstreamState {
            name: self.name.clone(),
            balance: self.balance,
            breaker: crate::BreakerState {
                max_connections: breaker.map(|b| b.limits().0),
                open_connections: counts.map(|c| c.0),
                max_pending: breaker.map(|b| b.limits().1),
                pending: counts.map_or(0, |c| c.1),
                max_requests: (self.max_requests > 0).then_some(self.max_requests),
                // Without `max_requests` the upstream's own count is not kept (it would cost
                // every request a write shared by all workers).
                in_flight: if self.max_requests > 0 {
                    self.in_flight
                        .load(Ordering::Relaxed)
                        .min(self.max_requests)
                } else {
                    self.active_requests(&set)
                },
            },
            targets: set
                .targets
                .iter()
                .map(|t| {
                    let defined = &self.blueprint.defined[t.endpoint.defined];
                    let until = t.health.ejected_until.load(Ordering::Relaxed);
                    let scheme = if defined.tls { "https://" } else { "" };
                    crate::TargetState {
                        address: format!("{scheme}{}", t.key),
                        discovered_from: t
                            .endpoint
                            .address
                            .map(|_| format!("{scheme}{}", defined.address)),
                        weight: defined.weight,
                        ejected_for: (until > now).then(|| Duration::from_millis(until - now)),
                        ejections_in_row: t.health.ejections.load(Ordering::Relaxed),
                        errors_in_row: t.health.errors_in_row.load(Ordering::Relaxed),
                        server_errors_in_row: t.health.server_errors_in_row.load(Ordering::Relaxed),
                        in_flight: t.in_flight.load(Ordering::Relaxed),
                        check: (self.health_check.is_some()
                            && t.health.checked.load(Ordering::Relaxed))
                        .then(|| !t.health.down.load(Ordering::Relaxed)),
                    }
                })
                .collect(),
        }
    }

    /// Counts a failure of `target`, and ejects it when it has failed that way
    /// `outlier_detection` times in a row.
    pub(crate) fn failed(&self, set: &TargetSet, target: &Target, failure: Failure) {
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
        self.eject(set, target, failure);
    }

    /// Skips `target` for `base_ejection` times its ejections in a row (at most `max_ejection`),
    /// unless that would eject more than `max_ejection_percent` of the targets (at least one may
    /// always be).
    fn eject(&self, set: &TargetSet, target: &Target, failure: Failure) {
        let now = now_ms();
        let ejected_now = |t: &Target| {
            let until = t.health.ejected_until.load(Ordering::Relaxed);
            until != 0 && until > now
        };
        if ejected_now(target) {
            return;
        }
        let ejected = set.targets.iter().filter(|t| ejected_now(t)).count();
        let allowed = (set.targets.len() * self.outlier.max_ejection_percent as usize / 100).max(1);
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
        target.health.uneject();
        if target.health.ejections.load(Ordering::Relaxed) != 0 {
            let base = u64::try_from(self.outlier.base_ejection.as_millis()).unwrap_or(u64::MAX);
            let last = target.health.last_ejection_end.load(Ordering::Relaxed);
            if now_ms() >= last.saturating_add(base) {
                target.health.ejections.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Power of two choices: two different targets drawn by weight, the less loaded one.
fn least_request(set: &TargetSet) -> usize {
    let now = now_ms();
    let mut rng = rand::rng();
    let any_usable = set.any_usable(now);
    let usable = |i: usize| !any_usable || set.usable(i, now);
    let Some(a) = balancer::weighted_random(&set.weights, usable, &mut rng) else {
        return 0;
    };
    let Some(b) = balancer::weighted_random(&set.weights, |i| i != a && usable(i), &mut rng) else {
        return a;
    };
    let load = |i: usize| {
        (
            i,
            set.targets[i].in_flight.load(Ordering::Relaxed),
            set.weights[i],
        )
    };
    balancer::less_loaded(load(a), load(b))
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
fn server_name(
    config: &wasmgate_config::Upstream,
    target: &wasmgate_config::Target,
) -> ServerName<'static> {
    let name = config
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .unwrap_or_else(|| target.host().to_owned());
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
