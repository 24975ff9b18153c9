//! Wasmgate's per-route HTTP response cache.
//!
//! A shared cache in the sense of RFC 9111, in front of one route's upstream: the gateway calls
//! [`Cache::lookup`] once its plugins have run (authorization has happened) and before it sends
//! the request upstream.
//!
//! - [`Lookup::Hit`]: answer with the stored response, no upstream request.
//! - [`Lookup::Miss`]: send the request upstream and pass the response through
//!   [`Fill::record`]; the client gets the body as it streams in while it is recorded, and the
//!   entry is stored once the body ended cleanly.
//! - [`Lookup::Bypass`]: send the request upstream untouched and answer with `x-cache: BYPASS`.
//!
//! A burst of misses for one key sends one request upstream: the first lookup gets the
//! [`Fill`], the others wait (at most [`Rules::lock_timeout`]) and are answered from what it stored,
//! like nginx's `proxy_cache_lock`.
//!
//! Validators (RFC 9111 §4.3):
//!
//! - A conditional request (`If-None-Match`, or `If-Modified-Since` without it) that hits is
//!   answered `304 Not Modified` when the stored response satisfies it.
//! - A stale entry carrying an `ETag` or `Last-Modified` is kept for [`Rules::keep`]; a miss on it
//!   gets [`Fill::revalidate`], which turns the upstream request into a conditional one with the
//!   stored validators. A `304` from the upstream refreshes the entry (its headers updated from
//!   the `304`, a new lifetime) and the client is answered from it (`x-cache: REVALIDATED`), so
//!   the body is not sent again.
//!
//! What this version does not do, on purpose:
//!
//! - A response with `Cache-Control: no-cache` (reusable only after revalidating every time) is
//!   not stored, and `stale-while-revalidate` / `stale-if-error` / request `max-stale` are
//!   ignored: a stale entry is never served without asking the upstream.
//! - Whole responses only: a request with `Range` bypasses the cache and a `206` is never stored.
//! - A conditional request that misses goes upstream with its own conditions, so a `304` from
//!   the upstream passes to the client and nothing is stored.
//! - Memory only: entries do not survive a restart or a configuration reload that builds a new
//!   [`Cache`].

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, LastModified};
use http::header::{
    AGE, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, EXPIRES,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, PRAGMA, RANGE, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use tokio::sync::watch;

mod directives;
mod record;

use directives::{Client, Directives};
pub use record::Recording;

#[cfg(test)]
mod tests;

/// The `x-cache` response header: [`Status::as_str`] of how the cache answered.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Variants (responses that differ by the request headers their `Vary` names) kept per key; a new
/// one replaces the oldest beyond this.
const MAX_VARIANTS: usize = 8;

/// RFC 9111 §1.2.2: delta-seconds beyond 2^31 mean 2^31. Also keeps `Instant` arithmetic far
/// from overflowing.
const MAX_LIFETIME: Duration = Duration::from_secs(1 << 31);

/// Bookkeeping bytes counted per key and per variant on top of the bytes they hold, so many tiny
/// entries still count for something.
const KEY_OVERHEAD: u64 = 64;
const VARIANT_OVERHEAD: u64 = 128;

/// A route's cache settings (from `cache = { ... }` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Freshness lifetime of storable responses that carry no explicit lifetime (no `s-maxage`,
    /// `max-age` or `Expires`); an `Age` from the upstream counts against it. Explicit lifetimes
    /// from the upstream win (`s-maxage` over `max-age` over `Expires`, as for a shared cache).
    /// Zero stores only responses with an explicit lifetime. Default 30 s.
    pub ttl: Duration,
    /// Memory bound for the route's entries in bytes (body, header names and values, key, plus a
    /// small per-entry overhead). The least recently used entries are evicted beyond it.
    /// Default 64 MiB.
    pub max_size: u64,
    /// Largest single response body stored, in bytes. Bigger responses stream through to the
    /// client unstored. Default 1 MiB.
    pub max_entry_size: u64,
    /// Methods looked up: `GET` and/or `HEAD`; any other method bypasses the cache. A `HEAD` is
    /// answered from the `GET` entry; a `HEAD` miss bypasses (it is sent upstream, nothing is
    /// stored). Only `GET` responses are stored, so `HEAD` alone never hits. Default both.
    pub methods: Vec<Method>,
    /// Request headers whose values are part of the key (e.g. a consumer id a plugin set,
    /// `Accept-Language`). Upstream `Vary` is honoured on top of these.
    pub vary: Vec<HeaderName>,
    /// Whether the client's request directives count: `Cache-Control: no-store` bypasses the
    /// cache, `no-cache`, `max-age=0` (or `Pragma: no-cache` without Cache-Control) send the
    /// request upstream and refresh the entry, `max-age=N` refuses entries older than N seconds.
    /// Default false: clients cannot make the upstream work (nginx's default).
    pub client_no_cache: bool,
    /// How long a lookup waits for another request filling the same key before it goes upstream
    /// itself (nginx's `proxy_cache_lock_timeout`). Default 5 s.
    pub lock_timeout: Duration,
    /// How long a stale response with a validator (`ETag`, `Last-Modified`) is kept for
    /// revalidation (Varnish's `keep`); within [`Rules::max_size`] like any entry. Zero drops
    /// entries when they go stale. Default 10 minutes.
    pub keep: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            max_size: 64 * 1024 * 1024,
            max_entry_size: 1024 * 1024,
            methods: vec![Method::GET, Method::HEAD],
            vary: Vec::new(),
            client_no_cache: false,
            lock_timeout: Duration::from_secs(5),
            keep: Duration::from_secs(600),
        }
    }
}

