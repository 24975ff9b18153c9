//! Requests a target did not take are sent once more to another target: refused connections
//! always, and idempotent requests without a body whose connection died before the response.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wasmgate_tests::*;

/// A target that reads each request head, reports its method on the channel, and closes the
/// connection without answering: a target dying with requests in flight.
async fn dying_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut head = [0u8; 16];
            let n = tokio::io::AsyncReadExt::read(&mut s, &mut head)
                .await
                .unwrap_or(0);
            let method = String::from_utf8_lossy(&head[..n])
                .split(' ')
                .next()
                .unwrap_or("")
                .to_owned();
            // Read the rest of the head so that closing resets nothing unread.
            read_request_head(&mut s).await;
            let _ = tx.send(method);
        }
    });
    (addr, rx)
}

fn two_targets(first: SocketAddr, second: SocketAddr) -> String {
    format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.pool]
        targets = ["{first}", "{second}"]
        [[routes]]
        name = "all"
        upstream = "pool"
        "#
    )
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_target_whatever_the_method() {
    let up = echo_upstream("alive").await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let dead = closed_port();
        // Round-robin starts with the first target: the dead one gets the first request.
        let gw = TestGateway::start(&two_targets(dead, up))
            .await
            .expect("start");
        let resp = client()
            .request(method.clone(), gw.url("/r"))
            .body("a body is no obstacle: nothing was sent")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200, "{method}");
        let retries =
            format!("wasmgate_upstream_retries_total{{upstream=\"pool\",target=\"{dead}\"}}");
        assert_eq!(gw.metric(&retries), 1, "{method}: {}", gw.metrics());
        let refused = format!(
            "wasmgate_upstream_requests_total{{upstream=\"pool\",target=\"{dead}\",outcome=\"connect_error\"}}"
        );
        assert_eq!(gw.metric(&refused), 1, "{method}");
    }
}

#[tokio::test]
async fn an_idempotent_request_whose_connection_dies_is_retried_and_a_post_is_not() {
    let (dying, mut arrived) = dying_upstream().await;
    let up = echo_upstream("alive").await;
    let gw = TestGateway::start(&two_targets(dying, up))
        .await
        .expect("start");
    let c = client();
    for _ in 0..4 {
        let resp = c.get(gw.url("/g")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
    }
    let mut gets = 0;
    while let Ok(method) = arrived.try_recv() {
        assert_eq!(method, "GET");
        gets += 1;
    }
    assert!(gets >= 1, "the dying target got none of the GETs");
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_retries_total{{upstream=\"pool\",target=\"{dying}\"}}"
        )),
        gets,
    );

    // A POST may have had an effect: it is not sent twice.
    let mut failed = 0;
    for _ in 0..4 {
        let resp = c.post(gw.url("/p")).body("x").send().await.expect("send");
        if resp.status() == 502 {
            failed += 1;
        } else {
            assert_eq!(resp.status(), 200);
        }
    }
    let mut posts = 0;
    while let Ok(method) = arrived.try_recv() {
        assert_eq!(method, "POST");
        posts += 1;
    }
    assert!(posts >= 1, "the dying target got none of the POSTs");
    assert_eq!(failed, posts, "every POST the dying target took failed");
}

#[tokio::test]
async fn with_one_target_a_refused_connection_is_retried_once_on_it() {
    let dead = closed_port();
    let gw = TestGateway::start(&proxy_everything_to(dead, ""))
        .await
        .expect("start");
    let resp = client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 502);
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_requests_total{{upstream=\"u\",target=\"{dead}\",outcome=\"connect_error\"}}"
        )),
        2
    );
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_retries_total{{upstream=\"u\",target=\"{dead}\"}}"
        )),
        1
    );
}

const UNAVAILABLE: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

fn pool_with(targets: &[SocketAddr], retries: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    pool_config(&targets, &format!("retries = {{ {retries} }}"))
}

fn count(c: &std::sync::atomic::AtomicUsize) -> usize {
    c.load(std::sync::atomic::Ordering::SeqCst)
}

async fn echoed_body_bytes(resp: reqwest::Response) -> u64 {
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.expect("echo json");
    json["body_bytes"].as_u64().expect("body_bytes")
}

