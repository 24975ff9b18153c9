//! The shipped `jwt` plugin through a real gateway: HS256 and RS256 tokens that pass (the consumer
//! reaches the upstream) and the ones that must not (expired, not yet valid, wrong secret,
//! tampered, `alg=none`, HS/RS confusion), a JWKS picking keys by `kid` (ES256 and EdDSA too),
//! claims forwarded as headers, and a refused config.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wasmgate_tests::*;

const JWT: &str = env!("WASM_JWT");
const SECRET: &str = "e2e-secret-of-at-least-32-bytes!";

/// Compiled code shared by this file's gateways: each test starts its own, and compiling the
/// plugin is most of a start.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/jwt-plugin-cache");
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/jwt/tests/keys");
const RSA_PRIVATE: &str = include_str!("../../../plugins/jwt/tests/keys/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../../plugins/jwt/tests/keys/rsa_public.pem");
const RSA2_PRIVATE: &str = include_str!("../../../plugins/jwt/tests/keys/rsa2_private.pem");
const EC256_PRIVATE: &str = include_str!("../../../plugins/jwt/tests/keys/ec256_private.pem");
const ED25519_PRIVATE: &str = include_str!("../../../plugins/jwt/tests/keys/ed25519_private.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn hs() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key")
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).expect("ec key")
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).expect("ed key")
}

fn mint_with(header: &Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

fn mint(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    mint_with(&Header::new(alg), key, claims)
}

fn with_kid(alg: Algorithm, kid: &str) -> Header {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    header
}

/// A token for `sub` valid for the next hour.
fn good(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 3600, "iat": now() })
}

/// A JWK as a one-line TOML inline table (its members are strings).
fn toml_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> String {
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(key, alg).expect("jwk")).expect("json");
    jwk["kid"] = json!(kid);
    let members: Vec<String> = jwk
        .as_object()
        .expect("object")
        .iter()
        .map(|(name, value)| format!("{name} = {value}"))
        .collect();
    format!("{{ {} }}", members.join(", "))
}

/// Routes: `/hs` (a secret, the config as an operator writes it), `/rs` (a PEM public key),
/// `/jwks` (a JWKS table: RSA, P-256 and Ed25519 keys by kid), `/claims` (a secret with issuer,
/// audience, claims_to_headers and hide_credentials).
async fn gateway() -> TestGateway {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("jwt", JWT)]);
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).expect("rsa2");
    let jwks = [
        toml_jwk(&rsa(), Algorithm::RS256, "rsa-1"),
        toml_jwk(&rsa2, Algorithm::RS256, "rsa-2"),
        toml_jwk(&ec(), Algorithm::ES256, "ec-1"),
        toml_jwk(&ed(), Algorithm::EdDSA, "ed-1"),
    ]
    .join(", ");
    TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = '{CACHE}'
            [upstreams.u]
            targets = ["{up}"]

            [[routes]]
            name = "hs"
            paths = ["/hs"]
            upstream = "u"
            [[routes.plugins]]
            name = "jwt"
            config = {{ secret = "{SECRET}" }}

            [[routes]]
            name = "rs"
            paths = ["/rs"]
            upstream = "u"
            [[routes.plugins]]
            name = "jwt"
            [routes.plugins.config]
            public_key = """
{RSA_PUBLIC}"""
            leeway = "30s"

            [[routes]]
            name = "jwks"
            paths = ["/jwks"]
            upstream = "u"
            [[routes.plugins]]
            name = "jwt"
            config = {{ jwks = {{ keys = [{jwks}] }} }}

            [[routes]]
            name = "claims"
            paths = ["/claims"]
            upstream = "u"
            [[routes.plugins]]
            name = "jwt"
            config = {{ secret = "{SECRET}", issuer = "https://id.example", audience = ["orders", "billing"], leeway = 30, claims_to_headers = {{ email = "x-user-email", admin = "x-admin" }}, hide_credentials = true }}
            "#
        ),
    )
    .await
    .expect("start")
}

/// Sends `GET path` with `Authorization: Bearer token` and a spoofed `x-consumer`.
async fn get(gw: &TestGateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("x-consumer", "mallory")
        .send()
        .await
        .expect("send")
}

/// The request the echo upstream saw, after checking it is a 200 from it.
async fn echoed(resp: reqwest::Response) -> Value {
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("echo JSON")
}

