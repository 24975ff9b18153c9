//! Wasmgate plugin `key-auth`: authenticates requests by an API key sent in a header (and,
//! optionally, a query parameter), and names the consumer for the rest of the chain and the
//! upstream.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "key-auth"
//! config = { consumers = [{ name = "alice", keys = ["k-alice"] }, { name = "bob", keys = ["k-bob"] }] }
//! ```
//!
//! - A request whose key matches a consumer's goes on with the context key `consumer` and the
//!   upstream header `x-consumer` set to the consumer's name. The key is removed before the
//!   request goes upstream (`hide_credentials`, default `true`), and a client's own `x-consumer`
//!   never reaches the upstream.
//! - No key: `401` `{"error":"unauthorized","message":"missing API key"}`; a key that matches
//!   no consumer: `401` `{"error":"unauthorized","message":"invalid API key"}`.
//! - Keys are compared in constant time: the presented key's SHA-256 digest against every
//!   consumer's, without stopping at a match.
//!
//! See the crate's README for every key.

#![warn(missing_docs)]

mod keyring;
mod query;

use std::collections::BTreeMap;

use wasmgate_sdk::prelude::*;

use keyring::Keyring;

/// The context key holding the authenticated consumer's name, for the plugins after this one.
pub const CONSUMER_CONTEXT_KEY: &str = "consumer";

/// The upstream header that is never passed on from the client: it carries the consumer.
const DEFAULT_CONSUMER_HEADER: &str = "x-consumer";

/// The `config` table of a route's `key-auth` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The request header carrying the key. Default `"x-api-key"`.
    #[serde(default = "default_header")]
    pub header: String,
    /// A query parameter that may carry the key when the header is absent. Default: none.
    #[serde(default)]
    pub query: Option<String>,
    /// The consumers and their keys: `[{ name = "alice", keys = ["k-alice"] }]`.
    #[serde(default)]
    pub consumers: Option<Vec<ConsumerConfig>>,
    /// The legacy form, one key per consumer: consumer name → key. Not with `consumers`.
    #[serde(default)]
    pub keys: Option<BTreeMap<String, String>>,
    /// Remove the key (header and query parameter) before the request goes upstream. Default
    /// `true`.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// The upstream header set to the consumer's name; `""` sends none. Default `"x-consumer"`.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// The realm in the `WWW-Authenticate: Key realm="..."` header of a 401. Default
    /// `"wasmgate"`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

/// One entry of `consumers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer's name, for the context and the upstream header.
    pub name: String,
    /// Its keys; any of them authenticates it (several while one is being rotated).
    pub keys: Vec<String>,
}

/// `consumers`, or the legacy `keys`, as keyring entries labelled for errors.
fn consumer_entries(
    consumers: Option<Vec<ConsumerConfig>>,
    keys: Option<BTreeMap<String, String>>,
) -> Result<Vec<keyring::Entry>, ConfigError> {
    match (consumers, keys) {
        (Some(consumers), None) => Ok(consumers
            .into_iter()
            .enumerate()
            .map(|(i, c)| keyring::Entry {
                name: c.name,
                name_label: format!("consumers[{i}].name"),
                keys: c
                    .keys
                    .into_iter()
                    .enumerate()
                    .map(|(k, key)| (key, format!("consumers[{i}].keys[{k}]")))
                    .collect(),
            })
            .collect()),
        (None, Some(keys)) => Ok(keys
            .into_iter()
            .map(|(name, key)| keyring::Entry {
                name_label: "keys".to_owned(),
                keys: vec![(key, format!("keys.{name}"))],
                name,
            })
            .collect()),
        (Some(_), Some(_)) => Err(ConfigError::new(
            "give the consumers either as `consumers` or as the legacy `keys`, not both",
        )),
        (None, None) => Err(ConfigError::new(
            "missing `consumers`, e.g. consumers = [{ name = \"alice\", keys = [\"k-alice\"] }]",
        )),
    }
}

