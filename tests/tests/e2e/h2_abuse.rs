//! HTTP/2 abuse, with frames crafted byte by byte: the connection is closed, memory stays
//! bounded, and other clients keep being served.

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
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
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
async fn ping_and_settings_floods_do_not_stop_other_clients() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, "workers = 1"))
        .await
        .expect("start");
    for (kind, payload) in [(0x6u8, vec![0u8; 8]), (0x4u8, vec![0, 3, 0, 0, 0, 100])] {
        let mut s = tokio::net::TcpStream::connect(gw.http)
            .await
            .expect("connect");
        s.write_all(PREFACE).await.expect("preface");
        s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
        // 100 000 PINGs (or SETTINGS), never reading the acknowledgements: the gateway must
        // stop reading once its replies back up, not queue them without bound.
        let flood: Vec<u8> = (0..100_000)
            .flat_map(|_| frame(kind, 0, 0, &payload))
            .collect();
        let writer = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&flood)).await;
            s
        });
        // Meanwhile, on another connection of the same worker, a client is served.
        let started = Instant::now();
        let resp = h2c_client().get(gw.url("/")).send().await.expect("send");
        assert_eq!(resp.status(), 200, "frame type {kind}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "frame type {kind}: slow"
        );
        drop(writer.await.expect("writer"));
    }
}
