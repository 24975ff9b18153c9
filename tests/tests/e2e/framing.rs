//! Request smuggling: raw HTTP/1.1 requests with ambiguous framing (CL.TE, TE.CL, TE.TE
//! obfuscations, duplicate lengths, obs-fold, bare CR or LF) are answered 400 and their connection
//! closed; the upstream receives none of them and nothing smuggled inside them, while valid
//! requests that nginx accepts go through. Also the limits on request bodies and connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use wasmgate_tests::*;

/// An upstream (hyper's strict server) recording each request it got as `METHOD PATH BODY`.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        record.lock().expect("lock").push(format!(
                            "{} {} {}",
                            parts.method,
                            parts.uri.path(),
                            String::from_utf8_lossy(&body)
                        ));
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

/// What follows every vector on its connection: if the gateway misread the vector's length,
/// this (or the vector's own smuggled request) is what a desynchronised parser would serve.
/// It asks for the close, so that a connection the gateway kept open ends at once too.
const FOLLOWER: &str = "GET /follower HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// How long a refused vector's connection may stay open after the gateway's 400.
const CLOSED_WITHIN: Duration = Duration::from_secs(3);

/// What the gateway must do with a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Forward it, then the follower.
    Valid,
    /// 400 from its head, the connection closed, nothing forwarded.
    Refused,
    /// 400 once its body turns out malformed (the head went upstream already, the body never
    /// completes), the connection closed.
    RefusedMidBody,
}
use Expect::*;

/// `(name, raw request, what must happen)`. Smuggled requests target `/smuggled`.
const VECTORS: &[(&str, &str, Expect)] = &[
    (
        "CL.TE",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n",
        Refused,
    ),
    (
        "TE.CL",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n22\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunked twice in one field",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "chunked in two fields",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "two TE fields and a CL",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE.TE: a second, bogus coding",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE.TE: gzip, chunked",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "TE.TE: xchunked",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nabcd",
        Refused,
    ),
    (
        "TE.TE: space before the colon",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\nabcd",
        Refused,
    ),
    (
        "TE.TE: obs-folded value",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\nabcd",
        Refused,
    ),
    (
        "TE in HTTP/1.0",
        "POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        Refused,
    ),
    (
        "two equal content-lengths",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        Refused,
    ),
    (
        "two different content-lengths",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        Refused,
    ),
    (
        "a content-length list",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 40\r\n\r\nabcd",
        Refused,
    ),
    (
        "a signed content-length",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
        Refused,
    ),
    (
        "obs-fold in another field",
        "GET /a HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",
        Refused,
    ),
    (
        "a bare CR in a value",
        "GET /a HTTP/1.1\r\nHost: a\r\nX-A: one\rtwo\r\n\r\n",
        Refused,
    ),
    (
        "a NUL in a value",
        "GET /a HTTP/1.1\r\nHost: a\r\nX-A: one\0two\r\n\r\n",
        Refused,
    ),
    (
        "a space in a field name",
        "GET /a HTTP/1.1\r\nHost: a\r\nX A: one\r\n\r\n",
        Refused,
    ),
    (
        "a bare LF ending a field line, hiding a TE",
        "POST /a HTTP/1.1\r\nHost: a\r\nX-A: one\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\nabcd",
        Refused,
    ),
    (
        "a bare LF ending a chunk size",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\nabcd\r\n0\r\n\r\n",
        RefusedMidBody,
    ),
    (
        "a chunk size overflowing 64 bits",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nabcd\r\n0\r\n\r\n",
        RefusedMidBody,
    ),
    // Valid: these go through, followed by the follower.
    (
        "chunked, as sent",
        "POST /valid HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        Valid,
    ),
    (
        "chunked in another case, with OWS",
        "POST /valid HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tChunked \r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        Valid,
    ),
    (
        "content-length",
        "POST /valid HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd",
        Valid,
    ),
    ("no body", "GET /valid HTTP/1.1\r\nHost: a\r\n\r\n", Valid),
    (
        "field names in lowercase",
        "POST /valid HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
        Valid,
    ),
    (
        "several chunks, sizes with leading zeros",
        "POST /valid HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n002\r\nab\r\n2\r\ncd\r\n0000\r\n\r\n",
        Valid,
    ),
    (
        "chunk extensions",
        "POST /valid HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;name=value;flag\r\nabcd\r\n0;last\r\n\r\n",
        Valid,
    ),
    (
        "chunked with trailer fields",
        "POST /valid HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n4\r\nabcd\r\n0\r\nx-sum: 1\r\n\r\n",
        Valid,
    ),
    (
        "HTTP/1.0 with content-length, kept alive",
        "POST /valid HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nabcd",
        Valid,
    ),
    (
        "an empty body announced",
        "POST /valid HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        Valid,
    ),
    (
        "an empty field value and trailing whitespace",
        "GET /valid HTTP/1.1\r\nHost: a \r\nX-Empty:\r\nX-B: b\t \r\n\r\n",
        Valid,
    ),
    (
        "bare LF line ends throughout the head",
        "GET /valid HTTP/1.1\nHost: a\n\n",
        Valid,
    ),
    (
        "a bare LF between two fields",
        "GET /valid HTTP/1.1\r\nHost: a\r\nX-A: one\nX-B: two\r\n\r\n",
        Valid,
    ),
    (
        "absolute-form target",
        "GET http://a/valid HTTP/1.1\r\nHost: a\r\n\r\n",
        Valid,
    ),
];

