//! `gateway.send_timeout`: a client that stops taking a response loses its connection.
//!
//! hyper polls a response body only when it can write what the body gives: while a client keeps
//! its TCP window (HTTP/1.1) or its HTTP/2 stream window shut, nothing polls the body, so no
//! timer inside the body can fire and the upstream connection behind it stays held for as long
//! as the client likes. A few such clients would hold every upstream connection. So the watch
//! runs beside hyper, on the connection's task, and closes the connection (as nginx's
//! `send_timeout` does) once a response has waited for the client that long.
//!
//! The cost on the data path is two relaxed atomic operations per body frame: a body that hands
//! a frame to hyper counts itself *parked* in the bucket of the current tick, and un-parks on
//! its next poll. The connection's watch (the timer it already has for `idle_timeout`) calls
//! [`Stalls::tick`] every `send_timeout`; a body still parked in the previous tick's bucket has
//! waited at least one whole period. A stall is therefore caught between one and two periods
//! after it began, never earlier.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};

/// The parked response bodies of one client connection.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    tick: AtomicU64,
    /// Bodies that handed a frame out and were not polled since, by the parity of the tick
    /// they parked in.
    parked: [AtomicUsize; 2],
}

impl Stalls {
    /// Ends a period of the connection's watch (one `send_timeout` long): `true` when a
    /// response body has waited for the client since before the period began, else the next
    /// period starts.
    pub(crate) fn tick(&self) -> bool {
        let tick = self.tick.load(Ordering::Relaxed);
        // The other bucket holds bodies parked during the previous period or before: each has
        // waited at least since the period now ending began.
        if self.parked[bucket(tick + 1)].load(Ordering::Relaxed) > 0 {
            return true;
        }
        self.tick.store(tick + 1, Ordering::Relaxed);
        false
    }

    fn park(&self) -> usize {
        let bucket = bucket(self.tick.load(Ordering::Relaxed));
        self.parked[bucket].fetch_add(1, Ordering::Relaxed);
        bucket
    }

    fn unpark(&self, bucket: usize) {
        self.parked[bucket].fetch_sub(1, Ordering::Relaxed);
    }
}

fn bucket(tick: u64) -> usize {
    usize::from(tick % 2 == 1)
}

/// A response body on its way to the client, watched by its connection's [`Stalls`].
#[derive(Debug)]
pub(crate) struct Sending<B> {
    inner: B,
    stalls: Arc<Stalls>,
    parked: Option<usize>,
}

impl<B> Sending<B> {
    pub(crate) fn new(inner: B, stalls: Arc<Stalls>) -> Self {
        Self {
            inner,
            stalls,
            parked: None,
        }
    }
}

impl<B> Drop for Sending<B> {
    fn drop(&mut self) {
        if let Some(bucket) = self.parked.take() {
            self.stalls.unpark(bucket);
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        if let Some(bucket) = this.parked.take() {
            this.stalls.unpark(bucket);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // After the last frame hyper does not poll again: a finished body is not waiting.
        if let Poll::Ready(Some(Ok(_))) = &polled
            && !this.inner.is_end_stream()
        {
            this.parked = Some(this.stalls.park());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    /// Frames given one per poll; `stuck` ones never end (an upstream that went quiet).
    struct Chunks {
        left: VecDeque<&'static str>,
        stuck: bool,
    }

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.left.pop_front() {
                Some(chunk) => {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))))
                }
                None if self.stuck => Poll::Pending,
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.left.is_empty() && !self.stuck
        }
    }

    fn chunks(left: &[&'static str], stuck: bool) -> Chunks {
        Chunks {
            left: left.iter().copied().collect(),
            stuck,
        }
    }

    fn parked(stalls: &Stalls) -> usize {
        stalls
            .parked
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum()
    }

    #[tokio::test]
    async fn a_body_left_unpolled_after_a_frame_stalls_at_the_second_tick() {
        let stalls = Arc::new(Stalls::default());
        let mut body = Sending::new(chunks(&["a", "b"], false), stalls.clone());
        body.frame().await.expect("frame").expect("ok");
        assert_eq!(parked(&stalls), 1);
        // Parked during the first period: not yet a whole period old at its end.
        assert!(!stalls.tick());
        assert!(stalls.tick(), "parked for a whole period");
        // Polled again, it is no longer parked; once done, nothing is left counted.
        body.frame().await.expect("frame").expect("ok");
        assert!(body.is_end_stream());
        assert_eq!(parked(&stalls), 0);
        assert!(!stalls.tick());
        drop(body);
        assert_eq!(parked(&stalls), 0);
    }

    #[tokio::test]
    async fn finished_waiting_and_dropped_bodies_are_not_stalls() {
        let stalls = Arc::new(Stalls::default());
        let mut done = Sending::new(chunks(&["all"], false), stalls.clone());
        done.frame().await.expect("frame").expect("ok");
        // Waiting for its upstream: hyper keeps polling it, so it is not parked.
        let mut waiting = Sending::new(chunks(&[], true), stalls.clone());
        let poll = tokio::time::timeout(Duration::from_millis(20), waiting.frame()).await;
        assert!(poll.is_err(), "the stuck body gave a frame");
        // Handed a frame out, then dropped (the client reset its stream).
        let mut reset = Sending::new(chunks(&["a", "b"], false), stalls.clone());
        reset.frame().await.expect("frame").expect("ok");
        drop(reset);
        assert_eq!(parked(&stalls), 0);
        for _ in 0..4 {
            assert!(!stalls.tick(), "no body waits for the client");
        }
    }
}
