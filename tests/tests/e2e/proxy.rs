//! The data path over real sockets: routing, forwarding, errors as responses, protocols, limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmgate_tests::*;

async fn json(resp: reqwest::Response) -> Value {
    resp.json().await.expect("json body")
}

#[tokio::test]
async fn strip_path_removes_the_matched_prefix_and_keeps_the_query() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.u]
        targets = ["{up}"]
        [[routes]]
        name = "stripped"
        paths = ["/api"]
        upstream = "u"
        strip_path = true
        [[routes]]
        name = "kept"
        paths = ["/keep"]
        upstream = "u"
        "#
    ))
    .await
    .expect("start");
    let c = client();
    let body = json(
        c.get(gw.url("/api/users/7?x=1"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(body["path"], "/users/7");
    assert_eq!(body["query"], "x=1");
    let body = json(c.get(gw.url("/api")).send().await.expect("send")).await;
    assert_eq!(body["path"], "/");
    let body = json(c.get(gw.url("/keep/a")).send().await.expect("send")).await;
    assert_eq!(body["path"], "/keep/a");
}

#[tokio::test]
async fn weighted_round_robin_spreads_requests_by_weight() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let gw = TestGateway::start(&format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.pool]
        targets = ["{a}", {{ address = "{b}", weight = 3 }}]
        [[routes]]
        name = "all"
        upstream = "pool"
        "#
    ))
    .await
    .expect("start");
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let resp = c.get(gw.url("/")).send().await.expect("send");
        let server = resp.headers()["x-echo-server"]
            .to_str()
            .expect("ascii")
            .to_owned();
        *counts.entry(server).or_default() += 1;
    }
    assert_eq!(counts["a"], 10, "{counts:?}");
    assert_eq!(counts["b"], 30, "{counts:?}");
}

#[tokio::test]
async fn routes_by_exact_and_wildcard_host() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.u]
        targets = ["{up}"]
        [[routes]]
        name = "api"
        hosts = ["api.example.com"]
        respond = {{ body = "api" }}
        [[routes]]
        name = "tenants"
        hosts = ["*.example.com"]
        respond = {{ body = "tenant" }}
        [[routes]]
        name = "fallback"
        upstream = "u"
        "#
    ))
    .await
    .expect("start");
    let c = client();
    let text = |host: &'static str| {
        let c = c.clone();
        let url = gw.url("/x");
        async move {
            c.get(url)
                .header("host", host)
                .send()
                .await
                .expect("send")
                .text()
                .await
                .expect("text")
        }
    };
    assert_eq!(text("api.example.com").await, "api");
    assert_eq!(text("API.Example.com:8080").await, "api");
    assert_eq!(text("shop.example.com").await, "tenant");
    let other: Value = serde_json::from_str(&text("other.org").await).expect("json");
    assert_eq!(other["server"], "up");
}

#[tokio::test]
async fn unmatched_request_gets_404_json_with_request_id() {
    let gw = TestGateway::start(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [[routes]]
        name = "only"
        paths = ["/only"]
        respond = { body = "x" }
        "#,
    )
    .await
    .expect("start");
    let resp = client()
        .get(gw.url("/elsewhere"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp).await;
    assert_eq!(body["error"], "no_route");
    assert_eq!(body["message"], "no route matched");
    assert_eq!(body["request_id"], id.as_str());
}

#[tokio::test]
async fn exact_path_mock_answers_with_configured_status_body_and_headers() {
    let gw = TestGateway::start(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [[routes]]
        name = "mock"
        paths = ["=/health"]
        respond = { status = 201, body = '{"ok":true}', headers = { content-type = "application/json", x-mock = "1" } }
        "#,
    )
    .await
    .expect("start");
    let c = client();
    let resp = c.get(gw.url("/health")).send().await.expect("send");
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-mock"], "1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.expect("text"), r#"{"ok":true}"#);
    let resp = c.get(gw.url("/health/deep")).send().await.expect("send");
    assert_eq!(resp.status(), 404, "=/health is exact");
}

#[tokio::test]
async fn method_mismatch_gets_405_with_allow() {
    let gw = TestGateway::start(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [[routes]]
        name = "read"
        paths = ["/items"]
        methods = ["GET"]
        respond = { body = "items" }
        "#,
    )
    .await
    .expect("start");
    let c = client();
    assert_eq!(
        c.get(gw.url("/items")).send().await.expect("send").status(),
        200
    );
    let resp = c.post(gw.url("/items")).send().await.expect("send");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET");
    assert_eq!(json(resp).await["error"], "method_not_allowed");
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"wasmgate_requests_total{route="read",method="POST",status="405"} 1"#),
        "counted under the route that matched all but the method:\n{metrics}"
    );
}

