//! A route's response cache over real sockets: what the upstream's `Cache-Control`, `Vary`,
//! `Set-Cookie` and status let it keep, `Age` and `x-cache`, clients' `no-cache`, plugins
//! before the lookup, 100 concurrent misses coalesced into one upstream request, eviction and
//! purging through the admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use wasmgate_tests::*;

const KEY_AUTH: &str = env!("WASM_KEY_AUTH");

/// An upstream whose answers follow the query: `cc` (Cache-Control), `vary`, `cookie`
/// (Set-Cookie), `status`, `delay` (ms), `size` (body bytes); the body names how many requests
/// it had answered, so a cached answer is told apart from a fresh one.
async fn origin() -> ScriptedUpstream {
    let served = Arc::new(AtomicUsize::new(0));
    ScriptedUpstream::start(move |seen| {
        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if let Some(ms) = seen.query("delay") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            }
            let mut body = format!("answer {n}");
            if let Some(size) = seen.query("size") {
                body = body.repeat(size.parse::<usize>().unwrap_or(1) / body.len() + 1);
            }
            let mut resp = http::Response::builder()
                .status(
                    seen.query("status")
                        .map_or(200, |s| s.parse().unwrap_or(200)),
                )
                .header("content-type", "text/plain");
            for (query, header) in [
                ("cc", "cache-control"),
                ("vary", "vary"),
                ("cookie", "set-cookie"),
            ] {
                if let Some(v) = seen.query(query) {
                    resp = resp.header(header, v);
                }
            }
            resp.body(Full::new(Bytes::from(body))).expect("response")
        }
    })
    .await
}

struct Answer {
    status: u16,
    x_cache: String,
    age: Option<u64>,
    body: String,
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("send");
    let header = |name| {
        resp.headers()
            .get(name)
            .map(|v: &http::HeaderValue| v.to_str().expect("ascii").to_owned())
    };
    Answer {
        status: resp.status().as_u16(),
        x_cache: header("x-cache").unwrap_or_default(),
        age: header("age").map(|a| a.parse().expect("age is a number")),
        body: resp.text().await.expect("body"),
    }
}

#[tokio::test]
async fn the_upstreams_cache_control_decides_what_is_kept() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = {}"))
        .await
        .expect("start");
    // (query, whether the second request is answered from the cache)
    let table = [
        ("", true),
        ("cc=max-age%3D60", true),
        ("cc=public%2C%20s-maxage%3D60", true),
        ("status=404", true),
        ("cc=no-store", false),
        ("cc=private%2C%20max-age%3D60", false),
        ("cc=no-cache", false),
        ("cc=max-age%3D0", false),
        ("cookie=session%3Dabc", false),
        ("status=500", false),
        ("status=503&cc=max-age%3D60", false),
        ("status=302&cc=max-age%3D60", true),
        ("status=302", false),
        ("vary=%2A", false),
    ];
    for (i, (query, kept)) in table.iter().enumerate() {
        let url = gw.url(&format!("/case/{i}?{query}"));
        let first = get(&url, &[]).await;
        assert_eq!(first.x_cache, "MISS", "{query}: a first request misses");
        let second = get(&url, &[]).await;
        let hit = second.x_cache == "HIT";
        assert_eq!(
            hit, *kept,
            "{query}: second request x-cache {}",
            second.x_cache
        );
        assert_eq!(
            hit,
            first.body == second.body,
            "{query}: a hit has the stored body"
        );
        assert_eq!(second.status, first.status, "{query}");
        if hit {
            assert!(second.age.is_some(), "{query}: a hit has an Age");
        }
    }
    assert_eq!(
        origin.count(),
        table.len() + table.iter().filter(|(_, k)| !k).count()
    );
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_and_an_expired_entry_is_fetched_again() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = { ttl = \"1h\" }"))
        .await
        .expect("start");
    let url = gw.url("/short?cc=max-age%3D3600%2C%20s-maxage%3D1");
    assert_eq!(get(&url, &[]).await.x_cache, "MISS");
    let hit = get(&url, &[]).await;
    assert_eq!(hit.x_cache, "HIT");
    assert!(hit.age.is_some_and(|a| a <= 1), "{:?}", hit.age);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = get(&url, &[]).await;
    assert_eq!(again.x_cache, "MISS", "stale after s-maxage");
    assert_eq!(again.body, "answer 2");
}

