//! Batched rate limits: each gateway decides alone while a limit is far from used up, sends what
//! it counted to Redis every `sync_interval`, and asks Redis for each request once the limit is
//! near.
//!
//! A gateway's view of a limit is the shared state it last read plus what it counted since
//! (`pending`). Other gateways only add to the shared state, so a request the view refuses would
//! be refused by Redis too: refusals never need a round trip. A request the view allows is
//! decided locally only while its remaining quota stays at least `margin`: twice what the other
//! gateways used during the last interval (learnt at each sync), so that their traffic until the
//! next sync cannot use up what this gateway is still handing out. Closer to the limit, the
//! request and the pending counts go to Redis together, and Redis decides.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use wasmgate_counters::{Algorithm, LimitState, Quota, Verdict};
use wasmgate_telemetry::StateMetrics;

use crate::redis::RedisStore;
use crate::{Unavailable, millis, now_ms};

/// How often the sync task looks for limits due for a sync: the granularity of `sync_interval`.
const TICK: Duration = Duration::from_millis(10);

/// One limit's local view.
#[derive(Debug)]
struct Entry {
    quota: Quota,
    interval_ms: u64,
    /// The shared state as last read from Redis.
    known: Option<LimitState>,
    /// The shared state as the last sync read it: what the others' use is measured from.
    baseline: Option<LimitState>,
    /// Units Redis counted for this gateway's own requests (decided there) since `baseline`.
    own_since_baseline: u64,
    /// Units counted here since the last sync.
    pending: u64,
    /// Remaining quota below which requests go to Redis; `u64::MAX` until a whole interval
    /// has been observed.
    margin: u64,
    /// Since when the units below were counted (ms since the epoch).
    observed_since_ms: u64,
    /// Units the other gateways used, as learnt from Redis's answers, since `observed_since_ms`.
    others_used: u64,
    /// Units this gateway admitted since `observed_since_ms`.
    own_used: u64,
    next_sync_ms: u64,
    last_used_ms: u64,
}

/// The batched limits of this gateway, synced by a background task.
#[derive(Debug)]
pub(crate) struct Batches {
    entries: DashMap<String, Mutex<Entry>>,
    store: Arc<RedisStore>,
    metrics: StateMetrics,
    /// The runtime the state was made on (the gateway's control runtime): the sync task runs
    /// there, not on the worker whose request first used a batched limit.
    runtime: tokio::runtime::Handle,
    /// Started with the first batched limit: a gateway without one never wakes for it.
    sync_started: std::sync::Once,
    this: Weak<Self>,
}

/// The units a state has left for a request of one unit: the remaining quota as a count.
fn remaining(state: Option<LimitState>, now: u64, quota: Quota) -> u64 {
    let (_, v) = wasmgate_counters::decide(state, now, quota, 1);
    if v.allowed { v.remaining + 1 } else { 0 }
}

/// Whether refused requests count (fixed windows count every request).
fn refusals_count(quota: Quota) -> bool {
    quota.algorithm == Algorithm::FixedWindow
}

