//! Requests a target did not take are sent once more to another target: refused connections
//! always, and idempotent requests without a body whose connection died before the response.

use std::net::SocketAddr;

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
async fn with_one_target_a_refused_connection_is_not_retried() {
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
        1
    );
}
