//! The shipped `basic-auth` plugin through a real gateway: an `htpasswd -B` hash, argon2id, 401s
//! with a challenge, and the memory argon2id needs.

use std::time::{Duration, Instant};

use serde_json::Value;
use wasmgate_tests::*;

const BASIC_AUTH: &str = env!("WASM_BASIC_AUTH");

/// `htpasswd -nbB alice 's3cret!pass'` (Apache htpasswd 2.4; its default cost, 5).
const HTPASSWD_ALICE: &str = "$2y$05$0NAnEwSUVwof26Q5zGUcjeGkx94IA6nLxytXastzZySWZrrv0SJ7C";
/// `htpasswd -nbB -C 10 bob hunter2`.
const HTPASSWD_BOB_COST_10: &str = "$2y$10$7CoIsjH6rx47XpDYLSbBJeLBktU4yLFH/HNW1phEyEUZr1QEeadVy";
/// `echo -n 'correct horse' | argon2 wasmgatesalt16b -id -t 2 -m 10 -p 1 -e` (the reference
/// implementation's command line): 1 MiB, as fast as bcrypt cost 5, within the default timeout.
const ARGON2ID_CAROL: &str = "$argon2id$v=19$m=1024,t=2,p=1$d2FzbWdhdGVzYWx0MTZi$366wGIl54WnRmpC0zVOu28uvFpkdnDeummYMUSXXCbw";
/// The same password with `-m 12` (4 MiB).
const ARGON2ID_ERIN_4MIB: &str = "$argon2id$v=19$m=4096,t=2,p=1$d2FzbWdhdGVzYWx0MTZi$JWXh8tiGAYJzt3HVAcjxrtfmqgCo3NZ3wqbfQuD8D9Q";
/// The same password with OWASP's minimum argon2id settings, `-k 19456` (19 MiB).
const ARGON2ID_DAN_19MIB: &str = "$argon2id$v=19$m=19456,t=2,p=1$d2FzbWdhdGVzYWx0MTZi$S1PcdHPfOGyzIUexVgwGZVLWJXbnuciz/arhD41+4ck";

/// Serves one route `r` with basic-auth, `entry_extra` keys on its plugin entry and `config`.
async fn gateway(entry_extra: &str, config: &str) -> anyhow::Result<TestGateway> {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("basic-auth", BASIC_AUTH)]);
    TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "r"
            upstream = "u"
            [[routes.plugins]]
            name = "basic-auth"
            {entry_extra}
            config = {config}
            "#
        ),
    )
    .await
}

