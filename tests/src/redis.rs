//! A real `redis-server` of the test's own: on a free loopback port, without persistence, in a
//! temporary folder, killed when dropped. `cargo xtask test` installs `redis-server`; no test
//! uses the system's redis (port 6379).
//!
//! Ready means it answered `PING`: started servers are polled, never waited for by a fixed sleep.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a started server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a starting server is polled, and how long one poll may take.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const POLL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one [`RedisServer::cmd`] may take, connecting included.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports are tried when another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// The server's log (`--logfile`) and its stdout and stderr, in its folder.
const LOG_FILE: &str = "redis.log";
const OUTPUT_FILE: &str = "redis.out";

/// A redis-server of the test's own, on a free loopback port, no persistence, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// Arguments given to redis-server besides the usual ones, kept for restarts; `PORT` stands
    /// for the port.
    extra: Vec<String>,
    /// Whether it serves TLS only.
    tls: bool,
    /// `None` once killed.
    process: Option<Process>,
    /// Its working folder (`--dir`) and logs; kept across restarts.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one (fails with a clear message naming `cargo xtask test` when redis-server is
    /// not installed); returns once it answers PING (within 10 s).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start) with more arguments for redis-server (`--cluster-enabled yes`).
    pub async fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = crate::workdir();
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        for _ in 0..PORT_ATTEMPTS {
            // Bound, then released: another process may take it before redis does. A cluster
            // node also listens on the port + 10000.
            let port = loop {
                let port = crate::closed_port().port();
                if port < 55_000 {
                    break port;
                }
            };
            if let Launch::Ready(process) = launch(port, dir.path(), &extra).await? {
                return Ok(Self {
                    port,
                    extra,
                    tls: false,
                    process: Some(process),
                    dir,
                });
            }
        }
        bail!("redis-server found each of {PORT_ATTEMPTS} free ports taken when it started")
    }

    /// One serving TLS only, with `cert` and `key` (PEM files), on a free port: `url` is then
    /// `rediss://`, and [`cmd`](Self::cmd) cannot reach it.
    pub async fn start_tls(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let mut server = Self::start_with(&[
            "--port",
            "0",
            "--tls-port",
            "PORT",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cert,
            "--tls-auth-clients",
            "no",
        ])
        .await?;
        server.tls = true;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        if self.tls {
            return format!("rediss://127.0.0.1:{}/", self.port);
        }
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on, across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server process (SIGKILL) and waits for it to exit, so connections reset.
    /// Does nothing when it was already killed.
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            // Dropping it kills and reaps it, which blocks until the kernel is done with it.
            let _ = tokio::task::spawn_blocking(move || drop(process)).await;
        }
    }

    /// Starts it again on the same port (after [`kill`](Self::kill), which it does first
    /// otherwise), and waits for PING.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        match launch(self.port, self.dir.path(), &self.extra).await? {
            Launch::Ready(process) => {
                self.process = Some(process);
                Ok(())
            }
            Launch::PortTaken(log) => bail!(
                "redis-server could not listen on port {} again: another process took it\n{log}",
                self.port
            ),
        }
    }

    /// Runs one command on a new connection and returns the raw RESP reply, e.g.
    /// `cmd(&["GET", "k"])` gives `"$1\r\nv\r\n"`, or `"$-1\r\n"` when there is no `k`. Error
    /// replies (`"-ERR …\r\n"`) are returned too; failing to connect or a closed connection is
    /// an error.
    pub async fn cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        command(self.port, args).await
    }

    /// Its log since it was last (re)started (`--logfile`, then stdout and stderr), for
    /// failure messages.
    pub fn log(&self) -> String {
        logs(self.dir.path())
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, each node a
/// [`RedisServer`]; the slots are spread by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes, joins them and waits until every node reports `cluster_state:ok`.
    pub async fn start() -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
                .await?,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
        })
        .await
        .context("join redis-cli")?
        .context("run redis-cli (installed with redis-server by `cargo xtask test`)")?;
        ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let started = Instant::now();
        for node in &nodes {
            loop {
                let info = node.cmd(&["CLUSTER", "INFO"]).await?;
                if info.contains("cluster_state:ok") {
                    break;
                }
                ensure!(
                    started.elapsed() < READY_TIMEOUT,
                    "the cluster did not become ready: {info}"
                );
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        Ok(Self { nodes })
    }

    /// The nodes' URLs, for `gateway.state.cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A redis-server process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How [`launch`] ended when it did not fail.
enum Launch {
    /// It answers `PING`.
    Ready(Process),
    /// It exited because the port was taken; its log.
    PortTaken(String),
}

/// Starts redis-server on `port` in `dir` and waits until it answers `PING`.
async fn launch(port: u16, dir: &Path, extra: &[String]) -> anyhow::Result<Launch> {
    // Each run logs afresh, so that a port taken on an earlier try is not read as this one's.
    match std::fs::remove_file(dir.join(LOG_FILE)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).context("cannot remove the old redis log");
        }
        _ => {}
    }
    let output = File::create(dir.join(OUTPUT_FILE))
        .with_context(|| format!("cannot create {}", dir.join(OUTPUT_FILE).display()))?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .args(["--protected-mode", "yes"])
        .arg("--logfile")
        .arg(dir.join(LOG_FILE))
        .arg("--dir")
        .arg(dir)
        .args(extra.iter().map(|a| {
            if a == "PORT" {
                port.to_string()
            } else {
                a.clone()
            }
        }))
        .stdin(Stdio::null())
        .stdout(output.try_clone().context("duplicate a file handle")?)
        .stderr(output)
        .spawn();
    let mut process = match child {
        Ok(child) => Process(child),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "redis-server is not installed (not on PATH): `cargo xtask test` installs it \
             (or `apt-get install redis-server`)"
        ),
        Err(err) => return Err(err).context("failed to start redis-server"),
    };
    let started = Instant::now();
    loop {
        if let Some(status) = process.0.try_wait().context("poll redis-server")? {
            let log = logs(dir);
            if log.contains("Address already in use") {
                return Ok(Launch::PortTaken(log));
            }
            bail!(
                "redis-server exited ({status}) before answering PING on port {port}; its log:\n{log}"
            );
        }
        let ready = if extra
            .iter()
            .any(|a| a == "--tls-port" || a == "--requirepass")
        {
            // No plain port to PING, or no PING without a password: its own word that it
            // listens (after a taken port would have made it exit).
            logs(dir).contains("Ready to accept connections")
        } else {
            answers_ping(port).await && is_process(port, process.0.id()).await
        };
        if ready {
            return Ok(Launch::Ready(process));
        }
        ensure!(
            started.elapsed() < READY_TIMEOUT,
            "redis-server did not answer PING on port {port} within {READY_TIMEOUT:?}; its log:\n{}",
            logs(dir)
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether the server on `port` answers `PING` with `PONG`.
async fn answers_ping(port: u16) -> bool {
    let ping = tokio::time::timeout(POLL_TIMEOUT, command(port, &["PING"])).await;
    matches!(ping, Ok(Ok(reply)) if reply == "+PONG\r\n")
}

/// Whether the redis on `port` is process `pid`, not another test's server that took the port
/// first (this one then exits, the port being in use).
async fn is_process(port: u16, pid: u32) -> bool {
    let info = tokio::time::timeout(POLL_TIMEOUT, command(port, &["INFO", "server"])).await;
    matches!(info, Ok(Ok(info)) if info.contains(&format!("\r\nprocess_id:{pid}\r\n")))
}

/// The server's log and its output in `dir`.
fn logs(dir: &Path) -> String {
    [LOG_FILE, OUTPUT_FILE]
        .iter()
        .map(|name| std::fs::read_to_string(dir.join(name)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("")
}

/// Sends `args` as one command to the server on `port`, on a new connection; its raw reply.
async fn command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("cannot connect to redis on port {port}"))?;
        stream.write_all(&encode(args)).await?;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(len) = reply_end(&reply, 0)? {
                ensure!(
                    len == reply.len(),
                    "redis sent more than one reply to {args:?}"
                );
                return Ok(String::from_utf8_lossy(&reply).into_owned());
            }
            let n = stream.read(&mut chunk).await?;
            ensure!(
                n > 0,
                "redis on port {port} closed the connection before replying to {args:?}"
            );
            reply.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(CMD_TIMEOUT, exchange)
        .await
        .with_context(|| format!("redis on port {port} did not reply to {args:?} in time"))?
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Where the reply starting at `start` in `buf` ends, or `None` while it is incomplete (RESP2,
/// and the RESP3 types, should a test switch to them with `HELLO 3`).
fn reply_end(buf: &[u8], start: usize) -> anyhow::Result<Option<usize>> {
    let Some(line_len) = buf
        .get(start..)
        .and_then(|rest| rest.windows(2).position(|w| w == b"\r\n"))
    else {
        return Ok(None);
    };
    let line = &buf[start + 1..start + line_len];
    let after_line = start + line_len + 2;
    let count = || -> anyhow::Result<i64> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad RESP length {:?}", String::from_utf8_lossy(line)))
    };
    let elements = match buf[start] {
        // Simple string, error, integer, null, double, boolean, big number.
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => return Ok(Some(after_line)),
        // Bulk string, bulk error, verbatim string: a length, then that many bytes.
        b'$' | b'!' | b'=' => {
            let Ok(len) = usize::try_from(count()?) else {
                // `$-1`: nil.
                return Ok(Some(after_line));
            };
            let end = after_line + len + 2;
            return Ok((buf.len() >= end).then_some(end));
        }
        // Array, set, push; `*-1` is a nil array.
        b'*' | b'~' | b'>' => count()?,
        // Map: a key and a value per entry.
        b'%' => count()?.saturating_mul(2),
        other => bail!("unknown RESP type byte {:?}", char::from(other)),
    };
    let mut end = after_line;
    for _ in 0..elements.max(0) {
        match reply_end(buf, end)? {
            Some(next) => end = next,
            None => return Ok(None),
        }
    }
    Ok(Some(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_framed_whole() -> anyhow::Result<()> {
        let complete: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR unknown command\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$4\r\na\r\nb\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"%1\r\n+k\r\n+v\r\n",
        ];
        for reply in complete {
            assert_eq!(reply_end(reply, 0)?, Some(reply.len()), "{reply:?}");
            for cut in 0..reply.len() {
                assert_eq!(reply_end(&reply[..cut], 0)?, None, "{reply:?} cut at {cut}");
            }
        }
        assert!(reply_end(b"?x\r\n", 0).is_err());
        assert_eq!(encode(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        Ok(())
    }

    #[tokio::test]
    async fn set_then_get() -> anyhow::Result<()> {
        let redis = RedisServer::start().await?;
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
        assert_eq!(redis.cmd(&["SET", "k", "a value"]).await?, "+OK\r\n");
        assert_eq!(redis.cmd(&["GET", "k"]).await?, "$7\r\na value\r\n");
        assert_eq!(redis.cmd(&["GET", "missing"]).await?, "$-1\r\n");
        assert_eq!(redis.cmd(&["INCRBY", "n", "5"]).await?, ":5\r\n");
        assert!(redis.cmd(&["NOSUCHCOMMAND"]).await?.starts_with("-ERR"));
        Ok(())
    }

    #[tokio::test]
    async fn kill_resets_connections_and_restart_comes_back_on_the_same_port() -> anyhow::Result<()>
    {
        let mut redis = RedisServer::start().await?;
        let port = redis.port();
        assert_eq!(redis.cmd(&["SET", "k", "v"]).await?, "+OK\r\n");
        let mut open = TcpStream::connect(("127.0.0.1", port)).await?;

        redis.kill().await;
        assert!(
            redis.cmd(&["PING"]).await.is_err(),
            "a killed server answered"
        );
        let mut buf = [0u8; 16];
        assert!(
            matches!(open.read(&mut buf).await, Ok(0) | Err(_)),
            "a connection outlived the server"
        );

        redis.restart().await?;
        assert_eq!(redis.port(), port);
        assert_eq!(redis.cmd(&["PING"]).await?, "+PONG\r\n");
        // Nothing was persisted.
        assert_eq!(redis.cmd(&["GET", "k"]).await?, "$-1\r\n");
        Ok(())
    }

    #[tokio::test]
    async fn a_port_taken_by_another_server_is_told_apart() -> anyhow::Result<()> {
        let other = RedisServer::start().await?;
        let dir = crate::workdir();
        // The other answers PING on that port, but it is not the server just started.
        let launched = launch(other.port(), dir.path(), &[]).await?;
        assert!(
            matches!(launched, Launch::PortTaken(_)),
            "ready on a taken port"
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let launched = launch(listener.local_addr()?.port(), dir.path(), &[]).await?;
        assert!(
            matches!(launched, Launch::PortTaken(_)),
            "ready on a taken port"
        );
        Ok(())
    }

    #[tokio::test]
    async fn two_servers_get_different_ports() -> anyhow::Result<()> {
        let (a, b) = tokio::try_join!(RedisServer::start(), RedisServer::start())?;
        assert_ne!(a.port(), b.port());
        assert_eq!(a.cmd(&["SET", "k", "a"]).await?, "+OK\r\n");
        assert_eq!(b.cmd(&["GET", "k"]).await?, "$-1\r\n");
        Ok(())
    }
}
