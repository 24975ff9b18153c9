//! `transform`: a Wasmgate plugin that edits requests on their way upstream (headers, path,
//! query, JSON body) and responses on their way back (headers, JSON body).
//!
//! ```toml
//! [[routes.plugins]]
//! name = "transform"
//! config = { request = { set_headers = { x-source = "gateway" }, remove_headers = ["x-debug"],
//!            rewrite_path = { pattern = "^/old/(.*)$", replacement = "/new/$1" } },
//!            response = { set_headers = { x-served-by = "wasmgate" } } }
//! ```
//!
//! Everything is checked and compiled once, in [`Plugin::new`]: header names and values, the
//! path pattern, the replacement's group references, the query and JSON fragments. The plugin
//! declares only the hooks its config uses, and asks the gateway for bodies only when a
//! `json_body` section is configured. See the README for every key and the order of edits.

use std::borrow::Cow;
use std::collections::BTreeMap;

use wasmgate_sdk::prelude::*;

mod header_edits;
mod json_body;
mod message;
mod path_rewrite;
mod query_edits;

use header_edits::{HeaderEdits, HeaderLists};
use json_body::JsonEdits;
use message::Message;
use path_rewrite::PathRewrite;
use query_edits::QueryEdits;

/// The route entry's `config` table: what to change in each direction. Both optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Edits of the request sent upstream.
    pub request: RequestConfig,
    /// Edits of the response sent to the client.
    pub response: ResponseConfig,
}

/// `request = { ... }`. Every key is optional. Applied in this order: `remove_headers`,
/// `rename_headers`, `set_headers`, `add_headers`, then `rewrite_path`, `remove_query` and
/// `set_query`, then `json_body`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestConfig {
    /// Header → value; replaces every value of the header.
    pub set_headers: BTreeMap<String, String>,
    /// Header → value; appended, keeping existing values.
    pub add_headers: BTreeMap<String, String>,
    /// Headers removed.
    pub remove_headers: Vec<String>,
    /// Old name → new name; the new header gets every value of the old one (replacing its own).
    pub rename_headers: BTreeMap<String, String>,
    /// A regular expression on the path and its replacement.
    pub rewrite_path: Option<RewritePathConfig>,
    /// Query parameter → value; replaces every occurrence, appended at the end.
    pub set_query: BTreeMap<String, String>,
    /// Query parameters removed (every occurrence).
    pub remove_query: Vec<String>,
    /// Edits of a JSON object body.
    pub json_body: Option<JsonBodyConfig>,
}

/// `response = { ... }`. Every key is optional. Applied in this order: `remove_headers`,
/// `set_headers`, `add_headers`, then `json_body`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Header → value; replaces every value of the header.
    pub set_headers: BTreeMap<String, String>,
    /// Header → value; appended, keeping existing values.
    pub add_headers: BTreeMap<String, String>,
    /// Headers removed.
    pub remove_headers: Vec<String>,
    /// Edits of a JSON object body.
    pub json_body: Option<JsonBodyConfig>,
}

/// `rewrite_path = { pattern = "^/old/(.*)$", replacement = "/new/$1" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewritePathConfig {
    /// A regular expression (Rust `regex` syntax) matched against the path, without the query.
    pub pattern: String,
    /// What the first match is replaced with: `$1`, `${1}` and `${name}` insert groups, `$$` is
    /// a `$`. Must start with `/`.
    pub replacement: String,
}

/// `json_body = { set = { ... }, remove = [ ... ] }`: top-level members of a JSON object body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonBodyConfig {
    /// Key → any JSON value (a TOML string, number, boolean, array or table).
    pub set: BTreeMap<String, serde_json::Value>,
    /// Keys removed.
    pub remove: Vec<String>,
}

/// The plugin, built once per instance from a [`Config`].
#[derive(Debug)]
pub struct Transform {
    /// Header edits that depend on nothing in the message, applied by the gateway itself.
    fixed: FixedEdits,
    /// The request's header edits when they read the request (a rename), else empty: they are
    /// then in `fixed`.
    request_headers: HeaderEdits,
    rewrite: Option<PathRewrite>,
    query: QueryEdits,
    request_json: Option<JsonEdits>,
    response_json: Option<JsonEdits>,
}

impl Plugin for Transform {
    /// Taken as JSON and read into [`Config`] in [`Plugin::new`], so that a type error names the
    /// key path (`request.set_headers.x-a: invalid type ...`).
    type Config = serde_json::Value;

