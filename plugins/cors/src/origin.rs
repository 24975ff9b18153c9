//! Allowed origins: `*`, exact origins, and `scheme://*.domain[:port]` subdomain patterns.

use std::collections::HashSet;

use wasmgate_sdk::ConfigError;

/// The configured `origins`, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origins {
    /// `["*"]`: every origin.
    Any,
    /// A list of origins and subdomain patterns.
    List {
        /// Normalised origins (see [`normalize`]).
        exact: HashSet<String>,
        /// `https://*.example.com` patterns.
        subdomains: Vec<Subdomains>,
    },
}

/// `scheme://*.domain[:port]`: any origin with that scheme and port whose host ends in
/// `.domain` after at least one more label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subdomains {
    /// `https://`
    scheme: String,
    /// `.example.com`, or `.example.com:8443` with a non-default port.
    suffix: String,
}

impl Origins {
    /// Checks the `origins` list.
    pub(crate) fn new(list: &[String]) -> Result<Self, ConfigError> {
        if list.is_empty() {
            return Err(ConfigError::new(
                r#"origins: must list at least one origin (or "*")"#,
            ));
        }
        if list.iter().any(|o| o == "*") {
            if list.len() > 1 {
                return Err(ConfigError::new(
                    r#"origins: "*" allows every origin, so it must be the only entry"#,
                ));
            }
            return Ok(Self::Any);
        }
        let mut exact = HashSet::new();
        let mut subdomains = Vec::new();
        for (i, origin) in list.iter().enumerate() {
            let invalid = |why: &str| ConfigError::new(format!("origins[{i}] = {origin:?}: {why}"));
            if let Some((scheme, rest)) = origin.split_once("://*.") {
                let normal = normalize(&format!("{scheme}://{rest}")).ok_or_else(|| {
                    invalid("not an origin pattern (expected scheme://*.domain[:port])")
                })?;
                let (scheme, host_port) = normal
                    .split_once("://")
                    .ok_or_else(|| invalid("not an origin pattern"))?;
                subdomains.push(Subdomains {
                    scheme: format!("{scheme}://"),
                    suffix: format!(".{host_port}"),
                });
            } else if origin.contains('*') {
                return Err(invalid(
                    r#"a wildcard is only allowed as "*" or at the start of the host (https://*.example.com)"#,
                ));
            } else {
                let normal = normalize(origin).ok_or_else(|| {
                    invalid(
                        "not an origin (expected scheme://host[:port], without a path: \
                         browsers send no path, so it would never match)",
                    )
                })?;
                exact.insert(normal);
            }
        }
        Ok(Self::List { exact, subdomains })
    }

    /// Whether the request's `Origin` header value is allowed.
    pub(crate) fn allows(&self, origin: &str) -> bool {
        let (exact, subdomains) = match self {
            Self::Any => return true,
            Self::List { exact, subdomains } => (exact, subdomains),
        };
        // Browsers send origins already in normal form: most lookups need no normalising.
        if exact.contains(origin) {
            return true;
        }
        let Some(origin) = normalize(origin) else {
            return false;
        };
        exact.contains(&origin) || subdomains.iter().any(|s| s.matches(&origin))
    }
}

impl Subdomains {
    fn matches(&self, origin: &str) -> bool {
        let Some(labels) = origin
            .strip_prefix(&self.scheme)
            .and_then(|rest| rest.strip_suffix(&self.suffix))
        else {
            return false;
        };
        !labels.is_empty()
            && !labels.starts_with('.')
            && !labels.ends_with('.')
            && labels
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }
}

