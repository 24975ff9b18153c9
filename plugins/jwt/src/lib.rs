//! `jwt`: a Wasmgate plugin that lets a request through only with a valid JSON Web Token in
//! `Authorization: Bearer <token>`.
//!
//! - Keys: exactly one of `secret` (HS256/384/512), `public_key` (PEM: RSA for RS*/PS*, EC P-256
//!   for ES256, P-384 for ES384, Ed25519 for EdDSA) or `jwks` (a JWK Set, inline JSON or a
//!   table; the token's `kid` picks the key). The key's type fixes the algorithms it verifies, so
//!   `alg=none` and HS/RS confusion are refused before any signature check.
//! - Claims: `exp` is required by default and must be ahead of the clock, `nbf` and `iat` must
//!   not be ahead of it, all within `leeway` (default 30 s); `issuer` and `audience` when set.
//! - The consumer is the `sub` claim: it goes into the request context (`consumer`) and the
//!   upstream header `x-consumer`; a client's own `x-consumer` never reaches the upstream.
//!   `claims_to_headers` forwards more claims as headers.
//! - Refusals are `401` with `{"error":"unauthorized","message":"..."}` and a
//!   `WWW-Authenticate: Bearer` challenge (RFC 6750).
//!
//! Signatures are verified by [`jsonwebtoken`] on its pure-Rust RustCrypto backend; keys are
//! parsed and checked once, in [`Plugin::new`]. Every config key is in the [`Config`] docs and
//! the plugin's README.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use wasmgate_sdk::config::Duration;
use wasmgate_sdk::prelude::*;

mod claims;
mod keys;
mod rejection;
#[cfg(test)]
mod tests;
mod token;

use claims::ClaimRules;
use keys::Keys;
use rejection::Rejection;

/// The header a client might send to pose as a consumer; always removed.
const CONSUMER_HEADER: &str = "x-consumer";

