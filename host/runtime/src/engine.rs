//! The one wasmtime engine: pooling allocator, copy-on-write memory images, epoch interruption,
//! compiled code cached on disk, and the linker with the host API.
//!
//! # Calls are async
//!
//! Hooks are called with wasmtime's async API (each call runs on a fiber). Two reasons, both
//! measured or forced rather than assumed:
//!
//! * WASI 0.2's streams (a guest's `println!`, a panic message) are implemented asynchronously by
//!   wasmtime-wasi; their synchronous wrappers block on a Tokio runtime, which panics on a Tokio
//!   worker thread. Sync calls would need `block_in_place` per call or a thread hop per request.
//! * With async calls a long-running plugin yields to the executor every epoch tick (once it has
//!   run for 1 ms) instead of holding its worker thread for its whole time budget — and a worker
//!   is one thread serving every connection it accepted, so a call that cannot yield stalls all
//!   of them. Later capabilities (outbound HTTP for JWKS, Redis) can await I/O within the
//!   request's deadline.
//!
//! The price is a fiber switch per call; `cargo bench -p wasmgate-runtime` measures it (see
//! `bench/RESULTS.md`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{
    Cache, CacheConfig, Config, InstanceAllocationStrategy, PoolingAllocationConfig,
    ProfilingStrategy,
};

use crate::bindings::Plugin;
use crate::imports::HostState;

/// How often the epoch advances: the granularity of per-call timeouts and of yielding.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks without any call in flight after which the ticker sleeps until the next call.
const IDLE_TICKS: u32 = 100;

/// Sizing of the engine, computed from the configuration at load time.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// The largest `memory` of any plugin entry.
    pub max_memory: usize,
    /// How many component instances may exist at once; one more gets a 503.
    pub instance_slots: u32,
    /// The gateway's worker threads: calls in flight are counted per worker.
    pub workers: usize,
}

/// The shared wasmtime engine and linker.
pub struct Engine {
    pub(crate) engine: wasmtime::Engine,
    pub(crate) linker: Linker<HostState>,
    ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// The epoch thread's state. It advances the epoch every [`EPOCH_TICK`] while calls run, and
/// sleeps (parked, no wake-ups) once none has run for [`IDLE_TICKS`]: an idle gateway costs no
/// CPU for its plugins. Calls in flight are counted per worker, each counter written only by its
/// worker's thread, so counting costs no cache line shared between workers.
struct Ticker {
    running: AtomicBool,
    /// How often the epoch advanced: what calls measure their time against.
    epoch: Arc<AtomicU64>,
    parked: AtomicBool,
    in_flight: Box<[Padded]>,
    thread: std::sync::OnceLock<Thread>,
}

/// A counter on its own cache line.
#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicUsize);

/// Counts a call in flight on the engine until dropped.
pub(crate) struct InFlight<'e> {
    ticker: &'e Ticker,
    worker: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ticker.in_flight[self.worker]
            .0
            .fetch_sub(1, Ordering::Release);
    }
}

impl Ticker {
    fn enter(&self, worker: usize) -> InFlight<'_> {
        let worker = worker % self.in_flight.len();
        // SeqCst on both sides (here and in `run`): either this call sees the ticker parked and
        // wakes it, or the ticker sees this call and does not park.
        self.in_flight[worker].0.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
        InFlight {
            ticker: self,
            worker,
        }
    }

    fn busy(&self) -> bool {
        self.in_flight
            .iter()
            .any(|c| c.0.load(Ordering::SeqCst) > 0)
    }

    fn run(&self, engine: &wasmtime::Engine) {
        let mut idle = 0;
        while self.running.load(Ordering::Relaxed) {
            if self.busy() {
                idle = 0;
            } else {
                idle += 1;
            }
            if idle >= IDLE_TICKS {
                self.parked.store(true, Ordering::SeqCst);
                if !self.busy() && self.running.load(Ordering::Relaxed) {
                    std::thread::park();
                }
                self.parked.store(false, Ordering::SeqCst);
                idle = 0;
                continue;
            }
            std::thread::sleep(EPOCH_TICK);
            // Counted before the engine's epoch, so a call interrupted by this tick sees it.
            self.epoch.fetch_add(1, Ordering::Relaxed);
            engine.increment_epoch();
        }
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The compile cache directory cannot be created or used.
    #[error("cannot use {} as the plugin compile cache: {}", dir.display(), source.root_cause())]
    Cache {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: wasmtime::Error,
    },
    /// The engine itself (its instance pool, its epoch thread) cannot be set up.
    #[error("cannot start the plugin engine: {0:#}")]
    Start(wasmtime::Error),
}

impl Engine {
    /// Builds the engine, starts its epoch ticker and links the host API.
    pub fn new(settings: &EngineSettings) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.memory_init_cow(true);
        // `perf` cannot name JIT code on its own; with a perf map it attributes samples to the
        // plugin's functions (docs/operations.md, "Profiling plugins").
        if std::env::var_os("WASMGATE_PERF_MAP").is_some_and(|v| v == "1") {
            config.profiler(ProfilingStrategy::PerfMap);
        }
        if let Some(dir) = &settings.cache_dir {
            let mut cache = CacheConfig::new();
            cache.with_directory(dir);
            let cache = Cache::new(cache).map_err(|source| EngineError::Cache {
                dir: dir.clone(),
                source,
            })?;
            config.cache(Some(cache));
        }
        Self::with_config(config, settings).map_err(EngineError::Start)
    }

    fn with_config(mut config: Config, settings: &EngineSettings) -> wasmtime::Result<Self> {
        let slots = settings.instance_slots.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            // A Rust wasip2 component holds a few core instances (its module plus shims) and
            // tables, one memory, and one fiber stack while a call runs.
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(8))
            .total_stacks(slots)
            .max_memory_size(settings.max_memory);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;

        let ticker = Arc::new(Ticker {
            running: AtomicBool::new(true),
            epoch: Arc::new(AtomicU64::new(0)),
            parked: AtomicBool::new(false),
            in_flight: (0..settings.workers.max(1))
                .map(|_| Padded::default())
                .collect(),
            thread: std::sync::OnceLock::new(),
        });
        let ticking = ticker.clone();
        let epochs = engine.clone();
        let thread = std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || ticking.run(&epochs))
            .map_err(|e| wasmtime::Error::msg(format!("cannot start the epoch thread: {e}")))?;
        let _ = ticker.thread.set(thread.thread().clone());
        Ok(Self {
            engine,
            linker,
            ticker,
        })
    }

    /// The epoch count, advanced by the ticker at every tick.
    pub(crate) fn epoch(&self) -> Arc<AtomicU64> {
        self.ticker.epoch.clone()
    }

    /// Counts a call in flight on `worker`'s thread until the guard is dropped; the epoch ticks
    /// (and so timeouts and yields happen) only while some call is counted.
    pub(crate) fn enter(&self, worker: usize) -> InFlight<'_> {
        self.ticker.enter(worker)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.ticker.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.ticker.thread.get() {
            thread.unpark();
        }
    }
}
