//! The plugin end to end, natively (SDK `testing` feature): tokens minted with jsonwebtoken from
//! the fixture keys in `tests/keys/`, checked at a fixed time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wasmgate_sdk::prelude::*;
use wasmgate_sdk::{Reply, testing};

use crate::Jwt;

const NOW: f64 = 1_700_000_000.0;
const SECRET: &str = "a-32-byte-secret-for-hs256-tests";

const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa_public.pem");
const RSA_PUBLIC_PKCS1: &str = include_str!("../tests/keys/rsa_public_pkcs1.pem");
const RSA2_PRIVATE: &str = include_str!("../tests/keys/rsa2_private.pem");
const RSA2_PUBLIC: &str = include_str!("../tests/keys/rsa2_public.pem");
const RSA1024_PUBLIC: &str = include_str!("../tests/keys/rsa1024_public.pem");
const EC256_PRIVATE: &str = include_str!("../tests/keys/ec256_private.pem");
const EC256_PUBLIC: &str = include_str!("../tests/keys/ec256_public.pem");
const EC384_PRIVATE: &str = include_str!("../tests/keys/ec384_private.pem");
const EC384_PUBLIC: &str = include_str!("../tests/keys/ec384_public.pem");
const ED25519_PRIVATE: &str = include_str!("../tests/keys/ed25519_private.pem");
const ED25519_PUBLIC: &str = include_str!("../tests/keys/ed25519_public.pem");
const SECP256K1_PUBLIC: &str = include_str!("../tests/keys/secp256k1_public.pem");

fn plugin(config: Value) -> Jwt {
    testing::instance::<Jwt>(&config.to_string()).expect("config accepted")
}

fn config_error(config: Value) -> String {
    testing::instance::<Jwt>(&config.to_string())
        .expect_err("config refused")
        .message()
        .to_owned()
}

fn hs() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key")
}

fn mint_with(header: &Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

fn mint(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    mint_with(&Header::new(alg), key, claims)
}

/// Claims of a token valid at [`NOW`] for ten minutes.
fn good_claims() -> Value {
    json!({ "sub": "ann", "exp": NOW + 600.0, "iat": NOW - 10.0 })
}

/// The plugin's answer to `Authorization: Bearer <token>` at [`NOW`]: `Ok(request)` when it went
/// on, with the context, or `Err(reply)`.
fn run(plugin: &Jwt, headers: &[(&str, &str)]) -> Result<(http::Request<Vec<u8>>, Context), Reply> {
    let mut builder = Request::builder().uri("/orders");
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let mut req = builder.build();
    let ctx = Context::new();
    match plugin
        .authenticate(&mut req, &ctx, NOW)
        .expect("no plugin error")
    {
        Action::Continue => Ok((req.into_http(), ctx)),
        Action::Respond(reply) => Err(reply),
    }
}

fn with_token(plugin: &Jwt, token: &str) -> Result<(http::Request<Vec<u8>>, Context), Reply> {
    run(plugin, &[("authorization", &format!("Bearer {token}"))])
}

#[track_caller]
fn assert_passes_as(plugin: &Jwt, token: &str, consumer: &str) {
    let (req, ctx) = with_token(plugin, token).unwrap_or_else(|reply| {
        panic!(
            "refused: {} {}",
            reply.status(),
            String::from_utf8_lossy(reply.body())
        )
    });
    assert_eq!(req.headers()["x-consumer"], consumer);
    assert_eq!(ctx.get("consumer").as_deref(), Some(consumer));
}

/// Asserts a 401 with the JSON body and the RFC 6750 challenge; returns the message.
#[track_caller]
fn assert_refused(plugin: &Jwt, token: &str) -> String {
    let reply = with_token(plugin, token).expect_err("refused");
    assert_invalid_token(&reply)
}

#[track_caller]
fn assert_invalid_token(reply: &Reply) -> String {
    assert_eq!(reply.status(), 401);
    assert!(
        reply.error().is_some(),
        "a rejection in the gateway's error format"
    );
    let body: Value = serde_json::from_slice(reply.body()).expect("JSON body");
    assert_eq!(body["error"], "unauthorized");
    let message = body["message"].as_str().expect("message").to_owned();
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"wasmgate\", error=\"invalid_token\", error_description=\"{message}\""
            )
            .as_str()
        )
    );
    message
}

