//! Circuit breaking on connections: an upstream's `max_connections` open to its targets across
//! the gateway, and at most `max_pending` requests waiting for one of them to free up. Beyond,
//! a request is refused at once (503) rather than queued without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// The connection limits of one upstream, shared by its targets' pools.
#[derive(Debug)]
pub(crate) struct Breaker {
    max_connections: usize,
    max_pending: usize,
    open: AtomicUsize,
    pending: AtomicUsize,
    /// Woken when a connection closes or goes back to a pool while requests wait.
    freed: Notify,
    overflows: Counter,
    waiting: Gauge,
}

/// One of the `max_connections`, held by a connection until it closes.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Breaker>);

/// A request counted among the `max_pending` while it waits.
#[derive(Debug)]
pub(crate) struct Waiting<'a>(&'a Breaker);

impl Breaker {
    pub(crate) fn new(
        max_connections: usize,
        max_pending: usize,
        overflows: Counter,
        waiting: Gauge,
    ) -> Self {
        Self {
            max_connections,
            max_pending,
            open: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            freed: Notify::new(),
            overflows,
            waiting,
        }
    }

    /// A slot for a new connection, if fewer than `max_connections` are open.
    pub(crate) fn slot(self: &Arc<Self>) -> Option<Slot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open < self.max_connections {
            return Some(Slot(self.clone()));
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        None
    }

    /// Counts a request waiting for a connection, or refuses it (counted) when `max_pending`
    /// already wait.
    pub(crate) fn wait(&self) -> Option<Waiting<'_>> {
        if self.pending.fetch_add(1, Ordering::AcqRel) < self.max_pending {
            self.waiting.inc();
            return Some(Waiting(self));
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.overflow();
        None
    }

    /// Counts a request refused by the limits.
    pub(crate) fn overflow(&self) {
        self.overflows.inc();
    }

    /// What a waiting request waits on; register (`enable`) before checking again.
    pub(crate) fn freed(&self) -> &Notify {
        &self.freed
    }

    /// Tells waiting requests that a connection may be free: one went back to a pool.
    pub(crate) fn released(&self) {
        if self.pending.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    pub(crate) fn limits(&self) -> (usize, usize) {
        (self.max_connections, self.max_pending)
    }

    /// Connections open now, and requests waiting for one (for the admin API). Capped at the
    /// limits: a refused slot or wait is counted for a moment before it is taken back.
    pub(crate) fn counts(&self) -> (usize, usize) {
        (
            self.open.load(Ordering::Relaxed).min(self.max_connections),
            self.pending.load(Ordering::Relaxed).min(self.max_pending),
        )
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.released();
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_and_come_back_when_dropped() {
        let b = Arc::new(Breaker::new(2, 1, Counter::default(), Gauge::default()));
        let one = b.slot().expect("first");
        let _two = b.slot().expect("second");
        assert!(b.slot().is_none());
        drop(one);
        assert!(b.slot().is_some());
    }

    #[test]
    fn waiting_beyond_max_pending_is_refused_and_counted() {
        let b = Breaker::new(1, 1, Counter::default(), Gauge::default());
        let waiting = b.wait().expect("one may wait");
        assert!(b.wait().is_none());
        assert_eq!(b.overflows.get(), 1);
        drop(waiting);
        assert!(b.wait().is_some());
    }
}
