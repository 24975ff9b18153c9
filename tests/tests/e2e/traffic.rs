//! Traffic management over real upstreams: a route's `upstreams` split by weight, pinned by a
//! header or cookie, sticky by a key (and a weight change by reload moves only the keys it must,
//! dropping no request); `mirror` copies requests with their bodies without the client ever
//! noticing the mirror.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use wasmgate_tests::*;

fn split_config(v1: SocketAddr, v2: SocketAddr, upstreams: &str, extra: &str) -> String {
    format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.v1]
        targets = ["{v1}"]
        [upstreams.v2]
        targets = ["{v2}"]
        [[routes]]
        name = "api"
        upstreams = {upstreams}
        {extra}
        "#
    )
}

#[tokio::test]
async fn weights_split_requests_between_upstreams() {
    let (v1, v2) = (echo_upstream("v1").await, echo_upstream("v2").await);
    let config = split_config(
        v1,
        v2,
        r#"[{ name = "v1", weight = 90 }, { name = "v2", weight = 10 }]"#,
        "",
    );
    let gw = TestGateway::start(&config).await.expect("start");
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..1000 {
        let by = served_by(&c.get(gw.url("/x")).send().await.expect("send"));
        *counts.entry(by).or_default() += 1;
    }
    let canary = counts.get("v2").copied().unwrap_or(0);
    assert!(
        (60..=140).contains(&canary),
        "v2 got {canary} of 1000 at weight 10 of 100"
    );
    assert_eq!(counts.get("v1").copied().unwrap_or(0) + canary, 1000);
    assert_eq!(
        gw.metric(r#"wasmgate_split_decisions_total{route="api",upstream="v2",by="weight"}"#),
        canary as u64
    );
}

#[tokio::test]
async fn a_canary_header_or_cookie_pins_the_request_before_weights() {
    let (v1, v2) = (echo_upstream("v1").await, echo_upstream("v2").await);
    // v2 twice: pinned by a header, and (as "v2-beta") by a cookie.
    let config = split_config(
        v1,
        v2,
        r#"[
            { name = "v1" },
            { name = "v2", weight = 0, headers = { x-canary = "1" } },
            { name = "v2-beta", weight = 0, cookies = { beta = "yes" } },
        ]"#,
        "",
    )
    .replace(
        "[upstreams.v2]",
        &format!("[upstreams.v2-beta]\ntargets = [\"{v2}\"]\n[upstreams.v2]"),
    );
    let gw = TestGateway::start(&config).await.expect("start");
    let c = client();
    for _ in 0..20 {
        assert_eq!(served_by(&c.get(gw.url("/")).send().await.unwrap()), "v1");
    }
    let pinned = c
        .get(gw.url("/"))
        .header("x-canary", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&pinned), "v2");
    let other_value = c
        .get(gw.url("/"))
        .header("x-canary", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&other_value), "v1", "only the exact value pins");
    let cookie = c
        .get(gw.url("/"))
        .header("cookie", "theme=dark; beta=yes")
        .send()
        .await
        .unwrap();
    assert_eq!(served_by(&cookie), "v2");
    assert_eq!(
        gw.metric(r#"wasmgate_split_decisions_total{route="api",upstream="v2",by="pin"}"#),
        1
    );
}

#[tokio::test]
async fn a_cached_answer_never_crosses_from_one_split_upstream_to_another() {
    let (v1, v2) = (echo_upstream("v1").await, echo_upstream("v2").await);
    let config = split_config(
        v1,
        v2,
        r#"[{ name = "v1" }, { name = "v2", weight = 0, headers = { x-canary = "1" } }]"#,
        r#"cache = { ttl = "1h" }"#,
    );
    let gw = TestGateway::start(&config).await.expect("start");
    let c = client();
    let get = |canary: bool| {
        let mut req = c.get(gw.url("/page"));
        if canary {
            req = req.header("x-canary", "1");
        }
        async move {
            let resp = req.send().await.expect("send");
            let x_cache = resp.headers()["x-cache"]
                .to_str()
                .expect("x-cache")
                .to_owned();
            (served_by(&resp), x_cache)
        }
    };
    let expected = [
        (false, "v1", "MISS"),
        (false, "v1", "HIT"),
        // Same URL, pinned to the canary: v1's stored answer must not be it.
        (true, "v2", "MISS"),
        (true, "v2", "HIT"),
        (false, "v1", "HIT"),
    ];
    for (step, (canary, upstream, x_cache)) in expected.into_iter().enumerate() {
        let (by, cache) = get(canary).await;
        assert_eq!(
            (by.as_str(), cache.as_str()),
            (upstream, x_cache),
            "request {step}"
        );
    }

    // The route stops splitting: its entries, keyed by upstream, could never be found again,
    // so the reload starts a cache of its own rather than keep them weighing on `max_size`.
    let single = config.replace(
        r#"upstreams = [{ name = "v1" }, { name = "v2", weight = 0, headers = { x-canary = "1" } }]"#,
        r#"upstream = "v1""#,
    );
    assert_ne!(single, config);
    gw.reload(&single).await.expect("reload");
    assert_eq!(get(false).await, ("v1".to_owned(), "MISS".to_owned()));
    assert_eq!(get(false).await, ("v1".to_owned(), "HIT".to_owned()));
    assert_eq!(
        gw.purge_cache("api", "/page"),
        1,
        "only the new entry is held"
    );
}

