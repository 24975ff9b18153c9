//! Reloading from the config file: on `POST /reload`, on SIGHUP, and when the file, a plugin or a
//! certificate changes on disk.
//!
//! The watcher reacts only to writes, creations, removals and renames, never to a file being
//! opened or read (a reload reads the file itself, and `cat` or `wasmgate check` must not start
//! one). Even then it reloads only when the content changed: each reload remembers a
//! [`Fingerprint`] of the config file and of every plugin and certificate file it names, and a
//! save that leaves all of them byte for byte as they were (an editor's `:w`, `touch`, the same
//! deployment again) is counted in `wasmgate_config_file_checks_total{result="unchanged"}` and
//! changes nothing.
//!
//! Reloads run one at a time, from reading the file to swapping the new configuration in, so two
//! triggers at once can never leave the older file in effect.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use wasmgate_config::{Config, ConfigError};
use wasmgate_proxy::{Control, Reloaded};

/// How long the files must be quiet before a change reloads: editors and `cp` write in several
/// steps, and a half-written file must not be loaded.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// The content a configuration is loaded from: the config file and every plugin, certificate and
/// key file it names (a missing file counts as content too, so its appearance is a change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

/// The config file, read once: what it says and the fingerprint of exactly those bytes.
#[derive(Debug)]
pub struct ConfigFile {
    /// The configuration, or every problem with it.
    pub config: Result<Config, ConfigError>,
    /// The content it was read from.
    pub fingerprint: Fingerprint,
}

impl ConfigFile {
    /// Reads and validates the config file at `path`, and fingerprints what it read with the
    /// files the configuration names. Blocking: it reads every plugin file.
    pub fn read(path: &Path) -> Self {
        let mut hash = Sha256::new();
        let config = match std::fs::read(path) {
            Ok(bytes) => {
                hash.update(b"config\0");
                hash.update(&bytes);
                match String::from_utf8(bytes) {
                    Ok(text) => wasmgate_config::parse(path, &text),
                    // Through the same path as any other unreadable file, for one message.
                    Err(_) => wasmgate_config::load(path),
                }
            }
            Err(e) => {
                hash.update(format!("unreadable config: {:?}\0", e.kind()).as_bytes());
                wasmgate_config::load(path)
            }
        };
        if let Ok(config) = &config {
            for file in named_files(config) {
                hash.update(file.as_os_str().as_encoded_bytes());
                match std::fs::read(&file) {
                    Ok(bytes) => {
                        hash.update(b"\0file\0");
                        hash.update(Sha256::digest(&bytes));
                    }
                    Err(e) => hash.update(format!("\0missing: {:?}\0", e.kind()).as_bytes()),
                }
            }
        }
        Self {
            config,
            fingerprint: Fingerprint(hash.finalize().into()),
        }
    }
}

/// The plugin, certificate, key and CA files a configuration names.
fn named_files(config: &Config) -> BTreeSet<PathBuf> {
    let plugins = config
        .routes
        .iter()
        .flat_map(|r| &r.plugins)
        .map(|p| p.file.clone());
    let certificates = config
        .gateway
        .tls
        .iter()
        .flat_map(|t| &t.certificates)
        .flat_map(|c| [c.cert_path.clone(), c.key_path.clone()]);
    let client_ca = config
        .gateway
        .tls
        .iter()
        .filter_map(|t| t.client_auth.as_ref())
        .map(|a| a.ca.0.clone());
    let upstream_tls = config
        .upstreams
        .iter()
        .filter_map(|u| u.tls.as_ref())
        .flat_map(|t| {
            let ca = t.ca.iter().map(|(path, _)| path.clone());
            let client = t
                .client
                .iter()
                .flat_map(|c| [c.cert_path.clone(), c.key_path.clone()]);
            ca.chain(client).collect::<Vec<_>>()
        });
    plugins
        .chain(certificates)
        .chain(client_ca)
        .chain(upstream_tls)
        .collect()
}

/// Reloads one gateway from one config file.
#[derive(Debug, Clone)]
pub struct Reloader {
    path: PathBuf,
    control: Control,
    /// The content of the last reload attempt (or of the start), successful or not: the same
    /// content is not loaded twice by the watcher, and a broken file fails once, not per event.
    /// Held from reading the file to the swap: one reload at a time.
    last: Arc<tokio::sync::Mutex<Fingerprint>>,
    /// The watcher, if one runs: every successful reload (SIGHUP and POST /reload too) points it
    /// at the folders the new configuration names, before the reload returns.
    watcher: Arc<Mutex<Weak<Watcher>>>,
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
    /// from the content `loaded` (the fingerprint of the [`ConfigFile`] it was read from).
    pub fn new(path: PathBuf, control: Control, loaded: Fingerprint) -> Self {
        Self {
            path,
            control,
            last: Arc::new(tokio::sync::Mutex::new(loaded)),
            watcher: Arc::new(Mutex::new(Weak::new())),
        }
    }

