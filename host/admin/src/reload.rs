//! Reloading from the config file: on `POST /reload`, on SIGHUP, and when the file or a plugin
//! changes on disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use wasmgate_config::Config;
use wasmgate_proxy::{Control, Reloaded};

/// How long the files must be quiet before a change reloads: editors and `cp` write in several
/// steps, and a half-written file must not be loaded.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Reloads one gateway from one config file.
#[derive(Debug, Clone)]
pub struct Reloader {
    path: PathBuf,
    control: Control,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ReloadError {
    /// Every problem, as `FILE:LINE:COL: KEY: MESSAGE` where it has a place in the file.
    pub problems: Vec<String>,
}

impl Reloader {
    /// A reloader of `control`'s gateway from the file at `path`.
    pub fn new(path: PathBuf, control: Control) -> Self {
        Self { path, control }
    }

    /// The gateway it reloads.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Reads, validates and loads the file, then swaps it in; on any problem, logs every one and
    /// keeps serving the old configuration. `cause` names the trigger in the log.
    pub async fn reload(&self, cause: &str) -> Result<Reloaded, ReloadError> {
        tracing::info!(cause, config = %self.path.display(), "reloading");
        let result =
            match wasmgate_config::load(&self.path) {
                Ok(config) => self.control.reload(config).await.map_err(|problems| {
                    problems.iter().map(ToString::to_string).collect::<Vec<_>>()
                }),
                Err(e) => {
                    // Counted like any failed reload, though nothing reached the gateway.
                    self.control.metrics().reload(false);
                    Err(e.diagnostics().iter().map(ToString::to_string).collect())
                }
            };
        match result {
            Ok(reloaded) => {
                tracing::info!(
                    cause,
                    routes = reloaded.routes,
                    plugins = reloaded.plugins,
                    "reloaded"
                );
                if !reloaded.restart_needed.is_empty() {
                    tracing::warn!(
                        settings = reloaded.restart_needed.join(", "),
                        "these settings changed but apply only after a restart"
                    );
                }
                Ok(reloaded)
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!(cause, "{p}");
                }
                tracing::error!(
                    cause,
                    problems = problems.len(),
                    "reload failed; still serving the previous configuration"
                );
                Err(ReloadError { problems })
            }
        }
    }
}

/// Watches the config file and the plugin files a configuration uses; dropping it stops.
pub struct Watcher {
    debouncer: Mutex<Debouncer<notify::RecommendedWatcher>>,
    watched: Mutex<BTreeSet<PathBuf>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts watching for `reloader`: the folder of its config file, `plugins_dir`, and the
    /// folder of every plugin given by `path`. A change to the config file or to a `.wasm` file
    /// there reloads. Must be called inside a tokio runtime.
    pub fn start(reloader: Reloader) -> notify::Result<Arc<Self>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let config_dir = canonical(config_folder(&reloader.path));
        let config_name = reloader.path.file_name().map(ToOwned::to_owned);
        let debouncer = new_debouncer(DEBOUNCE, move |events: DebounceEventResult| {
            let Ok(events) = events else { return };
            let relevant = events.iter().any(|e| {
                e.path.extension().is_some_and(|x| x == "wasm")
                    || (e.path.file_name().map(ToOwned::to_owned) == config_name
                        && e.path.parent().map(canonical).as_ref() == Some(&config_dir))
            });
            if relevant {
                let _ = tx.send(());
            }
        })?;
        let watcher = Arc::new(Self {
            debouncer: Mutex::new(debouncer),
            watched: Mutex::new(BTreeSet::new()),
        });
        watcher.refresh(&reloader);
        let weak = Arc::downgrade(&watcher);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Changes that arrive during a reload collapse into one more reload.
                while rx.try_recv().is_ok() {}
                let result = reloader.reload("file changed").await;
                let Some(watcher) = weak.upgrade() else { break };
                if result.is_ok() {
                    watcher.refresh(&reloader);
                }
            }
        });
        Ok(watcher)
    }

    /// Watches the folders the served configuration needs, and no others.
    fn refresh(&self, reloader: &Reloader) {
        let wanted = reloader
            .control
            .inspect(|active| folders(&reloader.path, active.config));
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let mut debouncer = self.debouncer.lock().unwrap_or_else(|e| e.into_inner());
        for gone in watched.difference(&wanted) {
            let _ = debouncer.watcher().unwatch(gone);
        }
        for dir in wanted.difference(&watched) {
            match debouncer.watcher().watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => tracing::debug!(dir = %dir.display(), "watching for changes"),
                // A plugins folder may not exist yet; the config file's folder always does.
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
            }
        }
        *watched = wanted;
    }
}

fn config_folder(config_file: &Path) -> &Path {
    config_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The config file's folder, `plugins_dir`, and every plugin file's folder.
fn folders(config_file: &Path, config: &Config) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    dirs.insert(canonical(config_folder(config_file)));
    if config.gateway.plugins_dir.is_dir() {
        dirs.insert(canonical(&config.gateway.plugins_dir));
    }
    for route in &config.routes {
        for entry in &route.plugins {
            if let Some(dir) = entry.file.parent().filter(|d| d.is_dir()) {
                dirs.insert(canonical(dir));
            }
        }
    }
    dirs
}
