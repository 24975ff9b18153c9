//! Who a request is counted against: the `by` setting and the identity it picks per request.

use std::fmt;

use wasmgate_sdk::{ConfigError, Context, Request};

/// The request context key auth plugins set to the authenticated consumer's name.
pub(crate) const CONSUMER_KEY: &str = "consumer";

/// What requests are counted by (`by` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum By {
    /// The client's IP address as the gateway saw it.
    Ip,
    /// The context's `consumer`, or the client IP when none is set.
    Consumer,
    /// One counter for every client of the entry.
    Route,
    /// The first value of a request header (lowercase name), or the client IP when absent.
    Header(String),
}

impl By {
    /// Parses `ip`, `consumer`, `route` or `header:NAME`.
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        match text {
            "ip" => Ok(Self::Ip),
            "consumer" => Ok(Self::Consumer),
            "route" => Ok(Self::Route),
            _ => {
                let Some(name) = text.strip_prefix("header:") else {
                    return Err(ConfigError::new(format!(
                        r#"by = {text:?}: expected "ip", "consumer", "route" or "header:NAME""#
                    )));
                };
                let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                    ConfigError::new(format!(
                        "by = {text:?}: {name:?} is not a valid header name"
                    ))
                })?;
                Ok(Self::Header(name.as_str().to_owned()))
            }
        }
    }

    /// The identity of `req`. One or two host calls: the context or header read, and the client
    /// IP only when falling back to it (or for `ip`).
    pub(crate) fn identify(&self, req: &Request<'_>, ctx: &Context) -> Identity {
        let found = match self {
            Self::Ip => None,
            Self::Route => return Identity::Route,
            Self::Consumer => ctx
                .get(CONSUMER_KEY)
                .filter(|c| !c.is_empty())
                .map(Identity::Consumer),
            Self::Header(name) => req
                .header(name)
                .filter(|v| !v.is_empty())
                .map(Identity::Header),
        };
        found.unwrap_or_else(|| Identity::Ip(req.client_ip().to_string()))
    }
}

impl fmt::Display for By {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip => f.write_str("ip"),
            Self::Consumer => f.write_str("consumer"),
            Self::Route => f.write_str("route"),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// The identity one request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A client IP, e.g. `203.0.113.7` or `2001:db8::1`.
    Ip(String),
    /// A consumer name from the context.
    Consumer(String),
    /// A header value.
    Header(String),
    /// Everyone (`by = "route"`).
    Route,
}

impl Identity {
    /// The name `overrides` are looked up by (`None` for `route`, which has no overrides).
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Self::Ip(v) | Self::Consumer(v) | Self::Header(v) => Some(v),
            Self::Route => None,
        }
    }

    /// The counter key: `prefix`, then the kind of identity, then its name. The kind keeps an IP
    /// and a consumer (or header value) spelled alike apart.
    pub(crate) fn counter_key(&self, prefix: &str) -> String {
        let (kind, name) = match self {
            Self::Ip(v) => ("ip", v.as_str()),
            Self::Consumer(v) => ("consumer", v.as_str()),
            Self::Header(v) => ("header", v.as_str()),
            Self::Route => ("route", ""),
        };
        let mut key = String::with_capacity(prefix.len() + kind.len() + 1 + name.len());
        key.push_str(prefix);
        key.push_str(kind);
        key.push(':');
        key.push_str(name);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_lowercases_header_names() {
        assert_eq!(By::parse("ip").unwrap(), By::Ip);
        assert_eq!(By::parse("consumer").unwrap(), By::Consumer);
        assert_eq!(By::parse("route").unwrap(), By::Route);
        assert_eq!(
            By::parse("header:X-User").unwrap(),
            By::Header("x-user".to_owned())
        );
        assert_eq!(
            By::parse("header:X-User").unwrap().to_string(),
            "header:x-user"
        );
    }

    #[test]
    fn refuses_unknown_kinds_and_bad_header_names_naming_the_value() {
        let err = By::parse("user").unwrap_err();
        assert_eq!(
            err.message(),
            r#"by = "user": expected "ip", "consumer", "route" or "header:NAME""#
        );
        let err = By::parse("header:").unwrap_err();
        assert!(err.message().contains("not a valid header name"), "{err}");
        let err = By::parse("header:x user").unwrap_err();
        assert!(err.message().contains(r#""x user""#), "{err}");
    }

    #[test]
    fn counter_keys_keep_kinds_apart() {
        let ip = Identity::Ip("10.0.0.1".to_owned()).counter_key("p|");
        let consumer = Identity::Consumer("10.0.0.1".to_owned()).counter_key("p|");
        assert_ne!(ip, consumer);
        assert_eq!(ip, "p|ip:10.0.0.1");
        assert_eq!(Identity::Route.counter_key("p|"), "p|route:");
    }
}