#[tokio::test]
async fn refused_upstream_gets_502_and_slow_upstream_gets_504() {
    let dead = closed_port();
    let up = echo_upstream("slow").await;
    let gw = TestGateway::start(&format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.dead]
        targets = ["{dead}"]
        connect_timeout = "1s"
        [upstreams.slow]
        targets = ["{up}"]
        timeout = "500ms"
        [[routes]]
        name = "dead"
        paths = ["/dead"]
        upstream = "dead"
        [[routes]]
        name = "slow"
        paths = ["/delay"]
        upstream = "slow"
        "#
    ))
    .await
    .expect("start");
    let c = client();
    let resp = c.get(gw.url("/dead")).send().await.expect("send");
    assert_eq!(resp.status(), 502);
    assert_eq!(json(resp).await["error"], "upstream_unavailable");

    let started = Instant::now();
    let resp = c.get(gw.url("/delay/3000")).send().await.expect("send");
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(json(resp).await["error"], "upstream_timeout");

    let resp = c.get(gw.url("/delay/50")).send().await.expect("send");
    assert_eq!(
        resp.status(),
        200,
        "a fast answer within the timeout passes"
    );
}

#[tokio::test]
async fn ejected_target_is_skipped_while_a_healthy_one_remains() {
    let dead = closed_port();
    let up = echo_upstream("alive").await;
    let gw = TestGateway::start(&format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.pool]
        targets = ["{dead}", "{up}"]
        [[routes]]
        name = "all"
        upstream = "pool"
        "#
    ))
    .await
    .expect("start");
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            c.get(gw.url("/"))
                .send()
                .await
                .expect("send")
                .status()
                .as_u16(),
        );
    }
    // The first pick of the dead target is refused, retried on the live one, and the dead
    // target ejected: it is not tried again.
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(
        gw.metric(&format!(
            "wasmgate_upstream_requests_total{{upstream=\"pool\",target=\"{dead}\",outcome=\"connect_error\"}}"
        )),
        1
    );
}

#[tokio::test]
async fn forwards_with_forwarded_headers_request_id_and_preserved_host() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, ""))
        .await
        .expect("start");
    let resp = client()
        .get(gw.url("/"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .expect("send");
    let returned_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = json(resp).await;
    let h = &body["headers"];
    assert_eq!(h["host"], "shop.example.com");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-end-to-end"], "kept");
    assert!(
        h.get("x-hop").is_none(),
        "fields named in Connection are hop-by-hop"
    );
    assert!(h.get("keep-alive").is_none());
    assert_eq!(h["x-request-id"], returned_id.as_str());
    assert_eq!(returned_id.len(), 36, "a generated UUID");

    let resp = client()
        .get(gw.url("/"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(json(resp).await["headers"]["x-request-id"], "trace-abc-123");
}

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, ""))
        .await
        .expect("start");
    let resp = h2c_client()
        .post(gw.url("/h2?q=1"))
        .body("hello")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["path"], "/h2");
    assert_eq!(body["body_bytes"], 5);
    assert_eq!(
        body["version"], "HTTP/1.1",
        "upstreams are spoken to in HTTP/1.1"
    );
    assert!(
        body["headers"]["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1:"))
    );
}

