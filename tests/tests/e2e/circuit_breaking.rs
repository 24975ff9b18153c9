//! Circuit breaking on connections: `max_connections` open to an upstream, `max_pending`
//! requests waiting for one (each at most `connect_timeout`), a fast 503 beyond.

use std::time::{Duration, Instant};

use wasmgate_tests::*;

async fn send(gw: &TestGateway, path: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let (c, url) = (client(), gw.url(path));
    tokio::spawn(async move { c.get(url).send().await.expect("send") })
}

/// A gateway in front of one target that answers `hold` after each request, with `keys` (which
/// set `max_connections = 1`), and a first request holding the one connection; the channel
/// reports later arrivals at the target.
async fn one_connection_held(
    hold: Duration,
    keys: &str,
) -> (
    TestGateway,
    tokio::task::JoinHandle<reqwest::Response>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let (slow, mut arrived) = holding_upstream(hold).await;
    let gw = TestGateway::start(&pool_config(&[format!("\"{slow}\"")], keys))
        .await
        .expect("start");
    let first = send(&gw, "/first").await;
    arrived
        .recv()
        .await
        .expect("the first request holds the one connection");
    (gw, first, arrived)
}

#[tokio::test]
async fn beyond_max_connections_requests_wait_and_beyond_max_pending_get_a_fast_503() {
    let (gw, first, _arrived) = one_connection_held(
        Duration::from_millis(500),
        "max_connections = 1\nmax_pending = 1",
    )
    .await;
    let second = send(&gw, "/second").await;
    eventually(Duration::from_secs(5), "the second request waits", || {
        gw.metric("wasmgate_upstream_pending_requests{upstream=\"pool\"}") == 1
    })
    .await;
    let started = Instant::now();
    let third = client().get(gw.url("/third")).send().await.expect("send");
    assert_eq!(third.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(400), "not fast");
    let body: serde_json::Value = third.json().await.expect("json");
    assert_eq!(body["error"], "upstream_overloaded");
    // The held connection closes (the target says `connection: close`): the waiting request
    // takes its place.
    assert_eq!(first.await.expect("task").status(), 200);
    assert_eq!(second.await.expect("task").status(), 200);
    assert_eq!(
        gw.metric("wasmgate_upstream_overflows_total{upstream=\"pool\"}"),
        1
    );
    assert_eq!(
        gw.metric("wasmgate_upstream_pending_requests{upstream=\"pool\"}"),
        0
    );
    let target_errors = gw
        .metrics()
        .lines()
        .filter(|l| l.contains("outcome=\"connect_error\"") && !l.ends_with(" 0"))
        .count();
    assert_eq!(
        target_errors, 0,
        "the gateway's own limit counted against the target"
    );
}

#[tokio::test]
async fn a_request_waits_for_a_connection_no_longer_than_connect_timeout() {
    let (gw, first, mut arrived) = one_connection_held(
        Duration::from_secs(3),
        "max_connections = 1\nconnect_timeout = \"300ms\"",
    )
    .await;
    let started = Instant::now();
    let waited = client().get(gw.url("/second")).send().await.expect("send");
    assert_eq!(waited.status(), 503);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "waited {elapsed:?}"
    );
    assert!(
        arrived.try_recv().is_err(),
        "the second request reached the target"
    );
    assert_eq!(first.await.expect("task").status(), 200);
}

#[tokio::test]
async fn a_kept_alive_connection_freed_by_one_request_serves_the_waiting_one() {
    let (up, connections) =
        echo::spawn_observed(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "echo")
            .await
            .expect("bind");
    let gw = TestGateway::start(&pool_config(
        &[format!("\"{up}\"")],
        "max_connections = 2\nmax_pending = 100",
    ))
    .await
    .expect("start");
    // The most connections open at once at the upstream, sampled while the requests run (a
    // connection may close and be replaced, so the total opened is no measure).
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (most, connections) = (most.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let open = connections.opened() - connections.closed();
                most.fetch_max(open, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // 40 requests at once over at most two connections: every one is served, on connections
    // handed from one request to the next.
    let requests: Vec<_> = (0..40).map(|_| send(&gw, "/delay/20")).collect::<Vec<_>>();
    for request in futures_util::future::join_all(requests).await {
        assert_eq!(request.await.expect("task").status(), 200);
    }
    sampler.abort();
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most <= 2, "{most} connections were open at once");
    assert!(most >= 1);
}

#[tokio::test]
async fn a_reload_keeping_the_limits_keeps_counting_the_connections_already_open() {
    let (slow, mut arrived) = holding_upstream(Duration::from_secs(2)).await;
    let config = pool_config(
        &[format!("\"{slow}\"")],
        "max_connections = 1\nconnect_timeout = \"300ms\"",
    );
    let gw = TestGateway::start(&config).await.expect("start");
    let first = send(&gw, "/first").await;
    arrived
        .recv()
        .await
        .expect("the first request holds the one connection");
    // The route changes, the upstream does not.
    gw.reload(&config.replace("name = \"all\"", "name = \"renamed\""))
        .await
        .expect("reload");
    let breaker = gw
        .upstreams()
        .into_iter()
        .find(|u| u.name == "pool")
        .expect("pool")
        .breaker;
    assert_eq!(breaker.open_connections, Some(1), "{breaker:?}");
    let waited = client().get(gw.url("/second")).send().await.expect("send");
    assert_eq!(
        waited.status(),
        503,
        "the new pools opened a connection beside the held one"
    );
    assert!(
        arrived.try_recv().is_err(),
        "the second request reached the target"
    );
    assert_eq!(first.await.expect("task").status(), 200);
    // The held connection closed: the limit's one connection is free again.
    let third = client().get(gw.url("/third")).send().await.expect("send");
    assert_eq!(third.status(), 200);
}
