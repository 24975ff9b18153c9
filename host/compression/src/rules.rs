//! What gets compressed: media ranges, per-route rules and the per-response decision.

use std::fmt;
use std::str::FromStr;

use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::{Codec, Levels, negotiate};

/// A media range from the `types` setting: `text/*`, `application/json` or `*/*`.
///
/// Matched against a response's `Content-Type` case-insensitively, ignoring its parameters
/// (`text/html; charset=utf-8` is `text/html`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    /// Lowercase type, or `*` (then the subtype is `*` too).
    kind: String,
    /// Lowercase subtype, or `*`.
    subtype: String,
}

/// A `types` entry that is not a media range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid media range {0:?}: expected type/subtype, type/* or */* (no parameters)")]
pub struct InvalidMediaRange(
    /// The entry as written.
    pub String,
);

impl FromStr for MediaRange {
    type Err = InvalidMediaRange;

    /// Parses `type/subtype`, `type/*` or `*/*`: type and subtype are RFC 9110 tokens, and `*`
    /// stands only for a whole subtype or for both (`*/json` and `text/html*` are rejected, as
    /// are parameters). Surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMediaRange(s.to_owned());
        let (kind, subtype) = s.trim().split_once('/').ok_or_else(invalid)?;
        let token = |t: &str| !t.is_empty() && t.bytes().all(is_tchar) && !t.contains('*');
        let valid = match (kind, subtype) {
            ("*", "*") => true,
            (kind, "*") => token(kind),
            (kind, subtype) => token(kind) && token(subtype),
        };
        if !valid {
            return Err(invalid());
        }
        Ok(Self {
            kind: kind.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
        })
    }
}

impl MediaRange {
    /// Whether a response with this `Content-Type` value is in the range. Parameters are
    /// ignored, and so are case and whitespace around the parts; a value that is not
    /// `type/subtype` matches nothing, not even `*/*`.
    pub fn matches(&self, content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or_default();
        let Some((kind, subtype)) = essence.split_once('/') else {
            return false;
        };
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() {
            return false;
        }
        (self.kind == "*" || kind.eq_ignore_ascii_case(&self.kind))
            && (self.subtype == "*" || subtype.eq_ignore_ascii_case(&self.subtype))
    }
}

impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.subtype)
    }
}

/// What a route (or the whole gateway) compresses, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Offered codings in the server's order of preference (ties in the client's q-values go
    /// to the earlier one). Empty: nothing is compressed.
    pub codecs: Vec<Codec>,
    /// Responses whose `Content-Length` is below this stay as they are: a few hundred bytes
    /// gain nothing worth the CPU, and tiny bodies can even grow. Responses of unknown length
    /// (streamed) are compressed.
    pub min_size: u64,
    /// Content types compressed; a response without `Content-Type` is not.
    pub types: Vec<MediaRange>,
    /// The level each codec compresses at.
    pub levels: Levels,
}

impl Default for Rules {
    /// All three codecs (zstd, br, gzip), `min_size` 256 bytes, levels as [`Levels::default`],
    /// and the types that compress well and are not compressed already: `text/*`,
    /// `application/json`, `application/javascript`, `application/xml`,
    /// `application/problem+json` and `image/svg+xml`.
    fn default() -> Self {
        let types = [
            "text/*",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/problem+json",
            "image/svg+xml",
        ];
        Self {
            codecs: Codec::ALL.to_vec(),
            min_size: 256,
            types: types
                .iter()
                .map(|t| t.parse().expect("default media ranges are valid"))
                .collect(),
            levels: Levels::default(),
        }
    }
}

/// The outcome of [`Rules::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Compress with this codec: call [`encode_headers`](crate::encode_headers) and wrap the
    /// body in an [`Encoder`](crate::Encoder).
    Compress(Codec),
    /// Send as is, but the response would have been compressed for another `Accept-Encoding`:
    /// call [`add_vary`](crate::add_vary) so caches keep the variants apart.
    IdentityVaried,
    /// Send as is; nothing to add.
    Identity,
}

impl Rules {
    /// Decides for one response: `accept_encoding` are the request's `Accept-Encoding` values
    /// (all of them), `method` the request's method, `status` and `headers` the response's.
    ///
    /// Never compressed ([`Decision::Identity`]): responses to CONNECT; statuses 1xx, 204, 206
    /// and 304; a response with `Content-Range`; one already carrying a `Content-Encoding`
    /// other than `identity` (never compressed twice); `Cache-Control: no-transform`; a
    /// `Content-Type` outside [`types`](Self::types) (or none, or more than one); a
    /// `Content-Length` below [`min_size`](Self::min_size) or of zero; no codecs configured.
    /// A response that passes all these but whose client accepts none of the offered codings
    /// gets [`Decision::IdentityVaried`]. HEAD is decided as GET would be, so its headers tell
    /// what a GET gets.
    pub fn decide<'a>(
        &self,
        accept_encoding: impl IntoIterator<Item = &'a HeaderValue>,
        method: &Method,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Decision {
        if !self.compressible(method, status, headers) {
            return Decision::Identity;
        }
        match negotiate(accept_encoding, &self.codecs) {
            Some(codec) => Decision::Compress(codec),
            None => Decision::IdentityVaried,
        }
    }

