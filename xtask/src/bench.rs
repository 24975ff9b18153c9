//! `cargo xtask bench [--quick]`: Wasmgate side by side with nginx on this machine (issue 6).
//!
//! Ten scenarios against a 1 KiB response from an nginx upstream, in one invocation:
//!
//! - `direct`: the load generator talks to the upstream itself (the ceiling);
//! - `nginx`: nginx as a reverse proxy (1 worker, HTTP/1.1 keep-alive pool to the upstream);
//! - `wasmgate`: the gateway with no plugins;
//! - `wasmgate-3-plugins`: key-auth + rate-limit (unreachable limit) + transform, the counters
//!   in the gateway's memory;
//! - `wasmgate-3-plugins-redis` and `wasmgate-3-plugins-redis-exact`: the same chain with
//!   `[gateway.state] backend = "redis"` (issue 15), rate-limit in `mode = "batched"`
//!   (`sync_interval = "100ms"`) and in `mode = "exact"` (one Redis round trip per request);
//!   the redis-server, started for the run on a free loopback port without persistence, is
//!   reported with its own CPU time per request, the scripts it ran per request (each one round
//!   trip) and the commands per request (those the scripts ran included);
//! - `nginx-https` and `wasmgate-https`: the same two proxies to the upstream over TLS (a
//!   certificate generated for the run, verified by both, kept-alive connections);
//! - `nginx-log` and `wasmgate-log`: the plain proxies with a JSON access log to a file;
//! - `nginx-return` and `wasmgate-cache-hit` (issue 17): nginx answering the 1 KiB body itself
//!   (`return 200`), and the gateway answering it from its response cache (`cache = { ttl =
//!   "1h" }`: after the first request, every one is a hit), neither touching the upstream;
//!   between them `hyper-return` (`bench/hyper-return`): a bare hyper server answering the same
//!   body, the floor of any server built on hyper and tokio, the gateway included;
//! - `nginx-gzip` and `wasmgate-gzip`: the plain proxies compressing the 1 KiB `text/plain`
//!   body with gzip at level 1 (nginx's `gzip on; gzip_comp_level 1`, the gateway's
//!   `compression = { codecs = ["gzip"], gzip_level = 1 }`), every request sending
//!   `Accept-Encoding: gzip`.
//!
//! The proxy under test runs alone on CPU 0 (`taskset`); the upstream nginx, the redis-server
//! and the load generator share CPU 1 (so Redis's CPU time is not the proxy's). Each scenario is warmed up, then measured with `wrk` (closed loop, as
//! fast as the proxy goes): requests/s, p50/p99 latency, errors, and the proxy's CPU time per
//! request from `/proc/<pid>/stat`. Then `oha` drives each proxy at half of nginx's measured
//! maximum to show the p99 latency at a fixed rate. Everything is generated under
//! `target/bench/`; the report is `target/bench/report.json`, and a Markdown table is printed.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::install::{self, find_program, running_as_root};
use super::{
    build_plugins, cargo, display, ensure_wasm_target, run_step, target_dir, workspace_root,
};

/// The plugins of the `wasmgate-3-plugins` scenario, in chain order, with their configs (TOML).
const PLUGINS: [(&str, &str); 3] = [
    (
        "key-auth",
        r#"{ header = "x-api-key", consumers = [{ name = "alice", keys = ["k-alice"] }] }"#,
    ),
    (
        "rate-limit",
        r#"{ limit = 10000000, window = "1m", by = "consumer" }"#,
    ),
    (
        "transform",
        r#"{ request = { set_headers = { "x-bench" = "1" } }, response = { set_headers = { "x-served-by" = "wasmgate" } } }"#,
    ),
];
/// What rate-limit's config gets in addition in the scenarios on Redis, by `mode`.
const REDIS_BATCHED: &str = r#"mode = "batched", sync_interval = "100ms""#;
const REDIS_EXACT: &str = r#"mode = "exact""#;
/// Sent with every request of every scenario, so that all of them serve the same request.
const API_KEY_HEADER: &str = "x-api-key: k-alice";
/// Sent by the compression scenarios.
const GZIP_HEADER: &str = "Accept-Encoding: gzip";
/// The path requested; the upstream answers it with [`BODY_SIZE`] bytes.
const PATH: &str = "/1k";
const BODY_SIZE: usize = 1024;
const CONNECTIONS: u32 = 64;
/// The CPU the proxy under test gets to itself, and the one the upstream and the load share.
const PROXY_CPU: &str = "0";
const LOAD_CPU: &str = "1";
/// How long a started process may take to answer its first HTTP 200 (or Redis's PONG).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process gets to exit after SIGTERM before it (and its children) are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The prefix of the line the wrk script's `done()` hook prints.
const WRK_MARKER: &str = "WRK_RESULT ";
/// Where each started server's pid is kept while it runs, in its folder under target/bench/.
const PID_FILE: &str = "xtask.pid";

/// Prints latency percentiles and error counts as one JSON line; defining only `done` keeps
/// wrk on its fast path (no Lua per request).
const WRK_SCRIPT: &str = r#"-- generated by `cargo xtask bench`
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"#;

#[derive(Debug, Clone, Copy)]
struct Durations {
    warmup: u32,
    measure: u32,
    fixed_rate: u32,
}

impl Durations {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                warmup: 2,
                measure: 5,
                fixed_rate: 5,
            }
        } else {
            Self {
                warmup: 5,
                measure: 20,
                fixed_rate: 20,
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Direct,
    Nginx,
    Wasmgate,
    WasmgatePlugins,
    WasmgatePluginsRedis,
    WasmgatePluginsRedisExact,
    NginxHttps,
    WasmgateHttps,
    NginxLog,
    WasmgateLog,
    NginxReturn,
    HyperReturn,
    WasmgateCacheHit,
    NginxGzip,
    WasmgateGzip,
}

impl Proxy {
    /// In the order they run: the chain on Redis right after the chain in memory, so that the
    /// ratios compare runs minutes apart at most.
    const ALL: [Self; 15] = [
        Self::Direct,
        Self::Nginx,
        Self::Wasmgate,
        Self::WasmgatePlugins,
        Self::WasmgatePluginsRedis,
        Self::WasmgatePluginsRedisExact,
        Self::NginxHttps,
        Self::WasmgateHttps,
        Self::NginxLog,
        Self::WasmgateLog,
        Self::NginxReturn,
        Self::HyperReturn,
        Self::WasmgateCacheHit,
        Self::NginxGzip,
        Self::WasmgateGzip,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Nginx => "nginx",
            Self::Wasmgate => "wasmgate",
            Self::WasmgatePlugins => "wasmgate-3-plugins",
            Self::WasmgatePluginsRedis => "wasmgate-3-plugins-redis",
            Self::WasmgatePluginsRedisExact => "wasmgate-3-plugins-redis-exact",
            Self::NginxHttps => "nginx-https",
            Self::WasmgateHttps => "wasmgate-https",
            Self::NginxLog => "nginx-log",
            Self::WasmgateLog => "wasmgate-log",
            Self::NginxReturn => "nginx-return",
            Self::HyperReturn => "hyper-return",
            Self::WasmgateCacheHit => "wasmgate-cache-hit",
            Self::NginxGzip => "nginx-gzip",
            Self::WasmgateGzip => "wasmgate-gzip",
        }
    }

    /// Whether every request asks for gzip (and the proxy compresses).
    fn gzip(self) -> bool {
        matches!(self, Self::NginxGzip | Self::WasmgateGzip)
    }

    /// Whether the scenario also runs at half of nginx's rate (the proxying scenarios).
    fn fixed_rate(self) -> bool {
        !matches!(
            self,
            Self::Direct
                | Self::NginxReturn
                | Self::HyperReturn
                | Self::WasmgateCacheHit
                | Self::NginxGzip
                | Self::WasmgateGzip
        )
    }

    /// Whether the three plugins run (on whichever state backend).
    fn runs_chain(self) -> bool {
        matches!(
            self,
            Self::WasmgatePlugins | Self::WasmgatePluginsRedis | Self::WasmgatePluginsRedisExact
        )
    }

    /// What rate-limit's config gets in addition when the scenario counts on Redis.
    fn redis_mode(self) -> Option<&'static str> {
        match self {
            Self::WasmgatePluginsRedis => Some(REDIS_BATCHED),
            Self::WasmgatePluginsRedisExact => Some(REDIS_EXACT),
            _ => None,
        }
    }
}

/// The plugin chain of a gateway scenario, and where its shared state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chain {
    Off,
    Memory,
    /// `[gateway.state] backend = "redis"` at this address; rate-limit's extra config.
    Redis(SocketAddr, &'static str),
}

/// The name in the origin's generated certificate, which both proxies verify.
const ORIGIN_NAME: &str = "origin.bench";

/// The programs the benchmark drives.
#[derive(Debug)]
struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    /// The fixed-rate load generator; the fixed-rate run is skipped without it.
    oha: Option<PathBuf>,
    wasmgate: PathBuf,
    /// The bare hyper server of `hyper-return`.
    hyper_return: PathBuf,
    redis: PathBuf,
}

/// Everything a scenario needs.
#[derive(Debug)]
struct Bench {
    tools: Tools,
    durations: Durations,
    dir: PathBuf,
    upstream: SocketAddr,
    /// The upstream's TLS listener, and the PEM file of its certificate (its own CA).
    upstream_tls: SocketAddr,
    origin_cert: PathBuf,
    /// The run's redis-server: its address and pid, or why it did not start.
    redis: std::result::Result<(SocketAddr, u32), String>,
    /// Whether the proxy and the load get a CPU each (false on a 1-CPU machine).
    pin: bool,
    ticks_per_sec: u64,
    running_as_root: bool,
}

