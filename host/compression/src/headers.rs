//! Header edits that go with compressing a response or decoding a request.

use http::header::{ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, VARY};
use http::{HeaderMap, HeaderValue};

use crate::Codec;

/// Edits a response's headers for a body compressed with `codec`: sets `Content-Encoding`,
/// removes `Content-Length` (the length changes; HTTP/1.1 goes chunked) and `Accept-Ranges`
/// (ranges of the compressed bytes are not served), adds `Accept-Encoding` to `Vary` (see
/// [`add_vary`]), and makes a strong `ETag` weak (`"x"` becomes `W/"x"`), because the bytes
/// differ from the identity representation's while its meaning is the same.
pub fn encode_headers(headers: &mut HeaderMap, codec: Codec) {
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(codec.token()));
    headers.remove(CONTENT_LENGTH);
    headers.remove(ACCEPT_RANGES);
    add_vary(headers);
    weaken_etags(headers);
}

/// Adds `Accept-Encoding` to a response's `Vary`, for a response sent as is that another
/// client would get compressed, so caches keep the variants apart. Merged into an existing
/// `Vary` (`Origin` becomes `Origin, Accept-Encoding`), only once however it is spelled, and
/// `Vary: *` is left alone (it already varies on everything).
pub fn add_vary(headers: &mut HeaderMap) {
    let vary = headers.get_all(VARY);
    if vary
        .iter()
        .flat_map(list_elements)
        .any(|e| e == b"*" || e.eq_ignore_ascii_case(b"accept-encoding"))
    {
        return;
    }
    let accept_encoding = HeaderValue::from_static("Accept-Encoding");
    let mut values = vary.iter();
    let merged = match (values.next(), values.next()) {
        (Some(first), None) if !first.as_bytes().trim_ascii().is_empty() => {
            let mut merged = first.as_bytes().trim_ascii().to_vec();
            merged.extend_from_slice(b", Accept-Encoding");
            // A valid value with a valid suffix is valid; should that ever fail, a second
            // field still says the same.
            HeaderValue::from_bytes(&merged).ok()
        }
        // Several Vary fields are one list: one more field adds to it without rewriting them.
        (Some(_), Some(_)) => None,
        // None, or only an empty value.
        _ => Some(accept_encoding.clone()),
    };
    if let Some(value) = merged {
        headers.insert(VARY, value);
    } else {
        headers.append(VARY, accept_encoding);
    }
}

/// The non-empty elements of a comma-separated header value, trimmed.
fn list_elements(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

fn weaken_etags(headers: &mut HeaderMap) {
    if !headers
        .get_all(ETAG)
        .iter()
        .any(|v| v.as_bytes().starts_with(b"\""))
    {
        return;
    }
    let etags: Vec<HeaderValue> = headers.get_all(ETAG).iter().cloned().collect();
    headers.remove(ETAG);
    for etag in etags {
        let etag = if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            HeaderValue::from_bytes(&weak).unwrap_or(etag)
        } else {
            etag
        };
        headers.append(ETAG, etag);
    }
}

/// The codec a request body is encoded with, when its `Content-Encoding` is exactly one
/// coding this crate decodes (`gzip`/`x-gzip`, `br`, `zstd`, any case), so it can be wrapped in
/// a [`Decoder`](crate::Decoder). `None` when the body is not encoded (no `Content-Encoding`,
/// or `identity`) but also when it cannot be decoded here (stacked codings such as
/// `gzip, br`, or an unknown one): check for `Content-Encoding` to tell these apart.
pub fn request_codec(headers: &HeaderMap) -> Option<Codec> {
    let mut codings = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(list_elements);
    let (Some(coding), None) = (codings.next(), codings.next()) else {
        return None;
    };
    Codec::from_token(std::str::from_utf8(coding).ok()?)
}

