//! The end-to-end harness: real gateways, upstreams and clients on 127.0.0.1:0.
//!
//! Nothing here sleeps to wait for readiness: a gateway is ready when [`Gateway::bind`] returned
//! (its sockets are listening), an upstream when its listener is bound, and a child `wasmgate`
//! process when it has logged every "listening on" line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use wasmgate_echo as echo;

pub mod otlp;
pub mod redis;
mod scripted;

pub use redis::{RedisCluster, RedisServer};
pub use scripted::{ScriptedUpstream, Seen};

/// A folder for one test's config and certificate files, removed when dropped.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wasmgate-test-")
        .tempdir()
        .expect("create a temporary folder")
}

/// A [`workdir`] holding `plugins/<name>.wasm` for each `(name, wasm file)`, laid out as a
/// deployment's `plugins_dir` (the default `plugins` beside `gateway.toml`).
pub fn workdir_with_plugins(plugins: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = workdir();
    let plugins_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugins_dir).expect("mkdir plugins");
    for (name, wasm) in plugins {
        std::fs::copy(wasm, plugins_dir.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copy {wasm} as {name}.wasm: {e}"));
    }
    dir
}

/// Starts an echo upstream on an ephemeral port; see [`wasmgate_echo`].
pub async fn echo_upstream(name: &str) -> SocketAddr {
    echo::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), name)
        .await
        .expect("bind an echo upstream")
}

/// The name of the echo upstream that answered (`x-echo-server`), after checking it was a 200.
pub fn served_by(resp: &reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    resp.headers()["x-echo-server"]
        .to_str()
        .expect("name")
        .to_owned()
}

/// A config with one plain listener, upstream `origin` at `origin`, and a route `api` to it with
/// `route_keys` added (e.g. `cache = {}`).
pub fn origin_route(origin: SocketAddr, route_keys: &str) -> String {
    format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [upstreams.origin]\ntargets = [\"{origin}\"]\n\
         [[routes]]\nname = \"api\"\nupstream = \"origin\"\n{route_keys}\n"
    )
}

/// An address nothing listens on: bound, then released.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// The most common test config: one plain listener on an ephemeral port, `gateway_extra` keys in
/// `[gateway]`, and a route `all` forwarding everything to the upstream `u` at `up`.
pub fn proxy_everything_to(up: SocketAddr, gateway_extra: &str) -> String {
    format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n{gateway_extra}\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n\
         [[routes]]\nname = \"all\"\nupstream = \"u\"\n"
    )
}

/// A config with one plain listener, the upstream `pool` of `targets` (each a TOML value: an
/// address string or a `{ address, weight }` table) with `upstream_keys` added to its table, and
/// a route `all` forwarding everything to it.
pub fn pool_config(targets: &[String], upstream_keys: &str) -> String {
    format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [upstreams.pool]\ntargets = [{}]\n{upstream_keys}\n\
         [[routes]]\nname = \"all\"\nupstream = \"pool\"\n",
        targets.join(", ")
    )
}

/// A gateway running inside the test process.
#[derive(Debug)]
pub struct TestGateway {
    /// The first plain listener.
    pub http: SocketAddr,
    /// The first TLS listener, when the config has one.
    pub https: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<bool, wasmgate_proxy::StartError>>>,
    control: wasmgate_proxy::Control,
    _dir: Option<tempfile::TempDir>,
}

impl TestGateway {
    /// Writes `toml` to `gateway.toml` in `dir` and serves it. Listeners should use port 0.
    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> anyhow::Result<Self> {
        let mut gw = Self::start_at(&dir.path().join("gateway.toml"), toml).await?;
        gw._dir = Some(dir);
        Ok(gw)
    }

    /// Serves `toml` from a fresh temporary folder.
    pub async fn start(toml: &str) -> anyhow::Result<Self> {
        Self::start_in(workdir(), toml).await
    }

