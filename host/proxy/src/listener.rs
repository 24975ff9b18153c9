//! Accepting connections and serving HTTP on them: timeouts, idle keep-alive, graceful drain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmgate_config::Gateway as GatewayConfig;
use wasmgate_telemetry::Metrics;

use crate::proxy::Proxy;
use crate::record::Recorded;
use crate::session::ConnInfo;
use crate::stall::{Sending, SendingIo, Stalls};

/// Connection-level settings shared by every listener.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) proxy: Arc<Proxy>,
    connections: Gauge,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
    send_timeouts: Counter,
    /// `gateway.proxy_protocol`: every connection starts with a PROXY protocol header.
    proxy_protocol: bool,
    limits: Limits,
}

/// `gateway.max_connections` (each listener) and `max_connections_per_client`.
#[derive(Debug)]
struct Limits {
    per_listener: usize,
    per_client: usize,
    clients: Mutex<HashMap<IpAddr, usize>>,
    refused_listener: Counter,
    refused_client: Counter,
}

/// A connection counted against the limits until dropped.
struct Admitted {
    server: Arc<Server>,
    listener: Arc<AtomicUsize>,
    client: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.listener.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.client {
            let mut clients = self
                .server
                .limits
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = clients.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}

impl Server {
    /// Counts a new connection from `peer` on a listener with `open` connections, or refuses it
    /// (counted) when a limit is reached.
    fn admit(self: &Arc<Self>, open: &Arc<AtomicUsize>, peer: IpAddr) -> Option<Admitted> {
        let limits = &self.limits;
        let before = open.fetch_add(1, Ordering::Relaxed);
        let mut admitted = Admitted {
            server: self.clone(),
            listener: open.clone(),
            client: None,
        };
        if limits.per_listener != 0 && before >= limits.per_listener {
            limits.refused_listener.inc();
            return None;
        }
        if limits.per_client != 0 {
            let mut clients = limits
                .clients
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = clients.entry(peer).or_insert(0);
            if *n >= limits.per_client {
                limits.refused_client.inc();
                return None;
            }
            *n += 1;
            admitted.client = Some(peer);
        }
        Some(admitted)
    }
}

impl Server {
    pub(crate) fn new(proxy: Arc<Proxy>, config: &GatewayConfig, metrics: &Metrics) -> Self {
        let connections = metrics.connections().clone();
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_size.max(8192))
            .keep_alive(true);
        if config.max_headers != 100 {
            // hyper's default is 100 on the stack; any other value costs a heap array per request.
            h1.max_headers(config.max_headers);
        }
        let h2c = &config.http2;
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // RFC 8441: WebSocket over HTTP/2, by extended CONNECT.
        h2.enable_connect_protocol();
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(h2c.max_concurrent_streams)
            .max_pending_accept_reset_streams(h2c.max_pending_reset_streams)
            .max_local_error_reset_streams(h2c.max_local_reset_streams)
            .keep_alive_interval(h2c.keepalive_interval)
            .keep_alive_timeout(h2c.keepalive_timeout)
            .max_header_list_size(u32::try_from(config.max_header_size).unwrap_or(u32::MAX));
        Self {
            proxy,
            connections,
            http1: h1,
            http2: h2,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
            send_timeout: config.send_timeout,
            send_timeouts: metrics.send_timeouts().clone(),
            proxy_protocol: config.proxy_protocol,
            limits: Limits {
                per_listener: config.max_connections,
                per_client: config.max_connections_per_client,
                clients: Mutex::default(),
                refused_listener: metrics.connections_refused("listener"),
                refused_client: metrics.connections_refused("client"),
            },
        }
    }
}

/// A bound listening socket, shared by the workers: each accepts through its own handle.
pub(crate) struct Listener {
    pub(crate) tcp: std::net::TcpListener,
    /// The TLS settings, swapped by a reload that changes certificates.
    pub(crate) tls: Option<Arc<ArcSwap<ServerConfig>>>,
    /// Its connections open now, across workers (for `max_connections`).
    pub(crate) open: Arc<AtomicUsize>,
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
            // Closed at once beyond a limit: the kernel's backlog does not fill, and other
            // clients keep being served.
            let Some(admitted) = server.admit(&self.open, peer.ip()) else {
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let server = server.clone();
            let tls = self.tls.as_ref().map(|t| TlsAcceptor::from(t.load_full()));
            let stop = stop.clone();
            tracker.spawn(async move {
                serve(server, stream, (peer, worker), tls, stop).await;
                drop(admitted);
            });
        }
    }
}

