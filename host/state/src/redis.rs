//! The `redis` backend: connections, keys and the scripts that make each call one atomic round
//! trip.
//!
//! Keys are `<key_prefix><plugin>:<kind>:…:<key>`: `c:<window>:<start>` for a counter's window,
//! `l:<algorithm>:<window>[:<limit>]` for a limit's state, `kv` for values. A counter's window start is in
//! its key, so a new window is a new key and the old one expires on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;
use wasmgate_config::{Redis, RedisServers, redact};
use wasmgate_counters::{Algorithm, LimitState, Quota, Window};
use wasmgate_telemetry::StateMetrics;

use crate::{Counter, StateError, Unavailable, millis};

/// How often an idle gateway checks that Redis answers, for `/ready` and the metrics.
const PING_EVERY: Duration = Duration::from_secs(1);

/// [`RedisStore::health`]'s values.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Adds ARGV[1] to a counter and (re)sets its expiry to ARGV[2] ms (0: none).
const COUNTER_ADD: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
";

/// Stores ARGV[3] (expiring after ARGV[4] ms, 0: never) if the value is ARGV[2] (ARGV[1] = '1')
/// or absent (ARGV[1] = '0').
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

/// The limit scripts take ARGV = now, window, limit, used, cost (all ms or units): they add
/// `used` units unconditionally (a batched gateway's local counts), then decide a request of
/// `cost` units (none when 0) exactly as `wasmgate_counters::decide` does, store the result with
/// the expiry `wasmgate_counters::ttl_ms` gives, and return the state as it was *before* the
/// decision, from which the gateway computes the verdict with the same function. Lua numbers
/// are doubles: exact for the integers involved (below 2^53).
///
/// Fixed window: a hash of `s` (window start) and `c` (count); every request counts.
const LIMIT_FIXED: &str = r"
local now, w, used, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
local start = now - (now % w)
local s, c = unpack(redis.call('HMGET', KEYS[1], 's', 'c'))
s, c = tonumber(s), tonumber(c) or 0
if s ~= start then c = 0 end
c = c + used
redis.call('HSET', KEYS[1], 's', start, 'c', c + cost)
redis.call('PEXPIRE', KEYS[1], start + w - now)
return {start, c}
";

/// Sliding window: a hash of `s` (window start), `c` (its count) and `p` (the previous
/// window's); a request counts when allowed.
const LIMIT_SLIDING: &str = r"
local now, w, limit, used, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local start = now - (now % w)
local s, c, p = unpack(redis.call('HMGET', KEYS[1], 's', 'c', 'p'))
s, c, p = tonumber(s), tonumber(c) or 0, tonumber(p) or 0
if s ~= start then
  if s == start - w then p = c else p = 0 end
  c = 0
end
c = c + used
local before = c
if cost > 0 and p * (w - (now - start)) + (c + cost) * w <= limit * w then c = c + cost end
redis.call('HSET', KEYS[1], 's', start, 'c', c, 'p', p)
redis.call('PEXPIRE', KEYS[1], start + 2 * w - now)
return {start, before, p}
";

/// Token bucket (GCRA): a string holding the theoretical arrival time. See
/// `wasmgate_counters::decide` for the arithmetic, which this mirrors.
const LIMIT_BUCKET: &str = include_str!("bucket.lua");

/// The scripts, loaded once (EVALSHA, with EVAL when the server does not know one yet).
struct Scripts {
    counter_add: Script,
    compare_and_swap: Script,
    fixed: Script,
    sliding: Script,
    bucket: Script,
}

/// One connection (multiplexed: concurrent commands are pipelined on it).
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from.
enum Connections {
    /// `pool_size` managers to one server, each reconnecting on its own, used in turn.
    Single {
        pool: Vec<ConnectionManager>,
        next: AtomicUsize,
    },
    /// A cluster connection (one multiplexed connection per node, routed by key slot), made
    /// on first use and again after a failed attempt.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        connection: OnceCell<ClusterConnection>,
    },
}