    /// Rewrites the gateway's config file with `toml` and reloads it, as the file watcher or
    /// the admin API would.
    pub async fn reload(&self, toml: &str) -> anyhow::Result<wasmgate_proxy::Reloaded> {
        let dir = self
            ._dir
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no config folder"))?;
        let config = Self::write_config(&dir.path().join("gateway.toml"), toml)?;
        self.control.reload(config).await.map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{}", lines.join("\n"))
        })
    }

    fn write_config(path: &Path, toml: &str) -> anyhow::Result<wasmgate_config::Config> {
        std::fs::write(path, toml)?;
        let mut config = wasmgate_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !toml.contains("access_log") {
            // Lines on the test's stdout would only clutter its output.
            config.gateway.access_log = wasmgate_config::AccessLog::Off;
        }
        Ok(config)
    }

    async fn start_at(path: &Path, toml: &str) -> anyhow::Result<Self> {
        let config = Self::write_config(path, toml)?;
        let gateway = wasmgate_proxy::Gateway::bind(config).await?;
        let addrs = gateway.local_addrs();
        let http = addrs
            .iter()
            .find(|a| !a.tls)
            .map_or_else(closed_port, |a| a.addr);
        let https = addrs.iter().find(|a| a.tls).map(|a| a.addr);
        let control = gateway.control();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = rx.await;
        }));
        Ok(Self {
            http,
            https,
            shutdown: Some(tx),
            task: Some(task),
            control,
            _dir: None,
        })
    }

    /// Every upstream's targets as `GET /upstreams` on the admin listener shows them.
    pub fn upstreams(&self) -> Vec<wasmgate_proxy::UpstreamState> {
        self.control.upstreams()
    }

    /// The state of target `address` of upstream `upstream`; panics when there is none.
    pub fn target(&self, upstream: &str, address: SocketAddr) -> wasmgate_proxy::TargetState {
        self.upstreams()
            .into_iter()
            .find(|u| u.name == upstream)
            .and_then(|u| {
                u.targets
                    .into_iter()
                    .find(|t| t.address == address.to_string())
            })
            .unwrap_or_else(|| panic!("no target {address} in upstream {upstream}"))
    }

    /// The gateway's metrics, as `/metrics` on the admin listener shows them.
    pub fn metrics(&self) -> String {
        self.control.metrics().encode()
    }

    /// The value of the first metric line starting with `prefix` (a name and the start of its
    /// labels); panics with the whole exposition when there is none.
    pub fn metric(&self, prefix: &str) -> u64 {
        let metrics = self.metrics();
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in:\n{metrics}"))
    }

    /// Purges route `route`'s cached responses for `path`, as `DELETE /cache/ROUTE/PATH` on the
    /// admin listener does; how many entries went (0 when the route has no cache).
    pub fn purge_cache(&self, route: &str, path: &str) -> u64 {
        self.control
            .purge_cache(Some(route), Some(path))
            .map_or(0, |purged| purged.iter().map(|(_, n)| n).sum())
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Starts a graceful shutdown and waits for it; `true` when every connection drained in time.
    pub async fn shutdown(mut self) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => matches!(t.await, Ok(Ok(true))),
            None => true,
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// An HTTP/1.1 client (no proxy, no pooling surprises: one connection per request unless reused).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("h2c client")
}

/// A self-signed certificate and its key, as PEM files in `dir`.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate PEM path.
    pub cert: PathBuf,
    /// The private key PEM path.
    pub key: PathBuf,
    /// The certificate PEM, for clients to trust.
    pub pem: String,
}

/// Writes a self-signed certificate for `names` to `dir/<stem>.pem` and `dir/<stem>.key`.
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> TestCert {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).expect("generate certificate");
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");
    TestCert {
        cert: cert_path,
        key: key_path,
        pem: cert.pem(),
    }
}

/// A TLS client trusting `certs`, resolving each of `hosts` to `addr`.
pub fn tls_client(
    certs: &[&TestCert],
    addr: SocketAddr,
    hosts: &[&str],
    http2: bool,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30));
    for c in certs {
        b = b.add_root_certificate(
            reqwest::Certificate::from_pem(c.pem.as_bytes()).expect("parse certificate"),
        );
    }
    for h in hosts {
        b = b.resolve(h, addr);
    }
    if !http2 {
        b = b.http1_only();
    }
    b.build().expect("tls client")
}

