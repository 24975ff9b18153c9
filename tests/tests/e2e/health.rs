//! Active health checks: one checker per upstream probes every target; a target failing its
//! probes takes no requests until it passes again; the state survives a reload.

use std::time::Duration;

use wasmgate_tests::*;

const CHECK: &str = r#"health_check = { path = "/health", interval = "100ms", timeout = "500ms", healthy = 2, unhealthy = 2 }"#;

fn checked_pool(targets: &[&KillableUpstream], check: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{}\"", t.addr)).collect();
    pool_config(&targets, check)
}

async fn server(c: &reqwest::Client, gw: &TestGateway) -> String {
    let resp = c.get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    resp.headers()["x-echo-server"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

fn check_state(gw: &TestGateway, up: &KillableUpstream) -> Option<bool> {
    gw.target("pool", up.addr).check
}

#[tokio::test]
async fn a_target_failing_its_checks_takes_no_requests_until_it_passes_again() {
    let a = KillableUpstream::start("a").await;
    let b = KillableUpstream::start("b").await;
    let gw = TestGateway::start(&checked_pool(&[&a, &b], CHECK))
        .await
        .expect("start");
    let c = client();
    eventually(Duration::from_secs(5), "a passes its first probe", || {
        check_state(&gw, &a) == Some(true)
    })
    .await;

    a.set_health(503);
    eventually(Duration::from_secs(5), "a is marked unhealthy", || {
        check_state(&gw, &a) == Some(false)
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            server(&c, &gw).await,
            "b",
            "an unhealthy target took a request"
        );
    }
    let labels = format!("upstream=\"pool\",target=\"{}\"", a.addr);
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_health_transitions_total{{{labels},to=\"unhealthy\"}}"
        )),
        1
    );
    assert_eq!(
        gw.metric(&format!("wasmgate_upstream_target_healthy{{{labels}}}")),
        0
    );
    assert!(
        gw.metric(&format!(
            "wasmgate_upstream_health_checks_total{{{labels},result=\"fail\"}}"
        )) >= 2
    );

    a.set_health(200);
    eventually(Duration::from_secs(5), "a is healthy again", || {
        check_state(&gw, &a) == Some(true)
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(server(&c, &gw).await);
    }
    assert!(
        seen.iter().any(|s| s == "a"),
        "a takes requests again: {seen:?}"
    );
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_health_transitions_total{{{labels},to=\"healthy\"}}"
        )),
        1
    );
}

#[tokio::test]
async fn a_tcp_check_takes_a_killed_target_out_before_any_request_meets_it() {
    let mut a = KillableUpstream::start("a").await;
    let b = KillableUpstream::start("b").await;
    let check =
        r#"health_check = { type = "tcp", interval = "100ms", healthy = 1, unhealthy = 1 }"#;
    let gw = TestGateway::start(&checked_pool(&[&a, &b], check))
        .await
        .expect("start");
    let c = client();
    a.kill().await;
    eventually(
        Duration::from_secs(5),
        "the killed target is unhealthy",
        || check_state(&gw, &a) == Some(false),
    )
    .await;
    for _ in 0..6 {
        assert_eq!(server(&c, &gw).await, "b");
    }
    let connect_errors = format!(
        "wasmgate_upstream_requests_total{{upstream=\"pool\",target=\"{}\",outcome=\"connect_error\"}}",
        a.addr
    );
    assert_eq!(
        gw.metric(&connect_errors),
        0,
        "a request met the dead target"
    );

    a.restart().await;
    eventually(
        Duration::from_secs(5),
        "the restarted target is healthy",
        || check_state(&gw, &a) == Some(true),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(server(&c, &gw).await);
    }
    assert!(seen.iter().any(|s| s == "a"), "{seen:?}");
}

#[tokio::test]
async fn a_passing_check_ends_an_ejection_by_outlier_detection() {
    let mut a = KillableUpstream::start("a").await;
    let b = KillableUpstream::start("b").await;
    // A long check interval: only the passive ejection sees the dead target at first.
    let keys = "outlier_detection = { base_ejection = \"5m\", max_ejection = \"5m\" }\n\
                health_check = { path = \"/health\", interval = \"300ms\", healthy = 1, unhealthy = 3 }";
    let gw = TestGateway::start(&checked_pool(&[&a, &b], keys))
        .await
        .expect("start");
    let c = client();
    a.kill().await;
    // Round-robin sends one of two requests to a: refused, ejected, retried on b.
    for _ in 0..2 {
        assert_eq!(server(&c, &gw).await, "b");
    }
    assert!(
        gw.target("pool", a.addr).ejected_for.is_some(),
        "a was not ejected"
    );
    a.restart().await;
    eventually(
        Duration::from_secs(5),
        "a passing probe ends the 5 minute ejection",
        || gw.target("pool", a.addr).ejected_for.is_none(),
    )
    .await;
}

#[tokio::test]
async fn a_reload_keeps_the_health_of_an_unchanged_upstream_and_one_checker() {
    let a = KillableUpstream::start("a").await;
    let b = KillableUpstream::start("b").await;
    let config = checked_pool(&[&a, &b], CHECK);
    let gw = TestGateway::start(&config).await.expect("start");
    a.set_health(500);
    eventually(Duration::from_secs(5), "a is marked unhealthy", || {
        check_state(&gw, &a) == Some(false)
    })
    .await;
    // The route changes, the upstream does not.
    for round in 0..3 {
        gw.reload(&config.replace("name = \"all\"", &format!("name = \"all{round}\"")))
            .await
            .expect("reload");
        assert_eq!(
            check_state(&gw, &a),
            Some(false),
            "the reload forgot a's health"
        );
        assert_eq!(server(&client(), &gw).await, "b");
    }
    // One checker after three reloads: about one probe per 100 ms interval, not four.
    let before = a.probes();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let probes = a.probes() - before;
    assert!(
        (5..=13).contains(&probes),
        "{probes} probes of a in 1 s at a 100 ms interval"
    );
}

#[tokio::test]
async fn a_reload_that_removes_the_health_check_lets_a_target_it_marked_down_serve_again() {
    let a = KillableUpstream::start("a").await;
    let b = KillableUpstream::start("b").await;
    // a fails its probes but serves requests: only the checker keeps it out.
    a.set_health(503);
    let gw = TestGateway::start(&checked_pool(&[&a, &b], CHECK))
        .await
        .expect("start");
    eventually(Duration::from_secs(5), "a is marked unhealthy", || {
        check_state(&gw, &a) == Some(false)
    })
    .await;
    // Same targets, same outlier detection: the targets' state is kept, but no checker is
    // left to bring a back.
    gw.reload(&checked_pool(&[&a, &b], ""))
        .await
        .expect("reload");
    assert_eq!(check_state(&gw, &a), None, "no check, no check state");
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(server(&c, &gw).await);
    }
    assert_eq!(
        seen.iter().filter(|s| *s == "a").count(),
        2,
        "round-robin over two usable targets: {seen:?}"
    );
    // A check added back starts from what its own probes find.
    let probes = a.probes();
    gw.reload(&checked_pool(&[&a, &b], CHECK))
        .await
        .expect("reload");
    eventually(
        Duration::from_secs(5),
        "the new checker marks a down",
        || check_state(&gw, &a) == Some(false),
    )
    .await;
    assert!(a.probes() > probes);
}

