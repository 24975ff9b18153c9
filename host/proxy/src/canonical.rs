//! Canonical request paths: the one form of a path that routing, plugins and the upstream all
//! see, so that no encoding can make a route miss a path that the upstream then reads as one
//! the route was meant to catch (`/%61dmin`, `//admin`, `/x/../admin`, `/admin;x/secret`).
//!
//! The steps, in the spirit of Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action`:
//! 1. percent-encoded unreserved characters (RFC 3986 §2.3) are decoded (`%61` → `a`), and
//!    every other escape is written in upper case (`%2f` → `%2F`): equivalent forms by
//!    RFC 3986 §6.2.2;
//! 2. an escaped slash or backslash (`%2F`, `%5C`) and a raw `\` are rejected, kept, or decoded
//!    to `/`, as `gateway.escaped_slashes` says;
//! 3. repeated slashes are merged (`gateway.merge_slashes`);
//! 4. dot segments are resolved (RFC 3986 §5.2.4), also when written `%2E` or followed by `;`
//!    parameters (`..;`, which Tomcat reads as `..`).
//!
//! `;` parameters stay in the path sent upstream, but routing matches the path without them:
//! `/admin;x/secret` is routed as `/admin/secret`, as a server that drops parameters reads it.

use std::borrow::Cow;

use wasmgate_config::EscapedSlashes;

/// How paths are made canonical: `gateway.merge_slashes` and `gateway.escaped_slashes`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub(crate) merge_slashes: bool,
    pub(crate) escaped_slashes: EscapedSlashes,
}

/// A path made canonical.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Canonical<'a> {
    /// The path the request goes on with (plugins and upstream).
    pub(crate) path: Cow<'a, str>,
    /// The path routes are matched against: `path` without `;` parameters.
    pub(crate) routing: Cow<'a, str>,
}

/// Why a path has no canonical form: the request gets a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    BadEscape,
    EscapedSlash,
    NotAbsolute,
}

impl Refused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::BadEscape => "path contains an invalid percent-encoding",
            Self::EscapedSlash => "path contains an encoded slash or a backslash",
            Self::NotAbsolute => "path does not start with a slash",
        }
    }
}

/// `path` (without the query) in canonical form; borrowed when it is canonical already, which
/// is the common case, found by one scan without allocating.
pub(crate) fn canonical(path: &str, rules: Rules) -> Result<Canonical<'_>, Refused> {
    if !path.starts_with('/') {
        // `*` (OPTIONS) and authority-form (CONNECT) targets have no path to route by.
        return Err(Refused::NotAbsolute);
    }
    if is_plain(path, rules) {
        return Ok(Canonical {
            path: Cow::Borrowed(path),
            routing: Cow::Borrowed(path),
        });
    }
    let decoded = decode(path, rules.escaped_slashes)?;
    let resolved = resolve(&decoded, rules.merge_slashes);
    let routing = without_parameters(&resolved);
    Ok(Canonical {
        routing: Cow::Owned(routing),
        path: Cow::Owned(resolved),
    })
}

/// Whether nothing in `path` could change: no escape, backslash, parameter, dot segment, and
/// (when merging) no repeated slash.
fn is_plain(path: &str, rules: Rules) -> bool {
    let bytes = path.as_bytes();
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | b';' => return false,
            b'/' if previous == b'/' && rules.merge_slashes => return false,
            b'.' if previous == b'/' => {
                // `/.` starts a dot segment when followed by `/`, the end, or `./` / `.` end.
                let rest = &bytes[i + 1..];
                if rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                {
                    return false;
                }
            }
            _ => {}
        }
        previous = b;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Step 1 and 2: escapes decoded or normalised, slashes as `escaped_slashes` says.