/// An origin in normal form, `scheme://host[:port]`: scheme and host lowercase, the default port
/// of `http` (80) and `https` (443) left out. `None` for anything that is not an origin (a path,
/// a query, user info, `null`, garbage).
pub(crate) fn normalize(origin: &str) -> Option<String> {
    // `http::Uri` reads "https://a.com" and "https://a.com/" alike; an origin has no path.
    let (_, after_scheme) = origin.split_once("://")?;
    if after_scheme.contains(['/', '?', '#', '@']) {
        return None;
    }
    let uri: http::Uri = origin.parse().ok()?;
    let authority = uri.authority()?;
    if authority.host().is_empty() {
        return None;
    }
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = authority.host().to_ascii_lowercase();
    Some(match (scheme.as_str(), authority.port_u16()) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => format!("{scheme}://{host}"),
        (_, Some(port)) => format!("{scheme}://{host}:{port}"),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn origins(list: &[&str]) -> Origins {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        Origins::new(&list).expect("valid")
    }

    fn refused(list: &[&str]) -> String {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        Origins::new(&list)
            .expect_err("refused")
            .message()
            .to_owned()
    }

    #[test]
    fn normal_form_lowercases_and_drops_default_ports() {
        assert_eq!(
            normalize("https://App.Example.COM").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            normalize("HTTPS://a.com:443").as_deref(),
            Some("https://a.com")
        );
        assert_eq!(
            normalize("http://a.com:80").as_deref(),
            Some("http://a.com")
        );
        assert_eq!(
            normalize("https://a.com:80").as_deref(),
            Some("https://a.com:80")
        );
        assert_eq!(
            normalize("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
        for bad in [
            "null",
            "",
            "a.com",
            "https://a.com/",
            "https://a.com/x",
            "https://u@a.com",
            "https://a.com?x",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn exact_origins_compare_scheme_and_host_case_insensitively_and_ports_exactly() {
        let o = origins(&["https://app.example.com", "http://localhost:3000"]);
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("HTTPS://APP.example.com:443"));
        assert!(o.allows("http://localhost:3000"));
        assert!(!o.allows("http://app.example.com"), "other scheme");
        assert!(!o.allows("https://app.example.com:8443"), "other port");
        assert!(!o.allows("http://localhost:3001"));
        assert!(!o.allows("https://app.example.com.evil.com"));
        assert!(!o.allows("https://evilapp.example.com"));
        assert!(!o.allows("null"));
    }

    #[test]
    fn subdomain_patterns_need_at_least_one_label_and_the_same_port() {
        let o = origins(&["https://*.example.com", "http://*.dev.test:8080"]);
        assert!(o.allows("https://a.example.com"));
        assert!(o.allows("https://a.b.example.com"));
        assert!(o.allows("https://A.Example.com:443"));
        assert!(
            !o.allows("https://example.com"),
            "the bare domain is not a subdomain"
        );
        assert!(!o.allows("https://a.example.com:8443"));
        assert!(!o.allows("http://a.example.com"));
        assert!(!o.allows("https://evil-example.com"));
        assert!(!o.allows("https://a.example.com.evil.com"));
        assert!(o.allows("http://x.dev.test:8080"));
        assert!(!o.allows("http://x.dev.test"));
    }

    #[test]
    fn star_allows_everything() {
        let o = origins(&["*"]);
        assert_eq!(o, Origins::Any);
        assert!(o.allows("null"));
        assert!(o.allows("https://anything.example"));
    }

    #[test]
    fn refuses_bad_lists_naming_the_entry() {
        assert_eq!(
            refused(&[]),
            r#"origins: must list at least one origin (or "*")"#
        );
        assert_eq!(
            refused(&["https://a.com", "*"]),
            r#"origins: "*" allows every origin, so it must be the only entry"#
        );
        assert!(
            refused(&["https://a.com", "https://b.com/"])
                .starts_with(r#"origins[1] = "https://b.com/": not an origin"#)
        );
        assert!(refused(&["a.com"]).starts_with(r#"origins[0] = "a.com": not an origin"#));
        assert!(
            refused(&["https://a.*.com"]).contains("a wildcard is only allowed as"),
            "{}",
            refused(&["https://a.*.com"])
        );
        assert!(refused(&["https://*.a.com/x"]).contains("not an origin pattern"));
    }

    proptest! {
        /// However a listed origin's scheme and host are cased, and whether or not the default
        /// port is spelled out, it is allowed; a changed host never is.
        #[test]
        fn listed_origins_match_in_any_case_and_others_never(
            host in "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,2}",
            upper in prop::collection::vec(any::<bool>(), 32),
            explicit_port in any::<bool>(),
            other in "[a-z0-9]{1,5}",
        ) {
            let o = origins(&[&format!("https://{host}")]);
            let cased: String = format!("https://{host}")
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
                .collect();
            let sent = if explicit_port { format!("{cased}:443") } else { cased };
            prop_assert!(o.allows(&sent), "{sent}");
            for changed in [
                format!("https://{other}.{host}"),
                format!("https://{host}.{other}"),
                format!("http://{host}"),
            ] {
                prop_assert!(!o.allows(&changed), "{}", changed);
            }
        }
    }
}
