//! The response body passed to the client while it is recorded for the cache.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::{Fill, Plan};

/// A response body passed through unchanged, frame by frame as it arrives, while it is recorded
/// for the cache (from [`Fill::record`]). Once it ends cleanly the entry is stored; dropping it
/// earlier, an error, trailers, or more bytes than fit leave nothing stored.
///
/// After a revalidation it is the stored body instead, the upstream's (empty) one dropped.
pub struct Recording<B> {
    inner: Source<B>,
    recorder: Option<Recorder>,
}

enum Source<B> {
    Upstream(B),
    /// Taken when polled.
    Stored(Option<Bytes>),
}

impl<B> Recording<B> {
    pub(crate) fn new(inner: B, recorder: Option<Recorder>) -> Self
    where
        B: Body,
    {
        let mut recording = Self {
            inner: Source::Upstream(inner),
            recorder,
        };
        // hyper never polls a body that says it has ended (an empty one), so store it now.
        if recording.is_end_stream_inner() {
            recording.finish();
        }
        recording
    }

    pub(crate) fn stored(body: Bytes) -> Self {
        Self {
            inner: Source::Stored((!body.is_empty()).then_some(body)),
            recorder: None,
        }
    }

    /// Whether this is a stored body the upstream confirmed with a `304` (see [`Fill::record`]).
    pub fn is_revalidated(&self) -> bool {
        matches!(self.inner, Source::Stored(_))
    }

    fn is_end_stream_inner(&self) -> bool
    where
        B: Body,
    {
        match &self.inner {
            Source::Upstream(inner) => inner.is_end_stream(),
            Source::Stored(body) => body.is_none(),
        }
    }

    fn finish(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            recorder.finish();
        }
    }
}

impl<B> fmt::Debug for Recording<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("recording", &self.recorder.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for Recording<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let inner = match &mut this.inner {
            Source::Upstream(inner) => inner,
            Source::Stored(body) => return Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(recorder) = &mut this.recorder {
                    // Trailers would be lost on a hit: such responses are not stored.
                    let fits = frame.data_ref().is_some_and(|data| recorder.push(data));
                    if !fits {
                        this.recorder = None;
                    }
                }
                // The client's side stops polling once the body says it has ended.
                if inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => this.recorder = None,
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.is_end_stream_inner()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Upstream(inner) => inner.size_hint(),
            Source::Stored(body) => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The part of a [`Recording`] that keeps the body for the cache.
#[derive(Debug)]
pub(crate) struct Recorder {
    fill: Fill,
    plan: Plan,
    body: BytesMut,
    limit: u64,
}

impl Recorder {
    pub(crate) fn new(fill: Fill, plan: Plan) -> Self {
        let limit = fill.inner.rules.max_entry_size;
        let expected = plan.content_length.unwrap_or(0).min(limit);
        Self {
            body: BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0)),
            fill,
            plan,
            limit,
        }
    }

    /// Keeps `data`; false when the body got too big to store.
    fn push(&mut self, data: &Bytes) -> bool {
        if (self.body.len() + data.len()) as u64 > self.limit {
            return false;
        }
        self.body.extend_from_slice(data);
        true
    }

    fn finish(self) {
        // A body shorter than its Content-Length broke off, even if the stream ended quietly.
        if self
            .plan
            .content_length
            .is_some_and(|len| len != self.body.len() as u64)
        {
            return;
        }
        self.fill.store(self.plan, self.body.freeze());
    }
}
