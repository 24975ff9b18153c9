//! The shipped `rate-limit` plugin through a real gateway: per consumer behind key-auth with the
//! issue's config verbatim (remaining counts down, the override applies, 429 with Retry-After),
//! the limit holding under concurrency, header identities, and counters shared or not between
//! routes.

use std::net::SocketAddr;

use serde_json::Value;
use wasmgate_tests::*;

const RATE_LIMIT: &str = env!("WASM_RATE_LIMIT");
const KEY_AUTH: &str = env!("WASM_KEY_AUTH");

/// Starts a gateway whose config is `[gateway]` + upstream `u` + `routes`, with `rate-limit.wasm`
/// and `key-auth.wasm` in its plugins folder.
async fn gateway(routes: &str) -> TestGateway {
    let up: SocketAddr = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("rate-limit", RATE_LIMIT), ("key-auth", KEY_AUTH)]);
    TestGateway::start_in(
        dir,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\nplugin_cache_dir = \"\"\n\
             [upstreams.u]\ntargets = [\"{up}\"]\n{routes}"
        ),
    )
    .await
    .expect("start")
}

/// One response's status and its `RateLimit-*` numbers (limit, remaining, reset), when present.
struct Seen {
    status: u16,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
    response: reqwest::Response,
}

fn number(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name).map(|v| {
        v.to_str()
            .expect("ascii")
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {v:?}"))
    })
}

async fn send(req: reqwest::RequestBuilder) -> Seen {
    let response = req.send().await.expect("send");
    Seen {
        status: response.status().as_u16(),
        limit: number(&response, "ratelimit-limit"),
        remaining: number(&response, "ratelimit-remaining"),
        reset: number(&response, "ratelimit-reset"),
        retry_after: number(&response, "retry-after"),
        response,
    }
}

const CONSUMER_ROUTE: &str = r#"
[[routes]]
name = "orders"
paths = ["/orders"]
upstream = "u"
[[routes.plugins]]
name = "key-auth"
config = { header = "x-api-key", keys = { alice = "k-alice", bob = "k-bob" } }
[[routes.plugins]]
name = "rate-limit"
config = { limit = 100, window = "1m", by = "consumer", overrides = { bob = 500 } }
"#;

/// The issue's config verbatim, behind key-auth: alice's remaining count goes 99, 98, ... 0,
/// her 101st request is refused with 429, Retry-After and a JSON body, and bob has his own
/// counter with the override's limit. Requests key-auth refused never reach the limiter.
#[tokio::test]
async fn limits_each_consumer_with_overrides_behind_key_auth() {
    let gw = gateway(CONSUMER_ROUTE).await;
    let c = client();

    for _ in 0..3 {
        let refused = send(c.get(gw.url("/orders")).header("x-api-key", "wrong")).await;
        assert_eq!(refused.status, 401);
        assert_eq!(
            refused.limit, None,
            "key-auth answered before rate-limit ran: no RateLimit headers"
        );
    }

    // A `1m` window restarts at every full minute: when the run straddles one, the count starts
    // again from 100 (seen as RateLimit-Reset going up), and the test follows it.
    let mut windows = 1;
    let mut last_reset = u64::MAX;
    let mut expected_remaining: i64 = 99;
    let refusal = loop {
        let seen = send(c.get(gw.url("/orders")).header("x-api-key", "k-alice")).await;
        let reset = seen.reset.expect("RateLimit-Reset on every response");
        assert!((1..=60).contains(&reset), "reset {reset}");
        if reset > last_reset {
            windows += 1;
            assert!(windows <= 2, "the run took more than a minute");
            expected_remaining = 99;
        }
        last_reset = reset;
        assert_eq!(seen.limit, Some(100));
        if seen.status == 429 {
            assert_eq!(expected_remaining, -1, "refused after exactly 100 requests");
            break seen;
        }
        assert_eq!(seen.status, 200);
        assert_eq!(
            seen.remaining.and_then(|r| i64::try_from(r).ok()),
            Some(expected_remaining),
            "remaining counts down"
        );
        let body: Value = seen.response.json().await.expect("echo json");
        assert_eq!(body["headers"]["x-consumer"], "alice");
        expected_remaining -= 1;
        assert!(expected_remaining >= -1, "never refused");
    };
    assert_eq!(refusal.remaining, Some(0));
    let retry_after = refusal.retry_after.expect("Retry-After");
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(refusal.reset, Some(retry_after));
    assert_eq!(
        refusal.response.headers()["content-type"],
        "application/json"
    );
    assert!(
        refusal.response.headers().get("x-echo-server").is_none(),
        "the upstream was not called"
    );
    let body: Value = refusal.response.json().await.expect("json body");
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].is_string());

    let bob = send(c.get(gw.url("/orders")).header("x-api-key", "k-bob")).await;
    assert_eq!(bob.status, 200, "bob has his own counter");
    assert_eq!(bob.limit, Some(500), "and the override's limit");
    assert_eq!(bob.remaining, Some(499));
}

/// Requests refused by a plugin listed before rate-limit never reach it, so they use up nothing
/// of the client's budget.
#[tokio::test]
async fn requests_refused_earlier_in_the_chain_are_not_counted() {
    let gw = gateway(
        r#"
        [[routes]]
        name = "per-ip"
        paths = ["/ip"]
        upstream = "u"
        [[routes.plugins]]
        name = "key-auth"
        config = { header = "x-api-key", keys = { alice = "k-alice" } }
        [[routes.plugins]]
        name = "rate-limit"
        config = { limit = 2, window = "24h", by = "ip" }
        "#,
    )
    .await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(send(c.get(gw.url("/ip"))).await.status, 401);
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            send(c.get(gw.url("/ip")).header("x-api-key", "k-alice"))
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429]);
}