/// Sends raw bytes on a new connection and reads until the server closes it or `limit` passes.
pub async fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The status code of the first response in a raw HTTP/1.1 exchange.
pub fn raw_status(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

/// A `wasmgate` child process.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    /// The "listening on" addresses, in order.
    pub addrs: Vec<SocketAddr>,
    /// Every stderr line so far (and on, until the process ends).
    pub log: Arc<Mutex<Vec<String>>>,
    /// Every stdout line (the access log) so far.
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// The `wasmgate` binary built for these tests (cargo tells integration tests where it is).
#[macro_export]
macro_rules! wasmgate_bin {
    () => {
        std::path::Path::new(env!("CARGO_BIN_EXE_wasmgate-e2e"))
    };
}

impl GatewayProcess {
    /// Runs `wasmgate run --config FILE` and waits until it logged `listeners` "listening on" lines.
    pub fn start(bin: &Path, config: &Path, listeners: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn wasmgate")?;
        let stderr = child.stderr.take().context("stderr")?;
        let stdout_pipe = child.stdout.take().context("stdout")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stdout_sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout_pipe).lines().map_while(Result::ok) {
                stdout_sink.lock().map(|mut l| l.push(line)).ok();
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|u| u.split("://").nth(1))
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                sink.lock().map(|mut l| l.push(line)).ok();
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < listeners {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(a) => addrs.push(a),
                Err(_) => {
                    let _ = child.kill();
                    let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                    bail!("wasmgate did not report {listeners} listeners; its log:\n{log}");
                }
            }
        }
        Ok(Self {
            child,
            addrs,
            log,
            stdout,
        })
    }

    /// The admin listener's address, from its "admin API on http://ADDR" line (logged before the
    /// listeners, so known once [`GatewayProcess::start`] returned).
    pub fn admin(&self) -> Option<SocketAddr> {
        let log = self.log.lock().ok()?;
        log.iter().find_map(|line| {
            line.split("admin API on http://")
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Waits up to `limit` for a stderr line containing `needle` that was not there before
    /// `seen` lines; the number of lines seen then.
    pub fn wait_for_log(
        &self,
        needle: &str,
        seen: usize,
        limit: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            {
                let log = self
                    .log
                    .lock()
                    .map_err(|_| anyhow::anyhow!("log poisoned"))?;
                if log.iter().skip(seen).any(|l| l.contains(needle)) {
                    return Ok(log.len());
                }
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no log line with {needle:?} within {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many stderr lines were logged so far.
    pub fn log_len(&self) -> usize {
        self.log.lock().map_or(0, |l| l.len())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM") to the child.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Waits up to `limit` for the child to exit; its exit code.
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "wasmgate did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .context("no VmHWM line")?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .context("VmHWM value")?
            .parse()?;
        Ok(kb * 1024)
    }

    /// The log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `wasmgate check --config FILE`: exit code and stderr.
pub fn check(bin: &Path, config: &Path) -> anyhow::Result<(i32, String)> {
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(config)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Reads from `stream` up to the end of a request head; `false` if it closed or failed first.
pub async fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// An upstream that answers `200 slow` to each request `hold` after it arrived, and reports each
/// arrival on the returned channel: the readiness signal for "a request is in flight".
pub async fn holding_upstream(
    hold: Duration,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = tx.send(());
                tokio::time::sleep(hold).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow",
                    )
                    .await;
            });
        }
    });
    (addr, rx)
}

/// An echo upstream over TLS, presenting `cert` and offering `alpn` (e.g. `["h2", "http/1.1"]`);
/// with `client_ca`, it requires a client certificate signed by (or equal to) that one.
/// Connections whose handshake fails are closed.
pub async fn tls_echo_upstream(
    cert: &TestCert,
    alpn: &[&str],
    client_ca: Option<&TestCert>,
) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert.cert)
        .expect("read certificate")
        .collect::<Result<_, _>>()
        .expect("parse certificate");
    let key = PrivateKeyDer::from_pem_file(&cert.key).expect("read key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca.cert).expect("read client CA") {
                roots
                    .add(c.expect("parse client CA"))
                    .expect("add client CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    echo::serve_connection(tls, "tls-up".into(), peer).await;
                }
            });
        }
    });
    addr
}