#[tokio::test]
async fn a_retried_status_goes_to_another_target() {
    let (failing, got) = fixed_upstream(UNAVAILABLE).await;
    let up = echo_upstream("alive").await;
    let gw = TestGateway::start(&pool_with(&[failing, up], "statuses = [503]"))
        .await
        .expect("start");
    let c = client();
    for _ in 0..4 {
        let resp = c.get(gw.url("/")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
    }
    assert!(count(&got) >= 1, "the failing target got no request");
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_retries_total{{upstream=\"pool\",target=\"{failing}\"}}"
        )),
        count(&got) as u64
    );
}

#[tokio::test]
async fn attempts_bound_the_tries_which_go_back_to_tried_targets_when_all_were() {
    let (a, got_a) = fixed_upstream(UNAVAILABLE).await;
    let (b, got_b) = fixed_upstream(UNAVAILABLE).await;
    for (attempts, tries) in [(0, 1), (1, 2), (4, 5)] {
        let retries = format!(
            "statuses = [503], attempts = {attempts}, backoff = \"1ms\", max_backoff = \"2ms\""
        );
        let gw = TestGateway::start(&pool_with(&[a, b], &retries))
            .await
            .expect("start");
        let before = count(&got_a) + count(&got_b);
        let resp = client().get(gw.url("/")).send().await.expect("send");
        assert_eq!(
            resp.status(),
            503,
            "the last try's answer goes to the client"
        );
        assert_eq!(
            count(&got_a) + count(&got_b) - before,
            tries,
            "attempts = {attempts}"
        );
    }
}

#[tokio::test]
async fn a_retry_after_beyond_max_backoff_sends_the_answer_to_the_client() {
    let (busy, got) = fixed_upstream(
        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 120\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    let gw = TestGateway::start(&pool_with(&[busy], "statuses = [503], attempts = 3"))
        .await
        .expect("start");
    let resp = client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "120");
    assert_eq!(count(&got), 1, "retried before the target asked");
}

#[tokio::test]
async fn a_request_body_is_sent_again_for_put_and_for_post_with_methods_all() {
    let up = echo_upstream("alive").await;
    for (method, retries, retried) in [
        (reqwest::Method::PUT, "", true),
        (reqwest::Method::POST, "methods = \"all\"", true),
        // One byte more than `max_body`: nothing kept, nothing sent again.
        (reqwest::Method::PUT, "max_body = 4", false),
    ] {
        let (dying, mut arrived) = dying_upstream().await;
        let gw = TestGateway::start(&pool_with(&[dying, up], retries))
            .await
            .expect("start");
        // Round-robin: the first request goes to the dying target.
        let resp = client()
            .request(method.clone(), gw.url("/"))
            .body("hello")
            .send()
            .await
            .expect("send");
        assert_eq!(arrived.recv().await.as_deref(), Some(method.as_str()));
        if retried {
            assert_eq!(echoed_body_bytes(resp).await, 5, "{method} {retries}");
        } else {
            assert_eq!(resp.status(), 502, "{method} {retries}");
        }
    }
}

#[tokio::test]
async fn a_try_beyond_per_try_timeout_is_retried_on_another_target() {
    let (slow, mut arrived) = holding_upstream(Duration::from_secs(10)).await;
    let up = echo_upstream("alive").await;
    let gw = TestGateway::start(&pool_with(&[slow, up], "per_try_timeout = \"200ms\""))
        .await
        .expect("start");
    let started = Instant::now();
    let resp = client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-server"], "alive");
    assert!(arrived.try_recv().is_ok(), "the slow target got no request");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_spent_retry_budget_sends_the_answer_to_the_client() {
    let (failing, got) = fixed_upstream(UNAVAILABLE).await;
    let up = echo_upstream("alive").await;
    let retries = "statuses = [503], budget_percent = 1, min_retry_concurrency = 0";
    let gw = TestGateway::start(&pool_with(&[failing, up], retries))
        .await
        .expect("start");
    let resp = client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 503);
    assert_eq!(count(&got), 1);
    assert_eq!(
        gw.metric("wasmgate_upstream_retry_overflows_total{upstream=\"pool\"}"),
        1
    );
}

