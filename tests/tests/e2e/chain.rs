//! How many times the gateway calls into plugins: the shipped key-auth + rate-limit + transform
//! chain (the bench's `wasmgate-3-plugins` scenario) run through the `wasmgate` command, counted
//! from `/metrics`, where every guest call is one observation of
//! `wasmgate_plugin_duration_seconds`.

use serde_json::Value;
use wasmgate_tests::*;

const KEY_AUTH: &str = env!("WASM_KEY_AUTH");
const RATE_LIMIT: &str = env!("WASM_RATE_LIMIT");
const TRANSFORM: &str = env!("WASM_TRANSFORM");

const REQUESTS: u64 = 25;

/// `wasmgate_plugin_duration_seconds_count` for one plugin and phase (0 when never observed).
fn calls(metrics: &str, route: &str, plugin: &str, phase: &str) -> u64 {
    let prefix = format!(
        r#"wasmgate_plugin_duration_seconds_count{{route="{route}",plugin="{plugin}",phase="{phase}"}} "#
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

/// Every guest call counted, all routes, plugins and phases together.
fn all_calls(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("wasmgate_plugin_duration_seconds_count{"))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a count")
        })
        .sum()
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn the_shipped_three_plugin_chain_makes_two_guest_calls_per_request() {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[
        ("key-auth", KEY_AUTH),
        ("rate-limit", RATE_LIMIT),
        ("transform", TRANSFORM),
    ]);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            admin = "127.0.0.1:0"
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "api"
            upstream = "u"
            [[routes.plugins]]
            name = "key-auth"
            config = {{ header = "x-api-key", consumers = [{{ name = "alice", keys = ["k-alice"] }}] }}
            [[routes.plugins]]
            name = "rate-limit"
            config = {{ limit = 1000, window = "1m", by = "consumer" }}
            [[routes.plugins]]
            name = "transform"
            config = {{ request = {{ set_headers = {{ "x-bench" = "1" }} }}, response = {{ set_headers = {{ "x-served-by" = "wasmgate" }} }} }}
            "#
        ),
    )
    .expect("write");
    let gw = GatewayProcess::start(wasmgate_bin!(), &config, 1).expect("start");
    let admin = gw.admin().expect("admin address logged");
    let c = client();
    for i in 0..REQUESTS {
        let resp = c
            .get(format!("http://{}/x", gw.addrs[0]))
            .header("x-api-key", "k-alice")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let headers = resp.headers().clone();
        assert_eq!(headers["x-served-by"], "wasmgate", "transform's fixed edit");
        assert_eq!(
            headers["ratelimit-limit"], "1000",
            "scheduled by rate-limit"
        );
        assert_eq!(
            headers["ratelimit-remaining"],
            (999 - i).to_string().as_str(),
            "counted once per request"
        );
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["headers"]["x-bench"], "1", "transform's fixed edit");
        assert_eq!(body["headers"]["x-consumer"], "alice", "set by key-auth");
        assert!(
            body["headers"].get("x-api-key").is_none(),
            "hidden by key-auth"
        );
    }

    let m = metrics(admin).await;
    assert_eq!(calls(&m, "api", "key-auth", "request"), REQUESTS, "{m}");
    assert_eq!(calls(&m, "api", "rate-limit", "request"), REQUESTS, "{m}");
    for plugin in ["key-auth", "rate-limit", "transform"] {
        assert_eq!(
            calls(&m, "api", plugin, "response"),
            0,
            "{plugin} needs no response-phase call: {m}"
        );
    }
    assert_eq!(
        calls(&m, "api", "transform", "request"),
        0,
        "fixed headers need no call: {m}"
    );
    assert_eq!(all_calls(&m), 2 * REQUESTS, "{m}");

    // A refused key: one call (key-auth answers), none for the plugins after it.
    let resp = c
        .get(format!("http://{}/x", gw.addrs[0]))
        .header("x-api-key", "wrong")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let m = metrics(admin).await;
    assert_eq!(all_calls(&m), 2 * REQUESTS + 1, "{m}");
}
