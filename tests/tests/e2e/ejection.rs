//! `outlier_detection`: targets failing in a row are ejected for a time that grows with each
//! ejection, never more than `max_ejection_percent` of them, against real upstreams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wasmgate_tests::*;

/// A target that answers every request with a 500 (and closes the connection).
async fn failing_upstream() -> SocketAddr {
    fixed_upstream(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\
          x-echo-server: failing\r\nconnection: close\r\n\r\n",
    )
    .await
    .0
}

fn pool_of(targets: &[SocketAddr], outlier: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    pool_config(&targets, &format!("outlier_detection = {{ {outlier} }}"))
}

async fn status(c: &reqwest::Client, gw: &TestGateway) -> u16 {
    c.get(gw.url("/"))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

/// How long until a request gets `failing` again (the failing target is back in rotation);
/// every other answer must be the healthy target's 200.
async fn until_status(c: &reqwest::Client, gw: &TestGateway, failing: u16) -> Duration {
    let started = Instant::now();
    loop {
        let answer = status(c, gw).await;
        if answer == failing {
            return started.elapsed();
        }
        assert_eq!(answer, 200, "only the failing target fails");
        assert!(started.elapsed() < Duration::from_secs(5), "never back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn server_errors_in_a_row_eject_a_target_while_the_other_serves() {
    let failing = failing_upstream().await;
    let healthy = echo_upstream("healthy").await;
    let gw = TestGateway::start(&pool_of(&[failing, healthy], "consecutive_5xx = 3"))
        .await
        .expect("start");
    let c = client();
    // Round-robin: the failing target answers every other request, 500 each time, until its
    // third in a row ejects it.
    let mut first = Vec::new();
    for _ in 0..6 {
        first.push(status(&c, &gw).await);
    }
    assert_eq!(first.iter().filter(|&&s| s == 500).count(), 3, "{first:?}");
    for _ in 0..10 {
        assert_eq!(
            status(&c, &gw).await,
            200,
            "the ejected target got a request"
        );
    }
    let ejections =
        format!("wasmgate_upstream_ejections_total{{upstream=\"pool\",target=\"{failing}\"}}");
    assert_eq!(gw.metric(&ejections), 1);
}

#[tokio::test]
async fn each_ejection_in_a_row_lasts_one_base_ejection_longer() {
    let failing = failing_upstream().await;
    let healthy = echo_upstream("healthy").await;
    let gw = TestGateway::start(&pool_of(
        &[failing, healthy],
        r#"consecutive_5xx = 1, base_ejection = "300ms", max_ejection = "10s""#,
    ))
    .await
    .expect("start");
    let c = client();
    until_status(&c, &gw, 500).await;
    let first = until_status(&c, &gw, 500).await;
    let second = until_status(&c, &gw, 500).await;
    assert!(
        first >= Duration::from_millis(280) && first < Duration::from_millis(580),
        "first ejection {first:?}"
    );
    assert!(
        second >= Duration::from_millis(580) && second < Duration::from_millis(1200),
        "second ejection {second:?}"
    );
    let ejections =
        format!("wasmgate_upstream_ejections_total{{upstream=\"pool\",target=\"{failing}\"}}");
    assert_eq!(gw.metric(&ejections), 3);
}

#[tokio::test]
async fn a_target_that_served_for_a_base_ejection_is_ejected_afresh_next_time() {
    let mut flaky = KillableUpstream::start("flaky").await;
    let healthy = echo_upstream("healthy").await;
    let gw = TestGateway::start(&pool_of(
        &[flaky.addr, healthy],
        r#"base_ejection = "300ms", max_ejection = "10s""#,
    ))
    .await
    .expect("start");
    let c = client();
    let addr = flaky.addr;
    let in_row = |gw: &TestGateway| gw.target("pool", addr).ejections_in_row;
    // Down: its first connect failure ejects it (the request goes to the other target).
    flaky.kill().await;
    for _ in 0..2 {
        assert_eq!(status(&c, &gw).await, 200);
    }
    assert_eq!(in_row(&gw), 1);
    // Back, and answering for longer than a base_ejection after its ejection ended.
    flaky.restart().await;
    eventually(Duration::from_secs(5), "the ejection ends", || {
        gw.target("pool", addr).ejected_for.is_none()
    })
    .await;
    let served_since = Instant::now();
    while served_since.elapsed() < Duration::from_millis(400) {
        assert_eq!(status(&c, &gw).await, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        in_row(&gw),
        0,
        "serving for a base_ejection starts the count over"
    );
    // Down again: a first ejection (300 ms), not a second one (600 ms).
    flaky.kill().await;
    for _ in 0..2 {
        assert_eq!(status(&c, &gw).await, 200);
    }
    let state = gw.target("pool", addr);
    assert_eq!(state.ejections_in_row, 1);
    assert!(
        state
            .ejected_for
            .is_some_and(|d| d <= Duration::from_millis(300)),
        "{:?}",
        state.ejected_for
    );
}

#[tokio::test]
async fn no_more_than_max_ejection_percent_of_the_targets_are_ejected() {
    let (a, b) = (failing_upstream().await, failing_upstream().await);
    let gw = TestGateway::start(&pool_of(
        &[a, b],
        "consecutive_5xx = 1, max_ejection_percent = 50",
    ))
    .await
    .expect("start");
    let c = client();
    for _ in 0..6 {
        assert_eq!(status(&c, &gw).await, 500);
    }
    let ejected = |t: SocketAddr| {
        gw.metric(&format!(
            "wasmgate_upstream_ejections_total{{upstream=\"pool\",target=\"{t}\"}}"
        ))
    };
    assert_eq!(
        ejected(a) + ejected(b),
        1,
        "one of two targets at most (50 %)"
    );
}

#[tokio::test]
async fn an_ejection_survives_a_reload_that_keeps_the_targets_and_not_one_that_changes_them() {
    let dead = closed_port();
    let alive = echo_upstream("alive").await;
    let config = |extra: &str| {
        format!(
            "{}{extra}",
            pool_of(
                &[dead, alive],
                r#"base_ejection = "1m", max_ejection = "1m""#
            )
        )
    };
    let gw = TestGateway::start(&config("")).await.expect("start");
    let c = client();
    let refused = format!(
        "wasmgate_upstream_requests_total{{upstream=\"pool\",target=\"{dead}\",outcome=\"connect_error\"}}"
    );
    // The first request is refused by the dead target (and retried on the live one): ejected.
    assert_eq!(status(&c, &gw).await, 200);
    assert_eq!(gw.metric(&refused), 1);

    // A reload that changes a route but not the upstream's targets: still ejected.
    gw.reload(&config(
        "[[routes]]\nname = \"hello\"\npaths = [\"/hello\"]\nrespond = { body = \"hi\" }\n",
    ))
    .await
    .expect("reload");
    for _ in 0..6 {
        assert_eq!(status(&c, &gw).await, 200);
    }
    assert_eq!(
        gw.metric(&refused),
        1,
        "the dead target was tried again after the reload"
    );

    // A reload that changes the targets (a weight): their health starts over.
    let reweighted = pool_config(
        &[
            format!("\"{dead}\""),
            format!("{{ address = \"{alive}\", weight = 2 }}"),
        ],
        r#"outlier_detection = { base_ejection = "1m", max_ejection = "1m" }"#,
    );
    gw.reload(&reweighted).await.expect("reload");
    for _ in 0..3 {
        assert_eq!(status(&c, &gw).await, 200);
    }
    assert_eq!(
        gw.metric(&refused),
        2,
        "the dead target was not tried after the change"
    );
}

#[tokio::test]
async fn beyond_max_requests_in_flight_requests_get_a_fast_503() {
    let (slow, mut arrived) = holding_upstream(Duration::from_secs(2)).await;
    let gw = TestGateway::start(&pool_config(&[format!("\"{slow}\"")], "max_requests = 2"))
        .await
        .expect("start");
    let mut held = Vec::new();
    for _ in 0..2 {
        let (c, url) = (client(), gw.url("/slow"));
        held.push(tokio::spawn(async move { c.get(url).send().await }));
        arrived.recv().await.expect("a request reached the target");
    }
    let started = Instant::now();
    let resp = client().get(gw.url("/third")).send().await.expect("send");
    assert_eq!(resp.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1), "not fast");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "upstream_overloaded", "{body}");
    assert!(
        arrived.try_recv().is_err(),
        "the third request reached the target"
    );
    assert_eq!(
        gw.metric("wasmgate_upstream_overflows_total{upstream=\"pool\"}"),
        1
    );
    // The two held requests finish normally, and the limit frees up with them.
    for request in held {
        let resp = request.await.expect("task").expect("send");
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await;
    }
    let resp = client().get(gw.url("/after")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_response_timeout_ejects_the_target_and_no_ejection_exceeds_max_ejection() {
    let (slow, mut arrived) = holding_upstream(Duration::from_secs(5)).await;
    let healthy = echo_upstream("healthy").await;
    let targets = [format!("\"{slow}\""), format!("\"{healthy}\"")];
    let gw = TestGateway::start(&pool_config(
        &targets,
        "timeout = \"200ms\"\n\
         outlier_detection = { base_ejection = \"600ms\", max_ejection = \"1s\" }",
    ))
    .await
    .expect("start");
    let c = client();
    // A timeout's 504 arrives 200 ms after the request was sent to the slow target.
    let wait = Duration::from_millis(200);
    until_status(&c, &gw, 504).await;
    let first = until_status(&c, &gw, 504).await.saturating_sub(wait);
    let second = until_status(&c, &gw, 504).await.saturating_sub(wait);
    assert!(
        first >= Duration::from_millis(550) && first < Duration::from_millis(850),
        "first ejection {first:?}"
    );
    // Uncapped it would be 1.2 s.
    assert!(
        second >= Duration::from_millis(900) && second < Duration::from_millis(1150),
        "second ejection {second:?}, max_ejection is 1 s"
    );
    for _ in 0..3 {
        arrived
            .recv()
            .await
            .expect("each timeout was the slow target's");
    }
}
