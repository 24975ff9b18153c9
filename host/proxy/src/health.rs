//! Active health checks: one checker per upstream for the whole gateway probes each target on
//! its `interval`, on connections of its own, and marks a target down after `unhealthy` failed
//! probes in a row and up again after `healthy` passed ones. Every worker reads the same
//! state, which a reload hands on to the next checker of an unchanged upstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use wasmgate_config::{HealthCheck, Probe};
use wasmgate_telemetry::{CheckMetrics, Metrics};

use crate::body::Body;
use crate::pool::Pool;
use crate::upstream::{Health, TargetSet};

/// The most of a probe's response body read (so its connection can be kept); a longer body
/// closes the connection instead.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Probes every target of `set` until aborted. Targets that join the set later get a prober of
/// their own, and those that leave it lose theirs, within one `interval`.
pub(crate) async fn run(
    upstream: String,
    check: HealthCheck,
    set: Arc<ArcSwap<TargetSet>>,
    metrics: Arc<Metrics>,
    checking: Arc<AtomicBool>,
) {
    let check = Arc::new(check);
    // Dropping the set (when this task is aborted) aborts every prober.
    let mut probers = JoinSet::new();
    let mut running: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current = set.load_full();
        let mut seen = Vec::with_capacity(current.targets.len());
        for target in &current.targets {
            let key = target.key.clone();
            if running.contains_key(&key) {
                seen.push(key);
                continue;
            }
            let prober = Prober {
                upstream: upstream.clone(),
                target: key.clone(),
                pool: Arc::new(target.pool.sibling(1)),
                host: target.host.clone(),
                health: target.health.clone(),
                metrics: metrics.target_checks(&upstream, &key),
                check: check.clone(),
                checking: checking.clone(),
            };
            running.insert(key.clone(), probers.spawn(prober.run()));
            seen.push(key);
        }
        running.retain(|key, task| {
            let keep = seen.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        // Reap finished (aborted) probers so the set does not grow.
        while probers.try_join_next().is_some() {}
    }
}

/// Probes one target.
struct Prober {
    upstream: String,
    target: String,
    /// The checker's own connections to the target (one worker, one idle connection).
    pool: Arc<Pool>,
    host: HeaderValue,
    health: Arc<Health>,
    metrics: CheckMetrics,
    check: Arc<HealthCheck>,
    /// Cleared when the checker is stopped: a probe ending after that is not recorded.
    checking: Arc<AtomicBool>,
}

impl Prober {
    async fn run(self) {
        let mut ticks = tokio::time::interval(self.check.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let passed = tokio::time::timeout(self.check.timeout, self.probe())
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.check.timeout)));
            self.record(passed);
        }
    }

    /// One probe: `Err` says why it failed.
    async fn probe(&self) -> Result<(), String> {
        let Probe::Http {
            path,
            host,
            statuses,
        } = &self.check.probe
        else {
            return self.pool.probe_tcp().await.map_err(|e| e.to_string());
        };
        let req = Request::get(http::Uri::from(path.clone()))
            .header(HOST, host.as_ref().unwrap_or(&self.host))
            .header(
                USER_AGENT,
                HeaderValue::from_static("wasmgate-health-check"),
            )
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let (response, release) = self.pool.send(req, 0).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let mut body = response.into_body();
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("response body: {e}"))?;
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > MAX_PROBE_BODY {
                break;
            }
        }
        if read <= MAX_PROBE_BODY
            && let Some(release) = release
        {
            release.release();
        }
        let passed = match statuses {
            Some(statuses) => statuses.contains(&status.as_u16()),
            None => status.is_success(),
        };
        if passed {
            Ok(())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    }

    /// Counts a probe's result, and moves the target down after `unhealthy` failures in a row
    /// or up after `healthy` passes in a row. A pass also ends an ejection by outlier detection
    /// (as Envoy's `successful_active_health_check_uneject_host`): the target answers again.
    fn record(&self, result: Result<(), String>) {
        if !self.checking.load(Ordering::Acquire) {
            return;
        }
        let health = &self.health;
        health.checked.store(true, Ordering::Relaxed);
        let down = health.down.load(Ordering::Relaxed);
        let passed = result.is_ok();
        self.metrics.probed(passed);
        let changed = match &result {
            Ok(()) => {
                health.fails_in_row.store(0, Ordering::Relaxed);
                let passes = health.passes_in_row.fetch_add(1, Ordering::Relaxed) + 1;
                health.uneject();
                down && passes >= self.check.healthy
            }
            Err(why) => {
                health.passes_in_row.store(0, Ordering::Relaxed);
                let fails = health.fails_in_row.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(upstream = %self.upstream, target = %self.target, reason = %why, fails, "health check failed");
                !down && fails >= self.check.unhealthy
            }
        };
        if changed {
            health.down.store(!passed, Ordering::Relaxed);
            match result {
                Ok(()) => tracing::info!(
                    upstream = %self.upstream,
                    target = %self.target,
                    "target healthy again: it takes requests"
                ),
                Err(why) => tracing::warn!(
                    upstream = %self.upstream,
                    target = %self.target,
                    reason = %why,
                    "target unhealthy: it takes no requests until it passes its health check"
                ),
            }
        }
        self.metrics
            .state(!health.down.load(Ordering::Relaxed), changed);
    }
}
