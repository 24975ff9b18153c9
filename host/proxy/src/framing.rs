//! Strict HTTP/1.1 message framing, checked before anything else looks at a request: a request
//! whose body length two parsers could read differently (the root of request smuggling) is
//! answered 400 and its connection closed, whatever hyper made of it. RFC 9112 §6.1–6.3.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Version};

/// Why a request's framing is refused.
pub(crate) fn check(version: Version, headers: &HeaderMap) -> Result<(), &'static str> {
    if version >= Version::HTTP_2 {
        // HTTP/2 frames its own data; hyper refuses these fields there.
        return Ok(());
    }
    let mut encodings = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(encoding) = encodings.next() {
        if version == Version::HTTP_10 {
            // §6.1: a Transfer-Encoding in HTTP/1.0 means the framing is faulty.
            return Err("transfer-encoding in an HTTP/1.0 request");
        }
        if encodings.next().is_some() {
            return Err("transfer-encoding given more than once");
        }
        // §6.1: chunked must be the final coding and applied once; the gateway supports no
        // other transfer coding (`gzip, chunked` would leave a body nobody decodes).
        if !encoding
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked")
        {
            return Err("transfer-encoding other than a single chunked");
        }
        // §6.3: a sender must not send both; a proxy must not pass on the Content-Length.
        if headers.contains_key(CONTENT_LENGTH) {
            return Err("both content-length and transfer-encoding");
        }
        return Ok(());
    }
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        if lengths.next().is_some() {
            return Err("content-length given more than once");
        }
        let digits = length.as_bytes();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err("content-length is not a decimal number");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for fields in [
            &[("transfer-encoding", "chunked, chunked")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "xchunked")],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("content-length", "5, 6")],
            &[("content-length", "+5")],
            &[("content-length", "")],
        ] {
            assert!(
                check(Version::HTTP_11, &headers(fields)).is_err(),
                "{fields:?}"
            );
        }
        assert!(
            check(
                Version::HTTP_10,
                &headers(&[("transfer-encoding", "chunked")])
            )
            .is_err()
        );
    }

    #[test]
    fn plain_framing_passes() {
        for fields in [
            &[][..],
            &[("transfer-encoding", "chunked")],
            &[("transfer-encoding", "Chunked ")],
            &[("content-length", "0")],
            &[("content-length", "1024")],
        ] {
            assert!(
                check(Version::HTTP_11, &headers(fields)).is_ok(),
                "{fields:?}"
            );
        }
    }
}
