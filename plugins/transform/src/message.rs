//! What the request and response have in common for this plugin: headers and a body.

use wasmgate_sdk::{HeaderError, Request, Response};

/// A request or response being transformed (the SDK gives both the same methods, but no common
/// trait).
pub(crate) trait Message {
    fn header(&self, name: &str) -> Option<String>;
    fn header_all(&self, name: &str) -> Vec<String>;
    fn edit_headers(&mut self, set: &[(&str, &str)], remove: &[&str]) -> Result<(), HeaderError>;
    fn append_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError>;
    fn body(&self) -> Option<Vec<u8>>;
    fn set_body(&mut self, body: Vec<u8>) -> Result<(), HeaderError>;
}

macro_rules! message {
    ($type:ty) => {
        impl Message for $type {
            fn header(&self, name: &str) -> Option<String> {
                <$type>::header(self, name)
            }

            fn header_all(&self, name: &str) -> Vec<String> {
                <$type>::header_all(self, name)
            }

            fn edit_headers(
                &mut self,
                set: &[(&str, &str)],
                remove: &[&str],
            ) -> Result<(), HeaderError> {
                <$type>::edit_headers(self, set, remove)
            }

            fn append_header(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
                <$type>::append_header(self, name, value)
            }

            fn body(&self) -> Option<Vec<u8>> {
                <$type>::body(self)
            }

            fn set_body(&mut self, body: Vec<u8>) -> Result<(), HeaderError> {
                <$type>::set_body(self, body)
            }
        }
    };
}

message!(Request<'_>);
message!(Response<'_>);