/// Checks a 401 with the JSON body and the RFC 6750 challenge; returns the message.
async fn refused(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(
        resp.headers().get("x-echo-server").is_none(),
        "the upstream was not called"
    );
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = resp.json().await.expect("json body");
    assert_eq!(body["error"], "unauthorized");
    let message = body["message"].as_str().expect("message").to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"wasmgate\", error=\"invalid_token\", error_description=\"{message}\""
        )
    );
    message
}

#[tokio::test]
async fn hs256_good_token_reaches_the_upstream_as_its_consumer() {
    let gw = gateway().await;
    let token = mint(Algorithm::HS256, &hs(), &good("alice"));
    let seen = echoed(get(&gw, "/hs/orders", &token).await).await;
    assert_eq!(
        seen["headers"]["x-consumer"], "alice",
        "the client's x-consumer was replaced"
    );
    assert_eq!(
        seen["headers"]["authorization"],
        format!("Bearer {token}"),
        "the token is forwarded by default"
    );
}

#[tokio::test]
async fn rs256_good_token_reaches_the_upstream_as_its_consumer() {
    let gw = gateway().await;
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let token = mint(alg, &rsa(), &good("bob"));
        let seen = echoed(get(&gw, "/rs/orders", &token).await).await;
        assert_eq!(seen["headers"]["x-consumer"], "bob", "{alg:?}");
    }
}

#[tokio::test]
async fn rejects_a_missing_token_with_a_bare_bearer_challenge() {
    let gw = gateway().await;
    let resp = client()
        .get(gw.url("/hs/orders"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"wasmgate\""
    );
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({ "error": "unauthorized", "message": "missing bearer token", "request_id": id })
    );
}

#[tokio::test]
async fn rejects_expired_tokens() {
    let gw = gateway().await;
    let claims = json!({ "sub": "alice", "exp": now() - 3600 });
    for (path, token) in [
        ("/hs/x", mint(Algorithm::HS256, &hs(), &claims)),
        ("/rs/x", mint(Algorithm::RS256, &rsa(), &claims)),
    ] {
        assert_eq!(
            refused(get(&gw, path, &token).await).await,
            "token expired",
            "{path}"
        );
    }
}

#[tokio::test]
async fn rejects_tokens_not_yet_valid() {
    let gw = gateway().await;
    let claims = json!({ "sub": "alice", "exp": now() + 7200, "nbf": now() + 3600 });
    for (path, token) in [
        ("/hs/x", mint(Algorithm::HS256, &hs(), &claims)),
        ("/rs/x", mint(Algorithm::RS256, &rsa(), &claims)),
    ] {
        assert_eq!(
            refused(get(&gw, path, &token).await).await,
            "token not yet valid",
            "{path}"
        );
    }
}

#[tokio::test]
async fn rejects_a_token_signed_with_the_wrong_secret_or_key() {
    let gw = gateway().await;
    let wrong = EncodingKey::from_secret(b"some-other-secret-of-32-bytes!!!");
    let token = mint(Algorithm::HS256, &wrong, &good("alice"));
    assert_eq!(
        refused(get(&gw, "/hs/x", &token).await).await,
        "invalid signature"
    );
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).expect("rsa2");
    let token = mint(Algorithm::RS256, &rsa2, &good("alice"));
    assert_eq!(
        refused(get(&gw, "/rs/x", &token).await).await,
        "invalid signature"
    );
}

#[tokio::test]
async fn rejects_a_tampered_payload() {
    let gw = gateway().await;
    for (path, token) in [
        ("/hs/x", mint(Algorithm::HS256, &hs(), &good("alice"))),
        ("/rs/x", mint(Algorithm::RS256, &rsa(), &good("alice"))),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(good("admin").to_string());
        let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(
            refused(get(&gw, path, &forged).await).await,
            "invalid signature",
            "{path}"
        );
    }
}