/// How the cache answered, for the [`X_CACHE`] response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Answered from the cache.
    Hit,
    /// Sent upstream, the response may be stored.
    Miss,
    /// Sent upstream, the cache took no part.
    Bypass,
    /// A stale entry the upstream confirmed with a `304`: answered from the cache, refreshed.
    Revalidated,
}

impl Status {
    /// The header value: `HIT`, `MISS`, `BYPASS` or `REVALIDATED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
            Self::Revalidated => "REVALIDATED",
        }
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// The result of [`Cache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// A fresh stored response: status and headers as stored plus `Age` and `x-cache: HIT`;
    /// the stored body, or an empty one for `HEAD` (its `Content-Length` stays as stored). A
    /// `304` with no body when the request's `If-None-Match` / `If-Modified-Since` holds for it.
    Hit(Response<Bytes>),
    /// Not stored, stale, or a client refresh (when honoured): call [`Fill::revalidate`] on the
    /// request, send it upstream and pass the response through [`Fill::record`].
    Miss(Fill),
    /// Not cacheable (a method not in [`Rules::methods`], a `HEAD` miss, a `Range` request, a
    /// client `no-store` when honoured): send the request upstream untouched and answer with
    /// `x-cache: BYPASS`.
    Bypass,
}

/// The part of a lookup decided at once.
enum Start {
    Decided(Lookup),
    Miss(Key, Client),
}

/// One route's response cache. Not `Clone`: the gateway shares it in an `Arc`.
pub struct Cache {
    inner: Arc<Inner>,
}

type EvictionFn = Arc<dyn Fn(u64) + Send + Sync>;

struct Inner {
    rules: Rules,
    store: moka::sync::Cache<Key, Arc<Slot>>,
    /// Keys being filled now. Touched on misses only, so one lock is enough.
    fills: Mutex<HashMap<Key, Flight>>,
    next_fill: AtomicU64,
    /// Bumped by every purge; a fill that started before one does not store (its response may
    /// predate the purge). A lock rather than an atomic: a store holds it (shared) from its check
    /// to its insert, so no store of an older fill can land after a purge's sweep began.
    epoch: RwLock<u64>,
    on_eviction: Arc<RwLock<Option<EvictionFn>>>,
    clock: Clock,
}

