//! Compression over real sockets: each codec's responses decoded by a real client library
//! (reqwest's gzip, brotli and zstd), negotiation by q-values, the headers a compressed
//! response needs (Vary, a weak ETag, no Content-Length), what is never compressed, streaming
//! without buffering, and compressed request bodies decoded for plugins that read them.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use wasmgate_tests::*;

const TRANSFORM: &str = env!("WASM_TRANSFORM");

/// A JSON document of about `n` bytes, compressible as real API answers are.
fn document(n: usize) -> String {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < n {
        out += &format!(r#"{{"id":{i},"name":"item {i}","tags":["a","b"]}},"#);
        i += 1;
    }
    out.pop();
    out + "]"
}

/// Answers `document(size)` (query `size`, default 4096) as `type` (query, default JSON), with
/// an ETag; query `encoded` says it is gzip already.
async fn origin() -> ScriptedUpstream {
    ScriptedUpstream::start(|seen| async move {
        let size = seen
            .query("size")
            .map_or(4096, |s| s.parse().unwrap_or(4096));
        let kind = seen
            .query("type")
            .unwrap_or_else(|| "application/json".to_owned());
        let mut resp = http::Response::builder()
            .header("content-type", kind)
            .header("etag", "\"v1\"");
        if seen.query("encoded").is_some() {
            resp = resp.header("content-encoding", "gzip");
        }
        resp.body(Full::new(Bytes::from(document(size))))
            .expect("response")
    })
    .await
}

/// A client that decodes nothing and sends `Accept-Encoding` as given.
fn raw() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .expect("client")
}

#[tokio::test]
async fn each_codec_round_trips_through_a_real_client() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "compression = {}"))
        .await
        .expect("start");
    let original = document(4096);
    for (token, decoder) in [
        ("gzip", reqwest::Client::builder().no_brotli().no_zstd()),
        ("br", reqwest::Client::builder().no_gzip().no_zstd()),
        ("zstd", reqwest::Client::builder().no_gzip().no_brotli()),
    ] {
        let resp = raw()
            .get(gw.url("/doc"))
            .header("accept-encoding", token)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["content-encoding"], token);
        assert!(
            h["vary"]
                .to_str()
                .unwrap()
                .to_ascii_lowercase()
                .contains("accept-encoding")
        );
        assert_eq!(
            h["etag"], "W/\"v1\"",
            "{token}: a compressed body's ETag is weak"
        );
        assert!(h.get("content-length").is_none());
        let compressed = resp.bytes().await.expect("body");
        assert!(
            compressed.len() * 3 < original.len(),
            "{token}: {} of {} bytes",
            compressed.len(),
            original.len()
        );
        let client = decoder.no_proxy().build().expect("client");
        let decoded = client.get(gw.url("/doc")).send().await.expect("send");
        assert_eq!(decoded.text().await.expect("decoded"), original, "{token}");
    }
    assert!(
        gw.metric(r#"wasmgate_compression_bytes_total{route="api",codec="gzip",direction="in"}"#)
            >= 8192
    );
    let out =
        gw.metric(r#"wasmgate_compression_bytes_total{route="api",codec="gzip",direction="out"}"#);
    assert!(out > 0 && out < 4096, "{out}");
}

#[tokio::test]
async fn q_values_and_server_order_choose_the_codec() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(
        origin.addr,
        r#"compression = { codecs = ["zstd", "br", "gzip"] }"#,
    ))
    .await
    .expect("start");
    let table = [
        ("gzip;q=0.5, br;q=0.9", Some("br")),
        ("gzip, br, zstd", Some("zstd")),
        ("br;q=1, zstd;q=0.999", Some("br")),
        ("*", Some("zstd")),
        ("zstd;q=0, *", Some("br")),
        ("identity", None),
        ("gzip;q=0", None),
        ("deflate", None),
    ];
    for (accept, expected) in table {
        let resp = raw()
            .get(gw.url("/doc"))
            .header("accept-encoding", accept)
            .send()
            .await
            .expect("send");
        let got = resp
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), expected, "Accept-Encoding: {accept}");
        assert!(resp.headers().contains_key("vary"), "{accept}: always Vary");
    }
}

#[tokio::test]
async fn small_bodies_other_types_and_encoded_answers_pass_as_they_are() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(
        origin.addr,
        r#"compression = { min_size = "1KiB" }"#,
    ))
    .await
    .expect("start");
    for (path, why) in [
        ("/doc?size=200", "below min_size"),
        ("/doc?type=image/png", "not a compressed type"),
        ("/doc?encoded=1", "already encoded"),
    ] {
        let resp = raw()
            .get(gw.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("send");
        let encoding = resp.headers().get("content-encoding").cloned();
        let etag = resp.headers()["etag"].clone();
        let body = resp.bytes().await.expect("body");
        if path.contains("encoded") {
            assert_eq!(encoding.unwrap(), "gzip", "{why}");
            assert_eq!(body, document(4096), "{why}: never compressed twice");
        } else {
            assert!(encoding.is_none(), "{why}");
        }
        assert_eq!(etag, "\"v1\"", "{why}: the ETag stays strong");
    }
}

