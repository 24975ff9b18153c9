//! Data-path workers: one thread per worker, each with its own single-threaded event loop.
//!
//! Every worker accepts from the same listening sockets (each registers its own handle of the
//! socket, nginx's layout without `reuseport`: whichever worker is idle takes the next
//! connection) and serves the connections it accepted to the end, including their upstream
//! connections, which it keeps in its own pools. A request never crosses threads.
//!
//! Measured against tokio's work-stealing runtime on one CPU (`cargo xtask bench --quick`,
//! bench/RESULTS.md): 23.4–25.9 k vs 19.4 k requests/s and 38–43 vs 51 µs of CPU per request. The
//! work-stealing scheduler pays for cross-thread queues and wake-ups on every task switch
//! even with one worker; a worker here wakes only its own thread.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::{Listener, Server};

/// Threads each worker may use for blocking work.
const BLOCKING_THREADS: usize = 8;

/// Running workers. Dropping this stops them at once (their connections are closed); a graceful
/// stop cancels `stop` first and waits for the connections.
pub(crate) struct Workers {
    abort: CancellationToken,
    exited: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one) accepting from `listeners` until `stop` is
    /// cancelled; every accept loop and connection is tracked by `tracker`.
    pub(crate) fn start(
        count: usize,
        listeners: Vec<Arc<Listener>>,
        server: &Arc<Server>,
        stop: &CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let count = count.max(1);
        let abort = CancellationToken::new();
        let mut workers = Self {
            abort: abort.clone(),
            exited: Vec::with_capacity(count),
        };
        for index in 0..count {
            let (exited, on_exit) = oneshot::channel();
            // The workers hold the only handles: the sockets close when the last one stops.
            let listeners = listeners.clone();
            let (server, stop, tracker, abort) =
                (server.clone(), stop.clone(), tracker.clone(), abort.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Blocking work here is DNS lookups of upstream names: a few threads per worker
                // (tokio's default allows 512 each).
                .max_blocking_threads(BLOCKING_THREADS)
                .thread_name("wasmgate-blocking")
                .build()?;
            std::thread::Builder::new()
                .name(format!("wasmgate-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        for listener in listeners {
                            // Tracked too: a connection accepted just as the drain finishes is
                            // then still waited for.
                            tracker.spawn(listener.accept_loop(
                                index,
                                server.clone(),
                                stop.clone(),
                                tracker.clone(),
                            ));
                        }
                        // The worker's connections run on this thread: it lives until every
                        // connection of the gateway has finished, or the drain is cut short.
                        tokio::select! {
                            () = async {
                                stop.cancelled().await;
                                tracker.wait().await;
                            } => {}
                            () = abort.cancelled() => {}
                        }
                    });
                    // Closes whatever connections are left, without waiting for a DNS lookup
                    // that may never return.
                    runtime.shutdown_timeout(Duration::ZERO);
                    let _ = exited.send(());
                })?;
            workers.exited.push(on_exit);
        }
        Ok(workers)
    }

    /// Closes every remaining connection and waits for the worker threads to finish.
    pub(crate) async fn stop(mut self) {
        self.abort.cancel();
        for exited in std::mem::take(&mut self.exited) {
            let _ = exited.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.abort.cancel();
    }
}