impl Cache {
    /// A cache for one route, empty.
    pub fn new(rules: Rules) -> Self {
        let on_eviction: Arc<RwLock<Option<EvictionFn>>> = Arc::default();
        let listener = Arc::clone(&on_eviction);
        let store = moka::sync::Cache::builder()
            .max_capacity(rules.max_size)
            // TinyLFU (moka's default) may refuse to admit a new response in favour of old
            // ones; a proxy cache should serve what was fetched last.
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_: &Key, slot: &Arc<Slot>| slot.weight)
            .expire_after(SlotExpiry)
            .eviction_listener(move |_, slot: Arc<Slot>, cause| {
                if cause == RemovalCause::Size {
                    let f = read(&listener).clone();
                    if let Some(f) = f {
                        f(u64::from(slot.weight));
                    }
                }
            })
            .build();
        Self {
            inner: Arc::new(Inner {
                rules,
                store,
                fills: Mutex::default(),
                next_fill: AtomicU64::new(0),
                epoch: RwLock::new(0),
                on_eviction,
                clock: Clock::default(),
            }),
        }
    }

    /// The settings this cache was built with.
    pub fn rules(&self) -> &Rules {
        &self.inner.rules
    }

    /// Calls `f(bytes)` for each entry evicted to make room (its weight as counted against
    /// [`Rules::max_size`]); not for expiry, replacement or purge. Meant for a metrics counter;
    /// `f` runs on the thread that triggered the eviction and must be quick and not panic.
    /// A later call replaces an earlier `f`.
    pub fn on_eviction(self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        *write(&self.inner.on_eviction) = Some(Arc::new(f));
        self
    }

    /// Looks `req` up (see [`Lookup`]). When another request is filling the same key, waits for it
    /// (at most [`Rules::lock_timeout`]) and answers from what it stored; if it stored nothing
    /// the waiters are released at once and each goes upstream. Dropping the future is fine at
    /// any point.
    ///
    /// The key is the host (URI authority or `Host`, lowercased, port kept), the path and query
    /// exactly as in the URI, and the values of the [`Rules::vary`] request headers; `GET` and
    /// `HEAD` share it. Requests with different values of a header the upstream `Vary` names share
    /// the key (and the wait for a fill) but not the stored response.
    pub async fn lookup(&self, req: &http::request::Parts) -> Lookup {
        self.lookup_from(req, None).await
    }

    /// [`lookup`](Self::lookup) with the name of the upstream the request goes to as part of
    /// the key, for a route that splits its traffic between upstreams: each upstream's responses
    /// are stored apart, so a request pinned to a canary never gets the stable version's answer
    /// (as nginx's default key has the upstream's name in it). `None` is `lookup`.
    pub async fn lookup_from(&self, req: &http::request::Parts, upstream: Option<&str>) -> Lookup {
        let (key, client) = match self.start(req, upstream) {
            Start::Decided(lookup) => return lookup,
            Start::Miss(key, client) => (key, client),
        };
        // A miss is a GET's (a HEAD's bypasses): the looks below answer a GET.
        let inner = &self.inner;
        let rules = &inner.rules;
        if client.refresh {
            // The client wants the upstream's answer now, not one that is being fetched.
            return Lookup::Miss(inner.fill(key, req, true));
        }
        let deadline = tokio::time::Instant::now() + rules.lock_timeout;
        loop {
            let mut flight = match inner.lead_or_follow(&key, req) {
                Ok(fill) => {
                    // A fill may have stored and left between our look and taking the lead.
                    if let Some(hit) = inner.find(&key, &req.headers, false, client.max_age) {
                        fill.stored();
                        return Lookup::Hit(hit);
                    }
                    return Lookup::Miss(fill);
                }
                Err(flight) => flight,
            };
            let outcome = tokio::time::timeout_at(
                deadline,
                flight.wait_for(|outcome| *outcome != Outcome::Pending),
            )
            .await;
            let outcome = match outcome {
                // Waited long enough: go upstream without the lock, and store too if that works.
                Err(_elapsed) => return Lookup::Miss(inner.fill(key, req, false)),
                Ok(Ok(outcome)) => *outcome,
                Ok(Err(_closed)) => Outcome::Abandoned,
            };
            match outcome {
                Outcome::Stored => {
                    if let Some(hit) = inner.find(&key, &req.headers, false, client.max_age) {
                        return Lookup::Hit(hit);
                    }
                    // Stored another Vary variant (or it is gone already): try again.
                }
                // The upstream's answer was not storable (or broke off): the others would not get
                // anything from waiting in line, so all go upstream now; the first takes the lock
                // for newcomers.
                Outcome::Abandoned | Outcome::Pending => {
                    return Lookup::Miss(inner.fill(key, req, true));
                }
            }
        }
    }

    /// The answer [`lookup`](Self::lookup) would give `req` when it needs no waiting: a fresh
    /// hit, or `None` (a miss, which only `lookup` can fill, or a bypass). Nothing is counted
    /// or locked; a request's hot path can answer from here and call `lookup` only on `None`.
    pub fn fresh(&self, req: &http::request::Parts) -> Option<Response<Bytes>> {
        match self.start(req, None) {
            Start::Decided(Lookup::Hit(hit)) => Some(hit),
            _ => None,
        }
    }

    /// What a lookup decides without waiting: a hit or a bypass, or the key of a miss.
    fn start(&self, req: &http::request::Parts, upstream: Option<&str>) -> Start {
        let inner = &self.inner;
        let rules = &inner.rules;
        let head = req.method == Method::HEAD;
        if !(head || req.method == Method::GET)
            || !rules.methods.contains(&req.method)
            || req.headers.contains_key(RANGE)
        {
            return Start::Decided(Lookup::Bypass);
        }
        let client = if rules.client_no_cache {
            Client::parse(&req.headers)
        } else {
            Client::default()
        };
        if client.no_store {
            return Start::Decided(Lookup::Bypass);
        }
        let key = Key::new(req, rules, upstream);
        if !client.refresh
            && let Some(hit) = inner.find(&key, &req.headers, head, client.max_age)
        {
            return Start::Decided(Lookup::Hit(hit));
        }
        if head {
            return Start::Decided(Lookup::Bypass);
        }
        Start::Miss(key, client)
    }

    /// Drops every entry. Fills in progress do not store what they fetched.
    pub fn purge_all(&self) {
        self.inner.next_epoch();
        self.inner.store.invalidate_all();
    }

    /// Drops the entries of a path on every host, with every variant: with a query (`/a?x=1`)
    /// that exact path and query, without one (`/a`) the path with any query or none. Fills in
    /// progress (of any path) do not store what they fetched.
    ///
    /// Returns how many keys were dropped (a key holds every `Vary` variant of one request
    /// target, [`Rules::vary`] values and, through [`lookup_from`](Self::lookup_from), upstream). Best effort under concurrent use: an entry stored while
    /// the purge runs may or may not be counted and dropped.
    pub fn purge(&self, path_and_query: &str) -> u64 {
        self.inner.next_epoch();
        let store = &self.inner.store;
        let mut purged = 0;
        for (key, _) in store.iter() {
            if key.purged_by(path_and_query) {
                store.invalidate(&*key);
                purged += 1;
            }
        }
        purged
    }

    /// Keys held now. Eventually consistent: counts lag pending maintenance (insertions,
    /// evictions and invalidations are applied in batches).
    pub fn entries(&self) -> u64 {
        self.inner.store.entry_count()
    }

    /// Bytes held now, as weighed against [`Rules::max_size`]. Lags like [`Cache::entries`].
    pub fn bytes(&self) -> u64 {
        self.inner.store.weighted_size()
    }
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("rules", &self.inner.rules)
            .field("entries", &self.entries())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Starts a purge: once this returns, every store of an older fill has either landed (and the
    /// purge's sweep will see it) or will be skipped.
    fn next_epoch(&self) {
        *write(&self.epoch) += 1;
    }

    /// A fresh variant of `key` matching `headers`, as a hit response.
    fn find(
        &self,
        key: &Key,
        headers: &HeaderMap,
        head: bool,
        max_age: Option<Duration>,
    ) -> Option<Response<Bytes>> {
        let slot = self.store.get(key)?;
        let now = self.clock.now();
        // Newest first: a variant stored later supersedes an older one that also matches.
        let variant = slot
            .variants
            .iter()
            .rev()
            .find(|v| now < v.expires_at && v.matches(headers))?;
        let age = variant.age(now);
        if max_age.is_some_and(|max_age| age > max_age) {
            return None;
        }
        Some(variant.answer(headers, head, age, Status::Hit))
    }

    /// The newest variant of `key` matching `headers` that can be revalidated, fresh or stale.
    fn revalidatable(&self, key: &Key, headers: &HeaderMap) -> Option<Arc<Variant>> {
        let slot = self.store.get(key)?;
        let now = self.clock.now();
        slot.variants
            .iter()
            .rev()
            .find(|v| {
                v.has_validator() && now < v.kept_until(self.rules.keep) && v.matches(headers)
            })
            .cloned()
    }

    /// The exclusive fill of `key` if no one fills it, else a wait for the fill in progress.
    fn lead_or_follow(
        self: &Arc<Self>,
        key: &Key,
        req: &http::request::Parts,
    ) -> Result<Fill, watch::Receiver<Outcome>> {
        let mut fills = lock(&self.fills);
        match fills.entry(key.clone()) {
            MapEntry::Occupied(flight) => Err(flight.get().done.clone()),
            MapEntry::Vacant(vacant) => Ok(self.lead(vacant, key, req)),
        }
    }

    /// A fill of `key` that does not wait: exclusive if no one fills the key (when `lead`), else one
    /// that stores alongside the fill in progress.
    fn fill(self: &Arc<Self>, key: Key, req: &http::request::Parts, lead: bool) -> Fill {
        let mut fills = lock(&self.fills);
        match fills.entry(key.clone()) {
            MapEntry::Vacant(vacant) if lead => self.lead(vacant, &key, req),
            _ => Fill::new(self, key, req, None),
        }
    }

    fn lead(
        self: &Arc<Self>,
        vacant: std::collections::hash_map::VacantEntry<'_, Key, Flight>,
        key: &Key,
        req: &http::request::Parts,
    ) -> Fill {
        let id = self.next_fill.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(Outcome::Pending);
        vacant.insert(Flight { id, done: rx });
        let lead = Lead {
            inner: Arc::clone(self),
            key: key.clone(),
            id,
            done: tx,
            outcome: Outcome::Abandoned,
        };
        Fill::new(self, key.clone(), req, Some(lead))
    }
}

