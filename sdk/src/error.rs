//! The three error types a plugin meets.

use std::fmt;

/// A plugin failure, returned from a hook.
///
/// The gateway answers the client with a generic `500` and writes the message to its own log only:
/// it never reaches the client. To answer the client deliberately, return
/// [`Action::respond`](crate::Action::respond) instead.
///
/// `?` converts [`HeaderError`] and `serde_json::Error` into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// A failure described by `message`, for operators.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message given to [`Error::new`] (or converted from another error).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<HeaderError> for Error {
    fn from(err: HeaderError) -> Self {
        Self::new(err.message)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::new(err.to_string())
    }
}

/// The plugin's configuration was refused, returned from [`Plugin::new`](crate::Plugin::new).
///
/// The gateway refuses the whole configuration (at `wasmgate check`, at start and at reload) and
/// shows the message to the operator, so name the offending key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// A refusal described by `message`, e.g. `"header must not be empty"`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message given to [`ConfigError::new`].
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// An edit of a request or response was refused: an invalid header name or value, a path not
/// starting with `/`, a status outside 100–999, or a body edit by a plugin that did not ask for
/// bodies ([`Plugin::needs_body`](crate::Plugin::needs_body)).
///
/// Usually propagated with `?` into an [`Error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    message: String,
}

impl HeaderError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// What was wrong, e.g. `invalid header name "a b"`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HeaderError {}
