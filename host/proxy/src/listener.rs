//! Accepting connections and serving HTTP on them: timeouts, idle keep-alive, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmgate_config::Gateway as GatewayConfig;

use crate::proxy::Proxy;
use crate::record::Recorded;
use crate::session::ConnInfo;

/// Connection-level settings shared by every listener.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) proxy: Arc<Proxy>,
    connections: Gauge,
    http: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl Server {
    pub(crate) fn new(proxy: Arc<Proxy>, config: &GatewayConfig, connections: Gauge) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        let mut h1 = http.http1();
        h1.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_size.max(8192))
            .keep_alive(true);
        if config.max_headers != 100 {
            // hyper's default is 100 on the stack; any other value costs a heap array per request.
            h1.max_headers(config.max_headers);
        }
        let h2c = &config.http2;
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(h2c.max_concurrent_streams)
            .max_pending_accept_reset_streams(h2c.max_pending_reset_streams)
            .max_local_error_reset_streams(h2c.max_local_reset_streams)
            .keep_alive_interval(h2c.keepalive_interval)
            .keep_alive_timeout(h2c.keepalive_timeout)
            .max_header_list_size(u32::try_from(config.max_header_size).unwrap_or(u32::MAX));
        Self {
            proxy,
            connections,
            http,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// A bound listening socket, shared by the workers: each accepts through its own handle.
pub(crate) struct Listener {
    pub(crate) tcp: std::net::TcpListener,
    /// The TLS settings, swapped by a reload that changes certificates.
    pub(crate) tls: Option<Arc<ArcSwap<ServerConfig>>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listener {
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Accepts on `worker`, the calling worker, until `stop` is cancelled, serving each
    /// connection on `tracker`.
    pub(crate) async fn accept_loop(
        self: Arc<Self>,
        worker: usize,
        server: Arc<Server>,
        stop: CancellationToken,
        tracker: TaskTracker,
    ) {
        // A handle of the worker's own, registered with the worker's event loop.
        let tcp = match self.tcp.try_clone().and_then(TcpListener::from_std) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::error!(error = %e, "a worker cannot accept on a listener");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                accepted = tcp.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = server.clone();
            let tls = self.tls.as_ref().map(|t| TlsAcceptor::from(t.load_full()));
            let stop = stop.clone();
            tracker.spawn(async move {
                serve(server, stream, (peer, worker), tls, stop).await;
            });
        }
    }
}

async fn serve(
    server: Arc<Server>,
    stream: TcpStream,
    (peer, worker): (SocketAddr, usize),
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    server.connections.inc();
    let _open = OpenConnection(&server.connections);
    let activity = Arc::new(Activity::new());
    match tls {
        None => {
            let info = ConnInfo {
                peer,
                tls: false,
                client_subject: None,
                worker,
            };
            drive(&server, TokioIo::new(stream), info, activity, &stop).await;
        }
        Some(acceptor) => {
            // A client gets as long for its handshake as for a request's header section.
            let handshake =
                tokio::time::timeout(server.header_read_timeout, acceptor.accept(stream));
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "tls handshake timed out");
                        return;
                    }
                },
            };
            // Set only when a client certificate was asked for and verified.
            let client_subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| crate::tls::client_subject(leaf));
            let info = ConnInfo {
                peer,
                tls: true,
                client_subject,
                worker,
            };
            drive(&server, TokioIo::new(stream), info, activity, &stop).await;
        }
    }
}

async fn drive<I>(
    server: &Arc<Server>,
    io: I,
    info: ConnInfo,
    activity: Arc<Activity>,
    stop: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = info.peer;
    let service = ConnService {
        shared: Arc::new(ConnShared {
            proxy: server.proxy.clone(),
            info,
            activity: activity.clone(),
        }),
    };
    // With upgrades: a WebSocket handshake's 101 hands the socket over to the tunnel.
    let conn = server.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection closed with error");
                }
                return;
            }
            () = stop.cancelled(), if !draining => {
                // In-flight requests finish; HTTP/1.1 closes after them, HTTP/2 sends GOAWAY.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = activity.idle(server.idle_timeout), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Tracks whether a connection has requests in flight and since when it has had none.
#[derive(Debug)]
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `start` at which the last request finished.
    last_done_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let wait_ms = if self.in_flight.load(Ordering::Relaxed) == 0 {
                let idle_for = self
                    .now_ms()
                    .saturating_sub(self.last_done_ms.load(Ordering::Relaxed));
                if idle_for >= timeout_ms {
                    return;
                }
                timeout_ms - idle_for
            } else {
                timeout_ms
            };
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
    }
}

/// Counts a connection out of `wasmgate_connections_active` however its task ends.
struct OpenConnection<'a>(&'a Gauge);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .last_done_ms
            .store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct ConnShared {
    proxy: Arc<Proxy>,
    info: ConnInfo,
    activity: Arc<Activity>,
}

#[derive(Debug, Clone)]
struct ConnService {
    shared: Arc<ConnShared>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Recorded>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Recorded>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let _in_flight = shared.activity.begin();
            Ok(shared.proxy.handle(req, &shared.info).await)
        })
    }
}