#[tokio::test]
async fn vary_keeps_one_entry_per_variant() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = {}"))
        .await
        .expect("start");
    let url = gw.url("/greeting?vary=accept-language");
    let en = get(&url, &[("accept-language", "en")]).await;
    let fr = get(&url, &[("accept-language", "fr")]).await;
    assert_eq!((en.x_cache.as_str(), fr.x_cache.as_str()), ("MISS", "MISS"));
    let en_again = get(&url, &[("accept-language", "en")]).await;
    let fr_again = get(&url, &[("accept-language", "fr")]).await;
    assert_eq!(en_again.x_cache, "HIT");
    assert_eq!(en_again.body, en.body);
    assert_eq!(fr_again.x_cache, "HIT");
    assert_eq!(fr_again.body, fr.body);
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn configured_vary_headers_are_part_of_the_key() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(
        origin.addr,
        r#"cache = { vary = ["x-tenant"] }"#,
    ))
    .await
    .expect("start");
    let url = gw.url("/report");
    let a = get(&url, &[("x-tenant", "a")]).await;
    let b = get(&url, &[("x-tenant", "b")]).await;
    assert_ne!(a.body, b.body, "tenants never share an entry");
    assert_eq!(get(&url, &[("x-tenant", "a")]).await.body, a.body);
}

#[tokio::test]
async fn a_clients_no_cache_is_obeyed_only_when_configured() {
    let origin = origin().await;
    let ignoring = TestGateway::start(&origin_route(origin.addr, "cache = {}"))
        .await
        .expect("start");
    let url = ignoring.url("/x");
    get(&url, &[]).await;
    let forced = get(&url, &[("cache-control", "no-cache")]).await;
    assert_eq!(
        forced.x_cache, "HIT",
        "by default clients cannot make the upstream work"
    );

    let obeying = TestGateway::start(&origin_route(
        origin.addr,
        "cache = { client_no_cache = true }",
    ))
    .await
    .expect("start");
    let url = obeying.url("/y");
    let first = get(&url, &[]).await;
    let forced = get(&url, &[("cache-control", "no-cache")]).await;
    assert_eq!(forced.x_cache, "MISS");
    assert_ne!(forced.body, first.body);
    let after = get(&url, &[]).await;
    assert_eq!(after.x_cache, "HIT");
    assert_eq!(
        after.body, forced.body,
        "the refreshed answer replaced the entry"
    );
    let bypass = get(&url, &[("cache-control", "no-store")]).await;
    assert_eq!(bypass.x_cache, "BYPASS");
}

#[tokio::test]
async fn heads_use_the_get_entry_and_other_methods_bypass() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = {}"))
        .await
        .expect("start");
    let c = client();
    let head = c.head(gw.url("/h")).send().await.expect("head");
    assert_eq!(
        head.headers()["x-cache"],
        "BYPASS",
        "a HEAD miss is not stored"
    );
    get(&gw.url("/h"), &[]).await;
    let head = c.head(gw.url("/h")).send().await.expect("head");
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert_eq!(head.text().await.expect("body"), "");
    let post = c.post(gw.url("/h")).body("x").send().await.expect("post");
    assert_eq!(post.headers()["x-cache"], "BYPASS");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn plugins_run_before_the_lookup_so_a_refused_request_never_gets_a_cached_answer() {
    let origin = origin().await;
    let config = format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        plugin_cache_dir = ""
        [upstreams.origin]
        targets = ["{}"]
        [[routes]]
        name = "api"
        upstream = "origin"
        cache = {{}}
        [[routes.plugins]]
        name = "key-auth"
        config = {{ header = "x-api-key", keys = {{ alice = "k1" }} }}
        "#,
        origin.addr
    );
    let gw = TestGateway::start_in(workdir_with_plugins(&[("key-auth", KEY_AUTH)]), &config)
        .await
        .expect("start");
    let url = gw.url("/private");
    assert_eq!(get(&url, &[("x-api-key", "k1")]).await.x_cache, "MISS");
    assert_eq!(get(&url, &[("x-api-key", "k1")]).await.x_cache, "HIT");
    let refused = get(&url, &[]).await;
    assert_eq!(refused.status, 401);
    assert!(!refused.body.contains("answer"), "{}", refused.body);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_send_one_request_upstream() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = {}"))
        .await
        .expect("start");
    let url = gw.url("/slow?delay=300");
    let c = client();
    let answers = futures_util::future::join_all((0..100).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = c.get(&url).send().await.expect("send");
            let x_cache = resp.headers()["x-cache"].to_str().unwrap().to_owned();
            (
                resp.status().as_u16(),
                x_cache,
                resp.text().await.expect("body"),
            )
        }
    }))
    .await;
    assert_eq!(origin.count(), 1, "one request upstream for 100 misses");
    assert!(answers.iter().all(|(s, _, b)| *s == 200 && b == "answer 1"));
    let misses = answers.iter().filter(|(_, x, _)| x == "MISS").count();
    assert_eq!(
        misses, 1,
        "the others were answered from the first one's response"
    );
}