#[tokio::test]
async fn sticky_keys_stay_and_a_reloaded_weight_moves_only_the_keys_it_must() {
    let (v1, v2) = (echo_upstream("v1").await, echo_upstream("v2").await);
    let weights = |a: u32, b: u32| {
        split_config(
            v1,
            v2,
            &format!(r#"[{{ name = "v1", weight = {a} }}, {{ name = "v2", weight = {b} }}]"#),
            r#"sticky = "header:x-user""#,
        )
    };
    let gw = TestGateway::start_in(workdir(), &weights(90, 10))
        .await
        .expect("start");
    let c = client();
    let owners = async |c: &reqwest::Client| {
        let mut owners = HashMap::new();
        for user in 0..200 {
            let user = format!("user-{user}");
            let resp = c
                .get(gw.url("/"))
                .header("x-user", &user)
                .send()
                .await
                .unwrap();
            owners.insert(user, served_by(&resp));
        }
        owners
    };
    let before = owners(&c).await;
    assert_eq!(before, owners(&c).await, "each key stays on its upstream");
    let on_v2 = before.values().filter(|v| *v == "v2").count();
    assert!(
        (5..=45).contains(&on_v2),
        "{on_v2} of 200 keys on v2 at 10%"
    );

    // A reload under steady load: nothing fails, and keys only move from v1 to v2.
    let failures = Arc::new(AtomicUsize::new(0));
    let load = {
        let (url, failures) = (gw.url("/load"), failures.clone());
        tokio::spawn(async move {
            let c = client();
            for _ in 0..300 {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    gw.reload(&weights(50, 50)).await.expect("reload");
    load.await.expect("load");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a reload drops nothing"
    );
    let after = owners(&c).await;
    let moved: Vec<_> = before
        .iter()
        .filter(|(user, was)| after[*user] != **was)
        .collect();
    assert!(
        moved.iter().all(|(_, was)| *was == "v1"),
        "keys moved from v2: {moved:?}"
    );
    let on_v2 = after.values().filter(|v| *v == "v2").count();
    assert!(
        (70..=130).contains(&on_v2),
        "{on_v2} of 200 keys on v2 at 50%"
    );
}

fn mirrored_config(primary: SocketAddr, shadow: SocketAddr, mirror: &str) -> String {
    format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.main]
        targets = ["{primary}"]
        [upstreams.shadow]
        targets = ["{shadow}"]
        timeout = "10s"
        [[routes]]
        name = "api"
        upstream = "main"
        mirror = {mirror}
        "#
    )
}

fn ok(body: &'static str) -> http::Response<Full<Bytes>> {
    http::Response::new(Full::new(Bytes::from_static(body.as_bytes())))
}

#[tokio::test]
async fn a_mirror_gets_a_copy_with_its_body_and_the_client_only_the_primary_answer() {
    let primary = echo_upstream("primary").await;
    let shadow = ScriptedUpstream::start(|_| async { ok("from the shadow") }).await;
    let gw = TestGateway::start(&mirrored_config(
        primary,
        shadow.addr,
        r#"{ upstream = "shadow" }"#,
    ))
    .await
    .expect("start");
    let resp = client()
        .post(gw.url("/orders?x=1"))
        .header("x-trace", "t1")
        .body("a body to copy")
        .send()
        .await
        .expect("send");
    assert_eq!(served_by(&resp), "primary");
    assert!(
        shadow.wait_for(1, Duration::from_secs(5)).await,
        "the copy arrived"
    );
    let copy = &shadow.requests()[0];
    assert_eq!(copy.method, http::Method::POST);
    assert_eq!(copy.target, "/orders?x=1");
    assert_eq!(copy.body, Bytes::from_static(b"a body to copy"));
    assert_eq!(copy.headers["x-trace"], "t1");
    assert_eq!(copy.headers["x-wasmgate-mirror"], "1");
    eventually(
        Duration::from_secs(5),
        "the copy is counted as sent",
        || {
            gw.metric(
                r#"wasmgate_mirror_requests_total{route="api",upstream="shadow",outcome="sent"}"#,
            ) == 1
        },
    )
    .await;
}

#[tokio::test]
async fn a_slow_mirror_never_delays_the_client_and_its_copies_are_bounded() {
    let primary = echo_upstream("primary").await;
    let in_mirror = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let shadow = {
        let (in_mirror, most) = (in_mirror.clone(), most.clone());
        ScriptedUpstream::start(move |_| {
            let (in_mirror, most) = (in_mirror.clone(), most.clone());
            async move {
                let now = in_mirror.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                in_mirror.fetch_sub(1, Ordering::SeqCst);
                ok("slow")
            }
        })
        .await
    };
    let gw = TestGateway::start(&mirrored_config(
        primary,
        shadow.addr,
        r#"{ upstream = "shadow", max_in_flight = 2 }"#,
    ))
    .await
    .expect("start");
    let c = client();
    let started = Instant::now();
    for _ in 0..20 {
        let resp = c.get(gw.url("/x")).send().await.expect("send");
        assert_eq!(served_by(&resp), "primary");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "20 requests waited on a mirror that takes 2 s each: {:?}",
        started.elapsed()
    );
    assert_eq!(
        gw.metric(
            r#"wasmgate_mirror_requests_total{route="api",upstream="shadow",outcome="dropped"}"#
        ),
        18,
        "beyond max_in_flight copies are dropped"
    );
    assert!(shadow.wait_for(2, Duration::from_secs(5)).await);
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "at most max_in_flight copies at once"
    );
}

#[tokio::test]
async fn a_failing_mirror_and_an_oversized_body_are_counted_not_felt() {
    let primary = echo_upstream("primary").await;
    let gw = TestGateway::start(&mirrored_config(
        primary,
        closed_port(),
        r#"{ upstream = "shadow", max_body = "16B" }"#,
    ))
    .await
    .expect("start");
    let c = client();
    let resp = c.get(gw.url("/x")).send().await.expect("send");
    assert_eq!(served_by(&resp), "primary");
    let resp = c
        .post(gw.url("/x"))
        .body("a body longer than sixteen bytes")
        .send()
        .await
        .expect("send");
    assert_eq!(served_by(&resp), "primary");
    eventually(
        Duration::from_secs(5),
        "the refused copy is counted",
        || {
            gw.metric(
                r#"wasmgate_mirror_requests_total{route="api",upstream="shadow",outcome="failed"}"#,
            ) == 1
        },
    )
    .await;
    assert_eq!(
        gw.metric(
            r#"wasmgate_mirror_requests_total{route="api",upstream="shadow",outcome="dropped"}"#
        ),
        1,
        "a body over max_body is not copied"
    );
}

#[tokio::test]
async fn percent_selects_a_share_of_requests() {
    let primary = echo_upstream("primary").await;
    let shadow = ScriptedUpstream::start(|_| async { ok("") }).await;
    let gw = TestGateway::start(&mirrored_config(
        primary,
        shadow.addr,
        r#"{ upstream = "shadow", percent = 20 }"#,
    ))
    .await
    .expect("start");
    let c = client();
    for _ in 0..500 {
        c.get(gw.url("/x")).send().await.expect("send");
    }
    eventually(Duration::from_secs(5), "copies answered", || {
        let sent = gw.metric(
            r#"wasmgate_mirror_requests_total{route="api",upstream="shadow",outcome="sent"}"#,
        );
        sent as usize == shadow.count()
    })
    .await;
    let copies = shadow.count();
    assert!(
        (60..=140).contains(&copies),
        "{copies} of 500 mirrored at 20%"
    );
}
