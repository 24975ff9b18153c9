//! Wasmgate's data path: listeners (TCP and TLS, HTTP/1.1 and HTTP/2), the router, upstream pools
//! and the streaming reverse proxy.
//!
//! ```text
//! worker ─▶ listener ─▶ proxy ─▶ session ─▶ router, plugins, upstream pool ─▶ service
//! ```
//!
//! [`Gateway::bind`] opens every listener (so a caller knows the addresses, and a port clash is an
//! error before anything serves); [`Gateway::run`] starts the `gateway.workers` threads that
//! serve (see `worker.rs`: one single-threaded event loop per CPU, each with its own upstream
//! pools), and when its shutdown future resolves, drains in-flight requests for the configured
//! grace period.

mod balancer;
mod body;
mod breaker;
mod cache;
mod canonical;
mod compression;
mod control;
mod discovery;
mod forward;
mod framing;
mod health;
mod listener;
mod mirror;
mod pool;
mod proxy;
mod record;
mod rescue;
mod retry;
mod router;
mod session;
mod snapshot;
mod spans;
mod split;
mod stall;
mod tls;
mod trusted;
mod tunnel;
mod upstream;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmgate_config::{AccessLog as AccessLogConfig, Config, Diagnostic};
use wasmgate_runtime::{Loader, Runtime, SharedState, StateHealth};
use wasmgate_telemetry::{AccessLog, Metrics, Tracing};

pub use body::{Body, BodyError};
pub use control::{Active, Control, Reloaded};
pub use router::{Match, Router};
pub use snapshot::PendingRestart;

use listener::{Listener, Server};
use proxy::Proxy;
use snapshot::Snapshot;
use worker::Workers;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is valid TOML with valid keys, but something in it cannot be used: a
    /// plugin, a certificate, a listening address that is taken, an access log that cannot be
    /// opened.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<Diagnostic>),
    /// The worker threads (`gateway.workers`) could not be started.
    #[error("cannot start {workers} worker threads (gateway.workers): {source}")]
    Workers {
        /// How many were asked for.
        workers: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One listening address of a running gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddr {
    /// The address, with the real port when the config asked for port 0.
    pub addr: SocketAddr,
    /// Whether it is a TLS listener.
    pub tls: bool,
}

/// One upstream's targets as the data path sees them now (the admin API's `GET /upstreams`).
#[derive(Debug, Clone)]
pub struct UpstreamState {
    /// The upstream's name.
    pub name: String,
    /// Its `balance`, as written in the config.
    pub balance: &'static str,
    /// Its targets, in config order.
    pub targets: Vec<TargetState>,
    /// Its circuit breaker: the limits and what counts against them now.
    pub breaker: BreakerState,
}

/// The circuit breaker of an [`UpstreamState`]. Every count is for the whole gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerState {
    /// `max_connections`; `None` without the limit.
    pub max_connections: Option<usize>,
    /// Connections open to the upstream's targets now; `None` without `max_connections`,
    /// since they are counted for that limit only.
    pub open_connections: Option<usize>,
    /// `max_pending`; `None` without `max_connections` (nothing waits without it).
    pub max_pending: Option<usize>,
    /// Requests waiting for a connection to free up now.
    pub pending: usize,
    /// `max_requests`; `None` without the limit.
    pub max_requests: Option<usize>,
    /// Requests in flight to the upstream now, as `max_requests` counts them (from when the
    /// upstream takes one until its response ends, retries included); without the limit, the
    /// sum of its targets' `in_flight`.
    pub in_flight: usize,
}

/// One target of an [`UpstreamState`].
#[derive(Debug, Clone)]
pub struct TargetState {
    /// The address as written (`https://` kept), or for a target discovered from a name, the
    /// address discovered.
    pub address: String,
    /// For a discovered target: the `targets` entry whose name resolved to it.
    pub discovered_from: Option<String>,
    /// Its `weight`.
    pub weight: u32,
    /// How much longer it is ejected; `None` when it takes requests.
    pub ejected_for: Option<Duration>,
    /// Its ejections in a row (the next one lasts one `base_ejection` longer).
    pub ejections_in_row: u32,
    /// Connect failures and timeouts in a row since its last success.
    pub errors_in_row: u32,
    /// 5xx responses in a row since its last success.
    pub server_errors_in_row: u32,
    /// Requests sent to it whose response has not ended.
    pub in_flight: usize,
    /// Its active health check state: `Some(true)` passing, `Some(false)` failing (it takes no
    /// requests), `None` when the upstream has no `health_check` or no probe has run yet.
    pub check: Option<bool>,
}

