//! Wasmgate's plugin runtime: WebAssembly components (world `wasmgate:plugin/plugin`, see `wit/`)
//! loaded once, bound per route entry with their config, and called under limits.
//!
//! Three lifetimes:
//! * **Load**: each `.wasm` is compiled once per content (compiled code is cached on disk by
//!   wasmtime, keyed by a hash of the bytes and the engine settings) and linked once into a
//!   pre-instantiated `PluginPre`.
//! * **Bind**: each `[[routes.plugins]]` entry gets its own instances, each `init`ed once with the
//!   entry's config; a config the plugin refuses refuses the gateway configuration.
//! * **Call**: each request runs the route's [`Chain`] under the entry's `memory` and `timeout`.
//!
//! The sandbox: WASI 0.2 with no files, environment, arguments or sockets; guest stdout/stderr go
//! to the log. A trap (a Rust panic is one), a timeout or hitting the memory limit drops the
//! instance; the request gets a 5xx from the proxy and nothing of the guest's text.

mod bindings;
mod chain;
mod engine;
mod host;
mod pool;
mod shared;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmgate_config::{Config, Diagnostic, Location, PluginEntry};
use wasmtime::component::Component;

pub use chain::{Chain, RequestOutcome};
pub use engine::{Engine, EngineSettings};
pub use host::{Context, RequestView, ResponseView};
pub use pool::{Binding, Failure, FailureCounts, FailureKind};
pub use shared::{Counter, MemoryState, SharedState};

use bindings::PluginPre;
use host::HostState;

/// A compiled, linked plugin file.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// The file it came from.
    pub file: PathBuf,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    pre: PluginPre<HostState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("file", &self.file)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Every route's chain for one configuration, plus the engine they run on.
#[derive(Debug)]
pub struct Runtime {
    engine: Arc<Engine>,
    /// Chains by route index; `None` for routes without plugins.
    chains: Vec<Option<Arc<Chain>>>,
    /// Loaded plugin files by path.
    pub plugins: Vec<LoadedPlugin>,
}

impl Runtime {
    /// Loads every plugin the configuration references and binds every entry (running `init`).
    /// Every problem is reported, each located at its `[[routes.plugins]]` entry and naming the
    /// route, the plugin and the cause (the plugin's own message for a refused config).
    pub async fn load(
        config: &Config,
        shared: Arc<dyn SharedState>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let entries: Vec<(usize, usize, &PluginEntry)> = config
            .routes
            .iter()
            .enumerate()
            .flat_map(|(r, route)| {
                route
                    .plugins
                    .iter()
                    .enumerate()
                    .map(move |(p, e)| (r, p, e))
            })
            .collect();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let bindings_count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let settings = EngineSettings {
            cache_dir: config.gateway.plugin_cache_dir.clone(),
            max_memory: entries
                .iter()
                .map(|(_, _, e)| e.memory)
                .max()
                .unwrap_or(16 << 20),
            // Every binding's live instances, twice: a reload briefly holds two generations.
            instance_slots: bindings_count
                .saturating_mul(u32::try_from(pool::MAX_INSTANCES * 2).unwrap_or(16))
                .saturating_add(16)
                .min(10_000),
        };
        let diagnostic = |entry: &PluginEntry, key: String, message: String| Diagnostic {
            file: config.file.clone(),
            location: entry.location,
            key,
            message,
        };
        let engine = match Engine::new(&settings) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                return Err(vec![Diagnostic {
                    file: config.file.clone(),
                    location: Location::default(),
                    key: String::new(),
                    message: format!("cannot start the plugin engine: {e:#}"),
                }]);
            }
        };
        let mut problems = Vec::new();
        let mut loaded: HashMap<PathBuf, Result<LoadedPlugin, String>> = HashMap::new();
        for (_, _, entry) in &entries {
            if !loaded.contains_key(&entry.file) {
                let result = load_file(&engine, &entry.file);
                loaded.insert(entry.file.clone(), result);
            }
        }
        let mut chains: Vec<Vec<Arc<Binding>>> = vec![Vec::new(); config.routes.len()];
        let shared_state = shared;
        for (r, p, entry) in &entries {
            let route = &config.routes[*r];
            let key = format!("routes[{r}].plugins[{p}]");
            let plugin = match &loaded[&entry.file] {
                Ok(plugin) => plugin,
                Err(e) => {
                    let message = format!("route {:?}: plugin {:?}: {e}", route.name, entry.name);
                    problems.push(diagnostic(entry, key, message));
                    continue;
                }
            };
            match Binding::new(
                engine.clone(),
                plugin.pre.clone(),
                shared_state.clone(),
                &route.name,
                entry,
                workers,
            )
            .await
            {
                Ok(b) => chains[*r].push(Arc::new(b)),
                Err(e) => {
                    let key = match e {
                        pool::BindError::Config(_) => format!("{key}.config"),
                        pool::BindError::Instantiate(_) => key,
                    };
                    let message = format!("route {:?}: plugin {:?} {e}", route.name, entry.name);
                    problems.push(diagnostic(entry, key, message));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut plugins: Vec<LoadedPlugin> = loaded.into_values().filter_map(Result::ok).collect();
        plugins.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(Self {
            engine,
            chains: chains
                .into_iter()
                .map(|c| (!c.is_empty()).then(|| Arc::new(Chain::new(c))))
                .collect(),
            plugins,
        })
    }

    /// The chain of route number `route`, if it has plugins.
    pub fn chain(&self, route: usize) -> Option<&Arc<Chain>> {
        self.chains.get(route).and_then(Option::as_ref)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

fn load_file(engine: &Engine, file: &Path) -> Result<LoadedPlugin, String> {
    let bytes = std::fs::read(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{} not found (build it with `cargo build --release --target wasm32-wasip2` and copy the .wasm there)",
            file.display()
        ),
        _ => format!("cannot read {}: {e}", file.display()),
    })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let component = Component::new(&engine.engine, &bytes).map_err(|e| {
        format!(
            "{} is not a valid WebAssembly component (build plugins for wasm32-wasip2): {e:#}",
            file.display()
        )
    })?;
    let instance_pre = engine.linker.instantiate_pre(&component).map_err(|e| {
        format!(
            "{} does not fit the wasmgate:plugin world (it imports something the gateway does not offer): {e:#}",
            file.display()
        )
    })?;
    let pre = PluginPre::new(instance_pre).map_err(|e| {
        format!(
            "{} is not a wasmgate plugin (it does not export wasmgate:plugin/lifecycle and http-filter): {e:#}",
            file.display()
        )
    })?;
    Ok(LoadedPlugin {
        file: file.to_path_buf(),
        sha256,
        pre,
    })
}
