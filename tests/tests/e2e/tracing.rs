//! OpenTelemetry tracing (`[gateway.tracing]`): spans exported over OTLP/HTTP to a collector
//! that decodes them, the client's trace continued, and the trace handed on upstream.

use serde_json::Value;
use wasmgate_tests::otlp::{Collector, Received, SpanKind};
use wasmgate_tests::*;

const KEY_AUTH: &str = env!("WASM_KEY_AUTH");
const RATE_LIMIT: &str = env!("WASM_RATE_LIMIT");
/// A test plugin with both hooks: it sets `x-tagger-seen` on responses.
const TAGGER: &str = env!("WASM_TAGGER");

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str, sampled: bool) -> String {
    format!("00-{trace}-{span}-{}", if sampled { "01" } else { "00" })
}

/// (trace ID, parent span ID, flags) of a `traceparent`.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn tracing_table(collector: &Collector, extra: &str) -> String {
    format!(
        "[gateway.tracing]\nendpoint = \"{}\"\nexport_interval = \"50ms\"\nservice_name = \"edge\"\n{extra}\n",
        collector.endpoint
    )
}

/// A GET of `path` in the sampled trace `trace`, as a child of the client's span.
async fn sampled_get(gw: &TestGateway, path: &str, trace: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .header("traceparent", traceparent(trace, CLIENT_SPAN, true))
        .send()
        .await
        .expect("send")
}