    fn new(config: serde_json::Value) -> Result<Self, ConfigError> {
        let Config { request, response } = wasmgate_sdk::config::read(config)?;
        let json = |key: &str, body: Option<JsonBodyConfig>| {
            body.map(|b| JsonEdits::new(key, b.set, b.remove))
                .transpose()
        };
        let request_headers = HeaderEdits::new(
            "request",
            HeaderLists {
                remove: request.remove_headers,
                rename: request.rename_headers,
                set: request.set_headers,
                add: request.add_headers,
            },
        )?;
        let response_headers = HeaderEdits::new(
            "response",
            HeaderLists {
                remove: response.remove_headers,
                set: response.set_headers,
                add: response.add_headers,
                ..HeaderLists::default()
            },
        )?;
        // Checked above, so these edits are valid.
        let invalid = |e: wasmgate_sdk::HeaderError| ConfigError::new(e.message().to_owned());
        let mut fixed = FixedEdits::new();
        let request_headers = match request_headers
            .fixed(fixed.clone(), true)
            .map_err(invalid)?
        {
            Some(with_request) => {
                fixed = with_request;
                HeaderEdits::default()
            }
            None => request_headers,
        };
        let fixed = response_headers
            .fixed(fixed, false)
            .map_err(invalid)?
            .unwrap_or_default();
        Ok(Self {
            fixed,
            request_headers,
            rewrite: request
                .rewrite_path
                .map(|r| PathRewrite::new(&r.pattern, r.replacement))
                .transpose()?,
            query: QueryEdits::new(&request.set_query, &request.remove_query)?,
            request_json: json("request.json_body", request.json_body)?,
            response_json: json("response.json_body", response.json_body)?,
        })
    }

    fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::NONE;
        if !self.request_headers.is_empty()
            || self.rewrite.is_some()
            || !self.query.is_empty()
            || self.request_json.is_some()
        {
            hooks |= Hooks::REQUEST;
        }
        if self.response_json.is_some() {
            hooks |= Hooks::RESPONSE;
        }
        hooks
    }

    /// Header edits that read nothing (every set, add and remove; renames read the message),
    /// which the gateway applies itself: a transform of fixed headers is never called.
    fn fixed_edits(&self) -> FixedEdits {
        self.fixed.clone()
    }

    /// Only with a `json_body` section. The gateway then buffers bodies on the route in both
    /// directions, up to the route's `max_body`.
    fn needs_body(&self) -> bool {
        self.request_json.is_some() || self.response_json.is_some()
    }

    fn on_request(&self, req: &mut Request<'_>, _ctx: &Context) -> Result<Action, Error> {
        self.request_headers.apply(req)?;
        if self.rewrite.is_some() || !self.query.is_empty() {
            self.rewrite_target(req)?;
        }
        if let Some(edits) = &self.request_json {
            edit_json_body(req, edits)?;
        }
        Ok(Action::Continue)
    }

    fn on_response(&self, resp: &mut Response<'_>, _ctx: &Context) -> Result<Action, Error> {
        if let Some(edits) = &self.response_json {
            edit_json_body(resp, edits)?;
        }
        Ok(Action::Continue)
    }
}

impl Transform {
    /// Path rewrite and query edits: one read, and one write when anything changed.
    fn rewrite_target(&self, req: &mut Request<'_>) -> Result<(), Error> {
        let target = req.path_with_query();
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target.as_str(), None),
        };
        let new_path = self
            .rewrite
            .as_ref()
            .map_or(Cow::Borrowed(path), |rewrite| rewrite.apply(path));
        let new_query = self.query.apply(query);
        if matches!(new_path, Cow::Borrowed(_)) && new_query.is_none() {
            return Ok(());
        }
        let query = new_query.as_deref().or(query).unwrap_or_default();
        let mut new_target = new_path.into_owned();
        if !query.is_empty() {
            new_target.push('?');
            new_target.push_str(query);
        }
        req.set_path_with_query(&new_target)?;
        Ok(())
    }
}

/// Applies `edits` to a JSON body; anything else (another content type, no body, a body over
/// the route's `max_body`, not a JSON object) passes untouched.
fn edit_json_body(message: &mut impl Message, edits: &JsonEdits) -> Result<(), Error> {
    let Some(content_type) = message.header("content-type") else {
        return Ok(());
    };
    if !json_body::is_json(&content_type) {
        return Ok(());
    }
    let Some(body) = message.body() else {
        return Ok(());
    };
    if let Some(edited) = edits.apply(&body) {
        message.set_body(edited)?;
    }
    Ok(())
}

wasmgate_sdk::export!(Transform);

#[cfg(test)]
mod tests;
