//! Unit tests through the SDK's in-memory gateway (feature `testing`).

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use wasmgate_sdk::testing;

use super::*;

/// The issue's config, verbatim (as JSON).
const ISSUE_CONFIG: &str =
    r#"{ "limit": 100, "window": "1m", "by": "consumer", "overrides": { "bob": 500 } }"#;

fn plugin(config: &str) -> RateLimit {
    testing::instance::<RateLimit>(config).expect("valid config")
}

fn refused(config: &str) -> String {
    testing::instance::<RateLimit>(config)
        .expect_err("refused")
        .message()
        .to_owned()
}

/// A fresh state with the clock frozen `into_window` after the start of a minute.
fn frozen(into_window: Duration) {
    testing::reset_state();
    testing::freeze_clock(UNIX_EPOCH + Duration::from_secs(1_700_000_040) + into_window);
}

fn request(ip: &str) -> Request<'static> {
    Request::builder().uri("/x").client_ip(ip).build()
}

/// Runs one request from `ip` (with `consumer` in the context when given) through both hooks;
/// the answer's status and the three RateLimit headers, plus Retry-After.
fn call(plugin: &RateLimit, ip: &str, consumer: Option<&str>) -> (u16, [Option<String>; 4]) {
    call_with(plugin, request(ip), consumer)
}

fn call_with(
    plugin: &RateLimit,
    mut req: Request<'static>,
    consumer: Option<&str>,
) -> (u16, [Option<String>; 4]) {
    let ctx = Context::new();
    if let Some(consumer) = consumer {
        ctx.set("consumer", consumer);
    }
    match testing::on_request(plugin, &mut req, &ctx).expect("on_request") {
        Action::Continue => {
            let mut resp = Response::builder().status(200).build();
            testing::on_response(plugin, &req, &mut resp, &ctx).expect("on_response");
            let h =
                resp.headers_get(&[LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER, "retry-after"]);
            (
                200,
                [h[0].clone(), h[1].clone(), h[2].clone(), h[3].clone()],
            )
        }
        Action::Respond(reply) => {
            let h = |n| reply.header(n).map(str::to_owned);
            (
                reply.status(),
                [
                    h(LIMIT_HEADER),
                    h(REMAINING_HEADER),
                    h(RESET_HEADER),
                    h("retry-after"),
                ],
            )
        }
    }
}

fn some(values: [&str; 3]) -> [Option<String>; 4] {
    [
        Some(values[0].to_owned()),
        Some(values[1].to_owned()),
        Some(values[2].to_owned()),
        None,
    ]
}

#[test]
fn accepts_the_issue_config_verbatim() {
    let p = plugin(ISSUE_CONFIG);
    assert_eq!(p.limit, 100);
    assert_eq!(p.window, Duration::from_secs(60));
    assert_eq!(p.by, By::Consumer);
    assert_eq!(p.overrides.get("bob"), Some(&500));
}

#[test]
fn remaining_counts_down_then_refuses_with_429_and_retry_after() {
    frozen(Duration::from_millis(15_500));
    let p = plugin(r#"{ "limit": 3, "window": "1m", "by": "ip" }"#);
    for remaining in ["2", "1", "0"] {
        assert_eq!(
            call(&p, "10.0.0.1", None),
            (200, some(["3", remaining, "45"]))
        );
    }
    let ctx = Context::new();
    let action = p.on_request(&mut request("10.0.0.1"), &ctx).expect("ok");
    let reply = action.reply().expect("refused");
    assert_eq!(reply.status(), 429);
    assert_eq!(reply.header("retry-after"), Some("45"));
    assert_eq!(reply.header("ratelimit-limit"), Some("3"));
    assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
    assert_eq!(reply.header("ratelimit-reset"), Some("45"));
    assert!(
        reply.error().is_some(),
        "a rejection in the gateway's error format"
    );
    let body: serde_json::Value = serde_json::from_slice(reply.body()).expect("json body");
    assert_eq!(body["error"], "rate_limited");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("3 requests per 60 s")),
        "{body}"
    );
    assert!(
        ctx.entries().is_empty(),
        "a refusal leaves nothing for on_response"
    );
}

