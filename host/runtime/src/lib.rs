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

mod answer;
mod binding;
mod bindings;
mod chain;
mod engine;
mod exchange;
mod guest_output;
mod imports;
mod instances;
mod invoke;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmgate_config::{Config, Diagnostic, PluginEntry};
use wasmgate_telemetry::Metrics;
use wasmtime::component::Component;

pub use answer::PluginRejection;
pub use binding::{Binding, Failure, FailureCounts, FailureKind};
pub use chain::{Chain, RequestOutcome, ResponseOutcome};
pub use engine::{Engine, EngineError, EngineSettings};
pub use exchange::{Context, HookCall, RequestView, ResponseView};
pub use wasmgate_state::{Health as StateHealth, SharedState};

use bindings::PluginPre;
use imports::HostState;

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

/// One `[[routes.plugins]]` entry as loaded, for the admin API.
#[derive(Debug)]
pub struct BoundPlugin {
    /// The route's name.
    pub route: String,
    /// The entry's plugin name.
    pub plugin: String,
    /// The file and its hash.
    pub file: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The binding: pooled instances, failures.
    pub binding: Arc<Binding>,
}

/// Every route's chain for one configuration, plus the engine they run on.
#[derive(Debug)]
pub struct Runtime {
    engine: Arc<Engine>,
    /// Chains by route index; `None` for routes without plugins.
    chains: Vec<Option<Arc<Chain>>>,
    /// Loaded plugin files by path.
    pub plugins: Vec<LoadedPlugin>,
    /// Every plugin entry, in config order.
    pub bound: Vec<BoundPlugin>,
}

/// Loads the plugins of successive configurations of one gateway, keeping what a reload can
/// reuse: the engine (while its limits still fit), components compiled from unchanged files, the
/// shared state (so rate limits survive a reload) and the metrics.
pub struct Loader {
    shared: Arc<SharedState>,
    metrics: Arc<Metrics>,
    cached: Mutex<Option<Cached>>,
}

/// The engine of the last load and the plugins compiled on it, by content hash.
struct Cached {
    settings: EngineSettings,
    engine: Arc<Engine>,
    compiled: HashMap<String, LoadedPlugin>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader").finish_non_exhaustive()
    }
}

impl Loader {
    /// A loader whose plugins share `shared` and report to `metrics`.
    pub fn new(shared: Arc<SharedState>, metrics: Arc<Metrics>) -> Self {
        Self {
            shared,
            metrics,
            cached: Mutex::new(None),
        }
    }

    /// Loads every plugin the configuration references and binds every entry (running `init`).
    /// Every problem is reported, each located at its `[[routes.plugins]]` entry and naming the
    /// route, the plugin and the cause (the plugin's own message for a refused config).
    pub async fn load(&self, config: &Config) -> Result<Runtime, Vec<Diagnostic>> {
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
        let workers = config.gateway.workers;
        let max_instances = |e: &PluginEntry| {
            e.max_instances
                .unwrap_or(DEFAULT_INSTANCES_PER_WORKER * workers)
        };
        let live: usize = entries.iter().map(|(_, _, e)| max_instances(e)).sum();
        let settings = EngineSettings {
            cache_dir: config.gateway.plugin_cache_dir.clone(),
            max_memory: entries
                .iter()
                .map(|(_, _, e)| e.memory)
                .max()
                .unwrap_or(16 << 20),
            // Every binding's live instances, twice: a reload briefly holds two generations.
            instance_slots: u32::try_from(live.saturating_mul(2))
                .unwrap_or(u32::MAX)
                .saturating_add(16)
                .min(10_000),
            workers,
        };
        let diagnostic = |entry: &PluginEntry, key: String, message: String| Diagnostic {
            file: config.file.clone(),
            location: Some(entry.location),
            key,
            message,
        };
        let (engine, mut compiled) = match self.engine_for(config, &settings) {
            Ok(found) => found,
            Err(e @ EngineError::Cache { .. }) => {
                return Err(vec![
                    config.diagnostic("gateway.plugin_cache_dir", e.to_string()),
                ]);
            }
            // Sized from every plugin entry's `memory` and count: no single key to point at.
            Err(e @ EngineError::Start(_)) => {
                return Err(vec![config.diagnostic("routes", e.to_string())]);
            }
        };
        let mut problems = Vec::new();
        let mut loaded: HashMap<PathBuf, Result<LoadedPlugin, String>> = HashMap::new();
        for (_, _, entry) in &entries {
            if !loaded.contains_key(&entry.file) {
                let result = load_file(&engine, &entry.file, &compiled);
                loaded.insert(entry.file.clone(), result);
            }
        }
        let mut chains: Vec<Vec<Arc<Binding>>> = vec![Vec::new(); config.routes.len()];
        let mut bound = Vec::new();
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
                self.shared.clone(),
                &route.name,
                entry,
                workers,
                self.metrics.plugin(&route.name, &entry.name),
            )
            .await
            {
                Ok(b) => {
                    let b = Arc::new(b);
                    chains[*r].push(b.clone());
                    bound.push(BoundPlugin {
                        route: route.name.clone(),
                        plugin: entry.name.clone(),
                        file: plugin.file.clone(),
                        sha256: plugin.sha256.clone(),
                        binding: b,
                    });
                }
                Err(e) => {
                    let key = match e {
                        binding::BindError::Config(_) => format!("{key}.config"),
                        binding::BindError::Instantiate(_) => key,
                    };
                    let message = format!("route {:?}: plugin {:?} {e}", route.name, entry.name);
                    problems.push(diagnostic(entry, key, message));
                }
            }
        }
        // Only what this configuration uses stays compiled for the next one.
        compiled.clear();
        for plugin in loaded.values().flatten() {
            compiled.insert(plugin.sha256.clone(), plugin.clone());
        }
        self.keep(settings, engine.clone(), compiled);
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut plugins: Vec<LoadedPlugin> = loaded.into_values().filter_map(Result::ok).collect();
        plugins.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(Runtime {
            engine,
            chains: chains
                .into_iter()
                .map(|c| (!c.is_empty()).then(|| Arc::new(Chain::new(c))))
                .collect(),
            plugins,
            bound,
        })
    }

    /// The last load's engine and compiled plugins when `settings` fit in its limits, otherwise
    /// a new engine (a bigger pool or memory limit cannot be changed in place).
    ///
    /// A compile cache the file does not set (the default folder) that cannot be used is logged
    /// and done without; one the file sets is an error.
    fn engine_for(
        &self,
        config: &Config,
        settings: &EngineSettings,
    ) -> Result<(Arc<Engine>, HashMap<String, LoadedPlugin>), EngineError> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = cached
            && c.settings.cache_dir == settings.cache_dir
            && c.settings.max_memory >= settings.max_memory
            && c.settings.instance_slots >= settings.instance_slots
        {
            return Ok((c.engine, c.compiled));
        }
        let engine = match Engine::new(settings) {
            Err(e @ EngineError::Cache { .. })
                if config.location_of("gateway.plugin_cache_dir").is_none() =>
            {
                tracing::warn!(
                    error = %e,
                    "compiling plugins without a cache (set gateway.plugin_cache_dir to a writable folder, or \"\" to turn the cache off)"
                );
                let uncached = EngineSettings {
                    cache_dir: None,
                    ..settings.clone()
                };
                Engine::new(&uncached)?
            }
            built => built?,
        };
        Ok((Arc::new(engine), HashMap::new()))
    }

    fn keep(
        &self,
        settings: EngineSettings,
        engine: Arc<Engine>,
        compiled: HashMap<String, LoadedPlugin>,
    ) {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let settings = match cached.take() {
            // A reused engine keeps the limits it was built with.
            Some(old) if Arc::ptr_eq(&old.engine, &engine) => old.settings,
            _ => settings,
        };
        *cached = Some(Cached {
            settings,
            engine,
            compiled,
        });
    }
}