async fn serve(
    server: Arc<Server>,
    mut stream: TcpStream,
    (peer, worker): (SocketAddr, usize),
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    server.connections.inc();
    let _open = OpenConnection(&server.connections);
    let peer = if server.proxy_protocol {
        // Only a trusted proxy may say where the connection comes from.
        if !server.proxy.snapshot.load().trusted.trusts(peer.ip()) {
            tracing::debug!(%peer, "PROXY protocol header from a peer not in trusted_proxies: closed");
            return;
        }
        let header = proxy_header(&mut stream);
        match before_http(&server, &stop, peer, "proxy protocol header", header).await {
            Some(source) => source.unwrap_or(peer),
            None => return,
        }
    } else {
        peer
    };
    let activity = Arc::new(Activity::new());
    match tls {
        None => {
            let info = ConnInfo {
                peer,
                tls: false,
                client_subject: None,
                worker,
            };
            let Some(h2) =
                before_http(&server, &stop, peer, "first bytes", speaks_h2c(&stream)).await
            else {
                return;
            };
            serve_http(&server, TokioIo::new(stream), h2, info, activity, &stop).await;
        }
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            let Some(stream) = before_http(&server, &stop, peer, "tls handshake", handshake).await
            else {
                return;
            };
            // Set only when a client certificate was asked for and verified.
            let session = stream.get_ref().1;
            let client_subject = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| crate::tls::client_subject(leaf));
            // Over TLS, HTTP/2 is chosen by ALPN only (RFC 9113 §3.3: no prior knowledge).
            let h2 = session.alpn_protocol() == Some(b"h2");
            let info = ConnInfo {
                peer,
                tls: true,
                client_subject,
                worker,
            };
            serve_http(&server, TokioIo::new(stream), h2, info, activity, &stop).await;
        }
    }
}

/// Runs what comes before HTTP on a new connection (`step`: the TLS handshake, the protocol
/// sniff) within `header_read_timeout`, as long as a request's header section gets; `None` when
/// it failed, timed out or the gateway is stopping.
async fn before_http<T>(
    server: &Server,
    stop: &CancellationToken,
    peer: SocketAddr,
    step: &str,
    future: impl Future<Output = std::io::Result<T>>,
) -> Option<T> {
    let result = tokio::select! {
        () = stop.cancelled() => return None,
        r = tokio::time::timeout(server.header_read_timeout, future) => r,
    };
    match result {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "{step} failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "{step} timed out");
            None
        }
    }
}

/// The largest PROXY protocol header read (a v1 line is at most 107 bytes; v2 headers with the
/// usual TLVs stay far below).
const MAX_PROXY_HEADER: usize = 4096;

/// Reads the PROXY protocol header (v1 or v2) that starts the connection, and no byte more:
/// the address of the client it names, or `None` when it names none (`LOCAL`, `UNKNOWN`: the
/// proxy's own connection, such as its health check). A connection without a valid header
/// fails.
async fn proxy_header(stream: &mut TcpStream) -> std::io::Result<Option<SocketAddr>> {
    use ppp::{HeaderResult, PartialResult, v1, v2};
    use std::io::{Error, ErrorKind};
    use tokio::io::AsyncReadExt;

    const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let invalid = |why: &str| Error::new(ErrorKind::InvalidData, format!("PROXY header: {why}"));
    let mut buf = vec![0u8; MAX_PROXY_HEADER];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "closed before the PROXY header",
            ));
        }
        let seen = &buf[..n];
        // Where the header ends, by its version's framing, so that the parser sees exactly the
        // header and a malformed one fails at once instead of waiting for more.
        let end = if seen.starts_with(b"PROXY ") {
            match seen.iter().take(107).position(|&b| b == b'\n') {
                Some(lf) => Some(lf + 1),
                None if n >= 107 => return Err(invalid("no line end within 107 bytes")),
                None => None,
            }
        } else if seen.starts_with(V2_SIGNATURE) && n >= 16 {
            let total = 16 + usize::from(u16::from_be_bytes([seen[14], seen[15]]));
            if total > buf.len() {
                return Err(invalid("too large"));
            }
            (n >= total).then_some(total)
        } else if b"PROXY ".starts_with(seen) || V2_SIGNATURE.starts_with(&seen[..n.min(12)]) {
            None
        } else {
            return Err(invalid("the connection does not start with one"));
        };
        let Some(end) = end else {
            // The rest of the header is on its way: `peek` would return at once again.
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let parsed = HeaderResult::parse(&buf[..end]);
        if parsed.is_incomplete() {
            return Err(invalid("incomplete"));
        }
        let from = |ip: std::net::IpAddr, port| Some(SocketAddr::new(ip, port));
        let source = match parsed {
            HeaderResult::V1(Ok(header)) => match header.addresses {
                v1::Addresses::Tcp4(a) => from(a.source_address.into(), a.source_port),
                v1::Addresses::Tcp6(a) => from(a.source_address.into(), a.source_port),
                v1::Addresses::Unknown => None,
            },
            HeaderResult::V2(Ok(header)) => match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    from(a.source_address.into(), a.source_port)
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    from(a.source_address.into(), a.source_port)
                }
                _ => None,
            },
            HeaderResult::V1(Err(e)) => return Err(invalid(&e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(invalid(&e.to_string())),
        };
        stream.read_exact(&mut buf[..end]).await?;
        return Ok(source);
    }
}

