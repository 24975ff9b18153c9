//! The `wasmgate` command: `run` serves a config, `check` validates one, `reload` asks a running
//! gateway to reload its.
//!
//! Kept in a library so the end-to-end tests run exactly this code as a child process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use wasmgate_admin::{Admin, ConfigFile, Reloader, Watcher};
use wasmgate_config::Diagnostic;
use wasmgate_proxy::{Prepared, Services, StartError};

/// An API gateway extended by sandboxed WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "wasmgate", version, about, long_about = None)]
struct Cli {
    /// Diagnostic log format on stderr. Verbosity is set with RUST_LOG (default: info), e.g.
    /// RUST_LOG=wasmgate=debug.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway and serve until SIGTERM or SIGINT, then drain in-flight requests for up
    /// to `gateway.shutdown_grace` (default 30s) and exit 0. SIGHUP reloads the config file, as
    /// does a change to it or to a plugin file (unless `gateway.watch = false`) and `POST /reload`
    /// on the admin listener.
    ///
    /// The listening addresses are logged once every listener is bound, as
    /// "listening on http://ADDR" or "listening on https://ADDR".
    Run {
        /// The config file. Relative paths inside it resolve against its folder.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file without serving: every problem is printed as FILE:LINE:COL: KEY:
    /// MESSAGE. Exits 0 when the config is valid, 1 when it is not.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask the gateway running this config file to reload it, through its admin API
    /// (`gateway.admin`), and print the outcome: the routes and plugins now served and the
    /// settings that wait for a restart, or every problem (the gateway then keeps serving its
    /// previous configuration). Exits 0 when the reload succeeded, 1 otherwise.
    Reload {
        /// The config file the gateway runs.
        #[arg(short, long, default_value = "gateway.toml", value_name = "FILE")]
        config: PathBuf,
        /// The admin API's address, instead of the file's `gateway.admin`.
        #[arg(long, value_name = "IP:PORT")]
        admin: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Runs the command line in `std::env::args`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => match check(&config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Reload { config, admin } => match reload(&config, admin) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Run { config } => match run(&config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads and fully validates a config (plugins loaded and `init`ed), printing every problem.
async fn load(path: &Path, services: &Services) -> Option<Prepared> {
    prepare(wasmgate_config::load(path), services).await
}

/// Validates a config read from its file fully (plugins loaded and `init`ed), printing every
/// problem.
async fn prepare(
    config: Result<wasmgate_config::Config, wasmgate_config::ConfigError>,
    services: &Services,
) -> Option<Prepared> {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            for d in e.diagnostics() {
                eprintln!("{d}");
            }
            return None;
        }
    };
    match wasmgate_proxy::prepare_with(services, config).await {
        Ok(prepared) => Some(prepared),
        Err(problems) => {
            for d in problems {
                eprintln!("{d}");
            }
            None
        }
    }
}

/// The control runtime: start-up, admin API, signals, reloads. Requests are served by the
/// gateway's own worker threads (`gateway.workers`), not here; two threads keep the admin API
/// answering while a reload compiles plugins.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("wasmgate-control")
        .build()
        .context("cannot start the async runtime")
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let Some(prepared) = runtime()?.block_on(load(path, &Services::new())) else {
        return Ok(ExitCode::from(1));
    };
    println!(
        "{}: ok ({} routes, {} upstreams, {} plugins)",
        path.display(),
        prepared.config.routes.len(),
        prepared.config.upstreams.len(),
        prepared.runtime.as_ref().map_or(0, |r| r.plugins.len())
    );
    if let Some(warning) = exposed_admin(&prepared.config) {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The admin API listens beyond loopback with no token: anyone who reaches it can reload the
/// gateway and read its configuration.
fn exposed_admin(config: &wasmgate_config::Config) -> Option<wasmgate_config::Diagnostic> {
    let addr = config.gateway.admin?;
    (!addr.ip().is_loopback() && config.gateway.admin_token.is_none()).then(|| {
        config.diagnostic(
            "gateway.admin",
            format!(
                "the admin API listens on {addr}, beyond loopback, with no admin_token: anyone \
                 who can reach it can reload the gateway and read its configuration; set \
                 gateway.admin_token (or admin_token_file), or listen on 127.0.0.1"
            ),
        )
    })
}

/// How long `wasmgate reload` waits for the gateway's answer: a reload compiles new plugins.
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

fn reload(path: &Path, admin: Option<std::net::SocketAddr>) -> anyhow::Result<ExitCode> {
    // The token the running gateway most likely asks for: the file's.
    let token = wasmgate_config::load(path)
        .ok()
        .and_then(|c| c.gateway.admin_token);
    let addr = match admin {
        Some(a) => a,
        None => match wasmgate_config::load(path) {
            Ok(c) => c.gateway.admin.with_context(|| {
                format!(
                    "{}: gateway.admin is not set, so the running gateway has no admin API to ask; \
                     set it, or send the gateway SIGHUP",
                    path.display()
                )
            })?,
            Err(e) => {
                for d in e.diagnostics() {
                    eprintln!("{d}");
                }
                eprintln!(
                    "error: {}: not asking the gateway to reload a file with problems; it keeps \
                     serving its configuration",
                    path.display()
                );
                return Ok(ExitCode::from(1));
            }
        },
    };
    let (status, body) = runtime()?
        .block_on(async {
            tokio::time::timeout(RELOAD_WAIT, post_reload(addr, token.as_ref())).await
        })
        .map_err(|_| {
            anyhow::anyhow!("the admin API at {addr} did not answer within {RELOAD_WAIT:?}")
        })?
        .with_context(|| {
            format!(
                "cannot reach the admin API at {addr} (a changed gateway.admin applies only after \
                 a restart: give the running address with --admin)"
            )
        })?;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("the admin API at {addr} answered {status} with no JSON"))?;
    let list = |key: &str| -> Vec<String> {
        answer[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(running) = answer["file"].as_str().map(PathBuf::from) {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        if absolute(&running) != absolute(path) {
            eprintln!(
                "warning: the gateway at {addr} runs {}, not {}: it reloaded that file",
                running.display(),
                path.display()
            );
        }
    }
    if status == http::StatusCode::OK {
        println!(
            "{}: reloaded ({} routes, {} plugins)",
            path.display(),
            answer["routes"],
            answer["plugins"]
        );
        let pending = list("restart_needed");
        if !pending.is_empty() {
            eprintln!(
                "warning: {}: these settings changed but apply only after a restart: {}",
                path.display(),
                pending.join(", ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    for problem in list("errors") {
        eprintln!("{problem}");
    }
    eprintln!(
        "error: {}: reload failed ({status}); the gateway still serves its previous configuration",
        path.display()
    );
    Ok(ExitCode::from(1))
}

/// `POST /reload` on the admin listener at `addr`: the status and body.
async fn post_reload(
    addr: std::net::SocketAddr,
    token: Option<&wasmgate_config::Secret>,
) -> anyhow::Result<(http::StatusCode, bytes::Bytes)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = http::Request::post("/reload").header(http::header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.expose()),
        );
    }
    let request = request.body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn run(path: &Path) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        // The fingerprint of exactly the bytes loaded: the watcher compares later saves with it.
        let file = ConfigFile::read(path);
        let services = match &file.config {
            Ok(config) => match Services::for_config(config) {
                Ok(services) => services,
                Err(problem) => return Ok(refuse(path, &[problem])),
            },
            // Refused below, with every problem.
            Err(_) => Services::new(),
        };
        let fingerprint = file.fingerprint;
        let Some(prepared) = prepare(file.config, &services).await else {
            return Ok(refuse(path, &[]));
        };
        let admin_addr = prepared.config.gateway.admin;
        if let Some(warning) = exposed_admin(&prepared.config) {
            tracing::warn!("{warning}");
        }
        let watch = prepared.config.gateway.watch;
        let routes = prepared.config.routes.len();
        // Where `gateway.admin` is written, for a bind failure after the config has moved on.
        let mut admin_problem = prepared.config.diagnostic("gateway.admin", "");
        let mut workers_problem = prepared.config.diagnostic("gateway.workers", "");
        let gateway = match wasmgate_proxy::Gateway::bind_prepared(prepared, services).await {
            Ok(g) => g,
            Err(StartError::Config(problems)) => return Ok(refuse(path, &problems)),
            Err(e) => return Err(e.into()),
        };
        let reloader = Reloader::new(path.to_path_buf(), gateway.control(), fingerprint);
        let stop_admin = CancellationToken::new();
        let mut draining = None;
        if let Some(addr) = admin_addr {
            let admin = match Admin::bind(addr, reloader.clone()).await {
                Ok(admin) => admin,
                Err(e) => {
                    admin_problem.message = format!("cannot listen on {addr}: {e}");
                    return Ok(refuse(path, &[admin_problem]));
                }
            };
            let bound = admin.local_addr()?;
            draining = Some(admin.draining());
            tokio::spawn(admin.serve(stop_admin.clone()));
            tracing::info!("admin API on http://{bound}");
        }
        let _watcher = if watch {
            match Watcher::start(reloader.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
                    None
                }
            }
        } else {
            None
        };
        // Handlers are installed before the "listening on" lines: a supervisor (or a test) that
        // signals as soon as it sees them must not hit the default action, which kills the process
        // and every in-flight request with it.
        let mut stop = StopSignals::install();
        spawn_reload_on_sighup(reloader);
        for bound in gateway.local_addrs() {
            let scheme = if bound.tls { "https" } else { "http" };
            tracing::info!("listening on {scheme}://{}", bound.addr);
        }
        tracing::info!(config = %path.display(), routes, "wasmgate ready");
        let served = gateway
            .run(async {
                stop.recv().await;
                if let Some(d) = &draining {
                    d.start();
                }
                // A second signal during the drain stops at once.
                tokio::spawn(async move {
                    stop.recv().await;
                    tracing::warn!("second signal: exiting without waiting for the drain");
                    std::process::exit(1);
                });
            })
            .await;
        if let Err(StartError::Workers { workers, source }) = &served {
            workers_problem.message = format!("cannot start {workers} worker threads: {source}");
            return Ok(refuse(path, &[workers_problem]));
        }
        served?;
        stop_admin.cancel();
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints `problems` (any not printed yet) and the refusal to start; the exit code.
fn refuse(path: &Path, problems: &[Diagnostic]) -> ExitCode {
    for d in problems {
        eprintln!("{d}");
    }
    eprintln!(
        "error: {}: refusing to start with an invalid config",
        path.display()
    );
    ExitCode::from(1)
}

/// Reloads the config file on every SIGHUP, listening from the moment of the call.
fn spawn_reload_on_sighup(reloader: Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = reloader.reload("SIGHUP").await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from the moment of `install`.
struct StopSignals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Self {
                    handlers: Some((term, int)),
                },
                _ => {
                    tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                    Self { handlers: None }
                }
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        #[cfg(unix)]
        match &mut self.handlers {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            None => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
