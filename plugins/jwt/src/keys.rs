//! The verification keys: one HMAC `secret`, one PEM `public_key` or a `jwks`, parsed and checked
//! once, when the plugin is built.
//!
//! Every key carries the algorithms it may verify, fixed by its type (and, in a JWKS, its `alg`):
//! an HMAC secret verifies HS*, an RSA key RS* and PS*, a P-256 key ES256, a P-384 key ES384, an
//! Ed25519 key EdDSA. A token whose `alg` is not among them never reaches signature verification,
//! which is what defeats `alg=none` and the HS/RS confusion (an HS256 token "signed" with the
//! public key's PEM text as its HMAC secret).

// One trait (pkcs8's) for the SPKI PEM parsing of RSA, P-256, P-384 and Ed25519 keys.
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Map, Value};
use wasmgate_sdk::ConfigError;

use crate::rejection::Rejection;

/// RFC 7518 §3.3: RSA keys of 2048 bits or more MUST be used.
const MIN_RSA_BITS: usize = 2048;

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const P256: &[Algorithm] = &[Algorithm::ES256];
const P384: &[Algorithm] = &[Algorithm::ES384];
const ED25519: &[Algorithm] = &[Algorithm::EdDSA];

/// Every algorithm the plugin can verify, in the order error messages list them.
pub(crate) const ALL: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The JOSE name of an algorithm (`HS256`, `EdDSA`, ...).
pub(crate) fn name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

fn names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|&alg| name(alg))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses the `algorithms` setting: JOSE names, each one the plugin can verify.
pub(crate) fn parse_algorithms(list: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(
            "algorithms: must not be empty (leave it out to accept every algorithm of the key)",
        ));
    }
    list.iter()
        .map(|text| {
            if text.eq_ignore_ascii_case("none") {
                return Err(ConfigError::new(
                    "algorithms: \"none\" (unsigned tokens) is never accepted",
                ));
            }
            ALL.iter()
                .copied()
                .find(|&alg| name(alg) == *text)
                .ok_or_else(|| {
                    ConfigError::new(format!(
                        "algorithms: unknown algorithm {text:?} (known: {})",
                        names(ALL)
                    ))
                })
        })
        .collect()
}

/// One verification key and the algorithms it may verify.
pub(crate) struct Key {
    kid: Option<String>,
    decoding: DecodingKey,
    /// `algorithms` holds exactly the algorithms this key accepts, so jsonwebtoken checks the
    /// token's `alg` against them a second time; no claim is validated by it (see `claims`).
    validation: Validation,
}

impl Key {
    fn new(kid: Option<String>, decoding: DecodingKey, algorithms: Vec<Algorithm>) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            kid,
            decoding,
            validation,
        }
    }

    fn accepts(&self, alg: Algorithm) -> bool {
        self.validation.algorithms.contains(&alg)
    }

    /// The key to verify with.
    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The algorithm check jsonwebtoken repeats, with its own claim validation switched off.
    pub(crate) fn validation(&self) -> &Validation {
        &self.validation
    }
}

/// The configured keys.
pub(crate) enum Keys {
    /// `secret` or `public_key`: the token's `kid`, if any, is ignored.
    Single(Box<Key>),
    /// `jwks`: the token's `kid` picks the key.
    Set(Vec<Key>),
}

impl Keys {
    /// An HMAC `secret`, used as its UTF-8 bytes.
    pub(crate) fn secret(secret: &str, only: Option<&[Algorithm]>) -> Result<Self, ConfigError> {
        if secret.is_empty() {
            return Err(ConfigError::new("secret: must not be empty"));
        }
        let algorithms = narrow("secret", "an HMAC secret", HMAC, only)?;
        Ok(Self::Single(Box::new(Key::new(
            None,
            DecodingKey::from_secret(secret.as_bytes()),
            algorithms,
        ))))
    }

    /// A PEM `public_key`: RSA (`PUBLIC KEY` or `RSA PUBLIC KEY`), EC P-256 or P-384, Ed25519.
    pub(crate) fn public_key(pem: &str, only: Option<&[Algorithm]>) -> Result<Self, ConfigError> {
        let (decoding, kind, family) = parse_pem(pem.trim())?;
        let algorithms = narrow("public_key", kind, family, only)?;
        Ok(Self::Single(Box::new(Key::new(None, decoding, algorithms))))
    }

