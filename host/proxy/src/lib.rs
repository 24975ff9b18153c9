//! Wasmgate's data path: listeners (TCP and TLS, HTTP/1.1 and HTTP/2), the router, upstream pools
//! and the streaming reverse proxy.
//!
//! ```text
//! listener ─▶ proxy ─▶ router ─▶ upstream pool ─▶ service
//! ```
//!
//! [`Gateway::bind`] opens every listener (so a caller knows the addresses, and a port clash is an
//! error before anything serves); [`Gateway::run`] serves until its shutdown future resolves, then
//! drains in-flight requests for the configured grace period.

mod body;
mod forward;
mod listener;
mod proxy;
mod rescue;
mod router;
mod tls;
mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmgate_config::{Config, Diagnostic};
use wasmgate_runtime::{MemoryState, Runtime};

pub use body::{Body, BodyError};
pub use router::{Match, Router};

use listener::{Listener, Server};
use proxy::{Proxy, Snapshot};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is valid TOML with valid keys, but something in it cannot be used.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<Diagnostic>),
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
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

/// Checks what [`wasmgate_config::load`] cannot check alone, without opening any socket: TLS keys
/// usable by rustls and matching their certificates, and every plugin loaded and `init`ed with its
/// config. Returns the loaded plugin runtime for [`Gateway::bind`].
pub async fn prepare(config: &Config) -> Result<Option<Runtime>, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    if let Some(tls) = &config.gateway.tls
        && let Err(mut p) = tls::server_config(config, &tls.certificates)
    {
        problems.append(&mut p);
    }
    let runtime = if config.routes.iter().any(|r| !r.plugins.is_empty()) {
        match Runtime::load(config, Arc::new(MemoryState::new())).await {
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
        Ok(runtime)
    } else {
        problems.sort_by_key(|d| d.location);
        Err(problems)
    }
}

/// A gateway with its listeners bound, ready to [`run`](Gateway::run).
#[derive(Debug)]
pub struct Gateway {
    server: Arc<Server>,
    listeners: Vec<Listener>,
    shutdown_grace: Duration,
}

impl Gateway {
    /// Loads `config`'s plugins, builds the data path and binds every listener. Must run inside
    /// a tokio runtime.
    pub async fn bind(config: &Config) -> Result<Self, StartError> {
        let runtime = prepare(config).await.map_err(StartError::Config)?;
        Self::bind_prepared(config, runtime).await
    }

    /// [`Gateway::bind`] with plugins already loaded by [`prepare`].
    pub async fn bind_prepared(
        config: &Config,
        runtime: Option<Runtime>,
    ) -> Result<Self, StartError> {
        let tls = match &config.gateway.tls {
            Some(t) => Some((
                t,
                TlsAcceptor::from(
                    tls::server_config(config, &t.certificates).map_err(StartError::Config)?,
                ),
            )),
            None => None,
        };
        let mut listeners = Vec::new();
        for addr in &config.gateway.listen {
            listeners.push(Listener {
                tcp: bind(*addr).await?,
                tls: None,
            });
        }
        if let Some((t, acceptor)) = &tls {
            for addr in &t.listen {
                listeners.push(Listener {
                    tcp: bind(*addr).await?,
                    tls: Some(acceptor.clone()),
                });
            }
        }
        let proxy = Arc::new(Proxy::new(Snapshot::new(config, runtime)));
        Ok(Self {
            server: Arc::new(Server::new(proxy, &config.gateway)),
            listeners,
            shutdown_grace: config.gateway.shutdown_grace,
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

    /// Serves until `shutdown` resolves; then stops accepting, lets in-flight requests finish for
    /// up to the configured `shutdown_grace`, and returns. Returns `true` when every connection
    /// finished within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        for listener in self.listeners {
            tracker.spawn(listener.accept_loop(self.server.clone(), stop.clone(), tracker.clone()));
        }
        shutdown.await;
        tracing::info!(
            grace = ?self.shutdown_grace,
            "shutting down: listeners closed, draining in-flight requests"
        );
        stop.cancel();
        tracker.close();
        match tokio::time::timeout(self.shutdown_grace, tracker.wait()).await {
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
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(1024)
    });
    socket.map_err(|source| StartError::Bind { addr, source })
}
