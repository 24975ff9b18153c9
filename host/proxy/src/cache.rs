//! A route's response cache ([`wasmgate_cache`]) with its metrics, kept across reloads that
//! leave its settings alone.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use wasmgate_cache::{Cache, Lookup, Rules, Status};
use wasmgate_telemetry::{CacheMetrics, Metrics};

/// One route's cache.
#[derive(Debug)]
pub(crate) struct RouteCache {
    route: String,
    settings: wasmgate_config::Cache,
    /// Whether the route splits its traffic (its entries are then keyed by upstream).
    split: bool,
    cache: Cache,
    metrics: CacheMetrics,
}

impl RouteCache {
    pub(crate) fn new(
        route: &str,
        settings: &wasmgate_config::Cache,
        split: bool,
        metrics: &Metrics,
    ) -> Self {
        let metrics = metrics.cache(route);
        let evictions = metrics.evictions.clone();
        let cache = Cache::new(rules(settings)).on_eviction(move |_| {
            evictions.inc();
        });
        Self {
            route: route.to_owned(),
            settings: settings.clone(),
            split,
            cache,
            metrics,
        }
    }

    /// The route's name.
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// Whether it was made for a route that splits its traffic.
    pub(crate) fn split(&self) -> bool {
        self.split
    }

    /// The settings it was made with.
    pub(crate) fn settings(&self) -> &wasmgate_config::Cache {
        &self.settings
    }

    /// A fresh hit for the request, counted, when there is one now (see [`Cache::fresh`]);
    /// otherwise [`lookup`](Self::lookup) decides.
    pub(crate) fn fresh(&self, req: &http::request::Parts) -> Option<Response<Bytes>> {
        let hit = self.cache.fresh(req)?;
        self.count(Status::Hit);
        Some(hit)
    }

    /// Looks a request up, counting the result; `upstream` keeps the entries of a split
    /// route's upstreams apart (see [`Cache::lookup_from`]).
    pub(crate) async fn lookup(
        &self,
        req: &http::request::Parts,
        upstream: Option<&str>,
    ) -> Lookup {
        let lookup = self.cache.lookup_from(req, upstream).await;
        self.count(match &lookup {
            Lookup::Hit(_) => Status::Hit,
            Lookup::Miss(_) => Status::Miss,
            Lookup::Bypass => Status::Bypass,
        });
        lookup
    }

    fn count(&self, status: Status) {
        match status {
            Status::Hit => self.metrics.hit.inc(),
            Status::Miss => self.metrics.miss.inc(),
            Status::Bypass => self.metrics.bypass.inc(),
            Status::Revalidated => self.metrics.revalidated.inc(),
        };
        // Cheap reads of the cache's own counts, so the gauges follow without a timer.
        self.metrics.bytes.set(to_i64(self.cache.bytes()));
        self.metrics.entries.set(to_i64(self.cache.entries()));
    }

    /// Counts a miss the upstream answered with a `304` for the stored response.
    pub(crate) fn revalidated(&self) {
        self.count(Status::Revalidated);
    }

    /// Drops every entry (`path` `None`) or those of one path (with a query: that query only).
    pub(crate) fn purge(&self, path: Option<&str>) -> u64 {
        match path {
            Some(path) => self.cache.purge(path),
            None => {
                let entries = self.cache.entries();
                self.cache.purge_all();
                entries
            }
        }
    }
}

fn rules(c: &wasmgate_config::Cache) -> Rules {
    Rules {
        ttl: c.ttl,
        max_size: c.max_size,
        max_entry_size: c.max_entry_size,
        methods: c.methods.clone(),
        vary: c.vary.clone(),
        client_no_cache: c.client_no_cache,
        lock_timeout: c.lock_timeout.max(Duration::from_millis(1)),
        keep: c.keep,
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
