//! One configuration made ready to serve: router, routes with their plugin chains and answers,
//! upstreams with their pools, metrics and the access log. A reload builds a new [`Snapshot`]
//! and swaps it in whole; none is ever edited.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use wasmgate_config::{Config, Gateway, Protocols, RouteAction};
use wasmgate_runtime::{Chain, Runtime};
use wasmgate_telemetry::{AccessLog, Metrics, RouteMetrics, Tracing};

use crate::cache::RouteCache;
use crate::canonical;
use crate::compression::Compression;
use crate::discovery::Resolver;
use crate::mirror::Mirror;
use crate::router::Router;
use crate::split::Split;
use crate::trusted::TrustedProxies;
use crate::upstream::Upstream;

/// Everything one configuration needs to serve requests; replaced whole, never edited.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) router: Router,
    pub(crate) routes: Vec<RouteRuntime>,
    /// Every upstream, in config order (routes hold their own).
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    pub(crate) max_headers: usize,
    pub(crate) body_idle: Duration,
    /// How request paths are made canonical.
    pub(crate) paths: canonical::Rules,
    /// `gateway.max_request_body` (`u64::MAX`: none).
    pub(crate) max_request_body: u64,
    /// Whose word on the client's address is believed.
    pub(crate) trusted: TrustedProxies,
    /// Metrics of each route, by index, and of requests no route matched.
    pub(crate) route_metrics: Vec<Arc<RouteMetrics>>,
    pub(crate) unrouted: Arc<RouteMetrics>,
    pub(crate) access_log: Arc<AccessLog>,
    /// The configuration this snapshot serves, for the admin API.
    pub(crate) config: Arc<Config>,
    /// Keeps the plugin engine and every binding alive as long as the snapshot serves.
    pub(crate) runtime: Option<Runtime>,
    /// When this snapshot started serving.
    pub(crate) loaded_at: SystemTime,
    /// What its file asked for that waits for a restart.
    pub(crate) pending_restart: Option<PendingRestart>,
    /// The port of the first TLS listener, for redirects to HTTPS.
    pub(crate) https_port: Option<u16>,
    /// Discovers the addresses of targets given by name (when any is).
    resolver: Option<Resolver>,
    /// `[gateway.tracing]`: started once, shared by every snapshot after.
    pub(crate) tracing: Option<Tracing>,
}

/// A route as the data path uses it.
#[derive(Debug)]
pub(crate) struct RouteRuntime {
    pub(crate) action: Action,
    pub(crate) strip_path: bool,
    pub(crate) protocols: Protocols,
    pub(crate) https_redirect: bool,
    pub(crate) preserve_host: bool,
    pub(crate) max_body: usize,
    pub(crate) chain: Option<Arc<Chain>>,
    pub(crate) mirror: Option<Mirror>,
    pub(crate) cache: Option<Arc<RouteCache>>,
    pub(crate) compression: Option<Compression>,
}

/// What a route does with a request once its plugins let it through.
#[derive(Debug)]
pub(crate) enum Action {
    Upstream(Arc<Upstream>),
    Split(Split),
    Respond(Prepared),
}