    /// A `jwks`: a JSON string or a table, `{ "keys": [ ... ] }`.
    pub(crate) fn jwks(jwks: &Value, only: Option<&[Algorithm]>) -> Result<Self, ConfigError> {
        let parsed;
        let jwks = match jwks {
            Value::String(text) => {
                parsed = serde_json::from_str::<Value>(text)
                    .map_err(|err| ConfigError::new(format!("jwks: not valid JSON: {err}")))?;
                &parsed
            }
            other => other,
        };
        let Some(keys) = jwks.get("keys") else {
            return Err(ConfigError::new(
                "jwks: expected a JWK Set, an object with a `keys` list (as a JSON string or a table)",
            ));
        };
        let Value::Array(keys) = keys else {
            return Err(ConfigError::new("jwks: `keys` must be a list of JWKs"));
        };
        let mut usable = Vec::with_capacity(keys.len());
        let mut skipped = Vec::new();
        for (index, jwk) in keys.iter().enumerate() {
            let Value::Object(jwk) = jwk else {
                return Err(ConfigError::new(format!(
                    "jwks: keys[{index}]: expected a JWK (an object)"
                )));
            };
            let at = match jwk.get("kid").and_then(Value::as_str) {
                Some(kid) => format!("jwks: keys[{index}] (kid {kid:?})"),
                None => format!("jwks: keys[{index}]"),
            };
            match parse_jwk(jwk, &at)? {
                Jwk::Usable(kid, decoding, family, kind) => {
                    // parse_jwk skipped keys whose `alg` is no JWS algorithm; one that is must fit
                    // the key, and then it is the only algorithm the key verifies.
                    let own = match string(jwk, "alg", &at)? {
                        None => family.to_vec(),
                        Some(alg) => match family.iter().copied().find(|&a| name(a) == alg) {
                            Some(alg) => vec![alg],
                            None => {
                                return Err(ConfigError::new(format!(
                                    "{at}: alg {alg:?} does not fit {kind} (it verifies {})",
                                    names(family)
                                )));
                            }
                        },
                    };
                    let algorithms: Vec<Algorithm> = own
                        .into_iter()
                        .filter(|alg| only.is_none_or(|only| only.contains(alg)))
                        .collect();
                    if algorithms.is_empty() {
                        skipped.push(format!("{at}: none of `algorithms` fits {kind}"));
                        continue;
                    }
                    usable.push(Key::new(kid, decoding, algorithms));
                }
                Jwk::Skipped(reason) => skipped.push(format!("{at}: {reason}")),
            }
        }
        if usable.is_empty() {
            let why = if skipped.is_empty() {
                "the set is empty".to_owned()
            } else {
                skipped.join("; ")
            };
            return Err(ConfigError::new(format!(
                "jwks: no key can verify signatures ({why})"
            )));
        }
        Ok(Self::Set(usable))
    }

    /// The key that verifies a token signed with `alg` and naming key `kid`; a JWKS needs the
    /// `kid` unless exactly one of its keys accepts `alg`.
    pub(crate) fn select(&self, alg: Algorithm, kid: Option<&str>) -> Result<&Key, Rejection> {
        match self {
            Self::Single(key) if key.accepts(alg) => Ok(key),
            Self::Single(_) => Err(Rejection::AlgorithmNotAccepted),
            Self::Set(keys) => match kid {
                Some(kid) => {
                    let mut named = keys.iter().filter(|key| key.kid.as_deref() == Some(kid));
                    let first = named.next().ok_or(Rejection::UnknownKid)?;
                    std::iter::once(first)
                        .chain(named)
                        .find(|key| key.accepts(alg))
                        .ok_or(Rejection::AlgorithmNotAccepted)
                }
                None => {
                    let mut fitting = keys.iter().filter(|key| key.accepts(alg));
                    match (fitting.next(), fitting.next()) {
                        (Some(key), None) => Ok(key),
                        (Some(_), Some(_)) => Err(Rejection::KidRequired),
                        (None, _) => Err(Rejection::AlgorithmNotAccepted),
                    }
                }
            },
        }
    }
}

