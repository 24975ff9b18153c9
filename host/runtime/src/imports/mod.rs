//! What a plugin instance's store holds, and the functions it imports from the host: the request
//! and response resources (`messages`), and the context, log, metrics and shared state
//! (`services`). WASI is linked with no files, environment, arguments or sockets.

mod messages;
mod services;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use http::HeaderValue;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasmgate_telemetry::PluginMetrics;

use crate::exchange::{Context, RequestView, ResponseView};
use crate::guest_output::GuestOutput;
use wasmgate_state::SharedState;

pub(crate) use messages::edits as header_edits;
#[expect(
    unreachable_pub,
    reason = "bindgen re-exports resource types with `pub use`"
)]
pub use messages::{RequestHandle, ResponseHandle};

/// What one hook call works on, moved into the store for the call and out after it.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    pub(crate) request: Option<RequestView>,
    pub(crate) response: Option<ResponseView>,
    pub(crate) context: Context,
    pub(crate) request_id: Option<HeaderValue>,
    /// Why a shared-state call was refused (`on_unavailable = "deny"`): the hook's verdict
    /// becomes a 503 whatever it returns.
    pub(crate) state_refused: Option<String>,
}

/// Who a store belongs to, for logs and state namespacing.
#[derive(Debug)]
pub(crate) struct Tags {
    pub(crate) route: Arc<str>,
    pub(crate) plugin: Arc<str>,
    pub(crate) metrics: PluginMetrics,
    /// Whether a refused counter name was logged already (once per entry, not per call).
    pub(crate) counter_refused: AtomicBool,
}

/// Memory and table limits of one instance; remembers whether the memory limit was hit so a
/// trap that follows can be reported as out-of-memory.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) memory: usize,
    pub(crate) hit_memory_limit: bool,
}

impl wasmtime::ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit_memory_limit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The clock of one call, in epoch ticks: when it yields to the executor and when it is stopped.
///
/// Ticks are read from the engine's epoch count, not counted in the epoch callback: a call that
/// yielded may resume many ticks later (its worker busy with other requests), and those ticks
/// count towards its `timeout` too.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Ticks {
    /// The epoch count when the call started.
    pub(crate) start: u64,
    /// From this many ticks on, the call yields at every tick.
    pub(crate) yield_after: u64,
    /// At this many ticks the call is interrupted.
    pub(crate) limit: u64,
}

/// Everything a plugin instance's store holds.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: Limits,
    pub(crate) exchange: Exchange,
    pub(crate) ticks: Ticks,
    /// The engine's epoch count, shared with its ticker.
    pub(crate) epoch: Arc<AtomicU64>,
    pub(crate) tags: Arc<Tags>,
    pub(crate) shared: Arc<SharedState>,
    pub(crate) body_allowed: bool,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("tags", &self.tags)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub(crate) fn new(
        tags: Arc<Tags>,
        shared: Arc<SharedState>,
        memory: usize,
        epoch: Arc<AtomicU64>,
    ) -> Self {
        // No preopened directories, no environment, no arguments, no network: the guest sees an
        // empty machine. Its stdout and stderr go to the gateway's log.
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput {
                tags: tags.clone(),
                stream: "stdout",
            })
            .stderr(GuestOutput {
                tags: tags.clone(),
                stream: "stderr",
            })
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits: Limits {
                memory,
                hit_memory_limit: false,
            },
            exchange: Exchange::default(),
            ticks: Ticks::default(),
            epoch,
            tags,
            shared,
            body_allowed: false,
        }
    }

    fn request(&mut self) -> wasmtime::Result<&mut RequestView> {
        self.exchange
            .request
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("the request is not available in this hook"))
    }

    fn response(&mut self) -> wasmtime::Result<&mut ResponseView> {
        self.exchange
            .response
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("the response is not available in this hook"))
    }

    fn namespaced(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.tags.plugin.len() + 1 + key.len());
        k.push_str(&self.tags.plugin);
        k.push('\u{0}');
        k.push_str(key);
        k
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
