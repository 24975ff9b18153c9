//! An upstream whose answers a test writes: each request's head and body are recorded, and a
//! closure makes the answer (with any delay it likes).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::sync::Notify;

/// A request the scripted upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub target: String,
    /// Its header fields.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
}

impl Seen {
    /// The value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// A running scripted upstream (it serves until the test ends).
#[derive(Debug, Clone)]
pub struct ScriptedUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
}

impl ScriptedUpstream {
    /// Starts one on 127.0.0.1; `answer` makes each response (HTTP/1.1 and h2c alike).
    pub async fn start<F, Fut>(answer: F) -> Self
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a scripted upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let answer = Arc::new(answer);
        let (log, signal) = (seen.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, log, signal) = (answer.clone(), log.clone(), signal.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (answer, log, signal) =
                                (answer.clone(), log.clone(), signal.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let seen = Seen {
                                    method: parts.method,
                                    target: parts
                                        .uri
                                        .path_and_query()
                                        .map_or("/".to_owned(), |p| p.as_str().to_owned()),
                                    headers: parts.headers,
                                    body,
                                };
                                log.lock().expect("log").push(seen.clone());
                                signal.notify_waiters();
                                Ok::<_, Infallible>(answer(seen).await)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Self {
            addr,
            seen,
            arrived,
        }
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("log").len()
    }

    /// Every request it received, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    /// Waits until it received `n` requests, at most `limit`; false when it did not.
    pub async fn wait_for(&self, n: usize, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.arrived.notified();
            if self.count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= n;
            }
        }
    }
}