/// A target that reads each request head, reports it, and resets the connection (RST, not a
/// FIN: zero linger) without answering.
async fn resetting_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            if read_request_head(&mut s).await {
                let _ = tx.send(());
                s.set_zero_linger().expect("SO_LINGER 0");
                drop(s);
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn an_idempotent_request_reset_before_its_response_is_retried_on_another_target() {
    let (resetting, mut arrived) = resetting_upstream().await;
    let up = echo_upstream("alive").await;
    let gw = TestGateway::start(&two_targets(resetting, up))
        .await
        .expect("start");
    // Round-robin starts with the first target: the resetting one gets the first request.
    let resp = client().get(gw.url("/r")).send().await.expect("send");
    assert_eq!(served_by(&resp), "alive");
    assert!(
        arrived.try_recv().is_ok(),
        "the resetting target got no request"
    );
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_retries_total{{upstream=\"pool\",target=\"{resetting}\"}}"
        )),
        1
    );
}

#[tokio::test]
async fn the_upstream_timeout_bounds_every_try_together() {
    let mut targets = Vec::new();
    let mut arrivals = Vec::new();
    for _ in 0..3 {
        let (slow, arrived) = holding_upstream(Duration::from_secs(10)).await;
        targets.push(format!("\"{slow}\""));
        arrivals.push(arrived);
    }
    // Ten tries of 400 ms would take 4 s; the upstream's `timeout` ends them all after 1 s.
    let keys = "timeout = \"1s\"\n\
                retries = { attempts = 10, per_try_timeout = \"400ms\", backoff = \"1ms\", max_backoff = \"2ms\" }";
    let gw = TestGateway::start(&pool_config(&targets, keys))
        .await
        .expect("start");
    let started = Instant::now();
    let resp = client().get(gw.url("/")).send().await.expect("send");
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}"
    );
    let mut tries = 0;
    for arrived in &mut arrivals {
        while arrived.try_recv().is_ok() {
            tries += 1;
        }
    }
    assert!(
        (2..=3).contains(&tries),
        "{tries} tries fit in 1 s at 400 ms each"
    );
}

#[tokio::test]
async fn a_request_retried_twice_takes_one_place_in_the_retry_budget() {
    let mut targets = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let (failing, got) = fixed_upstream(UNAVAILABLE).await;
        targets.push(failing);
        counts.push(got);
    }
    // Room for one retry in flight: the request's second retry must not count it twice.
    let retries = "statuses = [503], attempts = 2, budget_percent = 1, min_retry_concurrency = 1, \
                   backoff = \"1ms\", max_backoff = \"2ms\"";
    let gw = TestGateway::start(&pool_with(&targets, retries))
        .await
        .expect("start");
    let resp = client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 503);
    let tries: Vec<usize> = counts.iter().map(|c| count(c)).collect();
    assert_eq!(tries, [1, 1, 1], "each target tried once");
    assert_eq!(
        gw.metric("wasmgate_upstream_retry_overflows_total{upstream=\"pool\"}"),
        0
    );
}

/// A target that answers `200` with a 10-byte body of which it sends half, and the rest once
/// `go` says so (at once for every request after that).
async fn half_answering_upstream(go: tokio::sync::watch::Receiver<bool>) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut go = go.clone();
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
                let _ = go.wait_for(|go| *go).await;
                let _ = s.write_all(b"world").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_retry_holds_its_place_in_the_budget_until_its_response_body_ends() {
    let (failing, _) = fixed_upstream(UNAVAILABLE).await;
    let (go, wait) = tokio::sync::watch::channel(false);
    let half = half_answering_upstream(wait).await;
    let retries = "statuses = [503], min_retry_concurrency = 1";
    let gw = TestGateway::start(&pool_with(&[failing, half], retries))
        .await
        .expect("start");
    let c = client();
    // Round-robin: the failing target first, its retry on the other, whose body stalls.
    let first = c.get(gw.url("/first")).send().await.expect("send");
    assert_eq!(first.status(), 200);
    // The failing target again: the one place in the budget is the first request's still.
    let second = c.get(gw.url("/second")).send().await.expect("send");
    assert_eq!(second.status(), 503, "retried while the budget was spent");
    assert_eq!(
        gw.metric("wasmgate_upstream_retry_overflows_total{upstream=\"pool\"}"),
        1
    );
    go.send(true).expect("release the body");
    assert_eq!(first.text().await.expect("body"), "helloworld");
    // The body ended: its place is free, and the next retry is made.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(
            c.get(gw.url("/after"))
                .send()
                .await
                .expect("send")
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200]);
    assert_eq!(
        gw.metric("wasmgate_upstream_retry_overflows_total{upstream=\"pool\"}"),
        1
    );
}