#[test]
fn refused_requests_keep_remaining_at_zero_until_the_window_ends() {
    frozen(Duration::from_secs(50));
    let p = plugin(r#"{ "limit": 1, "window": "1m", "by": "ip" }"#);
    assert_eq!(call(&p, "10.0.0.1", None).0, 200);
    for _ in 0..5 {
        let (status, headers) = call(&p, "10.0.0.1", None);
        assert_eq!(status, 429);
        assert_eq!(headers[1].as_deref(), Some("0"));
        assert_eq!(headers[3].as_deref(), Some("10"));
    }
    testing::advance_clock(Duration::from_secs(10));
    assert_eq!(
        call(&p, "10.0.0.1", None),
        (200, some(["1", "0", "60"])),
        "a new window starts from zero"
    );
}

#[test]
fn overrides_give_a_consumer_its_own_limit() {
    frozen(Duration::ZERO);
    let p = plugin(r#"{ "limit": 2, "by": "consumer", "overrides": { "bob": 4 } }"#);
    let statuses = |consumer| {
        (0..5)
            .map(|_| call(&p, "10.0.0.1", Some(consumer)).0)
            .collect::<Vec<_>>()
    };
    assert_eq!(statuses("alice"), [200, 200, 429, 429, 429]);
    assert_eq!(statuses("bob"), [200, 200, 200, 200, 429]);
    assert_eq!(
        call(&p, "10.0.0.1", Some("carol")),
        (200, some(["2", "1", "60"])),
        "each consumer has its own counter, even from one IP"
    );
}

#[test]
fn consumer_falls_back_to_the_client_ip_without_a_consumer() {
    frozen(Duration::ZERO);
    let p = plugin(r#"{ "limit": 2, "overrides": { "10.0.0.9": 3 } }"#);
    assert_eq!(call(&p, "10.0.0.1", None).1[1].as_deref(), Some("1"));
    assert_eq!(call(&p, "10.0.0.1", Some("")).1[1].as_deref(), Some("0"));
    assert_eq!(call(&p, "10.0.0.1", None).0, 429);
    assert_eq!(
        call(&p, "10.0.0.2", None).1[1].as_deref(),
        Some("1"),
        "another IP"
    );
    assert_eq!(
        call(&p, "10.0.0.9", None).1[0].as_deref(),
        Some("3"),
        "overrides name IPs too"
    );
    assert_eq!(
        call(&p, "10.0.0.1", Some("10.0.0.1")).1[1].as_deref(),
        Some("1"),
        "a consumer named like an IP does not share the IP's counter"
    );
}

#[test]
fn header_identity_counts_per_value_and_falls_back_to_the_ip() {
    frozen(Duration::ZERO);
    let p = plugin(r#"{ "limit": 1, "by": "header:X-User", "overrides": { "vip": 2 } }"#);
    let with = |user: &str, ip: &str| {
        call_with(
            &p,
            Request::builder()
                .client_ip(ip)
                .header("x-user", user)
                .build(),
            None,
        )
        .0
    };
    assert_eq!(with("ann", "10.0.0.1"), 200);
    assert_eq!(with("ann", "10.0.0.2"), 429, "same header value, other IP");
    assert_eq!(with("vip", "10.0.0.1"), 200);
    assert_eq!(with("vip", "10.0.0.1"), 200);
    assert_eq!(with("vip", "10.0.0.1"), 429);
    assert_eq!(call(&p, "10.0.0.1", None).0, 200, "no header: the IP");
    assert_eq!(call(&p, "10.0.0.1", None).0, 429);
    assert_eq!(with("", "10.0.0.3"), 200, "an empty value counts as absent");
    assert_eq!(call(&p, "10.0.0.3", None).0, 429);
}

#[test]
fn entries_counting_different_headers_do_not_share_counters() {
    frozen(Duration::ZERO);
    let by_a = plugin(r#"{ "limit": 1, "by": "header:x-a" }"#);
    let by_b = plugin(r#"{ "limit": 1, "by": "header:x-b" }"#);
    let req = |header: &str| Request::builder().header(header, "same").build();
    assert_eq!(call_with(&by_a, req("x-a"), None).0, 200);
    assert_eq!(
        call_with(&by_b, req("x-b"), None).0,
        200,
        "x-b has its own counter"
    );
    assert_eq!(call_with(&by_a, req("x-a"), None).0, 429);
}

#[test]
fn route_counts_every_client_together() {
    frozen(Duration::ZERO);
    let p = plugin(r#"{ "limit": 2, "by": "route" }"#);
    assert_eq!(call(&p, "10.0.0.1", Some("alice")).0, 200);
    assert_eq!(call(&p, "10.0.0.2", None).0, 200);
    assert_eq!(call(&p, "10.0.0.3", Some("bob")).0, 429);
}

#[test]
fn entries_share_counters_only_with_the_same_namespace_and_window() {
    frozen(Duration::ZERO);
    let a = plugin(r#"{ "limit": 2, "by": "ip" }"#);
    let b = plugin(r#"{ "limit": 2, "by": "ip" }"#);
    let other_ns = plugin(r#"{ "limit": 2, "by": "ip", "namespace": "orders" }"#);
    let other_window = plugin(r#"{ "limit": 2, "by": "ip", "window": "1h" }"#);
    assert_eq!(call(&a, "10.0.0.1", None).0, 200);
    assert_eq!(call(&b, "10.0.0.1", None).0, 200);
    assert_eq!(call(&a, "10.0.0.1", None).0, 429, "a and b share");
    assert_eq!(call(&other_ns, "10.0.0.1", None).0, 200);
    assert_eq!(call(&other_window, "10.0.0.1", None).0, 200);
}

#[test]
fn two_entries_on_one_route_answer_with_the_first_listed_entrys_numbers() {
    frozen(Duration::ZERO);
    let per_minute = plugin(r#"{ "limit": 10, "by": "ip" }"#);
    let per_hour = plugin(r#"{ "limit": 100, "window": "1h", "by": "ip" }"#);
    let ctx = Context::new();
    let mut minute_req = request("10.0.0.1");
    let mut hour_req = request("10.0.0.1");
    assert!(
        testing::on_request(&per_minute, &mut minute_req, &ctx)
            .unwrap()
            .is_continue()
    );
    assert!(
        testing::on_request(&per_hour, &mut hour_req, &ctx)
            .unwrap()
            .is_continue()
    );
    let mut resp = Response::builder().build();
    testing::on_response(&per_hour, &hour_req, &mut resp, &ctx).unwrap();
    assert_eq!(resp.header("ratelimit-limit").as_deref(), Some("100"));
    testing::on_response(&per_minute, &minute_req, &mut resp, &ctx).unwrap();
    assert_eq!(
        resp.header("ratelimit-limit").as_deref(),
        Some("10"),
        "the first-listed entry's response edits are applied last"
    );
}

#[test]
fn a_request_that_was_not_counted_leaves_the_response_alone() {
    let p = plugin(r#"{ "limit": 1 }"#);
    let mut resp = Response::builder().header("ratelimit-limit", "7").build();
    let ctx = Context::new();
    testing::on_response(&p, &request("10.0.0.1"), &mut resp, &ctx).unwrap();
    assert_eq!(resp.header("ratelimit-limit").as_deref(), Some("7"));
}

#[test]
fn upstream_ratelimit_headers_are_replaced_by_the_plugins() {
    frozen(Duration::ZERO);
    let p = plugin(r#"{ "limit": 5, "by": "ip" }"#);
    let ctx = Context::new();
    let mut req = request("10.0.0.1");
    testing::on_request(&p, &mut req, &ctx).unwrap();
    let mut resp = Response::builder()
        .header("ratelimit-remaining", "999")
        .build();
    testing::on_response(&p, &req, &mut resp, &ctx).unwrap();
    assert_eq!(resp.header_all("ratelimit-remaining"), ["4"]);
}

#[test]
fn refuses_bad_configs_naming_the_key_and_value() {
    assert_eq!(
        refused(r#"{ "limit": 0 }"#),
        "limit = 0: must be at least 1 (to refuse every request, use another plugin)"
    );
    assert!(refused(r#"{ "window": "1m" }"#).contains("missing field `limit`"));
    assert_eq!(
        refused(r#"{ "limit": 1, "window": "500ms" }"#),
        "window = 500ms: must be at least 1s (the RateLimit headers count whole seconds)"
    );
    let err = refused(r#"{ "limit": 1, "window": "soon" }"#);
    assert!(
        err.starts_with("window: invalid duration \"soon\""),
        "{err}"
    );
    let err = refused(r#"{ "limit": "many" }"#);
    assert!(
        err.starts_with("limit: invalid type: string \"many\""),
        "{err}"
    );
    let err = refused(r#"{ "limit": -1 }"#);
    assert!(
        err.starts_with("limit: invalid value: integer `-1`"),
        "{err}"
    );
    assert_eq!(
        refused(r#"{ "limit": 1, "by": "user" }"#),
        r#"by = "user": expected "ip", "consumer", "route" or "header:NAME""#
    );
    assert_eq!(
        refused(r#"{ "limit": 1, "by": "route", "overrides": { "bob": 5 } }"#),
        r#"overrides: not allowed with by = "route" (there is one counter for everyone)"#
    );
    assert_eq!(
        refused(r#"{ "limit": 1, "overrides": { "bob": 0 } }"#),
        "overrides.bob = 0: must be at least 1"
    );
    let err = refused(r#"{ "limit": 1, "overrides": { "bob": "lots" } }"#);
    assert!(err.starts_with("overrides.bob: invalid type"), "{err}");
    let err = refused(r#"{ "limit": 1, "limt": 2 }"#);
    assert!(err.starts_with("unknown field `limt`"), "{err}");
}

#[test]
fn refuses_unknown_algorithms_modes_and_misplaced_sync_intervals() {
    assert_eq!(
        refused(r#"{ "limit": 1, "algorithm": "leaky" }"#),
        r#"algorithm = "leaky": expected "fixed_window", "sliding_window" or "token_bucket""#
    );
    assert_eq!(
        refused(r#"{ "limit": 1, "mode": "eventual" }"#),
        r#"mode = "eventual": expected "exact" or "batched""#
    );
    assert_eq!(
        refused(r#"{ "limit": 1, "sync_interval": "50ms" }"#),
        r#"sync_interval: applies with mode = "batched" only"#
    );
    assert_eq!(
        refused(r#"{ "limit": 1, "mode": "batched", "sync_interval": "5ms" }"#),
        "sync_interval = 5ms: must be at least 10ms"
    );
    assert!(
        refused(r#"{ "limit": 20000000 }"#).contains("at most 10000000"),
        "a limit Redis's doubles could not count exactly"
    );
    assert!(
        refused(r#"{ "limit": 2000000, "window": "1s", "algorithm": "token_bucket" }"#)
            .contains("at most 1000 per millisecond")
    );
    let p = plugin(r#"{ "limit": 5, "mode": "batched" }"#);
    assert_eq!(
        p.quota.accuracy,
        state::Accuracy::Batched {
            sync_interval: Duration::from_millis(100)
        },
        "sync_interval defaults to 100ms"
    );
    assert_eq!(
        plugin(r#"{ "limit": 5 }"#).quota.accuracy,
        state::Accuracy::Exact
    );
}

#[test]
fn every_answer_names_the_policy() {
    frozen(Duration::ZERO);
    let p =
        plugin(r#"{ "limit": 1, "window": "1m", "by": "consumer", "overrides": { "bob": 7 } }"#);
    let ctx = Context::new();
    let mut req = request("10.0.0.1");
    testing::on_request(&p, &mut req, &ctx).expect("ok");
    let mut resp = Response::builder().status(200).build();
    testing::on_response(&p, &req, &mut resp, &ctx).expect("ok");
    assert_eq!(resp.header("ratelimit-policy").as_deref(), Some("1;w=60"));
    let refusal = p.on_request(&mut request("10.0.0.1"), &ctx).expect("ok");
    let reply = refusal.reply().expect("refused");
    assert_eq!(reply.header("ratelimit-policy"), Some("1;w=60"));
    let bob = Context::new();
    bob.set("consumer", "bob");
    let mut req = request("10.0.0.2");
    testing::on_request(&p, &mut req, &bob).expect("ok");
    let mut resp = Response::builder().status(200).build();
    testing::on_response(&p, &req, &mut resp, &bob).expect("ok");
    assert_eq!(
        resp.header("ratelimit-policy").as_deref(),
        Some("7;w=60"),
        "an override's own quota"
    );
}

#[test]
fn a_sliding_window_carries_the_previous_windows_weight() {
    // 6 s into a minute, after 10 requests in the previous minute: 54/60 of them still count.
    testing::reset_state();
    let start = UNIX_EPOCH + Duration::from_secs(1_700_000_040);
    testing::freeze_clock(start - Duration::from_secs(1));
    let p = plugin(r#"{ "limit": 10, "window": "1m", "by": "ip", "algorithm": "sliding_window" }"#);
    for _ in 0..10 {
        assert_eq!(call(&p, "10.0.0.1", None).0, 200);
    }
    testing::freeze_clock(start + Duration::from_secs(6));
    // 10 × 54/60 = 9: one more fits, the next does not.
    assert_eq!(call(&p, "10.0.0.1", None).0, 200);
    let (status, headers) = call(&p, "10.0.0.1", None);
    assert_eq!(status, 429);
    // It passes once the previous minute weighs 8 (12 s into this one, 10 × 48/60): 6 s from
    // now.
    assert_eq!(headers[3].as_deref(), Some("6"));
}

#[test]
fn a_token_bucket_bursts_to_the_limit_then_refills_evenly() {
    frozen(Duration::ZERO);
    let p = plugin(r#"{ "limit": 6, "window": "1m", "by": "ip", "algorithm": "token_bucket" }"#);
    for _ in 0..6 {
        assert_eq!(call(&p, "10.0.0.1", None).0, 200);
    }
    let (status, headers) = call(&p, "10.0.0.1", None);
    assert_eq!(status, 429);
    assert_eq!(headers[3].as_deref(), Some("10"), "one token every 10 s");
    frozen_at_offset(Duration::from_secs(10));
    assert_eq!(call(&p, "10.0.0.1", None).0, 200);
    assert_eq!(call(&p, "10.0.0.1", None).0, 429);
}

/// Moves the frozen clock to `offset` after the start of [`frozen`]'s minute, keeping the state.
fn frozen_at_offset(offset: Duration) {
    testing::freeze_clock(UNIX_EPOCH + Duration::from_secs(1_700_000_040) + offset);
}

#[test]
fn window_boundaries_follow_the_epoch() {
    // 59.25 s into an hour: the window ends in 3540.75 s, announced as 3541.
    testing::reset_state();
    testing::freeze_clock(UNIX_EPOCH + Duration::from_millis(1_699_999_200_000 + 59_250));
    let p = plugin(r#"{ "limit": 5, "window": "1h", "by": "ip" }"#);
    let (_, headers) = call(&p, "10.0.0.1", None);
    let expected = 3600 - 59;
    assert_eq!(headers[2].as_deref(), Some(expected.to_string().as_str()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Of `n` requests in one window, exactly `min(n, limit)` pass, and `RateLimit-Remaining`
    /// counts down by one per passed request, never below zero.
    #[test]
    fn exactly_limit_requests_pass_per_window(limit in 1u64..40, n in 0usize..80) {
        frozen(Duration::from_secs(1));
        let p = plugin(&format!(r#"{{ "limit": {limit}, "by": "ip" }}"#));
        let mut passed = 0u64;
        for _ in 0..n {
            let (status, headers) = call(&p, "192.0.2.1", None);
            let remaining: u64 = headers[1].as_deref().expect("remaining").parse().expect("number");
            if status == 200 {
                passed += 1;
                prop_assert_eq!(remaining, limit - passed);
            } else {
                prop_assert_eq!(status, 429);
                prop_assert_eq!(remaining, 0);
                prop_assert_eq!(headers[3].as_deref(), Some("59"));
            }
        }
        prop_assert_eq!(passed, limit.min(n as u64));
    }
}
