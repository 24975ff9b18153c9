//! The programs the tasks need, installed when missing: Debian packages with apt-get,
//! non-interactive, through sudo unless running as root, without starting their services.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::run_step;

/// Where Debian's `invoke-rc.d` and `deb-systemd-invoke` ask whether a package's maintainer
/// scripts may start (or restart) its service; exit code 101 means "no".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub(crate) fn running_as_root() -> Result<bool> {
    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("failed to run `id -u`")?;
    ensure!(
        output.status.success(),
        "`id -u` failed ({})",
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// `program` on `PATH`, or in the sbin directories (nginx lives in /usr/sbin, which a non-root
/// `PATH` may lack).
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Each `(program, Debian package)`: installs the packages of the programs that are missing (in
/// one apt-get run), then the path of every program, in order.
pub(crate) fn ensure_programs<const N: usize>(programs: [(&str, &str); N]) -> Result<[PathBuf; N]> {
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| find_program(program).is_none())
        .map(|&(_, package)| package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    let paths = programs
        .iter()
        .map(|(program, package)| {
            find_program(program).with_context(|| {
                format!("`{program}` is not installed (apt-get installed `{package}` without it)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(paths
        .try_into()
        .unwrap_or_else(|_| unreachable!("one path per program")))
}

/// The gateway's allocator, jemalloc, is compiled from C by `make` (and `cc`, which linking Rust
/// needs anyway).
pub(crate) const MAKE: (&str, &str) = ("make", "make");

/// The tests start redis servers of their own (`wasmgate_tests::redis`) with `redis-server`.
/// The package's system service (on port 6379) is not started: no test uses it.
pub(crate) const REDIS_SERVER: (&str, &str) = ("redis-server", "redis-server");

/// Installs `make` when it is missing.
pub(crate) fn ensure_make() -> Result<()> {
    ensure_programs([MAKE]).map(drop)
}

/// Installs Debian `packages` with apt-get (through sudo unless running as root), without
/// recommended packages and without starting any service they ship.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    println!("==> installing {} with apt-get", packages.join(", "));
    let privileged = Privileged::new()?;
    let apt = |args: &[&str]| {
        // Through `env`: sudo would drop the variable from its own environment.
        let mut command = privileged.command("env");
        command
            .args(["DEBIAN_FRONTEND=noninteractive", "apt-get"])
            .args(args);
        command
    };
    run_step(&mut apt(&["update", "-qq"]))?;
    let _no_starts = NoServiceStarts::new(&privileged)?;
    run_step(apt(&["install", "-y", "-qq", "--no-install-recommends"]).args(packages))
}

/// Runs commands as root: directly when xtask is root, else through sudo.
struct Privileged {
    root: bool,
}

impl Privileged {
    fn new() -> Result<Self> {
        Ok(Self {
            root: running_as_root()?,
        })
    }

    fn command(&self, program: &str) -> Command {
        if self.root {
            Command::new(program)
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg(program);
            sudo
        }
    }
}

/// While it lives, a `policy-rc.d` forbids maintainer scripts to start services (a package such
/// as redis-server or nginx would otherwise start its system daemon, and hold its port). When the
/// machine has a policy of its own (Docker images forbid every start), that one is left in place.
struct NoServiceStarts<'a> {
    /// Set when this guard wrote the policy, to remove it when dropped.
    privileged: Option<&'a Privileged>,
}

impl<'a> NoServiceStarts<'a> {
    fn new(privileged: &'a Privileged) -> Result<Self> {
        if Path::new(POLICY_RC_D).symlink_metadata().is_ok() {
            return Ok(Self { privileged: None });
        }
        // Made before writing, so that a half-written policy is removed too.
        let guard = Self {
            privileged: Some(privileged),
        };
        run_step(privileged.command("sh").args([
            "-c",
            &format!(
                "printf '#!/bin/sh\\n# written by cargo xtask while it installs packages\\nexit 101\\n' \
                 > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}"
            ),
        ]))?;
        Ok(guard)
    }
}

impl Drop for NoServiceStarts<'_> {
    fn drop(&mut self) {
        if let Some(privileged) = self.privileged
            && let Err(err) = run_step(privileged.command("rm").args(["-f", POLICY_RC_D]))
        {
            eprintln!("xtask: warning: {err:#}; remove {POLICY_RC_D} by hand");
        }
    }
}
