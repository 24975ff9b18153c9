//! `cargo xtask <command>`: the project's developer tasks (tests as CI runs them, the demo, plugins).
//!
//! Std, anyhow and serde_json (for the benchmark report) only, so that the tasks build fast and
//! don't drag dependencies into CI.

mod bench;

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test [--no-lint] [-- ARGS]  fmt check, clippy and the whole test suite, as CI runs them (ARGS go to `cargo test`)
  demo                        build and start the quickstart gateway and its echo upstream
  plugins                     build every plugins/*/ crate for wasm32-wasip2 into plugins/NAME.wasm
  bench [--quick]             wrk/oha load: nginx vs wasmgate (no plugins, 3 plugins); target/bench/report.json
  help                        print this message";

const WASM_TARGET: &str = "wasm32-wasip2";
const GATEWAY_ADDR: &str = "127.0.0.1:8080";
const ECHO_ADDR: &str = "127.0.0.1:9001";
const ADMIN_ADDR: &str = "127.0.0.1:9901";
/// The shipped plugins the quickstart's /api route runs.
const DEMO_PLUGINS: [&str; 3] = ["key-auth", "rate-limit", "transform"];
const QUICKSTART_CONFIG: &str = "examples/quickstart/gateway.toml";
/// How long the demo waits for each of its processes to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[OsString]) -> Result<ExitCode> {
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    let command = command
        .to_str()
        .with_context(|| format!("command {command:?} is not valid UTF-8"))?;
    match command {
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "test" => test(&TestOptions::parse(rest)?).map(|()| ExitCode::SUCCESS),
        "demo" => {
            no_arguments("demo", rest)?;
            demo()
        }
        "plugins" => {
            no_arguments("plugins", rest)?;
            plugins().map(|()| ExitCode::SUCCESS)
        }
        "bench" => bench::bench(rest),
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn no_arguments(command: &str, rest: &[OsString]) -> Result<()> {
    ensure!(
        rest.is_empty(),
        "`{command}` takes no arguments, got {rest:?}\n\n{USAGE}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// test

#[derive(Debug, Default)]
struct TestOptions {
    no_lint: bool,
    /// Everything after `--`, passed on to `cargo test`.
    test_args: Vec<OsString>,
}

impl TestOptions {
    fn parse(args: &[OsString]) -> Result<Self> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--no-lint") => options.no_lint = true,
                Some("--") => {
                    options.test_args = args.cloned().collect();
                    break;
                }
                _ => bail!("`test`: unexpected argument {arg:?}\n\n{USAGE}"),
            }
        }
        Ok(options)
    }
}

fn test(options: &TestOptions) -> Result<()> {
    let started = Instant::now();
    ensure_wasm_target()?;
    if options.no_lint {
        println!("==> skipping cargo fmt and cargo clippy (--no-lint)");
    } else {
        ensure_lint_components()?;
        run_step(cargo().args(["fmt", "--all", "--check"]))?;
        run_step(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run_step(
        cargo()
            .args(["test", "--workspace"])
            .args(&options.test_args),
    )?;
    println!(
        "==> all checks passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// demo

fn demo() -> Result<ExitCode> {
    // Fail before the (long) release build if something else already holds the demo's ports.
    for addr in [GATEWAY_ADDR, ECHO_ADDR, ADMIN_ADDR] {
        ensure_port_free(addr)?;
    }
    ensure_wasm_target()?;
    // The quickstart's /echo route runs the example plugin, its /api route three shipped plugins
    // (from plugins/<name>.wasm, as `cargo xtask plugins` builds them).
    build_wasm("hello-plugin", &wasm_target_dir())?;
    for name in DEMO_PLUGINS {
        build_plugin(
            &workspace_root().join("plugins").join(name),
            &wasm_target_dir(),
        )?;
    }
    run_step(cargo().args([
        "build",
        "--release",
        "-p",
        "wasmgate",
        "-p",
        "wasmgate-echo",
    ]))?;

    let bin_dir = target_dir().join("release");
    println!("==> starting the echo upstream on {ECHO_ADDR}");
    let mut echo = ChildGuard::spawn(
        "wasmgate-echo",
        Command::new(bin_dir.join("wasmgate-echo"))
            .args([ECHO_ADDR, "echo"])
            .current_dir(workspace_root()),
    )?;
    echo.wait_listening(ECHO_ADDR)?;

    println!("==> starting the gateway on {GATEWAY_ADDR} ({QUICKSTART_CONFIG})");
    let mut gateway = ChildGuard::spawn(
        "wasmgate",
        Command::new(bin_dir.join("wasmgate"))
            .args(["run", "--config", QUICKSTART_CONFIG])
            .current_dir(workspace_root())
            .stderr(Stdio::inherit()),
    )?;
    gateway.wait_listening(GATEWAY_ADDR)?;

    print_banner();
    // Ctrl-C reaches both children (same foreground process group): the gateway drains and exits,
    // and the echo upstream exits on its own SIGINT; the guard reaps it either way.
    let status = gateway.wait()?;
    echo.kill_and_wait()?;
    println!("==> gateway exited ({status})");
    Ok(exit_code(status))
}

fn print_banner() {
    println!(
        "\n\
         wasmgate quickstart is up on http://{GATEWAY_ADDR} (config: {QUICKSTART_CONFIG})\n\
         try:\n\
         \x20 curl -i http://{GATEWAY_ADDR}/hello\n\
         \x20 curl -s 'http://{GATEWAY_ADDR}/echo/anything?x=1'\n\
         \x20 curl -s --http2-prior-knowledge http://{GATEWAY_ADDR}/echo/h2\n\
         \x20 curl -i http://{GATEWAY_ADDR}/echo/hello/wave\n\
         \x20 curl -i http://{GATEWAY_ADDR}/api/orders                         (401: no API key)\n\
         \x20 curl -i -H 'x-api-key: k-alice' http://{GATEWAY_ADDR}/api/orders (5 a minute, then 429)\n\
         \x20 curl -s http://{ADMIN_ADDR}/metrics                               (the admin API)\n\
         press Ctrl-C to stop\n"
    );
}

fn ensure_port_free(addr: &str) -> Result<()> {
    let socket: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid demo address {addr}"))?;
    match TcpListener::bind(socket) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(err) if err.kind() == ErrorKind::AddrInUse => bail!(
            "port {} is already in use ({addr}); stop whatever is listening there and retry",
            socket.port()
        ),
        Err(err) => Err(err).with_context(|| format!("cannot bind {addr} to check it is free")),
    }
}

/// A child process that is killed and reaped when dropped, so that no error path leaves it running.
#[derive(Debug)]
struct ChildGuard {
    name: &'static str,
    child: Option<Child>,
}

impl ChildGuard {
    fn spawn(name: &'static str, command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name} ({})", display(command)))?;
        Ok(Self {
            name,
            child: Some(child),
        })
    }

    fn child(&mut self) -> Result<&mut Child> {
        self.child
            .as_mut()
            .with_context(|| format!("{} was already reaped", self.name))
    }

    /// Polls until `addr` accepts connections, failing if the child exits first or takes too long.
    fn wait_listening(&mut self, addr: &str) -> Result<()> {
        let socket: SocketAddr = addr
            .parse()
            .with_context(|| format!("invalid demo address {addr}"))?;
        let name = self.name;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child()?
                .try_wait()
                .with_context(|| format!("failed to poll {name}"))?
            {
                self.child = None;
                bail!("{name} exited before listening on {addr} ({status})");
            }
            if TcpStream::connect_timeout(&socket, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{name} did not listen on {addr} within {}s",
                STARTUP_TIMEOUT.as_secs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait(&mut self) -> Result<ExitStatus> {
        let name = self.name;
        let status = self
            .child()?
            .wait()
            .with_context(|| format!("failed to wait for {name}"))?;
        self.child = None;
        Ok(status)
    }

    fn kill_and_wait(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // It may already have exited on Ctrl-C; killing an exited, unreaped child is harmless.
        if let Err(err) = child.kill()
            && err.kind() != ErrorKind::InvalidInput
        {
            return Err(err).with_context(|| format!("failed to kill {}", self.name));
        }
        child
            .wait()
            .with_context(|| format!("failed to wait for {}", self.name))?;
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(err) = self.kill_and_wait() {
            eprintln!("xtask: warning: {err:#}");
        }
    }
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from),
        // Killed by a signal.
        None => ExitCode::FAILURE,
    }
}

// ---------------------------------------------------------------------------------------------
// plugins

fn plugins() -> Result<()> {
    let crates = plugin_crates()?;
    if crates.is_empty() {
        println!("no plugins to build");
        return Ok(());
    }
    ensure_wasm_target()?;
    let target_dir = wasm_target_dir();
    for dir in &crates {
        build_plugin(dir, &target_dir)?;
    }
    println!("==> built {} plugin(s)", crates.len());
    Ok(())
}

/// The directories under `plugins/` that hold a `Cargo.toml`, sorted by name.
fn plugin_crates() -> Result<Vec<PathBuf>> {
    let plugins_dir = workspace_root().join("plugins");
    let entries = match fs::read_dir(&plugins_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(err).with_context(|| format!("cannot list {}", plugins_dir.display()));
        }
    };
    let mut crates = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", plugins_dir.display()))?;
        let path = entry.path();
        if path.join("Cargo.toml").is_file() {
            crates.push(path);
        }
    }
    crates.sort();
    Ok(crates)
}

/// Builds the plugin crate in `dir` (its package is named like its folder, as in
/// `tests/build.rs`) and copies the component to `plugins/<name>.wasm`.
fn build_plugin(dir: &Path, target_dir: &Path) -> Result<()> {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .with_context(|| format!("plugin directory {} has no UTF-8 name", dir.display()))?;
    let wasm = build_wasm(name, target_dir)?;
    let dest = workspace_root()
        .join("plugins")
        .join(format!("{name}.wasm"));
    fs::copy(&wasm, &dest).with_context(|| {
        format!(
            "cannot copy {} to {} (is plugin `{name}` a cdylib?)",
            wasm.display(),
            dest.display()
        )
    })?;
    println!("==> {}", dest.display());
    Ok(())
}

/// Where plugins are built: apart from the host build, whose release profile keeps debug info,
/// so the two never invalidate each other (`tests/build.rs` builds there too).
fn wasm_target_dir() -> PathBuf {
    target_dir().join("wasm")
}

/// `cargo build --release --target wasm32-wasip2 -p PACKAGE` without debug info; the `.wasm`.
fn build_wasm(package: &str, target_dir: &Path) -> Result<PathBuf> {
    run_step(
        cargo()
            .args(["build", "--release", "--target", WASM_TARGET, "-p", package])
            .arg("--target-dir")
            .arg(target_dir)
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "true"),
    )?;
    Ok(target_dir
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_"))))
}

// ---------------------------------------------------------------------------------------------
// shared

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// The workspace's target directory: `$CARGO_TARGET_DIR` (relative to the root) or `target/`.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// A `cargo` command run from the workspace root, with the cargo that is running xtask.
fn cargo() -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Prints `==> command` and runs it to completion, failing unless it succeeds.
fn run_step(command: &mut Command) -> Result<()> {
    let shown = display(command);
    println!("==> {shown}");
    let status = command
        .status()
        .with_context(|| format!("failed to run `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed ({status})");
    Ok(())
}

/// Installs the wasm32-wasip2 rustup target if it is missing; only warns without rustup.
fn ensure_wasm_target() -> Result<()> {
    println!("==> checking the {WASM_TARGET} rustup target");
    let output = match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => {
            eprintln!(
                "xtask: warning: rustup is not on PATH; cannot check the {WASM_TARGET} target \
                 (only needed to build plugins)"
            );
            return Ok(());
        }
        Err(err) => return Err(err).context("failed to run `rustup target list --installed`"),
    };
    ensure!(
        output.status.success(),
        "`rustup target list --installed` failed ({})",
        output.status
    );
    let installed = String::from_utf8(output.stdout)
        .map_err(|err| anyhow!("`rustup target list --installed` printed non-UTF-8: {err}"))?;
    if installed.lines().any(|line| line.trim() == WASM_TARGET) {
        return Ok(());
    }
    run_step(
        Command::new("rustup")
            .args(["target", "add", WASM_TARGET])
            .current_dir(workspace_root()),
    )
}

/// Installs the rustfmt and clippy components when the toolchain lacks them (a minimal rustup
/// profile has neither).
fn ensure_lint_components() -> Result<()> {
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        let present = cargo()
            .args([probe, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            run_step(
                Command::new("rustup")
                    .args(["component", "add", component])
                    .current_dir(workspace_root()),
            )?;
        }
    }
    Ok(())
}

/// `program arg arg...`, for messages.
fn display(command: &Command) -> String {
    let program = Path::new(command.get_program());
    // Show `cargo`, not the toolchain's absolute path from $CARGO.
    let program = program.file_name().unwrap_or(program.as_os_str());
    std::iter::once(program)
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn test_options_split_extra_args() -> Result<()> {
        let options =
            TestOptions::parse(&args(&["--no-lint", "--", "-p", "x", "--", "--nocapture"]))?;
        assert!(options.no_lint);
        assert_eq!(options.test_args, args(&["-p", "x", "--", "--nocapture"]));
        assert!(TestOptions::parse(&args(&["--bogus"])).is_err());
        Ok(())
    }

    #[test]
    fn taken_port_is_reported_by_number() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let err = ensure_port_free(&addr)
            .err()
            .context("port should be taken")?;
        let port = listener.local_addr()?.port();
        assert!(err.to_string().contains(&format!("port {port} ")), "{err}");
        drop(listener);
        ensure_port_free(&addr)
    }
}