fn default_header() -> String {
    "x-api-key".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_consumer_header() -> String {
    DEFAULT_CONSUMER_HEADER.to_owned()
}

fn default_realm() -> String {
    "wasmgate".to_owned()
}

/// The plugin, with everything precomputed in [`Plugin::new`]: lowercase header names, key
/// digests, the header edits and the two rejections.
#[derive(Debug)]
pub struct KeyAuth {
    header: String,
    query: Option<String>,
    keyring: Keyring,
    hide_credentials: bool,
    consumer_header: Option<String>,
    /// Headers removed from an authenticated request.
    remove: Vec<String>,
    missing: Action,
    invalid: Action,
}

impl Plugin for KeyAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let header = header_name("header", &config.header)?;
        let query = match config.query {
            Some(q) if q.is_empty() => {
                return Err(ConfigError::new(
                    "query: empty parameter name (leave `query` out to accept the key in the \
                     header only)",
                ));
            }
            q => q,
        };
        let consumer_header = match config.consumer_header.as_str() {
            "" => None,
            name => Some(header_name("consumer_header", name)?),
        };
        if consumer_header.as_deref() == Some(header.as_str()) {
            return Err(ConfigError::new(format!(
                "consumer_header: {header:?} is also `header`, the header carrying the key"
            )));
        }
        check_realm(&config.realm)?;
        let keyring = Keyring::new(consumer_entries(config.consumers, config.keys)?)?;

        let mut remove = Vec::new();
        if config.hide_credentials {
            remove.push(header.clone());
        }
        // Set (which replaces the client's value) when it is the consumer header, removed
        // otherwise: either way a client cannot pass off its own x-consumer.
        if consumer_header.as_deref() != Some(DEFAULT_CONSUMER_HEADER) {
            remove.push(DEFAULT_CONSUMER_HEADER.to_owned());
        }
        let www_authenticate = format!("Key realm=\"{}\"", config.realm);
        Ok(Self {
            header,
            query,
            keyring,
            hide_credentials: config.hide_credentials,
            consumer_header,
            remove,
            missing: unauthorized(&www_authenticate, "missing API key"),
            invalid: unauthorized(&www_authenticate, "invalid API key"),
        })
    }

    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        let mut key = req.header(&self.header).filter(|k| !k.is_empty());
        let mut new_path = None;
        if let Some(param) = &self.query {
            // The query is read when it may hold the key, or when the key must be hidden from
            // the upstream wherever it was sent.
            if key.is_none() || self.hide_credentials {
                let path_with_query = req.path_with_query();
                if let Some((path, raw_query)) = path_with_query.split_once('?') {
                    let found = query::find(raw_query, param);
                    if key.is_none() {
                        key = found.value.filter(|k| !k.is_empty());
                    }
                    if self.hide_credentials {
                        new_path = found.without.map(|rest| match rest.as_str() {
                            "" => path.to_owned(),
                            rest => format!("{path}?{rest}"),
                        });
                    }
                }
            }
        }
        let Some(key) = key else {
            return Ok(self.missing.clone());
        };
        let Some(consumer) = self.keyring.find(key.as_bytes()) else {
            return Ok(self.invalid.clone());
        };

        ctx.set(CONSUMER_CONTEXT_KEY, consumer);
        let set: &[(&str, &str)] = match &self.consumer_header {
            Some(name) => &[(name, consumer)],
            None => &[],
        };
        let remove: Vec<&str> = self.remove.iter().map(String::as_str).collect();
        req.edit_headers(set, &remove)?;
        if let Some(path) = new_path {
            req.set_path_with_query(&path)?;
        }
        Ok(Action::Continue)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    /// The key's header comes with the call; the path too when the key may be in the query.
    fn inputs(&self) -> Inputs {
        let inputs = Inputs::new().request_header(&self.header);
        if self.query.is_some() {
            inputs.path()
        } else {
            inputs
        }
    }
}

wasmgate_sdk::export!(KeyAuth);

/// A valid header name for config key `key`, lowercased.
fn header_name(key: &str, name: &str) -> Result<String, ConfigError> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|n| n.as_str().to_owned())
        .map_err(|_| ConfigError::new(format!("{key}: {name:?} is not a valid header name")))
}

