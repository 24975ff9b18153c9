//! Reloading and inspecting a running gateway.
//!
//! A reload builds a complete [`Snapshot`] — configuration validated, TLS certificates loaded,
//! every plugin loaded and `init`ed — and only then swaps it in with one atomic store. Requests
//! in flight keep the snapshot they started with (they hold an `Arc` of it) and finish on it;
//! connections are not touched, so keep-alive clients carry on with the next request on the new
//! snapshot. A reload that fails at any step changes nothing.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use wasmgate_config::{AccessLog as AccessLogConfig, Config, Diagnostic, Gateway};
use wasmgate_runtime::Runtime;
use wasmgate_telemetry::Metrics;

use crate::proxy::Proxy;
use crate::snapshot::{PendingRestart, Snapshot};
use crate::{Services, open_access_log, prepare_with};

/// A handle to a running gateway: reload it, look at what it serves. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) services: Services,
    pub(crate) tls: Option<Arc<ArcSwap<ServerConfig>>>,
    /// One reload at a time: two racing reloads could otherwise swap in the older one last.
    pub(crate) reloading: Arc<tokio::sync::Mutex<()>>,
    /// The `[gateway]` settings the gateway started with: what the listeners and workers run.
    pub(crate) started: Arc<Gateway>,
}

/// What a successful reload swapped in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Routes now served.
    pub routes: usize,
    /// Plugin entries now bound.
    pub plugins: usize,
    /// Settings whose value in the file differs from the running one and applies only after a
    /// restart (listeners, connection limits and timeouts, HTTP/2 limits, the admin address,
    /// workers); they keep their running values until then. Empty once the file agrees again.
    pub restart_needed: Vec<&'static str>,
}

/// The configuration being served, as [`Control::inspect`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct Active<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// Its loaded plugins, when a route has any.
    pub runtime: Option<&'a Runtime>,
    /// When it started serving.
    pub loaded_at: SystemTime,
    /// What the file asks for that only a restart applies; `None` when the file agrees with what
    /// runs.
    pub pending_restart: Option<&'a PendingRestart>,
}

impl Control {
    /// Replaces the served configuration with `config`, or changes nothing and returns every
    /// problem. Counted in `wasmgate_config_reloads_total`.
    pub async fn reload(&self, config: Config) -> Result<Reloaded, Vec<Diagnostic>> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.swap(config).await;
        self.services.metrics.reload(result.is_ok());
        result
    }

    async fn swap(&self, config: Config) -> Result<Reloaded, Vec<Diagnostic>> {
        let old = self.proxy.snapshot.load_full();
        // What only a restart applies keeps its running value in the new snapshot (so per-worker
        // pools match the threads that exist and `/config` shows what is served); the file's
        // values wait in `pending_restart`, compared with what runs, not with the last file.
        let mut config = config;
        let file = config.gateway.clone();
        let restart_needed = keep_running(&self.started, &mut config.gateway);
        https_reachable(&config)?;
        let prepared = prepare_with(&self.services, config).await?;
        let destination = &prepared.config.gateway.access_log;
        // A file is reopened on every reload, so `logrotate` can move it and then reload.
        let access_log = if *destination == old.config.gateway.access_log
            && !matches!(destination, AccessLogConfig::File(_))
        {
            old.access_log.clone()
        } else {
            let log = open_access_log(destination, &self.services.metrics).map_err(|e| {
                vec![prepared.config.diagnostic(
                    "gateway.access_log",
                    format!("cannot open the access log: {e}"),
                )]
            })?;
            Arc::new(log)
        };
        if let (Some(current), Some(new)) = (&self.tls, prepared.tls) {
            current.store(new);
        }
        let reloaded = Reloaded {
            routes: prepared.config.routes.len(),
            plugins: prepared.runtime.as_ref().map_or(0, |r| r.bound.len()),
            restart_needed: restart_needed.clone(),
        };
        let mut snapshot = Snapshot::new(
            Arc::new(prepared.config),
            prepared.runtime,
            &prepared.upstream_tls,
            prepared.resolver,
            &self.services.metrics,
            access_log,
            Some(&old),
        );
        snapshot.https_port = old.https_port;
        snapshot.tracing = old.tracing.clone();
        snapshot.pending_restart = (!restart_needed.is_empty()).then_some(PendingRestart {
            keys: restart_needed,
            file,
        });
        // One health checker per upstream at a time: the old snapshot's stop before the new
        // one's start (and probe at once), since both would write the targets' state they
        // share. Requests on the old snapshot meanwhile only miss a probe or two.
        old.stop();
        snapshot.start();
        self.proxy.snapshot.store(Arc::new(snapshot));
        Ok(reloaded)
    }

    /// The state of every upstream of the configuration being served, in config order.
    pub fn upstreams(&self) -> Vec<crate::UpstreamState> {
        let snapshot = self.proxy.snapshot.load();
        snapshot.upstreams.iter().map(|u| u.state()).collect()
    }

    /// Drops cached responses: of every route with a cache (`route` `None`), or of one route;
    /// all of them (`path` `None`), or those of one path (with a query: that query only).
    /// Returns each purged route with how many entries went, or `None` when `route` names no
    /// route with a cache.
    pub fn purge_cache(
        &self,
        route: Option<&str>,
        path: Option<&str>,
    ) -> Option<Vec<(String, u64)>> {
        let snapshot = self.proxy.snapshot.load();
        let caches = snapshot
            .routes
            .iter()
            .filter_map(|r| r.cache.as_ref())
            .filter(|c| route.is_none_or(|name| c.route() == name));
        let purged: Vec<(String, u64)> = caches
            .map(|c| (c.route().to_owned(), c.purge(path)))
            .collect();
        (route.is_none() || !purged.is_empty()).then_some(purged)
    }

    /// Calls `f` with the configuration being served.
    pub fn inspect<R>(&self, f: impl FnOnce(Active<'_>) -> R) -> R {
        let snapshot = self.proxy.snapshot.load();
        f(Active {
            config: &snapshot.config,
            runtime: snapshot.runtime.as_ref(),
            loaded_at: snapshot.loaded_at,
            pending_restart: snapshot.pending_restart.as_ref(),
        })
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.services.metrics
    }

    /// The shared state's backend and whether it answers.
    pub fn state_health(&self) -> wasmgate_runtime::StateHealth {
        self.services.state_health()
    }
}

