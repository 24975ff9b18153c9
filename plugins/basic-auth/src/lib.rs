//! Wasmgate plugin `basic-auth`: HTTP Basic authentication (RFC 7617) against bcrypt hashes (as
//! `htpasswd -B` writes them) and argon2id hashes.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "basic-auth"
//! config = { users = { alice = "$2y$05$0NAnEwSUVwof26Q5zGUcjeGkx94IA6nLxytXastzZySWZrrv0SJ7C" } }
//! ```
//!
//! - Good credentials: the request goes on with the context key `consumer` and the upstream
//!   header `x-consumer` set to the user name; `Authorization` is removed before the request goes
//!   upstream (`hide_credentials`, default `true`), and a client's own `x-consumer` never reaches
//!   the upstream.
//! - Otherwise: `401` with `WWW-Authenticate: Basic realm="wasmgate", charset="UTF-8"` and a JSON
//!   body.
//! - Password hashing is slow on purpose; successful verifications are cached in the instance so
//!   that repeated requests skip it. See the crate's README for costs and timeouts.

#![warn(missing_docs)]

mod cache;
mod credentials;
mod users;

use std::collections::BTreeMap;

use wasmgate_sdk::prelude::*;

use cache::VerifiedCache;
use credentials::Parsed;
use users::Users;

/// The context key holding the authenticated user's name, for the plugins after this one.
pub const CONSUMER_CONTEXT_KEY: &str = "consumer";

/// The upstream header that is never passed on from the client: it carries the consumer.
const DEFAULT_CONSUMER_HEADER: &str = "x-consumer";

/// The `config` table of a route's `basic-auth` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// User name → password hash (bcrypt `$2a$`/`$2b$`/`$2y$` or `$argon2id$`).
    pub users: BTreeMap<String, String>,
    /// The realm in `WWW-Authenticate`. Default `"wasmgate"`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove `Authorization` before the request goes upstream. Default `true`.
    #[serde(default = "default_true")]
    pub hide_credentials: bool,
    /// The upstream header set to the user name; `""` sends none. Default `"x-consumer"`.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// How many verified credentials each instance remembers; `0` turns the cache off. Default
    /// `1024`.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
}

fn default_realm() -> String {
    "wasmgate".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_consumer_header() -> String {
    DEFAULT_CONSUMER_HEADER.to_owned()
}

fn default_cache_size() -> usize {
    1024
}

/// The plugin: parsed hashes, the verified-credentials cache and the ready-made rejections.
#[derive(Debug)]
pub struct BasicAuth {
    users: Users,
    cache: VerifiedCache,
    consumer_header: Option<String>,
    /// Headers removed from an authenticated request.
    remove: Vec<&'static str>,
    missing: Action,
    malformed: Action,
    invalid: Action,
}

impl Plugin for BasicAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        check_realm(&config.realm)?;
        let consumer_header = match config.consumer_header.as_str() {
            "" => None,
            name => Some(
                http::HeaderName::from_bytes(name.as_bytes())
                    .map(|n| n.as_str().to_owned())
                    .map_err(|_| {
                        ConfigError::new(format!(
                            "consumer_header: {name:?} is not a valid header name"
                        ))
                    })?,
            ),
        };
        if consumer_header.as_deref() == Some("authorization") {
            return Err(ConfigError::new(
                "consumer_header: \"authorization\" is the header carrying the credentials",
            ));
        }
        let users = Users::new(config.users)?;
        reserve_argon2_memory(&users)?;

        let mut remove = Vec::new();
        if config.hide_credentials {
            remove.push("authorization");
        }
        // Set (which replaces the client's value) when it is the consumer header, removed
        // otherwise: either way a client cannot pass off its own x-consumer.
        if consumer_header.as_deref() != Some(DEFAULT_CONSUMER_HEADER) {
            remove.push(DEFAULT_CONSUMER_HEADER);
        }
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm);
        Ok(Self {
            users,
            cache: VerifiedCache::new(config.cache_size),
            consumer_header,
            remove,
            missing: unauthorized(&challenge, "missing Basic credentials"),
            malformed: unauthorized(&challenge, "malformed Basic credentials"),
            invalid: unauthorized(&challenge, "invalid credentials"),
        })
    }

    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        let Some(authorization) = req.header("authorization") else {
            return Ok(self.missing.clone());
        };
        let credentials = match credentials::parse(&authorization) {
            Parsed::Basic(credentials) => credentials,
            Parsed::OtherScheme => return Ok(self.missing.clone()),
            Parsed::Malformed => return Ok(self.malformed.clone()),
        };
        if !self.verify(&credentials.user, &credentials.password)? {
            return Ok(self.invalid.clone());
        }
        let user = credentials.user.as_str();
        ctx.set(CONSUMER_CONTEXT_KEY, user);
        let set: &[(&str, &str)] = match &self.consumer_header {
            Some(name) => &[(name, user)],
            None => &[],
        };
        req.edit_headers(set, &self.remove)?;
        Ok(Action::Continue)
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    /// The `Authorization` header comes with the call.
    fn inputs(&self) -> Inputs {
        Inputs::new().request_header("authorization")
    }
}

