//! `gateway.send_timeout`: a client that stops taking a response (or anything else the gateway
//! writes to it) loses its connection.
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
//! after it began, never earlier. The socket itself is watched the same way ([`SendingIo`]),
//! at no cost while its writes go through: only a write the socket cannot take parks.

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

/// The client connection's socket, watched by its [`Stalls`] as response bodies are: a write
/// that the socket cannot take parks until a write goes through again.
///
/// This catches what waits for the client outside any response body. The h2 crate owes an
/// acknowledgement for each PING and SETTINGS frame and reads no further frame until it has
/// written the last one: a client that floods them and never reads stalls its own connection
/// (the flood is bounded), but would hold it, and its slot under `max_connections`, for as long
/// as it liked. The same holds for a response head or a GOAWAY the client never takes.
#[derive(Debug)]
pub(crate) struct SendingIo<I> {
    inner: I,
    stalls: Arc<Stalls>,
    parked: Option<usize>,
}

impl<I> SendingIo<I> {
    pub(crate) fn new(inner: I, stalls: Arc<Stalls>) -> Self {
        Self {
            inner,
            stalls,
            parked: None,
        }
    }

    /// Parked from the first write the socket could not take; a retry that did not go through
    /// either keeps the first one's bucket, so a stall is never made younger than it is.
    fn wrote<T>(&mut self, polled: &Poll<T>) {
        match polled {
            Poll::Pending => {
                if self.parked.is_none() {
                    self.parked = Some(self.stalls.park());
                }
            }
            Poll::Ready(_) => {
                if let Some(bucket) = self.parked.take() {
                    self.stalls.unpark(bucket);
                }
            }
        }
    }
}

impl<I> Drop for SendingIo<I> {
    fn drop(&mut self) {
        if let Some(bucket) = self.parked.take() {
            self.stalls.unpark(bucket);
        }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for SendingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for SendingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // hyper and h2 flush only once their buffered writes went through: a flush that completes
    // is progress (over TLS it writes the last records), one that cannot is a stall.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(&polled);
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.wrote(&polled);
        polled
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

    /// A socket that takes writes only while `open`.
    struct Socket {
        open: bool,
    }

    impl hyper::rt::Write for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.open {
                Poll::Ready(Ok(buf.len()))
            } else {
                Poll::Pending
            }
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(io: &mut SendingIo<Socket>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        hyper::rt::Write::poll_write(Pin::new(io), &mut cx, b"x").is_ready()
    }

    #[test]
    fn a_socket_that_takes_no_write_stalls_from_the_first_refused_one() {
        let stalls = Arc::new(Stalls::default());
        let mut io = SendingIo::new(Socket { open: true }, stalls.clone());
        assert!(write(&mut io));
        assert!(!stalls.tick(), "writes go through");
        io.inner.open = false;
        assert!(!write(&mut io));
        assert!(!stalls.tick());
        // Retried in vain: still the first refusal's age, a whole period now.
        assert!(!write(&mut io));
        assert!(stalls.tick(), "no write went through for a whole period");
        // One write through, and the socket no longer waits.
        io.inner.open = true;
        assert!(write(&mut io));
        assert_eq!(parked(&stalls), 0);
        io.inner.open = false;
        assert!(!write(&mut io));
        drop(io);
        assert_eq!(parked(&stalls), 0, "a dropped socket waits for nothing");
    }
}
