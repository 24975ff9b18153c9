//! `Accept-Encoding` (RFC 9110 §12.5.3): which of the offered codings a client takes.

use http::HeaderValue;

use crate::Codec;

/// A q-value in thousandths, 0 (not acceptable) to 1000.
type Q = u16;

/// Picks the coding to compress a response with, from the request's `Accept-Encoding` values
/// (all of them: `headers.get_all(ACCEPT_ENCODING)`) and the codings the route offers, in its
/// order of preference.
///
/// Every element `coding;q=value` of the comma-separated lists is read; `q` defaults to 1 and
/// `q=0` means "not acceptable". `*` gives its q to every offered coding the client does not
/// name. The offered coding with the highest q wins; ties go to the one earlier in `offered`.
/// A coding named twice counts with its highest q.
///
/// Lenient where clients are sloppy (whitespace, case, parameters other than `q` are
/// ignored), strict where a guess could be wrong: an element with a malformed q (`q=2`,
/// `q=0.1234`, `q=x`) is ignored, and so is a whole header value that is not visible ASCII.
///
/// `None` means "send identity": no `Accept-Encoding` at all (RFC 9110 lets the server pick any
/// coding then, but identity is what every client can read), nothing offered acceptable, or an
/// empty header. `identity;q=0` or `*;q=0` without an acceptable coding also give `None`: the
/// gateway then sends identity anyway, as a 406 would break more clients than it helps.
pub fn negotiate<'a>(
    accept_encoding: impl IntoIterator<Item = &'a HeaderValue>,
    offered: &[Codec],
) -> Option<Codec> {
    // Per offered codec (by index): the highest q named explicitly.
    let mut named: [Option<Q>; Codec::ALL.len()] = [None; Codec::ALL.len()];
    let mut star: Option<Q> = None;
    for value in accept_encoding {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for (coding, q) in value.split(',').filter_map(parse_element) {
            if coding == "*" {
                star = star.max(Some(q));
            } else if let Some(codec) = Codec::from_token(coding) {
                let slot = &mut named[index(codec)];
                *slot = (*slot).max(Some(q));
            }
        }
    }
    let mut best: Option<(Codec, Q)> = None;
    for &codec in offered {
        let q = named[index(codec)].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((codec, q));
        }
    }
    best.map(|(codec, _)| codec)
}

fn index(codec: Codec) -> usize {
    match codec {
        Codec::Zstd => 0,
        Codec::Brotli => 1,
        Codec::Gzip => 2,
    }
}

