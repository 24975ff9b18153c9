//! The quickstart config as `cargo xtask demo` runs it, with its fixed ports swapped for
//! ephemeral ones: the README's curl examples answer as documented.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;
use wasmgate_config::Target;
use wasmgate_tests::*;

#[tokio::test]
async fn quickstart_answers_the_readme_examples() {
    // The example plugin is built by tests/build.rs to the path the quickstart config names.
    assert!(Path::new(env!("WASM_HELLO_PLUGIN")).exists());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/gateway.toml");
    let mut config = wasmgate_config::load(&path).expect("the quickstart config is valid");
    let up = echo_upstream("echo").await;
    config.gateway.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.upstreams[0].targets = vec![Target {
        address: up.to_string().parse().expect("authority"),
        weight: 1,
    }];
    config.gateway.access_log = wasmgate_config::AccessLog::Off;
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
    server.abort();
}
