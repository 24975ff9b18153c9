//! The one body type of the data path, in both directions: streamed, or held in memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::pool::Release;
use crate::retry::Playback;

/// A request or response body.
#[derive(Debug)]
pub struct Body {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    /// Streamed from a peer.
    Stream(Incoming),
    /// Streamed from a client, counting its data bytes for the access log (`count`) and
    /// failing once more than `limit` arrived (`gateway.max_request_body`).
    Counted {
        inner: Incoming,
        count: Option<Arc<AtomicU64>>,
        read: u64,
        limit: u64,
    },
    /// A request body played from a recording, so a retry can send it again.
    Played(Playback),
    /// Bytes already read, then the rest of the stream.
    Prefixed {
        head: Option<Bytes>,
        rest: Box<Body>,
    },
    /// Another body passed through a transformation (compression, a cache's recording, a
    /// mirror's copy).
    Wrapped(Wrapped),
    /// Streamed from an upstream that must produce each frame within `idle`; its connection
    /// goes back to the pool (`release`) once the body was read to the end.
    Watched {
        inner: Incoming,
        idle: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        release: Option<Release>,
        active: Option<Active>,
    },
}

/// A transformed body, boxed: its type depends on the transformation.
struct Wrapped(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BodyError> + Send>>);

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Wrapped").finish_non_exhaustive()
    }
}

/// Counts one request in a counter of requests in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn begin(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight to a target (for `balance = "least_request"`), when the upstream
/// has `max_requests` to its upstream, and when its response comes from a retry, in the
/// upstream's retry budget: until its response body ended or was abandoned, or it failed
/// before one.
#[derive(Debug)]
#[expect(
    dead_code,
    reason = "the fields are held for their Drop: the counts end with the body"
)]
pub(crate) struct Active {
    pub(crate) target: InFlight,
    pub(crate) upstream: Option<InFlight>,
    pub(crate) retry: Option<InFlight>,
}

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's stream failed.
    #[error("body stream failed: {0}")]
    Stream(#[from] hyper::Error),
    /// The client sent more than `gateway.max_request_body` bytes.
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The upstream sent nothing for longer than its `timeout`.
    #[error("upstream sent no body data for {0:?}")]
    Idle(Duration),
    /// Compressing or decompressing the body failed (a corrupt compressed request body, or
    /// one that decompresses to more than the route's `max_body`).
    #[error(transparent)]
    Codec(#[from] wasmgate_compression::CodecError),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    /// A body held in memory.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// A body streamed from a peer, as is.
    pub fn stream(incoming: Incoming) -> Self {
        Self {
            kind: Kind::Stream(incoming),
        }
    }

    /// A body streamed from a client, adding its data bytes to `count` as they pass, and
    /// failing with [`BodyError::TooLarge`] beyond `limit` bytes.
    pub(crate) fn counted(incoming: Incoming, count: Option<Arc<AtomicU64>>, limit: u64) -> Self {
        Self {
            kind: Kind::Counted {
                inner: incoming,
                count,
                read: 0,
                limit,
            },
        }
    }

    /// A body played from a [`Tape`](crate::retry::Tape).
    pub(crate) fn played(playback: Playback) -> Self {
        Self {
            kind: Kind::Played(playback),
        }
    }

    /// `body` as one of the data path's bodies.
    pub(crate) fn wrap(
        body: impl http_body::Body<Data = Bytes, Error = BodyError> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Wrapped(Wrapped(Box::pin(body))),
        }
    }

    /// `head`, then whatever `rest` still yields.
    pub fn prefixed(head: Bytes, rest: Body) -> Self {
        Self {
            kind: Kind::Prefixed {
                head: (!head.is_empty()).then_some(head),
                rest: Box::new(rest),
            },
        }
    }

    /// A body streamed from an upstream that fails if no frame arrives for `idle`, and gives
    /// its connection back with `release`, and ends its request's `active` count, once read to
    /// the end.
    pub(crate) fn watched(
        incoming: Incoming,
        idle: Duration,
        release: Option<Release>,
        active: Option<Active>,
    ) -> Self {
        let mut body = Self {
            kind: Kind::Watched {
                inner: incoming,
                idle,
                timer: None,
                release,
                active,
            },
        };
        body.release_if_ended();
        body
    }

    /// Gives an upstream connection back as soon as its body has nothing more to read.
    fn release_if_ended(&mut self) {
        if let Kind::Watched {
            inner,
            release,
            active,
            ..
        } = &mut self.kind
            && http_body::Body::is_end_stream(inner)
        {
            if let Some(release) = release.take() {
                release.release();
            }
            active.take();
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // Servers stop polling a body with a known length after its last byte, without
        // asking for the end: the connection is reusable then too.
        self.release_if_ended();
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(inner) => Pin::new(inner).poll_frame(cx).map_err(BodyError::Stream),
            Kind::Counted {
                inner,
                count,
                read,
                limit,
            } => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    let n = data.len() as u64;
                    *read += n;
                    if let Some(count) = count {
                        count.fetch_add(n, Ordering::Relaxed);
                    }
                    if *read > *limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Stream)))
            }
            Kind::Played(playback) => playback.poll_frame(cx),
            Kind::Wrapped(Wrapped(inner)) => inner.as_mut().poll_frame(cx),
            Kind::Prefixed { head, rest } => match head.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            Kind::Watched {
                inner,
                idle,
                timer,
                release,
                active,
            } => {
                if let Poll::Ready(frame) = Pin::new(&mut *inner).poll_frame(cx) {
                    // Re-armed lazily: a body that never waits never allocates a timer.
                    if let Some(t) = timer {
                        t.as_mut().reset(tokio::time::Instant::now() + *idle);
                    }
                    let ended = match &frame {
                        None => true,
                        Some(Ok(_)) => inner.is_end_stream(),
                        Some(Err(_)) => {
                            // A failed body leaves its connection unusable.
                            release.take();
                            active.take();
                            false
                        }
                    };
                    if ended {
                        if let Some(release) = release.take() {
                            release.release();
                        }
                        active.take();
                    }
                    return Poll::Ready(frame.map(|f| f.map_err(BodyError::Stream)));
                }
                let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                ready!(t.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Idle(*idle))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Prefixed { head, rest } => head.is_none() && rest.is_end_stream(),
            Kind::Played(playback) => playback.is_end_stream(),
            Kind::Wrapped(Wrapped(inner)) => inner.is_end_stream(),
            Kind::Stream(inner) | Kind::Watched { inner, .. } | Kind::Counted { inner, .. } => {
                inner.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Played(playback) => playback.size_hint(),
            Kind::Wrapped(Wrapped(inner)) => inner.size_hint(),
            Kind::Prefixed { head, rest } => {
                let extra = head.as_ref().map_or(0, |h| h.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            Kind::Stream(inner) | Kind::Watched { inner, .. } | Kind::Counted { inner, .. } => {
                inner.size_hint()
            }
        }
    }
}