fn b64(json: &Value) -> String {
    URL_SAFE_NO_PAD.encode(json.to_string())
}

// ---- HMAC ----

#[test]
fn accepts_a_good_hs256_token_and_names_the_consumer() {
    let plugin = plugin(json!({ "secret": SECRET }));
    assert_passes_as(
        &plugin,
        &mint(Algorithm::HS256, &hs(), &good_claims()),
        "ann",
    );
}

#[test]
fn accepts_hs384_and_hs512_with_the_same_secret() {
    let plugin = plugin(json!({ "secret": SECRET }));
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        assert_passes_as(&plugin, &mint(alg, &hs(), &good_claims()), "ann");
    }
}

#[test]
fn rejects_a_token_signed_with_another_secret() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-configured-secret-at-all"),
        &good_claims(),
    );
    assert_eq!(assert_refused(&plugin, &token), "invalid signature");
}

#[test]
fn rejects_a_tampered_payload() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(Algorithm::HS256, &hs(), &good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = good_claims();
    claims["sub"] = json!("admin");
    let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert_eq!(assert_refused(&plugin, &forged), "invalid signature");
}

#[test]
fn rejects_a_bad_signature_encoding() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(Algorithm::HS256, &hs(), &good_claims());
    let (signed, _) = token.rsplit_once('.').expect("three parts");
    assert_eq!(
        assert_refused(&plugin, &format!("{signed}.***")),
        "malformed token"
    );
    assert_eq!(
        assert_refused(&plugin, &format!("{signed}.")),
        "invalid signature"
    );
}

#[test]
fn rejects_alg_none_with_or_without_a_signature() {
    for config in [
        json!({ "secret": SECRET }),
        json!({ "public_key": RSA_PUBLIC }),
    ] {
        let plugin = plugin(config);
        let head = b64(&json!({ "alg": "none", "typ": "JWT" }));
        let unsigned = format!("{head}.{}.", b64(&good_claims()));
        assert_eq!(
            assert_refused(&plugin, &unsigned),
            "token algorithm not accepted"
        );
        let signed = mint(Algorithm::HS256, &hs(), &good_claims());
        let signature = signed.rsplit_once('.').expect("parts").1;
        let with_sig = format!("{head}.{}.{signature}", b64(&good_claims()));
        assert_eq!(
            assert_refused(&plugin, &with_sig),
            "token algorithm not accepted"
        );
        for spelling in ["None", "NONE", "nOnE"] {
            let head = b64(&json!({ "alg": spelling }));
            let token = format!("{head}.{}.", b64(&good_claims()));
            assert_eq!(
                assert_refused(&plugin, &token),
                "token algorithm not accepted"
            );
        }
    }
}

#[test]
fn rejects_hs256_signed_with_the_public_key_when_a_public_key_is_configured() {
    // The HS/RS confusion: the attacker knows the public key and uses its PEM text as an HMAC
    // secret; a verifier that lets the token's `alg` pick the algorithm would accept it.
    let plugin = plugin(json!({ "public_key": RSA_PUBLIC }));
    for secret in [RSA_PUBLIC, RSA_PUBLIC.trim()] {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = mint(
                alg,
                &EncodingKey::from_secret(secret.as_bytes()),
                &good_claims(),
            );
            assert_eq!(
                assert_refused(&plugin, &token),
                "token algorithm not accepted"
            );
        }
    }
}

#[test]
fn rejects_an_rs256_token_when_a_secret_is_configured() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(Algorithm::RS256, &rsa(), &good_claims());
    assert_eq!(
        assert_refused(&plugin, &token),
        "token algorithm not accepted"
    );
}

#[test]
fn rejects_a_missing_token_with_a_challenge_without_error_code() {
    let plugin = plugin(json!({ "secret": SECRET }));
    for headers in [&[][..], &[("authorization", "Basic YW5uOnB3")][..]] {
        let reply = run(&plugin, headers).expect_err("refused");
        assert_eq!(reply.status(), 401);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"wasmgate\"")
        );
        assert_eq!(
            serde_json::from_slice::<Value>(reply.body()).unwrap(),
            json!({ "error": "unauthorized", "message": "missing bearer token" })
        );
    }
}

#[test]
fn rejects_garbage_as_malformed() {
    let plugin = plugin(json!({ "secret": SECRET }));
    for token in [
        "x",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        "%%%.e30.abc",
        "e30.e30.abc",
    ] {
        assert_eq!(assert_refused(&plugin, token), "malformed token", "{token}");
    }
}