fn decode(path: &str, escaped_slashes: EscapedSlashes) -> Result<String, Refused> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(Refused::BadEscape);
                };
                let c = hi << 4 | lo;
                if is_unreserved(c) {
                    out.push(char::from(c));
                } else if matches!(c, b'/' | b'\\') {
                    match escaped_slashes {
                        EscapedSlashes::Reject => return Err(Refused::EscapedSlash),
                        EscapedSlashes::Decode => out.push('/'),
                        EscapedSlashes::Keep => {
                            out.push_str(if c == b'/' { "%2F" } else { "%5C" });
                        }
                    }
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' => {
                match escaped_slashes {
                    EscapedSlashes::Reject => return Err(Refused::EscapedSlash),
                    EscapedSlashes::Decode => out.push('/'),
                    EscapedSlashes::Keep => out.push_str("%5C"),
                }
                i += 1;
            }
            _ => {
                // Only ASCII reaches here: the URI parser refuses anything else.
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Step 3 and 4: dot segments resolved (a segment is a dot segment by its name before any `;`
/// parameters), and with `merge`, empty segments dropped. A trailing slash stays.
fn resolve(path: &str, merge: bool) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        let name = segment.split(';').next().unwrap_or("");
        match name {
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            "" if segment.is_empty() && (merge || last) => trailing_slash = last,
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

/// The path without `;` parameters in any segment.
fn without_parameters(path: &str) -> String {
    if !path.contains(';') {
        return path.to_owned();
    }
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// Where, in `path` (canonical, with parameters), the first `routing_len` bytes of its routing
/// form end: so that `strip_path` removes the matched prefix with its parameters.
pub(crate) fn prefix_end(path: &str, routing_len: usize) -> usize {
    let bytes = path.as_bytes();
    let (mut i, mut matched) = (0, 0);
    while matched < routing_len && i < bytes.len() {
        if bytes[i] == b';' {
            while i < bytes.len() && bytes[i] != b'/' {
                i += 1;
            }
            continue;
        }
        i += 1;
        matched += 1;
    }
    // Parameters of the last matched segment belong to it.
    while i < bytes.len() && bytes[i] == b';' {
        while i < bytes.len() && bytes[i] != b'/' {
            i += 1;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEFAULT: Rules = Rules {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn canon(path: &str, rules: Rules) -> Result<(String, String), Refused> {
        canonical(path, rules).map(|c| (c.path.into_owned(), c.routing.into_owned()))
    }

    fn path(p: &str) -> String {
        canon(p, DEFAULT).expect("canonical").0
    }

    #[test]
    fn a_plain_path_is_borrowed_as_it_is() {
        for p in ["/", "/users/42", "/a.b/c..d/.e", "/x/y/", "/a-b_c~d"] {
            let c = canonical(p, DEFAULT).expect("canonical");
            assert!(matches!(c.path, Cow::Borrowed(_)), "{p}");
            assert_eq!(c.path, p);
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(path("/%61dmin/%7Euser"), "/admin/~user");
        assert_eq!(path("/a%20b/%e2%82%ac"), "/a%20b/%E2%82%AC");
        assert_eq!(path("/%25"), "/%25");
        assert_eq!(canon("/%zz", DEFAULT), Err(Refused::BadEscape));
        assert_eq!(canon("/%4", DEFAULT), Err(Refused::BadEscape));
    }

    #[test]
    fn dot_segments_resolve_also_encoded_or_with_parameters() {
        assert_eq!(path("/a/./b/../c"), "/a/c");
        assert_eq!(path("/../../admin"), "/admin");
        assert_eq!(path("/x/%2e%2E/admin"), "/admin");
        assert_eq!(path("/x/..;/admin"), "/admin");
        assert_eq!(path("/a/b/.."), "/a/");
        assert_eq!(path("/a/."), "/a/");
        assert_eq!(path("/.."), "/");
    }

    #[test]
    fn slashes_merge_unless_told_not_to() {
        assert_eq!(path("//admin///secret//"), "/admin/secret/");
        let keep = Rules {
            merge_slashes: false,
            ..DEFAULT
        };
        assert_eq!(
            canon("//admin//x", keep).expect("canonical").0,
            "//admin//x"
        );
    }

    #[test]
    fn escaped_slashes_follow_the_setting() {
        for p in ["/admin%2fsecret", "/admin%5Csecret", "/\\admin"] {
            assert_eq!(canon(p, DEFAULT), Err(Refused::EscapedSlash), "{p}");
        }
        let keep = Rules {
            escaped_slashes: EscapedSlashes::Keep,
            ..DEFAULT
        };
        assert_eq!(canon("/a%2fb\\c", keep).expect("kept").0, "/a%2Fb%5Cc");
        let decode = Rules {
            escaped_slashes: EscapedSlashes::Decode,
            ..DEFAULT
        };
        assert_eq!(canon("/x/..%2fadmin", decode).expect("decoded").0, "/admin");
        assert_eq!(
            canon("/\\admin\\secret", decode).expect("decoded").0,
            "/admin/secret"
        );
    }

    #[test]
    fn routing_drops_parameters_and_strip_path_keeps_them_with_their_segment() {
        let (path, routing) = canon("/admin;jsessionid=1/secret;v=2", DEFAULT).expect("canonical");
        assert_eq!(path, "/admin;jsessionid=1/secret;v=2");
        assert_eq!(routing, "/admin/secret");
        assert_eq!(&path[prefix_end(&path, "/admin".len())..], "/secret;v=2");
        assert_eq!(prefix_end("/plain/x", 6), 6);
    }

    /// What a lenient server makes of a path: every escape decoded, backslashes as slashes,
    /// parameters dropped, slashes merged, dot segments resolved.
    fn lenient(path: &str) -> String {
        let decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .replace('\\', "/");
        without_parameters(&resolve(&decoded, true))
    }

    proptest! {
        #[test]
        fn canonical_paths_are_stable_and_route_as_a_lenient_server_reads_them(
            segments in prop::collection::vec(
                prop::sample::select(vec![
                    "a", "admin", ".", "..", "%2e", "%2E%2e", "", "%61", "b;x=1", "..;", "%20", "~", "%7e",
                ]),
                0..8,
            )
        ) {
            let path = format!("/{}", segments.join("/"));
            let Ok((canonical_path, routing)) = canon(&path, DEFAULT) else {
                return Ok(());
            };
            // Idempotent: a canonical path is its own canonical form.
            let again = canon(&canonical_path, DEFAULT).expect("canonical twice");
            prop_assert_eq!(&again.0, &canonical_path);
            // What routing matched is what a lenient upstream reads (escapes aside).
            prop_assert_eq!(lenient(&canonical_path), lenient(&routing));
            prop_assert_eq!(
                percent_encoding::percent_decode_str(&routing).decode_utf8_lossy().into_owned(),
                lenient(&path)
            );
        }
    }
}
