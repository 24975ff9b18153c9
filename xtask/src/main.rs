//! `cargo xtask <command>`: the project's developer tasks (tests as CI runs them, the demo, plugins).
//!
//! Std, anyhow and serde_json (for the benchmark report) only, so that the tasks build fast and
//! don't drag dependencies into CI.

mod bench;
mod install;

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
  test [--no-lint] [-- ARGS]  fmt check, clippy and the whole test suite, as CI runs them (ARGS go to `cargo test`);
                              installs make and redis-server (for the tests' own servers) when missing
  demo                        build and start the quickstart gateway and its echo upstream
  plugins                     build every plugins/*/ crate for wasm32-wasip2 into plugins/NAME.wasm
  bench [--quick]             wrk/oha load: nginx vs wasmgate (no plugins, 3 plugins); target/bench/report.json
  h2spec [--target ADDR]      HTTP/2 conformance: h2spec's 107 cases (RFC 9113), against the gateway
                              proxying to an echo upstream, or any h2c server at ADDR; every case counted
  help                        print this message";

const WASM_TARGET: &str = "wasm32-wasip2";
const GATEWAY_ADDR: &str = "127.0.0.1:8080";
const ECHO_ADDR: &str = "127.0.0.1:9001";
const ADMIN_ADDR: &str = "127.0.0.1:9901";
const QUICKSTART_CONFIG: &str = "examples/quickstart/gateway.toml";
/// What the demo builds (the dev profile, as the tests): the gateway with the `shared-build`
/// feature the tests give it too, and the echo upstream.
const DEMO_PACKAGES: &[&str] = &[
    "-p",
    "wasmgate",
    "-p",
    "wasmgate-echo",
    "--features",
    "wasmgate/shared-build",
];
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
        "h2spec" => h2spec(rest).map(|()| ExitCode::SUCCESS),
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
    // Both in one apt-get run on a machine that lacks them.
    install::ensure_programs([install::MAKE, install::REDIS_SERVER])?;
    if options.no_lint {
        println!("==> skipping cargo fmt and cargo clippy (--no-lint)");
    } else {
        ensure_lint_components()?;
        run_step(cargo().args(["fmt", "--all", "--check"]))?;
        check_shared_build()?;
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

/// Runs the conformance cases of `tests/tests/e2e/h2spec.rs` strictly: cases that fail by timing
/// count as failed too, so the summary line is the plain count.
fn h2spec(args: &[OsString]) -> Result<()> {
    let mut command = cargo();
    command
        .args([
            "test",
            "-p",
            "wasmgate-tests",
            "--test",
            "e2e",
            "--",
            "h2spec::",
        ])
        .env("WASMGATE_H2SPEC_STRICT", "1");
    match args {
        [] => {}
        [flag, addr] if flag == "--target" => {
            let addr = addr
                .to_str()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .with_context(|| format!("`h2spec --target`: {addr:?} is not IP:PORT"))?;
            command.env("WASMGATE_H2SPEC_TARGET", addr.to_string());
        }
        _ => bail!("`h2spec`: unexpected arguments {args:?}\n\n{USAGE}"),
    }
    ensure_wasm_target()?;
    println!("==> h2spec: RFC 9113 conformance (httpwg's cases)");
    let status = command.status().context("running cargo test")?;
    ensure!(
        status.success(),
        "some conformance cases failed (listed above)"
    );
    Ok(())
}

/// Fails when the demo's build (`-p wasmgate -p wasmgate-echo`) would give some crate fewer
/// features than the tests' (`--workspace`): cargo would then compile that crate and everything
/// above it twice, and the demo's build would not be reused by the tests. Build scripts,
/// proc-macros and their dependencies are compared apart, as cargo resolves them apart.
fn check_shared_build() -> Result<()> {
    println!("==> checking that the demo and the tests share one build");
    let demo = features(&[DEMO_PACKAGES, &["-e", "normal,build"]].concat())?;
    let tests = features(&["--workspace", "-e", "normal,build,dev"])?;
    let mut missing = Vec::new();
    for (unit, demo_features) in &demo {
        let Some(test_features) = tests.get(unit) else {
            continue;
        };
        let lacking: Vec<&str> = test_features
            .difference(demo_features)
            .map(String::as_str)
            .collect();
        if !lacking.is_empty() {
            let (host, package) = unit;
            let side = if *host {
                "[build-dependencies]"
            } else {
                "[dependencies]"
            };
            missing.push(format!("  {side} {package}: {}", lacking.join(", ")));
        }
    }
    ensure!(
        missing.is_empty(),
        "the tests build these crates with features the demo's build lacks, so `cargo xtask test` \
         would compile them (and everything that depends on them) a second time:\n{}\n\
         add the features to xtask/workspace-hack/Cargo.toml",
        missing.join("\n")
    );
    Ok(())
}

/// Each crate of `cargo tree ARGS`, as (whether it is built for build scripts and proc-macros,
/// `name vX.Y.Z`), with the union of its enabled features.
type Units = std::collections::BTreeMap<(bool, String), std::collections::BTreeSet<String>>;

/// Reads `cargo tree ARGS` drawn as a tree: a crate is a build-time one when it sits under a
/// `[build-dependencies]` marker or below a proc-macro.
fn features(args: &[&str]) -> Result<Units> {
    let output = cargo()
        .args(["tree", "--charset", "ascii", "--format", "{p}|{f}"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run `cargo tree`")?;
    ensure!(
        output.status.success(),
        "`cargo tree` failed ({})",
        output.status
    );
    let text = String::from_utf8(output.stdout).context("`cargo tree` printed non-UTF-8")?;
    Ok(parse_tree(&text))
}

/// One crate of the tree being read: the column its name starts at, whether it is built for
/// the build, and whether the marker above its children said `[build-dependencies]`.
struct Frame {
    column: usize,
    host: bool,
    build_section: bool,
}

fn parse_tree(text: &str) -> Units {
    let mut units = Units::new();
    let mut stack: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let column = line
            .find(|c: char| !matches!(c, '|' | '`' | '-' | ' '))
            .unwrap_or(line.len());
        let content = &line[column..];
        if content.is_empty() {
            // A blank line separates the trees of several packages.
            stack.clear();
            continue;
        }
        if let Some(marker) = content.strip_prefix('[') {
            // `[build-dependencies]` is drawn in its parent's name column.
            if let Some(parent) = stack.iter_mut().rev().find(|f| f.column == column) {
                parent.build_section = marker.starts_with("build-dependencies");
            }
            continue;
        }
        while stack.last().is_some_and(|f| f.column >= column) {
            stack.pop();
        }
        let Some((package, features)) = content.split_once('|') else {
            continue;
        };
        let proc_macro = package.contains("(proc-macro)");
        let host = proc_macro
            || stack
                .last()
                .is_some_and(|parent| parent.host || parent.build_section);
        // "name v1.2.3 (proc-macro)" or "name v1.2.3 (/path)": name and version identify it.
        let package = package.split(" (").next().unwrap_or(package).trim();
        let features = features.trim_end_matches(" (*)");
        units.entry((host, package.to_owned())).or_default().extend(
            features
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned),
        );
        stack.push(Frame {
            column,
            host,
            build_section: false,
        });
    }
    units
}

// ---------------------------------------------------------------------------------------------
// demo

fn demo() -> Result<ExitCode> {
    // Fail before the (long) release build if something else already holds the demo's ports.
    for addr in [GATEWAY_ADDR, ECHO_ADDR, ADMIN_ADDR] {
        ensure_port_free(addr)?;
    }
    ensure_wasm_target()?;
    install::ensure_make()?;
    let started = Instant::now();
    let target = target_dir()?;
    let fresh = !target.join("debug").join("wasmgate").exists();
    if fresh {
        println!(
            "==> first build: about 10 minutes on a 2-core machine (wasmtime's compiler is most of \
             it); `cargo xtask test` reuses it, and later runs take seconds"
        );
    }
    // The quickstart's /echo route runs the example plugin, its /api route three shipped plugins;
    // all are found in plugins/ (the quickstart's plugins_dir).
    build_plugins(&target)?;
    // The dev profile, as the tests build it: its dependencies are optimised (opt-level 1 in the
    // workspace's profile), and `cargo xtask test` then finds them built.
    run_step(cargo().arg("build").args(DEMO_PACKAGES))?;
    if fresh {
        println!("==> built in {:.0}s", started.elapsed().as_secs_f64());
    }

    let bin_dir = target.join("debug");
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
    ensure_wasm_target()?;
    let built = build_plugins(&target_dir()?)?;
    println!("==> built {built} plugin(s) into plugins/");
    Ok(())
}

/// Builds every wasm crate and copies the shipped plugins and the example plugin to
/// `plugins/<name>.wasm`; how many were copied.
fn build_plugins(target: &Path) -> Result<usize> {
    let crates = wasm_crates()?;
    let wasm_dir = build_wasm(&crates, &target.join("wasm"))?;
    let mut copied = 0;
    for (name, dir) in &crates {
        let shipped = dir.parent() == Some(&workspace_root().join("plugins"));
        if !shipped && name != "hello-plugin" {
            continue;
        }
        let wasm = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        let dest = workspace_root()
            .join("plugins")
            .join(format!("{name}.wasm"));
        fs::copy(&wasm, &dest).with_context(|| {
            format!(
                "cannot copy {} to {} (is `{name}` a cdylib?)",
                wasm.display(),
                dest.display()
            )
        })?;
        println!("==> {}", dest.display());
        copied += 1;
    }
    Ok(copied)
}

/// Every crate built for wasm32-wasip2, as (package, folder): the example plugin, the test
/// fixtures and the shipped plugins — the set `tests/build.rs` builds, in one cargo invocation
/// with the same settings, so the demo, `cargo xtask plugins` and the tests share one build.
fn wasm_crates() -> Result<Vec<(String, PathBuf)>> {
    let root = workspace_root();
    let mut out = vec![(
        "hello-plugin".to_owned(),
        root.join("examples").join("hello-plugin"),
    )];
    for parent in [root.join("tests").join("fixtures"), root.join("plugins")] {
        let entries = match fs::read_dir(&parent) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot list {}", parent.display()));
            }
        };
        let mut dirs = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", parent.display()))?
                .path();
            if path.join("Cargo.toml").is_file() {
                dirs.push(path);
            }
        }
        dirs.sort();
        for dir in dirs {
            let name = dir
                .file_name()
                .and_then(|name| name.to_str())
                .with_context(|| format!("{} has no UTF-8 name", dir.display()))?
                .to_owned();
            out.push((name, dir));
        }
    }
    Ok(out)
}

/// `cargo build --release --target wasm32-wasip2 -p …` for `crates` into `target_dir`, without
/// debug info; the folder holding the `.wasm` files.
fn build_wasm(crates: &[(String, PathBuf)], target_dir: &Path) -> Result<PathBuf> {
    let mut command = cargo();
    command
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        // As tests/build.rs builds them, so either build serves both: flags meant for the host
        // stay out, and no debug info.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    for (name, _) in crates {
        command.args(["-p", name]);
    }
    run_step(&mut command)?;
    Ok(target_dir.join(WASM_TARGET).join("release"))
}

// ---------------------------------------------------------------------------------------------
// shared

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// The workspace's target directory, as cargo sees it: `CARGO_TARGET_DIR`, `build.target-dir`
/// in a cargo config file, or `target/`.
fn target_dir() -> Result<PathBuf> {
    target_dir_of(cargo())
}

/// [`target_dir`] as `command` (a `cargo` command, with its environment) sees it.
fn target_dir_of(mut command: Command) -> Result<PathBuf> {
    let output = command
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run `cargo metadata`")?;
    ensure!(
        output.status.success(),
        "`cargo metadata` failed ({})",
        output.status
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed no JSON")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` named no target directory")?;
    Ok(PathBuf::from(dir))
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
    fn the_wasm_build_follows_cargo_target_dir() -> Result<()> {
        // `cargo xtask demo` and `plugins` build into `<target>/wasm` and copy from there: with a
        // shared target folder that must be the shared one, not `./target`.
        let shared = env::temp_dir().join("wasmgate-shared-target");
        let mut command = cargo();
        command.env("CARGO_TARGET_DIR", &shared);
        assert_eq!(target_dir_of(command)?, shared);
        Ok(())
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
    fn tree_parsing_tells_build_time_crates_apart() {
        let tree = "\
app v0.1.0 (/w/app)|
|-- lib v1.0.0|std
|   `-- dep v2.0.0|a
|   [build-dependencies]
|   `-- dep v2.0.0|b
|-- derive v1.0.0 (proc-macro)|
|   `-- syn v2.0.0|full
`-- dep v2.0.0|c (*)
";
        let units = parse_tree(tree);
        let get = |host: bool, name: &str| -> Vec<String> {
            units[&(host, name.to_owned())].iter().cloned().collect()
        };
        assert_eq!(get(false, "dep v2.0.0"), ["a", "c"]);
        assert_eq!(get(true, "dep v2.0.0"), ["b"]);
        assert_eq!(get(true, "syn v2.0.0"), ["full"]);
        assert_eq!(get(true, "derive v1.0.0"), Vec::<String>::new());
        assert_eq!(get(false, "lib v1.0.0"), ["std"]);
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
        // A released port is free, unless a test running beside this one was just given it
        // by the OS: try a few.
        let mut last = ensure_port_free(&addr);
        for _ in 0..5 {
            if last.is_ok() {
                break;
            }
            let fresh = TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
            last = ensure_port_free(&fresh);
        }
        last
    }
}