#[test]
fn rejects_a_signed_payload_that_is_not_a_json_object() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(Algorithm::HS256, &hs(), &json!(["sub", "ann"]));
    assert_eq!(assert_refused(&plugin, &token), "malformed token");
}

#[test]
fn rejects_critical_header_parameters() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp".to_owned()]);
    let token = mint_with(&header, &hs(), &good_claims());
    assert_eq!(
        assert_refused(&plugin, &token),
        "unsupported critical header parameter"
    );
}

// ---- time ----

#[test]
fn rejects_an_expired_token() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(
        Algorithm::HS256,
        &hs(),
        &json!({ "sub": "ann", "exp": NOW - 31.0 }),
    );
    assert_eq!(assert_refused(&plugin, &token), "token expired");
}

#[test]
fn accepts_a_token_expired_within_the_leeway() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(
        Algorithm::HS256,
        &hs(),
        &json!({ "sub": "ann", "exp": NOW - 29.0 }),
    );
    assert_passes_as(&plugin, &token, "ann");
}

#[test]
fn leeway_reads_durations_and_seconds() {
    let token = mint(
        Algorithm::HS256,
        &hs(),
        &json!({ "sub": "ann", "exp": NOW - 90.0 }),
    );
    for leeway in [json!("2m"), json!(120)] {
        assert_passes_as(
            &plugin(json!({ "secret": SECRET, "leeway": leeway })),
            &token,
            "ann",
        );
    }
    let strict = plugin(json!({ "secret": SECRET, "leeway": "0s" }));
    let token = mint(
        Algorithm::HS256,
        &hs(),
        &json!({ "sub": "ann", "exp": NOW }),
    );
    assert_eq!(assert_refused(&strict, &token), "token expired");
    let err = config_error(json!({ "secret": SECRET, "leeway": "soon" }));
    assert!(err.contains("invalid duration \"soon\""), "{err}");
}

#[test]
fn rejects_a_token_not_yet_valid() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let claims = json!({ "sub": "ann", "exp": NOW + 600.0, "nbf": NOW + 60.0 });
    let token = mint(Algorithm::HS256, &hs(), &claims);
    assert_eq!(assert_refused(&plugin, &token), "token not yet valid");
}

#[test]
fn rejects_a_token_issued_in_the_future() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let claims = json!({ "sub": "ann", "exp": NOW + 600.0, "iat": NOW + 60.0 });
    let token = mint(Algorithm::HS256, &hs(), &claims);
    assert_eq!(
        assert_refused(&plugin, &token),
        "token issued in the future"
    );
}

#[test]
fn requires_exp_by_default_and_not_when_told() {
    let token = mint(Algorithm::HS256, &hs(), &json!({ "sub": "ann" }));
    let plugin_default = plugin(json!({ "secret": SECRET }));
    assert_eq!(
        assert_refused(&plugin_default, &token),
        "token lacks a required claim"
    );
    let lenient = plugin(json!({ "secret": SECRET, "required_claims": [] }));
    assert_passes_as(&lenient, &token, "ann");
    let strict = plugin(json!({ "secret": SECRET, "required_claims": ["exp", "sub", "jti"] }));
    assert_eq!(
        assert_refused(&strict, &mint(Algorithm::HS256, &hs(), &good_claims())),
        "token lacks a required claim"
    );
}

#[test]
fn rejects_a_string_exp() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(
        Algorithm::HS256,
        &hs(),
        &json!({ "sub": "ann", "exp": "9999999999" }),
    );
    assert_eq!(
        assert_refused(&plugin, &token),
        "token has a malformed claim"
    );
}

#[test]
fn on_request_reads_the_wall_clock() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let ctx = Context::new();
    let valid = mint(
        Algorithm::HS256,
        &hs(),
        &json!({ "sub": "ann", "exp": now + 600.0 }),
    );
    let mut req = Request::builder()
        .header("authorization", &format!("Bearer {valid}"))
        .build();
    assert_eq!(plugin.on_request(&mut req, &ctx).unwrap(), Action::Continue);
    let expired = mint(
        Algorithm::HS256,
        &hs(),
        &json!({ "sub": "ann", "exp": now - 600.0 }),
    );
    let mut req = Request::builder()
        .header("authorization", &format!("Bearer {expired}"))
        .build();
    let action = plugin.on_request(&mut req, &ctx).unwrap();
    assert_eq!(action.reply().map(Reply::status), Some(401));
}