/// The realm is written inside a quoted string: no quote, backslash or control character.
fn check_realm(realm: &str) -> Result<(), ConfigError> {
    if realm
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        return Err(ConfigError::new(format!(
            "realm: {realm:?} may not contain quotes, backslashes or control characters"
        )));
    }
    Ok(())
}

fn unauthorized(www_authenticate: &str, message: &str) -> Action {
    Action::reject(401, "unauthorized", message).header("www-authenticate", www_authenticate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing;

    /// The issue's config, verbatim (as JSON).
    const ISSUE_CONFIG: &str =
        r#"{"header": "x-api-key", "keys": {"alice": "k-alice", "bob": "k-bob"}}"#;

    fn plugin(config: &str) -> KeyAuth {
        testing::instance::<KeyAuth>(config).expect("valid config")
    }

    fn config_error(config: &str) -> String {
        testing::instance::<KeyAuth>(config)
            .expect_err("refused")
            .message()
            .to_owned()
    }

    fn rejection(action: &Action) -> (u16, String) {
        let reply = action.reply().expect("a rejection");
        assert!(
            reply.error().is_some(),
            "a rejection in the gateway's error format"
        );
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Key realm=\"wasmgate\"")
        );
        let body: serde_json::Value = serde_json::from_slice(reply.body()).expect("json");
        assert_eq!(body["error"], "unauthorized");
        (
            reply.status(),
            body["message"].as_str().unwrap_or_default().to_owned(),
        )
    }

    #[test]
    fn rejects_a_request_without_a_key() {
        let mut req = Request::builder().uri("/x").build();
        let action = plugin(ISSUE_CONFIG)
            .on_request(&mut req, &Context::new())
            .unwrap();
        assert_eq!(rejection(&action), (401, "missing API key".to_owned()));

        let mut empty = Request::builder().header("x-api-key", "").build();
        let action = plugin(ISSUE_CONFIG)
            .on_request(&mut empty, &Context::new())
            .unwrap();
        assert_eq!(rejection(&action), (401, "missing API key".to_owned()));
    }

    #[test]
    fn rejects_a_wrong_key() {
        let ctx = Context::new();
        for wrong in ["k-carol", "k-alice ", "K-ALICE", "k-alic"] {
            let mut req = Request::builder().header("x-api-key", wrong).build();
            let action = plugin(ISSUE_CONFIG).on_request(&mut req, &ctx).unwrap();
            assert_eq!(
                rejection(&action),
                (401, "invalid API key".to_owned()),
                "{wrong}"
            );
        }
        assert!(ctx.get("consumer").is_none());
    }

    #[test]
    fn accepts_each_consumers_key_and_names_the_consumer() {
        for (key, consumer) in [("k-alice", "alice"), ("k-bob", "bob")] {
            let ctx = Context::new();
            let mut req = Request::builder().header("X-Api-Key", key).build();
            assert!(
                plugin(ISSUE_CONFIG)
                    .on_request(&mut req, &ctx)
                    .unwrap()
                    .is_continue()
            );
            assert_eq!(ctx.get("consumer").as_deref(), Some(consumer));
            assert_eq!(req.header("x-consumer").as_deref(), Some(consumer));
        }
    }

    #[test]
    fn hides_the_key_and_replaces_a_spoofed_consumer_header() {
        let mut req = Request::builder()
            .header("x-api-key", "k-bob")
            .header("x-consumer", "alice")
            .header("x-consumer", "root")
            .build();
        plugin(ISSUE_CONFIG)
            .on_request(&mut req, &Context::new())
            .unwrap();
        assert_eq!(req.header("x-api-key"), None);
        assert_eq!(req.header_all("x-consumer"), vec!["bob".to_owned()]);
    }

    #[test]
    fn keeps_the_key_when_hide_credentials_is_off() {
        let p = plugin(r#"{"keys": {"alice": "k-alice"}, "hide_credentials": false}"#);
        let mut req = Request::builder().header("x-api-key", "k-alice").build();
        p.on_request(&mut req, &Context::new()).unwrap();
        assert_eq!(req.header("x-api-key").as_deref(), Some("k-alice"));
    }

    #[test]
    fn the_header_defaults_to_x_api_key_and_can_be_renamed() {
        let p = plugin(r#"{"keys": {"alice": "k-alice"}}"#);
        let mut req = Request::builder().header("x-api-key", "k-alice").build();
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );

        let p = plugin(r#"{"header": "Api-Token", "keys": {"alice": "k-alice"}}"#);
        let mut req = Request::builder().header("api-token", "k-alice").build();
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
        assert_eq!(req.header("api-token"), None);
        let mut req = Request::builder().header("x-api-key", "k-alice").build();
        assert!(
            !p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
    }

    #[test]
    fn accepts_the_key_in_the_query_and_removes_only_that_parameter() {
        let p = plugin(r#"{"keys": {"alice": "k-alice"}, "query": "apikey"}"#);
        let ctx = Context::new();
        let mut req = Request::builder()
            .uri("/v1/items?a=1&apikey=k%2Dalice&b=%7E+x")
            .build();
        assert!(p.on_request(&mut req, &ctx).unwrap().is_continue());
        assert_eq!(ctx.get("consumer").as_deref(), Some("alice"));
        assert_eq!(req.path_with_query(), "/v1/items?a=1&b=%7E+x");

        let mut req = Request::builder().uri("/v1/items?apikey=k-alice").build();
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
        assert_eq!(req.path_with_query(), "/v1/items");
    }

    #[test]
    fn a_wrong_query_key_is_invalid_and_another_parameter_is_no_key() {
        let p = plugin(r#"{"keys": {"alice": "k-alice"}, "query": "apikey"}"#);
        let mut req = Request::builder().uri("/x?apikey=nope").build();
        let action = p.on_request(&mut req, &Context::new()).unwrap();
        assert_eq!(rejection(&action), (401, "invalid API key".to_owned()));
        let mut req = Request::builder().uri("/x?other=k-alice").build();
        let action = p.on_request(&mut req, &Context::new()).unwrap();
        assert_eq!(rejection(&action), (401, "missing API key".to_owned()));
    }

    #[test]
    fn the_header_wins_over_the_query_and_both_are_hidden() {
        let p = plugin(r#"{"keys": {"alice": "k-alice", "bob": "k-bob"}, "query": "apikey"}"#);
        let ctx = Context::new();
        let mut req = Request::builder()
            .uri("/x?apikey=k-bob&keep=1")
            .header("x-api-key", "k-alice")
            .build();
        assert!(p.on_request(&mut req, &ctx).unwrap().is_continue());
        assert_eq!(ctx.get("consumer").as_deref(), Some("alice"));
        assert_eq!(req.header("x-api-key"), None);
        assert_eq!(req.path_with_query(), "/x?keep=1");
    }

    #[test]
    fn the_query_is_kept_when_hide_credentials_is_off() {
        let p = plugin(
            r#"{"keys": {"alice": "k-alice"}, "query": "apikey", "hide_credentials": false}"#,
        );
        let mut req = Request::builder().uri("/x?apikey=k-alice").build();
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
        assert_eq!(req.path_with_query(), "/x?apikey=k-alice");
    }

    #[test]
    fn the_consumer_header_can_be_renamed_or_turned_off_and_x_consumer_is_always_stripped() {
        let p = plugin(r#"{"keys": {"alice": "k-alice"}, "consumer_header": "X-User"}"#);
        let mut req = Request::builder()
            .header("x-api-key", "k-alice")
            .header("x-consumer", "root")
            .build();
        p.on_request(&mut req, &Context::new()).unwrap();
        assert_eq!(req.header("x-user").as_deref(), Some("alice"));
        assert_eq!(req.header("x-consumer"), None);

        let p = plugin(r#"{"keys": {"alice": "k-alice"}, "consumer_header": ""}"#);
        let ctx = Context::new();
        let mut req = Request::builder()
            .header("x-api-key", "k-alice")
            .header("x-consumer", "root")
            .build();
        p.on_request(&mut req, &ctx).unwrap();
        assert_eq!(req.header("x-consumer"), None);
        assert_eq!(ctx.get("consumer").as_deref(), Some("alice"));
    }

    #[test]
    fn the_realm_is_configurable() {
        let p = plugin(r#"{"keys": {"alice": "k-alice"}, "realm": "payments"}"#);
        let mut req = Request::builder().build();
        let action = p.on_request(&mut req, &Context::new()).unwrap();
        let reply = action.reply().unwrap();
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Key realm=\"payments\"")
        );
    }

    #[test]
    fn refuses_bad_config_values_naming_the_key() {
        let keys = r#""keys": {"alice": "k-alice"}"#;
        let err = config_error(&format!(r#"{{"header": "x api key", {keys}}}"#));
        assert_eq!(err, r#"header: "x api key" is not a valid header name"#);
        let err = config_error(&format!(r#"{{"consumer_header": "a:b", {keys}}}"#));
        assert_eq!(err, r#"consumer_header: "a:b" is not a valid header name"#);
        let err = config_error(&format!(r#"{{"consumer_header": "X-Api-Key", {keys}}}"#));
        assert!(
            err.starts_with("consumer_header: \"x-api-key\" is also `header`"),
            "{err}"
        );
        let err = config_error(&format!(r#"{{"query": "", {keys}}}"#));
        assert!(err.starts_with("query: empty parameter name"), "{err}");
        let err = config_error(&format!(r#"{{"realm": "a\"b", {keys}}}"#));
        assert!(err.starts_with("realm:"), "{err}");
        let err = config_error(&format!(r#"{{"hide": true, {keys}}}"#));
        assert!(err.contains("unknown field `hide`"), "{err}");
        let err = config_error(r#"{"header": "x-api-key"}"#);
        assert!(err.starts_with("missing `consumers`"), "{err}");
        let err = config_error(
            r#"{"keys": {"alice": "k"}, "consumers": [{"name": "bob", "keys": ["b"]}]}"#,
        );
        assert!(err.contains("not both"), "{err}");
        let err = config_error(r#"{"consumers": [{"name": "bob", "key": "b"}]}"#);
        assert!(err.contains("unknown field `key`"), "{err}");
        let err = config_error(
            r#"{"consumers": [{"name": "a", "keys": ["k1"]}, {"name": "b", "keys": ["k2", "k1"]}]}"#,
        );
        assert_eq!(
            err,
            "consumers[1].keys[1]: the same key as consumers[0].keys[0]: a key may belong to one consumer only, once"
        );
        let err = config_error(r#"{"keys": {"alice": "k", "bob": "k"}}"#);
        assert!(
            err.contains("keys.bob: the same key as keys.alice"),
            "{err}"
        );
        let err = config_error(r#"{"keys": {"alice": ""}}"#);
        assert_eq!(err, "keys.alice: the key is empty");
    }

    #[test]
    fn consumers_may_have_several_keys_and_the_legacy_table_still_works() {
        let p = plugin(
            r#"{"consumers": [{"name": "alice", "keys": ["k-alice"]}, {"name": "bob", "keys": ["k-bob", "k-bob-new"]}]}"#,
        );
        for (key, consumer) in [("k-alice", "alice"), ("k-bob", "bob"), ("k-bob-new", "bob")] {
            let mut req = Request::builder()
                .uri("/x")
                .header("x-api-key", key)
                .build();
            let ctx = Context::new();
            assert_eq!(p.on_request(&mut req, &ctx).unwrap(), Action::Continue);
            assert_eq!(ctx.get(CONSUMER_CONTEXT_KEY).as_deref(), Some(consumer));
        }
        let legacy = plugin(ISSUE_CONFIG);
        let mut req = Request::builder()
            .uri("/x")
            .header("x-api-key", "k-bob")
            .build();
        let ctx = Context::new();
        assert_eq!(legacy.on_request(&mut req, &ctx).unwrap(), Action::Continue);
        assert_eq!(ctx.get(CONSUMER_CONTEXT_KEY).as_deref(), Some("bob"));
    }

    #[test]
    fn only_the_request_hook_is_called() {
        assert_eq!(plugin(ISSUE_CONFIG).hooks(), Hooks::REQUEST);
    }
}