/// Edits a request's headers once its body is decoded: removes `Content-Encoding` and
/// `Content-Length` (the decoded length is unknown until the body was read).
pub fn decoded_headers(headers: &mut HeaderMap) {
    headers.remove(CONTENT_ENCODING);
    headers.remove(CONTENT_LENGTH);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(http::header::HeaderName, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    fn all(headers: &HeaderMap, name: http::header::HeaderName) -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn encode_headers_sets_encoding_and_drops_length_and_ranges() {
        let mut headers = map(&[
            (CONTENT_LENGTH, "1234"),
            (ACCEPT_RANGES, "bytes"),
            (CONTENT_ENCODING, "identity"),
        ]);
        encode_headers(&mut headers, Codec::Zstd);
        assert_eq!(all(&headers, CONTENT_ENCODING), ["zstd"]);
        assert!(!headers.contains_key(CONTENT_LENGTH));
        assert!(!headers.contains_key(ACCEPT_RANGES));
        assert_eq!(all(&headers, VARY), ["Accept-Encoding"]);
    }

    #[test]
    fn vary_is_merged_once() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &["Accept-Encoding"]),
            (&["Origin"], &["Origin, Accept-Encoding"]),
            (&["Origin, Cookie "], &["Origin, Cookie, Accept-Encoding"]),
            (&["accept-encoding"], &["accept-encoding"]),
            (&["Origin,ACCEPT-ENCODING"], &["Origin,ACCEPT-ENCODING"]),
            (
                &["Origin", "accept-Encoding"],
                &["Origin", "accept-Encoding"],
            ),
            (&["*"], &["*"]),
            (&["Origin, *"], &["Origin, *"]),
            (
                &["Origin", "Cookie"],
                &["Origin", "Cookie", "Accept-Encoding"],
            ),
            (&[""], &["Accept-Encoding"]),
        ];
        for (before, after) in cases {
            let mut headers = HeaderMap::new();
            for v in *before {
                headers.append(VARY, HeaderValue::from_static(v));
            }
            add_vary(&mut headers);
            assert_eq!(all(&headers, VARY), *after, "{before:?}");
            // Adding it again changes nothing.
            add_vary(&mut headers);
            assert_eq!(all(&headers, VARY), *after, "{before:?} twice");
        }
    }

    #[test]
    fn strong_etags_become_weak() {
        let mut headers = map(&[(ETAG, "\"abc\"")]);
        encode_headers(&mut headers, Codec::Gzip);
        assert_eq!(all(&headers, ETAG), ["W/\"abc\""]);

        let mut headers = map(&[(ETAG, "W/\"abc\"")]);
        encode_headers(&mut headers, Codec::Gzip);
        assert_eq!(all(&headers, ETAG), ["W/\"abc\""]);

        let mut headers = HeaderMap::new();
        encode_headers(&mut headers, Codec::Gzip);
        assert!(!headers.contains_key(ETAG));
    }

    #[test]
    fn request_codec_is_one_known_coding() {
        let cases: &[(&[&str], Option<Codec>)] = &[
            (&[], None),
            (&["gzip"], Some(Codec::Gzip)),
            (&["X-Gzip"], Some(Codec::Gzip)),
            (&[" br "], Some(Codec::Brotli)),
            (&["ZSTD"], Some(Codec::Zstd)),
            (&["identity"], None),
            (&["deflate"], None),
            (&["gzip, br"], None),
            (&["gzip", "gzip"], None),
            (&["gzip, "], Some(Codec::Gzip)),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for v in *values {
                headers.append(CONTENT_ENCODING, HeaderValue::from_static(v));
            }
            assert_eq!(request_codec(&headers), *want, "{values:?}");
        }
    }

    #[test]
    fn decoded_headers_drop_encoding_and_length() {
        let mut headers = map(&[
            (CONTENT_ENCODING, "gzip"),
            (CONTENT_LENGTH, "10"),
            (http::header::CONTENT_TYPE, "application/json"),
        ]);
        decoded_headers(&mut headers);
        assert!(!headers.contains_key(CONTENT_ENCODING));
        assert!(!headers.contains_key(CONTENT_LENGTH));
        assert!(headers.contains_key(http::header::CONTENT_TYPE));
    }
}