#[tokio::test]
async fn rejects_alg_none() {
    let gw = gateway().await;
    let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(good("admin").to_string());
    for path in ["/hs/x", "/rs/x", "/jwks/x"] {
        for token in [
            format!("{head}.{payload}."),
            format!("{head}.{payload}.c2ln"),
        ] {
            assert_eq!(
                refused(get(&gw, path, &token).await).await,
                "token algorithm not accepted",
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn rejects_hs256_signed_with_the_rsa_public_key() {
    // The HS/RS confusion: the public key's PEM text used as an HMAC secret.
    let gw = gateway().await;
    for secret in [RSA_PUBLIC, RSA_PUBLIC.trim()] {
        let key = EncodingKey::from_secret(secret.as_bytes());
        let token = mint(Algorithm::HS256, &key, &good("admin"));
        assert_eq!(
            refused(get(&gw, "/rs/x", &token).await).await,
            "token algorithm not accepted"
        );
        let token = mint_with(&with_kid(Algorithm::HS256, "rsa-1"), &key, &good("admin"));
        assert_eq!(
            refused(get(&gw, "/jwks/x", &token).await).await,
            "token algorithm not accepted"
        );
    }
}

#[tokio::test]
async fn jwks_kid_selects_the_key_for_rs256_es256_and_eddsa() {
    let gw = gateway().await;
    let rsa2 = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).expect("rsa2");
    for (header, key, sub) in [
        (with_kid(Algorithm::RS256, "rsa-1"), rsa(), "r1"),
        (with_kid(Algorithm::RS256, "rsa-2"), rsa2, "r2"),
        (with_kid(Algorithm::ES256, "ec-1"), ec(), "e1"),
        (with_kid(Algorithm::EdDSA, "ed-1"), ed(), "d1"),
    ] {
        let token = mint_with(&header, &key, &good(sub));
        let seen = echoed(get(&gw, "/jwks/x", &token).await).await;
        assert_eq!(seen["headers"]["x-consumer"], sub);
    }
    let token = mint_with(&with_kid(Algorithm::RS256, "rsa-2"), &rsa(), &good("x"));
    assert_eq!(
        refused(get(&gw, "/jwks/x", &token).await).await,
        "invalid signature"
    );
    let token = mint_with(&with_kid(Algorithm::RS256, "nope"), &rsa(), &good("x"));
    assert_eq!(
        refused(get(&gw, "/jwks/x", &token).await).await,
        "no key matches the token's kid"
    );
    // The JWK says RS256: PS256 with the same key is refused.
    let token = mint_with(&with_kid(Algorithm::PS256, "rsa-1"), &rsa(), &good("x"));
    assert_eq!(
        refused(get(&gw, "/jwks/x", &token).await).await,
        "token algorithm not accepted"
    );
}

#[tokio::test]
async fn forwards_claims_as_headers_checks_issuer_and_audience_and_hides_the_token() {
    let gw = gateway().await;
    let mut claims = good("carol");
    claims["iss"] = json!("https://id.example");
    claims["aud"] = json!("billing");
    claims["email"] = json!("carol@example.com");
    let token = mint(Algorithm::HS256, &hs(), &claims);
    let resp = client()
        .get(gw.url("/claims/x"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-admin", "true")
        .send()
        .await
        .expect("send");
    let seen = echoed(resp).await;
    let headers = &seen["headers"];
    assert_eq!(headers["x-consumer"], "carol");
    assert_eq!(headers["x-user-email"], "carol@example.com");
    assert!(
        headers.get("x-admin").is_none(),
        "no admin claim: the client's value is removed"
    );
    assert!(headers.get("authorization").is_none(), "hide_credentials");

    claims["aud"] = json!(["web"]);
    let token = mint(Algorithm::HS256, &hs(), &claims);
    assert_eq!(
        refused(get(&gw, "/claims/x", &token).await).await,
        "token audience not accepted"
    );
    claims["aud"] = json!("orders");
    claims["iss"] = json!("https://evil.example");
    let token = mint(Algorithm::HS256, &hs(), &claims);
    assert_eq!(
        refused(get(&gw, "/claims/x", &token).await).await,
        "token issuer not accepted"
    );
}

#[tokio::test]
async fn a_private_key_as_public_key_refuses_the_config() {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("jwt", JWT)]);
    let private = std::fs::read_to_string(format!("{KEYS}/rsa_private.pem")).expect("key");
    let err = TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = '{CACHE}'
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "rs"
            upstream = "u"
            [[routes.plugins]]
            name = "jwt"
            [routes.plugins.config]
            public_key = """
{private}"""
            "#
        ),
    )
    .await
    .expect_err("refused");
    let err = err.to_string();
    assert!(
        err.contains("public_key: is a private key; give the public key"),
        "{err}"
    );
    assert!(!err.contains("BEGIN"), "the key is not echoed: {err}");
}
