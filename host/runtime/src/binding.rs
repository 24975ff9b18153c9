//! A route's plugin entry bound to its config: what the plugin described at bind time (hooks,
//! declared inputs, fixed edits), its instances, and its failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use tokio::sync::OwnedSemaphorePermit;
use wasmgate_config::{Isolation, OnError, PluginEntry};
use wasmgate_telemetry::PluginMetrics;

use crate::Context;
use crate::bindings::PluginPre;
use crate::bindings::exports::wasmgate::plugin::lifecycle::{Hooks as WitHooks, PluginInfo};
use crate::bindings::wasmgate::plugin::types;
use crate::engine::Engine;
use crate::exchange::{Edit, Input, MAX_INPUTS, RequestView, ResponseView};
use crate::imports::{Exchange, HostState, Tags, header_edits};
use crate::instances::{Checkout, Instance, Instances, Recipe};
use crate::invoke::{self, CallError, Hook, RequestVerdict, ResponseVerdict, Verdict};
use wasmgate_state::SharedState;

/// How a plugin call went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The plugin returned `plugin-error`, or returned something invalid.
    Error,
    /// The plugin trapped (a Rust panic is a trap).
    Trap,
    /// The call exceeded the entry's `timeout`.
    Timeout,
    /// The instance hit the entry's `memory` limit.
    OutOfMemory,
    /// No instance could be had (all busy, the pooling allocator full, or a fresh instance
    /// failed to `init`).
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

/// Counts of failed calls, by kind.
#[derive(Debug, Default)]
pub struct FailureCounts {
    counts: [AtomicU64; 5],
}

impl FailureCounts {
    /// The count for `kind`.
    pub fn get(&self, kind: FailureKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }
}

/// The hooks an entry asked for in `describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hooks {
    pub(crate) request: bool,
    pub(crate) response: bool,
}

/// What an entry described at bind time, checked.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub(crate) hooks: Hooks,
    pub(crate) needs_body: bool,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) request_inputs: Vec<Input>,
    pub(crate) response_inputs: Vec<Input>,
    pub(crate) fixed_request: Vec<Edit>,
    pub(crate) fixed_response: Vec<Edit>,
}

/// Why a plugin entry could not be bound.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    /// The plugin's `init` refused the entry's config; its own message.
    #[error("refused its config: {0}")]
    Config(String),
    /// No instance could be made or set up, or `describe` said something invalid.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

/// A fresh instance's `init` needs more than a hook: it may parse a large config.
const INIT_TIMEOUT: Duration = Duration::from_secs(2);

/// One plugin entry of one route, ready to serve calls.
pub struct Binding {
    pub(crate) tags: Arc<Tags>,
    recipe: Recipe,
    config_json: String,
    timeout_ticks: u64,
    pub(crate) on_error: OnError,
    pub(crate) described: Described,
    instances: Instances,
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

impl Binding {
    /// Binds `entry` on `route`: makes the first instance and runs its `init` and `describe`.
    /// The error is the plugin's own message (config refused) or the instantiation failure.
    pub(crate) async fn new(
        engine: Arc<Engine>,
        pre: PluginPre<HostState>,
        shared: Arc<SharedState>,
        route: &str,
        entry: &PluginEntry,
        workers: usize,
        metrics: PluginMetrics,
    ) -> Result<Self, BindError> {
        let tags = Arc::new(Tags {
            route: route.into(),
            plugin: entry.name.as_str().into(),
            metrics,
            counter_refused: AtomicBool::new(false),
        });
        let instances = Instances::new(
            workers,
            entry
                .max_instances
                .unwrap_or(crate::DEFAULT_INSTANCES_PER_WORKER * workers),
            entry.isolation == Isolation::Pooled,
        );
        let mut binding = Self {
            tags: tags.clone(),
            recipe: Recipe {
                engine,
                pre,
                tags,
                shared,
                memory: entry.memory,
            },
            config_json: entry.config.to_string(),
            timeout_ticks: invoke::ticks(entry.timeout),
            on_error: entry.on_error,
            described: Described {
                hooks: Hooks {
                    request: false,
                    response: false,
                },
                needs_body: false,
                name: String::new(),
                version: String::new(),
                request_inputs: Vec::new(),
                response_inputs: Vec::new(),
                fixed_request: Vec::new(),
                fixed_response: Vec::new(),
            },
            instances,
            failures: FailureCounts::default(),
        };
        let permit = binding
            .instances
            .try_slot(0)
            .ok_or_else(|| BindError::Instantiate("no instance slot".into()))?;
        let mut first = binding.instantiate(permit).await.map_err(|f| match f {
            Init::Refused(message) => BindError::Config(message),
            Init::Failed(detail) => BindError::Instantiate(detail),
        })?;
        invoke::prepare(
            &mut first,
            Exchange::default(),
            &HeaderValue::from_static("-"),
            invoke::ticks(INIT_TIMEOUT),
        );
        let in_flight = binding.recipe.engine.enter(0);
        let info: PluginInfo = first
            .plugin
            .wasmgate_plugin_lifecycle()
            .call_describe(&mut first.store)
            .await
            .map_err(|e| BindError::Instantiate(format!("describe failed: {e:#}")))?;
        drop(in_flight);
        binding.described = described(info).map_err(BindError::Instantiate)?;
        first.store.data_mut().body_allowed = binding.described.needs_body;
        binding.instances.checkin(0, first);
        Ok(binding)
    }

