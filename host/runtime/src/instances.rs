//! A binding's instances, pooled per worker: a worker takes and returns instances of its own
//! pool only, so the fast path (an idle instance there) touches no lock or counter that another
//! worker also uses.
//!
//! Each worker may have `max_instances / workers` instances alive (at least one), busy or idle;
//! a burst beyond that waits up to [`CHECKOUT_WAIT`] for one to be returned or dropped, then fails
//! as `unavailable` (503). Idle instances beyond [`MAX_IDLE_PER_WORKER`] are dropped when
//! returned. An instance whose call trapped, timed out or ran out of memory is dropped, never
//! returned.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::{Store, UpdateDeadline};

use crate::bindings::{Plugin, PluginPre};
use crate::engine::Engine;
use crate::imports::{HostState, Tags};
use wasmgate_state::SharedState;

/// How long a request waits for an instance before it gets a 503.
pub(crate) const CHECKOUT_WAIT: Duration = Duration::from_secs(1);

/// Idle instances kept per worker: a worker runs one call at a time unless calls yield, so a
/// second idle instance only serves a call that yielded while another ran.
const MAX_IDLE_PER_WORKER: usize = 2;

/// A plugin instance: its store and its exports, and its place among the worker's live instances.
pub(crate) struct Instance {
    pub(crate) store: Store<HostState>,
    pub(crate) plugin: Plugin,
    _permit: OwnedSemaphorePermit,
}

/// How to make a new instance of a binding.
pub(crate) struct Recipe {
    pub(crate) engine: Arc<Engine>,
    pub(crate) pre: PluginPre<HostState>,
    pub(crate) tags: Arc<Tags>,
    pub(crate) shared: Arc<SharedState>,
    pub(crate) memory: usize,
}

impl Recipe {
    /// A new instance with its store set up (limits, the epoch callback), not yet `init`ed; its
    /// start-up code gets `timeout_ticks` to run.
    pub(crate) async fn instantiate(
        &self,
        permit: OwnedSemaphorePermit,
        timeout_ticks: u64,
    ) -> wasmtime::Result<Instance> {
        let state = HostState::new(
            self.tags.clone(),
            self.shared.clone(),
            self.memory,
            self.engine.epoch(),
        );
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            let ticks = state.ticks;
            let seen = state
                .epoch
                .load(Ordering::Relaxed)
                .wrapping_sub(ticks.start);
            if seen >= ticks.limit {
                Ok(UpdateDeadline::Interrupt)
            } else if seen >= ticks.yield_after {
                // tokio's `yield_now` lets the event loop poll for I/O before this call resumes.
                // A plain `Yield` wakes the task at once: on a worker with nothing else ready
                // the scheduler would re-run the call slice after slice and look at sockets
                // only every 61 task polls (measured: other requests on the worker stalled for
                // the whole of a looping call's timeout).
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            } else {
                // A short call runs to the end on its fiber: yielding it would let the requests
                // queued behind it check out (and create) further instances of this binding.
                Ok(UpdateDeadline::Continue(1))
            }
        });
        crate::invoke::start_clock(&mut store, timeout_ticks);
        let plugin = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            plugin,
            _permit: permit,
        })
    }
}

/// One worker's instances of a binding.
struct WorkerPool {
    idle: Mutex<Vec<Instance>>,
    live: Arc<Semaphore>,
    returned: Notify,
}

/// A binding's instances, one pool per worker.
pub(crate) struct Instances {
    pools: Box<[WorkerPool]>,
    /// Whether instances are reused (`isolation = "pooled"`).
    pooled: bool,
}

/// How checking out an instance went wrong.
pub(crate) enum Checkout {
    /// Every instance of the worker stayed busy for [`CHECKOUT_WAIT`].
    Busy,
    /// A new instance could not be made.
    Failed(wasmtime::Error),
}

impl Instances {
    /// Pools for `workers` workers, sharing `max_instances` between them (at least one each).
    pub(crate) fn new(workers: usize, max_instances: usize, pooled: bool) -> Self {
        let workers = workers.max(1);
        let per_worker = max_instances.div_ceil(workers).max(1);
        Self {
            pools: (0..workers)
                .map(|_| WorkerPool {
                    idle: Mutex::new(Vec::new()),
                    live: Arc::new(Semaphore::new(per_worker)),
                    returned: Notify::new(),
                })
                .collect(),
            pooled,
        }
    }

    fn pool(&self, worker: usize) -> &WorkerPool {
        &self.pools[worker % self.pools.len()]
    }

    /// A slot for one more instance on `worker`, without waiting (the first instance, at bind).
    pub(crate) fn try_slot(&self, worker: usize) -> Option<OwnedSemaphorePermit> {
        self.pool(worker).live.clone().try_acquire_owned().ok()
    }

    fn pop_idle(&self, pool: &WorkerPool) -> Option<Instance> {
        if !self.pooled {
            return None;
        }
        pool.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// An idle instance of `worker`, or one made by `make` when the worker has a free slot;
    /// otherwise waits for whichever comes first, an instance returned or a slot freed, up to
    /// [`CHECKOUT_WAIT`]. `make` gets the slot and is expected to `init` the instance.
    pub(crate) async fn checkout<F, Fut>(
        &self,
        worker: usize,
        make: F,
    ) -> Result<Instance, Checkout>
    where
        F: FnOnce(OwnedSemaphorePermit) -> Fut,
        Fut: Future<Output = wasmtime::Result<Instance>>,
    {
        let pool = self.pool(worker);
        if let Some(instance) = self.pop_idle(pool) {
            return Ok(instance);
        }
        // Boxed: waiting and instantiating take large futures, which the fast path above (and
        // every request's future around it) should not carry.
        Box::pin(self.wait_or_make(pool, make)).await
    }

    async fn wait_or_make<F, Fut>(&self, pool: &WorkerPool, make: F) -> Result<Instance, Checkout>
    where
        F: FnOnce(OwnedSemaphorePermit) -> Fut,
        Fut: Future<Output = wasmtime::Result<Instance>>,
    {
        let deadline = tokio::time::Instant::now() + CHECKOUT_WAIT;
        loop {
            let returned = pool.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            // Checked again once registered, so a return in between is not missed.
            if let Some(instance) = self.pop_idle(pool) {
                return Ok(instance);
            }
            tokio::select! {
                permit = pool.live.clone().acquire_owned() => {
                    let Ok(permit) = permit else {
                        return Err(Checkout::Busy);
                    };
                    return make(permit).await.map_err(Checkout::Failed);
                }
                () = returned => {}
                () = tokio::time::sleep_until(deadline) => return Err(Checkout::Busy),
            }
        }
    }

    /// Returns an instance whose call ended normally to `worker`'s pool (dropped when the pool
    /// is full or instances are not reused).
    pub(crate) fn checkin(&self, worker: usize, instance: Instance) {
        let pool = self.pool(worker);
        if self.pooled
            && let Ok(mut idle) = pool.idle.lock()
            && idle.len() < MAX_IDLE_PER_WORKER
        {
            idle.push(instance);
        }
        pool.returned.notify_one();
    }

    /// Instances waiting in the pools, all workers together.
    pub(crate) fn idle(&self) -> usize {
        self.pools
            .iter()
            .map(|p| p.idle.lock().map_or(0, |i| i.len()))
            .sum()
    }
}
