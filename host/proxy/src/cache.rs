//! A route's response cache ([`wasmgate_cache`]) with its metrics, kept across reloads that
//! leave its settings alone.

use std::time::Duration;

use wasmgate_cache::{Cache, Lookup, Rules};
use wasmgate_telemetry::{CacheMetrics, Metrics};

/// One route's cache.
#[derive(Debug)]
pub(crate) struct RouteCache {
    route: String,
    settings: wasmgate_config::Cache,
    cache: Cache,
    metrics: CacheMetrics,
}

impl RouteCache {
    pub(crate) fn new(route: &str, settings: &wasmgate_config::Cache, metrics: &Metrics) -> Self {
        let metrics = metrics.cache(route);
        let evictions = metrics.evictions.clone();
        let cache = Cache::new(rules(settings)).on_eviction(move |_| {
            evictions.inc();
        });
        Self {
            route: route.to_owned(),
            settings: settings.clone(),
            cache,
            metrics,
        }
    }

    /// The route's name.
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// The settings it was made with.
    pub(crate) fn settings(&self) -> &wasmgate_config::Cache {
        &self.settings
    }

    /// Looks a request up, counting the result.
    pub(crate) async fn lookup(&self, req: &http::request::Parts) -> Lookup {
        let lookup = self.cache.lookup(req).await;
        match &lookup {
            Lookup::Hit(_) => self.metrics.hit.inc(),
            Lookup::Miss(_) => self.metrics.miss.inc(),
            Lookup::Bypass => self.metrics.bypass.inc(),
        };
        // Cheap reads of the cache's own counts, so the gauges follow without a timer.
        self.metrics.bytes.set(to_i64(self.cache.bytes()));
        self.metrics.entries.set(to_i64(self.cache.entries()));
        lookup
    }

    /// Counts a miss the upstream answered with a `304` for the stored response.
    pub(crate) fn revalidated(&self) {
        self.metrics.revalidated.inc();
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