/// Our notion of now, for freshness and `Age`. Tests move it forward instead of sleeping; moka
/// keeps its own clock, which only decides when memory of expired entries is reclaimed.
#[derive(Debug, Default)]
struct Clock {
    #[cfg(test)]
    skew: Mutex<Duration>,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::now() + self.skew()
    }

    fn system_now(&self) -> SystemTime {
        SystemTime::now() + self.skew()
    }

    #[cfg(not(test))]
    fn skew(&self) -> Duration {
        Duration::ZERO
    }

    #[cfg(test)]
    fn skew(&self) -> Duration {
        *lock(&self.skew)
    }

    #[cfg(test)]
    fn advance(&self, by: Duration) {
        *lock(&self.skew) += by;
    }
}

/// A key being filled: lookups of it wait for `done` to leave `Pending`.
#[derive(Debug)]
struct Flight {
    id: u64,
    done: watch::Receiver<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    /// An entry was stored (or found): look again.
    Stored,
    /// Nothing was stored: waiting longer is pointless.
    Abandoned,
}

/// The exclusive right to fill a key; dropping it wakes the key's waiters.
struct Lead {
    inner: Arc<Inner>,
    key: Key,
    id: u64,
    done: watch::Sender<Outcome>,
    outcome: Outcome,
}

impl fmt::Debug for Lead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lead")
            .field("id", &self.id)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        {
            let mut fills = lock(&self.inner.fills);
            // A later fill of the key may hold the slot if ours was never registered or replaced.
            if fills.get(&self.key).is_some_and(|f| f.id == self.id) {
                fills.remove(&self.key);
            }
        }
        self.done.send_replace(self.outcome);
    }
}