/// One scenario's measured numbers.
#[derive(Debug, Default)]
struct Measured {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
    proxy_cpu_us_per_req: Option<f64>,
    /// The part of `proxy_cpu_us_per_req` spent in the kernel.
    proxy_sys_cpu_us_per_req: Option<f64>,
    proxy_threads: Option<u64>,
    proxy_ctx_switches_per_req: Option<f64>,
    proxy_voluntary_ctx_switches_per_req: Option<f64>,
    /// How busy each pinned CPU was while measuring (%), and how much of the proxy's CPU went
    /// to other processes than the proxy: the machine's noise.
    cpu_busy_pct: Vec<f64>,
    proxy_cpu_others_pct: Option<f64>,
    /// The redis-server's CPU time per request (not in `proxy_cpu_us_per_req`: it runs on the
    /// load's CPU), the scripts it ran (EVAL, EVALSHA, FCALL: one round trip each) and the
    /// commands it processed (the scripts' own included) per request, in the scenarios on Redis.
    redis_cpu_us_per_req: Option<f64>,
    redis_scripts_per_req: Option<f64>,
    redis_commands_per_req: Option<f64>,
    wrk: Value,
    fixed_rate: Option<Value>,
    /// The proxy's memory with many idle keep-alive client connections (nginx and wasmgate).
    idle_memory: Option<Value>,
}

pub(crate) fn bench(args: &[OsString]) -> Result<ExitCode> {
    let mut quick = false;
    for arg in args {
        match arg.to_str() {
            Some("--quick") => quick = true,
            _ => {
                bail!("`bench`: unexpected argument {arg:?}\n\nusage: cargo xtask bench [--quick]")
            }
        }
    }
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let durations = Durations::new(quick);
    let dir = target_dir()?.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    stop_stale(&dir);

    let running_as_root = running_as_root()?;
    let (wrk, nginx, redis) = ensure_programs()?;
    let oha = ensure_oha(&dir.join("tools"));
    let (wasmgate, hyper_return) = build()?;
    let tools = Tools {
        wrk,
        nginx,
        oha,
        wasmgate,
        hyper_return,
        redis,
    };

    let cpus = thread::available_parallelism().map_or(1, usize::from);
    let pin = cpus >= 2;
    if !pin {
        eprintln!(
            "xtask: warning: only {cpus} CPU available: running unpinned; the numbers mix the proxy's and the load's CPU"
        );
    }

    let load_before = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load_before.split_whitespace().take(3).collect::<Vec<_>>();
    println!(
        "==> load average before measuring: {} (1, 5, 15 min)",
        load_before.join(" ")
    );
    let started = Instant::now();

    let upstream_addr = free_port()?;
    let upstream_tls = free_port()?;
    let (origin_cert, origin_key) = origin_certificate(&dir.join("tls"))?;
    let mut upstream = start_nginx(
        &tools.nginx,
        &dir.join("upstream"),
        &upstream_nginx_conf(
            upstream_addr,
            (upstream_tls, &origin_cert, &origin_key),
            running_as_root,
        ),
        pin.then_some(LOAD_CPU),
    )?;
    wait_ready(&mut upstream, upstream_addr)?;
    // One redis-server for the run; the scenarios on Redis fail (and only they) without it.
    let redis = start_redis(&tools.redis, &dir.join("redis"), pin.then_some(LOAD_CPU));
    if let Err(err) = &redis {
        eprintln!("xtask: error: redis-server did not start: {err:#}");
    }
    let (redis_guard, redis) = match redis {
        Ok((service, addr)) => {
            let pid = service.pid();
            (Some(service), Ok((addr, pid)))
        }
        Err(err) => (None, Err(format!("{err:#}"))),
    };

    let bench = Bench {
        tools,
        durations,
        dir: dir.clone(),
        upstream: upstream_addr,
        upstream_tls,
        origin_cert,
        redis,
        pin,
        ticks_per_sec: clock_ticks_per_sec(),
        running_as_root,
    };

    let mut results: Vec<(Proxy, Result<Measured>)> = Vec::new();
    let mut half_nginx_rate: Option<u64> = None;
    for proxy in Proxy::ALL {
        println!("==> scenario {}", proxy.name());
        let result = bench.scenario(proxy, half_nginx_rate);
        match &result {
            Ok(measured) => {
                if proxy == Proxy::Nginx {
                    half_nginx_rate = Some((measured.rps / 2.0).round().max(1.0) as u64);
                }
            }
            Err(err) => eprintln!("xtask: error: scenario {} failed: {err:#}", proxy.name()),
        }
        results.push((proxy, result));
    }
    // The load side's own p99 at the same rate: whether oha (sharing its CPU with the upstream)
    // kept up, and the floor the proxies' numbers sit on.
    if let (Some(oha), Some(rate)) = (&bench.tools.oha, half_nginx_rate)
        && let Some((_, Ok(direct))) = results.iter_mut().find(|(p, _)| *p == Proxy::Direct)
    {
        println!(
            "==> fixed rate, direct: {rate} req/s for {}s (oha)",
            durations.fixed_rate
        );
        match bench.oha(oha, &format!("http://{upstream_addr}{PATH}"), rate) {
            Ok(result) => direct.fixed_rate = Some(result),
            Err(err) => eprintln!("xtask: warning: fixed-rate run failed: {err:#}"),
        }
    }
    drop(upstream);
    drop(redis_guard);
    let elapsed = started.elapsed();
    let load_after = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_after = load_after.split_whitespace().take(3).collect::<Vec<_>>();

    let report = json!({
        "machine": machine(),
        "date": utc_now(),
        "command": command,
        "revision": git_revision(),
        "quick": quick,
        "load_average_before": load_before.join(" "),
        "load_average_after": load_after.join(" "),
        "elapsed_s": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "setup": {
            "connections": CONNECTIONS,
            "wrk_threads": 1,
            "warmup_s": durations.warmup,
            "measure_s": durations.measure,
            "body_bytes": BODY_SIZE,
            "proxy_cpu": if pin { PROXY_CPU } else { "any" },
            "upstream_and_load_cpu": if pin { LOAD_CPU } else { "any" },
            "tools": tool_versions(&bench.tools),
        },
        "scenarios": results.iter().map(|(proxy, result)| scenario_json(*proxy, result)).collect::<Vec<_>>(),
        "fixed_rate": fixed_rate_json(&results, half_nginx_rate, &bench),
        "ratios": ratios_json(&results),
    });
    let report_path = dir.join("report.json");
    let text = serde_json::to_string_pretty(&report).context("cannot serialize the report")?;
    fs::write(&report_path, text + "\n")
        .with_context(|| format!("cannot write {}", report_path.display()))?;

    println!();
    print!("{}", markdown(&report));
    println!(
        "\n==> wrote {} ({:.0}s of measuring)",
        report_path.display(),
        elapsed.as_secs_f64()
    );

    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, result)| result.as_ref().map_or(true, |m| m.errors > 0))
        .map(|(proxy, _)| proxy.name())
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "xtask: error: scenarios that failed or served errors: {}",
            failed.join(", ")
        );
        Ok(ExitCode::FAILURE)
    }
}

// ---------------------------------------------------------------------------------------------
// tools and builds

/// Installs `wrk`, `nginx` and `redis-server` when they are missing.
fn ensure_programs() -> Result<(PathBuf, PathBuf, PathBuf)> {
    let [wrk, nginx, redis] =
        install::ensure_programs([("wrk", "wrk"), ("nginx", "nginx"), install::REDIS_SERVER])?;
    Ok((wrk, nginx, redis))
}