impl Batches {
    /// Must be called inside the tokio runtime the sync task is to run on.
    pub(crate) fn new(store: Arc<RedisStore>, metrics: StateMetrics) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            entries: DashMap::new(),
            store,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            sync_started: std::sync::Once::new(),
            this: this.clone(),
        })
    }

    fn entry(quota: Quota, sync_interval: Duration, now: u64) -> Mutex<Entry> {
        Mutex::new(Entry {
            quota,
            interval_ms: millis(sync_interval).max(1),
            known: None,
            baseline: None,
            own_since_baseline: 0,
            pending: 0,
            margin: u64::MAX,
            observed_since_ms: now,
            others_used: 0,
            own_used: 0,
            next_sync_ms: now,
            last_used_ms: now,
        })
    }

    /// Decides a request locally when the view allows it, or Redis when the limit is near.
    pub(crate) async fn limit(
        &self,
        key: &str,
        quota: Quota,
        cost: u64,
        sync_interval: Duration,
        now: u64,
        budget: Duration,
    ) -> Result<Verdict, Unavailable> {
        self.sync_started
            .call_once(|| drop(self.runtime.spawn(sync_task(self.this.clone()))));
        let used = {
            let entry = match self.entries.get(key) {
                Some(entry) => entry,
                None => self
                    .entries
                    .entry(key.to_owned())
                    .or_insert_with(|| Self::entry(quota, sync_interval, now))
                    .downgrade(),
            };
            let mut e = entry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            e.last_used_ms = now;
            if e.quota != quota {
                // A reload changed the limit: start over from what Redis knows.
                e.quota = quota;
                e.known = None;
                e.margin = u64::MAX;
                e.observed_since_ms = now;
            }
            let view = view(&e, now);
            let (_, verdict) = wasmgate_counters::decide(view, now, quota, cost);
            if !verdict.allowed && e.known.is_some() {
                if refusals_count(quota) {
                    e.pending += cost;
                }
                return Ok(verdict);
            }
            if verdict.allowed && verdict.remaining >= e.margin {
                e.pending += cost;
                e.own_used += cost;
                return Ok(verdict);
            }
            // Near the limit, or never read: Redis decides, on everything counted here so far.
            std::mem::take(&mut e.pending)
        };
        match self.store.limit(key, quota, used, cost, now, budget).await {
            Ok(state) => {
                let (after, verdict) = wasmgate_counters::decide(Some(state), now, quota, cost);
                if let Some(entry) = self.entries.get(key) {
                    let mut e = entry
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if verdict.allowed {
                        e.own_used += cost;
                    }
                    if verdict.allowed || refusals_count(quota) {
                        e.own_since_baseline += cost;
                    }
                    e.own_since_baseline += used;
                    e.known = Some(most_used(e.known, after, now, quota));
                }
                Ok(verdict)
            }
            Err(error) => {
                // Nothing reached Redis: the counts are still this gateway's to send.
                if let Some(entry) = self.entries.get(key) {
                    let mut e = entry
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    e.pending += used;
                }
                Err(error)
            }
        }
    }

    /// Sends the pending counts of every limit due for a sync, and forgets idle ones.
    async fn sync_due(&self) {
        let now = now_ms();
        let mut due = Vec::new();
        self.entries.retain(|key, entry| {
            let e = entry
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let idle_for = now.saturating_sub(e.last_used_ms);
            if e.pending == 0 && idle_for > e.quota.window_ms.max(e.interval_ms) * 2 {
                return false;
            }
            if e.next_sync_ms <= now && (e.pending > 0 || idle_for < e.interval_ms * 2) {
                e.next_sync_ms = now + e.interval_ms;
                due.push((key.clone(), e.quota, std::mem::take(&mut e.pending)));
            }
            true
        });
        let mut tasks = tokio::task::JoinSet::new();
        for (key, quota, used) in due {
            let store = self.store.clone();
            let timeout = Duration::from_secs(1);
            tasks.spawn(async move {
                let outcome = store.limit(&key, quota, used, 0, now, timeout).await;
                (key, used, outcome)
            });
        }
        while let Some(Ok((key, used, outcome))) = tasks.join_next().await {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            let mut e = entry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match outcome {
                Ok(state) => {
                    self.metrics.synced();
                    learn(&mut e, state, used, now);
                }
                Err(_) => e.pending += used,
            }
        }
    }
}

/// The view of a limit: the shared state last read plus what was counted here since.
fn view(e: &Entry, now: u64) -> Option<LimitState> {
    if e.pending == 0 {
        e.known
    } else {
        Some(wasmgate_counters::absorb(e.known, now, e.quota, e.pending))
    }
}

/// Of two readings of the shared state, the one with the least left (the later one: others only
/// add to it).
fn most_used(known: Option<LimitState>, read: LimitState, now: u64, quota: Quota) -> LimitState {
    match known {
        Some(k) if remaining(Some(k), now, quota) < remaining(Some(read), now, quota) => k,
        _ => read,
    }
}

/// Takes in what a sync read: `state`, after this gateway's `used` units were added. What the
/// other gateways used since the previous sync (the growth not explained by this gateway's own
/// units) is added up; once a whole sync interval has been observed, the margin becomes twice the
/// larger of their rate and this gateway's own, per interval (under even load balancing the
/// others go at least as fast as this one, and one quiet interval does not lower it to nothing).
fn learn(e: &mut Entry, state: LimitState, used: u64, now: u64) {
    if let Some(baseline) = e.baseline {
        let own = used.saturating_add(e.own_since_baseline);
        let expected = wasmgate_counters::absorb(Some(baseline), now, e.quota, own);
        let others = remaining(Some(expected), now, e.quota).saturating_sub(remaining(
            Some(state),
            now,
            e.quota,
        ));
        e.others_used = e.others_used.saturating_add(others);
    }
    e.baseline = Some(state);
    e.own_since_baseline = 0;
    let observed = now.saturating_sub(e.observed_since_ms);
    if observed >= e.interval_ms {
        let busiest = u128::from(e.others_used.max(e.own_used));
        let per_interval = busiest * u128::from(e.interval_ms) / u128::from(observed);
        e.margin = u64::try_from(per_interval.saturating_mul(2))
            .unwrap_or(u64::MAX)
            .max(1);
        e.observed_since_ms = now;
        e.others_used = 0;
        e.own_used = 0;
    }
    e.known = Some(most_used(e.known, state, now, e.quota));
}

async fn sync_task(batches: Weak<Batches>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(batches) = batches.upgrade() else {
            return;
        };
        batches.sync_due().await;
    }
}