/// The right to fill one key, from [`Lookup::Miss`]: pass the upstream's response through
/// [`Fill::record`]. Dropping it without recording (an upstream error, say) or a recorded body
/// that breaks off releases the requests waiting for this key, which then go upstream themselves.
pub struct Fill {
    inner: Arc<Inner>,
    key: Key,
    /// The request as the upstream's response is judged against it (`GET`, without the client's
    /// Cache-Control, which only counts at lookup and only when honoured).
    /// Boxed: a `Fill` travels inside [`Lookup`] and [`Recording`].
    request: Box<Request<()>>,
    epoch: u64,
    lead: Option<Lead>,
    /// The stored response the upstream may confirm, and whether [`Fill::revalidate`] asked it
    /// to.
    stale: Option<Arc<Variant>>,
    revalidating: bool,
}

impl fmt::Debug for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fill")
            .field("key", &self.key)
            .field("exclusive", &self.lead.is_some())
            .finish_non_exhaustive()
    }
}

impl Fill {
    fn new(inner: &Arc<Inner>, key: Key, req: &http::request::Parts, lead: Option<Lead>) -> Self {
        let mut request = Request::new(());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = req.uri.clone();
        let headers = request.headers_mut();
        headers.clone_from(&req.headers);
        headers.remove(CACHE_CONTROL);
        headers.remove(PRAGMA);
        let stale = inner.revalidatable(&key, &req.headers);
        Self {
            inner: Arc::clone(inner),
            key,
            request: Box::new(request),
            epoch: *read(&inner.epoch),
            lead,
            stale,
            revalidating: false,
        }
    }