/// Headers a claim or the consumer may not be written to: the credentials themselves and the
/// ones that frame or route the request.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The route entry's `config`, e.g. `config = { secret = "...", issuer = "https://id.example" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HMAC secret (its UTF-8 bytes) for HS256/HS384/HS512 tokens.
    #[serde(default)]
    pub secret: Option<String>,
    /// PEM public key (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY`): RSA (2048 bits or
    /// more) for RS*/PS*, EC P-256 for ES256, EC P-384 for ES384, Ed25519 for EdDSA.
    #[serde(default)]
    pub public_key: Option<String>,
    /// A JWK Set, `{ "keys": [...] }`, as a JSON string or a TOML table. A token's `kid` picks
    /// the key; each key verifies only what its `kty`/`crv`/`alg` allow.
    #[serde(default)]
    pub jwks: Option<Value>,
    /// Narrows the accepted algorithms, e.g. `["RS256"]`; each must fit the key. Default: every
    /// algorithm of the key's type.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Accepted `iss`: a string or a list. Default: not checked.
    #[serde(default)]
    pub issuer: Option<Value>,
    /// Accepted `aud`: a string or a list; the token's `aud` (a string or a list) must contain one.
    /// Default: not checked.
    #[serde(default)]
    pub audience: Option<Value>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`: `"30s"`, `"1m"` or seconds. Default 30 s.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// Claims a token must carry. Default `["exp"]`; `[]` accepts tokens without expiry.
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<String>,
    /// Claims forwarded upstream, claim → header name, e.g. `{ email = "x-user-email" }`.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// The claim naming the consumer. Default `"sub"`.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// The upstream header set to the consumer; `""` sends none. Default `"x-consumer"`.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// Remove `Authorization` before the request goes upstream. Default `false`: the upstream
    /// gets the token and may check it again.
    #[serde(default)]
    pub hide_credentials: bool,
    /// The realm of the `WWW-Authenticate: Bearer` challenge. Default `"wasmgate"`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

fn default_leeway() -> Duration {
    Duration::new(std::time::Duration::from_secs(30))
}

fn default_required_claims() -> Vec<String> {
    vec!["exp".to_owned()]
}

fn default_consumer_claim() -> String {
    "sub".to_owned()
}

fn default_consumer_header() -> String {
    CONSUMER_HEADER.to_owned()
}

fn default_realm() -> String {
    "wasmgate".to_owned()
}

/// The plugin: keys and rules, all parsed from [`Config`] once per instance.
pub struct Jwt {
    keys: Keys,
    rules: ClaimRules,
    consumer_claim: String,
    consumer_header: Option<String>,
    /// (claim, lowercase header name).
    claim_headers: Vec<(String, String)>,
    /// Headers an accepted request loses unless this plugin sets them: the consumer header,
    /// `x-consumer`, the claim headers (so a client cannot supply them) and, with
    /// `hide_credentials`, `authorization`.
    strip: Vec<String>,
    realm: String,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("Jwt")
            .field("rules", &self.rules)
            .field("consumer_claim", &self.consumer_claim)
            .field("consumer_header", &self.consumer_header)
            .field("claim_headers", &self.claim_headers)
            .finish_non_exhaustive()
    }
}

impl Plugin for Jwt {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let only = config
            .algorithms
            .as_deref()
            .map(keys::parse_algorithms)
            .transpose()?;
        let only = only.as_deref();
        let keys = match (&config.secret, &config.public_key, &config.jwks) {
            (Some(secret), None, None) => Keys::secret(secret, only)?,
            (None, Some(pem), None) => Keys::public_key(pem, only)?,
            (None, None, Some(jwks)) => Keys::jwks(jwks, only)?,
            (secret, public_key, jwks) => {
                let set: Vec<&str> = [
                    secret.as_ref().map(|_| "secret"),
                    public_key.as_ref().map(|_| "public_key"),
                    jwks.as_ref().map(|_| "jwks"),
                ]
                .into_iter()
                .flatten()
                .collect();
                let got = if set.is_empty() {
                    "none is set".to_owned()
                } else {
                    format!("got {}", set.join(" and "))
                };
                return Err(ConfigError::new(format!(
                    "set exactly one of `secret`, `public_key` or `jwks` ({got})"
                )));
            }
        };

        if config.required_claims.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "required_claims: claim names must not be empty",
            ));
        }
        let rules = ClaimRules {
            issuers: claims::one_or_many("issuer", config.issuer.as_ref())?,
            audiences: claims::one_or_many("audience", config.audience.as_ref())?,
            leeway: config.leeway.as_secs_f64(),
            required: config.required_claims,
        };

        if config.consumer_claim.is_empty() {
            return Err(ConfigError::new("consumer_claim: must not be empty"));
        }
        let consumer_header = match config.consumer_header.as_str() {
            "" => None,
            name => Some(header_name("consumer_header", name)?),
        };
        let mut claim_headers = Vec::with_capacity(config.claims_to_headers.len());
        for (claim, header) in config.claims_to_headers {
            let at = format!("claims_to_headers.{claim}");
            let header = header_name(&at, &header)?;
            if consumer_header.as_deref() == Some(header.as_str()) {
                return Err(ConfigError::new(format!(
                    "{at}: {header:?} is already the consumer_header"
                )));
            }
            if let Some((other, _)) = claim_headers.iter().find(|(_, h)| *h == header) {
                return Err(ConfigError::new(format!(
                    "{at}: {header:?} is already the header of claim {other:?}"
                )));
            }
            claim_headers.push((claim, header));
        }

        if !config
            .realm
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(ConfigError::new(format!(
                "realm: {:?} must be printable ASCII without '\"' or '\\'",
                config.realm
            )));
        }

        let mut strip: Vec<String> = consumer_header.iter().cloned().collect();
        if consumer_header.as_deref() != Some(CONSUMER_HEADER) {
            strip.push(CONSUMER_HEADER.to_owned());
        }
        strip.extend(claim_headers.iter().map(|(_, header)| header.clone()));
        if config.hide_credentials {
            strip.push("authorization".to_owned());
        }

        Ok(Self {
            keys,
            rules,
            consumer_claim: config.consumer_claim,
            consumer_header,
            claim_headers,
            strip,
            realm: config.realm,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    /// The `Authorization` header comes with the call.
    fn inputs(&self) -> Inputs {
        Inputs::new().request_header("authorization")
    }

    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::new("the clock is before 1970"))?
            .as_secs_f64();
        self.authenticate(req, ctx, now)
    }
}

impl Jwt {
    /// `on_request` at a given time (seconds since the UNIX epoch), so tests control the clock.
    fn authenticate(
        &self,
        req: &mut Request<'_>,
        ctx: &Context,
        now: f64,
    ) -> Result<Action, Error> {
        let authorization = req.header("authorization");
        let claims = match self.verify(authorization.as_deref(), now)? {
            Ok(claims) => claims,
            Err(rejection) => return Ok(rejection.answer(&self.realm)),
        };
        let consumer = match claims.get(&self.consumer_claim) {
            None => None,
            Some(Value::String(consumer))
                if !consumer.is_empty() && claims::is_header_value(consumer) =>
            {
                Some(consumer.as_str())
            }
            Some(_) => return Ok(Rejection::UnusableConsumer.answer(&self.realm)),
        };

        let mut set: Vec<(&str, String)> = Vec::with_capacity(1 + self.claim_headers.len());
        if let (Some(header), Some(consumer)) = (&self.consumer_header, consumer) {
            set.push((header, consumer.to_owned()));
        }
        for (claim, header) in &self.claim_headers {
            if let Some(value) = claims.get(claim).and_then(claims::header_value) {
                set.push((header, value));
            }
        }
        // `set` replaces a client's value; whatever is not set is removed.
        let remove: Vec<&str> = self
            .strip
            .iter()
            .map(String::as_str)
            .filter(|name| !set.iter().any(|(header, _)| header == name))
            .collect();
        let set: Vec<(&str, &str)> = set.iter().map(|(h, v)| (*h, v.as_str())).collect();
        req.edit_headers(&set, &remove)?;
        if let Some(consumer) = consumer {
            ctx.set("consumer", consumer);
        }
        Ok(Action::Continue)
    }

    /// The claims of a valid token, a [`Rejection`], or an [`Error`] for what cannot happen with
    /// keys checked in `new` (a key jsonwebtoken refuses).
    fn verify(
        &self,
        authorization: Option<&str>,
        now: f64,
    ) -> Result<Result<Map<String, Value>, Rejection>, Error> {
        let token = match token::bearer(authorization) {
            Ok(token) => token,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let head = match token::head(token) {
            Ok(head) => head,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let key = match self.keys.select(head.alg, head.kid.as_deref()) {
            Ok(key) => key,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(
            token,
            key.decoding(),
            key.validation(),
        ) {
            Ok(data) => data.claims,
            Err(err) => {
                use jsonwebtoken::errors::ErrorKind;
                let rejection = match err.kind() {
                    ErrorKind::InvalidSignature => Rejection::BadSignature,
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::UnsupportedAlgorithm
                    | ErrorKind::InvalidAlgorithmName => Rejection::AlgorithmNotAccepted,
                    ErrorKind::InvalidToken
                    | ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_) => Rejection::Malformed,
                    _ => {
                        return Err(Error::new(format!(
                            "verifying a {} token failed: {err}",
                            keys::name(head.alg)
                        )));
                    }
                };
                return Ok(Err(rejection));
            }
        };
        Ok(self.rules.check(&claims, now).map(|()| claims))
    }
}

/// A header name from the config, lowercased; refused when invalid or reserved.
fn header_name(key: &str, name: &str) -> Result<String, ConfigError> {
    const SEPARATORS: &[u8] = b"!#$%&'*+-.^_`|~";
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || SEPARATORS.contains(&b));
    if !valid {
        return Err(ConfigError::new(format!(
            "{key}: {name:?} is not a valid header name"
        )));
    }
    let name = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(ConfigError::new(format!(
            "{key}: {name:?} is reserved (credentials or request framing)"
        )));
    }
    Ok(name)
}

wasmgate_sdk::export!(Jwt);
