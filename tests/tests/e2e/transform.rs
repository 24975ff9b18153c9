//! The shipped `transform` plugin through a real gateway, with the issue's config shape: path
//! rewrite, request header edits, query edits, JSON body set/remove in both directions, response
//! headers; non-JSON and oversized bodies untouched.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use wasmgate_tests::*;

const TRANSFORM: &str = env!("WASM_TRANSFORM");

/// The issue's config shape with every key used.
const CONFIG: &str = r#"{ request = { set_headers = { x-added = "yes" }, add_headers = { x-tag = "gateway" }, remove_headers = ["x-remove-me"], rename_headers = { x-old = "x-new" }, rewrite_path = { pattern = "^/old/(.*)$", replacement = "/new/$1" }, set_query = { v = "2" }, remove_query = ["debug"], json_body = { set = { source = "gateway", meta = { n = 1 } }, remove = ["password"] } }, response = { set_headers = { x-served-by = "wasmgate" }, remove_headers = ["x-upstream-secret"], json_body = { set = { transformed = true }, remove = ["method"] } } }"#;

/// An upstream that answers with what it received as JSON, body included (the shared echo
/// upstream only counts body bytes): `method`, `path`, `query`, `headers` (first values),
/// `body` (text). Its answer carries `x-upstream-secret`.
async fn body_echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut headers = serde_json::Map::new();
                    for (name, value) in &parts.headers {
                        headers
                            .entry(name.as_str())
                            .or_insert_with(|| json!(value.to_str().unwrap_or("<binary>")));
                    }
                    let json = json!({
                        "method": parts.method.as_str(),
                        "path": parts.uri.path(),
                        "query": parts.uri.query(),
                        "headers": headers,
                        "x_tag_values": parts.headers.get_all("x-tag").iter()
                            .map(|v| v.to_str().unwrap_or_default()).collect::<Vec<_>>(),
                        "body": String::from_utf8_lossy(&body),
                    });
                    let response = hyper::Response::builder()
                        .header("content-type", "application/json")
                        .header("x-upstream-secret", "s3cr3t")
                        .body(Full::new(Bytes::from(json.to_string())))
                        .expect("response");
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// JSON body edits both ways (so the gateway buffers bodies), and a response header; no path or
/// query edit, so the route's `strip_path` still applies.
const SMALL_CONFIG: &str = r#"{ request = { json_body = { remove = ["password"] } }, response = { set_headers = { x-served-by = "wasmgate" }, json_body = { set = { transformed = true } } } }"#;

/// A gateway with `transform.wasm`: route `t` (everything) with [`CONFIG`] in front of the body
/// echo, route `/small` with [`SMALL_CONFIG`] and `max_body = "1KiB"` in front of the shared
/// echo upstream (whose `/bytes/N` streams N bytes).
async fn gateway() -> TestGateway {
    let up = body_echo_upstream().await;
    let echo = echo_upstream("echo").await;
    let dir = workdir_with_plugins(&[("transform", TRANSFORM)]);
    TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [upstreams.echo]
            targets = ["{echo}"]
            [[routes]]
            name = "small"
            paths = ["/small"]
            strip_path = true
            upstream = "echo"
            max_body = "1KiB"
            [[routes.plugins]]
            name = "transform"
            config = {SMALL_CONFIG}
            [[routes]]
            name = "t"
            paths = ["/"]
            upstream = "u"
            [[routes.plugins]]
            name = "transform"
            config = {CONFIG}
            "#
        ),
    )
    .await
    .expect("start")
}

#[tokio::test]
async fn edits_the_request_on_its_way_upstream() {
    let gw = gateway().await;
    let resp = client()
        .post(gw.url("/old/items/7?debug=1&page=2"))
        .header("content-type", "application/json")
        .header("x-remove-me", "1")
        .header("x-old", "renamed")
        .header("x-added", "spoofed")
        .header("x-tag", "client")
        .body(r#"{"user":"ann","password":"hunter2","n":12345678901234567890}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.expect("json");
    assert_eq!(seen["path"], "/new/items/7", "path rewritten");
    assert_eq!(seen["query"], "page=2&v=2", "debug removed, v set");
    let headers = &seen["headers"];
    assert_eq!(headers["x-added"], "yes");
    assert!(headers.get("x-remove-me").is_none());
    assert!(headers.get("x-old").is_none());
    assert_eq!(headers["x-new"], "renamed");
    assert_eq!(seen["x_tag_values"], json!(["client", "gateway"]));
    let body = seen["body"].as_str().expect("body text");
    assert_eq!(
        body, r#"{"user":"ann","n":12345678901234567890,"meta":{"n":1},"source":"gateway"}"#,
        "password removed, keys set, untouched members byte for byte"
    );
    assert_eq!(
        headers["content-length"],
        body.len().to_string(),
        "content-length follows the edited body"
    );
}

#[tokio::test]
async fn edits_the_response_on_its_way_back() {
    let gw = gateway().await;
    let resp = client()
        .get(gw.url("/anything"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "wasmgate");
    assert!(resp.headers().get("x-upstream-secret").is_none());
    let length: usize = resp.headers()["content-length"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    let text = resp.text().await.expect("text");
    assert_eq!(text.len(), length, "content-length follows the edited body");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["transformed"], true);
    assert!(body.get("method").is_none(), "removed");
    assert_eq!(
        body["path"], "/anything",
        "paths that do not match are kept"
    );
}

#[tokio::test]
async fn non_json_bodies_pass_untouched() {
    let gw = gateway().await;
    let sent = r#"{"password":"kept because this is not JSON by its type"}"#;
    let seen: Value = client()
        .post(gw.url("/form"))
        .header("content-type", "text/plain")
        .body(sent)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["body"], sent);
}

#[tokio::test]
async fn requests_over_max_body_are_refused_and_responses_over_it_stream_untouched() {
    let gw = gateway().await;
    let c = client();
    let big = format!(r#"{{"password":"{}"}}"#, "x".repeat(2000));
    let resp = c
        .post(gw.url("/small/x"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.status(),
        413,
        "the gateway refuses it before any plugin runs"
    );

    let resp = c
        .get(gw.url("/small/bytes/5000"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-served-by"],
        "wasmgate",
        "headers are still edited"
    );
    let body = resp.bytes().await.expect("body");
    assert_eq!(body.len(), 5000, "the body streamed through untouched");
}
