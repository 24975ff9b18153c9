//! The checks on a verified token's claims (RFC 7519 §4.1), and claim values as header values.
//!
//! jsonwebtoken only verifies the signature here: its own claim validation reads the system clock
//! and reports less precisely, so the time checks take `now` as an argument (deterministic tests)
//! and every failure has its own [`Rejection`].

use serde_json::{Map, Value};
use wasmgate_sdk::ConfigError;

use crate::rejection::Rejection;

/// What a token's claims must satisfy, from the config.
#[derive(Debug)]
pub(crate) struct ClaimRules {
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub(crate) issuers: Vec<String>,
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub(crate) audiences: Vec<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub(crate) leeway: f64,
    /// Claims that must be present.
    pub(crate) required: Vec<String>,
}

impl ClaimRules {
    /// Checks `claims` at `now` (seconds since the UNIX epoch).
    pub(crate) fn check(&self, claims: &Map<String, Value>, now: f64) -> Result<(), Rejection> {
        if self
            .required
            .iter()
            .any(|claim| !claims.contains_key(claim))
        {
            return Err(Rejection::MissingClaim);
        }
        // RFC 7519 §4.1.4: the current time MUST be before `exp`.
        if let Some(exp) = numeric_date(claims, "exp")?
            && now >= exp + self.leeway
        {
            return Err(Rejection::Expired);
        }
        // §4.1.5: the current time MUST be after or equal to `nbf`.
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && now + self.leeway < nbf
        {
            return Err(Rejection::NotYetValid);
        }
        // §4.1.6 only informs, but a token issued after now is forged or from a broken clock.
        if let Some(iat) = numeric_date(claims, "iat")?
            && iat > now + self.leeway
        {
            return Err(Rejection::IssuedInFuture);
        }
        if !self.issuers.is_empty() {
            match claims.get("iss") {
                None => return Err(Rejection::WrongIssuer),
                Some(Value::String(iss)) if self.issuers.contains(iss) => {}
                Some(Value::String(_)) => return Err(Rejection::WrongIssuer),
                Some(_) => return Err(Rejection::MalformedClaim),
            }
        }
        if !self.audiences.is_empty() {
            // §4.1.3: a string or an array of strings; one of them must name us.
            let accepted = |aud: &Value| match aud {
                Value::String(aud) => Ok(self.audiences.contains(aud)),
                _ => Err(Rejection::MalformedClaim),
            };
            let found = match claims.get("aud") {
                None => false,
                Some(Value::Array(auds)) => {
                    let mut found = false;
                    for aud in auds {
                        found |= accepted(aud)?;
                    }
                    found
                }
                Some(aud) => accepted(aud)?,
            };
            if !found {
                return Err(Rejection::WrongAudience);
            }
        }
        Ok(())
    }
}

/// A NumericDate claim (seconds since the epoch, possibly fractional), if present.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number.as_f64().map(Some).ok_or(Rejection::MalformedClaim),
        Some(_) => Err(Rejection::MalformedClaim),
    }
}

/// `issuer` or `audience`: a string or a list of strings, none empty.
pub(crate) fn one_or_many(key: &str, value: Option<&Value>) -> Result<Vec<String>, ConfigError> {
    let bad = |what: &Value| {
        ConfigError::new(format!(
            "{key}: expected a string or a list of strings, not {what}"
        ))
    };
    let values = match value {
        None => return Ok(Vec::new()),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) if !many.is_empty() => many
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| bad(item)))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ConfigError::new(format!(
                "{key}: must not be an empty list (leave it out to accept any)"
            )));
        }
        Some(other) => return Err(bad(other)),
    };
    if values.iter().any(String::is_empty) {
        return Err(ConfigError::new(format!("{key}: must not be empty")));
    }
    Ok(values)
}

/// A claim value as an upstream header value: strings as they are, numbers and booleans as JSON
/// writes them, arrays and objects as compact JSON; `None` for `null` and for values that are not
/// valid in a header (control characters, non-ASCII text).
pub(crate) fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Null => return None,
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    is_header_value(&text).then_some(text)
}