#[tokio::test]
async fn the_gateway_default_applies_unless_a_route_turns_it_off() {
    let origin = origin().await;
    let config = format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        [gateway.compression]
        codecs = ["gzip"]
        [upstreams.origin]
        targets = ["{}"]
        [[routes]]
        name = "plain"
        paths = ["/plain"]
        upstream = "origin"
        compression = false
        [[routes]]
        name = "api"
        upstream = "origin"
        "#,
        origin.addr
    );
    let gw = TestGateway::start(&config).await.expect("start");
    let encoding = async |path: &str| {
        raw()
            .get(gw.url(path))
            .header("accept-encoding", "gzip, br")
            .send()
            .await
            .expect("send")
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(encoding("/doc").await.as_deref(), Some("gzip"));
    assert_eq!(encoding("/plain").await, None);
}

#[tokio::test]
async fn a_head_gets_the_headers_a_get_would() {
    let origin = origin().await;
    let gw = TestGateway::start(&origin_route(origin.addr, "compression = {}"))
        .await
        .expect("start");
    let resp = raw()
        .head(gw.url("/doc"))
        .header("accept-encoding", "br")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["content-encoding"], "br");
    assert_eq!(resp.bytes().await.expect("body").len(), 0);
}

/// Sends `first`, then waits for the test's go before `second`.
async fn streaming_origin(go: tokio::sync::oneshot::Receiver<()>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let go = std::sync::Mutex::new(Some(go));
        let service = hyper::service::service_fn(move |_req| {
            let go = go.lock().unwrap().take();
            async move {
                let frames = futures_util::stream::unfold((0, go), |(i, go)| async move {
                    match i {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from("data: first\n\n"))),
                            (1, go),
                        )),
                        1 => {
                            if let Some(go) = go {
                                let _ = go.await;
                            }
                            Some((Ok(Frame::data(Bytes::from("data: second\n\n"))), (2, None)))
                        }
                        _ => None,
                    }
                });
                let resp = http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(StreamBody::new(frames))
                    .expect("response");
                Ok::<_, Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    addr
}

#[tokio::test]
async fn what_arrived_is_sent_compressed_while_the_upstream_waits() {
    let (go, wait) = tokio::sync::oneshot::channel();
    let origin = streaming_origin(wait).await;
    let gw = TestGateway::start(&origin_route(origin, r#"compression = { min_size = 0 }"#))
        .await
        .expect("start");
    let client = reqwest::Client::builder()
        .no_proxy()
        .no_brotli()
        .no_zstd()
        .build()
        .expect("client");
    let mut resp = client.get(gw.url("/events")).send().await.expect("send");
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the first event arrives before the upstream sends the second")
        .expect("chunk")
        .expect("some data");
    assert_eq!(first, Bytes::from("data: first\n\n"));
    go.send(()).expect("go");
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: second\n\n");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn compressed_request_bodies_are_decoded_for_plugins_that_read_them() {
    let origin =
        ScriptedUpstream::start(|_| async { http::Response::new(Full::new(Bytes::new())) }).await;
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
        max_body = "64KiB"
        compression = {{ decompress_requests = true }}
        [[routes.plugins]]
        name = "transform"
        config = {{ request = {{ json_body = {{ set = {{ checked = true }} }} }} }}
        "#,
        origin.addr
    );
    let gw = TestGateway::start_in(workdir_with_plugins(&[("transform", TRANSFORM)]), &config)
        .await
        .expect("start");
    let c = client();
    let resp = c
        .post(gw.url("/orders"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(br#"{"item":"book"}"#))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen = &origin.requests()[0];
    assert!(seen.headers.get("content-encoding").is_none());
    let json: serde_json::Value = serde_json::from_slice(&seen.body).expect("json upstream");
    assert_eq!(json, serde_json::json!({"item": "book", "checked": true}));

    // A small compressed body that expands beyond max_body is refused, not expanded.
    let bomb = gzip(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 8192);
    let resp = c
        .post(gw.url("/orders"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 413);
    let corrupt = c
        .post(gw.url("/orders"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body("not gzip at all")
        .send()
        .await
        .expect("send");
    assert_eq!(corrupt.status(), 400);
    assert_eq!(origin.count(), 1);
}