/// The algorithms of `family` left by the `algorithms` setting.
fn narrow(
    key: &str,
    kind: &str,
    family: &[Algorithm],
    only: Option<&[Algorithm]>,
) -> Result<Vec<Algorithm>, ConfigError> {
    let Some(only) = only else {
        return Ok(family.to_vec());
    };
    if let Some(misfit) = only.iter().find(|alg| !family.contains(alg)) {
        return Err(ConfigError::new(format!(
            "algorithms: {} cannot be verified with `{key}` ({kind} verifies {})",
            name(*misfit),
            names(family)
        )));
    }
    Ok(only.to_vec())
}

/// A PEM public key → the key, what it is (for messages) and its algorithms.
fn parse_pem(pem: &str) -> Result<(DecodingKey, &'static str, &'static [Algorithm]), ConfigError> {
    let label = pem
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.split_once("-----"))
        .map(|(label, _)| label);
    match label {
        Some("PUBLIC KEY") => {}
        Some("RSA PUBLIC KEY") => {
            let key = rsa::RsaPublicKey::from_pkcs1_pem(pem).map_err(|err| {
                ConfigError::new(format!("public_key: not a valid RSA PUBLIC KEY: {err}"))
            })?;
            return Ok((rsa_key("public_key", &key)?, "an RSA key", RSA));
        }
        Some("CERTIFICATE") => {
            return Err(ConfigError::new(
                "public_key: is a certificate; give its public key \
                 (openssl x509 -in cert.pem -pubkey -noout)",
            ));
        }
        Some(label) if label.contains("PRIVATE KEY") => {
            return Err(ConfigError::new(
                "public_key: is a private key; give the public key (openssl pkey -in key.pem -pubout)",
            ));
        }
        _ => {
            return Err(ConfigError::new(
                "public_key: not a PEM public key (expected \"-----BEGIN PUBLIC KEY-----\")",
            ));
        }
    }
    if let Ok(key) = rsa::RsaPublicKey::from_public_key_pem(pem) {
        return Ok((rsa_key("public_key", &key)?, "an RSA key", RSA));
    }
    if let Ok(key) = p256::PublicKey::from_public_key_pem(pem) {
        let point = key.to_encoded_point(false);
        return Ok((
            DecodingKey::from_ec_der(point.as_bytes()),
            "a P-256 key",
            P256,
        ));
    }
    if let Ok(key) = p384::PublicKey::from_public_key_pem(pem) {
        let point = key.to_encoded_point(false);
        return Ok((
            DecodingKey::from_ec_der(point.as_bytes()),
            "a P-384 key",
            P384,
        ));
    }
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        return Ok((
            DecodingKey::from_ed_der(key.as_bytes()),
            "an Ed25519 key",
            ED25519,
        ));
    }
    Err(ConfigError::new(
        "public_key: not a supported public key (RSA of 2048 bits or more, EC P-256 or P-384, Ed25519)",
    ))
}

fn rsa_key(at: &str, key: &rsa::RsaPublicKey) -> Result<DecodingKey, ConfigError> {
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(ConfigError::new(format!(
            "{at}: RSA key of {bits} bits is too small (at least {MIN_RSA_BITS})"
        )));
    }
    Ok(DecodingKey::from_rsa_raw_components(
        &key.n().to_bytes_be(),
        &key.e().to_bytes_be(),
    ))
}

enum Jwk {
    /// kid, key, the algorithms of its type, what it is (for messages).
    Usable(
        Option<String>,
        DecodingKey,
        &'static [Algorithm],
        &'static str,
    ),
    Skipped(String),
}