/// HTTP/2's connection preface, which a cleartext client with prior knowledge (h2c) sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext client opens with HTTP/2's preface. Read with `peek`, so hyper gets the
/// stream untouched: a rewinding wrapper (hyper-util's `auto` server) would make every read go
/// through it and make HTTP/1's 8 KiB read buffer grow to 16 KiB on the first request; and no
/// HTTP buffer exists before the client has sent something.
async fn speaks_h2c(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            // Closed (hyper sees it and ends the connection) or not the preface: HTTP/1.
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface: `peek` returns at once while any byte is waiting, so wait a
        // little for the rest (clients send the 24 bytes in one segment; this is the rare case).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves HTTP/2 or HTTP/1.1 (with upgrades) on `io` until it closes, the client stays idle
/// past `idle_timeout`, or `stop` asks for a drain.
async fn serve_http<I>(
    server: &Arc<Server>,
    io: I,
    h2: bool,
    info: ConnInfo,
    activity: Arc<Activity>,
    stop: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = info.peer;
    let io = SendingIo::new(io, activity.stalls.clone());
    let service = ConnService {
        shared: Arc::new(ConnShared {
            proxy: server.proxy.clone(),
            info,
            activity: activity.clone(),
        }),
    };
    let result = if h2 {
        let conn = server.http2.serve_connection(io, service);
        drive(conn, server, &activity, stop).await
    } else {
        // With upgrades: a WebSocket handshake's 101 hands the socket over to the tunnel.
        let conn = server.http1.serve_connection(io, service).with_upgrades();
        drive(conn, server, &activity, stop).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection closed with error");
    }
}

/// A connection hyper serves, which can be asked to finish its requests and close.
trait Served: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Served for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S> Served for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Data: Send,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

async fn drive(
    conn: impl Served,
    server: &Server,
    activity: &Activity,
    stop: &CancellationToken,
) -> hyper::Result<()> {
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            () = stop.cancelled(), if !draining => {
                // In-flight requests finish; HTTP/1.1 closes after them, HTTP/2 sends GOAWAY.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            watched = activity.watch((!draining).then_some(server.idle_timeout), server.send_timeout) => match watched {
                Watched::Idle => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                // Dropping the connection drops its response bodies, and with them the upstream
                // connections they were holding.
                Watched::Stalled => {
                    server.send_timeouts.inc();
                    tracing::debug!(timeout = ?server.send_timeout, "client took nothing the gateway wrote within send_timeout: connection closed");
                    return Ok(());
                }
            },
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
    /// Its response bodies waiting for the client (`gateway.send_timeout`).
    stalls: Arc<Stalls>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_done_ms: AtomicU64::new(0),
            stalls: Arc::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `idle` (`None`: never,
    /// while it drains), or a response has waited for the client longer than `send`. One timer
    /// for both: each future of the connection's `select!` is polled at every wake of its task.
    async fn watch(&self, idle: Option<Duration>, send: Duration) -> Watched {
        let idle_ms = idle.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let send_ms = u64::try_from(send.as_millis()).unwrap_or(u64::MAX);
        let mut next_tick = self.now_ms().saturating_add(send_ms);
        loop {
            let now = self.now_ms();
            if now >= next_tick {
                if self.stalls.tick() {
                    return Watched::Stalled;
                }
                next_tick = now.saturating_add(send_ms);
            }
            let mut wait_ms = next_tick - now;
            if let Some(idle_ms) = idle_ms {
                if self.in_flight.load(Ordering::Relaxed) == 0 {
                    let idle_for = now.saturating_sub(self.last_done_ms.load(Ordering::Relaxed));
                    if idle_for >= idle_ms {
                        return Watched::Idle;
                    }
                    wait_ms = wait_ms.min(idle_ms - idle_for);
                } else {
                    wait_ms = wait_ms.min(idle_ms);
                }
            }
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
    }
}

/// Why a connection's watch ended.
enum Watched {
    /// No request in flight for `idle_timeout`.
    Idle,
    /// A response, or a write to the socket, waited for the client for `send_timeout`.
    Stalled,
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
    type Response = Response<Sending<Recorded>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let _in_flight = shared.activity.begin();
            let response = shared.proxy.handle(req, &shared.info).await;
            Ok(response.map(|body| Sending::new(body, shared.activity.stalls.clone())))
        })
    }
}
