//! Picks a route for a request by host, path, method and headers.
//!
//! Precedence, most specific first (as in Envoy and Kong):
//! 1. host: an exact host beats the longest matching `*.` wildcard, which beats routes without hosts;
//! 2. path: an exact path (`=/x`) beats a prefix, and a longer prefix beats a shorter one;
//! 3. routes with more header conditions come first; then file order.
//!
//! A route whose host, path and headers match but whose methods do not makes the answer
//! [`Match::MethodNotAllowed`] when no other route takes the request; the gateway answers 405 with
//! `Allow` listing the methods that would have matched.
//!
//! Everything is sorted once when the router is built; matching allocates nothing.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use wasmgate_config::{HostPattern, PathPattern, Route};

/// The routing table of one configuration.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, Vec<Candidate>>,
    /// Keyed by suffix including its leading dot: `.example.com`.
    wildcard: HashMap<Box<str>, Vec<Candidate>>,
    any_host: Vec<Candidate>,
}

#[derive(Debug, Clone)]
struct Candidate {
    route: usize,
    path: PathPattern,
    /// `false`: the path pattern matches in any case.
    case_sensitive: bool,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The outcome of routing one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Match<'r> {
    /// Route number `route` (index into the config's routes) takes the request; `prefix_len` bytes
    /// of the path matched its path pattern (for `strip_path`).
    Found {
        /// Index of the route in the configuration.
        route: usize,
        /// Length of the matched path prefix.
        prefix_len: usize,
    },
    /// Some route matched everything but the method; these methods would have matched.
    MethodNotAllowed {
        /// The most specific route that matched all but the method.
        route: usize,
        /// Every method that would have matched, in precedence order.
        methods: Vec<&'r Method>,
    },
    /// No route matched.
    NotFound,
}

impl Router {
    /// Builds the table for `routes`.
    pub fn new(routes: &[Route]) -> Self {
        let mut router = Router::default();
        for (i, route) in routes.iter().enumerate() {
            for path in &route.paths {
                let candidate = Candidate {
                    route: i,
                    path: path.clone(),
                    case_sensitive: route.case_sensitive,
                    methods: route.methods.clone(),
                    headers: route.headers.clone(),
                };
                if route.hosts.is_empty() {
                    router.any_host.push(candidate);
                    continue;
                }
                for host in &route.hosts {
                    let bucket = match host {
                        HostPattern::Exact(h) => router.exact.entry(h.as_str().into()),
                        HostPattern::Wildcard(s) => router.wildcard.entry(s.as_str().into()),
                    };
                    bucket.or_default().push(candidate.clone());
                }
            }
        }
        let buckets = router
            .exact
            .values_mut()
            .chain(router.wildcard.values_mut())
            .chain(std::iter::once(&mut router.any_host));
        for bucket in buckets {
            // Stable: equal candidates keep file order.
            bucket.sort_by(|a, b| {
                let exact = |c: &Candidate| matches!(c.path, PathPattern::Exact(_));
                exact(b)
                    .cmp(&exact(a))
                    .then(b.path.as_str().len().cmp(&a.path.as_str().len()))
                    .then(b.headers.len().cmp(&a.headers.len()))
                    .then(a.route.cmp(&b.route))
            });
        }
        router
    }

    /// Routes a request. `host` is the request's host without port, in any case; `path` is the
    /// path without query.
    pub fn route<'r>(
        &'r self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Match<'r> {
        let mut lowered = [0u8; 256];
        let host = host.and_then(|h| lowercase(h, &mut lowered));
        let mut allowed: Vec<&'r Method> = Vec::new();
        let mut path_matched: Option<usize> = None;
        let mut scan = |bucket: &'r [Candidate]| -> Option<Match<'r>> {
            for c in bucket {
                let Some(prefix_len) = path_match(&c.path, path, c.case_sensitive) else {
                    continue;
                };
                if !c
                    .headers
                    .iter()
                    .all(|(name, value)| headers.get(name) == Some(value))
                {
                    continue;
                }
                if c.methods.is_empty() || c.methods.contains(method) {
                    return Some(Match::Found {
                        route: c.route,
                        prefix_len,
                    });
                }
                path_matched.get_or_insert(c.route);
                for m in &c.methods {
                    if !allowed.contains(&m) {
                        allowed.push(m);
                    }
                }
            }
            None
        };
        if let Some(host) = host {
            if let Some(bucket) = self.exact.get(host)
                && let Some(m) = scan(bucket)
            {
                return m;
            }
            if !self.wildcard.is_empty() {
                // Longest suffix first: for a.b.example.com try .b.example.com, then .example.com, …
                let mut rest = host;
                while let Some(dot) = rest.get(1..).and_then(|r| r.find('.')).map(|i| i + 1) {
                    let suffix = &rest[dot..];
                    if let Some(bucket) = self.wildcard.get(suffix)
                        && let Some(m) = scan(bucket)
                    {
                        return m;
                    }
                    rest = suffix;
                }
            }
        }
        if let Some(m) = scan(&self.any_host) {
            return m;
        }
        match path_matched {
            Some(route) => Match::MethodNotAllowed {
                route,
                methods: allowed,
            },
            None => Match::NotFound,
        }
    }
}