impl Runtime {
    /// Loads a configuration's plugins with a loader of its own (fresh shared state, metrics
    /// registered nowhere): for `wasmgate check`, tools and benchmarks.
    pub async fn load(config: &Config, shared: Arc<SharedState>) -> Result<Self, Vec<Diagnostic>> {
        Loader::new(shared, Arc::new(Metrics::new()))
            .load(config)
            .await
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

fn load_file(
    engine: &Engine,
    file: &Path,
    compiled: &HashMap<String, LoadedPlugin>,
) -> Result<LoadedPlugin, String> {
    let bytes = std::fs::read(file).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{} not found (build it with `cargo build --release --target wasm32-wasip2` and copy the .wasm there)",
            file.display()
        ),
        _ => format!("cannot read {}: {e}", file.display()),
    })?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if let Some(known) = compiled.get(&sha256) {
        return Ok(LoadedPlugin {
            file: file.to_path_buf(),
            ..known.clone()
        });
    }
    let component = Component::new(&engine.engine, &bytes).map_err(|e| {
        format!(
            "{} is not a valid WebAssembly component (build plugins for wasm32-wasip2): {e:#}",
            file.display()
        )
    })?;
    abi_version(engine, &component).map_err(|built_for| {
        format!(
            "{} was built for the plugin ABI wasmgate:plugin@{built_for}, and this gateway runs \
             @{ABI_VERSION}: rebuild it against wasmgate-sdk {ABI_SERIES} (update the \
             wasmgate-sdk dependency, then `cargo build --release --target wasm32-wasip2`)",
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

/// The plugin ABI this gateway offers: the version of the WIT package `wasmgate:plugin` in `wit/`.
pub const ABI_VERSION: &str = "0.2.0";

/// The versions it accepts plugins built for (additions within a minor series keep working).
const ABI_SERIES: &str = "0.2";

/// Checks the `wasmgate:plugin` version a component imports and exports; the version it was
/// built for when that is another series, so the error can say so instead of naming the first
/// import that no longer fits.
fn abi_version(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let names = ty
        .imports(&engine.engine)
        .map(|(name, _)| name)
        .chain(ty.exports(&engine.engine).map(|(name, _)| name));
    for name in names {
        if let Some(version) = name
            .strip_prefix("wasmgate:plugin/")
            .and_then(|rest| rest.split_once('@'))
            .map(|(_, version)| version)
            && !version.starts_with(&format!("{ABI_SERIES}."))
        {
            return Err(version.to_owned());
        }
    }
    Ok(())
}

/// `max_instances` of a plugin entry that does not set it, per worker.
pub const DEFAULT_INSTANCES_PER_WORKER: usize = 4;