    /// Makes the upstream request (its `headers`) conditional on the stored response this miss
    /// found stale (or the client asked to refresh), if it has a validator: the client's own
    /// `If-None-Match` and `If-Modified-Since` are replaced by the stored `ETag` and
    /// `Last-Modified`, so that a `304` can refresh the entry. The client's conditions still
    /// decide its answer (see [`Fill::record`]). Does nothing when there is no such response.
    pub fn revalidate(&mut self, headers: &mut HeaderMap) {
        let Some(stale) = &self.stale else {
            return;
        };
        headers.remove(IF_NONE_MATCH);
        headers.remove(IF_MODIFIED_SINCE);
        if let Some(etag) = stale.headers.get(http::header::ETAG) {
            headers.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(last_modified) = stale.headers.get(LAST_MODIFIED) {
            headers.insert(IF_MODIFIED_SINCE, last_modified.clone());
        }
        self.revalidating = true;
    }

    /// Marks the lead as having left something to find, so that waiters look again.
    fn stored(mut self) {
        if let Some(lead) = &mut self.lead {
            lead.outcome = Outcome::Stored;
        }
    }

    /// Takes the upstream's response to the request this fill was made for, and returns it with
    /// `x-cache: MISS` added and a body that passes every frame on unchanged as it arrives.
    ///
    /// When the response is storable the body is recorded on the way, and once it ended cleanly
    /// (no error, no trailers, within [`Rules::max_entry_size`] and its `Content-Length`) the
    /// entry is stored and the requests waiting for this key are answered from it. Otherwise the
    /// waiters are released at once (an unstorable response) or when the body stops (an error, a
    /// body that grew too big, a client that went away).
    ///
    /// Storable, as a shared cache (RFC 9111 §3): a status http-cache-semantics accepts (200,
    /// 203, 204, 300, 301, 308, 404, 405, 410, 414, 501; 302, 303, 307 only with an explicit
    /// lifetime or `public`; never others such as 206 or 5xx but 501); no `no-store`, `private` or
    /// `no-cache` (nor `Pragma: no-cache` without Cache-Control: this cache does not revalidate); no
    /// `Authorization` on the request unless the response says `public`, `s-maxage` or
    /// `must-revalidate`; no `Set-Cookie`; no `Vary: *`; a `Content-Length` (if any) within
    /// [`Rules::max_entry_size`]; a lifetime left: the explicit one (`s-maxage`, `max-age`,
    /// `Expires` against `Date`) or else [`Rules::ttl`], minus the upstream's `Age`.
    ///
    /// The entry keeps the response headers minus hop-by-hop ones (`Connection` and the fields
    /// it names, `Keep-Alive`, `Transfer-Encoding`, `TE`, `Trailer`, `Upgrade`, `Proxy-*`), `Age`
    /// and `x-cache`.
    ///
    /// After [`Fill::revalidate`], a `304` from the upstream refreshes the stored response instead:
    /// its headers are updated from the `304`'s (all but `Content-Length`, `Content-Encoding` and
    /// the hop-by-hop ones), its lifetime computed again as for a new response, and the client is
    /// answered from it with `x-cache: REVALIDATED` — or `304` itself when its own conditions
    /// hold ([`Recording::is_revalidated`] tells). Should the updated headers forbid storing it,
    /// the entry is dropped and the client still gets it, once.
    pub fn record<B>(self, response: Response<B>) -> Response<Recording<B>>
    where
        B: http_body::Body<Data = Bytes> + Unpin,
    {
        if let Some(stale) = self.stale.as_ref().filter(|_| self.revalidating)
            && response.status() == StatusCode::NOT_MODIFIED
        {
            let stale = Arc::clone(stale);
            return self.refresh(stale, response.into_parts().0);
        }
        let (mut parts, body) = response.into_parts();
        let recorder = match self.plan(&parts, body.size_hint().lower()) {
            Some(plan) => Some(record::Recorder::new(self, plan)),
            None => {
                drop(self);
                None
            }
        };
        parts.headers.insert(X_CACHE, Status::Miss.header_value());
        Response::from_parts(parts, Recording::new(body, recorder))
    }

    /// What to store of `response`, if it is storable.
    fn plan(&self, response: &http::response::Parts, body_at_least: u64) -> Option<Plan> {
        let rules = &self.inner.rules;
        let headers = &response.headers;
        if headers.contains_key(SET_COOKIE) {
            return None;
        }
        let content_length = match headers.get(CONTENT_LENGTH) {
            Some(value) => Some(value.to_str().ok()?.trim().parse::<u64>().ok()?),
            None => None,
        };
        if content_length.unwrap_or(0).max(body_at_least) > rules.max_entry_size {
            return None;
        }
        let cc = Directives::parse(headers, &CACHE_CONTROL);
        let pragma_no_cache = !headers.contains_key(CACHE_CONTROL)
            && Directives::parse(headers, &PRAGMA).has("no-cache");
        if cc.has("no-cache") || pragma_no_cache {
            return None;
        }
        let vary = vary_names(headers)?;

        let now = self.inner.clock.now();
        let system_now = self.inner.clock.system_now();
        let options = CacheOptions {
            shared: true,
            cache_heuristic: 0.0,
            immutable_min_time_to_live: Duration::ZERO,
            ignore_cargo_cult: false,
        };
        let policy = if cc.has("proxy-revalidate") {
            // http-cache-semantics reads proxy-revalidate as "lifetime 0"; it only forbids serving
            // stale, which this cache never does.
            let mut stripped = Response::new(());
            *stripped.status_mut() = response.status;
            *stripped.headers_mut() = headers.clone();
            let kept = without_directive(headers, "proxy-revalidate");
            stripped.headers_mut().remove(CACHE_CONTROL);
            if let Some(kept) = kept {
                stripped.headers_mut().insert(CACHE_CONTROL, kept);
            }
            CachePolicy::new_options(&*self.request, &stripped, system_now, options)
        } else {
            CachePolicy::new_options(&*self.request, response, system_now, options)
        };
        if !policy.is_storable() {
            return None;
        }
        let upstream_age = headers
            .get(AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let explicit = cc.has("s-maxage") || cc.has("max-age") || headers.contains_key(EXPIRES);
        let lifetime = if explicit {
            policy.time_to_live(system_now)
        } else {
            rules.ttl.saturating_sub(upstream_age)
        }
        .min(MAX_LIFETIME);
        if lifetime.is_zero() {
            return None;
        }

        let vary = vary
            .into_iter()
            .map(|name| {
                let value = header_value(self.request.headers(), &name);
                (name, value)
            })
            .collect();
        Some(Plan {
            status: response.status,
            headers: stored_headers(headers),
            vary,
            stored_at: now,
            expires_at: now + lifetime,
            upstream_age,
            content_length,
        })
    }

    /// The stored response (`stale`) confirmed by the upstream's `304` (`confirmed`), refreshed
    /// and stored again, as the client's answer.
    fn refresh<B>(
        self,
        stale: Arc<Variant>,
        confirmed: http::response::Parts,
    ) -> Response<Recording<B>> {
        let mut headers = stale.headers.clone();
        for name in confirmed.headers.keys() {
            if *name == CONTENT_LENGTH || *name == CONTENT_ENCODING || *name == CONTENT_RANGE {
                continue;
            }
            headers.remove(name);
            for value in confirmed.headers.get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        let (mut head, ()) = Response::new(()).into_parts();
        head.status = stale.status;
        head.headers = headers;
        let now = self.inner.clock.now();
        let answer = match self.plan(&head, stale.body.len() as u64) {
            Some(plan) => {
                let variant = Arc::new(Variant::new(&plan, stale.body.clone()));
                let answer = variant.answer(
                    self.request.headers(),
                    false,
                    variant.age(now),
                    Status::Revalidated,
                );
                self.put(variant);
                answer
            }
            // The upstream's headers now forbid keeping it (`no-store`, say): the entry goes, and
            // the client gets it this once, with those headers.
            None => {
                self.inner.store.invalidate(&self.key);
                let plan = Plan {
                    status: stale.status,
                    headers: stored_headers(&head.headers),
                    vary: stale.vary.clone(),
                    stored_at: now,
                    expires_at: now,
                    upstream_age: Duration::ZERO,
                    content_length: None,
                };
                Variant::new(&plan, stale.body.clone()).answer(
                    self.request.headers(),
                    false,
                    Duration::ZERO,
                    Status::Revalidated,
                )
            }
        };
        answer.map(Recording::stored)
    }

    /// Stores a recorded response under this fill's key, next to the variants the key holds.
    fn store(self, plan: Plan, body: Bytes) {
        self.put(Arc::new(Variant::new(&plan, body)));
    }

    fn put(mut self, variant: Arc<Variant>) {
        let keep = self.inner.rules.keep;
        let inner = &self.inner;
        {
            let epoch = read(&inner.epoch);
            if *epoch != self.epoch {
                return;
            }
            let now = inner.clock.now();
            let key_weight = self.key.weight();
            let request = &self.request;
            inner
                .store
                .entry(self.key.clone())
                .and_compute_with(|existing| {
                    let mut variants: Vec<Arc<Variant>> = existing
                        .map(|entry| {
                            entry
                                .into_value()
                                .variants
                                .iter()
                                // The new response supersedes what this request would have found.
                                .filter(|v| {
                                    now < v.kept_until(keep) && !v.matches(request.headers())
                                })
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    variants.push(variant);
                    if variants.len() > MAX_VARIANTS {
                        variants.remove(0);
                    }
                    Op::Put(Arc::new(Slot::new(variants, key_weight, now, keep)))
                });
        }
        if let Some(lead) = &mut self.lead {
            lead.outcome = Outcome::Stored;
        }
    }
}

impl Variant {
    fn new(plan: &Plan, body: Bytes) -> Self {
        let weight = VARIANT_OVERHEAD
            + body.len() as u64
            + plan
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.len()) as u64)
                .sum::<u64>()
            + plan
                .vary
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.as_ref().map_or(0, |v| v.len())) as u64)
                .sum::<u64>();
        Variant {
            status: plan.status,
            headers: plan.headers.clone(),
            body,
            vary: plan.vary.clone(),
            stored_at: plan.stored_at,
            expires_at: plan.expires_at,
            upstream_age: plan.upstream_age,
            weight,
        }
    }
}

/// What [`Fill::record`] decided to store, waiting for the body.
#[derive(Debug)]
struct Plan {
    status: StatusCode,
    headers: HeaderMap,
    vary: Vec<(HeaderName, Option<Box<[u8]>>)>,
    stored_at: Instant,
    expires_at: Instant,
    upstream_age: Duration,
    content_length: Option<u64>,
}

/// Cache key: what identifies a request target for this route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: Box<str>,
    path_and_query: Box<str>,
    /// Values of [`Rules::vary`], in its order.
    vary: Box<[Option<Box<[u8]>>]>,
    /// The upstream of [`Cache::lookup_from`].
    upstream: Option<Box<str>>,
}