/// Whether `text` passes the gateway's header value check: visible ASCII, spaces and tabs.
pub(crate) fn is_header_value(text: &str) -> bool {
    text.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: f64 = 1_700_000_000.0;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: 30.0,
            required: vec!["exp".to_owned()],
        }
    }

    fn check(rules: &ClaimRules, claims: Value) -> Result<(), Rejection> {
        rules.check(claims.as_object().expect("object"), NOW)
    }

    #[test]
    fn expiry_counts_the_leeway_to_the_second() {
        let rules = rules();
        assert_eq!(check(&rules, json!({ "exp": NOW - 29.0 })), Ok(()));
        assert_eq!(
            check(&rules, json!({ "exp": NOW - 30.0 })),
            Err(Rejection::Expired)
        );
        assert_eq!(
            check(&rules, json!({ "exp": NOW - 29.5 })),
            Ok(()),
            "fractional exp"
        );
        let strict = ClaimRules {
            leeway: 0.0,
            ..rules
        };
        assert_eq!(
            check(&strict, json!({ "exp": NOW })),
            Err(Rejection::Expired)
        );
        assert_eq!(check(&strict, json!({ "exp": NOW + 1.0 })), Ok(()));
    }

    #[test]
    fn not_before_and_issued_at_count_the_leeway() {
        let rules = rules();
        let exp = NOW + 600.0;
        assert_eq!(
            check(&rules, json!({ "exp": exp, "nbf": NOW + 30.0 })),
            Ok(())
        );
        assert_eq!(
            check(&rules, json!({ "exp": exp, "nbf": NOW + 31.0 })),
            Err(Rejection::NotYetValid)
        );
        assert_eq!(
            check(&rules, json!({ "exp": exp, "iat": NOW + 30.0 })),
            Ok(())
        );
        assert_eq!(
            check(&rules, json!({ "exp": exp, "iat": NOW + 31.0 })),
            Err(Rejection::IssuedInFuture)
        );
    }

    #[test]
    fn rejects_time_claims_that_are_not_numbers() {
        let rules = rules();
        for claims in [
            json!({ "exp": "9999999999" }),
            json!({ "exp": NOW + 60.0, "nbf": null }),
            json!({ "exp": NOW + 60.0, "iat": [1] }),
        ] {
            assert_eq!(check(&rules, claims), Err(Rejection::MalformedClaim));
        }
    }

    #[test]
    fn required_claims_must_be_present() {
        let mut rules = rules();
        assert_eq!(
            check(&rules, json!({ "sub": "ann" })),
            Err(Rejection::MissingClaim)
        );
        rules.required = vec!["exp".to_owned(), "sub".to_owned()];
        assert_eq!(
            check(&rules, json!({ "exp": NOW + 1.0 })),
            Err(Rejection::MissingClaim)
        );
        rules.required.clear();
        assert_eq!(check(&rules, json!({})), Ok(()), "nothing required");
    }

    #[test]
    fn issuer_must_be_one_of_the_configured() {
        let rules = ClaimRules {
            issuers: vec!["https://a".to_owned(), "https://b".to_owned()],
            ..rules()
        };
        let exp = NOW + 60.0;
        assert_eq!(
            check(&rules, json!({ "exp": exp, "iss": "https://b" })),
            Ok(())
        );
        assert_eq!(
            check(&rules, json!({ "exp": exp, "iss": "https://c" })),
            Err(Rejection::WrongIssuer)
        );
        assert_eq!(
            check(&rules, json!({ "exp": exp })),
            Err(Rejection::WrongIssuer)
        );
        assert_eq!(
            check(&rules, json!({ "exp": exp, "iss": ["https://a"] })),
            Err(Rejection::MalformedClaim)
        );
    }

    #[test]
    fn audience_matches_a_string_or_any_member_of_a_list() {
        let rules = ClaimRules {
            audiences: vec!["api".to_owned()],
            ..rules()
        };
        let exp = NOW + 60.0;
        assert_eq!(check(&rules, json!({ "exp": exp, "aud": "api" })), Ok(()));
        assert_eq!(
            check(&rules, json!({ "exp": exp, "aud": ["web", "api"] })),
            Ok(())
        );
        for wrong in [json!("web"), json!(["web"]), json!([])] {
            assert_eq!(
                check(&rules, json!({ "exp": exp, "aud": wrong })),
                Err(Rejection::WrongAudience)
            );
        }
        assert_eq!(
            check(&rules, json!({ "exp": exp })),
            Err(Rejection::WrongAudience)
        );
        assert_eq!(
            check(&rules, json!({ "exp": exp, "aud": ["api", 7] })),
            Err(Rejection::MalformedClaim)
        );
    }

    #[test]
    fn an_unconfigured_audience_is_not_checked() {
        assert_eq!(
            check(&rules(), json!({ "exp": NOW + 60.0, "aud": "other" })),
            Ok(())
        );
    }

    #[test]
    fn claim_values_become_header_values_or_nothing() {
        assert_eq!(
            header_value(&json!("ann@example.com")).as_deref(),
            Some("ann@example.com")
        );
        assert_eq!(header_value(&json!(42)).as_deref(), Some("42"));
        assert_eq!(header_value(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(header_value(&json!(true)).as_deref(), Some("true"));
        assert_eq!(
            header_value(&json!(["a", "b"])).as_deref(),
            Some(r#"["a","b"]"#)
        );
        assert_eq!(
            header_value(&json!({ "k": 1 })).as_deref(),
            Some(r#"{"k":1}"#)
        );
        assert_eq!(header_value(&json!(null)), None);
        assert_eq!(header_value(&json!("line\nbreak")), None);
        assert_eq!(header_value(&json!("Jöran")), None);
        assert_eq!(
            header_value(&json!(["Jöran"])),
            None,
            "serde_json keeps non-ASCII"
        );
    }

    #[test]
    fn one_or_many_accepts_a_string_or_a_list_and_names_the_key() {
        assert_eq!(one_or_many("audience", None).unwrap(), Vec::<String>::new());
        assert_eq!(
            one_or_many("audience", Some(&json!("api"))).unwrap(),
            ["api"]
        );
        assert_eq!(
            one_or_many("audience", Some(&json!(["a", "b"]))).unwrap(),
            ["a", "b"]
        );
        let err = one_or_many("audience", Some(&json!(5))).unwrap_err();
        assert_eq!(
            err.message(),
            "audience: expected a string or a list of strings, not 5"
        );
        let err = one_or_many("issuer", Some(&json!([]))).unwrap_err();
        assert!(
            err.message()
                .starts_with("issuer: must not be an empty list"),
            "{err}"
        );
        let err = one_or_many("issuer", Some(&json!(""))).unwrap_err();
        assert_eq!(err.message(), "issuer: must not be empty");
    }
}