    /// A new instance with `init` done.
    async fn instantiate(&self, permit: OwnedSemaphorePermit) -> Result<Instance, Init> {
        let in_flight = self.recipe.engine.enter(0);
        let instance = self
            .recipe
            .instantiate(permit, invoke::ticks(INIT_TIMEOUT))
            .await;
        drop(in_flight);
        let mut instance =
            instance.map_err(|e| Init::Failed(format!("instantiation failed: {e:#}")))?;
        instance.store.data_mut().body_allowed = self.described.needs_body;
        invoke::prepare(
            &mut instance,
            Exchange::default(),
            &HeaderValue::from_static("-"),
            invoke::ticks(INIT_TIMEOUT),
        );
        let in_flight = self.recipe.engine.enter(0);
        let init = instance
            .plugin
            .wasmgate_plugin_lifecycle()
            .call_init(&mut instance.store, &self.config_json)
            .await;
        drop(in_flight);
        match init {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(e)) => Err(Init::Refused(e.message)),
            Err(e) => {
                let kind = invoke::classify(&e, &instance.store.data().limits);
                Err(Init::Failed(format!("init {}: {e:#}", kind.as_str())))
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

    fn count(&self, kind: FailureKind) {
        self.failures.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        // FailureKind's order is FAILURE_KINDS' order.
        self.tags.metrics.failed(kind as usize);
    }

    /// Instances waiting in the pools.
    pub fn pooled(&self) -> usize {
        self.instances.idle()
    }

    /// The plugin's own name and version, as it described itself.
    pub fn described_as(&self) -> (&str, &str) {
        (&self.described.name, &self.described.version)
    }

    /// Records the duration of one call of a phase.
    pub(crate) fn observe(&self, response: bool, elapsed: Duration) {
        self.tags.metrics.observe(response, elapsed);
    }

    /// Runs `on-request` on an instance of `worker`. The view and context come back whatever
    /// happened.
    pub(crate) async fn on_request(
        &self,
        view: RequestView,
        ctx: Context,
        inputs: Vec<Option<String>>,
        request_id: &HeaderValue,
        worker: usize,
    ) -> (RequestView, Context, Result<RequestVerdict, Failure>) {
        let exchange = Exchange {
            request: Some(view),
            context: ctx,
            ..Exchange::default()
        };
        let (exchange, verdict) = self
            .call(Hook::Request(inputs), exchange, request_id, worker)
            .await;
        let view = exchange.request.unwrap_or_else(unreachable_view);
        let verdict = verdict.and_then(|v| match v {
            Verdict::Request(v) => Ok(v),
            Verdict::Response(_) => Err(self.failure(FailureKind::Error, "wrong verdict".into())),
        });
        (view, exchange.context, verdict)
    }

    /// Runs `on-response` on an instance of `worker`. The view and context come back whatever
    /// happened.
    pub(crate) async fn on_response(
        &self,
        view: ResponseView,
        ctx: Context,
        inputs: Vec<Option<String>>,
        request_id: &HeaderValue,
        worker: usize,
    ) -> (ResponseView, Context, Result<ResponseVerdict, Failure>) {
        let exchange = Exchange {
            response: Some(view),
            context: ctx,
            ..Exchange::default()
        };
        let (exchange, verdict) = self
            .call(Hook::Response(inputs), exchange, request_id, worker)
            .await;
        let view = exchange.response.unwrap_or_else(|| ResponseView {
            parts: http::Response::new(()).into_parts().0,
            body: None,
            body_replaced: false,
        });
        let verdict = verdict.and_then(|v| match v {
            Verdict::Response(v) => Ok(v),
            Verdict::Request(_) => Err(self.failure(FailureKind::Error, "wrong verdict".into())),
        });
        (view, exchange.context, verdict)
    }

    /// One hook call on a checked-out instance of `worker`: the exchange is moved into the
    /// store for the call and out after it, whatever happened. An instance whose call trapped,
    /// timed out or ran out of memory is dropped, never reused.
    async fn call(
        &self,
        hook: Hook,
        exchange: Exchange,
        request_id: &HeaderValue,
        worker: usize,
    ) -> (Exchange, Result<Verdict, Failure>) {
        let checked_out = self
            .instances
            .checkout(worker, |permit| async move {
                self.instantiate(permit).await.map_err(|e| match e {
                    Init::Refused(m) | Init::Failed(m) => wasmtime::Error::msg(m),
                })
            })
            .await;
        let mut instance = match checked_out {
            Ok(instance) => instance,
            Err(e) => {
                let detail = match e {
                    Checkout::Busy => format!(
                        "every instance on this worker stayed busy for {:?}",
                        crate::instances::CHECKOUT_WAIT
                    ),
                    Checkout::Failed(e) => format!("{e:#}"),
                };
                self.count(FailureKind::Unavailable);
                return (
                    exchange,
                    Err(self.failure(FailureKind::Unavailable, detail)),
                );
            }
        };
        invoke::prepare(&mut instance, exchange, request_id, self.timeout_ticks);
        let in_flight = self.recipe.engine.enter(worker);
        let (exchange, result) = invoke::call(&mut instance, hook).await;
        drop(in_flight);
        match result {
            Ok(verdict) => {
                self.instances.checkin(worker, instance);
                (exchange, Ok(verdict))
            }
            Err(CallError::Plugin(detail)) => {
                self.instances.checkin(worker, instance);
                self.count(FailureKind::Error);
                (exchange, Err(self.failure(FailureKind::Error, detail)))
            }
            Err(CallError::Instance(kind, detail)) => {
                // Dropped, never reused: its memory may be in any state.
                drop(instance);
                self.count(kind);
                (exchange, Err(self.failure(kind, detail)))
            }
        }
    }
}

/// How making a new instance went wrong.
enum Init {
    /// `init` refused the config.
    Refused(String),
    /// Anything else.
    Failed(String),
}

/// `describe`'s answer, checked: declared inputs and fixed edits must be valid HTTP.
fn described(info: PluginInfo) -> Result<Described, String> {
    if info.request_inputs.len() > MAX_INPUTS || info.response_inputs.len() > MAX_INPUTS {
        return Err(format!(
            "describe declared more than {MAX_INPUTS} inputs for a hook"
        ));
    }
    let inputs = |list: Vec<types::Input>| -> Result<Vec<Input>, String> {
        list.into_iter()
            .map(|input| {
                Ok(match input {
                    types::Input::Header(name) => {
                        Input::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            format!("describe declared the invalid header {name:?}")
                        })?)
                    }
                    types::Input::Context(key) => Input::Context(key),
                    types::Input::Method => Input::Method,
                    types::Input::PathWithQuery => Input::PathWithQuery,
                    types::Input::Authority => Input::Authority,
                    types::Input::ClientAddress => Input::ClientAddress,
                    types::Input::Scheme => Input::Scheme,
                    types::Input::Status => Input::Status,
                })
            })
            .collect()
    };
    Ok(Described {
        hooks: Hooks {
            request: info.hooks.contains(WitHooks::ON_REQUEST),
            response: info.hooks.contains(WitHooks::ON_RESPONSE),
        },
        needs_body: info.needs_body,
        name: info.name,
        version: info.version,
        request_inputs: inputs(info.request_inputs)?,
        response_inputs: inputs(info.response_inputs)?,
        fixed_request: header_edits(info.fixed_request_edits)
            .map_err(|e| format!("describe declared an invalid fixed edit: {e}"))?,
        fixed_response: header_edits(info.fixed_response_edits)
            .map_err(|e| format!("describe declared an invalid fixed edit: {e}"))?,
    })
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
