//! What a plugin declares once, at bind time, so its hooks need fewer calls into the gateway:
//! the values it reads on every request ([`Inputs`]), and the header edits that never depend on
//! the request ([`FixedEdits`]).

use crate::HeaderError;
use crate::headers::{check_name, check_value};

/// What a plugin's hooks read on every call. The gateway hands these values over with each call,
/// so reading them costs no call into the gateway: [`Request::header`](crate::Request::header),
/// [`Context::get`](crate::Context::get) and the others answer from them. Anything not declared
/// still works, at one call into the gateway each.
///
/// Returned by [`Plugin::inputs`](crate::Plugin::inputs), once per instance after
/// [`Plugin::new`](crate::Plugin::new), so it may depend on the configuration:
///
/// ```
/// use wasmgate_sdk::Inputs;
///
/// let inputs = Inputs::new()
///     .request_header("x-api-key")
///     .context("consumer")
///     .client_ip();
/// # let _ = inputs;
/// ```
///
/// Declare only what the hooks read on (almost) every call: each declared value is copied into
/// the plugin on every call, whether read or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Inputs {
    pub(crate) request: Vec<Input>,
    pub(crate) response: Vec<Input>,
}

/// One declared input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    Header(String),
    Context(String),
    Method,
    PathWithQuery,
    Authority,
    ClientIp,
    Scheme,
    Status,
}

impl Inputs {
    /// Nothing declared: every read is a call into the gateway.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of request header `name`, for
    /// [`Request::header`](crate::Request::header) and
    /// [`Request::headers_get`](crate::Request::headers_get).
    pub fn request_header(mut self, name: &str) -> Self {
        push(&mut self.request, Input::Header(name.to_ascii_lowercase()));
        self
    }

    /// The first value of response header `name`, for
    /// [`Response::header`](crate::Response::header).
    pub fn response_header(mut self, name: &str) -> Self {
        push(&mut self.response, Input::Header(name.to_ascii_lowercase()));
        self
    }

    /// The context value of `key`, for [`Context::get`](crate::Context::get) in both hooks.
    pub fn context(mut self, key: &str) -> Self {
        push(&mut self.request, Input::Context(key.to_owned()));
        push(&mut self.response, Input::Context(key.to_owned()));
        self
    }

    /// The method, for [`Request::method`](crate::Request::method).
    pub fn method(mut self) -> Self {
        push(&mut self.request, Input::Method);
        self
    }

    /// The path and query, for [`Request::path`](crate::Request::path),
    /// [`Request::query`](crate::Request::query) and
    /// [`Request::path_with_query`](crate::Request::path_with_query).
    pub fn path(mut self) -> Self {
        push(&mut self.request, Input::PathWithQuery);
        self
    }

    /// The authority, for [`Request::authority`](crate::Request::authority).
    pub fn authority(mut self) -> Self {
        push(&mut self.request, Input::Authority);
        self
    }

    /// The client's IP address, for [`Request::client_ip`](crate::Request::client_ip).
    pub fn client_ip(mut self) -> Self {
        push(&mut self.request, Input::ClientIp);
        self
    }

    /// The scheme, for [`Request::scheme`](crate::Request::scheme).
    pub fn scheme(mut self) -> Self {
        push(&mut self.request, Input::Scheme);
        self
    }

    /// The response status, for [`Response::status`](crate::Response::status).
    pub fn status(mut self) -> Self {
        push(&mut self.response, Input::Status);
        self
    }
}

fn push(list: &mut Vec<Input>, input: Input) {
    if !list.contains(&input) {
        list.push(input);
    }
}

/// A header edit: what [`FixedEdits`] lists, and what a hook's edits become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replaces every value of the header with this one.
    Set {
        /// The header name, lowercase.
        name: String,
        /// The value.
        value: String,
    },
    /// Adds a value, keeping the existing ones.
    Append {
        /// The header name, lowercase.
        name: String,
        /// The value.
        value: String,
    },
    /// Removes every value of the header.
    Remove {
        /// The header name, lowercase.
        name: String,
    },
}

impl HeaderEdit {
    /// A checked `set`: the name must be a valid header name and the value a valid value.
    pub fn set(name: &str, value: &str) -> Result<Self, HeaderError> {
        check_name(name)?;
        check_value(name, value)?;
        Ok(Self::Set {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        })
    }

    /// A checked `append`.
    pub fn append(name: &str, value: &str) -> Result<Self, HeaderError> {
        check_name(name)?;
        check_value(name, value)?;
        Ok(Self::Append {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        })
    }

    /// A `remove`. An invalid name matches no header, so it removes nothing; it is kept so the
    /// gateway can say so.
    pub fn remove(name: &str) -> Self {
        Self::Remove {
            name: name.to_ascii_lowercase(),
        }
    }

    /// `set` for each pair of `set`, then `remove` for each name of `remove`, all checked
    /// before any is applied.
    pub(crate) fn batch(set: &[(&str, &str)], remove: &[&str]) -> Result<Vec<Self>, HeaderError> {
        let mut edits = set
            .iter()
            .map(|(name, value)| Self::set(name, value))
            .collect::<Result<Vec<_>, _>>()?;
        edits.extend(remove.iter().map(|name| Self::remove(name)));
        Ok(edits)
    }