    /// The gateway it reloads.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The config file it reloads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, validates and loads the file, then swaps it in; on any problem, logs every one and
    /// keeps serving the old configuration. `cause` names the trigger in the log.
    pub async fn reload(&self, cause: &str) -> Result<Reloaded, ReloadError> {
        let mut last = self.last.lock().await;
        let file = self.read().await;
        *last = file.fingerprint;
        self.load(cause, file.config).await
    }

    /// [`Reloader::reload`], unless the config file and the files it names hold what the last
    /// reload (or the start) loaded; `None` then.
    pub async fn reload_if_changed(&self, cause: &str) -> Option<Result<Reloaded, ReloadError>> {
        let mut last = self.last.lock().await;
        let file = self.read().await;
        let changed = file.fingerprint != *last;
        self.control.metrics().file_check(changed);
        if !changed {
            tracing::debug!(cause, config = %self.path.display(), "content unchanged; not reloading");
            return None;
        }
        *last = file.fingerprint;
        Some(self.load(cause, file.config).await)
    }

    /// Reads the file off the async threads, which also serve the admin API.
    async fn read(&self) -> ConfigFile {
        let path = self.path.clone();
        match tokio::task::spawn_blocking(move || ConfigFile::read(&path)).await {
            Ok(file) => file,
            // Only a panic while reading ends here; read again where we are.
            Err(_) => ConfigFile::read(&self.path),
        }
    }

    async fn load(
        &self,
        cause: &str,
        config: Result<Config, ConfigError>,
    ) -> Result<Reloaded, ReloadError> {
        tracing::info!(cause, config = %self.path.display(), "reloading");
        let result =
            match config {
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
                let watcher = self.watcher.lock().map(|w| w.upgrade());
                if let Ok(Some(watcher)) = watcher {
                    watcher.refresh(self);
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

/// Watches the config file and the files a configuration names; dropping it stops.
pub struct Watcher {
    watcher: Mutex<RecommendedWatcher>,
    watched: Mutex<BTreeSet<PathBuf>>,
    /// The files whose changes matter, by canonical folder and name.
    files: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts watching for `reloader`: the folder of its config file, `plugins_dir`, and the
    /// folders of every plugin, certificate and key file the configuration names. Writing one of
    /// those files (or any `.wasm` in those folders) reloads, once the files have been quiet for
    /// 250 ms and only if their content changed. Must be called inside a tokio runtime.
    pub fn start(reloader: Reloader) -> notify::Result<Arc<Self>> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let files = Arc::new(Mutex::new(BTreeSet::new()));
        let interesting = files.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if !changes_content(event.kind) {
                return;
            }
            let files = interesting.lock().unwrap_or_else(|e| e.into_inner());
            if event.paths.iter().any(|p| relevant(p, &files)) {
                let _ = tx.send(());
            }
        })?;
        let watcher = Arc::new(Self {
            watcher: Mutex::new(watcher),
            watched: Mutex::new(BTreeSet::new()),
            files,
        });
        watcher.refresh(&reloader);
        *reloader.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&watcher);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Debounce: wait until nothing has changed for DEBOUNCE; the changes of one save
                // (and any made while a reload runs) make one check.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                reloader.reload_if_changed("file changed").await;
            }
        });
        Ok(watcher)
    }

    /// Watches the folders the served configuration needs, and no others.
    fn refresh(&self, reloader: &Reloader) {
        let (dirs, files) = reloader
            .control
            .inspect(|active| interesting(&reloader.path, active.config));
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = files;
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        let mut watcher = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        for gone in watched.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        for dir in dirs.difference(&watched) {
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => tracing::debug!(dir = %dir.display(), "watching for changes"),
                // A plugins folder may not exist yet; the config file's folder always does.
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
            }
        }
        *watched = dirs;
    }
}

