//! Reloading from the config file: on `POST /reload`, on SIGHUP, and when the file or a plugin
//! changes on disk.
//!
//! The watcher reacts only to writes, creations, removals and renames — never to a file being
//! opened or read (a reload reads the file itself, and `cat` or `wasmgate check` must not start
//! one) nor to metadata changes (`touch`). Even then it reloads only when the content changed:
//! each reload remembers a [`Fingerprint`] of the config file and of every plugin file it names,
//! and a change that leaves all of them byte for byte as they were is ignored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use wasmgate_config::Config;
use wasmgate_proxy::{Control, Reloaded};

/// How long the files must be quiet before a change reloads: editors and `cp` write in several
/// steps, and a half-written file must not be loaded.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// The content a configuration was loaded from: the config file and every plugin file it names
/// (a missing file counts as content too, so its appearance is a change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Reads the config file at `path` and the plugin files it names. A file that cannot be
    /// parsed fingerprints by its bytes alone: its plugins are not known.
    pub fn read(path: &Path) -> Self {
        let mut hash = Sha256::new();
        let text = match std::fs::read(path) {
            Ok(bytes) => {
                hash.update(b"config\0");
                hash.update(&bytes);
                String::from_utf8(bytes).ok()
            }
            Err(e) => {
                hash.update(format!("unreadable config: {:?}\0", e.kind()).as_bytes());
                None
            }
        };
        let config = text.and_then(|t| wasmgate_config::parse(path, &t).ok());
        let files: BTreeSet<&Path> = config
            .iter()
            .flat_map(|c| &c.routes)
            .flat_map(|r| &r.plugins)
            .map(|p| p.file.as_path())
            .collect();
        for file in files {
            hash.update(file.as_os_str().as_encoded_bytes());
            match std::fs::read(file) {
                Ok(bytes) => {
                    hash.update(b"\0plugin\0");
                    hash.update(Sha256::digest(&bytes));
                }
                Err(e) => hash.update(format!("\0missing: {:?}\0", e.kind()).as_bytes()),
            }
        }
        Self(hash.finalize().into())
    }
}

/// Reloads one gateway from one config file.
#[derive(Debug, Clone)]
pub struct Reloader {
    path: PathBuf,
    control: Control,
    /// The content of the last reload attempt (or of the start), successful or not: the same
    /// content is not loaded twice by the watcher, and a broken file fails once, not per event.
    last: Arc<Mutex<Fingerprint>>,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ReloadError {
    /// Every problem, as `FILE:LINE:COL: KEY: MESSAGE` where it has a place in the file.
    pub problems: Vec<String>,
}

impl Reloader {
    /// A reloader of `control`'s gateway from the file at `path`, whose configuration was loaded
    /// from the content `loaded` (read with [`Fingerprint::read`] before it was loaded).
    pub fn new(path: PathBuf, control: Control, loaded: Fingerprint) -> Self {
        Self {
            path,
            control,
            last: Arc::new(Mutex::new(loaded)),
        }
    }

    /// The gateway it reloads.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Reads, validates and loads the file, then swaps it in; on any problem, logs every one and
    /// keeps serving the old configuration. `cause` names the trigger in the log.
    pub async fn reload(&self, cause: &str) -> Result<Reloaded, ReloadError> {
        self.remember(Fingerprint::read(&self.path));
        self.load(cause).await
    }

    /// [`Reloader::reload`], unless the config file and its plugin files hold what the last
    /// reload (or the start) loaded; `None` then.
    pub async fn reload_if_changed(&self, cause: &str) -> Option<Result<Reloaded, ReloadError>> {
        let now = Fingerprint::read(&self.path);
        if !self.remember(now) {
            tracing::debug!(cause, config = %self.path.display(), "content unchanged; not reloading");
            return None;
        }
        Some(self.load(cause).await)
    }