#[tokio::test]
async fn waiters_go_upstream_themselves_when_the_first_answer_is_not_storable() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = {}"))
        .await
        .expect("start");
    let url = gw.url("/personal?delay=200&cc=private");
    let c = client();
    let statuses = futures_util::future::join_all((0..10).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(&url).send().await.expect("send").status().as_u16() }
    }))
    .await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(origin.count(), 10, "each got its own private answer");
}

#[tokio::test]
async fn a_small_cache_evicts_and_counts_it() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(
        origin.addr,
        r#"cache = { max_size = "8KiB", max_entry_size = "4KiB" }"#,
    ))
    .await
    .expect("start");
    for i in 0..40 {
        get(&gw.url(&format!("/big/{i}?size=2000")), &[]).await;
    }
    eventually(Duration::from_secs(10), "evictions counted", || {
        gw.metric(r#"wasmgate_cache_evictions_total{route="api"}"#) > 0
    })
    .await;
    assert!(gw.metric(r#"wasmgate_cache_bytes{route="api"}"#) <= 8 * 1024);
    assert_eq!(
        gw.metric(r#"wasmgate_cache_requests_total{route="api",result="miss"}"#),
        40
    );
    let large = get(&gw.url("/huge?size=6000"), &[]).await;
    assert_eq!(large.x_cache, "MISS");
    assert_eq!(
        get(&gw.url("/huge?size=6000"), &[]).await.x_cache,
        "MISS",
        "a response over max_entry_size passes through unstored"
    );
}

#[tokio::test]
async fn the_admin_api_purges_a_path_a_route_or_everything() {
    let origin = origin().await;
    let dir = workdir();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        origin_route(origin.addr, "cache = {}").replace(
            "[gateway]",
            "[gateway]\nadmin = \"127.0.0.1:0\"\naccess_log = \"access.log\"",
        ),
    )
    .expect("write");
    let gw = GatewayProcess::start(wasmgate_bin!(), &path, 1).expect("start");
    let admin = gw.admin().expect("admin");
    let url = |p: &str| format!("http://{}{p}", gw.addrs[0]);
    for p in ["/a", "/a?page=2", "/b"] {
        get(&url(p), &[]).await;
        assert_eq!(get(&url(p), &[]).await.x_cache, "HIT", "{p}");
    }
    let c = client();
    let purge = |p: &str| c.delete(format!("http://{admin}/cache{p}")).send();
    let resp = purge("/api/a?page=2").await.expect("purge");
    assert_eq!(resp.status(), 200);
    assert_eq!(get(&url("/a?page=2"), &[]).await.x_cache, "MISS");
    assert_eq!(
        get(&url("/a"), &[]).await.x_cache,
        "HIT",
        "another query stays"
    );
    purge("/api/a").await.expect("purge");
    assert_eq!(
        get(&url("/a"), &[]).await.x_cache,
        "MISS",
        "every query of the path"
    );
    assert_eq!(get(&url("/b"), &[]).await.x_cache, "HIT");
    purge("").await.expect("purge all");
    assert_eq!(get(&url("/b"), &[]).await.x_cache, "MISS");
    let unknown = purge("/nope").await.expect("purge");
    assert_eq!(unknown.status(), 404);
    // The access log says how each request was answered.
    let log = dir.path().join("access.log");
    eventually(
        Duration::from_secs(5),
        "the access log names cache results",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains(r#""cache":"HIT""#) && text.contains(r#""cache":"MISS""#)
        },
    )
    .await;
}

#[tokio::test]
async fn a_reload_keeps_the_entries_of_a_cache_whose_settings_did_not_change() {
    let origin = origin().await;
    let config = |cache: &str| origin_route(origin.addr, cache);
    let gw = TestGateway::start_in(workdir(), &config("cache = {}"))
        .await
        .expect("start");
    let url = gw.url("/kept");
    get(&url, &[]).await;
    assert_eq!(get(&url, &[]).await.x_cache, "HIT");
    gw.reload(&config("cache = {}")).await.expect("reload");
    assert_eq!(
        get(&url, &[]).await.x_cache,
        "HIT",
        "same settings: entries kept"
    );
    gw.reload(&config(r#"cache = { ttl = "1m" }"#))
        .await
        .expect("reload");
    assert_eq!(
        get(&url, &[]).await.x_cache,
        "MISS",
        "new settings: a new cache"
    );
}

/// An upstream that tags its answers `ETag: "v<version>"` (fresh for 1 s) and answers `304`
/// to an `If-None-Match` naming the current version. The version changes when `bump` is in the
/// query.
async fn validating_origin() -> ScriptedUpstream {
    let version = Arc::new(AtomicUsize::new(1));
    ScriptedUpstream::start(move |seen| {
        if seen.query("bump").is_some() {
            version.fetch_add(1, Ordering::SeqCst);
        }
        let etag = format!("\"v{}\"", version.load(Ordering::SeqCst));
        async move {
            let current = seen
                .headers
                .get("if-none-match")
                .is_some_and(|v| v.as_bytes() == etag.as_bytes());
            let resp = http::Response::builder()
                .header("cache-control", "max-age=1")
                .header("etag", &etag)
                .header("x-served", etag.trim_matches('"'));
            if current {
                resp.status(304).body(Full::new(Bytes::new()))
            } else {
                resp.header("content-type", "text/plain")
                    .body(Full::new(Bytes::from(format!("body of {etag}"))))
            }
            .expect("response")
        }
    })
    .await
}

#[tokio::test]
async fn a_conditional_request_that_hits_is_answered_304_without_the_upstream() {
    let origin = validating_origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = { ttl = \"1h\" }"))
        .await
        .expect("start");
    let url = gw.url("/doc");
    assert_eq!(get(&url, &[]).await.x_cache, "MISS");
    let current = get(&url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((current.status, current.x_cache.as_str()), (304, "HIT"));
    assert_eq!(current.body, "");
    let other = get(&url, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!((other.status, other.body.as_str()), (200, "body of \"v1\""));
    assert_eq!(origin.count(), 1, "both answered from the cache");
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_only_a_changed_body_crosses_again() {
    let origin = validating_origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "cache = { ttl = \"1h\" }"))
        .await
        .expect("start");
    let url = gw.url("/doc");
    assert_eq!(get(&url, &[]).await.x_cache, "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Stale: the gateway asks with the stored ETag, the upstream says 304, the stored body goes.
    let revalidated = get(&url, &[]).await;
    assert_eq!(revalidated.x_cache, "REVALIDATED");
    assert_eq!(
        (revalidated.status, revalidated.body.as_str()),
        (200, "body of \"v1\"")
    );
    let asked = &origin.requests()[1];
    assert_eq!(asked.headers["if-none-match"], "\"v1\"");
    assert_eq!(
        gw.metric(r#"wasmgate_cache_requests_total{route="api",result="revalidated"}"#),
        1
    );
    // Refreshed: fresh again for the 304's max-age.
    assert_eq!(get(&url, &[]).await.x_cache, "HIT");

    // A client's own condition is answered from the revalidated entry.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let not_modified = get(&url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(
        (not_modified.status, not_modified.x_cache.as_str()),
        (304, "REVALIDATED")
    );

    // Changed upstream: the new body replaces the entry.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let changed = get(&gw.url("/doc?bump"), &[]).await;
    assert_eq!(changed.x_cache, "MISS", "another key");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = get(&url, &[]).await;
    assert_eq!(
        (fresh.x_cache.as_str(), fresh.body.as_str()),
        ("MISS", "body of \"v2\"")
    );
    assert_eq!(get(&url, &[]).await.body, "body of \"v2\"");
    assert_eq!(origin.count(), 5);
}
