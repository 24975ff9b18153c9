//! A plugin's answers — `respond` and `reject` — checked and made into what the proxy sends.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::bindings::wasmgate::plugin::types::{Rejection as WitRejection, ResponseSpec};
use crate::exchange::{MAX_HEADERS, ResponseView};

/// A plugin's refusal (`reject`), checked: the proxy answers it in the gateway's error format.
#[derive(Debug)]
pub struct PluginRejection {
    /// 400-599.
    pub status: StatusCode,
    /// The error code: 1-64 characters of `a-z`, `0-9` and `_`.
    pub error: String,
    /// The message for people.
    pub message: String,
    /// The plugin's extra headers (invalid ones dropped).
    pub headers: HeaderMap,
}

/// A plugin's `reject`: a status outside 400-599, an invalid code or more than [`MAX_HEADERS`]
/// headers is a plugin failure; invalid headers are dropped (and logged).
pub(crate) fn rejection(r: WitRejection) -> Result<PluginRejection, String> {
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| format!("rejected with status {} (400-599)", r.status))?;
    let valid_code = !r.error.is_empty()
        && r.error.len() <= 64
        && r.error
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_code {
        return Err(format!(
            "rejected with error code {:?} (1-64 characters of a-z, 0-9 and _)",
            r.error
        ));
    }
    Ok(PluginRejection {
        status,
        error: r.error,
        message: r.message,
        headers: header_map(r.headers)?,
    })
}

/// A plugin's `respond` as a response: a status outside 100-999 or more than [`MAX_HEADERS`]
/// headers is a plugin failure; invalid headers are dropped (and logged).
pub(crate) fn reply(spec: ResponseSpec) -> Result<ResponseView, String> {
    let status = StatusCode::from_u16(spec.status)
        .map_err(|_| format!("answered with status {} (100-999)", spec.status))?;
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = header_map(spec.headers)?;
    response.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(spec.body.len()),
    );
    let (parts, ()) = response.into_parts();
    Ok(ResponseView {
        parts,
        body: Some(Bytes::from(spec.body)),
        body_replaced: true,
    })
}

/// A plugin's answer headers; invalid ones are dropped (and logged).
fn header_map(pairs: Vec<(String, String)>) -> Result<HeaderMap, String> {
    if pairs.len() > MAX_HEADERS {
        return Err(format!(
            "answered with {} headers (at most {MAX_HEADERS})",
            pairs.len()
        ));
    }
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => {
                tracing::warn!(header = %name, "plugin response header is not valid HTTP; dropped")
            }
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16, error: &str) -> WitRejection {
        WitRejection {
            status,
            error: error.to_owned(),
            message: "no".to_owned(),
            headers: vec![
                ("www-authenticate".to_owned(), "Bearer".to_owned()),
                ("bad header".to_owned(), "dropped".to_owned()),
            ],
        }
    }

    #[test]
    fn a_valid_rejection_keeps_its_valid_headers() {
        let r = rejection(refusal(429, "rate_limited")).expect("valid");
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.error, "rate_limited");
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }

    #[test]
    fn a_rejection_outside_4xx_and_5xx_or_with_a_bad_code_is_a_plugin_failure() {
        for (status, code, why) in [
            (200, "ok", "status 200"),
            (302, "moved", "status 302"),
            (600, "x", "status 600"),
            (401, "", "\"\""),
            (401, "Unauthorized", "\"Unauthorized\""),
            (401, "no-dashes", "\"no-dashes\""),
        ] {
            let err = rejection(refusal(status, code)).expect_err(why);
            assert!(err.contains(why), "{err}");
        }
        let long = "a".repeat(65);
        assert!(rejection(refusal(400, &long)).is_err());
        assert!(rejection(refusal(400, &"a".repeat(64))).is_ok());
    }

    #[test]
    fn an_answer_with_too_many_headers_is_a_plugin_failure() {
        let spec = ResponseSpec {
            status: 200,
            headers: (0..=MAX_HEADERS)
                .map(|i| (format!("x-{i}"), "v".to_owned()))
                .collect(),
            body: Vec::new(),
        };
        assert!(reply(spec).is_err());
    }
}
