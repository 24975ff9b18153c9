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
use wasmgate_config::{AccessLog as AccessLogConfig, Config, Diagnostic};
use wasmgate_runtime::Runtime;
use wasmgate_telemetry::Metrics;

use crate::proxy::{Proxy, Snapshot};
use crate::{Services, open_access_log, prepare_with};

/// A handle to a running gateway: reload it, look at what it serves. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) services: Services,
    pub(crate) tls: Option<Arc<ArcSwap<ServerConfig>>>,
    /// One reload at a time: two racing reloads could otherwise swap in the older one last.
    pub(crate) reloading: Arc<tokio::sync::Mutex<()>>,
}

/// What a successful reload swapped in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Routes now served.
    pub routes: usize,
    /// Plugin entries now bound.
    pub plugins: usize,
    /// Settings that changed in the file but apply only after a restart (listeners, connection
    /// timeouts, HTTP/2 limits, the admin address); they keep their old values until then.
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
        // The running workers stay until a restart; the new snapshot sizes its per-worker
        // upstream pools and plugin pools for them, not for the file's new number.
        let mut config = config;
        let workers_changed = config.gateway.workers != old.config.gateway.workers;
        config.gateway.workers = old.config.gateway.workers;
        let prepared = prepare_with(&self.services, config).await?;
        let mut restart_needed = restart_needed(&old.config, &prepared.config);
        if workers_changed {
            restart_needed.push("gateway.workers");
        }
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
            restart_needed,
        };
        let snapshot = Snapshot::new(
            Arc::new(prepared.config),
            prepared.runtime,
            &self.services.metrics,
            access_log,
        );
        self.proxy.snapshot.store(Arc::new(snapshot));
        Ok(reloaded)
    }

    /// Calls `f` with the configuration being served.
    pub fn inspect<R>(&self, f: impl FnOnce(Active<'_>) -> R) -> R {
        let snapshot = self.proxy.snapshot.load();
        f(Active {
            config: &snapshot.config,
            runtime: snapshot.runtime.as_ref(),
            loaded_at: snapshot.loaded_at,
        })
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.services.metrics
    }
}

/// The `[gateway]` settings of `new` that differ from `old` and that only a restart applies.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.gateway, &new.gateway);
    let tls_listen = |c: &Config| c.gateway.tls.as_ref().map(|t| t.listen.clone());
    let mut changed = Vec::new();
    let mut check = |key: &'static str, same: bool| {
        if !same {
            changed.push(key);
        }
    };
    check("gateway.listen", o.listen == n.listen);
    check("gateway.tls.listen", tls_listen(old) == tls_listen(new));
    check("gateway.admin", o.admin == n.admin);
    check(
        "gateway.header_read_timeout",
        o.header_read_timeout == n.header_read_timeout,
    );
    check("gateway.idle_timeout", o.idle_timeout == n.idle_timeout);
    check(
        "gateway.max_header_size",
        o.max_header_size == n.max_header_size,
    );
    check(
        "gateway.shutdown_grace",
        o.shutdown_grace == n.shutdown_grace,
    );
    check(
        "gateway.http2",
        format!("{:?}", o.http2) == format!("{:?}", n.http2),
    );
    check("gateway.watch", o.watch == n.watch);
    changed
}
