//! Header validation, and the in-memory header store of mock requests and responses.

use crate::HeaderError;

/// Checks a header name as the gateway parses it (`http::HeaderName`: RFC 9110 token
/// characters, any case, at most 65535 bytes). Checked byte by byte rather than by building a
/// `HeaderName`, which copies every name that is not a standard one: this runs for every header
/// edit, inside the plugin, on every request. A property test holds it to `http`'s parser.
pub(crate) fn check_name(name: &str) -> Result<(), HeaderError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(HeaderError::new(format!("invalid header name {name:?}")))
    }
}

/// The longest header name `http` accepts.
const MAX_NAME_LEN: usize = (1 << 16) - 1;

/// Checks a header value as the gateway parses it (`http::HeaderValue`: visible ASCII, spaces,
/// tabs and bytes from 0x80 up; no control characters), without copying it.
pub(crate) fn check_value(name: &str, value: &str) -> Result<(), HeaderError> {
    if value
        .bytes()
        .all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
    {
        Ok(())
    } else {
        Err(HeaderError::new(format!(
            "invalid value for header {name:?}: {value:?}"
        )))
    }
}

/// Valid pairs as a `HeaderMap` (for `into_http`).
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub(crate) fn header_map(headers: Vec<(String, String)>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub(crate) use mock::MockHeaders;

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
mod mock {
    use http::{HeaderMap, HeaderName, HeaderValue};

    use super::{check_name, check_value};
    use crate::HeaderError;

    /// Headers of a mock request or response, with the host's semantics.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct MockHeaders(pub(crate) HeaderMap);

    /// Checked as the plugin's edits are, then parsed as the gateway does.
    fn parse(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), HeaderError> {
        check_name(name)?;
        check_value(name, value)?;
        let invalid = || HeaderError::new(format!("invalid header {name:?}: {value:?}"));
        Ok((
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?,
            HeaderValue::from_str(value).map_err(|_| invalid())?,
        ))
    }

    fn text(value: &http::HeaderValue) -> String {
        String::from_utf8_lossy(value.as_bytes()).into_owned()
    }

    impl MockHeaders {
        pub(crate) fn header(&self, name: &str) -> Option<String> {
            self.0.get(name).map(text)
        }

        pub(crate) fn header_all(&self, name: &str) -> Vec<String> {
            self.0.get_all(name).iter().map(text).collect()
        }

        pub(crate) fn headers(&self) -> Vec<(String, String)> {
            self.0
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), text(value)))
                .collect()
        }

        pub(crate) fn set(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
            let (name, value) = parse(name, value)?;
            self.0.insert(name, value);
            Ok(())
        }

        pub(crate) fn append(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
            let (name, value) = parse(name, value)?;
            self.0.append(name, value);
            Ok(())
        }

        pub(crate) fn remove(&mut self, name: &str) {
            // An invalid name cannot be present: nothing to remove.
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                self.0.remove(name);
            }
        }

        /// Applies one (already checked) edit.
        pub(crate) fn apply(&mut self, edit: &crate::HeaderEdit) -> Result<(), HeaderError> {
            match edit {
                crate::HeaderEdit::Set { name, value } => self.set(name, value),
                crate::HeaderEdit::Append { name, value } => self.append(name, value),
                crate::HeaderEdit::Remove { name } => {
                    self.remove(name);
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{check_name, check_value};

    /// Bytes that matter at the edges of both rules, plus everything else now and then.
    fn interesting_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => prop::sample::select(b"aZ09-_!~`|^.:;\"()<>@,/[]{}?= \t\r\n\x00\x7f\x80\xff".to_vec()),
            1 => any::<u8>(),
        ]
    }

    proptest! {
        #[test]
        fn names_are_checked_exactly_as_http_parses_them(
            bytes in prop::collection::vec(interesting_byte(), 0..12)
        ) {
            if let Ok(name) = std::str::from_utf8(&bytes) {
                prop_assert_eq!(
                    check_name(name).is_ok(),
                    http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                    "name {:?}", name
                );
            }
        }

        #[test]
        fn values_are_checked_exactly_as_http_parses_them(value in "[\\x00-\\x{ff}\\t ]{0,12}") {
            prop_assert_eq!(
                check_value("x", &value).is_ok(),
                http::HeaderValue::from_str(&value).is_ok(),
                "value {:?}", value
            );
        }
    }

    #[test]
    fn name_length_limit_is_http_s() {
        let longest = "a".repeat(super::MAX_NAME_LEN);
        assert!(check_name(&longest).is_ok());
        assert!(http::HeaderName::from_bytes(longest.as_bytes()).is_ok());
        let too_long = "a".repeat(super::MAX_NAME_LEN + 1);
        assert!(check_name(&too_long).is_err());
        assert!(http::HeaderName::from_bytes(too_long.as_bytes()).is_err());
    }
}