    fn compressible(&self, method: &Method, status: StatusCode, headers: &HeaderMap) -> bool {
        if self.codecs.is_empty() || method == Method::CONNECT {
            return false;
        }
        if status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
            )
        {
            return false;
        }
        if headers.contains_key(CONTENT_RANGE) {
            return false;
        }
        let encoded = headers.get_all(CONTENT_ENCODING).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .map(|c| c.trim_ascii())
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
        });
        if encoded || no_transform(headers) {
            return false;
        }
        // Several Content-Type fields are a broken response: which one a client believes is
        // anyone's guess, so leave it alone.
        let mut content_types = headers.get_all(CONTENT_TYPE).iter();
        let (Some(content_type), None) = (content_types.next(), content_types.next()) else {
            return false;
        };
        let Ok(content_type) = content_type.to_str() else {
            return false;
        };
        if !self.types.iter().any(|t| t.matches(content_type)) {
            return false;
        }
        match content_length(headers) {
            Some(len) => len > 0 && len >= self.min_size,
            None => true,
        }
    }
}

/// `Cache-Control: no-transform` in any of the response's Cache-Control values.
fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|directive| {
            let name = directive.split(|&b| b == b'=').next().unwrap_or_default();
            name.trim_ascii().eq_ignore_ascii_case(b"no-transform")
        })
    })
}