/// `oha` (fixed-rate load): on `PATH`, else cached in `tools_dir`, else from apt-get when Debian
/// has it, else `cargo install`ed into `tools_dir` (a few minutes, once). `None` when that fails:
/// the fixed-rate run is then skipped.
fn ensure_oha(tools_dir: &Path) -> Option<PathBuf> {
    let cached = tools_dir.join("bin").join("oha");
    if let Some(found) = find_program("oha").or_else(|| cached.is_file().then(|| cached.clone())) {
        return Some(found);
    }
    let result = (|| -> Result<PathBuf> {
        let policy = Command::new("apt-cache")
            .args(["policy", "oha"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let apt_has_it = policy
            .lines()
            .any(|line| line.trim().starts_with("Candidate:") && !line.contains("(none)"));
        if apt_has_it && running_as_root()? {
            println!("==> installing oha with apt-get");
            run_step(
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "oha"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            return find_program("oha").context("apt-get installed oha but it is not on PATH");
        }
        println!(
            "==> installing oha (the fixed-rate load generator; Debian has none) with cargo into {} \
             (once: ~15 CPU-minutes)",
            tools_dir.display()
        );
        run_step(
            cargo()
                .args(["install", "oha", "--version", "1.16.0", "--locked"])
                // Plain HTTP is all it needs; it builds only with a TLS backend, and native-tls
                // (the system's OpenSSL) compiles faster than rustls with aws-lc.
                .args(["--no-default-features", "--features", "native-tls"])
                .arg("--root")
                .arg(tools_dir)
                // Kept, so that an interrupted build resumes.
                .arg("--target-dir")
                .arg(tools_dir.join("build"))
                .current_dir(tools_dir.parent().unwrap_or(tools_dir)),
        )?;
        ensure!(cached.is_file(), "{} is missing", cached.display());
        Ok(cached.clone())
    })();
    match result {
        Ok(path) => Some(path),
        Err(err) => {
            eprintln!("xtask: warning: no oha, skipping the fixed-rate run: {err:#}");
            None
        }
    }
}

/// The release gateway, `hyper-return` and the three plugins of `wasmgate-3-plugins`; the
/// paths of the gateway and of `hyper-return`.
fn build() -> Result<(PathBuf, PathBuf)> {
    ensure_wasm_target()?;
    install::ensure_make()?;
    let target = target_dir()?;
    build_plugins(&target)?;
    run_step(cargo().args(["build", "--release", "-p", "wasmgate", "-p", "hyper-return"]))?;
    let release = target.join("release");
    Ok((release.join("wasmgate"), release.join("hyper-return")))
}

fn tool_versions(tools: &Tools) -> Value {
    let version = |program: &Path, arg: &str| -> Option<String> {
        let output = Command::new(program).arg(arg).output().ok()?;
        // nginx prints its version on stderr; wrk prints it with its usage and exits 1.
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        text.lines().next().map(|line| line.trim().to_owned())
    };
    json!({
        "wrk": version(&tools.wrk, "-v"),
        "nginx": version(&tools.nginx, "-v"),
        "oha": tools.oha.as_deref().and_then(|oha| version(oha, "--version")),
        "redis-server": version(&tools.redis, "--version"),
    })
}

// ---------------------------------------------------------------------------------------------
// scenarios

impl Bench {
    fn scenario(&self, proxy: Proxy, half_nginx_rate: Option<u64>) -> Result<Measured> {
        let scenario_dir = self.dir.join(proxy.name());
        fs::create_dir_all(&scenario_dir)
            .with_context(|| format!("cannot create {}", scenario_dir.display()))?;
        let pin = self.pin.then_some(PROXY_CPU);
        let (mut guard, addr) = match proxy {
            Proxy::Direct => (None, self.upstream),
            Proxy::HyperReturn => {
                let addr = free_port()?;
                let log = fs::File::create(scenario_dir.join("hyper-return.log"))
                    .context("cannot create hyper-return's log file")?;
                let mut command = pinned(pin, &self.tools.hyper_return);
                command
                    .arg(addr.to_string())
                    .arg(BODY_SIZE.to_string())
                    .stdout(Stdio::null())
                    .stderr(log);
                (
                    Some(Service::spawn(proxy.name(), &scenario_dir, &mut command)?),
                    addr,
                )
            }
            Proxy::Nginx
            | Proxy::NginxHttps
            | Proxy::NginxLog
            | Proxy::NginxReturn
            | Proxy::NginxGzip => {
                let addr = free_port()?;
                let origin = match proxy {
                    Proxy::NginxHttps => Origin::Https(self.upstream_tls, &self.origin_cert),
                    _ => Origin::Http(self.upstream),
                };
                let mode = match proxy {
                    Proxy::NginxLog => NginxMode::Log,
                    Proxy::NginxReturn => NginxMode::Return,
                    Proxy::NginxGzip => NginxMode::Gzip,
                    _ => NginxMode::Plain,
                };
                let conf = proxy_nginx_conf(addr, origin, mode, self.running_as_root);
                let guard = start_nginx(&self.tools.nginx, &scenario_dir, &conf, pin)?;
                (Some(guard), addr)
            }
            Proxy::Wasmgate
            | Proxy::WasmgatePlugins
            | Proxy::WasmgatePluginsRedis
            | Proxy::WasmgatePluginsRedisExact
            | Proxy::WasmgateHttps
            | Proxy::WasmgateLog
            | Proxy::WasmgateCacheHit
            | Proxy::WasmgateGzip => {
                let addr = free_port()?;
                let config = scenario_dir.join("gateway.toml");
                let origin = match proxy {
                    Proxy::WasmgateHttps => Origin::Https(self.upstream_tls, &self.origin_cert),
                    _ => Origin::Http(self.upstream),
                };
                let access_log = scenario_dir.join("access.log");
                let chain = match (proxy.runs_chain(), proxy.redis_mode()) {
                    (false, _) => Chain::Off,
                    (true, None) => Chain::Memory,
                    (true, Some(mode)) => match &self.redis {
                        Ok((redis, _)) => Chain::Redis(*redis, mode),
                        Err(err) => bail!("no redis-server: {err}"),
                    },
                };
                let route_keys = match proxy {
                    Proxy::WasmgateCacheHit => "cache = { ttl = \"1h\" }\n",
                    Proxy::WasmgateGzip => {
                        "compression = { codecs = [\"gzip\"], gzip_level = 1 }\n"
                    }
                    _ => "",
                };
                let toml = wasmgate_config(
                    addr,
                    origin,
                    chain,
                    (proxy == Proxy::WasmgateLog).then_some(access_log.as_path()),
                    &self.dir,
                ) + route_keys;
                fs::write(&config, toml)
                    .with_context(|| format!("cannot write {}", config.display()))?;
                let log = fs::File::create(scenario_dir.join("wasmgate.log"))
                    .context("cannot create the gateway's log file")?;
                let mut command = pinned(pin, &self.tools.wasmgate);
                command
                    .arg("run")
                    .arg("--config")
                    .arg(&config)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(log);
                (
                    Some(Service::spawn(proxy.name(), &scenario_dir, &mut command)?),
                    addr,
                )
            }
        };
        let head = match guard.as_mut() {
            Some(service) => wait_ready(service, addr)?,
            None => http_get(addr)?,
        };
        check_response(proxy, &head)?;
        if proxy.gzip() {
            let head = http_get_with(addr, GZIP_HEADER)?;
            ensure!(
                head.to_ascii_lowercase()
                    .contains("\r\ncontent-encoding: gzip\r\n"),
                "{}: the response is not gzipped:\n{head}",
                proxy.name()
            );
        }

        let url = format!("http://{addr}{PATH}");
        let extra = proxy.gzip().then_some(GZIP_HEADER);
        let script = self.dir.join("report.lua");
        fs::write(&script, WRK_SCRIPT).context("cannot write the wrk script")?;
        println!("    warm-up {}s", self.durations.warmup);
        let warm = self.wrk(&url, &script, self.durations.warmup, extra)?;
        if wrk_errors(&warm) > 0 {
            eprintln!(
                "xtask: warning: {} errors during the warm-up: {warm}",
                wrk_errors(&warm)
            );
        }

        let pids = guard.as_ref().map(|s| process_tree(s.pid()));
        let redis = match (&self.redis, proxy.redis_mode()) {
            (Ok(redis), Some(_)) => Some(*redis),
            _ => None,
        };
        let redis_before = redis.map(RedisStats::read).transpose()?;
        let before = pids.as_ref().map(|pids| ProcStats::read(pids));
        let cpus_before = cpu_times();
        println!("    measuring {}s", self.durations.measure);
        if proxy == Proxy::WasmgateCacheHit {
            let head = http_get(addr)?;
            ensure!(
                head.to_ascii_lowercase().contains("\r\nx-cache: hit\r\n"),
                "{}: not answered from the cache after the warm-up:\n{head}",
                proxy.name()
            );
        }
        let wrk = self.wrk(&url, &script, self.durations.measure, extra)?;
        let cpus_after = cpu_times();
        let after = pids.as_ref().map(|pids| ProcStats::read(pids));
        let redis_after = redis.map(RedisStats::read).transpose()?;
        fs::write(scenario_dir.join("wrk.json"), wrk.to_string())
            .context("cannot save wrk's result")?;

        let requests = wrk["requests"].as_u64().unwrap_or(0);
        let duration_us = wrk["duration_us"].as_u64().unwrap_or(0);
        ensure!(
            requests > 0 && duration_us > 0,
            "wrk made no requests: {wrk}"
        );
        let per_req = |x: u64| x as f64 / requests as f64;
        let mut measured = Measured {
            rps: requests as f64 * 1e6 / duration_us as f64,
            p50_ms: wrk["p50_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
            p99_ms: wrk["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
            errors: wrk_errors(&wrk),
            requests,
            ..Measured::default()
        };
        if let (Some(before), Some(after)) = (&before, &after) {
            let us = |ticks: u64| ticks * 1_000_000 / self.ticks_per_sec.max(1);
            measured.proxy_cpu_us_per_req = Some(per_req(us(after
                .cpu_ticks
                .saturating_sub(before.cpu_ticks))));
            measured.proxy_sys_cpu_us_per_req = Some(per_req(us(after
                .sys_ticks
                .saturating_sub(before.sys_ticks))));
            measured.proxy_threads = Some(after.threads);
            measured.proxy_ctx_switches_per_req = Some(per_req(
                after.ctx_switches().saturating_sub(before.ctx_switches()),
            ));
            measured.proxy_voluntary_ctx_switches_per_req =
                Some(per_req(after.voluntary.saturating_sub(before.voluntary)));
        }
        if let (Some(before), Some(after)) = (&redis_before, &redis_after) {
            let us = |ticks: u64| ticks * 1_000_000 / self.ticks_per_sec.max(1);
            measured.redis_cpu_us_per_req = Some(per_req(us(after
                .cpu_ticks
                .saturating_sub(before.cpu_ticks))));
            measured.redis_scripts_per_req =
                Some(per_req(after.scripts.saturating_sub(before.scripts)));
            measured.redis_commands_per_req =
                Some(per_req(after.commands.saturating_sub(before.commands)));
        }
        measured.wrk = wrk;
        let busy = |cpu: usize| -> Option<(u64, u64)> {
            let (b0, t0) = *cpus_before.get(cpu)?;
            let (b1, t1) = *cpus_after.get(cpu)?;
            Some((b1.saturating_sub(b0), t1.saturating_sub(t0).max(1)))
        };
        measured.cpu_busy_pct = (0..cpus_after.len())
            .filter_map(busy)
            .map(|(busy, total)| round1(busy as f64 * 100.0 / total as f64))
            .collect();
        if self.pin
            && let (Some((busy, total)), Some(before), Some(after)) = (busy(0), &before, &after)
        {
            let proxy = after.cpu_ticks.saturating_sub(before.cpu_ticks);
            measured.proxy_cpu_others_pct = Some(round1(
                busy.saturating_sub(proxy) as f64 * 100.0 / total as f64,
            ));
        }
        println!(
            "    {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors, proxy CPU {}",
            measured.rps,
            measured.p50_ms,
            measured.p99_ms,
            measured.errors,
            measured
                .proxy_cpu_us_per_req
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.2} µs/req")),
        );
        if let (Some(cpu), Some(scripts), Some(commands)) = (
            measured.redis_cpu_us_per_req,
            measured.redis_scripts_per_req,
            measured.redis_commands_per_req,
        ) {
            println!(
                "    redis-server: CPU {cpu:.2} µs/req, {scripts:.4} scripts/req, {commands:.4} commands/req"
            );
        }

        if proxy.fixed_rate()
            && let (Some(oha), Some(rate)) = (
                &self.tools.oha,
                half_nginx_rate.or_else(|| {
                    (proxy == Proxy::Nginx).then(|| (measured.rps / 2.0).round().max(1.0) as u64)
                }),
            )
        {
            println!(
                "    fixed rate: {rate} req/s for {}s (oha)",
                self.durations.fixed_rate
            );
            match self.oha(oha, &url, rate) {
                Ok(result) => {
                    println!(
                        "    at {rate} req/s: achieved {}, p50 {} ms, p99 {} ms, {} errors",
                        result["rps"], result["p50_ms"], result["p99_ms"], result["errors"]
                    );
                    fs::write(scenario_dir.join("oha.json"), result.to_string())
                        .context("cannot save oha's result")?;
                    measured.fixed_rate = Some(result);
                }
                Err(err) => eprintln!("xtask: warning: fixed-rate run failed: {err:#}"),
            }
        }

        if matches!(proxy, Proxy::Nginx | Proxy::Wasmgate)
            && let Some(pids) = &pids
        {
            match idle_memory(addr, pids) {
                Ok(result) => {
                    println!(
                        "    {} idle connections: {} KiB each; RSS {} KiB before, {} KiB after they closed",
                        result["connections"],
                        result["kib_per_connection"],
                        result["rss_before_kib"],
                        result["rss_after_close_kib"],
                    );
                    measured.idle_memory = Some(result);
                }
                Err(err) => eprintln!("xtask: warning: idle-connection memory run failed: {err:#}"),
            }
        }

        if let Some(service) = guard.as_mut() {
            service.stop()?;
        }
        Ok(measured)
    }

    /// Runs wrk for `seconds` and returns what the script's `done()` printed.
    fn wrk(&self, url: &str, script: &Path, seconds: u32, extra: Option<&str>) -> Result<Value> {
        let mut command = pinned(self.pin.then_some(LOAD_CPU), &self.tools.wrk);
        command
            .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{seconds}s")])
            .args(["--timeout", "5s", "-H", API_KEY_HEADER]);
        if let Some(header) = extra {
            command.args(["-H", header]);
        }
        command.arg("-s").arg(script).arg(url).stdin(Stdio::null());
        let output = command
            .output()
            .with_context(|| format!("failed to run `{}`", display(&command)))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "`{}` failed ({}):\n{stdout}{}",
            display(&command),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix(WRK_MARKER))
            .with_context(|| format!("wrk printed no result line:\n{stdout}"))?;
        serde_json::from_str(line).with_context(|| format!("cannot parse wrk's result {line}"))
    }

    /// Runs oha at `rate` requests/s and returns the summary it reports.
    fn oha(&self, oha: &Path, url: &str, rate: u64) -> Result<Value> {
        let mut command = pinned(self.pin.then_some(LOAD_CPU), oha);
        command
            .args([
                "--no-tui",
                "--output-format",
                "json",
                "--latency-correction",
            ])
            // Requests in flight at the deadline finish rather than count as errors.
            .arg("--wait-ongoing-requests-after-deadline")
            .args(["-z", &format!("{}s", self.durations.fixed_rate)])
            .args(["-q", &rate.to_string(), "-c", &CONNECTIONS.to_string()])
            .args(["-H", API_KEY_HEADER])
            .arg(url)
            .stdin(Stdio::null());
        let output = command
            .output()
            .with_context(|| format!("failed to run `{}`", display(&command)))?;
        ensure!(
            output.status.success(),
            "`{}` failed ({}): {}",
            display(&command),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value =
            serde_json::from_slice(&output.stdout).context("cannot parse oha's JSON output")?;
        let summary = &report["summary"];
        let percentile = |p: &str| report["latencyPercentiles"][p].as_f64().map(|s| s * 1000.0);
        let statuses = report["statusCodeDistribution"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let non_2xx: u64 = statuses
            .iter()
            .filter(|(code, _)| !code.starts_with('2'))
            .filter_map(|(_, n)| n.as_u64())
            .sum();
        let ok: u64 = statuses
            .iter()
            .filter(|(code, _)| code.starts_with('2'))
            .filter_map(|(_, n)| n.as_u64())
            .sum();
        let socket_errors: u64 = report["errorDistribution"]
            .as_object()
            .map(|errors| errors.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let achieved = summary["requestsPerSec"].as_f64();
        Ok(json!({
            "target_rps": rate,
            "rps": achieved.map(round1),
            // Below the target, the proxy (or the load generator) could not keep up: the
            // latencies then include queueing.
            "kept_up": achieved.is_some_and(|rps| rps >= 0.97 * rate as f64),
            "requests": ok + non_2xx,
            "p50_ms": percentile("p50").map(round3),
            "p99_ms": percentile("p99").map(round3),
            "p999_ms": percentile("p99.9").map(round3),
            "max_ms": summary["slowest"].as_f64().map(|s| round3(s * 1000.0)),
            "errors": non_2xx + socket_errors,
        }))
    }
}

fn wrk_errors(wrk: &Value) -> u64 {
    ["connect", "read", "write", "status", "timeout"]
        .iter()
        .filter_map(|key| wrk[key].as_u64())
        .sum()
}

/// `taskset -c CPU program` when pinned, else `program`.
fn pinned(cpu: Option<&str>, program: &Path) -> Command {
    match cpu {
        Some(cpu) => {
            let mut command = Command::new("taskset");
            command.args(["-c", cpu]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Checks the first response before loading: a 200 with the body, and the transform plugin's
/// header when the chain runs (which shows that key-auth let the key through too).
fn check_response(proxy: Proxy, head: &str) -> Result<()> {
    let lower = head.to_ascii_lowercase();
    ensure!(
        lower.contains(&format!("\r\ncontent-length: {BODY_SIZE}\r\n")),
        "{}: the response is not the {BODY_SIZE}-byte body:\n{head}",
        proxy.name()
    );
    let served_by = lower.contains("\r\nx-served-by: wasmgate\r\n");
    ensure!(
        served_by == proxy.runs_chain(),
        "{}: x-served-by is {} in the response, so the plugin chain did {}run:\n{head}",
        proxy.name(),
        if served_by { "set" } else { "missing" },
        if served_by { "" } else { "not " },
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// memory per idle connection

/// Idle keep-alive client connections opened for the memory measurement, at most (fewer when
/// the open-files limit is lower).
const IDLE_CONNECTIONS: usize = 4000;

/// Opens idle keep-alive connections to `addr` (each makes one request and then waits), and
/// reads the resident memory of the processes `pids` before, with them open, and once they
/// are closed again.
fn idle_memory(addr: SocketAddr, pids: &[u32]) -> Result<Value> {
    let count = IDLE_CONNECTIONS.min(open_files_limit().saturating_sub(200));
    ensure!(
        count >= 100,
        "the open-files limit allows too few connections"
    );
    let before = rss_kib(pids);
    let mut open = Vec::with_capacity(count);
    let request = format!("GET {PATH} HTTP/1.1\r\nHost: bench\r\n{API_KEY_HEADER}\r\n\r\n");
    for i in 0..count {
        let mut stream =
            TcpStream::connect(addr).with_context(|| format!("cannot open idle connection {i}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        read_response(&mut stream).with_context(|| format!("idle connection {i}"))?;
        open.push(stream);
    }
    // Let the proxy settle (timers, buffers given back after the request) before reading.
    thread::sleep(Duration::from_secs(1));
    let with_open = rss_kib(pids);
    drop(open);
    thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pids);
    Ok(json!({
        "connections": count,
        "rss_before_kib": before,
        "rss_open_kib": with_open,
        "rss_after_close_kib": after,
        "kib_per_connection": round3(with_open.saturating_sub(before) as f64 / count as f64),
    }))
}

/// Reads one response with a `content-length` body from `stream`.
fn read_response(stream: &mut TcpStream) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "closed before the response ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("no content-length")?;
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
    }
}

/// The resident memory of `pids`, summed, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum()
}

/// This process's soft limit on open files.
fn open_files_limit() -> usize {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

// ---------------------------------------------------------------------------------------------
// configs

/// `user root;` when nginx is started as root: its workers would otherwise switch to `nobody`,
/// who cannot write the temp paths under target/. Without root, nginx runs as the current user
/// and the directive must be absent.
fn nginx_common(root: bool) -> String {
    let user = if root { "user root root;\n" } else { "" };
    format!(
        "{user}worker_processes 1;\n\
         daemon off;\n\
         pid nginx.pid;\n\
         error_log logs/error.log error;\n\
         events {{\n    worker_connections 4096;\n}}\n"
    )
}

/// The http-level settings both nginx instances share: no access log, temp paths under the
/// prefix, and keep-alive connections that are not closed every 1000 requests.
const NGINX_HTTP_COMMON: &str = concat!(
    "    access_log off;\n",
    "    client_body_temp_path tmp/client_body;\n",
    "    proxy_temp_path tmp/proxy;\n",
    "    fastcgi_temp_path tmp/fastcgi;\n",
    "    uwsgi_temp_path tmp/uwsgi;\n",
    "    scgi_temp_path tmp/scgi;\n",
    "    keepalive_requests 1000000;\n",
    "    keepalive_timeout 75s;\n",
);

/// Where a proxy forwards to: the origin's plain listener, or its TLS one with the PEM file
/// that verifies it.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    Http(SocketAddr),
    Https(SocketAddr, &'a Path),
}

/// A self-signed certificate for [`ORIGIN_NAME`] in `dir`: (certificate, key) PEM paths.
fn origin_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec![ORIGIN_NAME.to_owned()])
            .context("cannot generate the origin's certificate")?;
    let (cert_path, key_path) = (dir.join("origin.pem"), dir.join("origin.key"));
    fs::write(&cert_path, cert.pem()).context("cannot write the origin's certificate")?;
    fs::write(&key_path, signing_key.serialize_pem()).context("cannot write its key")?;
    Ok((cert_path, key_path))
}

fn upstream_nginx_conf(
    listen: SocketAddr,
    (tls_listen, cert, key): (SocketAddr, &Path, &Path),
    root: bool,
) -> String {
    let body = return_body();
    format!(
        "# generated by `cargo xtask bench`: the origin, answering {PATH} with {BODY_SIZE} bytes\n\
         {common}http {{\n{NGINX_HTTP_COMMON}    default_type text/plain;\n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       listen {tls_listen} ssl;\n\
         \x20       ssl_certificate {cert};\n\
         \x20       ssl_certificate_key {key};\n\
         \x20       location = {PATH} {{\n\
         \x20           return 200 \"{body}\";\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        common = nginx_common(root),
        cert = cert.display(),
        key = key.display(),
    )
}

/// nginx's JSON access log with the fields of the gateway's (docs/operations.md).
const NGINX_JSON_LOG: &str = concat!(
    "    log_format json escape=json '{\"time\":\"$time_iso8601\",\"request_id\":\"$request_id\",",
    "\"client\":\"$remote_addr\",\"method\":\"$request_method\",\"host\":\"$host\",\"path\":\"$uri\",",
    "\"upstream\":\"$upstream_addr\",\"status\":$status,\"bytes_in\":$request_length,",
    "\"bytes_out\":$body_bytes_sent,\"duration_ms\":$request_time}';\n",
    "    access_log logs/access.log json;\n",
);

/// What the nginx under test does besides proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NginxMode {
    Plain,
    /// A JSON access log to a file.
    Log,
    /// Answers the 1 KiB body itself, as the origin does (`return 200`).
    Return,
    /// gzip at level 1 for `text/plain`, the origin's type.
    Gzip,
}

/// The 1 KiB body, as nginx's `return` writes it.
fn return_body() -> String {
    "x".repeat(BODY_SIZE)
}

fn proxy_nginx_conf(listen: SocketAddr, origin: Origin<'_>, mode: NginxMode, root: bool) -> String {
    let log = match mode {
        NginxMode::Log => NGINX_JSON_LOG,
        NginxMode::Gzip => concat!(
            "    gzip on;\n",
            "    gzip_comp_level 1;\n",
            "    gzip_min_length 256;\n",
            "    gzip_types text/plain;\n",
        ),
        NginxMode::Plain | NginxMode::Return => "",
    };
    let action = match mode {
        NginxMode::Return => format!(
            "\x20           default_type text/plain;\n\x20           return 200 \"{}\";\n",
            return_body()
        ),
        _ => String::new(),
    };
    // Over TLS nginx verifies the origin as the gateway does, and reuses sessions and
    // kept-alive connections.
    let (scheme, upstream, tls) = match origin {
        Origin::Http(upstream) => ("http", upstream, String::new()),
        Origin::Https(upstream, ca) => (
            "https",
            upstream,
            format!(
                "\x20           proxy_ssl_verify on;\n\
                 \x20           proxy_ssl_trusted_certificate {};\n\
                 \x20           proxy_ssl_name {ORIGIN_NAME};\n\
                 \x20           proxy_ssl_server_name on;\n\
                 \x20           proxy_ssl_session_reuse on;\n",
                ca.display()
            ),
        ),
    };
    format!(
        "# generated by `cargo xtask bench`: nginx as the reverse proxy under test\n\
         {common}http {{\n{NGINX_HTTP_COMMON}{log}\
         \x20   upstream origin {{\n\
         \x20       server {upstream};\n\
         \x20       keepalive 64;\n\
         \x20       keepalive_requests 1000000;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       location / {{\n\
         {action}\
         \x20           proxy_pass {scheme}://origin;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         {tls}\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        common = nginx_common(root),
    )
}

fn wasmgate_config(
    listen: SocketAddr,
    origin: Origin<'_>,
    chain: Chain,
    access_log: Option<&Path>,
    bench_dir: &Path,
) -> String {
    let access_log = access_log.map_or_else(|| "off".to_owned(), |p| p.display().to_string());
    let upstream = match origin {
        Origin::Http(upstream) => format!("targets = [\"{upstream}\"]"),
        Origin::Https(upstream, ca) => format!(
            "targets = [\"https://{upstream}\"]\n\
             tls = {{ ca = {ca:?}, server_name = \"{ORIGIN_NAME}\" }}",
            ca = ca.display().to_string()
        ),
    };
    let plugins_dir = workspace_root().join("plugins");
    let cache_dir = bench_dir.join("plugin-cache");
    // On Redis, a call Redis cannot answer in time is refused (a 503 that wrk counts) rather
    // than answered from the gateway's memory, which would measure the memory backend again.
    let state = match chain {
        Chain::Redis(redis, _) => format!(
            "\n[gateway.state]\n\
             backend = \"redis\"\n\
             url = \"redis://{redis}\"\n\
             on_unavailable = \"deny\"\n"
        ),
        Chain::Off | Chain::Memory => String::new(),
    };
    let mut toml = format!(
        "# generated by `cargo xtask bench`\n\
         [gateway]\n\
         listen = [\"{listen}\"]\n\
         plugins_dir = {plugins_dir:?}\n\
         plugin_cache_dir = {cache_dir:?}\n\
         shutdown_grace = \"1s\"\n\
         access_log = {access_log:?}\n\
         watch = false\n\
         # one worker for the one CPU it is pinned to, as nginx's `worker_processes 1`\n\
         workers = 1\n\
         {state}\
         \n\
         [upstreams.origin]\n\
         {upstream}\n\
         \n\
         [[routes]]\n\
         name = \"bench\"\n\
         upstream = \"origin\"\n",
        plugins_dir = plugins_dir.display().to_string(),
        cache_dir = cache_dir.display().to_string(),
    );
    if chain != Chain::Off {
        for (name, config) in PLUGINS {
            let config = match (name, chain) {
                ("rate-limit", Chain::Redis(_, mode)) => {
                    let keys = config.strip_suffix(" }").unwrap_or(config);
                    format!("{keys}, {mode} }}")
                }
                _ => config.to_owned(),
            };
            let _ = write!(
                toml,
                "\n[[routes.plugins]]\nname = \"{name}\"\nconfig = {config}\n"
            );
        }
    }
    toml
}

// ---------------------------------------------------------------------------------------------
// processes

/// A started server, stopped with SIGTERM (so nginx's master takes its workers down) and killed
/// with its whole process tree if it does not exit in time. Dropping it stops it.
#[derive(Debug)]
struct Service {
    name: String,
    pid_file: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Starts `command`, whose files live in `dir`; its pid goes to `dir/xtask.pid` so that a
    /// later run can stop it if this one is killed before it could (see [`stop_stale`]).
    fn spawn(name: &str, dir: &Path, command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name} ({})", display(command)))?;
        let service = Self {
            name: name.to_owned(),
            pid_file: dir.join(PID_FILE),
            child: Some(child),
        };
        fs::write(&service.pid_file, service.pid().to_string())
            .with_context(|| format!("cannot write {}", service.pid_file.display()))?;
        Ok(service)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        // Collected first: once the parent is gone its children are reparented.
        let tree = process_tree(pid);
        if child.try_wait().ok().flatten().is_none() {
            signal("TERM", &[pid]);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let leftover: Vec<u32> = tree
            .into_iter()
            .filter(|&p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if !leftover.is_empty() {
            signal("KILL", &leftover);
        }
        child
            .wait()
            .with_context(|| format!("failed to wait for {}", self.name))?;
        let _ = fs::remove_file(&self.pid_file);
        Ok(())
    }
}

/// Stops what an earlier run left behind in `bench_dir` (killed before it could clean up): each
/// `*/xtask.pid` whose process still runs with that folder on its command line.
fn stop_stale(bench_dir: &Path) {
    let Ok(entries) = fs::read_dir(bench_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let pid_file = entry.path().join(PID_FILE);
        let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let dir = entry.path().display().to_string();
        if String::from_utf8_lossy(&cmdline).contains(&dir) {
            println!("==> stopping pid {pid}, left running by an earlier run ({dir})");
            let tree = process_tree(pid);
            signal("TERM", &[pid]);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            signal("KILL", &tree);
        }
        let _ = fs::remove_file(&pid_file);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            eprintln!("xtask: warning: {err:#}");
        }
    }
}

fn signal(signal: &str, pids: &[u32]) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// Writes `conf` into `prefix` (with the logs/ and tmp/ folders nginx needs) and starts nginx on
/// it in the foreground.
fn start_nginx(nginx: &Path, prefix: &Path, conf: &str, cpu: Option<&str>) -> Result<Service> {
    for sub in ["logs", "tmp"] {
        fs::create_dir_all(prefix.join(sub))
            .with_context(|| format!("cannot create {}", prefix.join(sub).display()))?;
    }
    let conf_path = prefix.join("nginx.conf");
    fs::write(&conf_path, conf).with_context(|| format!("cannot write {}", conf_path.display()))?;
    let name = format!(
        "nginx ({})",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut prefix_arg = prefix.as_os_str().to_owned();
    prefix_arg.push("/");
    let mut command = pinned(cpu, nginx);
    command
        .arg("-p")
        .arg(prefix_arg)
        .arg("-c")
        .arg(&conf_path)
        // Before the config is read, nginx opens its compiled-in error log (/var/log/nginx, not
        // writable without root); -e points it into the prefix.
        .arg("-e")
        .arg(prefix.join("logs").join("startup.log"))
        .stdin(Stdio::null());
    Service::spawn(&name, prefix, &mut command)
}

/// Polls `addr` with `GET PATH` until it answers 200, failing if the service exits first or
/// takes too long; the response head.
fn wait_ready(service: &mut Service, addr: SocketAddr) -> Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_error;
    loop {
        if let Some(child) = service.child.as_mut()
            && let Some(status) = child
                .try_wait()
                .with_context(|| format!("failed to poll {}", service.name))?
        {
            service.child = None;
            bail!(
                "{} exited before serving {addr} ({status}); see its logs under target/bench/",
                service.name
            );
        }
        match http_get(addr) {
            Ok(head) if head.starts_with("HTTP/1.1 200") => return Ok(head),
            Ok(head) => last_error = head.lines().next().unwrap_or_default().to_owned(),
            Err(err) => last_error = format!("{err:#}"),
        }
        ensure!(
            Instant::now() < deadline,
            "{} did not answer 200 on {addr} within {}s (last: {last_error})",
            service.name,
            READY_TIMEOUT.as_secs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One `GET PATH` with the benchmark's header over a fresh connection; the response head.
/// Only a readiness probe: the measuring is wrk's and oha's.
fn http_get(addr: SocketAddr) -> Result<String> {
    http_get_with(addr, "X-Bench-Probe: 1")
}

/// [`http_get`] with one more header line.
fn http_get_with(addr: SocketAddr, header: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {PATH} HTTP/1.1\r\nHost: {addr}\r\n{API_KEY_HEADER}\r\n{header}\r\nConnection: close\r\n\r\n"
    )?;
    // No half-close: nginx would take it for a client abort and answer nothing.
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let head = response
        .split_once("\r\n\r\n")
        .map_or(&*response, |(head, _)| head);
    ensure!(!head.is_empty(), "empty response");
    Ok(format!("{head}\r\n"))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Starts `redis-server` on a free loopback port, without persistence, its files in `dir`, and
/// waits until it answers PING; the service and its address.
fn start_redis(redis: &Path, dir: &Path, cpu: Option<&str>) -> Result<(Service, SocketAddr)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let addr = free_port()?;
    let log = fs::File::create(dir.join("redis.log")).context("cannot create redis's log file")?;
    let mut command = pinned(cpu, redis);
    command
        .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        // `--dir` keeps any file it writes under target/bench/; with its command line left
        // alone (no process title), a later run finds it there when this one was killed.
        .arg("--dir")
        .arg(dir)
        .args(["--set-proc-title", "no"])
        .stdin(Stdio::null())
        .stdout(log);
    let mut service = Service::spawn("redis-server", dir, &mut command)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(child) = service.child.as_mut()
            && let Some(status) = child.try_wait().context("failed to poll redis-server")?
        {
            service.child = None;
            bail!(
                "redis-server exited before serving {addr} ({status}); see {}",
                dir.join("redis.log").display()
            );
        }
        let last_error = match redis_command(addr, &["PING"]) {
            Ok(reply) if reply == "+PONG" => return Ok((service, addr)),
            Ok(reply) => reply,
            Err(err) => format!("{err:#}"),
        };
        ensure!(
            Instant::now() < deadline,
            "redis-server did not answer PING on {addr} within {}s (last: {last_error})",
            READY_TIMEOUT.as_secs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one command to Redis over a fresh connection; the reply's first line (`+PONG`), or a
/// bulk string's contents.
fn redis_command(addr: SocketAddr, args: &[&str]) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        let _ = write!(request, "${}\r\n{arg}\r\n", arg.len());
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line)?;
    let line = line.trim_end();
    ensure!(!line.is_empty(), "Redis closed the connection");
    let Some(length) = line.strip_prefix('$') else {
        return Ok(line.to_owned());
    };
    let length: usize = length
        .parse()
        .with_context(|| format!("a bulk reply of length {length:?}"))?;
    let mut bulk = vec![0; length + 2];
    reader.read_exact(&mut bulk)?;
    bulk.truncate(length);
    Ok(String::from_utf8_lossy(&bulk).into_owned())
}

/// A redis-server's CPU time (every thread), the scripts it has run and the commands it has
/// processed (which count the commands scripts run).
#[derive(Debug)]
struct RedisStats {
    cpu_ticks: u64,
    scripts: u64,
    commands: u64,
}

impl RedisStats {
    fn read((addr, pid): (SocketAddr, u32)) -> Result<Self> {
        let info = redis_command(addr, &["INFO", "stats", "commandstats"])
            .context("INFO stats commandstats")?;
        let commands = info
            .lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no total_commands_processed in INFO:\n{info}"))?;
        let scripts = info
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(":calls="))
            .filter(|(command, _)| {
                [
                    "eval",
                    "evalsha",
                    "eval_ro",
                    "evalsha_ro",
                    "fcall",
                    "fcall_ro",
                ]
                .contains(command)
            })
            .filter_map(|(_, calls)| calls.split(',').next()?.parse::<u64>().ok())
            .sum();
        Ok(Self {
            cpu_ticks: ProcStats::read(&[pid]).cpu_ticks,
            scripts,
            commands,
        })
    }
}

/// `pid` and its descendants (nginx's master and workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse().ok())) {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = BTreeSet::from([pid]);
    loop {
        let before = tree.len();
        for &(p, ppid) in &parents {
            if tree.contains(&ppid) {
                tree.insert(p);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree.into_iter().collect()
}

/// The fields of `/proc/PID/stat` after the command name: `[state, ppid, ...]`, so field N of
/// proc(5) (1-based) is at index N - 3.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time, threads and context switches of a set of processes (all their threads).
#[derive(Debug, Default)]
struct ProcStats {
    cpu_ticks: u64,
    /// The kernel's share of `cpu_ticks` (stime).
    sys_ticks: u64,
    threads: u64,
    voluntary: u64,
    nonvoluntary: u64,
}

impl ProcStats {
    fn read(pids: &[u32]) -> Self {
        let mut stats = Self::default();
        for &pid in pids {
            if let Some(fields) = stat_fields(pid) {
                // utime (14) and stime (15): the whole process, every thread.
                let field = |n: usize| {
                    fields
                        .get(n - 3)
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                stats.cpu_ticks += field(14) + field(15);
                stats.sys_ticks += field(15);
            }
            // Context switches are counted per thread: add up the tasks.
            if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
                for task in tasks.flatten() {
                    stats.threads += 1;
                    let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
                    for line in status.lines() {
                        let value = |prefix: &str| {
                            line.strip_prefix(prefix)
                                .and_then(|v| v.trim().parse::<u64>().ok())
                        };
                        if let Some(n) = value("voluntary_ctxt_switches:") {
                            stats.voluntary += n;
                        } else if let Some(n) = value("nonvoluntary_ctxt_switches:") {
                            stats.nonvoluntary += n;
                        }
                    }
                }
            }
        }
        stats
    }

    fn ctx_switches(&self) -> u64 {
        self.voluntary + self.nonvoluntary
    }
}

/// Busy and total ticks of each CPU, from `/proc/stat` (`cpuN` lines).
fn cpu_times() -> Vec<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(|line| {
            let ticks: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            let total: u64 = ticks.iter().take(8).sum();
            // idle and iowait
            let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
            (total.saturating_sub(idle), total)
        })
        .collect()
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------------------------
// the report

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn scenario_json(proxy: Proxy, result: &Result<Measured>) -> Value {
    match result {
        Ok(m) => json!({
            "name": proxy.name(),
            "rps": round1(m.rps),
            "p50_ms": round3(m.p50_ms),
            "p99_ms": round3(m.p99_ms),
            "errors": m.errors,
            "proxy_cpu_us_per_req": m.proxy_cpu_us_per_req.map(round3),
            "proxy_sys_cpu_us_per_req": m.proxy_sys_cpu_us_per_req.map(round3),
            "requests": m.requests,
            "proxy_threads": m.proxy_threads,
            "proxy_ctx_switches_per_req": m.proxy_ctx_switches_per_req.map(round3),
            "proxy_voluntary_ctx_switches_per_req": m.proxy_voluntary_ctx_switches_per_req.map(round3),
            "cpu_busy_pct": m.cpu_busy_pct,
            "proxy_cpu_used_by_others_pct": m.proxy_cpu_others_pct,
            "redis_cpu_us_per_req": m.redis_cpu_us_per_req.map(round3),
            "redis_scripts_per_req": m.redis_scripts_per_req.map(|n| (n * 1e4).round() / 1e4),
            "redis_commands_per_req": m.redis_commands_per_req.map(|n| (n * 1e4).round() / 1e4),
            "wrk": m.wrk,
            "idle_memory": m.idle_memory,
        }),
        Err(err) => json!({
            "name": proxy.name(),
            "rps": null,
            "p50_ms": null,
            "p99_ms": null,
            "errors": null,
            "proxy_cpu_us_per_req": null,
            "error": format!("{err:#}"),
        }),
    }
}

fn fixed_rate_json(
    results: &[(Proxy, Result<Measured>)],
    rate: Option<u64>,
    bench: &Bench,
) -> Value {
    let runs: Vec<Value> = results
        .iter()
        .filter_map(|(proxy, result)| {
            let fixed = result.as_ref().ok()?.fixed_rate.as_ref()?;
            let mut fixed = fixed.clone();
            fixed["name"] = json!(proxy.name());
            Some(fixed)
        })
        .collect();
    let p99 = |name: &str| {
        runs.iter()
            .find(|run| run["name"] == name)
            .and_then(|run| run["p99_ms"].as_f64())
    };
    let added = |a: &str, b: &str| Some(round3(p99(a)? - p99(b)?));
    json!({
        "tool": bench.tools.oha.as_ref().map(|_| "oha --latency-correction"),
        "rate_rps": rate,
        "rate_is": "half of the nginx scenario's requests/s",
        "duration_s": bench.durations.fixed_rate,
        "connections": CONNECTIONS,
        "runs": runs,
        "p99_added_ms": {
            "wasmgate_vs_nginx": added("wasmgate", "nginx"),
            "wasmgate-3-plugins_vs_wasmgate": added("wasmgate-3-plugins", "wasmgate"),
            "wasmgate-3-plugins_vs_nginx": added("wasmgate-3-plugins", "nginx"),
            "wasmgate-3-plugins-redis_vs_wasmgate-3-plugins":
                added("wasmgate-3-plugins-redis", "wasmgate-3-plugins"),
            "wasmgate-3-plugins-redis-exact_vs_wasmgate-3-plugins":
                added("wasmgate-3-plugins-redis-exact", "wasmgate-3-plugins"),
        },
    })
}

fn ratios_json(results: &[(Proxy, Result<Measured>)]) -> Value {
    let get = |proxy: Proxy| {
        results
            .iter()
            .find(|(p, _)| *p == proxy)
            .and_then(|(_, r)| r.as_ref().ok())
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round3(a / b)),
        _ => None,
    };
    let rps = |proxy| get(proxy).map(|m| m.rps);
    let cpu = |proxy| get(proxy).and_then(|m| m.proxy_cpu_us_per_req);
    json!({
        "wasmgate_vs_nginx_rps": ratio(rps(Proxy::Wasmgate), rps(Proxy::Nginx)),
        "wasmgate_vs_nginx_cpu_per_req": ratio(cpu(Proxy::Wasmgate), cpu(Proxy::Nginx)),
        "wasmgate-3-plugins_vs_wasmgate_rps": ratio(rps(Proxy::WasmgatePlugins), rps(Proxy::Wasmgate)),
        "wasmgate-3-plugins_vs_wasmgate_cpu_per_req": ratio(cpu(Proxy::WasmgatePlugins), cpu(Proxy::Wasmgate)),
        "wasmgate-3-plugins_vs_nginx_rps": ratio(rps(Proxy::WasmgatePlugins), rps(Proxy::Nginx)),
        "wasmgate-3-plugins-redis_vs_wasmgate-3-plugins_rps": ratio(rps(Proxy::WasmgatePluginsRedis), rps(Proxy::WasmgatePlugins)),
        "wasmgate-3-plugins-redis_vs_wasmgate-3-plugins_cpu_per_req": ratio(cpu(Proxy::WasmgatePluginsRedis), cpu(Proxy::WasmgatePlugins)),
        "wasmgate-3-plugins-redis-exact_vs_wasmgate-3-plugins_rps": ratio(rps(Proxy::WasmgatePluginsRedisExact), rps(Proxy::WasmgatePlugins)),
        "wasmgate-3-plugins-redis-exact_vs_wasmgate-3-plugins_cpu_per_req": ratio(cpu(Proxy::WasmgatePluginsRedisExact), cpu(Proxy::WasmgatePlugins)),
        "wasmgate-https_vs_nginx-https_rps": ratio(rps(Proxy::WasmgateHttps), rps(Proxy::NginxHttps)),
        "wasmgate-https_vs_nginx-https_cpu_per_req": ratio(cpu(Proxy::WasmgateHttps), cpu(Proxy::NginxHttps)),
        "wasmgate-log_vs_nginx-log_rps": ratio(rps(Proxy::WasmgateLog), rps(Proxy::NginxLog)),
        "wasmgate-log_vs_nginx-log_cpu_per_req": ratio(cpu(Proxy::WasmgateLog), cpu(Proxy::NginxLog)),
        "wasmgate_access_log_cpu_us_per_req": cpu(Proxy::WasmgateLog).zip(cpu(Proxy::Wasmgate)).map(|(a, b)| round3(a - b)),
        "nginx_access_log_cpu_us_per_req": cpu(Proxy::NginxLog).zip(cpu(Proxy::Nginx)).map(|(a, b)| round3(a - b)),
        "wasmgate-cache-hit_vs_nginx-return_rps": ratio(rps(Proxy::WasmgateCacheHit), rps(Proxy::NginxReturn)),
        "wasmgate-cache-hit_vs_nginx-return_cpu_per_req": ratio(cpu(Proxy::WasmgateCacheHit), cpu(Proxy::NginxReturn)),
        "hyper-return_vs_nginx-return_rps": ratio(rps(Proxy::HyperReturn), rps(Proxy::NginxReturn)),
        "hyper-return_vs_nginx-return_cpu_per_req": ratio(cpu(Proxy::HyperReturn), cpu(Proxy::NginxReturn)),
        "wasmgate-cache-hit_vs_hyper-return_cpu_per_req": ratio(cpu(Proxy::WasmgateCacheHit), cpu(Proxy::HyperReturn)),
        "wasmgate-gzip_vs_nginx-gzip_rps": ratio(rps(Proxy::WasmgateGzip), rps(Proxy::NginxGzip)),
        "wasmgate-gzip_vs_nginx-gzip_cpu_per_req": ratio(cpu(Proxy::WasmgateGzip), cpu(Proxy::NginxGzip)),
        "wasmgate_gzip_cpu_us_per_req": cpu(Proxy::WasmgateGzip).zip(cpu(Proxy::Wasmgate)).map(|(a, b)| round3(a - b)),
        "nginx_gzip_cpu_us_per_req": cpu(Proxy::NginxGzip).zip(cpu(Proxy::Nginx)).map(|(a, b)| round3(a - b)),
    })
}

/// The report as Markdown: the scenarios, the ratios and the fixed-rate run.
fn markdown(report: &Value) -> String {
    let num = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "—".to_owned(), |x| format!("{x:.digits$}"))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`{}` at {} ({}) on {}; load average before {}, after {}\n",
        report["command"].as_str().unwrap_or_default(),
        report["date"].as_str().unwrap_or_default(),
        report["revision"].as_str().unwrap_or("unknown revision"),
        report["machine"]["description"]
            .as_str()
            .unwrap_or_default(),
        report["load_average_before"].as_str().unwrap_or_default(),
        report["load_average_after"].as_str().unwrap_or_default(),
    );
    let _ = writeln!(
        out,
        "| scenario | requests/s | p50 ms | p99 ms | errors | proxy CPU µs/req | of which kernel | proxy's CPU used by others |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in report["scenarios"].as_array().into_iter().flatten() {
        let errors = match (&s["errors"], &s["error"]) {
            (Value::Number(n), _) => n.to_string(),
            (_, Value::String(e)) => format!("failed: {}", e.lines().next().unwrap_or_default()),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s["name"].as_str().unwrap_or_default(),
            num(&s["rps"], 0),
            num(&s["p50_ms"], 3),
            num(&s["p99_ms"], 3),
            errors,
            num(&s["proxy_cpu_us_per_req"], 2),
            num(&s["proxy_sys_cpu_us_per_req"], 2),
            s["proxy_cpu_used_by_others_pct"]
                .as_f64()
                .map_or_else(|| "—".to_owned(), |pct| format!("{pct:.0} %")),
        );
    }
    let on_redis: Vec<&Value> = report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["redis_cpu_us_per_req"].is_number())
        .collect();
    if !on_redis.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| state on Redis | redis-server CPU µs/req (not in the proxy's) | scripts (round trips)/req | commands/req (scripts' included) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for s in on_redis {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                s["name"].as_str().unwrap_or_default(),
                num(&s["redis_cpu_us_per_req"], 2),
                num(&s["redis_scripts_per_req"], 4),
                num(&s["redis_commands_per_req"], 4),
            );
        }
    }
    let idle: Vec<&Value> = report["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["idle_memory"].is_object())
        .collect();
    if !idle.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| idle keep-alive connections | connections | KiB each | RSS before KiB | RSS open KiB | RSS after close KiB |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for s in idle {
            let m = &s["idle_memory"];
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                s["name"].as_str().unwrap_or_default(),
                m["connections"],
                num(&m["kib_per_connection"], 2),
                m["rss_before_kib"],
                m["rss_open_kib"],
                m["rss_after_close_kib"],
            );
        }
    }
    let r = &report["ratios"];
    let _ = writeln!(out);
    let _ = writeln!(out, "| ratio | value | goal |");
    let _ = writeln!(out, "|---|---:|---|");
    for (label, key, goal) in [
        (
            "wasmgate / nginx, requests/s",
            "wasmgate_vs_nginx_rps",
            "≥ 1",
        ),
        (
            "wasmgate / nginx, CPU per request",
            "wasmgate_vs_nginx_cpu_per_req",
            "≤ 1",
        ),
        (
            "wasmgate-3-plugins / wasmgate, requests/s",
            "wasmgate-3-plugins_vs_wasmgate_rps",
            "≥ 0.85",
        ),
        (
            "wasmgate-3-plugins / wasmgate, CPU per request",
            "wasmgate-3-plugins_vs_wasmgate_cpu_per_req",
            "",
        ),
        (
            "wasmgate-3-plugins-redis / wasmgate-3-plugins (batched), requests/s",
            "wasmgate-3-plugins-redis_vs_wasmgate-3-plugins_rps",
            "≥ 0.85",
        ),
        (
            "wasmgate-3-plugins-redis / wasmgate-3-plugins (batched), CPU per request",
            "wasmgate-3-plugins-redis_vs_wasmgate-3-plugins_cpu_per_req",
            "",
        ),
        (
            "wasmgate-3-plugins-redis-exact / wasmgate-3-plugins, requests/s",
            "wasmgate-3-plugins-redis-exact_vs_wasmgate-3-plugins_rps",
            "",
        ),
        (
            "wasmgate-3-plugins-redis-exact / wasmgate-3-plugins, CPU per request",
            "wasmgate-3-plugins-redis-exact_vs_wasmgate-3-plugins_cpu_per_req",
            "",
        ),
        (
            "wasmgate-https / nginx-https, requests/s",
            "wasmgate-https_vs_nginx-https_rps",
            "≥ 1",
        ),
        (
            "wasmgate-https / nginx-https, CPU per request",
            "wasmgate-https_vs_nginx-https_cpu_per_req",
            "≤ 1",
        ),
        (
            "wasmgate-log / nginx-log, requests/s",
            "wasmgate-log_vs_nginx-log_rps",
            "≥ 1",
        ),
        (
            "wasmgate-log / nginx-log, CPU per request",
            "wasmgate-log_vs_nginx-log_cpu_per_req",
            "≤ 1",
        ),
        (
            "wasmgate's access log, CPU µs per request (wasmgate-log − wasmgate)",
            "wasmgate_access_log_cpu_us_per_req",
            "≤ 1",
        ),
        (
            "nginx's access log, CPU µs per request (nginx-log − nginx)",
            "nginx_access_log_cpu_us_per_req",
            "",
        ),
        (
            "wasmgate-cache-hit / nginx-return, requests/s",
            "wasmgate-cache-hit_vs_nginx-return_rps",
            "≥ 1",
        ),
        (
            "wasmgate-cache-hit / nginx-return, CPU per request",
            "wasmgate-cache-hit_vs_nginx-return_cpu_per_req",
            "",
        ),
        (
            "hyper-return / nginx-return, requests/s (hyper's own ceiling)",
            "hyper-return_vs_nginx-return_rps",
            "",
        ),
        (
            "hyper-return / nginx-return, CPU per request",
            "hyper-return_vs_nginx-return_cpu_per_req",
            "",
        ),
        (
            "wasmgate-cache-hit / hyper-return, CPU per request (what the gateway adds)",
            "wasmgate-cache-hit_vs_hyper-return_cpu_per_req",
            "",
        ),
        (
            "wasmgate-gzip / nginx-gzip, requests/s",
            "wasmgate-gzip_vs_nginx-gzip_rps",
            "",
        ),
        (
            "wasmgate-gzip / nginx-gzip, CPU per request",
            "wasmgate-gzip_vs_nginx-gzip_cpu_per_req",
            "< 1",
        ),
        (
            "wasmgate's gzip, CPU µs per request (wasmgate-gzip − wasmgate)",
            "wasmgate_gzip_cpu_us_per_req",
            "",
        ),
        (
            "nginx's gzip, CPU µs per request (nginx-gzip − nginx)",
            "nginx_gzip_cpu_us_per_req",
            "",
        ),
    ] {
        let _ = writeln!(out, "| {label} | {} | {goal} |", num(&r[key], 3));
    }
    let fixed = &report["fixed_rate"];
    if let Some(runs) = fixed["runs"].as_array().filter(|runs| !runs.is_empty()) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Fixed rate: {} requests/s (half of nginx's maximum), {} connections, {}s, {}:",
            num(&fixed["rate_rps"], 0),
            CONNECTIONS,
            fixed["duration_s"],
            fixed["tool"].as_str().unwrap_or("oha"),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| scenario | achieved requests/s | kept up | p50 ms | p99 ms | p99.9 ms | errors |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|");
        for run in runs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                run["name"].as_str().unwrap_or_default(),
                num(&run["rps"], 0),
                if run["kept_up"] == true {
                    "yes"
                } else {
                    "**no**"
                },
                num(&run["p50_ms"], 3),
                num(&run["p99_ms"], 3),
                num(&run["p999_ms"], 3),
                run["errors"],
            );
        }
        let added = &fixed["p99_added_ms"];
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "p99 added at a fixed rate: wasmgate vs nginx {} ms; the 3-plugin chain vs wasmgate {} ms; \
             the chain on Redis vs in memory {} ms (batched), {} ms (exact)",
            num(&added["wasmgate_vs_nginx"], 3),
            num(&added["wasmgate-3-plugins_vs_wasmgate"], 3),
            num(&added["wasmgate-3-plugins-redis_vs_wasmgate-3-plugins"], 3),
            num(
                &added["wasmgate-3-plugins-redis-exact_vs_wasmgate-3-plugins"],
                3
            ),
        );
    }
    out
}

/// CPU model, cores, memory and kernel.
fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| round1(kb / 1024.0 / 1024.0));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    let description = format!(
        "{} × {}, {} GiB, Linux {}",
        cores,
        model.as_deref().unwrap_or("unknown CPU"),
        mem_gib.map_or_else(|| "?".to_owned(), |g| g.to_string()),
        kernel.as_deref().unwrap_or("?"),
    );
    json!({
        "description": description,
        "cpu": model,
        "cores": cores,
        "memory_gib": mem_gib,
        "kernel": kernel,
    })
}