/// What outlives configuration reloads: the plugin loader (engine, compiled plugins, shared state)
/// and the metrics.
#[derive(Debug, Clone)]
pub struct Services {
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    loader: Arc<Loader>,
    state: Arc<SharedState>,
}

impl Default for Services {
    fn default() -> Self {
        Self::new()
    }
}

impl Services {
    /// Fresh metrics, an in-memory shared state and no compiled plugins.
    pub fn new() -> Self {
        let metrics = Arc::new(Metrics::new());
        Self::with_state(metrics, SharedState::memory())
    }

    /// Fresh metrics, the shared state `config` names (`[gateway.state]`) and no compiled
    /// plugins. Redis connections open in the background: Redis being down does not stop the
    /// gateway from starting. Must run inside the tokio runtime the gateway is controlled from.
    pub fn for_config(config: &Config) -> Result<Self, Diagnostic> {
        let metrics = Arc::new(Metrics::new());
        let state = SharedState::from_config(&config.gateway.state, metrics.state().clone())
            .map_err(|e| config.diagnostic("gateway.state", e.to_string()))?;
        Ok(Self::with_state(metrics, state))
    }

    fn with_state(metrics: Arc<Metrics>, state: SharedState) -> Self {
        let state = Arc::new(state);
        let loader = Arc::new(Loader::new(state.clone(), metrics.clone()));
        Self {
            metrics,
            loader,
            state,
        }
    }

    /// The shared state's backend and whether it answers.
    pub fn state_health(&self) -> StateHealth {
        self.state.health()
    }
}

/// A configuration checked beyond what [`wasmgate_config::load`] checks alone: TLS keys usable
/// by rustls and matching their certificates, every plugin loaded and `init`ed with its config.
#[derive(Debug)]
pub struct Prepared {
    /// The configuration.
    pub config: Config,
    /// Its plugins, when a route has any.
    pub runtime: Option<Runtime>,
    tls: Option<Arc<ServerConfig>>,
    /// Each upstream's TLS client configuration, in the order of `config.upstreams`.
    upstream_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// The resolver discovering targets given by name, when any is.
    resolver: Option<discovery::Resolver>,
}

/// Prepares `config` with a loader of its own, without opening any socket (`wasmgate check`).
pub async fn prepare(config: Config) -> Result<Prepared, Vec<Diagnostic>> {
    prepare_with(&Services::new(), config).await
}

/// Prepares `config` with the gateway's long-lived `services` (at start and on reload).
pub async fn prepare_with(
    services: &Services,
    config: Config,
) -> Result<Prepared, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let tls = match &config.gateway.tls {
        Some(t) => match tls::server_config(&config, t) {
            Ok(c) => Some(c),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        },
        None => None,
    };
    let upstream_tls = config
        .upstreams
        .iter()
        .map(|u| {
            tls::client_config(&config, u).unwrap_or_else(|problem| {
                problems.push(problem);
                None
            })
        })
        .collect();
    let named = config.upstreams.iter().find_map(|u| {
        u.targets
            .iter()
            .position(wasmgate_config::Target::is_named)
            .map(|i| format!("upstreams.{}.targets[{i}]", u.name))
    });
    let resolver = match named {
        Some(key) => match discovery::Resolver::new(&config.gateway.dns) {
            Ok(resolver) => Some(resolver),
            Err(e) => {
                let key = if config.gateway.dns.nameservers.is_empty() {
                    key
                } else {
                    "gateway.dns".to_owned()
                };
                problems.push(config.diagnostic(&key, e));
                None
            }
        },
        None => None,
    };
    let runtime = if config.routes.iter().any(|r| !r.plugins.is_empty()) {
        match services.loader.load(&config).await {
            Ok(rt) => Some(rt),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        }
    } else {
        None
    };
    if problems.is_empty() {
        Ok(Prepared {
            config,
            runtime,
            tls,
            upstream_tls,
            resolver,
        })
    } else {
        problems.sort_by_key(|d| d.location);
        Err(problems)
    }
}

/// A gateway with its listeners bound, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    server: Arc<Server>,
    tracing: Option<Tracing>,
    listeners: Vec<Arc<Listener>>,
    shutdown_grace: Duration,
    workers: usize,
    control: Control,
}

