//! Request mirroring: a copy of some of a route's requests sent to another upstream, fire and
//! forget. The client's request streams to its upstream as ever; its body is copied on the way
//! (up to `max_body`) and the copy leaves once the body ended. The copy's answer is read and
//! thrown away; its latency, errors and status never reach the client.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::Request;
use http::header::{HOST, HeaderName, HeaderValue};
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmgate_telemetry::{Metrics, MirrorMetrics};

use crate::body::{Body, BodyError};
use crate::upstream::Upstream;

/// Marks a mirrored copy, so the service behind the mirror can tell it from real traffic.
pub(crate) const MIRRORED: HeaderName = HeaderName::from_static("x-wasmgate-mirror");

/// A route's `mirror`, built once per configuration.
#[derive(Debug)]
pub(crate) struct Mirror {
    upstream: Arc<Upstream>,
    percent: f64,
    max_body: u64,
    /// One permit per copy on its way: `max_in_flight` for the whole gateway.
    slots: Arc<Semaphore>,
    metrics: MirrorMetrics,
}

impl Mirror {
    pub(crate) fn new(
        config: &wasmgate_config::Mirror,
        upstreams: &[Arc<Upstream>],
        route: &str,
        metrics: &Metrics,
    ) -> Self {
        let upstream = upstreams[config.upstream].clone();
        Self {
            metrics: metrics.mirror(route, &upstream.name),
            upstream,
            percent: config.percent,
            max_body: config.max_body,
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
        }
    }

    /// Sends a copy of the request (`head` as it goes upstream, and `body`) to the mirror when
    /// the request is among the `percent` selected, and returns the body to send on: the same
    /// body, copied as it passes when it has one.
    pub(crate) fn copy(
        &self,
        head: &http::request::Parts,
        body: Body,
        preserve_host: bool,
        client: IpAddr,
        worker: usize,
    ) -> Body {
        if self.percent < 100.0 && rand::random::<f64>() * 100.0 >= self.percent {
            return body;
        }
        let bodiless = body.is_end_stream();
        if !bodiless && body.size_hint().lower() > self.max_body {
            self.metrics.dropped.inc();
            return body;
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.dropped.inc();
            return body;
        };
        let mut copy = Request::new(());
        *copy.method_mut() = head.method.clone();
        *copy.uri_mut() = head.uri.clone();
        *copy.version_mut() = head.version;
        *copy.headers_mut() = head.headers.clone();
        copy.headers_mut()
            .insert(MIRRORED, HeaderValue::from_static("1"));
        let (copy, ()) = copy.into_parts();
        let (body, copied) = if bodiless {
            (body, None)
        } else {
            let (tx, rx) = oneshot::channel();
            let tee = Tee {
                inner: body,
                copy: BytesMut::new(),
                limit: self.max_body,
                done: Some(tx),
            };
            (Body::wrap(tee), Some(rx))
        };
        let send = Send {
            upstream: self.upstream.clone(),
            metrics: self.metrics.clone(),
            preserve_host,
            client,
            worker,
            _permit: permit,
        };
        tokio::spawn(send.run(copy, copied));
        body
    }
}

/// A copy on its way, holding its in-flight permit until it is done.
struct Send {
    upstream: Arc<Upstream>,
    metrics: MirrorMetrics,
    preserve_host: bool,
    client: IpAddr,
    worker: usize,
    _permit: OwnedSemaphorePermit,
}

impl Send {
    async fn run(self, mut head: http::request::Parts, copied: Option<oneshot::Receiver<Bytes>>) {
        let upstream = &self.upstream;
        let deadline = tokio::time::Instant::now() + upstream.timeout;
        let body = match copied {
            None => Body::empty(),
            // Waits as long as the client takes to send its body (within the upstream's
            // timeout); a body that broke off or outgrew `max_body` is not mirrored.
            Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(bytes)) => Body::full(bytes),
                _ => {
                    self.metrics.dropped.inc();
                    return;
                }
            },
        };
        let Ok(_admitted) = upstream.admit() else {
            self.metrics.dropped.inc();
            return;
        };
        let set = upstream.targets();
        let target = &set.targets[upstream.pick(&set, &head, self.client)];
        if !self.preserve_host || !head.headers.contains_key(HOST) {
            head.headers.insert(HOST, target.host.clone());
        }
        let req = Request::from_parts(head, body);
        let answered = tokio::time::timeout_at(deadline, target.pool.send(req, self.worker)).await;
        let Ok(Ok((response, release))) = answered else {
            self.metrics.failed.inc();
            return;
        };
        self.metrics.sent.inc();
        // Read to the end (and dropped frame by frame), so its connection can be reused.
        let mut body = Body::watched(response.into_body(), upstream.timeout, release, None);
        let drain = async {
            while let Some(Ok(_)) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {}
        };
        let _ = tokio::time::timeout_at(deadline, drain).await;
    }
}

/// A request body passed on while it is copied for the mirror; the copy is handed over once
/// the body ended, or given up beyond `limit` bytes or on an error.
struct Tee {
    inner: Body,
    copy: BytesMut,
    limit: u64,
    done: Option<oneshot::Sender<Bytes>>,
}

impl Tee {
    fn hand_over(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(std::mem::take(&mut self.copy).freeze());
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref()
                    && this.done.is_some()
                {
                    if (this.copy.len() + data.len()) as u64 > this.limit {
                        this.done = None;
                        this.copy = BytesMut::new();
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                }
                // A sender stops polling a body of known length after its last byte.
                if this.inner.is_end_stream() {
                    this.hand_over();
                }
            }
            None => this.hand_over(),
            Some(Err(_)) => this.done = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