/// An upstream that can be killed (its listener and every connection closed at once, as a
/// crashed process's) and started again on the same port. It answers `GET /health` with the
/// status [`set_health`](Self::set_health) chose (200 at first), counting those probes, and
/// every other request with `200`, an `x-echo-server` header and its name as the body.
#[derive(Debug)]
pub struct KillableUpstream {
    /// Where it listens, across restarts.
    pub addr: SocketAddr,
    name: Arc<str>,
    health: Arc<std::sync::atomic::AtomicU16>,
    probes: Arc<std::sync::atomic::AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl KillableUpstream {
    /// Starts it on an ephemeral port.
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut up = Self {
            addr: listener.local_addr().expect("addr"),
            name: name.into(),
            health: Arc::new(200.into()),
            probes: Arc::default(),
            task: None,
        };
        up.serve(listener);
        up
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (name, health, probes) = (self.name.clone(), self.health.clone(), self.probes.clone());
        self.task = Some(tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (name, health, probes) = (name.clone(), health.clone(), probes.clone());
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (name, health, probes) = (name.clone(), health.clone(), probes.clone());
                        async move {
                            use std::sync::atomic::Ordering;
                            let mut response = if req.uri().path() == "/health" {
                                probes.fetch_add(1, Ordering::SeqCst);
                                let mut r = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *r.status_mut() =
                                    http::StatusCode::from_u16(health.load(Ordering::SeqCst))
                                        .unwrap_or(http::StatusCode::OK);
                                r
                            } else {
                                http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                                    name.to_string(),
                                )))
                            };
                            response.headers_mut().insert(
                                "x-echo-server",
                                http::HeaderValue::from_str(&name).expect("name"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    /// Closes its listener and every connection, at once.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the same port again");
        self.serve(listener);
    }

    /// The status its `/health` answers with from now on.
    pub fn set_health(&self, status: u16) {
        self.health
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// The health probes it has answered.
    pub fn probes(&self) -> usize {
        self.probes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for KillableUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An upstream that answers every request with `response` (raw HTTP/1.1 bytes; it should say
/// `connection: close`), counting the requests it got.
pub async fn fixed_upstream(
    response: &'static [u8],
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = counted.clone();
            tokio::spawn(async move {
                if read_request_head(&mut s).await {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = s.write_all(response).await;
                }
            });
        }
    });
    (addr, count)
}

/// A DNS server on 127.0.0.1 (UDP) answering `A` queries for the names it was given, with a
/// TTL of 0 (the gateway's `min_ttl` decides how often it asks again), and `NXDOMAIN` for
/// others. Built on the resolver crate's own message types.
#[derive(Debug)]
pub struct TestDns {
    /// Where it listens.
    pub addr: SocketAddr,
    records: Arc<Mutex<std::collections::HashMap<String, Vec<std::net::Ipv4Addr>>>>,
    queries: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestDns {
    /// Starts it on an ephemeral port.
    pub async fn start() -> Self {
        use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
        use hickory_resolver::proto::rr::{RData, Record, RecordType, rdata::A};

        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        let records: Arc<Mutex<std::collections::HashMap<String, Vec<std::net::Ipv4Addr>>>> =
            Arc::default();
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (known, counted) = (records.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut response = Message::response(request.metadata.id, request.metadata.op_code);
                response.metadata.message_type = MessageType::Response;
                response.metadata.authoritative = true;
                response.metadata.recursion_desired = request.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                for query in &request.queries {
                    response.add_query(query.clone());
                    let name = query.name().to_string();
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    let ips = known.lock().expect("lock").get(&name).cloned();
                    match ips {
                        Some(ips) if query.query_type() == RecordType::A => {
                            for ip in ips {
                                response.add_answer(Record::from_rdata(
                                    query.name().clone(),
                                    0,
                                    RData::A(A(ip)),
                                ));
                            }
                        }
                        // A known name without records of that type.
                        Some(_) => {}
                        None => response.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Self {
            addr,
            records,
            queries,
            task,
        }
    }

    /// `name` resolves to `ips` from now on.
    pub fn set(&self, name: &str, ips: &[std::net::Ipv4Addr]) {
        self.records
            .lock()
            .expect("lock")
            .insert(name.to_ascii_lowercase(), ips.to_vec());
    }

    /// `name` no longer resolves (`NXDOMAIN`).
    pub fn remove(&self, name: &str) {
        self.records
            .lock()
            .expect("lock")
            .remove(&name.to_ascii_lowercase());
    }

    /// The queries it has answered.
    pub fn queries(&self) -> usize {
        self.queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}
