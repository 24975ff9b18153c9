//! A route's plugin entry bound to its config, with a pool of instances `init`ed with that config.
//!
//! Instances are reused across requests (`isolation = "pooled"`): an instance returns to the pool
//! after a call that ended normally, `Continue`, `respond` or `plugin-error` alike. An instance
//! whose call trapped, timed out or ran out of memory is dropped, never reused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmgate_config::{Isolation, OnError, PluginEntry};
use wasmgate_telemetry::PluginMetrics;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::exports::wasmgate::plugin::lifecycle::PluginInfo;
use crate::bindings::wasmgate::plugin::types::{
    Action as WitAction, Rejection as WitRejection, ResponseSpec,
};
use crate::bindings::{Plugin, PluginPre};
use crate::engine::Engine;
use crate::host::{Context, Exchange, HostState, RequestView, ResponseView, Tags};
use crate::shared::SharedState;

/// How a plugin call went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The plugin returned `plugin-error`.
    Error,
    /// The plugin trapped (a Rust panic is a trap).
    Trap,
    /// The call exceeded the entry's `timeout`.
    Timeout,
    /// The instance hit the entry's `memory` limit.
    OutOfMemory,
    /// No instance could be made (the pooling allocator is full, or a fresh instance failed to
    /// `init`).
    Unavailable,
}

impl FailureKind {
    /// Lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "oom",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A failed plugin call. `detail` is for logs only, never for clients.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin} on route {route} failed ({}): {detail}", kind.as_str())]
pub struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// The route.
    pub route: Arc<str>,
    /// The plugin.
    pub plugin: Arc<str>,
    /// Details: the plugin's error message, the trap, the panic.
    pub detail: String,
}

/// The hooks an instance asked for in `describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hooks {
    pub(crate) request: bool,
    pub(crate) response: bool,
}

/// Counts of failed calls, by kind.
#[derive(Debug, Default)]
pub struct FailureCounts {
    counts: [AtomicU64; 5],
}

impl FailureCounts {
    fn add(&self, kind: FailureKind, metrics: &PluginMetrics) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        // FailureKind's order is FAILURE_KINDS' order.
        metrics.failed(kind as usize);
    }

    /// The count for `kind`.
    pub fn get(&self, kind: FailureKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }
}

struct Instance {
    store: Store<HostState>,
    plugin: Plugin,
    /// Held for the instance's whole life: bounds the live instances of a binding.
    _permit: OwnedSemaphorePermit,
}

/// Live instances per binding, idle or busy. Well-behaved hooks finish in microseconds without
/// yielding, so only slow or failing calls hold instances long; requests beyond this wait for
/// one (up to [`CHECKOUT_WAIT`]) instead of exhausting the engine's slots.
pub(crate) const MAX_INSTANCES: usize = 8;

/// How long a request waits for an instance before it gets a 503.
const CHECKOUT_WAIT: Duration = Duration::from_secs(1);

/// Which hook to call.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Request,
    Response,
}

/// What a hook asked for.
pub(crate) enum Outcome {
    Continue,
    Respond(ResponseSpec),
    Reject(WitRejection),
}

/// One plugin entry of one route, ready to serve calls.
pub struct Binding {
    pub(crate) tags: Arc<Tags>,
    pre: PluginPre<HostState>,
    engine: Arc<Engine>,
    shared: Arc<dyn SharedState>,
    config_json: String,
    memory: usize,
    timeout: Duration,
    pub(crate) on_error: OnError,
    isolation: Isolation,
    pub(crate) hooks: Hooks,
    pub(crate) needs_body: bool,
    pub(crate) info: (String, String),
    idle: Mutex<Vec<Instance>>,
    max_idle: usize,
    live: Arc<Semaphore>,
    returned: Notify,
    /// Failed calls by kind.
    pub failures: FailureCounts,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("route", &self.tags.route)
            .field("plugin", &self.tags.plugin)
            .finish_non_exhaustive()
    }
}

/// Why a plugin entry could not be bound.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    /// The plugin's `init` refused the entry's config; its own message.
    #[error("refused its config: {0}")]
    Config(String),
    /// No instance could be made or set up.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

/// How long a call runs before it yields to the executor at every epoch tick, so that one slow
/// hook (a bcrypt check, an RSA signature) does not hold the worker thread for its whole
/// `timeout`. Hooks shorter than this never yield.
const YIELD_AFTER: Duration = Duration::from_millis(1);

/// A fresh instance's `init` needs more than a hook: it may parse a large config.
const INIT_TIMEOUT: Duration = Duration::from_secs(2);