// ---- issuer, audience ----

#[test]
fn checks_issuer_and_audience_when_configured() {
    let plugin = plugin(json!({
        "secret": SECRET,
        "issuer": "https://id.example",
        "audience": ["orders", "billing"],
    }));
    let mut claims = good_claims();
    claims["iss"] = json!("https://id.example");
    claims["aud"] = json!(["web", "billing"]);
    assert_passes_as(&plugin, &mint(Algorithm::HS256, &hs(), &claims), "ann");

    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert_eq!(
        assert_refused(&plugin, &mint(Algorithm::HS256, &hs(), &wrong_iss)),
        "token issuer not accepted"
    );
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("web");
    assert_eq!(
        assert_refused(&plugin, &mint(Algorithm::HS256, &hs(), &wrong_aud)),
        "token audience not accepted"
    );
    let mut no_aud = claims;
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        assert_refused(&plugin, &mint(Algorithm::HS256, &hs(), &no_aud)),
        "token audience not accepted"
    );
}

// ---- public keys ----

#[test]
fn accepts_rs_and_ps_tokens_with_an_rsa_public_key() {
    for pem in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
        let plugin = plugin(json!({ "public_key": pem }));
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            assert_passes_as(&plugin, &mint(alg, &rsa(), &good_claims()), "ann");
        }
    }
}

#[test]
fn rejects_an_rs256_token_of_another_rsa_key() {
    let first = plugin(json!({ "public_key": RSA_PUBLIC }));
    let second = plugin(json!({ "public_key": RSA2_PUBLIC }));
    let other = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    let token = mint(Algorithm::RS256, &other, &good_claims());
    assert_eq!(assert_refused(&first, &token), "invalid signature");
    assert_passes_as(&second, &token, "ann");
    let token = mint(Algorithm::RS256, &rsa(), &good_claims());
    assert_eq!(assert_refused(&second, &token), "invalid signature");
}

#[test]
fn rejects_an_expired_rs256_token() {
    let plugin = plugin(json!({ "public_key": RSA_PUBLIC }));
    let token = mint(
        Algorithm::RS256,
        &rsa(),
        &json!({ "sub": "ann", "exp": NOW - 3600.0 }),
    );
    assert_eq!(assert_refused(&plugin, &token), "token expired");
}

#[test]
fn accepts_es256_with_a_p256_key_only() {
    let key = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
    let plugin = plugin(json!({ "public_key": EC256_PUBLIC }));
    assert_passes_as(
        &plugin,
        &mint(Algorithm::ES256, &key, &good_claims()),
        "ann",
    );
    let p384 = EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap();
    let token = mint(Algorithm::ES384, &p384, &good_claims());
    assert_eq!(
        assert_refused(&plugin, &token),
        "token algorithm not accepted"
    );
    let token = mint(Algorithm::RS256, &rsa(), &good_claims());
    assert_eq!(
        assert_refused(&plugin, &token),
        "token algorithm not accepted"
    );
}

#[test]
fn accepts_es384_with_a_p384_key() {
    let key = EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap();
    let plugin = plugin(json!({ "public_key": EC384_PUBLIC }));
    assert_passes_as(
        &plugin,
        &mint(Algorithm::ES384, &key, &good_claims()),
        "ann",
    );
}