/// Forty concurrent requests against a limit of ten: exactly ten reach the upstream, however
/// the gateway spreads them over pooled instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limit_holds_across_concurrent_requests() {
    let gw = gateway(
        r#"
        [[routes]]
        name = "burst"
        paths = ["/burst"]
        upstream = "u"
        [[routes.plugins]]
        name = "rate-limit"
        config = { limit = 10, window = "24h", by = "route" }
        "#,
    )
    .await;
    let c = client();
    let url = gw.url("/burst");
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let request = c.get(&url);
            tokio::spawn(async move { send(request).await })
        })
        .collect();
    let mut passed = 0;
    let mut remaining_seen = Vec::new();
    for task in tasks {
        let seen = task.await.expect("task");
        match seen.status {
            200 => {
                passed += 1;
                remaining_seen.push(seen.remaining.expect("remaining"));
            }
            429 => assert_eq!(seen.remaining, Some(0)),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(passed, 10, "exactly the limit passed");
    remaining_seen.sort_unstable();
    assert_eq!(
        remaining_seen,
        (0..10).collect::<Vec<u64>>(),
        "each passed request saw its own count"
    );
}

/// `by = "header:x-user"` counts per header value with its override, and falls back to the
/// client IP when the header is absent.
#[tokio::test]
async fn counts_by_header_value_and_falls_back_to_the_ip() {
    let gw = gateway(
        r#"
        [[routes]]
        name = "by-header"
        paths = ["/h"]
        upstream = "u"
        [[routes.plugins]]
        name = "rate-limit"
        config = { limit = 2, window = "24h", by = "header:x-user", overrides = { vip = 3 } }
        "#,
    )
    .await;
    let c = client();
    let statuses = |user: Option<&'static str>| {
        let c = c.clone();
        let url = gw.url("/h");
        async move {
            let mut out = Vec::new();
            for _ in 0..4 {
                let mut req = c.get(&url);
                if let Some(user) = user {
                    req = req.header("x-user", user);
                }
                out.push(send(req).await.status);
            }
            out
        }
    };
    assert_eq!(statuses(Some("ann")).await, [200, 200, 429, 429]);
    assert_eq!(statuses(Some("vip")).await, [200, 200, 200, 429]);
    assert_eq!(statuses(None).await, [200, 200, 429, 429], "the client IP");
    assert_eq!(statuses(Some("cat")).await, [200, 200, 429, 429]);
}

/// Entries with the same namespace, window and `by` share counters across routes; a distinct
/// `namespace` counts on its own.
#[tokio::test]
async fn routes_share_counters_unless_given_their_own_namespace() {
    let route = |name: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npaths = [\"/{name}\"]\nupstream = \"u\"\n\
             [[routes.plugins]]\nname = \"rate-limit\"\n\
             config = {{ limit = 2, window = \"24h\", by = \"ip\"{extra} }}\n"
        )
    };
    let gw = gateway(&format!(
        "{}{}{}",
        route("a", ""),
        route("b", ""),
        route("c", ", namespace = \"c\"")
    ))
    .await;
    let c = client();
    let status = |path: &'static str| {
        let req = c.get(gw.url(path));
        async move { send(req).await.status }
    };
    assert_eq!(status("/a").await, 200);
    assert_eq!(status("/b").await, 200);
    assert_eq!(status("/a").await, 429, "a and b count together");
    assert_eq!(status("/c").await, 200, "c has its own namespace");
    assert_eq!(status("/c").await, 200);
    assert_eq!(status("/c").await, 429);
}

/// A config the plugin refuses stops the gateway from starting, naming the key.
#[tokio::test]
async fn refuses_a_bad_config_at_start() {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("rate-limit", RATE_LIMIT)]);
    let err = TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "r"
            upstream = "u"
            [[routes.plugins]]
            name = "rate-limit"
            config = {{ limit = 10, by = "user" }}
            "#
        ),
    )
    .await
    .expect_err("refused");
    let err = err.to_string();
    assert!(
        err.contains(r#"by = "user": expected "ip", "consumer", "route" or "header:NAME""#),
        "{err}"
    );
}

#[tokio::test]
async fn sliding_windows_and_token_buckets_limit_in_memory_with_their_policy() {
    let gw = gateway(
        r#"
        [[routes]]
        name = "sliding"
        paths = ["/sliding"]
        upstream = "u"
        [[routes.plugins]]
        name = "rate-limit"
        config = { limit = 4, window = "1h", by = "ip", algorithm = "sliding_window" }
        [[routes]]
        name = "bucket"
        paths = ["/bucket"]
        upstream = "u"
        [[routes.plugins]]
        name = "rate-limit"
        config = { limit = 4, window = "1h", by = "ip", algorithm = "token_bucket", namespace = "b" }
        "#,
    )
    .await;
    let c = client();
    for path in ["/sliding", "/bucket"] {
        for remaining in [3, 2, 1, 0] {
            let seen = send(c.get(gw.url(path))).await;
            assert_eq!(seen.status, 200, "{path}");
            assert_eq!(seen.remaining, Some(remaining), "{path}");
            assert_eq!(
                seen.response.headers()["ratelimit-policy"],
                "4;w=3600",
                "{path}"
            );
        }
        let refused = send(c.get(gw.url(path))).await;
        assert_eq!(refused.status, 429, "{path}");
        let retry = refused.retry_after.expect("retry-after");
        if path == "/bucket" {
            // One token every 15 minutes, not the hour's end.
            assert!((1..=900).contains(&retry), "{path}: retry after {retry}");
        } else {
            assert!(retry >= 1, "{path}: retry after {retry}");
        }
    }
}
