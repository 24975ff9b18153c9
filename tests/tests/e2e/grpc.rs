//! gRPC through the gateway, with a real gRPC server and client (tonic) over h2c: unary and
//! streaming in both directions with their trailers, deadlines, and the gateway's own errors
//! answered as gRPC statuses.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wasmgate_tests::*;

const KEY_AUTH: &str = env!("WASM_KEY_AUTH");

/// Messages as raw bytes: the test service needs no protobuf schema.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// `test.Echo`: `Each` answers every message as it arrives (bidirectional), `Total` answers
/// the number of bytes of all messages once the client is done (client streaming), `Slow`
/// answers after two seconds (unary).
#[derive(Debug, Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Each;

impl tonic::server::StreamingService<Bytes> for Each {
    type Response = Bytes;
    type ResponseStream = Replies;
    type Future = BoxFuture<tonic::Response<Replies>, Status>;
    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let inbound = req.into_inner();
        Box::pin(async move {
            let replies: Replies = Box::pin(
                inbound.map(|m| m.map(|b| Bytes::from([b"echo:".as_slice(), &b].concat()))),
            );
            Ok(tonic::Response::new(replies))
        })
    }
}

struct Total;

impl tonic::server::ClientStreamingService<Bytes> for Total {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;
    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        let mut inbound = req.into_inner();
        Box::pin(async move {
            let mut total = 0usize;
            while let Some(m) = inbound.next().await {
                total += m?.len();
            }
            Ok(tonic::Response::new(Bytes::from(total.to_string())))
        })
    }
}

struct Slow;

