//! `Cache-Control`-style directive lists: comma-separated, case-insensitive names, optional
//! `=value` (quotes stripped). http-cache-semantics parses them too but keeps its parser private.

use std::time::Duration;

use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

/// The directives of every field line of one header, in order.
#[derive(Debug, Default)]
pub(crate) struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    pub(crate) fn parse(headers: &HeaderMap, name: &http::HeaderName) -> Self {
        let mut list = Vec::new();
        for value in headers.get_all(name) {
            // A field that is not visible ASCII carries no directive we could act on.
            let Ok(value) = value.to_str() else { continue };
            for part in value.split(',') {
                let (name, value) = match part.split_once('=') {
                    Some((name, value)) => (name, Some(value.trim().trim_matches('"').to_owned())),
                    None => (part, None),
                };
                let name = name.trim();
                if !name.is_empty() {
                    list.push((name.to_ascii_lowercase(), value));
                }
            }
        }
        Self(list)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// What a client's request directives ask of the cache (only consulted when the route honours them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client {
    /// `no-store`: the cache must not take part at all.
    pub(crate) no_store: bool,
    /// `no-cache`, `max-age=0`, or `Pragma: no-cache`: go upstream and refresh the entry.
    pub(crate) refresh: bool,
    /// `max-age=N`: entries older than this do not satisfy the request.
    pub(crate) max_age: Option<Duration>,
}

impl Client {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let cc = Directives::parse(headers, &CACHE_CONTROL);
        // RFC 9111 §5.4: Pragma only counts when there is no Cache-Control field.
        let pragma = !headers.contains_key(CACHE_CONTROL)
            && Directives::parse(headers, &PRAGMA).has("no-cache");
        // An unparsable max-age is treated as 0 (RFC 9111 §1.2.2 asks for the stricter reading).
        let max_age = cc
            .has("max-age")
            .then(|| {
                cc.value("max-age")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            })
            .map(Duration::from_secs);
        Self {
            no_store: cc.has("no-store"),
            refresh: cc.has("no-cache") || pragma || max_age == Some(Duration::ZERO),
            max_age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        map
    }

    #[test]
    fn directives_are_case_insensitive_and_unquoted() {
        let map = headers(&[
            ("cache-control", "Public, MAX-AGE=\"60\""),
            ("cache-control", "no-cache=\"set-cookie\""),
        ]);
        let cc = Directives::parse(&map, &CACHE_CONTROL);
        assert!(cc.has("public"));
        assert_eq!(cc.value("max-age"), Some("60"));
        assert!(cc.has("no-cache"));
        assert!(!cc.has("private"));
    }

    #[test]
    fn client_directives() {
        let parse = |pairs: &[(&str, &str)]| Client::parse(&headers(pairs));
        assert_eq!(parse(&[]), Client::default());
        assert!(parse(&[("cache-control", "no-store")]).no_store);
        assert!(parse(&[("cache-control", "no-cache")]).refresh);
        assert!(parse(&[("cache-control", "max-age=0")]).refresh);
        assert!(parse(&[("cache-control", "max-age=junk")]).refresh);
        assert!(!parse(&[("cache-control", "max-age=10")]).refresh);
        assert!(parse(&[("pragma", "no-cache")]).refresh);
        // Cache-Control present: Pragma is ignored.
        assert!(!parse(&[("pragma", "no-cache"), ("cache-control", "max-age=10")]).refresh);
    }
}
