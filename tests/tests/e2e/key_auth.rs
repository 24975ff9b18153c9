//! The shipped `key-auth` plugin through a real gateway, with the issue's config verbatim: 401 for
//! a missing or wrong key, the consumer reaching the upstream, the key hidden from it.

use serde_json::Value;
use wasmgate_tests::*;

const KEY_AUTH: &str = env!("WASM_KEY_AUTH");

/// A gateway with two key-auth routes: `/h` with the issue's config exactly, `/q` also accepting
/// the key in the `apikey` query parameter.
async fn gateway() -> TestGateway {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("key-auth", KEY_AUTH)]);
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
            name = "header"
            paths = ["/h"]
            upstream = "u"
            [[routes.plugins]]
            name = "key-auth"
            config = {{ header = "x-api-key", keys = {{ alice = "k-alice", bob = "k-bob" }} }}
            [[routes]]
            name = "query"
            paths = ["/q"]
            upstream = "u"
            [[routes.plugins]]
            name = "key-auth"
            config = {{ header = "x-api-key", query = "apikey", consumers = [{{ name = "alice", keys = ["k-alice"] }}, {{ name = "bob", keys = ["k-bob"] }}] }}
            [[routes]]
            name = "stripped"
            paths = ["/s"]
            upstream = "u"
            strip_path = true
            [[routes.plugins]]
            name = "key-auth"
            config = {{ query = "apikey", keys = {{ alice = "k-alice" }} }}
            "#
        ),
    )
    .await
    .expect("start")
}

/// Status and JSON body of a 401, checking what every rejection carries.
async fn rejection(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["www-authenticate"], "Key realm=\"wasmgate\"");
    assert!(
        resp.headers().get("x-echo-server").is_none(),
        "the upstream was not called"
    );
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = resp.json().await.expect("json body");
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["request_id"], id.as_str(), "stamped by the gateway");
    (status, body)
}

#[tokio::test]
async fn rejects_a_missing_key_with_401() {
    let gw = gateway().await;
    let resp = client().get(gw.url("/h/items")).send().await.expect("send");
    let (status, body) = rejection(resp).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "missing API key");
}

#[tokio::test]
async fn rejects_a_wrong_key_with_401() {
    let gw = gateway().await;
    let c = client();
    for wrong in ["k-carol", "K-ALICE", "k-alic"] {
        let resp = c
            .get(gw.url("/h/items"))
            .header("x-api-key", wrong)
            .send()
            .await
            .expect("send");
        let (status, body) = rejection(resp).await;
        assert_eq!(status, 401, "{wrong}");
        assert_eq!(body["message"], "invalid API key", "{wrong}");
    }
    // A key in the query counts only where `query` is configured.
    let resp = c
        .get(gw.url("/h/items?apikey=k-alice"))
        .send()
        .await
        .expect("send");
    assert_eq!(rejection(resp).await.1["message"], "missing API key");
}

#[tokio::test]
async fn the_consumer_reaches_the_upstream_and_the_key_does_not() {
    let gw = gateway().await;
    let c = client();
    for (key, consumer) in [("k-alice", "alice"), ("k-bob", "bob")] {
        let resp = c
            .get(gw.url("/h/items"))
            .header("x-api-key", key)
            .header("x-consumer", "root")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let seen: Value = resp.json().await.expect("echo json");
        assert_eq!(
            seen["headers"]["x-consumer"], consumer,
            "spoofed value replaced"
        );
        assert!(
            seen["headers"].get("x-api-key").is_none(),
            "key hidden: {seen}"
        );
    }
}

#[tokio::test]
async fn a_key_in_the_query_is_accepted_and_removed_from_the_upstream_path() {
    let gw = gateway().await;
    let resp = client()
        .get(gw.url("/q/items?a=1&apikey=k-bob&b=%7E+x"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.expect("echo json");
    assert_eq!(seen["headers"]["x-consumer"], "bob");
    assert_eq!(seen["path"], "/q/items");
    assert_eq!(
        seen["query"], "a=1&b=%7E+x",
        "only apikey removed, the rest intact"
    );

    let resp = client()
        .get(gw.url("/q/items?apikey=k-alice"))
        .send()
        .await
        .expect("send");
    let seen: Value = resp.json().await.expect("echo json");
    assert_eq!(seen["headers"]["x-consumer"], "alice");
    assert_eq!(seen["query"], Value::Null, "no empty query left behind");

    let resp = client()
        .get(gw.url("/q/items?apikey=wrong"))
        .send()
        .await
        .expect("send");
    let (status, body) = rejection(resp).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("invalid API key"))
    );
}

#[tokio::test]
async fn a_key_removed_from_the_query_keeps_the_routes_strip_path() {
    let gw = gateway().await;
    let resp = client()
        .get(gw.url("/s/items?apikey=k-alice&page=2"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.expect("echo json");
    assert_eq!(seen["headers"]["x-consumer"], "alice");
    assert_eq!(seen["path"], "/items", "the /s prefix is still stripped");
    assert_eq!(seen["query"], "page=2");
}

#[tokio::test]
async fn a_duplicate_key_is_refused_at_start_naming_both_consumers() {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("key-auth", KEY_AUTH)]);
    let err = TestGateway::start_in(
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
            name = "key-auth"
            config = {{ keys = {{ alice = "same", bob = "same" }} }}
            "#
        ),
    )
    .await
    .expect_err("refused");
    let text = format!("{err:#}");
    assert!(
        text.contains("keys.bob: the same key as keys.alice"),
        "{text}"
    );
}
