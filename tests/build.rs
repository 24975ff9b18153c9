//! Compiles the test fixture plugins and the shipped plugins to wasm32-wasip2 (the wasmtime
//! test-programs pattern) and tells the tests where each `.wasm` is: `env!("WASM_<NAME>")`, with
//! the crate name upper-cased and `-` as `_`.
//!
//! The nested cargo uses its own target directory (`wasm` inside the outer one), so it neither
//! waits on nor invalidates the outer build; `cargo xtask demo` and `cargo xtask plugins` build
//! the same crates there with the same settings, so whichever runs first builds for both.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let crates = wasm_crates(&root);
    let target_dir = cargo_target_dir(&root).join("wasm");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Flags meant for the host build must not leak into the wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // Under `cargo clippy` the outer build lints through a rustc wrapper; the fixtures are
        // linted as workspace members already, natively.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        // Plugins ship without debug info: a tenth of the size, less for the host to compile.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    for (name, _) in &crates {
        cmd.args(["-p", name]);
    }
    let status = cmd.status().expect("run cargo for the wasm fixtures");
    assert!(
        status.success(),
        "building the wasm32-wasip2 plugins failed; is the target installed? \
         `cargo xtask test` installs it (or: rustup target add wasm32-wasip2)"
    );
    for (name, dir) in &crates {
        let wasm = target_dir
            .join("wasm32-wasip2")
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(wasm.exists(), "{} was not built", wasm.display());
        let var = format!("WASM_{}", name.replace('-', "_").to_uppercase());
        println!("cargo:rustc-env={var}={}", wasm.display());
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    // A crate added to (or removed from) either folder changes the folder itself.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tests").join("fixtures").display()
    );
    println!("cargo:rerun-if-changed={}", root.join("plugins").display());
    println!("cargo:rerun-if-changed={}", root.join("sdk").display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
}

/// The build's target directory (`CARGO_TARGET_DIR`, `build.target-dir` or `target/`): the
/// ancestor of `OUT_DIR` that cargo tagged as its cache directory. `cargo xtask` builds the same
/// crates into its `wasm` folder, so the demo and the tests share one build.
fn cargo_target_dir(root: &Path) -> PathBuf {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map_or_else(|| root.join("target"), Path::to_path_buf)
}

/// The example plugin (the quickstart runs it) and every crate under `tests/fixtures/` and
/// `plugins/`: (package name, folder).
fn wasm_crates(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let example = root.join("examples").join("hello-plugin");
    if example.join("Cargo.toml").exists() {
        out.push(("hello-plugin".to_owned(), example));
    }
    for parent in [root.join("tests").join("fixtures"), root.join("plugins")] {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("Cargo.toml").exists())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .expect("folder name");
            out.push((name, dir));
        }
    }
    out
}