#[tokio::test]
async fn tls_listener_negotiates_h2_and_http1_and_picks_certificate_by_sni() {
    let dir = workdir();
    let api = self_signed(dir.path(), "api", &["api.example.com"]);
    let wild = self_signed(dir.path(), "wild", &["*.shop.example"]);
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            [gateway.tls]
            listen = ["127.0.0.1:0"]
            certificates = [
              {{ cert = "api.pem", key = "api.key" }},
              {{ cert = "wild.pem", key = "wild.key" }},
            ]
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "all"
            upstream = "u"
            "#
        ),
    )
    .await
    .expect("start");
    let https = gw.https.expect("tls listener");
    let port = https.port();

    // Each client trusts only one certificate: a handshake succeeds only if SNI picked it.
    let h2 = tls_client(&[&api], https, &["api.example.com"], true);
    let resp = h2
        .get(format!("https://api.example.com:{port}/secure"))
        .send()
        .await
        .expect("h2 over tls");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let body = json(resp).await;
    assert_eq!(body["headers"]["x-forwarded-proto"], "https");

    let h1 = tls_client(&[&wild], https, &["a.shop.example"], false);
    let resp = h1
        .get(format!("https://a.shop.example:{port}/"))
        .send()
        .await
        .expect("http/1.1 over tls with the wildcard certificate");
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);

    let wrong = tls_client(&[&wild], https, &["api.example.com"], true);
    assert!(
        wrong
            .get(format!("https://api.example.com:{port}/"))
            .send()
            .await
            .is_err(),
        "api.example.com must get the api certificate, which this client does not trust"
    );
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let gw = TestGateway::start(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [[routes]]
        name = "all"
        respond = { body = "ok" }
        "#,
    )
    .await
    .expect("start");
    let limit = Duration::from_secs(5);
    let garbage = raw_exchange(gw.http, b"\x16\x03\x01garbage\r\n\r\n", limit)
        .await
        .expect("io");
    assert_eq!(raw_status(&garbage), Some(400), "{garbage}");
    let no_host = raw_exchange(
        gw.http,
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await
    .expect("io");
    assert_eq!(raw_status(&no_host), Some(400), "{no_host}");
    assert!(no_host.contains("\"error\":\"bad_request\""), "{no_host}");
    let two_hosts = raw_exchange(
        gw.http,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await
    .expect("io");
    assert_eq!(raw_status(&two_hosts), Some(400), "{two_hosts}");
    let ok = raw_exchange(
        gw.http,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await
    .expect("io");
    assert_eq!(raw_status(&ok), Some(200), "{ok}");
}

#[tokio::test]
async fn oversized_header_sections_get_431() {
    let gw = TestGateway::start(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        max_header_size = "16KiB"
        max_headers = 20
        [[routes]]
        name = "all"
        respond = { body = "ok" }
        "#,
    )
    .await
    .expect("start");
    let limit = Duration::from_secs(5);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let resp = raw_exchange(gw.http, big.as_bytes(), limit)
        .await
        .expect("io");
    assert_eq!(raw_status(&resp), Some(431), "{resp}");

    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let resp = raw_exchange(gw.http, many.as_bytes(), limit)
        .await
        .expect("io");
    assert_eq!(raw_status(&resp), Some(431), "{resp}");

    // The same limit holds over HTTP/2.
    let mut req = h2c_client().get(gw.url("/"));
    for i in 0..30 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status(), 431);
}

#[tokio::test]
async fn slow_header_senders_are_cut_off_and_idle_connections_closed() {
    let gw = TestGateway::start(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        header_read_timeout = "300ms"
        idle_timeout = "400ms"
        [[routes]]
        name = "all"
        respond = { body = "ok" }
        "#,
    )
    .await
    .expect("start");
    // Slowloris: a header section that never ends is closed after header_read_timeout.
    let started = Instant::now();
    let resp = raw_exchange(
        gw.http,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .await
    .expect("io");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "connection held for {took:?}"
    );
    assert!(!resp.contains("200 OK"), "{resp}");

    // HTTP/2 has no header timeout of its own; an idle h2c connection is closed by idle_timeout.
    let tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let (_requests, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(closed.is_ok(), "idle h2 connection was not closed");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_h2c_preface_split_across_segments_is_still_http2_and_a_silent_client_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        header_read_timeout = "300ms"
        [[routes]]
        name = "all"
        respond = { body = "ok" }
        "#,
    )
    .await
    .expect("start");
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.write_all(&preface[..10]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(30)).await;
    tcp.write_all(&preface[10..]).await.expect("write");
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("write");
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
        .await
        .expect("server answers in time")
        .expect("read");
    assert_eq!(
        head[3], 4,
        "the server's first frame is SETTINGS, not HTTP/1: {head:?}"
    );

    // A client that connects and never sends a byte is closed after header_read_timeout.
    let mut silent = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn streams_chunked_uploads_and_downloads() {
    use futures_util::StreamExt;
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, ""))
        .await
        .expect("start");
    // A body of unknown length goes out chunked.
    let chunks = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'z'; 16 * 1024]))),
    );
    let resp = client()
        .post(gw.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("send");
    let body = json(resp).await;
    assert_eq!(body["body_bytes"], 64 * 16 * 1024);
    assert_eq!(body["headers"]["transfer-encoding"], "chunked");

    let resp = client()
        .get(gw.url("/bytes/5000000"))
        .send()
        .await
        .expect("send");
    let mut total = 0usize;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        total += chunk.expect("chunk").len();
    }
    assert_eq!(total, 5_000_000);
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let (up, mut arrived) = holding_upstream(Duration::from_millis(700)).await;
    let gw = TestGateway::start(&proxy_everything_to(up, "shutdown_grace = \"5s\""))
        .await
        .expect("start");
    let addr = gw.http;
    let url = gw.url("/slow");
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    arrived
        .recv()
        .await
        .expect("the request reached the upstream");
    assert!(gw.shutdown().await, "drained within the grace period");
    let resp = in_flight
        .await
        .expect("join")
        .expect("in-flight request finished");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "slow");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn dropping_a_running_gateway_closes_its_listeners() {
    let gw = TestGateway::start(&proxy_everything_to(closed_port(), "workers = 2"))
        .await
        .expect("start");
    let addr = gw.http;
    // Served by a worker (a 502: nothing listens upstream), not just queued by the kernel.
    let resp = client().get(gw.url("/x")).send().await.expect("served");
    assert_eq!(resp.status(), 502);
    drop(gw);
    // The workers stop on their own threads once told to: poll, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting 5 s after the gateway was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_reload_keeps_the_running_number_of_workers_and_says_a_restart_is_needed() {
    let dir = workdir();
    let path = dir.path().join("gateway.toml");
    let text = |workers: u32| {
        proxy_everything_to(
            closed_port(),
            &format!("workers = {workers}\naccess_log = \"off\""),
        )
    };
    std::fs::write(&path, text(2)).expect("write");
    let config = wasmgate_config::load(&path).expect("valid");
    let gateway = wasmgate_proxy::Gateway::bind(config).await.expect("start");
    let control = gateway.control();
    let server = tokio::spawn(gateway.run(std::future::pending()));
    std::fs::write(&path, text(3)).expect("write");
    let reloaded = control
        .reload(wasmgate_config::load(&path).expect("valid"))
        .await
        .expect("reloaded");
    assert_eq!(reloaded.restart_needed, ["gateway.workers"]);
    assert_eq!(control.inspect(|a| a.config.gateway.workers), 2);
    server.abort();
}