/// Whether an event can mean new content: writes, creations, removals and renames. Opening,
/// reading and closing a file unchanged are access events.
fn changes_content(kind: EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

/// Whether a change at `path` may change what a reload loads: one of the `files` (canonical
/// folder and name), any `.wasm` in a watched folder, or the `..data` link through which a
/// Kubernetes ConfigMap swaps all its files at once. The content check decides the rest.
fn relevant(path: &Path, files: &BTreeSet<PathBuf>) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy());
    if path.extension().is_some_and(|x| x == "wasm")
        || name.as_deref().is_some_and(|n| n.starts_with(".."))
    {
        return true;
    }
    let folder = path.parent().map(canonical);
    match (folder, path.file_name()) {
        (Some(folder), Some(name)) => files.contains(&folder.join(name)),
        _ => false,
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

/// The folders to watch (the config file's, `plugins_dir`, and every named file's) and the
/// files that matter, each as canonical folder and name.
fn interesting(config_file: &Path, config: &Config) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>) {
    let mut dirs = BTreeSet::new();
    let mut files = BTreeSet::new();
    let mut add = |file: &Path| {
        let dir = canonical(config_folder(file));
        if let Some(name) = file.file_name() {
            files.insert(dir.join(name));
        }
        if dir.is_dir() {
            dirs.insert(dir);
        }
    };
    add(config_file);
    for file in named_files(config) {
        add(&file);
    }
    if config.gateway.plugins_dir.is_dir() {
        dirs.insert(canonical(&config.gateway.plugins_dir));
    }
    (dirs, files)
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn reads_are_not_changes() {
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
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
    fn only_named_files_plugins_and_configmap_swaps_are_relevant() {
        let dir = tempfile::tempdir().unwrap();
        let folder = canonical(dir.path());
        let files: BTreeSet<PathBuf> = [folder.join("gateway.toml")].into();
        assert!(relevant(&dir.path().join("gateway.toml"), &files));
        assert!(relevant(&dir.path().join("x.wasm"), &files));
        assert!(relevant(&dir.path().join("..data"), &files));
        assert!(!relevant(&dir.path().join("access.log"), &files));
        assert!(!relevant(&dir.path().join("gateway.toml.swp"), &files));
    }

    #[test]
    fn every_certificate_key_and_ca_file_is_watched() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let names = [
            "server.pem",
            "server.key",
            "clients-ca.pem",
            "upstream-ca.pem",
            "client.pem",
            "client.key",
        ];
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        for name in names {
            let pem = if name.ends_with(".key") {
                signing_key.serialize_pem()
            } else {
                cert.pem()
            };
            std::fs::write(dir.join(name), pem).unwrap();
        }
        let config = dir.join("gateway.toml");
        std::fs::write(
            &config,
            "[gateway]\nlisten = []\n\
             [gateway.tls]\nlisten = [\"127.0.0.1:0\"]\n\
             certificates = [{ cert = \"server.pem\", key = \"server.key\" }]\n\
             client_auth = { ca = \"clients-ca.pem\" }\n\
             [upstreams.u]\ntargets = [\"https://127.0.0.1:8443\"]\n\
             tls = { ca = \"upstream-ca.pem\", cert = \"client.pem\", key = \"client.key\", server_name = \"localhost\" }\n\
             [[routes]]\nname = \"r\"\nupstream = \"u\"\n",
        )
        .unwrap();
        let loaded = wasmgate_config::load(&config).unwrap();
        let watched = named_files(&loaded);
        for name in names {
            assert!(watched.contains(&dir.join(name)), "{name} in {watched:?}");
        }
    }

    #[test]
    fn fingerprint_follows_the_config_and_the_files_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir(dir.join("plugins")).unwrap();
        let config = dir.join("gateway.toml");
        let text = "[[routes]]\nname = \"r\"\nrespond = { status = 200 }\n\
                    [[routes.plugins]]\nname = \"p\"\n";
        std::fs::write(&config, text).unwrap();
        let read = |p: &Path| ConfigFile::read(p).fingerprint;
        let missing = read(&config);
        assert_eq!(read(&config), missing, "reading is stable");

        std::fs::write(dir.join("plugins/p.wasm"), b"one").unwrap();
        let one = read(&config);
        assert_ne!(one, missing, "a plugin file appearing is a change");
        std::fs::write(dir.join("plugins/other.wasm"), b"x").unwrap();
        assert_eq!(
            read(&config),
            one,
            "a plugin the config does not name is not"
        );
        std::fs::write(dir.join("plugins/p.wasm"), b"two").unwrap();
        assert_ne!(read(&config), one, "a plugin's new bytes are a change");

        std::fs::write(&config, format!("{text}\n# a comment\n")).unwrap();
        let commented = read(&config);
        std::fs::write(&config, "not [ toml").unwrap();
        let broken = ConfigFile::read(&config);
        assert!(broken.config.is_err());
        assert_ne!(broken.fingerprint, commented);
        assert_eq!(
            read(&config),
            broken.fingerprint,
            "a broken file is stable too"
        );
    }
}