#[test]
fn rejects_a_tampered_es256_token() {
    let key = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
    let plugin = plugin(json!({ "public_key": EC256_PUBLIC }));
    let token = mint(Algorithm::ES256, &key, &good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = good_claims();
    claims["sub"] = json!("root");
    let forged = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert_eq!(assert_refused(&plugin, &forged), "invalid signature");
    // A signature of the wrong length is a bad signature too, not a plugin error.
    let short = format!("{}.{}.AAAA", parts[0], parts[1]);
    assert_eq!(assert_refused(&plugin, &short), "invalid signature");
}

#[test]
fn accepts_eddsa_with_an_ed25519_key() {
    let key = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    let plugin = plugin(json!({ "public_key": ED25519_PUBLIC }));
    assert_passes_as(
        &plugin,
        &mint(Algorithm::EdDSA, &key, &good_claims()),
        "ann",
    );
    let mut claims = good_claims();
    claims["exp"] = json!(NOW - 100.0);
    assert_eq!(
        assert_refused(&plugin, &mint(Algorithm::EdDSA, &key, &claims)),
        "token expired"
    );
    let token = mint(
        Algorithm::HS256,
        &EncodingKey::from_secret(ED25519_PUBLIC.as_bytes()),
        &good_claims(),
    );
    assert_eq!(
        assert_refused(&plugin, &token),
        "token algorithm not accepted"
    );
}

#[test]
fn algorithms_narrows_what_the_key_verifies() {
    let plugin = plugin(json!({ "public_key": RSA_PUBLIC, "algorithms": ["RS256"] }));
    assert_passes_as(
        &plugin,
        &mint(Algorithm::RS256, &rsa(), &good_claims()),
        "ann",
    );
    let token = mint(Algorithm::PS256, &rsa(), &good_claims());
    assert_eq!(
        assert_refused(&plugin, &token),
        "token algorithm not accepted"
    );
}

// ---- JWKS ----

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).expect("jwk")).unwrap();
    jwk["kid"] = json!(kid);
    jwk
}

fn kid_header(alg: Algorithm, kid: &str) -> Header {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    header
}

fn jwks() -> Value {
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    json!({ "keys": [
        jwk(&rsa(), Algorithm::RS256, "rsa-1"),
        jwk(&rsa2, Algorithm::RS256, "rsa-2"),
        jwk(&ec, Algorithm::ES256, "ec-1"),
        jwk(&ed, Algorithm::EdDSA, "ed-1"),
    ] })
}

#[test]
fn jwks_kid_selects_the_key() {
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();
    for jwks in [jwks(), Value::String(jwks().to_string())] {
        let plugin = plugin(json!({ "jwks": jwks }));
        let claims = good_claims();
        for (header, key) in [
            (kid_header(Algorithm::RS256, "rsa-1"), &rsa()),
            (kid_header(Algorithm::RS256, "rsa-2"), &rsa2),
            (kid_header(Algorithm::ES256, "ec-1"), &ec),
            (kid_header(Algorithm::EdDSA, "ed-1"), &ed),
        ] {
            assert_passes_as(&plugin, &mint_with(&header, key, &claims), "ann");
        }
        // The right key pair, the wrong kid.
        let token = mint_with(&kid_header(Algorithm::RS256, "rsa-2"), &rsa(), &claims);
        assert_eq!(assert_refused(&plugin, &token), "invalid signature");
    }
}

#[test]
fn jwks_refuses_unknown_kids_and_ambiguous_tokens() {
    let plugin = plugin(json!({ "jwks": jwks() }));
    let token = mint_with(
        &kid_header(Algorithm::RS256, "rsa-9"),
        &rsa(),
        &good_claims(),
    );
    assert_eq!(
        assert_refused(&plugin, &token),
        "no key matches the token's kid"
    );
    let token = mint(Algorithm::RS256, &rsa(), &good_claims());
    assert_eq!(
        assert_refused(&plugin, &token),
        "token has no kid and several keys fit"
    );
    // Without a kid, the only key that verifies ES256 is used.
    let ec = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
    assert_passes_as(&plugin, &mint(Algorithm::ES256, &ec, &good_claims()), "ann");
}

#[test]
fn jwks_key_alg_fixes_what_it_verifies() {
    let plugin = plugin(json!({ "jwks": jwks() }));
    // rsa-1 says alg RS256: PS256 and RS512 with the same key are refused.
    for alg in [Algorithm::PS256, Algorithm::RS512] {
        let token = mint_with(&kid_header(alg, "rsa-1"), &rsa(), &good_claims());
        assert_eq!(
            assert_refused(&plugin, &token),
            "token algorithm not accepted"
        );
    }
    // The HS/RS confusion through a JWKS: HS256 with the JWK's text as the secret.
    let secret = jwks()["keys"][0].to_string();
    let token = mint_with(
        &kid_header(Algorithm::HS256, "rsa-1"),
        &EncodingKey::from_secret(secret.as_bytes()),
        &good_claims(),
    );
    assert_eq!(
        assert_refused(&plugin, &token),
        "token algorithm not accepted"
    );
}