/// The response's length when it has exactly one valid `Content-Length`.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{ACCEPT_ENCODING, HeaderName};

    fn range(s: &str) -> MediaRange {
        s.parse().unwrap()
    }

    #[test]
    fn media_ranges_parse_and_display_lowercase() {
        for (s, shown) in [
            ("text/*", "text/*"),
            ("*/*", "*/*"),
            ("application/json", "application/json"),
            (" Application/Problem+JSON ", "application/problem+json"),
            ("image/svg+xml", "image/svg+xml"),
        ] {
            assert_eq!(range(s).to_string(), shown);
        }
    }

    #[test]
    fn invalid_media_ranges_are_rejected_with_the_value() {
        for s in [
            "",
            "text",
            "/json",
            "text/",
            "*/json",
            "text/html*",
            "te*t/html",
            "application/*+json",
            "text/html; charset=utf-8",
            "text/html/x",
            "text /html",
            "*",
        ] {
            let err = s.parse::<MediaRange>().unwrap_err();
            assert_eq!(err, InvalidMediaRange(s.to_owned()));
            assert!(err.to_string().contains(&format!("{s:?}")), "{err}");
        }
    }

    #[test]
    fn media_range_matching_ignores_parameters_case_and_whitespace() {
        assert!(range("text/*").matches("text/html; charset=utf-8"));
        assert!(range("text/*").matches("TEXT/Plain"));
        assert!(range("application/json").matches(" application/JSON ;charset=utf-8"));
        assert!(range("application/json").matches("application / json"));
        assert!(range("*/*").matches("image/png"));
        assert!(!range("*/*").matches("garbage"));
        assert!(!range("*/*").matches("/"));
        assert!(!range("text/*").matches("application/json"));
        assert!(!range("application/json").matches("application/jsonx"));
        assert!(!range("application/json").matches("application/problem+json"));
        assert!(!range("text/html").matches(""));
    }

    #[test]
    fn default_rules_cover_text_json_and_svg() {
        let rules = Rules::default();
        assert_eq!(rules.codecs, Codec::ALL);
        assert_eq!(rules.min_size, 256);
        for t in [
            "text/css",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/problem+json",
            "image/svg+xml",
        ] {
            assert!(rules.types.iter().any(|r| r.matches(t)), "{t}");
        }
        assert!(!rules.types.iter().any(|r| r.matches("image/png")));
    }

    struct Case {
        method: Method,
        status: StatusCode,
        headers: Vec<(HeaderName, &'static str)>,
        accept: &'static [&'static str],
    }

    impl Case {
        fn new(headers: &[(HeaderName, &'static str)]) -> Self {
            let mut all = vec![(CONTENT_TYPE, "text/html; charset=utf-8")];
            for (name, value) in headers {
                all.retain(|(n, _)| n != name);
                all.push((name.clone(), value));
            }
            Self {
                method: Method::GET,
                status: StatusCode::OK,
                headers: all,
                accept: &["gzip, br"],
            }
        }

        fn decide(&self, rules: &Rules) -> Decision {
            let mut headers = HeaderMap::new();
            for (name, value) in &self.headers {
                if !value.is_empty() {
                    headers.append(name, HeaderValue::from_static(value));
                }
            }
            let mut request = HeaderMap::new();
            for v in self.accept {
                request.append(ACCEPT_ENCODING, HeaderValue::from_static(v));
            }
            rules.decide(
                request.get_all(ACCEPT_ENCODING),
                &self.method,
                self.status,
                &headers,
            )
        }
    }

    #[test]
    fn decide_table() {
        let rules = Rules::default();
        let br = Decision::Compress(Codec::Brotli);
        let with = |status: u16| Case {
            status: StatusCode::from_u16(status).unwrap(),
            ..Case::new(&[])
        };
        let method = |m: Method| Case {
            method: m,
            ..Case::new(&[])
        };
        let accepting = |accept: &'static [&'static str]| Case {
            accept,
            ..Case::new(&[])
        };
        let cases: Vec<(&str, Case, Decision)> = vec![
            ("plain html", Case::new(&[]), br),
            ("200 no length", with(200), br),
            ("404 page", with(404), br),
            ("500 page", with(500), br),
            ("HEAD as GET", method(Method::HEAD), br),
            ("POST response", method(Method::POST), br),
            ("CONNECT", method(Method::CONNECT), Decision::Identity),
            ("101", with(101), Decision::Identity),
            ("103", with(103), Decision::Identity),
            ("204", with(204), Decision::Identity),
            ("206", with(206), Decision::Identity),
            ("304", with(304), Decision::Identity),
            (
                "content-range",
                Case::new(&[(CONTENT_RANGE, "bytes 0-99/1000")]),
                Decision::Identity,
            ),
            (
                "already gzip",
                Case::new(&[(CONTENT_ENCODING, "gzip")]),
                Decision::Identity,
            ),
            (
                "already unknown coding",
                Case::new(&[(CONTENT_ENCODING, "compress")]),
                Decision::Identity,
            ),
            (
                "identity encoding",
                Case::new(&[(CONTENT_ENCODING, "identity")]),
                br,
            ),
            (
                "no-transform",
                Case::new(&[(CACHE_CONTROL, "public, No-Transform, max-age=60")]),
                Decision::Identity,
            ),
            (
                "other cache-control",
                Case::new(&[(CACHE_CONTROL, "no-cache, max-age=0")]),
                br,
            ),
            (
                "image/png",
                Case::new(&[(CONTENT_TYPE, "image/png")]),
                Decision::Identity,
            ),
            (
                "no content-type",
                Case::new(&[(CONTENT_TYPE, "")]),
                Decision::Identity,
            ),
            (
                "json with charset",
                Case::new(&[(CONTENT_TYPE, "Application/JSON; charset=utf-8")]),
                br,
            ),
            (
                "below min_size",
                Case::new(&[(CONTENT_LENGTH, "255")]),
                Decision::Identity,
            ),
            ("at min_size", Case::new(&[(CONTENT_LENGTH, "256")]), br),
            (
                "empty body",
                Case::new(&[(CONTENT_LENGTH, "0")]),
                Decision::Identity,
            ),
            (
                "accepts nothing offered",
                accepting(&["deflate"]),
                Decision::IdentityVaried,
            ),
            (
                "refuses everything",
                accepting(&["*;q=0"]),
                Decision::IdentityVaried,
            ),
            (
                "no accept-encoding",
                accepting(&[]),
                Decision::IdentityVaried,
            ),
            (
                "never-compress wins over accept-encoding",
                Case {
                    accept: &[],
                    ..Case::new(&[(CONTENT_TYPE, "image/png")])
                },
                Decision::Identity,
            ),
            (
                "server order",
                accepting(&["gzip", "zstd"]),
                Decision::Compress(Codec::Zstd),
            ),
        ];
        for (name, case, want) in cases {
            assert_eq!(case.decide(&rules), want, "{name}");
        }
    }

    #[test]
    fn decide_with_min_size_zero_still_skips_empty_bodies() {
        let rules = Rules {
            min_size: 0,
            ..Rules::default()
        };
        let case = Case::new(&[(CONTENT_LENGTH, "1")]);
        assert_eq!(case.decide(&rules), Decision::Compress(Codec::Brotli));
        let case = Case::new(&[(CONTENT_LENGTH, "0")]);
        assert_eq!(case.decide(&rules), Decision::Identity);
    }

    #[test]
    fn decide_without_codecs_is_identity() {
        let rules = Rules {
            codecs: Vec::new(),
            ..Rules::default()
        };
        assert_eq!(Case::new(&[]).decide(&rules), Decision::Identity);
    }

    #[test]
    fn decide_skips_a_response_with_two_content_types() {
        let rules = Rules::default();
        let mut headers = HeaderMap::new();
        headers.append(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        headers.append(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let accept = HeaderValue::from_static("gzip");
        assert_eq!(
            rules.decide([&accept], &Method::GET, StatusCode::OK, &headers),
            Decision::Identity
        );
    }
}
