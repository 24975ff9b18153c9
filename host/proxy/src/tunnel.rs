//! Upgraded connections (WebSocket and other HTTP/1.1 `Upgrade` protocols): once the target
//! answered 101, the client's connection and the target's are joined and bytes are copied both
//! ways until either side closes or nothing passes for the idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use wasmgate_telemetry::TargetMetrics;

/// Joins the two sides once both upgrades complete (the client's when its 101 has been written),
/// on a task of the current worker.
pub(crate) fn spawn(
    client: OnUpgrade,
    target: OnUpgrade,
    idle: Duration,
    metrics: TargetMetrics,
    request_id: String,
) {
    tokio::spawn(async move {
        let (client, target) = match tokio::try_join!(client, target) {
            Ok(sides) => sides,
            Err(e) => {
                tracing::debug!(%request_id, error = %e, "upgrade did not complete");
                return;
            }
        };
        let _open = metrics.tunnel();
        let start = Instant::now();
        let last_active = Arc::new(AtomicU64::new(0));
        let mut client = Watched::new(TokioIo::new(client), start, last_active.clone());
        let mut target = Watched::new(TokioIo::new(target), start, last_active.clone());
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut target) => {
                if let Err(e) = copied {
                    tracing::debug!(%request_id, error = %e, "upgraded connection failed");
                }
            }
            () = idle_for(idle, start, &last_active) => {
                tracing::debug!(%request_id, ?idle, "upgraded connection idle, closed");
            }
        }
    });
}

/// Returns once nothing was read from or written to either side for `idle`.
async fn idle_for(idle: Duration, start: Instant, last_active: &AtomicU64) {
    loop {
        let last = start + Duration::from_millis(last_active.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// One side of a tunnel, recording when bytes last moved through it (a slow reader that
/// keeps taking bytes is activity too).
struct Watched<T> {
    inner: T,
    start: Instant,
    last_active: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn new(inner: T, start: Instant, last_active: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            start,
            last_active,
        }
    }

    fn active(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.active();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.active();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