#[tokio::test]
async fn https_only_routes_refuse_or_redirect_plain_http_and_serve_tls() {
    let dir = workdir();
    let cert = self_signed(dir.path(), "api", &["api.example.com"]);
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            [gateway.tls]
            listen = ["127.0.0.1:0"]
            certificates = [{{ cert = "api.pem", key = "api.key" }}]
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "secure"
            paths = ["/secure"]
            protocols = ["https"]
            upstream = "u"
            [[routes]]
            name = "moved"
            paths = ["/moved"]
            protocols = ["https"]
            https_redirect = true
            upstream = "u"
            [[routes]]
            name = "open"
            upstream = "u"
            "#
        ),
    )
    .await
    .expect("start");
    let https = gw.https.expect("tls listener");
    let plain = client();

    let refused = plain.get(gw.url("/secure/x")).send().await.expect("send");
    assert_eq!(refused.status(), 426);
    assert_eq!(refused.headers()["upgrade"], "TLS/1.2, HTTP/1.1");
    assert_eq!(json(refused).await["error"], "https_required");

    let redirected = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("http://{}/moved/a?b=1", gw.http))
        .header("host", "api.example.com:8080")
        .send()
        .await
        .expect("send");
    assert_eq!(redirected.status(), 308, "method and body are kept");
    assert_eq!(
        redirected.headers()["location"],
        format!("https://api.example.com:{}/moved/a?b=1", https.port()).as_str()
    );
    assert!(redirected.headers().get("x-echo-server").is_none());

    let tls = tls_client(&[&cert], https, &["api.example.com"], true);
    for path in ["/secure/x", "/moved/a"] {
        let resp = tls
            .get(format!("https://api.example.com:{}{path}", https.port()))
            .send()
            .await
            .expect("tls");
        assert_eq!(resp.status(), 200, "{path}");
    }
    // An IPv6 host keeps its brackets; HEAD gets the redirect without a body; a request with no
    // host at all cannot be redirected anywhere and gets the 426.
    let limit = Duration::from_secs(5);
    let v6 = raw_exchange(
        gw.http,
        b"HEAD /moved/z HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
        limit,
    )
    .await
    .expect("io");
    assert_eq!(raw_status(&v6), Some(308), "{v6}");
    assert!(
        v6.contains(&format!(
            "location: https://[::1]:{}/moved/z\r\n",
            https.port()
        )),
        "{v6}"
    );
    assert!(v6.ends_with("\r\n\r\n"), "no body: {v6}");
    let hostless = raw_exchange(gw.http, b"GET /moved/z HTTP/1.0\r\n\r\n", limit)
        .await
        .expect("io");
    assert_eq!(raw_status(&hostless), Some(426), "{hostless}");
    assert!(hostless.contains("connection: upgrade"), "{hostless}");

    let h2c = h2c_client()
        .get(gw.url("/secure/x"))
        .send()
        .await
        .expect("h2c");
    assert_eq!(h2c.status(), 426);
    assert!(
        h2c.headers().get("upgrade").is_none(),
        "no Upgrade in HTTP/2"
    );
    assert_eq!(
        plain
            .get(gw.url("/other"))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"wasmgate_requests_total{route="moved",method="POST",status="308"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn preserve_host_false_sends_the_targets_address_as_host() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [upstreams.u]
        targets = ["{up}"]
        [[routes]]
        name = "target-host"
        paths = ["/t"]
        preserve_host = false
        upstream = "u"
        [[routes]]
        name = "client-host"
        upstream = "u"
        "#
    ))
    .await
    .expect("start");
    let c = client();
    let seen = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let resp = c
                .get(url)
                .header("host", "api.example.com")
                .send()
                .await
                .expect("send");
            json(resp).await["headers"].clone()
        }
    };
    let target = seen("/t/x").await;
    assert_eq!(target["host"], up.to_string().as_str());
    assert_eq!(
        target["x-forwarded-host"], "api.example.com",
        "the client's, still"
    );
    let client_host = seen("/x").await;
    assert_eq!(
        client_host["host"], "api.example.com",
        "preserved by default"
    );
}
