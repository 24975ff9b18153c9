//! Logging into the gateway's log.
//!
//! Lines are tagged by the gateway with the route, the plugin and the request id, and filtered by
//! its `RUST_LOG` like its own. Never log secrets (API keys, tokens): operators read these logs.
//!
//! ```
//! use wasmgate_sdk::log;
//!
//! log::info("cache miss");
//! log::warn(&format!("rejected key {}", "k-1234"));
//! ```
//!
//! In native tests the lines are captured per thread (see
//! `wasmgate_sdk::testing::logs`, feature `testing`) and printed to stderr.

use std::fmt;

#[cfg(target_arch = "wasm32")]
use crate::__bindings::wasmgate::plugin::log as wit;

/// Severity of a log line, as in the gateway's `RUST_LOG` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        })
    }
}

/// Writes `message` at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::mock::log(level, message);
}

/// Writes `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Writes `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Writes `message` at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes `message` at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}
