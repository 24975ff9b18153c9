//! `balance`: consistent hashing keeps a key on its target, least_request avoids a busy target,
//! random follows the weights — over real upstreams.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use wasmgate_tests::*;

async fn echo_targets(names: &[&str]) -> Vec<String> {
    let mut targets = Vec::new();
    for name in names {
        targets.push(format!("\"{}\"", echo_upstream(name).await));
    }
    targets
}

/// A gateway whose upstream `pool` of `targets` hashes on the `x-user` header.
async fn hashing_on_x_user(targets: &[String]) -> TestGateway {
    let keys = "balance = \"hash\"\nhash_on = \"header:x-user\"";
    TestGateway::start(&pool_config(targets, keys))
        .await
        .expect("start")
}

#[tokio::test]
async fn hash_on_a_header_keeps_each_key_on_one_target() {
    let targets = echo_targets(&["a", "b", "c"]).await;
    let gw = hashing_on_x_user(&targets).await;
    let c = client();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..20 {
            let user = format!("user-{user}");
            let resp = c
                .get(gw.url("/"))
                .header("x-user", &user)
                .send()
                .await
                .expect("send");
            let server = served_by(&resp);
            let first = owner.entry(user.clone()).or_insert_with(|| server.clone());
            assert_eq!(*first, server, "{user} moved in round {round}");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "20 keys all on one target: {owner:?}");
}

#[tokio::test]
async fn hash_on_a_cookie_sticks_and_requests_without_it_are_spread() {
    let targets = echo_targets(&["a", "b"]).await;
    let gw = TestGateway::start(&pool_config(
        &targets,
        r#"balance = "hash"
        hash_on = "cookie:session""#,
    ))
    .await
    .expect("start");
    let c = client();
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let resp = c
            .get(gw.url("/"))
            .header("cookie", "theme=dark; session=s-42")
            .send()
            .await
            .expect("send");
        seen.insert(served_by(&resp));
    }
    assert_eq!(seen.len(), 1, "one session, one target: {seen:?}");
    // Without the cookie: round-robin.
    let mut spread = HashSet::new();
    for _ in 0..4 {
        spread.insert(served_by(&c.get(gw.url("/")).send().await.expect("send")));
    }
    assert_eq!(spread.len(), 2, "{spread:?}");
}

#[tokio::test]
async fn least_request_sends_new_requests_away_from_a_busy_target() {
    let (busy, mut arrived) = holding_upstream(Duration::from_secs(3)).await;
    let idle: SocketAddr = echo_upstream("idle").await;
    let gw = TestGateway::start(&pool_config(
        &[format!("\"{busy}\""), format!("\"{idle}\"")],
        r#"balance = "least_request""#,
    ))
    .await
    .expect("start");
    // With nothing in flight either target may get a request: send until one is held.
    let mut held = Vec::new();
    loop {
        let c = client();
        let url = gw.url("/held");
        let mut request = tokio::spawn(async move { c.get(url).send().await });
        tokio::select! {
            _ = arrived.recv() => { held.push(request); break; }
            done = &mut request => {
                assert_eq!(done.expect("task").expect("send").status(), 200);
            }
        }
    }
    // The busy target has one request in flight and the idle one none: every new request
    // goes to the idle one.
    let c = client();
    for _ in 0..10 {
        let server = served_by(&c.get(gw.url("/")).send().await.expect("send"));
        assert_eq!(server, "idle");
    }
    assert!(
        arrived.try_recv().is_err(),
        "the busy target got another request"
    );
    for request in held {
        request.abort();
    }
}

#[tokio::test]
async fn random_follows_the_weights() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let gw = TestGateway::start(&pool_config(
        &[
            format!("\"{a}\""),
            format!("{{ address = \"{b}\", weight = 3 }}"),
        ],
        r#"balance = "random""#,
    ))
    .await
    .expect("start");
    let c = client();
    let mut to_b = 0;
    for _ in 0..400 {
        if served_by(&c.get(gw.url("/")).send().await.expect("send")) == "b" {
            to_b += 1;
        }
    }
    // Expected 300, standard deviation 8.7: the bounds are seven of them away.
    assert!(
        (240..=360).contains(&to_b),
        "{to_b} of 400 to the weight-3 target"
    );
}

#[tokio::test]
async fn keys_of_an_ejected_target_stick_to_the_next_one_on_the_ring() {
    let dead = closed_port();
    let mut targets = vec![format!("\"{dead}\"")];
    targets.extend(echo_targets(&["a", "b"]).await);
    let gw = hashing_on_x_user(&targets).await;
    let c = client();
    let ask = |user: String| {
        let (c, url) = (c.clone(), gw.url("/"));
        async move {
            let resp = c
                .get(url)
                .header("x-user", user)
                .send()
                .await
                .expect("send");
            served_by(&resp)
        }
    };
    // The first round finds the dead target (refused, retried elsewhere, ejected).
    for user in 0..30 {
        ask(format!("user-{user}")).await;
    }
    let refused = format!(
        "wasmgate_upstream_requests_total{{upstream=\"pool\",target=\"{dead}\",outcome=\"connect_error\"}}"
    );
    assert_eq!(
        gw.metric(&refused),
        1,
        "30 keys and none on a third of the ring?"
    );
    // From then on every key, including the dead target's, keeps one live target.
    let mut owner = std::collections::HashMap::new();
    for _ in 0..2 {
        for user in 0..30 {
            let server = ask(format!("user-{user}")).await;
            let first = owner.entry(user).or_insert_with(|| server.clone());
            assert_eq!(
                *first, server,
                "user-{user} moved while the dead target is ejected"
            );
        }
    }
}

#[tokio::test]
async fn hash_on_ip_keeps_each_client_address_on_one_target() {
    let targets = echo_targets(&["a", "b", "c"]).await;
    let gw = TestGateway::start(&pool_config(
        &targets,
        "balance = \"hash\"\nhash_on = \"ip\"",
    ))
    .await
    .expect("start");
    let mut owner: HashMap<u8, String> = HashMap::new();
    // Real peers of their own: every 127.x.y.z is the loopback interface on Linux.
    for host in 2..22u8 {
        let c = reqwest::Client::builder()
            .no_proxy()
            .local_address(std::net::IpAddr::from([127, 0, 0, host]))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        for path in ["/", "/other", "/third?x=1"] {
            let resp = c
                .get(gw.url(path))
                .header("x-user", path)
                .send()
                .await
                .expect("send");
            let server = served_by(&resp);
            let first = owner.entry(host).or_insert_with(|| server.clone());
            assert_eq!(*first, server, "127.0.0.{host} moved for {path}");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "20 addresses all on one target: {owner:?}");
}

#[tokio::test]
async fn hash_on_path_keeps_each_path_on_one_target_whatever_the_query_or_client() {
    let targets = echo_targets(&["a", "b", "c"]).await;
    let gw = TestGateway::start(&pool_config(
        &targets,
        "balance = \"hash\"\nhash_on = \"path\"",
    ))
    .await
    .expect("start");
    let c = client();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for item in 0..20 {
            let path = format!("/items/{item}");
            let resp = c
                .get(gw.url(&format!("{path}?round={round}")))
                .header("x-user", format!("user-{round}"))
                .send()
                .await
                .expect("send");
            let server = served_by(&resp);
            let first = owner.entry(path.clone()).or_insert_with(|| server.clone());
            assert_eq!(*first, server, "{path} moved in round {round}");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "20 paths all on one target: {owner:?}");
}