/// Redis as the shared state.
pub(crate) struct RedisStore {
    connections: Connections,
    prefix: String,
    timeout: Duration,
    scripts: Scripts,
    /// [`UNKNOWN`] until the first command or PING ends, then [`UP`] or [`DOWN`].
    health: AtomicU8,
    metrics: StateMetrics,
    /// Where the URL is named in errors and logs, password hidden.
    label: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("servers", &self.label)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Sets up the connections without waiting for them: they open on first use, and reopen
    /// after a failure. Must run inside a tokio runtime.
    pub(crate) fn connect(config: &Redis, metrics: StateMetrics) -> Result<Self, StateError> {
        let invalid = |url: &str, e: redis::RedisError| StateError::Redis {
            url: redact(url),
            reason: e.to_string(),
        };
        // A private CA for rediss://, instead of the system's roots.
        let certificates = match &config.ca {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| StateError::Redis {
                    url: path.display().to_string(),
                    reason: format!("cannot read the CA file: {e}"),
                })?),
            }),
            None => None,
        };
        let (connections, label) = match &config.servers {
            RedisServers::Single(url) => {
                let client = match certificates {
                    Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(|e| invalid(url, e))?;
                let settings = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout))
                    .set_response_timeout(Some(config.timeout))
                    // Reconnecting happens in the background; a command never waits for more
                    // than one attempt.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let pool = (0..config.pool_size)
                    .map(|_| {
                        ConnectionManager::new_lazy_with_config(client.clone(), settings.clone())
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(url, e))?;
                (
                    Connections::Single {
                        pool,
                        next: AtomicUsize::new(0),
                    },
                    redact(url),
                )
            }
            RedisServers::Cluster(urls) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .retries(1);
                if let Some(certs) = certificates {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(|e| invalid(&urls.join(","), e))?;
                (
                    Connections::Cluster {
                        client: Box::new(client),
                        connection: OnceCell::new(),
                    },
                    urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(","),
                )
            }
        };
        Ok(Self {
            connections,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            scripts: Scripts {
                counter_add: Script::new(COUNTER_ADD),
                compare_and_swap: Script::new(COMPARE_AND_SWAP),
                fixed: Script::new(LIMIT_FIXED),
                sliding: Script::new(LIMIT_SLIDING),
                bucket: Script::new(LIMIT_BUCKET),
            },
            health: AtomicU8::new(UNKNOWN),
            metrics,
            label,
        })
    }

    /// Whether the last command or PING got an answer (not before the first one did).
    pub(crate) fn available(&self) -> bool {
        self.health.load(Ordering::Relaxed) == UP
    }

    /// Opens every connection of the pool now, then PINGs Redis every [`PING_EVERY`] (from a
    /// task that ends with the store), so `/ready` and the metrics follow Redis even when no
    /// plugin calls it. Opening them up front keeps the first requests from paying for it: a
    /// TLS handshake can take longer than a hook's whole budget.
    pub(crate) fn watch_health(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(first) = store.upgrade() else { return };
            let connections = match &first.connections {
                Connections::Single { pool, .. } => pool.len(),
                Connections::Cluster { .. } => 1,
            };
            // Round-robin hands each of these PINGs its own connection.
            let mut pings = tokio::task::JoinSet::new();
            for _ in 0..connections {
                let store = first.clone();
                pings.spawn(async move { store.ping().await });
            }
            drop(first);
            pings.join_all().await;
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                store.ping().await;
            }
        });
    }

    async fn ping(&self) {
        let _: Result<String, _> = self
            .run("ping", self.timeout, |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await;
    }

    async fn connection(&self) -> Result<Connection, redis::RedisError> {
        match &self.connections {
            Connections::Single { pool, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % pool.len();
                Ok(Connection::Single(pool[i].clone()))
            }
            Connections::Cluster { client, connection } => connection
                .get_or_try_init(|| client.get_async_connection())
                .await
                .cloned()
                .map(Connection::Cluster),
        }
    }

    /// Runs one command within `budget` (and the configured timeout), recording its latency,
    /// failures and Redis's availability.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        budget: Duration,
        f: F,
    ) -> Result<T, Unavailable>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let limit = budget.min(self.timeout);
        let started = Instant::now();
        let attempt = async {
            let connection = self.connection().await?;
            f(connection).await
        };
        let outcome = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Unavailable::Failed(e.to_string())),
            Err(_) => Err(Unavailable::Timeout(limit)),
        };
        self.metrics.observe(op, started.elapsed());
        let up = outcome.is_ok();
        if !up {
            self.metrics.failed(op);
        }
        let health = if up { UP } else { DOWN };
        let was = self.health.swap(health, Ordering::Relaxed);
        if was != health {
            self.metrics.set_available(up);
            if up && was == UNKNOWN {
                tracing::info!(redis = %self.label, "shared state: connected to redis");
            } else if up {
                tracing::info!(redis = %self.label, "shared state: redis answers again");
            } else if let Err(e) = &outcome {
                tracing::warn!(redis = %self.label, "shared state: redis unavailable: {e}");
            }
        }
        outcome
    }

    /// `<prefix><plugin>:<kind>:<key>` from the runtime's `<plugin>\0<key>`.
    fn key(&self, kind: &str, key: &str) -> String {
        let (plugin, key) = key.split_once('\0').unwrap_or(("", key));
        let mut k =
            String::with_capacity(self.prefix.len() + plugin.len() + kind.len() + key.len() + 2);
        k.push_str(&self.prefix);
        k.push_str(plugin);
        k.push(':');
        k.push_str(kind);
        k.push(':');
        k.push_str(key);
        k
    }

    fn counter_key(&self, key: &str, window: Duration, now: u64) -> (String, Window) {
        let length = millis(window);
        let w = Window::containing(now, length);
        (self.key(&format!("c:{length}:{}", w.start_ms), key), w)
    }

    pub(crate) async fn counter_add(
        &self,
        key: &str,
        delta: i64,
        window: Duration,
        now: u64,
        budget: Duration,
    ) -> Result<Counter, Unavailable> {
        let (key, w) = self.counter_key(key, window, now);
        // Kept a second past its window, so a late reader still sees the final count.
        let expire = if window.is_zero() {
            0
        } else {
            w.remaining_ms.saturating_add(1000)
        };
        let script = &self.scripts.counter_add;
        let value: i64 = self
            .run("counter_add", budget, |mut c| async move {
                script
                    .key(key)
                    .arg(delta)
                    .arg(expire)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Counter {
            value,
            reset: Duration::from_millis(w.remaining_ms),
        })
    }

    pub(crate) async fn counter_get(
        &self,
        key: &str,
        window: Duration,
        now: u64,
        budget: Duration,
    ) -> Result<Counter, Unavailable> {
        let (key, w) = self.counter_key(key, window, now);
        let value: Option<i64> = self
            .run("counter_get", budget, |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(Counter {
            value: value.unwrap_or(0),
            reset: Duration::from_millis(w.remaining_ms),
        })
    }

    pub(crate) async fn kv_get(
        &self,
        key: &str,
        budget: Duration,
    ) -> Result<Option<String>, Unavailable> {
        let key = self.key("kv", key);
        self.run("kv_get", budget, |mut c| async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    pub(crate) async fn kv_set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        budget: Duration,
    ) -> Result<(), Unavailable> {
        let key = self.key("kv", key);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if !ttl.is_zero() {
            cmd.arg("PX").arg(millis(ttl));
        }
        self.run("kv_set", budget, |mut c| async move {
            cmd.query_async::<()>(&mut c).await
        })
        .await
    }

    pub(crate) async fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Duration,
        budget: Duration,
    ) -> Result<bool, Unavailable> {
        let key = self.key("kv", key);
        let script = &self.scripts.compare_and_swap;
        let stored: i64 = self
            .run("kv_compare_and_swap", budget, |mut c| async move {
                script
                    .key(key)
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or(""))
                    .arg(value)
                    .arg(millis(ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    pub(crate) async fn kv_delete(&self, key: &str, budget: Duration) -> Result<(), Unavailable> {
        let key = self.key("kv", key);
        self.run("kv_delete", budget, |mut c| async move {
            redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await
        })
        .await
    }

    /// Adds `used` units to `key`'s limit, then decides a request of `cost` units (none when
    /// 0), atomically; returns the state the decision was made on (after `used`).
    pub(crate) async fn limit(
        &self,
        key: &str,
        quota: Quota,
        used: u64,
        cost: u64,
        now: u64,
        budget: Duration,
    ) -> Result<LimitState, Unavailable> {
        let script = match quota.algorithm {
            Algorithm::FixedWindow => &self.scripts.fixed,
            Algorithm::SlidingWindow => &self.scripts.sliding,
            Algorithm::TokenBucket => &self.scripts.bucket,
        };
        let key = self.key("l", key);
        let op = if cost == 0 { "limit_sync" } else { "limit" };
        let reply: Vec<u64> = self
            .run(op, budget, |mut c| async move {
                script
                    .key(key)
                    .arg(now)
                    .arg(quota.window_ms)
                    .arg(quota.limit)
                    .arg(used)
                    .arg(cost)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let state = match (quota.algorithm, reply.as_slice()) {
            (Algorithm::FixedWindow, &[window_start_ms, count]) => LimitState::Fixed {
                window_start_ms,
                count,
            },
            (Algorithm::SlidingWindow, &[window_start_ms, current, previous]) => {
                LimitState::Sliding {
                    window_start_ms,
                    current,
                    previous,
                }
            }
            (Algorithm::TokenBucket, &[tat_slot]) => LimitState::Bucket { tat_slot },
            _ => {
                return Err(Unavailable::Failed(format!(
                    "unexpected reply from the limit script: {reply:?}"
                )));
            }
        };
        Ok(state)
    }
}