    /// Records `fingerprint` as the last loaded content; whether it differs from the one before.
    fn remember(&self, fingerprint: Fingerprint) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *last != fingerprint;
        *last = fingerprint;
        changed
    }

    async fn load(&self, cause: &str) -> Result<Reloaded, ReloadError> {
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
    watcher: Mutex<RecommendedWatcher>,
    watched: Mutex<BTreeSet<PathBuf>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts watching for `reloader`: the folder of its config file, `plugins_dir`, and the
    /// folder of every plugin given by `path`. Writing the config file or a `.wasm` file there
    /// reloads, once the files have been quiet for 250 ms and only if their content changed.
    /// Must be called inside a tokio runtime.
    pub fn start(reloader: Reloader) -> notify::Result<Arc<Self>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let config_dir = canonical(config_folder(&reloader.path));
        let config_name = reloader.path.file_name().map(ToOwned::to_owned);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if !changes_content(event.kind) {
                return;
            }
            let relevant = event.paths.iter().any(|p| {
                p.extension().is_some_and(|x| x == "wasm")
                    || (p.file_name().map(ToOwned::to_owned) == config_name
                        && p.parent().map(canonical).as_ref() == Some(&config_dir))
            });
            if relevant {
                let _ = tx.send(());
            }
        })?;
        let watcher = Arc::new(Self {
            watcher: Mutex::new(watcher),
            watched: Mutex::new(BTreeSet::new()),
        });
        watcher.refresh(&reloader);
        let weak = Arc::downgrade(&watcher);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Debounce: wait until nothing has changed for DEBOUNCE; the changes of one save
                // (and any that arrive while a reload runs) make one check.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let result = reloader.reload_if_changed("file changed").await;
                let Some(watcher) = weak.upgrade() else { break };
                if matches!(result, Some(Ok(_))) {
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
        let mut watcher = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        for gone in watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for dir in wanted.difference(&watched) {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => tracing::debug!(dir = %dir.display(), "watching for changes"),
                // A plugins folder may not exist yet; the config file's folder always does.
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
            }
        }
        *watched = wanted;
    }
}

/// Whether an event can mean new content: writes, creations, removals and renames. Opening,
/// reading and closing a file unchanged are access events, and `touch` is a metadata change.
fn changes_content(kind: EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
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

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn reads_and_touches_are_not_changes() {
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ] {
            assert!(!changes_content(quiet), "{quiet:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(changes_content(change), "{change:?}");
        }
    }

    #[test]
    fn fingerprint_follows_the_config_and_the_plugins_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir(dir.join("plugins")).unwrap();
        let config = dir.join("gateway.toml");
        let text = "[[routes]]\nname = \"r\"\nrespond = { status = 200 }\n\
                    [[routes.plugins]]\nname = \"p\"\n";
        std::fs::write(&config, text).unwrap();
        let missing = Fingerprint::read(&config);
        assert_eq!(Fingerprint::read(&config), missing, "reading is stable");

        std::fs::write(dir.join("plugins/p.wasm"), b"one").unwrap();
        let one = Fingerprint::read(&config);
        assert_ne!(one, missing, "a plugin file appearing is a change");
        std::fs::write(dir.join("plugins/other.wasm"), b"x").unwrap();
        assert_eq!(
            Fingerprint::read(&config),
            one,
            "a plugin the config does not name is not"
        );
        std::fs::write(dir.join("plugins/p.wasm"), b"two").unwrap();
        assert_ne!(
            Fingerprint::read(&config),
            one,
            "a plugin's new bytes are a change"
        );

        std::fs::write(&config, format!("{text}\n# a comment\n")).unwrap();
        let commented = Fingerprint::read(&config);
        std::fs::write(&config, "not [ toml").unwrap();
        let broken = Fingerprint::read(&config);
        assert_ne!(broken, commented);
        assert_eq!(
            Fingerprint::read(&config),
            broken,
            "a broken file is stable too"
        );
    }
}