/// Refuses routes served over https only when the running gateway has no TLS listener (the
/// file may add `[gateway.tls]`, but its listeners wait for a restart): those routes could
/// answer nothing but 426.
fn https_reachable(config: &Config) -> Result<(), Vec<Diagnostic>> {
    if config
        .gateway
        .tls
        .as_ref()
        .is_some_and(|t| !t.listen.is_empty())
    {
        return Ok(());
    }
    let problems: Vec<Diagnostic> = config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.protocols.http)
        .map(|(i, r)| {
            config.diagnostic(
                &format!("routes[{i}].protocols"),
                format!(
                    "route {:?} serves https only, but the running gateway has no TLS listener \
                     (gateway.tls.listen applies only after a restart)",
                    r.name
                ),
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Sets every setting of `file` that only a restart applies to its `running` value; the keys
/// whose file value differed, in `[gateway]` order.
fn keep_running(running: &Gateway, file: &mut Gateway) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            if file.$($field).+ != running.$($field).+ {
                changed.push($key);
                file.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("gateway.listen", listen);
    let tls_listen = |g: &Gateway| g.tls.as_ref().map(|t| t.listen.clone());
    if tls_listen(file) != tls_listen(running) {
        changed.push("gateway.tls.listen");
        match (&mut file.tls, &running.tls) {
            // Certificates reload; the listening addresses stay.
            (Some(f), Some(r)) => f.listen = r.listen.clone(),
            // No TLS listener to serve them on, or nothing to serve on the running ones: the
            // running TLS settings stay whole.
            (f, r) => *f = r.clone(),
        }
    }
    keep!("gateway.admin", admin);
    keep!("gateway.header_read_timeout", header_read_timeout);
    keep!("gateway.idle_timeout", idle_timeout);
    keep!("gateway.send_timeout", send_timeout);
    keep!("gateway.max_header_size", max_header_size);
    keep!("gateway.max_headers", max_headers);
    keep!("gateway.shutdown_grace", shutdown_grace);
    keep!("gateway.http2", http2);
    keep!("gateway.tracing", tracing);
    keep!("gateway.state", state);
    keep!("gateway.watch", watch);
    keep!("gateway.workers", workers);
    keep!("gateway.proxy_protocol", proxy_protocol);
    keep!("gateway.max_connections", max_connections);
    keep!(
        "gateway.max_connections_per_client",
        max_connections_per_client
    );
    changed
}
