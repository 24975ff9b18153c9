//! Wasmgate's configuration: `gateway.toml` parsed and validated into plain data.
//!
//! This crate is pure: it reads files but needs neither an async runtime nor a Wasm engine, so the
//! `check` command, the gateway and hot reload all validate a file the same way. Every problem in a
//! file is reported at once, each as `FILE:LINE:COL: KEY: MESSAGE`.
//!
//! The keys are documented in `docs/config.md`.

mod diagnostic;
mod load;
mod model;

use std::path::Path;

pub use diagnostic::{ConfigError, Diagnostic, Location};
pub use model::*;

/// Reads and validates the config file at `path`. Relative paths in it resolve against its folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Validates `text` as if it had been read from `path` (which names the file in diagnostics and
/// anchors relative paths).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    load::parse(path, text)
}