impl tonic::server::UnaryService<Bytes> for Slow {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;
    fn call(&mut self, _: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(tonic::Response::new(Bytes::from_static(b"late")))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            Ok(match req.uri().path() {
                "/test.Echo/Each" => grpc.streaming(Each, req).await,
                "/test.Echo/Total" => grpc.client_streaming(Total, req).await,
                "/test.Echo/Slow" => grpc.unary(Slow, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server with `grpc.health.v1.Health` and `test.Echo`.
async fn grpc_upstream() -> (SocketAddr, tonic_health::server::HealthReporter) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .add_service(Echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    (addr, reporter)
}

/// A gateway in `dir` routing everything to the gRPC upstream at `up` over h2c, with
/// `route_extra` in the route.
async fn gateway_to(dir: tempfile::TempDir, up: SocketAddr, route_extra: &str) -> TestGateway {
    TestGateway::start_in(
        dir,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
             [upstreams.grpc]\ntargets = [\"{up}\"]\nprotocol = \"h2c\"\ntimeout = \"5s\"\n\
             [[routes]]\nname = \"grpc\"\npaths = [\"/grpc.health.v1.Health\", \"/test.Echo\"]\n\
             upstream = \"grpc\"\n{route_extra}\n"
        ),
    )
    .await
    .expect("start")
}

async fn channel(gw: &TestGateway) -> Channel {
    Channel::from_shared(gw.url(""))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the gateway")
}

async fn echo_client(gw: &TestGateway) -> tonic::client::Grpc<Channel> {
    let mut client = tonic::client::Grpc::new(channel(gw).await);
    client.ready().await.expect("ready");
    client
}

#[tokio::test]
async fn unary_and_server_streaming_calls_pass_with_their_statuses() {
    let (up, reporter) = grpc_upstream().await;
    let gw = gateway_to(workdir(), up, "").await;
    let mut health = HealthClient::new(channel(&gw).await);

    let serving = health
        .check(HealthCheckRequest {
            service: "users".into(),
        })
        .await
        .expect("check");
    assert_eq!(serving.into_inner().status, ServingStatus::Serving as i32);
    // The upstream's own error status travels in its trailers.
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: "users".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("a first status").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("users", ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the change streams through at once")
        .expect("a second status")
        .expect("ok");
    assert_eq!(second.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn client_and_bidirectional_streams_flow_both_ways() {
    let (up, _reporter) = grpc_upstream().await;
    let gw = gateway_to(workdir(), up, "").await;

    let mut client = echo_client(&gw).await;
    let messages =
        futures_util::stream::iter([b"a".as_slice(), b"bb", b"ccc"].map(Bytes::from_static));
    let total = client
        .client_streaming(
            tonic::Request::new(messages),
            PathAndQuery::from_static("/test.Echo/Total"),
            Raw,
        )
        .await
        .expect("client streaming");
    assert_eq!(total.into_inner(), "6");

    // Each answer arrives before the next message is sent: nothing is buffered on the way.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outbound = tokio_stream_from(rx);
    let mut client = echo_client(&gw).await;
    let mut replies = client
        .streaming(
            tonic::Request::new(outbound),
            PathAndQuery::from_static("/test.Echo/Each"),
            Raw,
        )
        .await
        .expect("bidirectional")
        .into_inner();
    for word in ["one", "two", "three"] {
        tx.send(Bytes::from(word)).await.expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("the reply came before the stream ended")
            .expect("a reply")
            .expect("ok");
        assert_eq!(reply, format!("echo:{word}"));
    }
    drop(tx);
    assert!(replies.next().await.is_none(), "ends with an OK status");
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn gateway_errors_reach_grpc_clients_as_grpc_statuses() {
    let (up, _reporter) = grpc_upstream().await;
    let closed = closed_port();
    let dir = workdir_with_plugins(&[("key-auth", KEY_AUTH)]);
    let gw = gateway_to(
        dir,
        up,
        &format!(
            "[[routes.plugins]]\nname = \"key-auth\"\n\
             config = {{ header = \"x-api-key\", consumers = [{{ name = \"svc\", keys = [\"k-svc\"] }}] }}\n\
             [[routes]]\nname = \"down\"\npaths = [\"/down.Service\"]\nupstream = \"down\"\n\
             [upstreams.down]\ntargets = [\"{closed}\"]\nprotocol = \"h2c\"\n"
        ),
    )
    .await;
    let call = |path: &'static str, key: Option<&'static str>| {
        let mut req = tonic::Request::new(Bytes::from_static(b"x"));
        if let Some(key) = key {
            req.metadata_mut()
                .insert("x-api-key", key.parse().expect("metadata"));
        }
        (req, PathAndQuery::from_static(path))
    };

    // key-auth refuses: 401 becomes UNAUTHENTICATED, with the plugin's message.
    let (req, path) = call("/test.Echo/Total", None);
    let refused = echo_client(&gw)
        .await
        .unary(req, path, Raw)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(!refused.message().is_empty());

    // No route: UNIMPLEMENTED.
    let (req, path) = call("/other.Service/Call", Some("k-svc"));
    let missing = echo_client(&gw)
        .await
        .unary(req, path, Raw)
        .await
        .expect_err("no route");
    assert_eq!(missing.code(), Code::Unimplemented, "{missing:?}");

    // The target refuses connections: UNAVAILABLE.
    let (req, path) = call("/down.Service/Call", Some("k-svc"));
    let down = echo_client(&gw)
        .await
        .unary(req, path, Raw)
        .await
        .expect_err("down");
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    // And with the key, the call goes through.
    let (req, path) = call("/test.Echo/Total", Some("k-svc"));
    let ok = echo_client(&gw)
        .await
        .unary(req, path, Raw)
        .await
        .expect("allowed");
    assert_eq!(ok.into_inner(), "1");
}

#[tokio::test]
async fn a_call_past_its_grpc_timeout_gets_deadline_exceeded_from_the_gateway() {
    let (up, _reporter) = grpc_upstream().await;
    let gw = gateway_to(workdir(), up, "").await;
    // A plain h2c client that sends the deadline without enforcing it itself, so the status
    // can only come from the gateway.
    let tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    // One empty message: a 5-byte gRPC frame header with length 0.
    let frame = http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]));
    let req = http::Request::post(format!("http://{}/test.Echo/Slow", gw.http))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(frame)
        .expect("request");
    let started = std::time::Instant::now();
    let resp = sender.send_request(req).await.expect("response");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the gateway did not wait 2 s"
    );
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert!(resp.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn an_http1_request_with_a_grpc_content_type_gets_a_plain_error() {
    let (up, _reporter) = grpc_upstream().await;
    let gw = gateway_to(workdir(), up, "").await;
    // gRPC runs over HTTP/2 only: an HTTP/1.1 client gets the gateway's normal 404, never a 200
    // it could mistake for success.
    let resp = client()
        .post(gw.url("/other.Service/Call"))
        .header("content-type", "application/grpc")
        .body(vec![0u8; 5])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("grpc-status").is_none());
}
