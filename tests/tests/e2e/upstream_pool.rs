//! Upstream connections: kept alive and reused, closed when idle too long or beyond
//! `pool_max_idle`, multiplexed over h2c, and replaced when the upstream closed them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use wasmgate_tests::echo::Connections;
use wasmgate_tests::*;

/// An observed echo upstream and a one-worker gateway forwarding everything to it, with
/// `upstream_extra` keys in `[upstreams.u]`.
async fn gateway_to_observed(upstream_extra: &str) -> (TestGateway, Arc<Connections>) {
    let (up, connections) = echo::spawn_observed(SocketAddr::from(([127, 0, 0, 1], 0)), "up")
        .await
        .expect("bind the upstream");
    let gw = TestGateway::start(&format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n{upstream_extra}\n\
         [[routes]]\nname = \"all\"\nupstream = \"u\"\n"
    ))
    .await
    .expect("start");
    (gw, connections)
}

/// `wasmgate_upstream_connections_total` for the only target of upstream `u`.
fn connections_opened(gw: &TestGateway) -> u64 {
    gw.metric("wasmgate_upstream_connections_total{upstream=\"u\"")
}

async fn get_json(c: &reqwest::Client, url: &str) -> Value {
    let resp = c.get(url).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

/// `n` requests at once to `/delay/MS`, so each holds a connection while the others start.
async fn concurrent(gw: &TestGateway, n: usize, ms: u64) {
    let c = client();
    let url = gw.url(&format!("/delay/{ms}"));
    let requests = (0..n).map(|_| get_json(&c, &url));
    futures_util::future::join_all(requests).await;
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (gw, connections) = gateway_to_observed("").await;
    let c = client();
    let mut peers = Vec::new();
    for _ in 0..10 {
        let body = get_json(&c, &gw.url("/x")).await;
        peers.push(body["peer"].as_str().expect("peer").to_owned());
    }
    peers.dedup();
    assert_eq!(peers.len(), 1, "every request came on one connection");
    assert_eq!(connections_opened(&gw), 1);
    assert_eq!(connections.opened(), 1);

    // A streamed body of several chunks gives its connection back once read to the end.
    let big = c.get(gw.url("/bytes/300000")).send().await.expect("send");
    assert_eq!(big.bytes().await.expect("body").len(), 300_000);
    get_json(&c, &gw.url("/x")).await;
    assert_eq!(connections_opened(&gw), 1);
}

#[tokio::test]
async fn an_unread_response_body_does_not_return_its_connection() {
    let (gw, _connections) = gateway_to_observed("").await;
    let c = client();
    get_json(&c, &gw.url("/x")).await;
    // The client hangs up after the head of a long body: the upstream connection still has
    // bytes in flight and must not carry another request.
    let resp = c.get(gw.url("/bytes/50000000")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    drop(resp);
    for _ in 0..3 {
        let body = get_json(&c, &gw.url("/x")).await;
        assert_eq!(
            body["path"], "/x",
            "no bytes of the abandoned body leak into this answer"
        );
    }
    assert_eq!(connections_opened(&gw), 2);
}

#[tokio::test]
async fn idle_connections_close_after_pool_idle_timeout() {
    let (gw, connections) = gateway_to_observed("pool_idle_timeout = \"300ms\"").await;
    let c = client();
    get_json(&c, &gw.url("/x")).await;
    let returned = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), connections.wait_closed(1))
        .await
        .expect("the idle connection was closed");
    assert!(
        returned.elapsed() >= Duration::from_millis(250),
        "closed after {:?}, before pool_idle_timeout",
        returned.elapsed()
    );
    get_json(&c, &gw.url("/x")).await;
    assert_eq!(
        connections_opened(&gw),
        2,
        "the next request needed a new one"
    );
}

#[tokio::test]
async fn at_most_pool_max_idle_connections_are_kept() {
    let (gw, connections) = gateway_to_observed("pool_max_idle = 1").await;
    concurrent(&gw, 3, 300).await;
    assert_eq!(connections_opened(&gw), 3);
    tokio::time::timeout(Duration::from_secs(10), connections.wait_closed(2))
        .await
        .expect("the two connections beyond pool_max_idle were closed");
    concurrent(&gw, 3, 300).await;
    assert_eq!(connections_opened(&gw), 5, "one kept, two new");

    let (gw, _) = gateway_to_observed("").await;
    concurrent(&gw, 3, 300).await;
    concurrent(&gw, 3, 300).await;
    assert_eq!(connections_opened(&gw), 3, "by default all three are kept");
}

#[tokio::test]
async fn h2c_upstream_multiplexes_requests_on_one_connection() {
    let (gw, _connections) = gateway_to_observed("protocol = \"h2c\"").await;
    let c = client();
    let url = gw.url("/delay/200/h2");
    let requests = (0..10).map(|_| get_json(&c, &url));
    let bodies = futures_util::future::join_all(requests).await;
    for body in &bodies {
        assert_eq!(body["version"], "HTTP/2.0");
        assert_eq!(body["path"], "/delay/200/h2");
        assert_eq!(body["peer"], bodies[0]["peer"], "one connection");
    }
    assert_eq!(connections_opened(&gw), 1);
}

/// An HTTP/1.1 upstream that answers one request per connection and then closes it, without
/// saying so (no `Connection: close`): every kept-alive connection to it goes stale.
async fn one_request_per_connection_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_kept_alive_connection_the_upstream_closed_is_not_used() {
    let up = one_request_per_connection_upstream().await;
    let gw = TestGateway::start(&format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n\
         [[routes]]\nname = \"all\"\nupstream = \"u\"\n"
    ))
    .await
    .expect("start");
    let c = client();
    for i in 0..10 {
        let resp = c.get(gw.url("/x")).send().await.expect("send");
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(resp.text().await.expect("body"), "ok");
    }
    assert_eq!(connections_opened(&gw), 10);
}