/// The issue's config shape, `{ users = { alice = "<hash>" } }`, with the htpasswd and argon2id
/// users.
async fn issue_gateway() -> TestGateway {
    gateway(
        "",
        &format!(r#"{{ users = {{ alice = "{HTPASSWD_ALICE}", carol = "{ARGON2ID_CAROL}" }} }}"#),
    )
    .await
    .expect("start")
}

/// Status, challenge and JSON message of a 401.
async fn rejection(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    assert_eq!(status, 401, "{resp:?}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(
        resp.headers().get("x-echo-server").is_none(),
        "the upstream was not called"
    );
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    let body: Value = resp.json().await.expect("json body");
    assert_eq!(body["error"], "unauthorized");
    (
        status,
        challenge,
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

const CHALLENGE: &str = "Basic realm=\"wasmgate\", charset=\"UTF-8\"";

#[tokio::test]
async fn an_htpasswd_bcrypt_user_passes_and_is_the_consumer() {
    let gw = issue_gateway().await;
    let c = client();
    for _ in 0..2 {
        // The second request is answered from the instance's cache of verified credentials.
        let resp = c
            .get(gw.url("/orders"))
            .basic_auth("alice", Some("s3cret!pass"))
            .header("x-consumer", "root")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let seen: Value = resp.json().await.expect("echo json");
        assert_eq!(seen["headers"]["x-consumer"], "alice");
        assert!(
            seen["headers"].get("authorization").is_none(),
            "credentials hidden: {seen}"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_gets_401_with_a_basic_challenge() {
    let gw = issue_gateway().await;
    let c = client();
    for (user, password) in [
        ("alice", "s3cret!pas"),
        ("carol", "correct horsE"),
        ("eve", "x"),
    ] {
        let resp = c
            .get(gw.url("/orders"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("send");
        let expected = (401, CHALLENGE.to_owned(), "invalid credentials".to_owned());
        assert_eq!(rejection(resp).await, expected, "{user}");
    }
}

#[tokio::test]
async fn missing_or_malformed_credentials_get_401_with_a_challenge() {
    let gw = issue_gateway().await;
    let c = client();
    let resp = c.get(gw.url("/orders")).send().await.expect("send");
    let expected = (
        401,
        CHALLENGE.to_owned(),
        "missing Basic credentials".to_owned(),
    );
    assert_eq!(rejection(resp).await, expected);
    for bad in ["Basic", "Basic !!!", "Basic YWxpY2U="] {
        let resp = c
            .get(gw.url("/orders"))
            .header("authorization", bad)
            .send()
            .await
            .expect("send");
        let expected = (
            401,
            CHALLENGE.to_owned(),
            "malformed Basic credentials".to_owned(),
        );
        assert_eq!(rejection(resp).await, expected, "{bad}");
    }
}

#[tokio::test]
async fn an_argon2id_user_passes() {
    let gw = issue_gateway().await;
    let resp = client()
        .get(gw.url("/orders"))
        .basic_auth("carol", Some("correct horse"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.expect("echo json");
    assert_eq!(seen["headers"]["x-consumer"], "carol");
}

#[tokio::test]
async fn an_argon2id_hash_larger_than_the_memory_limit_is_a_config_error_until_memory_is_raised() {
    let config = format!(r#"{{ users = {{ dan = "{ARGON2ID_DAN_19MIB}" }} }}"#);
    let err = gateway("", &config)
        .await
        .expect_err("refused with the 16 MiB default");
    let text = format!("{err:#}");
    assert!(
        text.contains("users.dan: the argon2id hash needs m=19456 KiB")
            && text.contains("raise `memory`"),
        "{text}"
    );

    let gw = gateway("memory = \"64MiB\"\ntimeout = \"2s\"", &config)
        .await
        .expect("start with more memory");
    let resp = client()
        .get(gw.url("/x"))
        .basic_auth("dan", Some("correct horse"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn unsupported_hash_formats_are_refused_at_start_naming_the_user() {
    let config = r#"{ users = { carl = "$apr1$jw1dBqR3$jZTspGgQ/xSczH3ttvQqQ." } }"#;
    let err = gateway("", config).await.expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("users.carl: unsupported hash format: Apache MD5"),
        "{text}"
    );
}

/// Times verifications in the real gateway (wasm), for the README: the first request runs the
/// hash, the next ones hit the cache. Not a pass/fail test; run it with
/// `cargo test -p wasmgate-tests --test e2e -- basic_auth:: --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn measure_verification_times() {
    let config = format!(
        r#"{{ users = {{ alice = "{HTPASSWD_ALICE}", bob = "{HTPASSWD_BOB_COST_10}", carol = "{ARGON2ID_CAROL}", erin = "{ARGON2ID_ERIN_4MIB}", dan = "{ARGON2ID_DAN_19MIB}" }}, cache_size = 0 }}"#
    );
    let uncached = gateway("memory = \"64MiB\"\ntimeout = \"5s\"", &config)
        .await
        .expect("start");
    let cached = gateway(
        "memory = \"64MiB\"\ntimeout = \"5s\"",
        &config.replace("cache_size = 0", "cache_size = 1024"),
    )
    .await
    .expect("start");
    let c = client();
    let password = |user: &str| match user {
        "alice" => "s3cret!pass",
        "bob" => "hunter2",
        _ => "correct horse",
    };
    let baseline = time(&c, &uncached, "eve", None).await;
    println!("no credentials (401, no hashing): {baseline:?}");
    for (user, what) in [
        ("alice", "bcrypt cost 5 (htpasswd -B default)"),
        ("bob", "bcrypt cost 10"),
        ("carol", "argon2id m=1024 t=2 p=1"),
        ("erin", "argon2id m=4096 t=2 p=1"),
        ("dan", "argon2id m=19456 t=2 p=1"),
    ] {
        let run = time(&c, &uncached, user, Some(password(user))).await;
        // Warm the cached gateway's instance, then time a hit.
        time(&c, &cached, user, Some(password(user))).await;
        let hit = time(&c, &cached, user, Some(password(user))).await;
        println!("{what}: verify {run:?}, cache hit {hit:?}");
    }
}

/// The fastest of 5 requests.
async fn time(
    c: &reqwest::Client,
    gw: &TestGateway,
    user: &str,
    password: Option<&str>,
) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let mut req = c.get(gw.url("/x"));
        if let Some(p) = password {
            req = req.basic_auth(user, Some(p));
        }
        let started = Instant::now();
        let resp = req.send().await.expect("send");
        let status = resp.status();
        resp.bytes().await.expect("body");
        best = best.min(started.elapsed());
        assert_eq!(status, if password.is_some() { 200 } else { 401 }, "{user}");
    }
    best
}