impl Binding {
    /// Binds `entry` on `route`: makes the first instance and runs its `init` and `describe`.
    /// The error is the plugin's own message (config refused) or the instantiation failure.
    pub(crate) async fn new(
        engine: Arc<Engine>,
        pre: PluginPre<HostState>,
        shared: Arc<dyn SharedState>,
        route: &str,
        entry: &PluginEntry,
        max_idle: usize,
        metrics: PluginMetrics,
    ) -> Result<Self, BindError> {
        let mut binding = Self {
            tags: Arc::new(Tags {
                route: route.into(),
                plugin: entry.name.as_str().into(),
                metrics,
                counter_refused: AtomicBool::new(false),
            }),
            pre,
            engine,
            shared,
            config_json: entry.config.to_string(),
            memory: entry.memory,
            timeout: entry.timeout,
            on_error: entry.on_error,
            isolation: entry.isolation,
            hooks: Hooks {
                request: true,
                response: true,
            },
            needs_body: false,
            info: (String::new(), String::new()),
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.clamp(1, MAX_INSTANCES),
            live: Arc::new(Semaphore::new(MAX_INSTANCES)),
            returned: Notify::new(),
            failures: FailureCounts::default(),
        };
        let permit = binding
            .live
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BindError::Instantiate("binding closed".into()))?;
        let mut first = binding
            .instantiate(permit)
            .await
            .map_err(|f| match f.kind {
                FailureKind::Error => BindError::Config(f.detail),
                _ => BindError::Instantiate(f.detail),
            })?;
        first.store.data_mut().deadline = Instant::now() + INIT_TIMEOUT;
        let info: PluginInfo = first
            .plugin
            .wasmgate_plugin_lifecycle()
            .call_describe(&mut first.store)
            .await
            .map_err(|e| BindError::Instantiate(format!("describe failed: {e:#}")))?;
        binding.hooks = Hooks {
            request: info
                .hooks
                .contains(crate::bindings::exports::wasmgate::plugin::lifecycle::Hooks::ON_REQUEST),
            response: info.hooks.contains(
                crate::bindings::exports::wasmgate::plugin::lifecycle::Hooks::ON_RESPONSE,
            ),
        };
        binding.needs_body = info.needs_body;
        binding.info = (info.name, info.version);
        first.store.data_mut().body_allowed = binding.needs_body;
        if binding.isolation == Isolation::Pooled {
            binding.checkin(first);
        }
        Ok(binding)
    }

    /// A new instance with `init` done. Failures are `Unavailable` (slots) or carry the plugin's
    /// config error.
    async fn instantiate(&self, permit: OwnedSemaphorePermit) -> Result<Instance, Failure> {
        let state = HostState::new(self.tags.clone(), self.shared.clone(), self.memory);
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|ctx| {
            let now = Instant::now();
            let data = ctx.data();
            if now >= data.deadline {
                Ok(UpdateDeadline::Interrupt)
            } else if now >= data.yield_at {
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
        store.set_epoch_deadline(1);
        let now = Instant::now();
        store.data_mut().deadline = now + INIT_TIMEOUT;
        store.data_mut().yield_at = now + YIELD_AFTER;
        store.data_mut().body_allowed = self.needs_body;
        let plugin = self.pre.instantiate_async(&mut store).await.map_err(|e| {
            self.failure(
                FailureKind::Unavailable,
                format!("instantiation failed: {e:#}"),
            )
        })?;
        let init = plugin
            .wasmgate_plugin_lifecycle()
            .call_init(&mut store, &self.config_json)
            .await;
        match init {
            Ok(Ok(())) => Ok(Instance {
                store,
                plugin,
                _permit: permit,
            }),
            // `Error` here means the plugin refused its config; callers tell it apart.
            Ok(Err(e)) => Err(self.failure(FailureKind::Error, e.message)),
            Err(e) => {
                let kind = classify(&e, &store);
                Err(self.failure(kind, format!("init {}: {e:#}", kind.as_str())))
            }
        }
    }

    pub(crate) fn failure(&self, kind: FailureKind, detail: String) -> Failure {
        Failure {
            kind,
            route: self.tags.route.clone(),
            plugin: self.tags.plugin.clone(),
            detail,
        }
    }

    fn pop_idle(&self) -> Option<Instance> {
        if self.isolation != Isolation::Pooled {
            return None;
        }
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// An idle instance, or a new one when fewer than [`MAX_INSTANCES`] live; otherwise waits
    /// for whichever comes first, an instance returned or a slot freed, up to [`CHECKOUT_WAIT`].
    async fn checkout(&self) -> Result<Instance, Failure> {
        let deadline = tokio::time::Instant::now() + CHECKOUT_WAIT;
        loop {
            if let Some(instance) = self.pop_idle() {
                return Ok(instance);
            }
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            // Checked again once registered, so a return in between is not missed.
            if let Some(instance) = self.pop_idle() {
                return Ok(instance);
            }
            tokio::select! {
                permit = self.live.clone().acquire_owned() => {
                    let permit = permit.map_err(|_| self.failure(FailureKind::Unavailable, "binding closed".into()))?;
                    return self.instantiate(permit).await.map_err(|mut f| {
                        f.kind = FailureKind::Unavailable;
                        f
                    });
                }
                () = returned => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(self.failure(
                        FailureKind::Unavailable,
                        format!("all {MAX_INSTANCES} instances stayed busy for {CHECKOUT_WAIT:?}"),
                    ));
                }
            }
        }
    }

    fn checkin(&self, instance: Instance) {
        if self.isolation != Isolation::Pooled {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(instance);
        }
        self.returned.notify_one();
    }

    /// Instances waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }

    /// Runs `on-request`. The view and context come back whatever happened.
    pub(crate) async fn on_request(
        &self,
        view: RequestView,
        ctx: Context,
        request_id: &HeaderValue,
    ) -> (RequestView, Context, Result<Outcome, Failure>) {
        let exchange = Exchange {
            request: Some(view),
            context: ctx,
            ..Exchange::default()
        };
        let (exchange, outcome) = self.call(Hook::Request, exchange, request_id).await;
        let view = exchange.request.unwrap_or_else(unreachable_view);
        (view, exchange.context, outcome)
    }

    /// Runs `on-response`. The view and context come back whatever happened.
    pub(crate) async fn on_response(
        &self,
        view: ResponseView,
        ctx: Context,
        request_id: &HeaderValue,
    ) -> (ResponseView, Context, Result<Outcome, Failure>) {
        let exchange = Exchange {
            response: Some(view),
            context: ctx,
            ..Exchange::default()
        };
        let (exchange, outcome) = self.call(Hook::Response, exchange, request_id).await;
        let view = exchange.response.unwrap_or_else(|| ResponseView {
            parts: http::Response::new(()).into_parts().0,
            body: None,
            body_replaced: false,
        });
        (view, exchange.context, outcome)
    }

    /// One hook call on a checked-out instance: the exchange is moved into the store for the
    /// call and out after it, whatever happened.
    async fn call(
        &self,
        hook: Hook,
        exchange: Exchange,
        request_id: &HeaderValue,
    ) -> (Exchange, Result<Outcome, Failure>) {
        let start = Instant::now();
        let (exchange, outcome) = self.call_instance(hook, exchange, request_id).await;
        self.tags
            .metrics
            .observe(matches!(hook, Hook::Response), start.elapsed());
        (exchange, outcome)
    }

    async fn call_instance(
        &self,
        hook: Hook,
        exchange: Exchange,
        request_id: &HeaderValue,
    ) -> (Exchange, Result<Outcome, Failure>) {
        let mut instance = match self.checkout().await {
            Ok(i) => i,
            Err(f) => {
                self.failures.add(f.kind, &self.tags.metrics);
                return (exchange, Err(f));
            }
        };
        self.prepare(&mut instance, exchange, request_id);
        let filter = instance.plugin.wasmgate_plugin_http_filter();
        // The handles carry no data: the host serves the exchange in the store.
        let result = match hook {
            Hook::Request => {
                filter
                    .call_on_request(&mut instance.store, Resource::new_borrow(0))
                    .await
            }
            Hook::Response => {
                filter
                    .call_on_response(&mut instance.store, Resource::new_borrow(0))
                    .await
            }
        };
        let exchange = std::mem::take(&mut instance.store.data_mut().exchange);
        (exchange, self.finish(instance, result))
    }

    fn prepare(&self, instance: &mut Instance, exchange: Exchange, request_id: &HeaderValue) {
        let data = instance.store.data_mut();
        data.exchange = exchange;
        data.exchange.request_id = Some(request_id.clone());
        let now = Instant::now();
        data.deadline = now + self.timeout;
        data.yield_at = now + YIELD_AFTER;
        data.limits.hit_memory_limit = false;
        instance.store.set_epoch_deadline(1);
    }

    fn finish(
        &self,
        instance: Instance,
        result: wasmtime::Result<
            Result<WitAction, crate::bindings::wasmgate::plugin::types::PluginError>,
        >,
    ) -> Result<Outcome, Failure> {
        match result {
            Ok(Ok(WitAction::Continue)) => {
                self.checkin(instance);
                Ok(Outcome::Continue)
            }
            Ok(Ok(WitAction::Respond(spec))) => {
                self.checkin(instance);
                Ok(Outcome::Respond(spec))
            }
            Ok(Ok(WitAction::Reject(rejection))) => {
                self.checkin(instance);
                Ok(Outcome::Reject(rejection))
            }
            Ok(Err(e)) => {
                self.checkin(instance);
                self.failures.add(FailureKind::Error, &self.tags.metrics);
                Err(self.failure(FailureKind::Error, e.message))
            }
            Err(e) => {
                // Dropped, never reused: its memory may be in any state.
                let kind = classify(&e, &instance.store);
                self.failures.add(kind, &self.tags.metrics);
                Err(self.failure(kind, format!("{e:#}")))
            }
        }
    }
}

/// The request view is always in the store after a call: the host only reads and edits it.
fn unreachable_view() -> RequestView {
    RequestView {
        parts: http::Request::new(()).into_parts().0,
        body: None,
        body_replaced: false,
        path_rewritten: false,
        client: std::net::IpAddr::from([0, 0, 0, 0]),
        tls: false,
    }
}

fn classify(error: &wasmtime::Error, store: &Store<HostState>) -> FailureKind {
    if store.data().limits.hit_memory_limit {
        return FailureKind::OutOfMemory;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureKind::Timeout,
        _ => FailureKind::Trap,
    }
}