#[test]
fn jwks_without_alg_lets_the_key_type_decide() {
    let mut key = jwk(&rsa(), Algorithm::RS256, "r");
    key.as_object_mut().unwrap().remove("alg");
    let plugin = plugin(json!({ "jwks": { "keys": [key] } }));
    for alg in [Algorithm::RS256, Algorithm::PS512] {
        assert_passes_as(
            &plugin,
            &mint_with(&kid_header(alg, "r"), &rsa(), &good_claims()),
            "ann",
        );
    }
}

#[test]
fn jwks_accepts_an_oct_key_for_hmac() {
    let k = URL_SAFE_NO_PAD.encode(SECRET);
    let plugin = plugin(json!({ "jwks": { "keys": [
        { "kty": "oct", "kid": "h", "alg": "HS256", "k": k }
    ] } }));
    let token = mint_with(&kid_header(Algorithm::HS256, "h"), &hs(), &good_claims());
    assert_passes_as(&plugin, &token, "ann");
}

#[test]
fn jwks_skips_keys_it_cannot_use_for_signatures() {
    let mut enc = jwk(&rsa(), Algorithm::RS256, "enc");
    enc["use"] = json!("enc");
    let mut oaep = jwk(&rsa(), Algorithm::RS256, "oaep");
    oaep["alg"] = json!("RSA-OAEP");
    let k1 = json!({ "kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1" });
    let sig = jwk(&rsa(), Algorithm::RS256, "sig");
    let plugin =
        plugin(json!({ "jwks": { "keys": [enc.clone(), oaep.clone(), k1.clone(), sig] } }));
    let token = mint_with(&kid_header(Algorithm::RS256, "enc"), &rsa(), &good_claims());
    assert_eq!(
        assert_refused(&plugin, &token),
        "no key matches the token's kid"
    );
    let token = mint_with(&kid_header(Algorithm::RS256, "sig"), &rsa(), &good_claims());
    assert_passes_as(&plugin, &token, "ann");

    let err = config_error(json!({ "jwks": { "keys": [enc, oaep, k1] } }));
    assert_eq!(
        err,
        "jwks: no key can verify signatures (jwks: keys[0] (kid \"enc\"): use \"enc\" is not \
         \"sig\"; jwks: keys[1] (kid \"oaep\"): alg \"RSA-OAEP\" is not a supported signature \
         algorithm; jwks: keys[2] (kid \"k1\"): curve \"secp256k1\" is not supported)"
    );
}

#[test]
fn jwks_config_errors_name_the_key() {
    let err = config_error(json!({ "jwks": "{not json" }));
    assert!(err.starts_with("jwks: not valid JSON:"), "{err}");
    let err = config_error(json!({ "jwks": { "kty": "RSA" } }));
    assert!(err.starts_with("jwks: expected a JWK Set"), "{err}");
    let err = config_error(json!({ "jwks": { "keys": [] } }));
    assert_eq!(err, "jwks: no key can verify signatures (the set is empty)");
    let err =
        config_error(json!({ "jwks": { "keys": [{ "kty": "RSA", "kid": "a", "e": "AQAB" }] } }));
    assert_eq!(
        err,
        "jwks: keys[0] (kid \"a\"): missing `n` for kty \"RSA\""
    );
    let err = config_error(json!({ "jwks": { "keys": [
        { "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA" }
    ] } }));
    assert!(
        err.starts_with("jwks: keys[0]: not a valid EC key"),
        "{err}"
    );
    let mut mislabelled = jwk(&rsa(), Algorithm::RS256, "m");
    mislabelled["alg"] = json!("ES256");
    let err = config_error(json!({ "jwks": { "keys": [mislabelled] } }));
    assert_eq!(
        err,
        "jwks: keys[0] (kid \"m\"): alg \"ES256\" does not fit an RSA key (it verifies RS256, \
         RS384, RS512, PS256, PS384, PS512)"
    );
}

// ---- consumer and headers ----

#[test]
fn a_client_cannot_supply_the_consumer_header() {
    let plugin = plugin(json!({ "secret": SECRET }));
    let token = mint(Algorithm::HS256, &hs(), &good_claims());
    let (req, _) = run(
        &plugin,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-consumer", "admin"),
        ],
    )
    .expect("accepted");
    let values: Vec<_> = req.headers().get_all("x-consumer").iter().collect();
    assert_eq!(values, ["ann"]);

    // A token without `sub`: no consumer, and the client's header is gone.
    let token = mint(Algorithm::HS256, &hs(), &json!({ "exp": NOW + 60.0 }));
    let (req, ctx) = run(
        &plugin,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-consumer", "admin"),
        ],
    )
    .expect("accepted");
    assert!(req.headers().get("x-consumer").is_none());
    assert_eq!(ctx.get("consumer"), None);
}