/// One list element: `coding *( OWS ";" OWS param )`. `None` for an empty element, a coding
/// that is not a token, or a malformed q.
fn parse_element(element: &str) -> Option<(&str, Q)> {
    let mut parts = element.split(';');
    let coding = trim_ows(parts.next()?);
    if coding.is_empty() || !coding.bytes().all(is_tchar) {
        return None;
    }
    let mut q = None;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        // Only the first q counts: a second one is as meaningless as any other parameter.
        if q.is_none() && trim_ows(name).eq_ignore_ascii_case("q") {
            q = Some(parse_q(trim_ows(value))?);
        }
    }
    Some((coding, q.unwrap_or(1000)))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_q(s: &str) -> Option<Q> {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Q = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += Q::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: &[Codec] = &Codec::ALL;

    fn pick(values: &[&str], offered: &[Codec]) -> Option<Codec> {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        negotiate(&values, offered)
    }

    #[test]
    fn negotiation_table() {
        use Codec::*;
        let cases: &[(&[&str], &[Codec], Option<Codec>)] = &[
            (&["gzip"], ALL, Some(Gzip)),
            (&["br;q=0.5, gzip;q=0.8"], ALL, Some(Gzip)),
            (&["br;q=0.8, gzip;q=0.5"], ALL, Some(Brotli)),
            (&["*"], ALL, Some(Zstd)),
            (&["*"], &[Gzip, Brotli], Some(Gzip)),
            (&["*;q=0"], ALL, None),
            (&["gzip;q=0, *"], ALL, Some(Zstd)),
            (&["gzip;q=0, *"], &[Gzip], None),
            (&["br;q=0.1, *;q=0.5"], &[Brotli, Gzip], Some(Gzip)),
            (&["identity"], ALL, None),
            (&["identity;q=0"], ALL, None),
            (&["identity;q=0, *;q=0"], ALL, None),
            (&["GZIP"], ALL, Some(Gzip)),
            (&["x-gzip"], ALL, Some(Gzip)),
            (&["Br ; Q=1"], ALL, Some(Brotli)),
            // Ties go to the server's order.
            (&["gzip, br, zstd"], ALL, Some(Zstd)),
            (&["gzip, br"], &[Gzip, Brotli], Some(Gzip)),
            (&["gzip, br"], &[Brotli, Gzip], Some(Brotli)),
            (&["gzip;q=0.5, br;q=0.5"], &[Brotli, Gzip], Some(Brotli)),
            (&["zstd;q=1.0"], ALL, Some(Zstd)),
            (&["zstd;q=1.000, gzip;q=0.999"], ALL, Some(Zstd)),
            (&["zstd;q=0.001"], ALL, Some(Zstd)),
            // Bad q values: the element is ignored.
            (&["gzip;q=2"], ALL, None),
            (&["gzip;q=1.001"], ALL, None),
            (&["gzip;q=0.1234"], ALL, None),
            (&["gzip;q=-1"], ALL, None),
            (&["gzip;q=.5"], ALL, None),
            (&["gzip;q="], ALL, None),
            (&["gzip;q"], ALL, None),
            (&["gzip;q=abc, br"], ALL, Some(Brotli)),
            (&["gzip;q=0.5x"], ALL, None),
            // Other parameters are ignored; so are empty elements and non-tokens.
            (&["gzip;level=9"], ALL, Some(Gzip)),
            (&[" , ,gzip , "], ALL, Some(Gzip)),
            (&["g zip"], ALL, None),
            (&["\"gzip\""], ALL, None),
            (&[""], ALL, None),
            // Multiple header values are one list.
            (&["gzip;q=0.5", "br"], ALL, Some(Brotli)),
            (&["br;q=0", "gzip"], ALL, Some(Gzip)),
            // A coding named twice counts with its highest q.
            (&["gzip;q=0", "gzip"], ALL, Some(Gzip)),
            (&["deflate, compress"], ALL, None),
            (&["gzip"], &[], None),
        ];
        for (values, offered, want) in cases {
            assert_eq!(
                pick(values, offered),
                *want,
                "{values:?} offered {offered:?}"
            );
        }
    }

    #[test]
    fn no_accept_encoding_is_identity() {
        assert_eq!(negotiate(&[], ALL), None);
    }

    #[test]
    fn a_value_that_is_not_visible_ascii_is_ignored_as_a_whole() {
        let values = [
            HeaderValue::from_bytes(b"zstd, br\xff").unwrap(),
            HeaderValue::from_static("gzip;q=0.1"),
        ];
        assert_eq!(negotiate(&values, ALL), Some(Codec::Gzip));
    }

    #[test]
    fn q_values_parse_to_thousandths() {
        for (s, want) in [
            ("0", Some(0)),
            ("0.", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("1.0000", None),
            ("01", None),
            ("0,5", None),
            ("", None),
            ("+0", None),
        ] {
            assert_eq!(parse_q(s), want, "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(values in prop::collection::vec(any::<Vec<u8>>(), 0..4)) {
            let values: Vec<HeaderValue> =
                values.iter().filter_map(|v| HeaderValue::from_bytes(v).ok()).collect();
            let _ = negotiate(&values, ALL);
        }

        #[test]
        fn never_panics_on_header_like_input(
            value in "[ \t,;=qQ.0-9a-zA-Z*\\-]{0,64}",
            offered in prop::sample::subsequence(Codec::ALL.to_vec(), 0..=3),
        ) {
            let value = HeaderValue::from_str(&value).unwrap();
            if let Some(codec) = negotiate([&value], &offered) {
                prop_assert!(offered.contains(&codec));
            }
        }
    }
}