/// The lowercase form of `host`, borrowed when it is already lowercase. `None` for hosts longer
/// than any valid DNS name with uppercase letters in them (they cannot match a route).
fn lowercase<'a>(host: &'a str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let out = buf.get_mut(..host.len())?;
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// How much of `path` the pattern matched, or `None`.
fn path_match(pattern: &PathPattern, path: &str, case_sensitive: bool) -> Option<usize> {
    let same = |a: &str, b: &str| {
        if case_sensitive {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    match pattern {
        PathPattern::Exact(p) => same(p, path).then_some(p.len()),
        PathPattern::Prefix(p) if p == "/" => path.starts_with('/').then_some(0),
        PathPattern::Prefix(p) => {
            let head = path.get(..p.len())?;
            let rest = &path[p.len()..];
            (same(head, p) && (rest.is_empty() || rest.starts_with('/'))).then_some(p.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use wasmgate_config::{Location, Respond, RouteAction};

    fn route(name: &str, hosts: &[&str], paths: &[&str], methods: &[&str]) -> Route {
        Route {
            name: name.to_owned(),
            hosts: hosts
                .iter()
                .map(|h| match h.strip_prefix('*') {
                    Some(s) => HostPattern::Wildcard(s.to_owned()),
                    None => HostPattern::Exact((*h).to_owned()),
                })
                .collect(),
            paths: paths
                .iter()
                .map(|p| match p.strip_prefix('=') {
                    Some(e) => PathPattern::Exact(e.to_owned()),
                    None => PathPattern::Prefix((*p).to_owned()),
                })
                .collect(),
            methods: methods.iter().map(|m| m.parse().expect("method")).collect(),
            headers: Vec::new(),
            action: RouteAction::Respond(Respond {
                status: http::StatusCode::OK,
                body: String::new(),
                headers: Vec::new(),
            }),
            strip_path: false,
            protocols: wasmgate_config::Protocols::ALL,
            https_redirect: false,
            preserve_host: true,
            case_sensitive: true,
            max_body: 0,
            mirror: None,
            cache: None,
            compression: None,
            plugins: Vec::new(),
            location: Location::default(),
        }
    }

    fn found(m: Match<'_>) -> Option<usize> {
        match m {
            Match::Found { route, .. } => Some(route),
            _ => None,
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries_only() {
        let r = Router::new(&[route("users", &[], &["/users"], &[])]);
        let h = HeaderMap::new();
        for ok in ["/users", "/users/", "/users/1", "/users/1/x"] {
            assert_eq!(found(r.route(None, ok, &Method::GET, &h)), Some(0), "{ok}");
        }
        for no in ["/usersx", "/user", "/", "/other/users"] {
            assert_eq!(r.route(None, no, &Method::GET, &h), Match::NotFound, "{no}");
        }
    }

    #[test]
    fn exact_path_beats_longer_prefix_and_longer_prefix_beats_shorter() {
        let r = Router::new(&[
            route("root", &[], &["/"], &[]),
            route("api", &[], &["/api"], &[]),
            route("api-v1", &[], &["/api/v1"], &[]),
            route("exact", &[], &["=/api/v1/health"], &[]),
        ]);
        let h = HeaderMap::new();
        assert_eq!(found(r.route(None, "/x", &Method::GET, &h)), Some(0));
        assert_eq!(found(r.route(None, "/api/x", &Method::GET, &h)), Some(1));
        assert_eq!(found(r.route(None, "/api/v1/x", &Method::GET, &h)), Some(2));
        assert_eq!(
            found(r.route(None, "/api/v1/health", &Method::GET, &h)),
            Some(3)
        );
        assert_eq!(
            found(r.route(None, "/api/v1/health/x", &Method::GET, &h)),
            Some(2)
        );
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_host() {
        let r = Router::new(&[
            route("any", &[], &["/"], &[]),
            route("wild", &["*.example.com"], &["/"], &[]),
            route("exact", &["api.example.com"], &["/"], &[]),
        ]);
        let h = HeaderMap::new();
        assert_eq!(
            found(r.route(Some("API.example.com"), "/", &Method::GET, &h)),
            Some(2)
        );
        assert_eq!(
            found(r.route(Some("a.b.example.com"), "/", &Method::GET, &h)),
            Some(1)
        );
        assert_eq!(
            found(r.route(Some("example.com"), "/", &Method::GET, &h)),
            Some(0)
        );
        assert_eq!(found(r.route(None, "/", &Method::GET, &h)), Some(0));
    }

    #[test]
    fn host_route_falls_through_to_hostless_route_for_other_paths() {
        let r = Router::new(&[
            route("any", &[], &["/public"], &[]),
            route("api", &["api.example.com"], &["/private"], &[]),
        ]);
        let h = HeaderMap::new();
        assert_eq!(
            found(r.route(Some("api.example.com"), "/public", &Method::GET, &h)),
            Some(0)
        );
    }

    #[test]
    fn method_mismatch_lists_allowed_methods() {
        let r = Router::new(&[
            route("get", &[], &["/items"], &["GET", "HEAD"]),
            route("post", &[], &["/items"], &["POST"]),
        ]);
        let h = HeaderMap::new();
        match r.route(None, "/items", &Method::DELETE, &h) {
            Match::MethodNotAllowed { route, methods } => {
                let m: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
                assert_eq!(m, ["GET", "HEAD", "POST"]);
                assert_eq!(route, 0, "the first route that matched all but the method");
            }
            other => panic!("expected 405, got {other:?}"),
        }
        assert_eq!(found(r.route(None, "/items", &Method::POST, &h)), Some(1));
    }

    #[test]
    fn header_conditions_must_all_hold() {
        let mut v2 = route("v2", &[], &["/"], &[]);
        v2.headers = vec![(
            HeaderName::from_static("x-version"),
            HeaderValue::from_static("2"),
        )];
        let r = Router::new(&[route("v1", &[], &["/"], &[]), v2]);
        let mut h = HeaderMap::new();
        assert_eq!(found(r.route(None, "/", &Method::GET, &h)), Some(0));
        h.insert("x-version", HeaderValue::from_static("2"));
        assert_eq!(found(r.route(None, "/", &Method::GET, &h)), Some(1));
    }

    /// The naive reading of the precedence rules, to check the indexed router against.
    fn reference(
        routes: &[Route],
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<usize> {
        let host = host.map(str::to_ascii_lowercase);
        let mut best: Option<((u8, usize, bool, usize), usize)> = None;
        for (i, r) in routes.iter().enumerate() {
            let host_rank = if r.hosts.is_empty() {
                Some(0usize)
            } else {
                r.hosts
                    .iter()
                    .filter_map(|h| match (h, &host) {
                        (HostPattern::Exact(e), Some(x)) if e == x => Some(usize::MAX),
                        (HostPattern::Wildcard(s), Some(x))
                            if x.ends_with(s.as_str()) && x.len() > s.len() =>
                        {
                            Some(s.len())
                        }
                        _ => None,
                    })
                    .max()
            };
            let Some(host_rank) = host_rank else { continue };
            if !(r.methods.is_empty() || r.methods.contains(method)) {
                continue;
            }
            for p in &r.paths {
                if path_match(p, path, r.case_sensitive).is_none() {
                    continue;
                }
                let exact = matches!(p, PathPattern::Exact(_));
                let key = (0u8, host_rank, exact, p.as_str().len());
                let better = match &best {
                    None => true,
                    Some((k, bi)) => {
                        (key.1, key.2, key.3) > (k.1, k.2, k.3)
                            || ((key.1, key.2, key.3) == (k.1, k.2, k.3) && i < *bi)
                    }
                };
                if better {
                    best = Some((key, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    fn arb_route() -> impl Strategy<Value = Route> {
        let host = prop::sample::select(vec![
            "a.example.com",
            "b.example.com",
            "*.example.com",
            "*.b.example.com",
            "other.org",
        ]);
        let path = prop::sample::select(vec!["/", "/a", "/a/b", "=/a", "=/a/b", "/b", "/ab"]);
        let method = prop::sample::select(vec!["GET", "POST", "PUT"]);
        (
            prop::collection::vec(host, 0..3),
            prop::collection::vec(path, 1..3),
            prop::collection::vec(method, 0..2),
        )
            .prop_map(|(h, p, m)| route("r", &h, &p, &m))
    }

    proptest! {
        #[test]
        fn router_agrees_with_reference_model(
            routes in prop::collection::vec(arb_route(), 1..8),
            host in prop::sample::select(vec![None, Some("a.example.com"), Some("A.Example.com"), Some("x.b.example.com"), Some("example.com"), Some("other.org")]),
            path in prop::sample::select(vec!["/", "/a", "/a/", "/a/b", "/a/b/c", "/ab", "/b", "/c"]),
            method in prop::sample::select(vec![Method::GET, Method::POST, Method::DELETE]),
        ) {
            let router = Router::new(&routes);
            let got = found(router.route(host, path, &method, &HeaderMap::new()));
            prop_assert_eq!(got, reference(&routes, host, path, &method));
        }

        #[test]
        fn found_prefix_is_a_prefix_of_the_path(
            routes in prop::collection::vec(arb_route(), 1..8),
            path in "/[ab/]{0,8}",
        ) {
            let router = Router::new(&routes);
            if let Match::Found { prefix_len, .. } = router.route(None, &path, &Method::GET, &HeaderMap::new()) {
                prop_assert!(prefix_len <= path.len());
                prop_assert!(path.is_char_boundary(prefix_len));
            }
        }
    }
}
