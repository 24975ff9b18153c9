//! `hyper-return ADDR BYTES`: what hyper and tokio cost on their own. Serves HTTP/1.1 on ADDR
//! with one current-thread runtime (as the gateway's `workers = 1`) and the gateway's
//! allocator, answering every request `200` with a `text/plain` body of BYTES `x`s: the same
//! answer as the bench's `nginx-return`, without anything a gateway adds (routing, request
//! IDs, metrics, a cache lookup). No gateway on hyper can serve more requests per second.

use std::convert::Infallible;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .context("usage: hyper-return ADDR BYTES")?
        .parse()?;
    let size: usize = args
        .next()
        .context("usage: hyper-return ADDR BYTES")?
        .parse()?;
    let body = Bytes::from(vec![b'x'; size]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    let mut response = Response::new(Full::new(body.clone()));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    async move { Ok::<_, Infallible>(response) }
                });
                // A client that goes away ends its connection; nothing to report.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
