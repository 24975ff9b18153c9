//! The quickstart config as `cargo xtask demo` runs it, with its fixed ports swapped for
//! ephemeral ones: the README's curl examples answer as documented.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;
use wasmgate_config::Target;
use wasmgate_tests::*;

#[tokio::test]
async fn quickstart_answers_the_readme_examples() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/gateway.toml");
    let mut config = wasmgate_config::load(&path).expect("the quickstart config is valid");
    let up = echo_upstream("echo").await;
    config.gateway.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.upstreams[0].targets = vec![Target {
        address: up.to_string().parse().expect("authority"),
        tls: false,
        weight: 1,
    }];
    config.gateway.access_log = wasmgate_config::AccessLog::Off;
    config.gateway.admin = None;
    // `cargo xtask plugins` copies the shipped plugins and the example plugin into plugins/;
    // tests/build.rs builds the same crates into the target folder's wasm/.
    for entry in config.routes.iter_mut().flat_map(|r| r.plugins.iter_mut()) {
        entry.file = match entry.name.as_str() {
            "key-auth" => env!("WASM_KEY_AUTH").into(),
            "rate-limit" => env!("WASM_RATE_LIMIT").into(),
            "transform" => env!("WASM_TRANSFORM").into(),
            "hello-plugin" => env!("WASM_HELLO_PLUGIN").into(),
            _ => continue,
        };
    }
    let gateway = wasmgate_proxy::Gateway::bind(config).await.expect("start");
    let addr = gateway.local_addrs()[0].addr;
    let server = tokio::spawn(gateway.run(std::future::pending()));
    let c = client();

    let resp = c
        .get(format!("http://{addr}/hello"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.text().await.expect("text"), "hello from wasmgate\n");

    let resp = c
        .get(format!("http://{addr}/echo/users/7?x=1"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["x-greeting"], "hello from wasmgate");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["path"], "/users/7");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["headers"]["x-visits"], "1");

    let resp = h2c_client()
        .get(format!("http://{addr}/echo/h2"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);

    let resp = c
        .get(format!("http://{addr}/echo/hello/wave"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.text().await.expect("text"),
        "hello from wasmgate from a plugin\n"
    );

    let resp = c
        .post(format!("http://{addr}/hello"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_eq!(
        c.get(format!("http://{addr}/nowhere"))
            .send()
            .await
            .expect("send")
            .status(),
        404
    );
    // The API route: key-auth, then rate-limit per consumer (alice: 5 a minute), then transform.
    let resp = c
        .get(format!("http://{addr}/api/orders"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    // Until the limit bites: 6 requests, or up to 11 if a minute boundary resets the window.
    let mut remaining: Vec<u32> = Vec::new();
    let limited = loop {
        let resp = c
            .get(format!("http://{addr}/api/orders"))
            .header("x-api-key", "k-alice")
            .send()
            .await
            .expect("send");
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        let left = resp.headers()["ratelimit-remaining"]
            .to_str()
            .expect("ascii");
        remaining.push(left.parse().expect("a number"));
        assert!(remaining.len() <= 10, "never limited: {remaining:?}");
    };
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    for pair in remaining.windows(2) {
        assert!(
            pair[1] + 1 == pair[0] || pair[1] == 4,
            "counts down by one (or restarts at 4 in a new window): {remaining:?}"
        );
    }
    assert_eq!(remaining.last(), Some(&0), "{remaining:?}");
    let resp = c
        .get(format!("http://{addr}/api/orders"))
        .header("x-api-key", "k-bob")
        .header("cookie", "session=1")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "wasmgate");
    assert_eq!(resp.headers()["ratelimit-limit"], "100");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["path"], "/orders");
    assert_eq!(body["headers"]["x-consumer"], "bob");
    assert_eq!(body["headers"]["x-gateway"], "wasmgate");
    assert!(body["headers"].get("x-api-key").is_none(), "{body}");
    assert!(body["headers"].get("cookie").is_none(), "{body}");
    server.abort();
}