#[test]
fn consumer_header_and_claim_are_configurable() {
    let plugin = plugin(json!({
        "secret": SECRET, "consumer_header": "X-User", "consumer_claim": "email",
    }));
    let mut claims = good_claims();
    claims["email"] = json!("ann@example.com");
    let token = mint(Algorithm::HS256, &hs(), &claims);
    let (req, ctx) = run(
        &plugin,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-consumer", "admin"),
        ],
    )
    .expect("accepted");
    assert_eq!(req.headers()["x-user"], "ann@example.com");
    assert!(req.headers().get("x-consumer").is_none(), "still stripped");
    assert_eq!(ctx.get("consumer").as_deref(), Some("ann@example.com"));

    let silent = plugin_no_header();
    let (req, ctx) = with_token(&silent, &mint(Algorithm::HS256, &hs(), &good_claims())).unwrap();
    assert!(req.headers().get("x-consumer").is_none());
    assert_eq!(ctx.get("consumer").as_deref(), Some("ann"));
}

fn plugin_no_header() -> Jwt {
    plugin(json!({ "secret": SECRET, "consumer_header": "" }))
}

#[test]
fn rejects_a_subject_that_cannot_be_a_header_value() {
    let plugin = plugin(json!({ "secret": SECRET }));
    for sub in [
        json!("ann\r\nx-admin: 1"),
        json!(""),
        json!(42),
        json!("Jöran"),
    ] {
        let claims = json!({ "sub": sub, "exp": NOW + 60.0 });
        assert_eq!(
            assert_refused(&plugin, &mint(Algorithm::HS256, &hs(), &claims)),
            "token subject is not a usable consumer name",
            "{sub}"
        );
    }
}

#[test]
fn claims_to_headers_forwards_scalars_and_json_and_strips_client_values() {
    let plugin = plugin(json!({
        "secret": SECRET,
        "claims_to_headers": {
            "email": "x-user-email", "admin": "X-Admin", "level": "x-level",
            "roles": "x-roles", "missing": "x-missing", "bad": "x-bad",
        },
    }));
    let mut claims = good_claims();
    claims["email"] = json!("ann@example.com");
    claims["admin"] = json!(false);
    claims["level"] = json!(3);
    claims["roles"] = json!(["ops", "dev"]);
    claims["bad"] = json!("a\nb");
    let token = mint(Algorithm::HS256, &hs(), &claims);
    let (req, _) = run(
        &plugin,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-missing", "spoofed"),
            ("x-bad", "spoofed"),
            ("x-admin", "true"),
        ],
    )
    .expect("accepted");
    let headers = req.headers();
    assert_eq!(headers["x-user-email"], "ann@example.com");
    assert_eq!(headers["x-admin"], "false");
    assert_eq!(headers.get_all("x-admin").iter().count(), 1);
    assert_eq!(headers["x-level"], "3");
    assert_eq!(headers["x-roles"], r#"["ops","dev"]"#);
    assert!(headers.get("x-missing").is_none());
    assert!(headers.get("x-bad").is_none());
}

#[test]
fn keeps_the_authorization_header_unless_hide_credentials() {
    let token = mint(Algorithm::HS256, &hs(), &good_claims());
    let (req, _) = with_token(&plugin(json!({ "secret": SECRET })), &token).unwrap();
    assert_eq!(req.headers()["authorization"], format!("Bearer {token}"));
    let hiding = plugin(json!({ "secret": SECRET, "hide_credentials": true }));
    let (req, _) = with_token(&hiding, &token).unwrap();
    assert!(req.headers().get("authorization").is_none());
}

#[test]
fn the_realm_is_configurable() {
    let plugin = plugin(json!({ "secret": SECRET, "realm": "orders" }));
    let reply = run(&plugin, &[]).expect_err("refused");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"orders\"")
    );
    let reply = with_token(&plugin, "x").expect_err("refused");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            "Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"malformed token\""
        )
    );
}