/// One JWK of the set. Keys the plugin cannot use for signatures (`use` = `enc`, an encryption
/// `alg`, an unsupported `kty` or curve) are skipped, so an identity provider's whole JWKS can be
/// pasted; a usable key with a broken value is an error.
fn parse_jwk(jwk: &Map<String, Value>, at: &str) -> Result<Jwk, ConfigError> {
    let kid = string(jwk, "kid", at)?.map(str::to_owned);
    if let Some(usage) = string(jwk, "use", at)?
        && usage != "sig"
    {
        return Ok(Jwk::Skipped(format!("use {usage:?} is not \"sig\"")));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Ok(Jwk::Skipped(
                "key_ops does not include \"verify\"".to_owned(),
            ));
        }
    }
    if let Some(alg) = string(jwk, "alg", at)?
        && !ALL.iter().any(|&a| name(a) == alg)
    {
        return Ok(Jwk::Skipped(format!(
            "alg {alg:?} is not a supported signature algorithm"
        )));
    }
    let Some(kty) = string(jwk, "kty", at)? else {
        return Err(ConfigError::new(format!("{at}: missing `kty`")));
    };
    let b64 = |member: &str| -> Result<&str, ConfigError> {
        string(jwk, member, at)?
            .ok_or_else(|| ConfigError::new(format!("{at}: missing `{member}` for kty {kty:?}")))
    };
    let broken = |what: &str, err: &dyn std::fmt::Display| {
        ConfigError::new(format!("{at}: not a valid {what}: {err}"))
    };
    let usable = match kty {
        "RSA" => {
            let decoding = DecodingKey::from_rsa_components(b64("n")?, b64("e")?)
                .map_err(|err| broken("RSA key (n, e must be base64url)", &err))?;
            let DecodingKeyKind::RsaModulusExponent { n, e } = decoding.kind() else {
                return Err(broken("RSA key", &"unexpected key form"));
            };
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(n),
                rsa::BigUint::from_bytes_be(e),
            )
            .map_err(|err| broken("RSA key", &err))?;
            Jwk::Usable(kid, rsa_key(at, &key)?, RSA, "an RSA key")
        }
        "EC" => {
            let curve = b64("crv")?;
            let (family, kind) = match curve {
                "P-256" => (P256, "a P-256 key"),
                "P-384" => (P384, "a P-384 key"),
                other => return Ok(Jwk::Skipped(format!("curve {other:?} is not supported"))),
            };
            let decoding = DecodingKey::from_ec_components(b64("x")?, b64("y")?)
                .map_err(|err| broken("EC key (x, y must be base64url)", &err))?;
            let point = decoding
                .try_get_as_bytes()
                .map_err(|err| broken("EC key", &err))?;
            let on_curve = match curve {
                "P-256" => p256::PublicKey::from_sec1_bytes(point).is_ok(),
                _ => p384::PublicKey::from_sec1_bytes(point).is_ok(),
            };
            if !on_curve {
                return Err(broken("EC key", &format!("x, y is not a point of {curve}")));
            }
            Jwk::Usable(kid, decoding, family, kind)
        }
        "OKP" => match b64("crv")? {
            "Ed25519" => {
                let decoding = DecodingKey::from_ed_components(b64("x")?)
                    .map_err(|err| broken("Ed25519 key (x must be base64url)", &err))?;
                let bytes = decoding
                    .try_get_as_bytes()
                    .map_err(|err| broken("Ed25519 key", &err))?;
                ed25519_dalek::VerifyingKey::try_from(bytes)
                    .map_err(|err| broken("Ed25519 key", &err))?;
                Jwk::Usable(kid, decoding, ED25519, "an Ed25519 key")
            }
            other => return Ok(Jwk::Skipped(format!("curve {other:?} is not supported"))),
        },
        "oct" => {
            b64("k")?;
            let secret =
                serde_json::from_value::<jsonwebtoken::jwk::Jwk>(Value::Object(jwk.clone()))
                    .map_err(|err| broken("oct key", &err))
                    .and_then(|jwk| {
                        DecodingKey::from_jwk(&jwk)
                            .map_err(|err| broken("oct key (k must be base64url)", &err))
                    })?;
            if secret.try_get_as_bytes().is_ok_and(<[u8]>::is_empty) {
                return Err(broken("oct key", &"k is empty"));
            }
            Jwk::Usable(kid, secret, HMAC, "an HMAC key")
        }
        other => return Ok(Jwk::Skipped(format!("kty {other:?} is not supported"))),
    };
    Ok(usable)
}

/// A JWK member that must be a string when present.
fn string<'a>(
    jwk: &'a Map<String, Value>,
    member: &str,
    at: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match jwk.get(member) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(ConfigError::new(format!(
            "{at}: `{member}` must be a string, not {other}"
        ))),
    }
}