/// What the echo upstream saw of a GET of `path` with `headers`.
async fn echo_of(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = client().get(gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

fn one(spans: &[Received], what: &str, select: impl Fn(&Received) -> bool) -> Received {
    let found: Vec<&Received> = spans.iter().filter(|s| select(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {spans:#?}");
    found[0].clone()
}

#[tokio::test]
async fn continues_the_client_trace_through_plugins_and_upstream() {
    let collector = Collector::start().await;
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("key-auth", KEY_AUTH), ("rate-limit", RATE_LIMIT)]);
    let log = dir.path().join("access.log");
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            access_log = "{}"
            {}
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "api"
            upstream = "u"
            [[routes.plugins]]
            name = "key-auth"
            config = {{ header = "x-api-key", consumers = [{{ name = "alice", keys = ["k-alice"] }}] }}
            [[routes.plugins]]
            name = "rate-limit"
            config = {{ limit = 1000, window = "1m" }}
            "#,
            log.display(),
            tracing_table(&collector, "").replace('\n', "\n            "),
        ),
    )
    .await
    .expect("start");

    let parent_header = traceparent(CLIENT_TRACE, CLIENT_SPAN, true);
    let echoed = echo_of(
        &gw,
        "/users/7?secret=1",
        &[
            ("x-api-key", "k-alice"),
            ("traceparent", &parent_header),
            ("tracestate", "vendor=abc"),
            ("user-agent", "tracing-test"),
        ],
    )
    .await;
    let sent = echoed["headers"]["traceparent"]
        .as_str()
        .expect("traceparent upstream");
    let (trace, parent, flags) = parse_traceparent(sent);
    assert_eq!(trace, CLIENT_TRACE, "the client's trace goes on upstream");
    assert_eq!(flags, "01");
    assert_ne!(
        parent, CLIENT_SPAN,
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(echoed["headers"]["tracestate"], "vendor=abc");

    // Server span, two request hooks, one upstream try.
    let spans = collector.trace(CLIENT_TRACE, 4).await;
    assert!(spans.iter().all(|s| s.service == "edge"), "{spans:#?}");
    let server = one(&spans, "server span", |s| s.is(SpanKind::Server));
    assert_eq!(
        server.parent_id(),
        CLIENT_SPAN,
        "a child of the client's span"
    );
    assert_eq!(server.span.name, "GET api");
    assert_eq!(
        server.attribute("http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(server.attribute("url.path").as_deref(), Some("/users/7"));
    assert_eq!(server.attribute("url.scheme").as_deref(), Some("http"));
    assert_eq!(
        server.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attribute("wasmgate.route").as_deref(), Some("api"));
    assert_eq!(
        server.attribute("client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        server.attribute("user_agent.original").as_deref(),
        Some("tracing-test")
    );
    assert!(!server.is_error());

    let upstream = one(&spans, "client span", |s| s.is(SpanKind::Client));
    assert_eq!(upstream.parent_id(), server.span_id());
    assert_eq!(
        upstream.span_id(),
        parent,
        "the span the upstream was told of"
    );
    assert_eq!(
        upstream.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        upstream.attribute("server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        upstream.attribute("server.port"),
        Some(up.port().to_string())
    );
    assert_eq!(
        upstream.attribute("url.full"),
        Some(format!("http://{up}/users/7")),
        "without the query"
    );
    assert_eq!(
        upstream.attribute("wasmgate.upstream").as_deref(),
        Some("u")
    );

    for plugin in ["key-auth", "rate-limit"] {
        let hook = one(&spans, plugin, |s| {
            s.attribute("wasmgate.plugin").as_deref() == Some(plugin)
        });
        assert_eq!(hook.span.name, format!("plugin {plugin} on_request"));
        assert_eq!(hook.parent_id(), server.span_id());
        assert_eq!(
            hook.attribute("wasmgate.plugin.outcome").as_deref(),
            Some("continue")
        );
        assert!(hook.span.start_time_unix_nano >= server.span.start_time_unix_nano);
        assert!(hook.span.end_time_unix_nano <= upstream.span.start_time_unix_nano);
    }
    assert!(server.span.end_time_unix_nano >= upstream.span.end_time_unix_nano);

    // The access log line names the trace.
    eventually(
        std::time::Duration::from_secs(5),
        "the access log line",
        || std::fs::read_to_string(&log).is_ok_and(|text| !text.is_empty()),
    )
    .await;
    let line = std::fs::read_to_string(&log).expect("access log");
    let entry: Value = serde_json::from_str(line.lines().next().expect("a line")).expect("json");
    assert_eq!(entry["trace_id"], CLIENT_TRACE);

    // A rejection by a plugin is a span of its own, and a 4xx is no server error.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = sampled_get(&gw, "/users/7", trace).await;
    assert_eq!(resp.status(), 401);
    let spans = collector.trace(trace, 2).await;
    let server = one(&spans, "server span", |s| s.is(SpanKind::Server));
    assert_eq!(
        server.attribute("http.response.status_code").as_deref(),
        Some("401")
    );
    assert!(!server.is_error());
    let hook = one(&spans, "key-auth", |s| s.is(SpanKind::Internal));
    assert_eq!(
        hook.attribute("wasmgate.plugin.outcome").as_deref(),
        Some("reject")
    );
    assert!(
        spans.iter().all(|s| !s.is(SpanKind::Client)),
        "nothing went upstream"
    );
}

#[tokio::test]
async fn starts_a_trace_of_its_own_when_the_client_sends_none() {
    let collector = Collector::start().await;
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("tagger", TAGGER)]);
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\nplugin_cache_dir = \"\"\n{}\n\
             [upstreams.u]\ntargets = [\"{up}\"]\n\
             [[routes]]\nname = \"api\"\nupstream = \"u\"\n\
             [[routes.plugins]]\nname = \"tagger\"\n\
             config = {{ header = \"x-tag\", value = \"t\" }}\n",
            tracing_table(&collector, "sample_ratio = 1.0")
        ),
    )
    .await
    .expect("start");

    let mut traces = Vec::new();
    for _ in 0..2 {
        let resp = client().get(gw.url("/a")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-tagger-seen"], "yes", "on_response ran");
        let echoed: Value = resp.json().await.expect("json");
        let sent = echoed["headers"]["traceparent"]
            .as_str()
            .expect("a traceparent upstream");
        let (trace, parent, flags) = parse_traceparent(sent);
        assert_eq!(flags, "01", "sampled");
        assert!(
            echoed["headers"].get("tracestate").is_none(),
            "none made up"
        );

        // Server span (the root), the request and response hooks, one upstream try.
        let spans = collector.trace(&trace, 4).await;
        let server = one(&spans, "server span", |s| s.is(SpanKind::Server));
        assert_eq!(server.parent_id(), "", "a root span: {server:#?}");
        assert_eq!(server.span.name, "GET api");
        let upstream = one(&spans, "client span", |s| s.is(SpanKind::Client));
        assert_eq!(upstream.parent_id(), server.span_id());
        assert_eq!(
            upstream.span_id(),
            parent,
            "the span the upstream was told of"
        );
        let request_hook = one(&spans, "on_request", |s| {
            s.attribute("wasmgate.plugin.hook").as_deref() == Some("on_request")
        });
        let response_hook = one(&spans, "on_response", |s| {
            s.attribute("wasmgate.plugin.hook").as_deref() == Some("on_response")
        });
        assert_eq!(response_hook.span.name, "plugin tagger on_response");
        for hook in [&request_hook, &response_hook] {
            assert!(hook.is(SpanKind::Internal));
            assert_eq!(hook.parent_id(), server.span_id());
            assert_eq!(hook.attribute("wasmgate.plugin").as_deref(), Some("tagger"));
            assert_eq!(
                hook.attribute("wasmgate.plugin.outcome").as_deref(),
                Some("continue")
            );
        }
        // The response hook ran on the upstream's answer.
        assert!(request_hook.span.end_time_unix_nano <= upstream.span.start_time_unix_nano);
        assert!(response_hook.span.start_time_unix_nano >= upstream.span.start_time_unix_nano);
        assert!(response_hook.span.end_time_unix_nano <= server.span.end_time_unix_nano);
        traces.push(trace);
    }
    assert_ne!(
        traces[0], traces[1],
        "each request starts a trace of its own"
    );
}

#[tokio::test]
async fn starts_traces_by_ratio_and_follows_the_client_decision() {
    let collector = Collector::start().await;
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(
        up,
        &tracing_table(&collector, "sample_ratio = 0.0"),
    ))
    .await
    .expect("start");

    // No trace from the client, ratio 0: not recorded, but the upstream still gets a context
    // (not sampled), so everything behind the gateway agrees.
    let echoed = echo_of(&gw, "/a", &[]).await;
    let (unsampled, _, flags) = parse_traceparent(
        echoed["headers"]["traceparent"]
            .as_str()
            .expect("traceparent"),
    );
    assert_eq!(flags, "00");

    // A sampled client trace is recorded whatever the ratio.
    let trace = "11112222333344445555666677778888";
    let resp = sampled_get(&gw, "/b", trace).await;
    assert_eq!(resp.status(), 200);
    collector.trace(trace, 2).await;
    // Spans are exported in the order they ended: the first request's would have come first.
    assert!(
        collector.spans().iter().all(|s| s.trace_id() != unsampled),
        "an unsampled trace was exported"
    );
}

#[tokio::test]
async fn a_failed_try_and_its_retry_are_two_client_spans() {
    let collector = Collector::start().await;
    let up = echo_upstream("up").await;
    let dead = closed_port();
    let gw = TestGateway::start(&format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n{}\n\
         [upstreams.u]\ntargets = [{{ address = \"{dead}\", weight = 100 }}, \"{up}\"]\n\
         [[routes]]\nname = \"all\"\nupstream = \"u\"\n",
        tracing_table(&collector, "")
    ))
    .await
    .expect("start");
    // The heavier target first (smooth weighted round robin): the dead one, then the retry on
    // the other.
    let trace = "99990000999900009999000099990000";
    let resp = sampled_get(&gw, "/", trace).await;
    assert_eq!(resp.status(), 200);
    let spans = collector.trace(trace, 3).await;
    let tries: Vec<&Received> = spans.iter().filter(|s| s.is(SpanKind::Client)).collect();
    assert_eq!(tries.len(), 2, "{spans:#?}");
    let failed = one(&spans, "failed try", |s| {
        s.is(SpanKind::Client) && s.attribute("server.port") == Some(dead.port().to_string())
    });
    assert_eq!(failed.attribute("error.type").as_deref(), Some("connect"));
    assert!(failed.is_error());
    let retried = one(&spans, "retry", |s| {
        s.is(SpanKind::Client) && s.attribute("server.port") == Some(up.port().to_string())
    });
    assert_eq!(
        retried.attribute("http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        retried.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(retried.span.start_time_unix_nano >= failed.span.end_time_unix_nano);
}

#[tokio::test]
async fn an_absent_collector_costs_clients_nothing() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(
        up,
        &format!(
            "[gateway.tracing]\nendpoint = \"http://{}\"\nexport_interval = \"10ms\"\ntimeout = \"100ms\"",
            closed_port()
        ),
    ))
    .await
    .expect("start");
    for _ in 0..20 {
        let resp = client().get(gw.url("/")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn without_tracing_a_client_traceparent_passes_untouched() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, ""))
        .await
        .expect("start");
    let sent = traceparent(CLIENT_TRACE, CLIENT_SPAN, true);
    let echoed = echo_of(&gw, "/", &[("traceparent", &sent)]).await;
    assert_eq!(echoed["headers"]["traceparent"], sent.as_str());
    let echoed = echo_of(&gw, "/", &[]).await;
    assert!(
        echoed["headers"].get("traceparent").is_none(),
        "none made up"
    );
}
