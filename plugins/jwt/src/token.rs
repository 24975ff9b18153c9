//! The token: found in `Authorization: Bearer <token>` (RFC 6750 §2.1), its JOSE header read
//! before any key is chosen.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};

use crate::rejection::Rejection;

/// The token of an `Authorization` header value: scheme `Bearer` (any case), then the token.
/// Another scheme, or no header, is a missing token; `Bearer` with nothing usable after it is
/// a malformed one.
pub(crate) fn bearer(authorization: Option<&str>) -> Result<&str, Rejection> {
    let value = authorization.ok_or(Rejection::MissingToken)?.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::MissingToken);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.contains(' ') {
        return Err(Rejection::Malformed);
    }
    Ok(token)
}

/// What selects the key: the algorithm and the key id.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// Reads the token's JOSE header. `alg` values jsonwebtoken does not know (`none`, `HS1`, ...)
/// are refused as algorithms, not as malformed tokens, so the client learns what is wrong.
pub(crate) fn head(token: &str) -> Result<Head, Rejection> {
    match jsonwebtoken::decode_header(token) {
        Ok(Header {
            crit: Some(crit), ..
        }) if !crit.is_empty() => Err(Rejection::CriticalHeader),
        Ok(header) => Ok(Head {
            alg: header.alg,
            kid: header.kid,
        }),
        Err(_) if names_an_algorithm(token) => Err(Rejection::AlgorithmNotAccepted),
        Err(_) => Err(Rejection::Malformed),
    }
}

/// Whether the token's header is a JSON object with a string `alg` (so a header jsonwebtoken
/// refused was refused for its algorithm). Only runs on that failure path.
fn names_an_algorithm(token: &str) -> bool {
    let Some((header, _)) = token.split_once('.') else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|header| header.get("alg").is_some_and(serde_json::Value::is_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token_after_the_bearer_scheme_in_any_case() {
        assert_eq!(bearer(Some("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
        assert_eq!(bearer(Some("bearer  abc.def.ghi ")), Ok("abc.def.ghi"));
        assert_eq!(bearer(Some("BEARER abc")), Ok("abc"));
    }

    #[test]
    fn another_scheme_or_no_header_is_a_missing_token() {
        assert_eq!(bearer(None), Err(Rejection::MissingToken));
        assert_eq!(bearer(Some("")), Err(Rejection::MissingToken));
        assert_eq!(bearer(Some("Basic YTpi")), Err(Rejection::MissingToken));
        assert_eq!(bearer(Some("Bearerabc")), Err(Rejection::MissingToken));
    }

    #[test]
    fn bearer_without_a_single_token_is_malformed() {
        assert_eq!(bearer(Some("Bearer")), Err(Rejection::Malformed));
        assert_eq!(bearer(Some("Bearer   ")), Err(Rejection::Malformed));
        assert_eq!(bearer(Some("Bearer a b")), Err(Rejection::Malformed));
    }

    #[test]
    fn header_with_alg_none_is_an_unaccepted_algorithm() {
        // {"alg":"none","typ":"JWT"}
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbm4ifQ.";
        assert_eq!(head(token).unwrap_err(), Rejection::AlgorithmNotAccepted);
    }

    #[test]
    fn garbage_is_malformed() {
        for token in ["abc", "a.b.c", "e30.e30.", "!!!.e30.x"] {
            assert_eq!(head(token).unwrap_err(), Rejection::Malformed, "{token}");
        }
    }
}