fn git_revision() -> Option<String> {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let head = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|status| !status.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_every_plugin_and_the_upstream() {
        let listen: SocketAddr = "127.0.0.1:18080".parse().unwrap_or_else(|_| unreachable!());
        let upstream: SocketAddr = "127.0.0.1:18081".parse().unwrap_or_else(|_| unreachable!());
        let plain = Origin::Http(upstream);
        let toml = wasmgate_config(listen, plain, Chain::Memory, None, Path::new("/tmp/bench"));
        for (name, _) in PLUGINS {
            assert!(toml.contains(&format!("name = \"{name}\"")), "{toml}");
        }
        assert!(toml.contains("targets = [\"127.0.0.1:18081\"]"), "{toml}");
        assert!(toml.contains("access_log = \"off\""), "{toml}");
        assert!(
            !wasmgate_config(listen, plain, Chain::Off, None, Path::new("/b"))
                .contains("plugins]]")
        );
        assert!(
            !toml.contains("[gateway.state]") && !toml.contains("mode ="),
            "{toml}"
        );
        let logged = wasmgate_config(
            listen,
            plain,
            Chain::Off,
            Some(Path::new("/l/a.log")),
            Path::new("/b"),
        );
        assert!(logged.contains("access_log = \"/l/a.log\""), "{logged}");
        let nginx = proxy_nginx_conf(listen, plain, NginxMode::Plain, false);
        assert!(!nginx.contains("log_format"), "{nginx}");
        assert!(
            proxy_nginx_conf(listen, plain, NginxMode::Log, false)
                .contains("access_log logs/access.log json;")
        );
        assert!(
            nginx.contains("keepalive 64;") && !nginx.contains("user "),
            "{nginx}"
        );
        assert!(proxy_nginx_conf(listen, plain, NginxMode::Plain, true).starts_with("# generated"));
        let tls = (
            upstream,
            Path::new("/c/origin.pem"),
            Path::new("/c/origin.key"),
        );
        let origin = upstream_nginx_conf(listen, tls, true);
        assert!(origin.contains("user root root;"), "{origin}");
        assert!(
            origin.contains("listen 127.0.0.1:18081 ssl;")
                && origin.contains("ssl_certificate /c/origin.pem;"),
            "{origin}"
        );
    }

    #[test]
    fn both_proxies_verify_a_tls_origin() {
        let listen: SocketAddr = "127.0.0.1:18080".parse().unwrap_or_else(|_| unreachable!());
        let upstream: SocketAddr = "127.0.0.1:18443".parse().unwrap_or_else(|_| unreachable!());
        let origin = Origin::Https(upstream, Path::new("/c/origin.pem"));
        let nginx = proxy_nginx_conf(listen, origin, NginxMode::Plain, false);
        for line in [
            "proxy_pass https://origin;",
            "proxy_ssl_verify on;",
            "proxy_ssl_trusted_certificate /c/origin.pem;",
            "proxy_ssl_name origin.bench;",
        ] {
            assert!(nginx.contains(line), "{line} in {nginx}");
        }
        let toml = wasmgate_config(listen, origin, Chain::Off, None, Path::new("/b"));
        assert!(
            toml.contains("targets = [\"https://127.0.0.1:18443\"]")
                && toml
                    .contains("tls = { ca = \"/c/origin.pem\", server_name = \"origin.bench\" }"),
            "{toml}"
        );
    }

    #[test]
    fn the_chain_on_redis_counts_there_in_the_scenarios_mode() {
        let listen: SocketAddr = "127.0.0.1:18080".parse().unwrap_or_else(|_| unreachable!());
        let redis: SocketAddr = "127.0.0.1:16379".parse().unwrap_or_else(|_| unreachable!());
        let plain = Origin::Http("127.0.0.1:18081".parse().unwrap_or_else(|_| unreachable!()));
        for (proxy, keys) in [
            (
                Proxy::WasmgatePluginsRedis,
                r#"by = "consumer", mode = "batched", sync_interval = "100ms" }"#,
            ),
            (
                Proxy::WasmgatePluginsRedisExact,
                r#"by = "consumer", mode = "exact" }"#,
            ),
        ] {
            let mode = proxy.redis_mode().unwrap_or_else(|| unreachable!());
            let toml = wasmgate_config(
                listen,
                plain,
                Chain::Redis(redis, mode),
                None,
                Path::new("/b"),
            );
            assert!(
                toml.contains(
                    "workers = 1\n\n[gateway.state]\nbackend = \"redis\"\n\
                     url = \"redis://127.0.0.1:16379\"\non_unavailable = \"deny\"\n\n[upstreams"
                ),
                "{toml}"
            );
            assert!(toml.contains(keys), "{toml}");
            for (name, _) in PLUGINS {
                assert!(toml.contains(&format!("name = \"{name}\"")), "{toml}");
            }
        }
        assert_eq!(Proxy::WasmgatePlugins.redis_mode(), None);
    }

    #[test]
    fn utc_now_is_iso_8601() {
        let now = utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }

    #[test]
    fn response_check_wants_the_body_and_the_chain_header() {
        let plain = "HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n";
        let chained = "HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nx-served-by: wasmgate\r\n";
        assert!(check_response(Proxy::Nginx, plain).is_ok());
        assert!(check_response(Proxy::WasmgatePlugins, plain).is_err());
        assert!(check_response(Proxy::WasmgatePlugins, chained).is_ok());
        for on_redis in [
            Proxy::WasmgatePluginsRedis,
            Proxy::WasmgatePluginsRedisExact,
        ] {
            assert!(check_response(on_redis, plain).is_err());
            assert!(check_response(on_redis, chained).is_ok());
        }
        assert!(check_response(Proxy::Wasmgate, chained).is_err());
        assert!(check_response(Proxy::Direct, "HTTP/1.1 200 OK\r\n").is_err());
    }
}
