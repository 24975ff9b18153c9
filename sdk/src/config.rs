//! Types for plugin configs that read the way the rest of `gateway.toml` does.
//!
//! ```
//! use wasmgate_sdk::config::Duration;
//! use wasmgate_sdk::prelude::*;
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     /// `window = "1m"`, `"250ms"`, `"1h30m"`, or a number of seconds.
//!     window: Duration,
//! }
//! # let config: Config = serde_json::from_str(r#"{"window": "1m"}"#).unwrap();
//! # assert_eq!(config.window.get(), std::time::Duration::from_secs(60));
//! ```

use std::fmt;
use std::ops::Deref;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::ConfigError;

/// Reads a config given as JSON into `T`; an error names the key path and what is wrong with it,
/// e.g. `overrides.bob: invalid type: string "lots", expected u64`.
///
/// The SDK reads [`Plugin::Config`](crate::Plugin::Config) this way. It is public for plugins
/// that take their config as a [`serde_json::Value`] and read parts of it later:
///
/// ```
/// use wasmgate_sdk::config;
/// use wasmgate_sdk::prelude::*;
///
/// #[derive(Debug, Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct Limits { per_minute: u32 }
///
/// let err = config::read::<Limits>(serde_json::json!({"per_minute": "lots"})).unwrap_err();
/// assert_eq!(err.message(), r#"per_minute: invalid type: string "lots", expected u32"#);
/// let err = config::read::<Limits>(serde_json::json!({"per_minut": 3})).unwrap_err();
/// assert!(err.message().starts_with("unknown field `per_minut`"), "{err}");
/// ```
pub fn read<T: DeserializeOwned>(config: serde_json::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(config).map_err(located)
}

/// [`read`] from JSON text.
pub(crate) fn read_json<T: DeserializeOwned>(json: &str) -> Result<T, ConfigError> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(located)
}

/// serde's message, after the path of the key it is about.
fn located<E: fmt::Display>(err: serde_path_to_error::Error<E>) -> ConfigError {
    let message = err.inner().to_string();
    let mut segments: Vec<_> = err.path().iter().collect();
    // Serde names an unknown key in its message already: point at the table holding it.
    if message.starts_with("unknown field") {
        segments.pop();
    }
    let mut path = String::new();
    for segment in segments {
        if !path.is_empty() && !matches!(segment, serde_path_to_error::Segment::Seq { .. }) {
            path.push('.');
        }
        path.push_str(&segment.to_string());
    }
    ConfigError::new(if path.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    })
}

/// A length of time in a plugin config: a string such as `"250ms"`, `"2s"`, `"1m"`, `"1h30m"`
/// (the gateway's own duration syntax), or a whole number of seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    /// Wraps a [`std::time::Duration`], e.g. for a field's default.
    pub const fn new(duration: std::time::Duration) -> Self {
        Self(duration)
    }

    /// The length as a [`std::time::Duration`].
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl Deref for Duration {
    type Target = std::time::Duration;

    fn deref(&self) -> &std::time::Duration {
        &self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(duration: std::time::Duration) -> Self {
        Self(duration)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(duration: Duration) -> Self {
        duration.0
    }
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a duration such as "250ms", "2s" or "1m", or a number of seconds"#)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text.trim())
            .map(Duration)
            .map_err(|err| E::custom(format_args!("invalid duration {text:?}: {err}")))
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration(std::time::Duration::from_secs(secs)))
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs)
            .map(|secs| Duration(std::time::Duration::from_secs(secs)))
            .map_err(|_| {
                E::custom(format_args!(
                    "invalid duration {secs}: must not be negative"
                ))
            })
    }

    fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
        std::time::Duration::try_from_secs_f64(secs)
            .map(Duration)
            .map_err(|_| {
                E::custom(format_args!(
                    "invalid duration {secs}: must be a finite, non-negative number of seconds"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Duration;

    fn parse(json: &str) -> Result<Duration, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_gateways_duration_syntax_and_seconds() {
        assert_eq!(parse(r#""1m""#).unwrap().as_secs(), 60);
        assert_eq!(parse(r#""250ms""#).unwrap().as_millis(), 250);
        assert_eq!(parse(r#""1h30m""#).unwrap().as_secs(), 5400);
        assert_eq!(parse("10").unwrap().as_secs(), 10);
        assert_eq!(parse("0.5").unwrap().as_millis(), 500);
    }

    #[test]
    fn rejects_nonsense_naming_the_value() {
        let err = parse(r#""soon""#).unwrap_err();
        assert!(err.contains(r#"invalid duration "soon""#), "{err}");
        assert!(parse("-1").unwrap_err().contains("must not be negative"));
    }
}