#[tokio::test]
async fn only_the_listed_statuses_pass_a_check() {
    let a = KillableUpstream::start("a").await;
    let b = KillableUpstream::start("b").await;
    // 200 is not listed: a target answering it fails its probes.
    a.set_health(200);
    b.set_health(204);
    let check = r#"health_check = { path = "/health", interval = "100ms", healthy = 1, unhealthy = 1, statuses = [204, 299] }"#;
    let gw = TestGateway::start(&checked_pool(&[&a, &b], check))
        .await
        .expect("start");
    eventually(Duration::from_secs(5), "a fails, b passes", || {
        check_state(&gw, &a) == Some(false) && check_state(&gw, &b) == Some(true)
    })
    .await;
    let c = client();
    for _ in 0..6 {
        assert_eq!(
            server(&c, &gw).await,
            "b",
            "a failing target took a request"
        );
    }
    a.set_health(299);
    eventually(
        Duration::from_secs(5),
        "a passes with a listed status",
        || check_state(&gw, &a) == Some(true),
    )
    .await;
}

#[tokio::test]
async fn with_every_target_unhealthy_each_balance_still_sends_requests_to_them() {
    let a = KillableUpstream::start("a").await;
    let b = KillableUpstream::start("b").await;
    // Both fail their probes but answer requests: refusing everything would help no one.
    a.set_health(503);
    b.set_health(503);
    for balance in [
        "round_robin",
        "least_request",
        "random",
        "hash\"\nhash_on = \"path",
    ] {
        let keys = format!("balance = \"{balance}\"\n{CHECK}");
        let gw = TestGateway::start(&checked_pool(&[&a, &b], &keys))
            .await
            .expect("start");
        eventually(Duration::from_secs(5), "both are marked unhealthy", || {
            check_state(&gw, &a) == Some(false) && check_state(&gw, &b) == Some(false)
        })
        .await;
        let c = client();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(server(&c, &gw).await);
        }
        if balance == "round_robin" {
            // Its order goes on over every target.
            assert!(
                seen.contains(&"a".into()) && seen.contains(&"b".into()),
                "{seen:?}"
            );
        }
    }
}
