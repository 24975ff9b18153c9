//! One hook call on one instance: the exchange moved into the store, the clock of the call set in
//! epoch ticks, the export called, the exchange moved back out, and what the plugin returned
//! checked and turned into a [`Decision`], or how the call failed.

use http::HeaderValue;
use wasmtime::Trap;
use wasmtime::component::Resource;

use crate::bindings::wasmgate::plugin::types;
use crate::exchange::{Edit, ResponseView};
use crate::imports::{Exchange, Ticks, header_edits};
use crate::instances::Instance;
use crate::{FailureKind, PluginRejection};

/// A call that runs longer than this many ticks yields to the executor at every tick, so one
/// slow hook (a bcrypt check, an RSA signature) does not hold the worker thread for its whole
/// `timeout`. Two ticks: at least one full tick (1 ms) has passed. Shorter calls never yield.
const YIELD_AFTER_TICKS: u64 = 2;

/// What a hook decided.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Go on.
    Continue,
    /// Answer with this response.
    Respond(ResponseView),
    /// Refuse in the gateway's error format.
    Reject(PluginRejection),
}

/// What a request hook returned, checked.
#[derive(Debug)]
pub(crate) struct RequestVerdict {
    pub(crate) decision: Decision,
    pub(crate) request_edits: Vec<Edit>,
    pub(crate) response_edits: Vec<Edit>,
    pub(crate) context_writes: Vec<(String, Option<String>)>,
}

/// What a response hook returned, checked.
#[derive(Debug)]
pub(crate) struct ResponseVerdict {
    pub(crate) decision: Decision,
    pub(crate) response_edits: Vec<Edit>,
    pub(crate) context_writes: Vec<(String, Option<String>)>,
}

/// How a call went wrong: a plugin error (the instance is fine) or a trap, timeout or OOM (it
/// is not).
#[derive(Debug)]
pub(crate) enum CallError {
    /// The plugin returned `plugin-error`, or something it returned is invalid.
    Plugin(String),
    /// The instance trapped, ran out of time or memory.
    Instance(FailureKind, String),
}

/// Which hook to call, with its declared inputs' values.
pub(crate) enum Hook {
    Request(Vec<Option<String>>),
    Response(Vec<Option<String>>),
}

/// The verdict of either hook.
pub(crate) enum Verdict {
    Request(RequestVerdict),
    Response(ResponseVerdict),
}

/// Moves `exchange` into the instance's store, with `timeout_ticks` to run.
pub(crate) fn prepare(
    instance: &mut Instance,
    exchange: Exchange,
    request_id: &HeaderValue,
    timeout_ticks: u64,
) {
    let data = instance.store.data_mut();
    data.exchange = exchange;
    data.exchange.request_id = Some(request_id.clone());
    data.limits.hit_memory_limit = false;
    start_clock(&mut instance.store, timeout_ticks);
}

/// Starts the clock of the next call into `store`: `timeout_ticks` epoch ticks to run.
pub(crate) fn start_clock(
    store: &mut wasmtime::Store<crate::imports::HostState>,
    timeout_ticks: u64,
) {
    let data = store.data_mut();
    data.ticks = Ticks {
        start: data.epoch.load(std::sync::atomic::Ordering::Relaxed),
        yield_after: YIELD_AFTER_TICKS,
        limit: timeout_ticks.max(1),
    };
    store.set_epoch_deadline(1);
}

/// Calls `hook` on `instance`; the exchange comes back out of the store whatever happened.
pub(crate) async fn call(
    instance: &mut Instance,
    hook: Hook,
) -> (Exchange, Result<Verdict, CallError>) {
    let filter = instance.plugin.wasmgate_plugin_http_filter();
    let is_request = matches!(hook, Hook::Request(_));
    // The handles carry no data: the host serves the exchange in the store.
    let result = match hook {
        Hook::Request(inputs) => filter
            .call_on_request(&mut instance.store, Resource::new_borrow(0), &inputs)
            .await
            .map(|r| r.map(Returned::Request)),
        Hook::Response(inputs) => filter
            .call_on_response(&mut instance.store, Resource::new_borrow(0), &inputs)
            .await
            .map(|r| r.map(Returned::Response)),
    };
    let mut exchange = std::mem::take(&mut instance.store.data_mut().exchange);
    let refused = exchange.state_refused.take();
    let outcome = match result {
        // The shared state refused a call (`on_unavailable = "deny"`): whatever the plugin
        // decided on the neutral answer it got, the request is refused.
        Ok(_) if refused.is_some() => Ok(state_unavailable(is_request)),
        Ok(Ok(returned)) => returned.check().map_err(CallError::Plugin),
        Ok(Err(e)) => Err(CallError::Plugin(e.message)),
        Err(e) => {
            let kind = classify(&e, &instance.store.data().limits);
            Err(CallError::Instance(kind, format!("{e:#}")))
        }
    };
    (exchange, outcome)
}

/// The verdict of a hook whose shared-state call was refused: 503 `state_unavailable`.
fn state_unavailable(request: bool) -> Verdict {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    let decision = Decision::Reject(PluginRejection {
        status: http::StatusCode::SERVICE_UNAVAILABLE,
        error: "state_unavailable".to_owned(),
        message: "the gateway's shared state is unavailable; retry shortly".to_owned(),
        headers,
    });
    if request {
        Verdict::Request(RequestVerdict {
            decision,
            request_edits: Vec::new(),
            response_edits: Vec::new(),
            context_writes: Vec::new(),
        })
    } else {
        Verdict::Response(ResponseVerdict {
            decision,
            response_edits: Vec::new(),
            context_writes: Vec::new(),
        })
    }
}

enum Returned {
    Request(types::RequestVerdict),
    Response(types::ResponseVerdict),
}

impl Returned {
    /// The verdict, checked as HTTP: the first invalid edit or answer is the error.
    fn check(self) -> Result<Verdict, String> {
        let writes = |w: Vec<types::ContextWrite>| {
            w.into_iter().map(|w| (w.key, w.value)).collect::<Vec<_>>()
        };
        Ok(match self {
            Self::Request(v) => Verdict::Request(RequestVerdict {
                decision: decision(v.action)?,
                request_edits: header_edits(v.request_edits)?,
                response_edits: header_edits(v.response_edits)?,
                context_writes: writes(v.context_writes),
            }),
            Self::Response(v) => Verdict::Response(ResponseVerdict {
                decision: decision(v.action)?,
                response_edits: header_edits(v.response_edits)?,
                context_writes: writes(v.context_writes),
            }),
        })
    }
}

fn decision(action: types::Action) -> Result<Decision, String> {
    Ok(match action {
        types::Action::Continue => Decision::Continue,
        types::Action::Respond(spec) => Decision::Respond(crate::answer::reply(spec)?),
        types::Action::Reject(r) => Decision::Reject(crate::answer::rejection(r)?),
    })
}

/// A trap's kind: out of memory when the memory limit was hit before it, a timeout for an epoch
/// interrupt, else a trap.
pub(crate) fn classify(error: &wasmtime::Error, limits: &crate::imports::Limits) -> FailureKind {
    if limits.hit_memory_limit {
        return FailureKind::OutOfMemory;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureKind::Timeout,
        _ => FailureKind::Trap,
    }
}

/// `timeout` in epoch ticks, rounded up.
pub(crate) fn ticks(timeout: std::time::Duration) -> u64 {
    let tick = crate::engine::EPOCH_TICK.as_nanos();
    u64::try_from(timeout.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX)
}