// ---- config errors ----

#[test]
fn needs_exactly_one_key_source() {
    assert_eq!(
        config_error(json!({})),
        "set exactly one of `secret`, `public_key` or `jwks` (none is set)"
    );
    assert_eq!(
        config_error(json!({ "secret": SECRET, "public_key": RSA_PUBLIC })),
        "set exactly one of `secret`, `public_key` or `jwks` (got secret and public_key)"
    );
    assert_eq!(
        config_error(json!({ "secret": "" })),
        "secret: must not be empty"
    );
}

#[test]
fn refuses_unknown_keys() {
    let err = config_error(json!({ "secret": SECRET, "claims_to_verify": ["exp"] }));
    assert!(err.contains("unknown field `claims_to_verify`"), "{err}");
}

#[test]
fn public_key_errors_say_what_is_wrong_without_echoing_the_key() {
    let cases = [
        (
            "not a key",
            "public_key: not a PEM public key (expected \"-----BEGIN PUBLIC KEY-----\")",
        ),
        (
            RSA_PRIVATE,
            "public_key: is a private key; give the public key (openssl pkey -in key.pem -pubout)",
        ),
        (
            EC256_PRIVATE,
            "public_key: is a private key; give the public key (openssl pkey -in key.pem -pubout)",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "public_key: is a certificate; give its public key (openssl x509 -in cert.pem -pubkey -noout)",
        ),
        (
            RSA1024_PUBLIC,
            "public_key: RSA key of 1024 bits is too small (at least 2048)",
        ),
        (
            SECP256K1_PUBLIC,
            "public_key: not a supported public key (RSA of 2048 bits or more, EC P-256 or P-384, Ed25519)",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "public_key: not a supported public key (RSA of 2048 bits or more, EC P-256 or P-384, Ed25519)",
        ),
    ];
    for (pem, expected) in cases {
        assert_eq!(config_error(json!({ "public_key": pem })), expected);
    }
}

#[test]
fn algorithms_must_fit_the_key() {
    assert_eq!(
        config_error(json!({ "secret": SECRET, "algorithms": ["RS256"] })),
        "algorithms: RS256 cannot be verified with `secret` (an HMAC secret verifies HS256, HS384, HS512)"
    );
    assert_eq!(
        config_error(json!({ "public_key": EC256_PUBLIC, "algorithms": ["ES384"] })),
        "algorithms: ES384 cannot be verified with `public_key` (a P-256 key verifies ES256)"
    );
    assert_eq!(
        config_error(json!({ "secret": SECRET, "algorithms": ["none"] })),
        "algorithms: \"none\" (unsigned tokens) is never accepted"
    );
    assert!(
        config_error(json!({ "secret": SECRET, "algorithms": ["HS1"] }))
            .starts_with("algorithms: unknown algorithm \"HS1\" (known: HS256,")
    );
    assert!(
        config_error(json!({ "secret": SECRET, "algorithms": [] }))
            .starts_with("algorithms: must not be empty")
    );
}

#[test]
fn header_names_are_checked() {
    assert_eq!(
        config_error(json!({ "secret": SECRET, "claims_to_headers": { "email": "x user" } })),
        "claims_to_headers.email: \"x user\" is not a valid header name"
    );
    assert_eq!(
        config_error(json!({ "secret": SECRET, "claims_to_headers": { "email": "Host" } })),
        "claims_to_headers.email: \"host\" is reserved (credentials or request framing)"
    );
    assert_eq!(
        config_error(json!({ "secret": SECRET, "claims_to_headers": { "email": "X-Consumer" } })),
        "claims_to_headers.email: \"x-consumer\" is already the consumer_header"
    );
    assert_eq!(
        config_error(json!({ "secret": SECRET, "claims_to_headers": { "a": "x-a", "b": "X-A" } })),
        "claims_to_headers.b: \"x-a\" is already the header of claim \"a\""
    );
    assert_eq!(
        config_error(json!({ "secret": SECRET, "consumer_header": "authorization" })),
        "consumer_header: \"authorization\" is reserved (credentials or request framing)"
    );
    assert!(config_error(json!({ "secret": SECRET, "realm": "a\"b" })).starts_with("realm: "));
    assert_eq!(
        config_error(json!({ "secret": SECRET, "audience": 7 })),
        "audience: expected a string or a list of strings, not 7"
    );
}
