//! HTTP/2 abuse, with frames crafted byte by byte: the connection is closed, memory stays
//! bounded, and other clients keep being served. Also `send_timeout`: a client that stops
//! taking what the gateway writes (a response behind a shut HTTP/2 window or an HTTP/1.1 socket
//! it never reads, the acknowledgements of its own PINGs) loses its connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmgate_tests::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A connection to the gateway with the client's preface and SETTINGS sent.
async fn h2_connection(gw: &TestGateway) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
    s
}

/// A header block fragment of `n` literal fields `x-NNNNN: vvvv…` (HPACK literal without
/// indexing, new name).
fn junk_fields(n: usize, start: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in start..start + n {
        let name = format!("x-{i:05}");
        out.push(0x00);
        out.push(u8::try_from(name.len()).expect("short name"));
        out.extend_from_slice(name.as_bytes());
        out.push(100);
        out.extend_from_slice(&[b'v'; 100]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_others_are_served() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, "workers = 1"))
        .await
        .expect("start");
    let mut s = h2_connection(&gw).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block: 16 MiB of
    // header fields, far beyond the 64 KiB header limit.
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.extend(junk_fields(10, 0));
    s.write_all(&frame(0x1, 0x1, 1, &block))
        .await
        .expect("headers");
    let started = Instant::now();
    let mut closed = false;
    for i in 0..1400 {
        let payload = junk_fields(100, 10 + i * 100);
        if s.write_all(&frame(0x9, 0, 1, &payload)).await.is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        // Everything was written (the kernel buffers some): the gateway must have ended the
        // connection, with a GOAWAY or by closing it.
        let mut buf = vec![0u8; 65536];
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the connection was not closed");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The gateway serves others all along.
    let resp = h2c_client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_or_settings_flood_that_never_reads_loses_its_connection_while_others_are_served() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(
        up,
        "workers = 1\nsend_timeout = \"500ms\"",
    ))
    .await
    .expect("start");
    let mut closed = 0;
    for (kind, payload) in [(0x6u8, vec![0u8; 8]), (0x4u8, vec![0, 3, 0, 0, 0, 100])] {
        // A small receive buffer: the acknowledgements back up after a few KiB, not megabytes.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut s = socket.connect(gw.http).await.expect("connect");
        s.write_all(PREFACE).await.expect("preface");
        s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
        // PINGs (or SETTINGS), each owed an acknowledgement, never read: the gateway must stop
        // reading once its acknowledgements back up, not queue them without bound, and the
        // connection must not be held for ever.
        let (reader, mut writer) = s.into_split();
        let chunk: Vec<u8> = (0..1000)
            .flat_map(|_| frame(kind, 0, 0, &payload))
            .collect();
        let written = Arc::new(AtomicUsize::new(0));
        let counted = written.clone();
        let started = Instant::now();
        let flood = tokio::spawn(async move {
            while writer.write_all(&chunk).await.is_ok() {
                counted.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            started.elapsed()
        });
        // For as long as the flood goes on, others are served, on HTTP/2 and HTTP/1.1 in turn,
        // each at once: the flood stalls only its own connection.
        let (h2, h1) = (h2c_client(), client());
        let mut served = 0;
        let until_closed = async {
            while !flood.is_finished() {
                let c = if served % 2 == 0 { &h2 } else { &h1 };
                let asked = Instant::now();
                let resp = c.get(gw.url("/")).send().await.expect("send");
                assert_eq!(resp.status(), 200, "frame type {kind}");
                assert!(
                    asked.elapsed() < Duration::from_secs(1),
                    "frame type {kind}: slow"
                );
                served += 1;
            }
        };
        // The flooder, which takes nothing, is closed between one and two `send_timeout`s
        // after its acknowledgements stopped going out.
        tokio::time::timeout(Duration::from_secs(5), until_closed)
            .await
            .unwrap_or_else(|_| {
                panic!("frame type {kind}: the flooding connection was not closed")
            });
        let took = flood.await.expect("flood");
        assert!(
            served >= 2,
            "frame type {kind}: {served} served during the flood"
        );
        // Bounded: the gateway stopped reading; what was written sits in socket buffers.
        let written = written.load(Ordering::Relaxed);
        assert!(
            written < 64 << 20,
            "frame type {kind}: {written} bytes taken in {took:?}"
        );
        drop(reader);
        closed += 1;
        assert_eq!(gw.metric("wasmgate_send_timeouts_total"), closed);
        let resp = h2c_client().get(gw.url("/")).send().await.expect("send");
        assert_eq!(resp.status(), 200, "frame type {kind}");
    }
}

/// An echo upstream that counts its connections, behind a gateway with a short `send_timeout`.
async fn stall_setup() -> (TestGateway, std::sync::Arc<echo::Connections>) {
    let (up, connections) =
        echo::spawn_observed(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), "up")
            .await
            .expect("upstream");
    let gw = TestGateway::start(&proxy_everything_to(
        up,
        "workers = 1\nsend_timeout = \"300ms\"",
    ))
    .await
    .expect("start");
    (gw, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_stream_loses_its_connection_and_frees_the_upstream() {
    let (gw, upstream) = stall_setup().await;
    let tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    // The client never opens its stream window: the gateway may send headers, no body byte.
    let (mut client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{}/bytes/99999999", gw.http))
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = response.await.expect("response head");
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.opened(), 1);
    // Without the send timeout the upstream connection would stay held as long as the client
    // liked (hyper polls a body only when it can send what it gives).
    tokio::time::timeout(Duration::from_secs(5), upstream.wait_closed(1))
        .await
        .expect("the upstream connection was not released");
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the client's connection was not closed");
    assert_eq!(gw.metric("wasmgate_send_timeouts_total"), 1);
    // Others are served meanwhile and after.
    let resp = h2c_client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_loses_its_connection() {
    let (gw, upstream) = stall_setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    s.write_all(b"GET /bytes/999999999 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    // Never read: the socket buffers fill, the gateway can write no more.
    tokio::time::timeout(Duration::from_secs(5), upstream.wait_closed(1))
        .await
        .expect("the upstream connection was not released");
    assert_eq!(gw.metric("wasmgate_send_timeouts_total"), 1);
    // What was buffered can still be read, then the connection ends well short of the body.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let read_all = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    });
    read_all.await.expect("the connection was not closed");
    assert!(received < 999_999_999, "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_slowly_but_steadily_is_not_cut_off() {
    let (gw, upstream) = stall_setup().await;
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let size = 32 * 1024 * 1024;
    s.write_all(format!("GET /bytes/{size} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    // Pauses shorter than send_timeout between reads: never a stall, however long it all takes.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let mut since_pause = 0usize;
    while received < size {
        let n = s.read(&mut buf).await.expect("read");
        assert_ne!(n, 0, "closed after {received} bytes");
        received += n;
        since_pause += n;
        if since_pause >= 4 << 20 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(gw.metric("wasmgate_send_timeouts_total"), 0);
    assert_eq!(upstream.closed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_cut_off_before_it_reaches_the_upstream() {
    let (up, requests) =
        fixed_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
    let gw = TestGateway::start(&proxy_everything_to(up, "workers = 1"))
        .await
        .expect("start");
    let s = h2_connection(&gw).await;
    // CVE-2023-44487: each request opened (HEADERS, END_STREAM | END_HEADERS) and cancelled
    // at once (RST_STREAM CANCEL), 10 000 times, faster than any upstream could answer.
    const STREAMS: u32 = 10_000;
    let flood: Vec<u8> = (0..STREAMS)
        .flat_map(|i| {
            let stream = 2 * i + 1;
            let mut pair = frame(0x1, 0x5, stream, &[0x82, 0x86, 0x84]);
            pair.extend(frame(0x3, 0, stream, &8u32.to_be_bytes()));
            pair
        })
        .collect();
    let (mut reader, mut writer) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer.write_all(&flood)).await;
    });
    // The gateway ends the connection (GOAWAY, then close) long before the flood is through.
    let mut buf = vec![0u8; 65536];
    let mut goaway = None;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = Vec::new();
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the connection was not closed");
    // Walk the frames the gateway sent for its GOAWAY (type 7) and the error code in it.
    let mut at = 0;
    while at + 9 <= closed.len() {
        let len = usize::from(closed[at]) << 16
            | usize::from(closed[at + 1]) << 8
            | usize::from(closed[at + 2]);
        if closed[at + 3] == 0x7 && at + 9 + 8 <= closed.len() {
            let code = &closed[at + 9 + 4..at + 9 + 8];
            goaway = Some(u32::from_be_bytes(code.try_into().expect("4 bytes")));
        }
        at += 9 + len;
    }
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
    writer.await.expect("writer");
    let reached = requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        reached < 200,
        "{reached} of {STREAMS} cancelled requests reached the upstream"
    );
    // Others are served.
    let resp = h2c_client().get(gw.url("/")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
}