impl Key {
    fn new(req: &http::request::Parts, rules: &Rules, upstream: Option<&str>) -> Self {
        let host = match req.uri.authority() {
            // Userinfo is not part of the origin.
            Some(authority) => authority.as_str().rsplit('@').next().unwrap_or_default(),
            None => req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
        };
        Self {
            host: host.trim().to_ascii_lowercase().into(),
            path_and_query: req
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .into(),
            vary: rules
                .vary
                .iter()
                .map(|name| header_value(&req.headers, name))
                .collect(),
            upstream: upstream.map(Box::from),
        }
    }

    fn weight(&self) -> u64 {
        (self.host.len()
            + self.path_and_query.len()
            + self.vary.iter().flatten().map(|v| v.len()).sum::<usize>()
            + self.upstream.as_ref().map_or(0, |u| u.len())) as u64
            + KEY_OVERHEAD
    }

    fn purged_by(&self, target: &str) -> bool {
        if target.contains('?') {
            *self.path_and_query == *target
        } else {
            self.path_and_query.split('?').next() == Some(target)
        }
    }
}

/// All variants stored under one key.
#[derive(Debug)]
struct Slot {
    variants: Vec<Arc<Variant>>,
    weight: u32,
    /// Until the last variant is dropped (expired, and past `keep` when it can be revalidated);
    /// moka drops the slot then.
    ttl: Duration,
}

impl Slot {
    fn new(variants: Vec<Arc<Variant>>, key_weight: u64, now: Instant, keep: Duration) -> Self {
        let weight = key_weight + variants.iter().map(|v| v.weight).sum::<u64>();
        let ttl = variants
            .iter()
            .map(|v| v.kept_until(keep).saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        Self {
            variants,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            ttl,
        }
    }
}

/// One stored response.
#[derive(Debug)]
struct Variant {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The request's values of the headers the response's `Vary` names.
    vary: Vec<(HeaderName, Option<Box<[u8]>>)>,
    stored_at: Instant,
    expires_at: Instant,
    upstream_age: Duration,
    weight: u64,
}

impl Variant {
    /// This response as the answer to a request with `headers`: `304` (no body, no
    /// representation metadata) when its preconditions say the client's copy is current.
    fn answer(
        &self,
        headers: &HeaderMap,
        head: bool,
        age: Duration,
        status: Status,
    ) -> Response<Bytes> {
        let not_modified = self.status == StatusCode::OK && !self.modified_for(headers);
        let mut response = Response::new(if head || not_modified {
            Bytes::new()
        } else {
            self.body.clone()
        });
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = not_modified_headers(&self.headers);
        } else {
            *response.status_mut() = self.status;
            // Built rather than cloned: a clone has no room left, and the fields added next
            // (here and by the server: `x-request-id`) would each grow it again.
            let mut answer = HeaderMap::with_capacity(self.headers.len() + 3);
            for (name, value) in &self.headers {
                answer.append(name, value.clone());
            }
            *response.headers_mut() = answer;
        }
        let headers = response.headers_mut();
        headers.insert(AGE, HeaderValue::from(age.as_secs()));
        headers.insert(X_CACHE, status.header_value());
        response
    }