impl Gateway {
    /// Loads `config`'s plugins, builds the data path and binds every listener. Must run inside
    /// a tokio runtime.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let services = Services::for_config(&config).map_err(|d| StartError::Config(vec![d]))?;
        let prepared = prepare_with(&services, config)
            .await
            .map_err(StartError::Config)?;
        Self::bind_prepared(prepared, services).await
    }

    /// [`Gateway::bind`] with a configuration already prepared by [`prepare_with`] on `services`.
    pub async fn bind_prepared(prepared: Prepared, services: Services) -> Result<Self, StartError> {
        let Prepared {
            config,
            runtime,
            tls,
            upstream_tls,
            resolver,
        } = prepared;
        let tls = tls.map(|t| Arc::new(ArcSwap::new(t)));
        let bind = |key: &str, addr: SocketAddr| {
            bind(addr).map_err(|e| {
                StartError::Config(vec![
                    config.diagnostic(key, format!("cannot listen on {addr}: {e}")),
                ])
            })
        };
        let mut listeners = Vec::new();
        for addr in &config.gateway.listen {
            listeners.push(Arc::new(Listener {
                tcp: bind("gateway.listen", *addr)?,
                tls: None,
                open: Arc::default(),
            }));
        }
        if let (Some(t), Some(server_config)) = (&config.gateway.tls, &tls) {
            for addr in &t.listen {
                listeners.push(Arc::new(Listener {
                    tcp: bind("gateway.tls.listen", *addr)?,
                    tls: Some(server_config.clone()),
                    open: Arc::default(),
                }));
            }
        }
        let access_log = Arc::new(
            open_access_log(&config.gateway.access_log, &services.metrics).map_err(|e| {
                let target = match &config.gateway.access_log {
                    AccessLogConfig::File(p) => p.display().to_string(),
                    _ => "stdout".into(),
                };
                StartError::Config(vec![config.diagnostic(
                    "gateway.access_log",
                    format!("cannot open the access log {target}: {e}"),
                )])
            })?,
        );
        let tracing = match &config.gateway.tracing {
            Some(t) => Some(
                Tracing::start(t, tokio::runtime::Handle::current()).map_err(|e| {
                    StartError::Config(vec![
                        config.diagnostic("gateway.tracing.endpoint", e.to_string()),
                    ])
                })?,
            ),
            None => None,
        };
        let config = Arc::new(config);
        let mut snapshot = Snapshot::new(
            config.clone(),
            runtime,
            &upstream_tls,
            resolver,
            &services.metrics,
            access_log,
            None,
        );
        snapshot.https_port = listeners
            .iter()
            .find(|l| l.tls.is_some())
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        snapshot.tracing = tracing.clone();
        snapshot.start();
        let proxy = Arc::new(Proxy::new(snapshot));
        let server = Arc::new(Server::new(
            proxy.clone(),
            &config.gateway,
            &services.metrics,
        ));
        Ok(Self {
            server,
            tracing,
            listeners,
            shutdown_grace: config.gateway.shutdown_grace,
            workers: config.gateway.workers,
            control: Control {
                proxy,
                services,
                tls,
                reloading: Arc::new(tokio::sync::Mutex::new(())),
                started: Arc::new(config.gateway.clone()),
            },
        })
    }

    /// The bound addresses, in config order (plain listeners first, then TLS).
    pub fn local_addrs(&self) -> Vec<BoundAddr> {
        self.listeners
            .iter()
            .filter_map(|l| {
                Some(BoundAddr {
                    addr: l.local_addr().ok()?,
                    tls: l.tls.is_some(),
                })
            })
            .collect()
    }

    /// A handle to reload and inspect the running gateway.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Serves on `gateway.workers` threads until `shutdown` resolves; then stops accepting, lets
    /// in-flight requests finish for up to the configured `shutdown_grace`, and returns whether
    /// every connection finished within the grace period. Fails only when the worker threads
    /// cannot be started. Dropping the future stops the workers at once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<bool, StartError> {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let workers = Workers::start(self.workers, self.listeners, &self.server, &stop, &tracker)
            .map_err(|source| StartError::Workers {
            workers: self.workers,
            source,
        })?;
        shutdown.await;
        tracing::info!(
            grace = ?self.shutdown_grace,
            "shutting down: listeners closed, draining in-flight requests"
        );
        stop.cancel();
        tracker.close();
        let drained = match tokio::time::timeout(self.shutdown_grace, tracker.wait()).await {
            Ok(()) => {
                tracing::info!("all connections drained");
                true
            }
            Err(_) => {
                tracing::warn!(
                    connections = tracker.len(),
                    "grace period over, closing the remaining connections"
                );
                false
            }
        };
        workers.stop().await;
        if let Some(tracing) = self.tracing {
            // The spans of the last requests are still queued.
            let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
        }
        Ok(drained)
    }
}

fn open_access_log(destination: &AccessLogConfig, metrics: &Metrics) -> std::io::Result<AccessLog> {
    match destination {
        AccessLogConfig::Off => Ok(AccessLog::off()),
        AccessLogConfig::Stdout => AccessLog::stdout(metrics),
        AccessLogConfig::File(path) => AccessLog::file(path, metrics),
    }
}

/// A listening socket, not yet registered with any event loop: each worker registers its own
/// handle.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}
