//! An echo upstream: answers every request with what it received, as JSON.
//!
//! | request | answer |
//! |---|---|
//! | any | `200` JSON: `server`, `method`, `path`, `query`, `headers`, `body_bytes` (the request body is counted as it streams, never held) |
//! | `/delay/MS/…` | the same, after MS milliseconds |
//! | `/bytes/N` | `200` with N bytes of `x`, streamed in 64 KiB chunks |
//! | `/status/CODE` | the JSON answer with that status |
//!
//! Every response carries `x-echo-server: NAME`, and the JSON names the connection it came on
//! (`peer`: the client's address and port). [`spawn_observed`] also counts connections opened and
//! closed, for tests of connection reuse.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const CHUNK: usize = 64 * 1024;

/// Serves the echo upstream on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: &str) {
    serve_counted(listener, name, Arc::new(Connections::default())).await;
}

async fn serve_counted(listener: TcpListener, name: &str, connections: Arc<Connections>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let connections = connections.clone();
        connections.opened.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            serve_connection(stream, name, peer).await;
            connections.closed.fetch_add(1, Ordering::SeqCst);
            connections.changed.notify_waiters();
        });
    }
}

/// Serves one accepted connection (plain, or TLS already accepted by the caller) until it
/// closes, in HTTP/1.1 or HTTP/2 as the client speaks; `peer` is reported in the answers.
pub async fn serve_connection<I>(io: I, name: Arc<str>, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, name.clone(), peer));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Connections an observed echo upstream has accepted and seen closed.
#[derive(Debug, Default)]
pub struct Connections {
    opened: AtomicUsize,
    closed: AtomicUsize,
    changed: Notify,
}

impl Connections {
    /// Connections accepted so far.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Connections closed so far (by either side).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections have closed.
    pub async fn wait_closed(&self, n: usize) {
        loop {
            let changed = self.changed.notified();
            if self.closed() >= n {
                return;
            }
            changed.await;
        }
    }
}

/// Like [`spawn`], and counts the connections it accepts and sees closed.
pub async fn spawn_observed(
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<(SocketAddr, Arc<Connections>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let name = name.to_owned();
    let connections = Arc::new(Connections::default());
    let counted = connections.clone();
    tokio::spawn(async move { serve_counted(listener, &name, counted).await });
    Ok((local, connections))
}

/// Binds `addr` and serves the echo upstream on it in a background task; returns the bound address.
pub async fn spawn(addr: SocketAddr, name: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let name = name.to_owned();
    tokio::spawn(async move { serve(listener, &name).await });
    Ok(local)
}

type Body = BoxBody<Bytes, hyper::Error>;

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').split('/');
    let mut status = StatusCode::OK;
    match (segments.next(), segments.next()) {
        (Some("delay"), Some(ms)) => {
            let ms = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        (Some("bytes"), Some(n)) => {
            let n: u64 = n.parse().unwrap_or(0);
            let mut response = Response::new(Repeat { left: n }.boxed());
            response
                .headers_mut()
                .insert("x-echo-server", header(&name));
            return Ok(response);
        }
        (Some("status"), Some(code)) => {
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
        }
        _ => {}
    }
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let v = serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::Array(a)) => a.push(v),
            Some(prev) => *prev = serde_json::Value::Array(vec![prev.clone(), v]),
            None => {
                headers.insert(k.as_str().to_owned(), v);
            }
        }
    }
    let json = serde_json::json!({
        "server": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "peer": peer.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(json.to_string() + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert("x-echo-server", header(&name));
    Ok(response)
}

fn header(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("echo"))
}

/// `left` bytes of `x`, produced chunk by chunk so a large download costs no memory.
struct Repeat {
    left: u64,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        static XS: [u8; CHUNK] = [b'x'; CHUNK];
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&XS[..n as usize])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