    /// RFC 9110 §13.2.2: `If-None-Match` decides when present (weak comparison, `*` matches any
    /// stored response); otherwise `If-Modified-Since` against `Last-Modified`. Unparsable
    /// conditions are ignored, as the RFC asks.
    fn modified_for(&self, request: &HeaderMap) -> bool {
        if request.contains_key(IF_NONE_MATCH) {
            let Some(condition) = request.typed_get::<IfNoneMatch>() else {
                return true;
            };
            return match self.headers.typed_get::<ETag>() {
                Some(etag) => condition.precondition_passes(&etag),
                // Only `*` matches a response without a tag.
                None => condition != IfNoneMatch::any(),
            };
        }
        match (
            request.typed_get::<IfModifiedSince>(),
            self.headers.typed_get::<LastModified>(),
        ) {
            (Some(since), Some(last_modified)) => {
                since.is_modified(SystemTime::from(last_modified))
            }
            _ => true,
        }
    }

    fn has_validator(&self) -> bool {
        self.headers.contains_key(http::header::ETAG) || self.headers.contains_key(LAST_MODIFIED)
    }

    /// Until when the entry is kept: its freshness, and `keep` beyond it when it can be
    /// revalidated.
    fn kept_until(&self, keep: Duration) -> Instant {
        if self.has_validator() {
            self.expires_at + keep
        } else {
            self.expires_at
        }
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| header_value(headers, name) == *value)
    }

    /// What http-cache-semantics' `age()` computes: the upstream's `Age` plus the time stored.
    fn age(&self, now: Instant) -> Duration {
        self.upstream_age + now.saturating_duration_since(self.stored_at)
    }
}

struct SlotExpiry;

impl moka::Expiry<Key, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &Key, slot: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        slot: &Arc<Slot>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// A request header's value as compared for keys and `Vary`: each field line trimmed, lines
/// joined by commas; `None` when absent.
fn header_value(headers: &HeaderMap, name: &HeaderName) -> Option<Box<[u8]>> {
    let mut joined: Option<Vec<u8>> = None;
    for value in headers.get_all(name) {
        let value = value.as_bytes().trim_ascii();
        match &mut joined {
            None => joined = Some(value.to_vec()),
            Some(joined) => {
                joined.push(b',');
                joined.extend_from_slice(value);
            }
        }
    }
    joined.map(Vec::into_boxed_slice)
}

/// The header names a response's `Vary` lists; `None` for `Vary: *` (or a name that is not a
/// header name), which no request can match.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(VARY) {
        for name in value.to_str().ok()?.split(',') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            // `*` is a valid token, so HeaderName would take it.
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The response headers an entry keeps.
fn stored_headers(headers: &HeaderMap) -> HeaderMap {
    let named_by_connection: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut stored = HeaderMap::with_capacity(headers.len());
    let kept = headers.iter().filter(|(name, _)| {
        let name = name.as_str();
        !(name == CONNECTION
            || name == "keep-alive"
            || name == TRANSFER_ENCODING
            || name == TE
            || name == TRAILER
            || name == UPGRADE
            || name.starts_with("proxy-")
            || name == AGE
            || name == X_CACHE
            || named_by_connection.iter().any(|n| n == name))
    });
    for (name, value) in kept {
        stored.append(name, copied(value));
    }
    stored
}

/// `value` in memory of its own. An upstream's header value is a slice of its connection's
/// read buffer: stored as it is, it would keep that whole buffer (8 KiB or more) alive for as
/// long as the entry, none of it counted against `max_size`.
fn copied(value: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes())) {
        Ok(mut copy) => {
            copy.set_sensitive(value.is_sensitive());
            copy
        }
        // Not reached: the bytes were a header value already.
        Err(_) => value.clone(),
    }
}

/// The headers of a `304` for a stored response (RFC 9110 §15.4.5): those a cache needs to
/// update its copy (`Cache-Control`, `Date`, `ETag`, `Expires`, `Last-Modified`, `Vary`,
/// `Content-Location`, and the rest of the fields that are not about the representation), without
/// `Content-Length`, `Content-Type` and the other `Content-*` metadata of a body not sent.
fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(stored.len());
    for (name, value) in stored {
        let name_str = name.as_str();
        if name_str.starts_with("content-") && *name != http::header::CONTENT_LOCATION
            || *name == http::header::ACCEPT_RANGES
        {
            continue;
        }
        headers.append(name, value.clone());
    }
    headers
}

/// The response's Cache-Control without one directive, `None` if nothing is left.
fn without_directive(headers: &HeaderMap, directive: &str) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|part| {
            let name = part.split('=').next().unwrap_or_default().trim();
            !name.is_empty() && !name.eq_ignore_ascii_case(directive)
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(",")).ok()
}

// Poisoning only says another thread panicked while holding the lock; the maps stay consistent
// (every critical section is a single insert or remove), so carry on rather than spread the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