    /// The header the edit is about.
    pub fn name(&self) -> &str {
        match self {
            Self::Set { name, .. } | Self::Append { name, .. } | Self::Remove { name } => name,
        }
    }
}

/// Header edits a plugin makes to every request and response whatever they contain, such as
/// fixed headers added or removed. The gateway applies them itself at the plugin's place in the
/// chain, with no call into the plugin: a plugin whose work is all fixed edits returns
/// [`Hooks::NONE`](crate::Hooks::NONE) from [`Plugin::hooks`](crate::Plugin::hooks) and costs
/// almost nothing per request.
///
/// Returned by [`Plugin::fixed_edits`](crate::Plugin::fixed_edits), once per instance after
/// [`Plugin::new`](crate::Plugin::new). Request edits are applied before the plugin's
/// `on_request` (if any) runs; response edits when the response passes the plugin on its way
/// back, before its `on_response` (if any).
///
/// ```
/// use wasmgate_sdk::FixedEdits;
///
/// let edits = FixedEdits::new()
///     .set_request_header("x-gateway", "wasmgate")?
///     .remove_request_header("cookie")
///     .set_response_header("x-served-by", "wasmgate")?;
/// # Ok::<(), wasmgate_sdk::HeaderError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct FixedEdits {
    pub(crate) request: Vec<HeaderEdit>,
    pub(crate) response: Vec<HeaderEdit>,
}

impl FixedEdits {
    /// No edits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }

    /// Sets request header `name` to `value`. Fails on an invalid name or value.
    pub fn set_request_header(mut self, name: &str, value: &str) -> Result<Self, HeaderError> {
        self.request.push(HeaderEdit::set(name, value)?);
        Ok(self)
    }

    /// Adds `value` to request header `name`. Fails on an invalid name or value.
    pub fn append_request_header(mut self, name: &str, value: &str) -> Result<Self, HeaderError> {
        self.request.push(HeaderEdit::append(name, value)?);
        Ok(self)
    }

    /// Removes request header `name`.
    pub fn remove_request_header(mut self, name: &str) -> Self {
        self.request.push(HeaderEdit::remove(name));
        self
    }

    /// Sets response header `name` to `value`. Fails on an invalid name or value.
    pub fn set_response_header(mut self, name: &str, value: &str) -> Result<Self, HeaderError> {
        self.response.push(HeaderEdit::set(name, value)?);
        Ok(self)
    }

    /// Adds `value` to response header `name`. Fails on an invalid name or value.
    pub fn append_response_header(mut self, name: &str, value: &str) -> Result<Self, HeaderError> {
        self.response.push(HeaderEdit::append(name, value)?);
        Ok(self)
    }

    /// Removes response header `name`.
    pub fn remove_response_header(mut self, name: &str) -> Self {
        self.response.push(HeaderEdit::remove(name));
        self
    }

    /// The request edits, in order.
    pub fn request(&self) -> &[HeaderEdit] {
        &self.request
    }

    /// The response edits, in order.
    pub fn response(&self) -> &[HeaderEdit] {
        &self.response
    }
}

/// The declared inputs of one instance, as the hooks look them up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Declared {
    pub(crate) inputs: Inputs,
}

impl Declared {
    /// The position of `input` in the request inputs.
    pub(crate) fn request(&self, input: &Input) -> Option<usize> {
        self.inputs.request.iter().position(|i| i == input)
    }

    /// The position of `input` in the response inputs.
    pub(crate) fn response(&self, input: &Input) -> Option<usize> {
        self.inputs.response.iter().position(|i| i == input)
    }

    /// The position of header `name` (any case) in the request inputs.
    pub(crate) fn request_header(&self, name: &str) -> Option<usize> {
        header_position(&self.inputs.request, name)
    }

    /// The position of header `name` (any case) in the response inputs.
    pub(crate) fn response_header(&self, name: &str) -> Option<usize> {
        header_position(&self.inputs.response, name)
    }
}

/// Declared names are lowercase; `name` may be in any case, and is compared without a copy.
fn header_position(list: &[Input], name: &str) -> Option<usize> {
    list.iter()
        .position(|input| matches!(input, Input::Header(h) if h.eq_ignore_ascii_case(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_lowercase_and_deduplicated() {
        let inputs = Inputs::new()
            .request_header("X-Api-Key")
            .request_header("x-api-key")
            .context("consumer")
            .status();
        assert_eq!(
            inputs.request,
            [
                Input::Header("x-api-key".into()),
                Input::Context("consumer".into())
            ]
        );
        assert_eq!(
            inputs.response,
            [Input::Context("consumer".into()), Input::Status]
        );
    }

    #[test]
    fn fixed_edits_are_checked() {
        assert!(FixedEdits::new().set_request_header("a b", "x").is_err());
        assert!(FixedEdits::new().set_response_header("x", "a\nb").is_err());
        let edits = FixedEdits::new()
            .set_request_header("X-A", "1")
            .unwrap()
            .remove_response_header("Server");
        assert_eq!(
            edits.request(),
            [HeaderEdit::Set {
                name: "x-a".into(),
                value: "1".into()
            }]
        );
        assert_eq!(edits.response()[0].name(), "server");
    }
}