/// Sends `raw` on a new connection and reads until the gateway closes it: what it answered,
/// and whether it closed the connection (end of stream or reset) within [`CLOSED_WITHIN`].
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(CLOSED_WITHIN, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_nothing_is_smuggled() {
    let mut failures = Vec::new();
    for (name, vector, expect) in VECTORS {
        // A gateway and upstream of its own for each vector: nothing one leaves behind is
        // counted against the next.
        let (up, seen) = recording_upstream().await;
        let gw = TestGateway::start(&proxy_everything_to(up, ""))
            .await
            .expect("start");
        let raw = format!("{vector}{FOLLOWER}");
        let (response, closed) = exchange(gw.http, raw.as_bytes()).await;
        let received = seen.lock().expect("lock").clone();
        let responses = response.matches("HTTP/1.1 ").count();
        if received.iter().any(|r| r.contains("/smuggled")) {
            failures.push(format!("{name}: smuggled a request: {received:?}"));
        }
        match expect {
            Valid => {
                let method = &vector[..vector.find(' ').unwrap_or(0)];
                let body = if method == "POST" && !vector.contains("Content-Length: 0") {
                    "abcd"
                } else {
                    ""
                };
                if received.first() != Some(&format!("{method} /valid {body}")) {
                    failures.push(format!(
                        "{name}: the upstream got {received:?}; answer {response:?}"
                    ));
                }
                if !received.iter().any(|r| r.starts_with("GET /follower")) {
                    failures.push(format!("{name}: the follower did not follow: {received:?}"));
                }
            }
            Refused | RefusedMidBody => {
                if raw_status(&response) != Some(400) {
                    failures.push(format!(
                        "{name}: answered {:?}, not 400: {response:?}",
                        raw_status(&response)
                    ));
                }
                if *expect == Refused && !received.is_empty() {
                    failures.push(format!("{name}: forwarded {received:?}"));
                }
                if received.iter().any(|r| r.starts_with("GET /follower")) || responses != 1 {
                    failures.push(format!(
                        "{name}: {responses} responses, the follower was read after the 400"
                    ));
                }
                if !closed {
                    failures.push(format!(
                        "{name}: the connection was still open {CLOSED_WITHIN:?} after the 400"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn a_body_beyond_max_request_body_gets_413_announced_or_streamed() {
    let (up, seen) = recording_upstream().await;
    let gw = TestGateway::start(&proxy_everything_to(up, "max_request_body = \"1KiB\""))
        .await
        .expect("start");
    let c = client();
    let fits = c
        .post(gw.url("/fits"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .expect("send");
    assert_eq!(fits.status(), 200);
    // Announced by Content-Length: refused before anything is sent upstream.
    let announced = c
        .post(gw.url("/announced"))
        .body(vec![b'a'; 1025])
        .send()
        .await
        .expect("send");
    assert_eq!(announced.status(), 413);
    let body: serde_json::Value = announced.json().await.expect("json");
    assert_eq!(body["error"], "body_too_large");
    // Streamed (chunked, no length): cut off once the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'b'; 512])).collect();
    let streamed = c
        .post(gw.url("/streamed"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("send");
    assert_eq!(streamed.status(), 413);
    let received = seen.lock().expect("lock").clone();
    assert!(
        received.iter().any(|r| r.starts_with("POST /fits")),
        "{received:?}"
    );
    assert!(
        !received.iter().any(|r| r.contains("/announced")),
        "{received:?}"
    );
    assert!(
        !received
            .iter()
            .any(|r| r.starts_with("POST /streamed") && r.len() > "POST /streamed ".len() + 1024),
        "more than the limit went upstream: {received:?}"
    );
}

/// Sends a GET on `s` (kept alive) and reads its whole response: head, then the body by its
/// `content-length`.
async fn get_on(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .expect("a content-length");
                if got.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = s.read(&mut buf).await.expect("read");
            assert_ne!(n, 0, "closed: {text}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("answered in time")
}

/// A connection that has been served one request and stays open.
async fn served_connection(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let answer = get_on(&mut s).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    s
}

/// Whether a new connection is served (`true`) or closed unanswered.
async fn is_served(addr: SocketAddr) -> bool {
    let answer = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await
    .expect("exchange");
    raw_status(&answer) == Some(200)
}

#[tokio::test]
async fn beyond_its_connection_limits_a_listener_closes_new_connections_and_serves_the_rest() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, "max_connections = 2"))
        .await
        .expect("start");
    let mut held = vec![
        served_connection(gw.http).await,
        served_connection(gw.http).await,
    ];
    assert!(!is_served(gw.http).await, "a third connection was served");
    assert_eq!(
        gw.metric("wasmgate_connections_refused_total{reason=\"listener\"}"),
        1
    );
    // The connections already open are served on, both of them.
    for s in &mut held {
        let answer = get_on(s).await;
        assert_eq!(raw_status(&answer), Some(200), "{answer}");
    }
    drop(held.pop());
    // The count falls when the gateway sees the close.
    let started = std::time::Instant::now();
    while !is_served(gw.http).await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the freed slot never came back"
        );
    }
    drop(held);

    let per_client = TestGateway::start(&proxy_everything_to(up, "max_connections_per_client = 1"))
        .await
        .expect("start");
    let mut one = served_connection(per_client.http).await;
    assert!(
        !is_served(per_client.http).await,
        "a second connection from the client was served"
    );
    assert_eq!(
        per_client.metric("wasmgate_connections_refused_total{reason=\"client\"}"),
        1
    );
    let answer = get_on(&mut one).await;
    assert_eq!(
        raw_status(&answer),
        Some(200),
        "the client's first connection: {answer}"
    );
}