impl BasicAuth {
    /// Whether `password` is `user`'s, from the cache or by running the hash.
    fn verify(&self, user: &str, password: &[u8]) -> Result<bool, Error> {
        let Some(hash) = self.users.get(user) else {
            // An unknown user costs as much as a wrong password, so response times do not tell
            // which user names exist.
            if let Some(decoy) = self.users.decoy() {
                decoy.verify(password)?;
            }
            return Ok(false);
        };
        let key = cache::key(user, password);
        if self.cache.contains(&key) {
            return Ok(true);
        }
        let verified = hash.verify(password)?;
        if verified {
            self.cache.insert(key);
        }
        Ok(verified)
    }
}

wasmgate_sdk::export!(BasicAuth);

/// Argon2 needs `m` KiB per verification. Growing the instance's memory that far once, here,
/// turns a `memory` limit that is too small into a config error instead of an out-of-memory trap
/// on the first request; the memory stays with the instance and is reused by every verification.
fn reserve_argon2_memory(users: &Users) -> Result<(), ConfigError> {
    let Some((user, kib)) = users.largest_argon2_memory() else {
        return Ok(());
    };
    // One block is 1 KiB; 1024 more leave room for everything else a request allocates.
    let blocks = usize::try_from(kib)
        .unwrap_or(usize::MAX)
        .saturating_add(1024);
    let mut probe: Vec<argon2::Block> = Vec::new();
    probe.try_reserve_exact(blocks).map_err(|_| {
        ConfigError::new(format!(
            "users.{user}: the argon2id hash needs m={kib} KiB of memory per verification, more \
             than this plugin may use: raise `memory` on the plugin entry (to at least {} MiB) or \
             use a hash with a smaller m",
            kib / 1024 + 2 + 1
        ))
    })
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

fn unauthorized(challenge: &str, message: &str) -> Action {
    Action::reject(401, "unauthorized", message).header("www-authenticate", challenge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing;

    /// `htpasswd -nbB alice 's3cret!pass'` (Apache htpasswd 2.4, cost 5).
    pub(crate) const HTPASSWD_ALICE: &str =
        "$2y$05$0NAnEwSUVwof26Q5zGUcjeGkx94IA6nLxytXastzZySWZrrv0SJ7C";
    /// `echo -n 'correct horse' | argon2 wasmgatesalt16b -id -t 2 -m 12 -p 1 -e` (the reference
    /// implementation's command line).
    pub(crate) const ARGON2ID_CAROL: &str = "$argon2id$v=19$m=4096,t=2,p=1$d2FzbWdhdGVzYWx0MTZi$JWXh8tiGAYJzt3HVAcjxrtfmqgCo3NZ3wqbfQuD8D9Q";

    fn config() -> String {
        format!(r#"{{"users": {{"alice": "{HTPASSWD_ALICE}", "carol": "{ARGON2ID_CAROL}"}}}}"#)
    }

    fn plugin() -> BasicAuth {
        testing::instance::<BasicAuth>(&config()).expect("valid config")
    }

    fn config_error(config: &str) -> String {
        testing::instance::<BasicAuth>(config)
            .expect_err("refused")
            .message()
            .to_owned()
    }

    fn authorization(user: &str, password: &str) -> String {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    }

    fn request(authorization: Option<&str>) -> Request<'static> {
        let mut b = Request::builder().uri("/x").header("x-consumer", "root");
        if let Some(a) = authorization {
            b = b.header("authorization", a);
        }
        b.build()
    }

    /// Status, WWW-Authenticate and JSON message of a rejection.
    fn rejection(action: &Action) -> (u16, String, String) {
        let reply = action.reply().expect("a rejection");
        assert!(
            reply.error().is_some(),
            "a rejection in the gateway's error format"
        );
        let body: serde_json::Value = serde_json::from_slice(reply.body()).expect("json");
        assert_eq!(body["error"], "unauthorized");
        (
            reply.status(),
            reply
                .header("www-authenticate")
                .unwrap_or_default()
                .to_owned(),
            body["message"].as_str().unwrap_or_default().to_owned(),
        )
    }

    const CHALLENGE: &str = "Basic realm=\"wasmgate\", charset=\"UTF-8\"";

    #[test]
    fn accepts_an_htpasswd_bcrypt_user_and_names_the_consumer() {
        let ctx = Context::new();
        let mut req = request(Some(&authorization("alice", "s3cret!pass")));
        assert!(plugin().on_request(&mut req, &ctx).unwrap().is_continue());
        assert_eq!(ctx.get("consumer").as_deref(), Some("alice"));
        assert_eq!(req.header_all("x-consumer"), vec!["alice".to_owned()]);
        assert_eq!(req.header("authorization"), None, "hidden by default");
    }

    #[test]
    fn accepts_an_argon2id_user() {
        let ctx = Context::new();
        let mut req = request(Some(&authorization("carol", "correct horse")));
        assert!(plugin().on_request(&mut req, &ctx).unwrap().is_continue());
        assert_eq!(ctx.get("consumer").as_deref(), Some("carol"));
    }

    #[test]
    fn rejects_a_wrong_password_and_an_unknown_user_alike() {
        for (user, password) in [
            ("alice", "s3cret!pas"),
            ("carol", "wrong"),
            ("mallory", "s3cret!pass"),
        ] {
            let ctx = Context::new();
            let mut req = request(Some(&authorization(user, password)));
            let action = plugin().on_request(&mut req, &ctx).unwrap();
            let expected = (401, CHALLENGE.to_owned(), "invalid credentials".to_owned());
            assert_eq!(rejection(&action), expected, "{user}");
            assert!(ctx.get("consumer").is_none());
        }
    }

    #[test]
    fn rejects_missing_and_other_scheme_credentials_with_a_challenge() {
        for auth in [None, Some("Bearer abc")] {
            let mut req = request(auth);
            let action = plugin().on_request(&mut req, &Context::new()).unwrap();
            let expected = (
                401,
                CHALLENGE.to_owned(),
                "missing Basic credentials".to_owned(),
            );
            assert_eq!(rejection(&action), expected, "{auth:?}");
        }
    }

    #[test]
    fn rejects_malformed_credentials_with_401_not_400() {
        for auth in ["Basic", "Basic ****", "Basic YWxpY2U=", "Basic /zp4"] {
            let mut req = request(Some(auth));
            let action = plugin().on_request(&mut req, &Context::new()).unwrap();
            let expected = (
                401,
                CHALLENGE.to_owned(),
                "malformed Basic credentials".to_owned(),
            );
            assert_eq!(rejection(&action), expected, "{auth}");
        }
    }

    #[test]
    fn remembers_verified_credentials_but_not_failures() {
        let p = plugin();
        let mut req = request(Some(&authorization("alice", "s3cret!pass")));
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
        assert!(p.cache.contains(&cache::key("alice", b"s3cret!pass")));
        let mut req = request(Some(&authorization("alice", "nope")));
        assert!(
            !p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
        assert_eq!(p.cache.len(), 1);
        // Served from the cache, and still the same answer.
        let mut req = request(Some(&authorization("alice", "s3cret!pass")));
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
    }

    #[test]
    fn a_zero_cache_size_verifies_every_time() {
        let p = testing::instance::<BasicAuth>(&format!(
            r#"{{"users": {{"alice": "{HTPASSWD_ALICE}"}}, "cache_size": 0}}"#
        ))
        .unwrap();
        let mut req = request(Some(&authorization("alice", "s3cret!pass")));
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
        assert_eq!(p.cache.len(), 0);
    }

    #[test]
    fn options_change_realm_hiding_and_the_consumer_header() {
        let p = testing::instance::<BasicAuth>(&format!(
            r#"{{"users": {{"alice": "{HTPASSWD_ALICE}"}}, "realm": "internal",
                "hide_credentials": false, "consumer_header": "X-User"}}"#
        ))
        .unwrap();
        let auth = authorization("alice", "s3cret!pass");
        let mut req = request(Some(&auth));
        assert!(
            p.on_request(&mut req, &Context::new())
                .unwrap()
                .is_continue()
        );
        assert_eq!(req.header("authorization").as_deref(), Some(auth.as_str()));
        assert_eq!(req.header("x-user").as_deref(), Some("alice"));
        assert_eq!(
            req.header("x-consumer"),
            None,
            "a client's x-consumer is still stripped"
        );

        let mut req = request(None);
        let action = p.on_request(&mut req, &Context::new()).unwrap();
        assert_eq!(
            rejection(&action).1,
            "Basic realm=\"internal\", charset=\"UTF-8\""
        );

        let p = testing::instance::<BasicAuth>(&format!(
            r#"{{"users": {{"alice": "{HTPASSWD_ALICE}"}}, "consumer_header": ""}}"#
        ))
        .unwrap();
        let ctx = Context::new();
        let mut req = request(Some(&authorization("alice", "s3cret!pass")));
        assert!(p.on_request(&mut req, &ctx).unwrap().is_continue());
        assert_eq!(req.header("x-consumer"), None);
        assert_eq!(ctx.get("consumer").as_deref(), Some("alice"));
    }

    #[test]
    fn refuses_bad_config_values_naming_the_key() {
        let err = config_error(r#"{"users": {"dave": "{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI="}}"#);
        assert!(
            err.starts_with("users.dave: unsupported hash format: SHA-1"),
            "{err}"
        );
        let err = config_error(r#"{"users": {"dave": "plain-password"}}"#);
        assert!(
            err.starts_with("users.dave: unsupported hash format"),
            "{err}"
        );
        assert!(!err.contains("plain-password"), "{err}");
        let err = config_error(&format!(
            r#"{{"users": {{"alice": "{HTPASSWD_ALICE}"}}, "realm": "a\"b"}}"#
        ));
        assert!(err.starts_with("realm:"), "{err}");
        let err = config_error(&format!(
            r#"{{"users": {{"alice": "{HTPASSWD_ALICE}"}}, "consumer_header": "bad header"}}"#
        ));
        assert!(err.starts_with("consumer_header:"), "{err}");
        let err = config_error(&format!(
            r#"{{"users": {{"alice": "{HTPASSWD_ALICE}"}}, "hide": 1}}"#
        ));
        assert!(err.contains("unknown field `hide`"), "{err}");
        let err = config_error(r#"{"realm": "x"}"#);
        assert!(err.contains("missing field `users`"), "{err}");
    }

    #[test]
    fn only_the_request_hook_is_called() {
        assert_eq!(plugin().hooks(), Hooks::REQUEST);
    }
}