/// A `respond` route's answer, built once.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Snapshot {
    /// `clients` holds the TLS configuration of each of `config`'s upstreams, in order;
    /// `previous` is the snapshot this one replaces, whose upstreams' health carries over.
    pub(crate) fn new(
        config: Arc<Config>,
        runtime: Option<Runtime>,
        clients: &[Option<Arc<rustls::ClientConfig>>],
        resolver: Option<Resolver>,
        metrics: &Arc<Metrics>,
        access_log: Arc<AccessLog>,
        previous: Option<&Snapshot>,
    ) -> Self {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let client = clients.get(i).and_then(Option::as_ref);
                let before = previous
                    .and_then(|p| p.upstreams.iter().find(|old| old.name == u.name))
                    .map(Arc::as_ref);
                Arc::new(Upstream::new(
                    u,
                    client,
                    config.gateway.workers,
                    metrics,
                    before,
                ))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteRuntime {
                mirror: r
                    .mirror
                    .as_ref()
                    .map(|m| Mirror::new(m, &upstreams, &r.name, metrics)),
                // A reload keeps what a route cached while its cache settings stay the same, and
                // while it splits or does not (a split keys its entries by upstream: the old
                // ones would be unreachable, yet count against `max_size`).
                cache: r.cache.as_ref().map(|c| {
                    let split = matches!(r.action, RouteAction::Split(_));
                    previous
                        .into_iter()
                        .flat_map(|p| p.routes.iter().filter_map(|old| old.cache.as_ref()))
                        .find(|old| {
                            old.route() == r.name && old.settings() == c && old.split() == split
                        })
                        .cloned()
                        .unwrap_or_else(|| Arc::new(RouteCache::new(&r.name, c, split, metrics)))
                }),
                compression: r
                    .compression
                    .as_ref()
                    .map(|c| Compression::new(c, &r.name, metrics)),
                strip_path: r.strip_path,
                protocols: r.protocols,
                https_redirect: r.https_redirect,
                preserve_host: r.preserve_host,
                max_body: r.max_body,
                chain: runtime.as_ref().and_then(|rt| rt.chain(i)).cloned(),
                action: match &r.action {
                    RouteAction::Upstream(i) => Action::Upstream(upstreams[*i].clone()),
                    RouteAction::Split(split) => {
                        Action::Split(Split::new(split, &upstreams, &r.name, metrics))
                    }
                    RouteAction::Respond(respond) => {
                        let mut headers: HeaderMap = respond.headers.iter().cloned().collect();
                        if !respond.body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
                            headers.insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static("text/plain; charset=utf-8"),
                            );
                        }
                        if !matches!(respond.status.as_u16(), 204 | 304) {
                            headers.insert(CONTENT_LENGTH, HeaderValue::from(respond.body.len()));
                        }
                        Action::Respond(Prepared {
                            status: respond.status,
                            headers,
                            body: Bytes::from(respond.body.clone()),
                        })
                    }
                },
            })
            .collect();
        Self {
            router: Router::new(&config.routes),
            routes,
            upstreams,
            max_headers: config.gateway.max_headers,
            body_idle: config.gateway.header_read_timeout,
            max_request_body: match config.gateway.max_request_body {
                0 => u64::MAX,
                n => n,
            },
            trusted: TrustedProxies::new(
                &config.gateway.trusted_proxies,
                config.gateway.client_address_header,
            ),
            paths: canonical::Rules {
                merge_slashes: config.gateway.merge_slashes,
                escaped_slashes: config.gateway.escaped_slashes,
            },
            route_metrics: config
                .routes
                .iter()
                .map(|r| Arc::new(metrics.route(&r.name)))
                .collect(),
            unrouted: Arc::new(metrics.route("")),
            access_log,
            runtime,
            loaded_at: SystemTime::now(),
            pending_restart: None,
            https_port: None,
            resolver,
            tracing: None,
            config,
        }
    }
}

impl Snapshot {
    /// Starts what runs beside the data path while this snapshot serves: the upstreams' health
    /// checkers and discovery.
    pub(crate) fn start(&self) {
        for upstream in &self.upstreams {
            upstream.start(self.resolver.as_ref());
        }
    }

    /// Stops what [`start`](Self::start) started: a reload's new snapshot has its own.
    pub(crate) fn stop(&self) {
        for upstream in &self.upstreams {
            upstream.stop();
        }
    }
}

/// Settings of the last reloaded file that differ from the running ones and wait for a restart.
#[derive(Debug, Clone)]
pub struct PendingRestart {
    /// The dotted keys, e.g. `gateway.listen`.
    pub keys: Vec<&'static str>,
    /// The file's `[gateway]` table, for the values of those keys.
    pub file: Gateway,
}
