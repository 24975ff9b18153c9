//! WebSocket through the gateway with a real server and client (tokio-tungstenite): the
//! HTTP/1.1 upgrade and HTTP/2's extended CONNECT (RFC 8441) pass, messages flow both ways,
//! plugins guard the handshake, idle tunnels close, and tunnels are counted.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wasmgate_tests::*;

const KEY_AUTH: &str = env!("WASM_KEY_AUTH");

/// A WebSocket server answering each text message with `echo:` and the message; it also
/// reports, on the returned channel, the path and the `x-forwarded-for` of each handshake.
async fn websocket_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                #[expect(
                    clippy::result_large_err,
                    reason = "the signature of tungstenite's handshake callback"
                )]
                let callback =
                    |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                        let forwarded = req
                            .headers()
                            .get("x-forwarded-for")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        let _ = tx.send(format!("{} {forwarded}", req.uri().path()));
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    match message {
                        Message::Text(text) => {
                            let reply = format!("echo:{}", text.as_str());
                            if ws.send(Message::text(reply)).await.is_err() {
                                return;
                            }
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn gateway(dir: tempfile::TempDir, up: SocketAddr, extra: &str) -> TestGateway {
    TestGateway::start_in(
        dir,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
             [upstreams.ws]\ntargets = [\"{up}\"]\n{extra}\n\
             [[routes]]\nname = \"ws\"\nupstream = \"ws\"\n"
        ),
    )
    .await
    .expect("start")
}

#[tokio::test]
async fn websocket_messages_flow_both_ways_through_the_gateway() {
    let (up, mut handshakes) = websocket_upstream().await;
    let gw = gateway(workdir(), up, "").await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat/room-1", gw.http))
            .await
            .expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));
    let seen = handshakes
        .recv()
        .await
        .expect("the upstream saw the handshake");
    assert_eq!(
        seen, "/chat/room-1 127.0.0.1",
        "path and X-Forwarded-For reach it"
    );

    for word in ["hello", "world", "again"] {
        ws.send(Message::text(word)).await.expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(reply, Message::text(format!("echo:{word}")));
    }
    assert_eq!(
        gw.metric("wasmgate_upgraded_connections_open{upstream=\"ws\""),
        1
    );
    ws.close(None).await.expect("close");
    drop(ws);
    // The tunnel ends when the client closes; wait for the gauge rather than a fixed time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gw.metric("wasmgate_upgraded_connections_open{upstream=\"ws\"") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel was not closed"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.metric("wasmgate_upgraded_connections_total{upstream=\"ws\""),
        1
    );
}

#[tokio::test]
async fn key_auth_guards_the_websocket_handshake() {
    let (up, mut handshakes) = websocket_upstream().await;
    let gw = TestGateway::start_in(
        workdir_with_plugins(&[("key-auth", KEY_AUTH)]),
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
             [upstreams.ws]\ntargets = [\"{up}\"]\n\
             [[routes]]\nname = \"ws\"\nupstream = \"ws\"\n\
             [[routes.plugins]]\nname = \"key-auth\"\n\
             config = {{ header = \"x-api-key\", consumers = [{{ name = \"app\", keys = [\"k-app\"] }}] }}\n"
        ),
    )
    .await
    .expect("start");

    let refused = tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.http)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected a 401 handshake, got {other:?}"),
    }
    assert!(handshakes.try_recv().is_err(), "the upstream never saw it");

    let mut request = format!("ws://{}/chat", gw.http)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("x-api-key", "k-app".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("allowed with the key");
    ws.send(Message::text("hi")).await.expect("send");
    let reply = ws.next().await.expect("reply").expect("ok");
    assert_eq!(reply, Message::text("echo:hi"));
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_upstream_timeout() {
    let (up, _handshakes) = websocket_upstream().await;
    let gw = gateway(workdir(), up, "timeout = \"1s\"").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/idle", gw.http))
        .await
        .expect("handshake");
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        ws.send(Message::text("ping")).await.expect("send");
        ws.next().await.expect("reply").expect("ok");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // ...silence closes it.
    let ended = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the gateway closed the idle tunnel");
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_)))),
        "no message, only the end: {ended:?}"
    );
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_served_as_plain_http1() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start(&proxy_everything_to(up, ""))
        .await
        .expect("start");
    let response = raw_exchange(
        gw.http,
        b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        Duration::from_secs(2),
    )
    .await
    .expect("exchange");
    assert_eq!(raw_status(&response), Some(200), "{response}");
    assert!(response.contains("\"path\":\"/x\""), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("\"upgrade\""),
        "the upgrade offer is not forwarded: {response}"
    );
}

/// Opens a WebSocket at `path` over h2c by extended CONNECT (RFC 8441) and returns the answer.
async fn h2_websocket(gw: &TestGateway, path: &str) -> http::Response<hyper::body::Incoming> {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    // hyper refuses an extended CONNECT until the server's SETTINGS allow it (RFC 8441 §3).
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}{path}", gw.http))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    sender
        .send_request(request)
        .await
        .expect("extended CONNECT")
}

#[tokio::test]
async fn a_websocket_over_http2_reaches_an_http1_websocket_server() {
    use hyper_util::rt::TokioIo;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let (up, mut handshakes) = websocket_upstream().await;
    let gw = gateway(workdir(), up, "").await;
    let mut response = h2_websocket(&gw, "/chat/h2").await;
    assert_eq!(response.status(), 200, "{response:?}");
    assert!(response.headers().contains_key("x-request-id"));
    assert!(
        !response.headers().contains_key("sec-websocket-accept"),
        "the accept key answered the gateway's key, not the client's"
    );
    let seen = handshakes
        .recv()
        .await
        .expect("the upstream saw an HTTP/1.1 handshake");
    assert_eq!(seen, "/chat/h2 127.0.0.1");

    let stream = hyper::upgrade::on(&mut response)
        .await
        .expect("the stream becomes the WebSocket");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(stream),
        Role::Client,
        None,
    )
    .await;
    for word in ["over", "h2"] {
        ws.send(Message::text(word)).await.expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(reply, Message::text(format!("echo:{word}")));
    }
    assert_eq!(
        gw.metric("wasmgate_upgraded_connections_total{upstream=\"ws\""),
        1
    );
}

#[tokio::test]
async fn an_http2_websocket_whose_target_answers_with_a_wrong_accept_key_gets_502() {
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            if read_request_head(&mut s).await {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                          connection: upgrade\r\nsec-websocket-accept: not-the-answer\r\n\r\n",
                    )
                    .await;
            }
        }
    });
    let gw = gateway(workdir(), up, "").await;
    let response = h2_websocket(&gw, "/chat").await;
    assert_eq!(response.status(), 502);
}
