//! Header validation, and the in-memory header store of mock requests and responses.

use http::{HeaderName, HeaderValue};

use crate::HeaderError;

/// Parses a header name as the gateway does (case-insensitive, stored lowercase).
pub(crate) fn check_name(name: &str) -> Result<HeaderName, HeaderError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| HeaderError::new(format!("invalid header name {name:?}")))
}

/// Parses a header value as the gateway does (visible ASCII, spaces and tabs; no control
/// characters).
pub(crate) fn check_value(name: &str, value: &str) -> Result<HeaderValue, HeaderError> {
    HeaderValue::from_str(value)
        .map_err(|_| HeaderError::new(format!("invalid value for header {name:?}: {value:?}")))
}

/// Valid pairs as a `HeaderMap` (for `into_http`).
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub(crate) fn header_map(headers: Vec<(String, String)>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (check_name(&name), check_value(&name, &value)) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub(crate) use mock::MockHeaders;

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
mod mock {
    use http::HeaderMap;

    use super::{check_name, check_value};
    use crate::HeaderError;

    /// Headers of a mock request or response, with the host's semantics.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct MockHeaders(pub(crate) HeaderMap);

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
            let (name, value) = (check_name(name)?, check_value(name, value)?);
            self.0.insert(name, value);
            Ok(())
        }

        pub(crate) fn append(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
            let (name, value) = (check_name(name)?, check_value(name, value)?);
            self.0.append(name, value);
            Ok(())
        }

        pub(crate) fn remove(&mut self, name: &str) {
            // An invalid name cannot be present: nothing to remove.
            if let Ok(name) = check_name(name) {
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
