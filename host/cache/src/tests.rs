use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio::sync::mpsc;

use super::*;

const HOST: &str = "example.com";

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        builder = builder.header("host", HOST);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

fn get(uri: &str) -> http::request::Parts {
    request(Method::GET, uri, &[])
}

fn response(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("response")
}

/// Looks `req` up (a miss expected), records `resp` and reads the body the client would get.
async fn fill<B>(cache: &Cache, req: &http::request::Parts, resp: Response<B>) -> Response<Bytes>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Debug,
{
    let Lookup::Miss(fill) = cache.lookup(req).await else {
        panic!("expected a miss");
    };
    read(fill.record(resp)).await
}

async fn read<B>(response: Response<B>) -> Response<Bytes>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Response::from_parts(parts, body)
}

async fn status(cache: &Cache, req: &http::request::Parts) -> Status {
    match cache.lookup(req).await {
        Lookup::Hit(_) => Status::Hit,
        Lookup::Miss(_) => Status::Miss,
        Lookup::Bypass => Status::Bypass,
    }
}

async fn hit(cache: &Cache, req: &http::request::Parts) -> Response<Bytes> {
    match cache.lookup(req).await {
        Lookup::Hit(response) => response,
        other => panic!("expected a hit, got {other:?}"),
    }
}

fn header<'a, B>(response: &'a Response<B>, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii"))
}

fn fills_in_progress(cache: &Cache) -> usize {
    lock(&cache.inner.fills).len()
}

#[derive(Debug)]
struct Broken;

/// A body fed from a channel, so tests decide when each frame exists.
#[derive(Debug)]
struct ChanBody(mpsc::UnboundedReceiver<Result<Bytes, Broken>>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Broken;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|r| r.map(Frame::data)))
    }
}

fn channel_body() -> (mpsc::UnboundedSender<Result<Bytes, Broken>>, ChanBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChanBody(rx))
}

/// A body whose chunks arrive `delay` apart.
fn slow_body(chunks: &[&'static str], delay: Duration) -> ChanBody {
    let (tx, body) = channel_body();
    let chunks: Vec<_> = chunks
        .iter()
        .map(|c| Bytes::from_static(c.as_bytes()))
        .collect();
    tokio::spawn(async move {
        for chunk in chunks {
            tokio::time::sleep(delay).await;
            if tx.send(Ok(chunk)).is_err() {
                return;
            }
        }
    });
    body
}

#[test]
fn defaults_and_status_strings() {
    let rules = Rules::default();
    assert_eq!(rules.ttl, Duration::from_secs(30));
    assert_eq!(rules.max_size, 64 << 20);
    assert_eq!(rules.max_entry_size, 1 << 20);
    assert_eq!(rules.methods, [Method::GET, Method::HEAD]);
    assert!(rules.vary.is_empty());
    assert!(!rules.client_no_cache);
    assert_eq!(rules.lock_timeout, Duration::from_secs(5));
    assert_eq!(rules.keep, Duration::from_secs(600));
    assert_eq!(Status::Hit.as_str(), "HIT");
    assert_eq!(Status::Revalidated.as_str(), "REVALIDATED");
    assert_eq!(Status::Miss.as_str(), "MISS");
    assert_eq!(Status::Bypass.as_str(), "BYPASS");
    assert_eq!(X_CACHE, "x-cache");
}

#[test]
fn cache_fill_and_recording_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>(_: &T) {}
    let cache = Cache::new(Rules::default());
    send_sync(&cache);
    let req = get("/");
    let lookup = cache.lookup(&req);
    send(&lookup);
}

struct Case {
    name: &'static str,
    status: u16,
    request: &'static [(&'static str, &'static str)],
    response: &'static [(&'static str, &'static str)],
    /// Seconds the response stays fresh; `None`: not stored.
    lifetime: Option<u64>,
}

const fn case(
    name: &'static str,
    status: u16,
    response: &'static [(&'static str, &'static str)],
    lifetime: Option<u64>,
) -> Case {
    Case {
        name,
        status,
        request: &[],
        response,
        lifetime,
    }
}

const STORABILITY: &[Case] = &[
    case("no cache-control: rules ttl", 200, &[], Some(30)),
    case("max-age", 200, &[("cache-control", "max-age=60")], Some(60)),
    case(
        "s-maxage wins over max-age",
        200,
        &[("cache-control", "s-maxage=5, max-age=60")],
        Some(5),
    ),
    case(
        "upstream age counts against max-age",
        200,
        &[("cache-control", "max-age=60"), ("age", "50")],
        Some(10),
    ),
    case(
        "upstream age counts against ttl",
        200,
        &[("age", "20")],
        Some(10),
    ),
    case(
        "expires against date",
        200,
        &[
            ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("expires", "Mon, 01 Jan 2024 00:01:00 GMT"),
        ],
        Some(60),
    ),
    case(
        "max-age wins over expires",
        200,
        &[
            ("cache-control", "max-age=20"),
            ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ],
        Some(20),
    ),
    case(
        "proxy-revalidate",
        200,
        &[("cache-control", "public, max-age=60, proxy-revalidate")],
        Some(60),
    ),
    case(
        "must-revalidate",
        200,
        &[("cache-control", "max-age=60, must-revalidate")],
        Some(60),
    ),
    case("no-store", 200, &[("cache-control", "no-store")], None),
    case(
        "private",
        200,
        &[("cache-control", "private, max-age=60")],
        None,
    ),
    case(
        "no-cache",
        200,
        &[("cache-control", "no-cache, max-age=60")],
        None,
    ),
    case("pragma no-cache", 200, &[("pragma", "no-cache")], None),
    case("max-age=0", 200, &[("cache-control", "max-age=0")], None),
    case(
        "invalid max-age",
        200,
        &[("cache-control", "max-age=soon")],
        None,
    ),
    case(
        "expires in the past",
        200,
        &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")],
        None,
    ),
    case("invalid expires", 200, &[("expires", "0")], None),
    case(
        "set-cookie",
        200,
        &[
            ("cache-control", "public, max-age=60"),
            ("set-cookie", "id=1"),
        ],
        None,
    ),
    case("vary star", 200, &[("vary", "*")], None),
    case("vary star in a list", 200, &[("vary", "accept, *")], None),
    case("500 without freshness", 500, &[], None),
    case("404", 404, &[], Some(30)),
    case("410", 410, &[], Some(30)),
    case("204", 204, &[], Some(30)),
    case("206", 206, &[("cache-control", "max-age=60")], None),
    case("302 without freshness", 302, &[], None),
    case(
        "302 with max-age",
        302,
        &[("cache-control", "max-age=60")],
        Some(60),
    ),
    Case {
        name: "authorization",
        status: 200,
        request: &[("authorization", "Bearer x")],
        response: &[("cache-control", "max-age=60")],
        lifetime: None,
    },
    Case {
        name: "authorization with public",
        status: 200,
        request: &[("authorization", "Bearer x")],
        response: &[("cache-control", "public, max-age=60")],
        lifetime: Some(60),
    },
    Case {
        name: "authorization with s-maxage",
        status: 200,
        request: &[("authorization", "Bearer x")],
        response: &[("cache-control", "s-maxage=60")],
        lifetime: Some(60),
    },
];

#[tokio::test]
async fn storability_and_lifetime_follow_the_upstream_cache_control() {
    for case in STORABILITY {
        let cache = Cache::new(Rules::default());
        let req = request(Method::GET, "/t", case.request);
        let body = if case.status == 204 { "" } else { "body" };
        let sent = fill(&cache, &req, response(case.status, case.response, body)).await;
        assert_eq!(header(&sent, "x-cache"), Some("MISS"), "{}", case.name);
        assert_eq!(sent.body(), body, "{}", case.name);
        match case.lifetime {
            None => {
                assert_eq!(status(&cache, &req).await, Status::Miss, "{}", case.name);
            }
            Some(lifetime) => {
                let first = hit(&cache, &req).await;
                assert_eq!(first.status().as_u16(), case.status, "{}", case.name);
                assert_eq!(first.body(), body, "{}", case.name);
                cache
                    .inner
                    .clock
                    .advance(Duration::from_secs(lifetime) - Duration::from_millis(100));
                assert_eq!(status(&cache, &req).await, Status::Hit, "{}", case.name);
                cache.inner.clock.advance(Duration::from_millis(200));
                assert_eq!(status(&cache, &req).await, Status::Miss, "{}", case.name);
            }
        }
    }
}

#[tokio::test]
async fn hit_has_stored_headers_age_and_x_cache_without_hop_by_hop() {
    let cache = Cache::new(Rules::default());
    let upstream = response(
        200,
        &[
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "h2c"),
            ("trailer", "x-sum"),
            ("x-cache", "HIT from upstream"),
            ("age", "10"),
            ("etag", "\"v1\""),
        ],
        "hello",
    );
    let sent = fill(&cache, &get("/h"), upstream).await;
    // The recorded response goes to the client as the upstream sent it, plus our x-cache.
    assert_eq!(header(&sent, "x-cache"), Some("MISS"));
    assert_eq!(header(&sent, "x-hop"), Some("1"));

    let first = hit(&cache, &get("/h")).await;
    assert_eq!(first.body(), "hello");
    assert_eq!(header(&first, "x-cache"), Some("HIT"));
    assert_eq!(header(&first, "age"), Some("10"));
    assert_eq!(header(&first, "content-type"), Some("text/plain"));
    assert_eq!(header(&first, "content-length"), Some("5"));
    assert_eq!(header(&first, "etag"), Some("\"v1\""));
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "transfer-encoding",
        "proxy-authenticate",
        "upgrade",
        "trailer",
    ] {
        assert!(!first.headers().contains_key(hop), "{hop} kept");
    }
    assert_eq!(first.headers().get_all("x-cache").iter().count(), 1);
    assert_eq!(first.headers().get_all("age").iter().count(), 1);
}

#[tokio::test]
async fn stored_header_values_do_not_hold_the_upstream_read_buffer() {
    let cache = Cache::new(Rules::default());
    // As hyper parses them: each value a slice of the connection's read buffer.
    let buffer = Bytes::from(b"text/plain\"v1\"".repeat(512));
    let range = buffer.as_ptr_range();
    let mut upstream = response(200, &[], "hello");
    for (name, value) in [
        ("content-type", buffer.slice(0..10)),
        ("etag", buffer.slice(10..14)),
    ] {
        let value = HeaderValue::from_maybe_shared(value).expect("value");
        upstream.headers_mut().insert(name, value);
    }
    fill(&cache, &get("/b"), upstream).await;

    let stored = hit(&cache, &get("/b")).await;
    assert_eq!(header(&stored, "content-type"), Some("text/plain"));
    assert_eq!(header(&stored, "etag"), Some("\"v1\""));
    for value in stored.headers().values() {
        assert!(
            !range.contains(&value.as_bytes().as_ptr()),
            "{value:?} points into the upstream's buffer"
        );
    }
}

#[tokio::test]
async fn each_upstream_of_a_split_has_entries_of_its_own() {
    let cache = Cache::new(Rules::default());
    let req = get("/v");
    for (upstream, body) in [("stable", "one"), ("canary", "two")] {
        let Lookup::Miss(fill) = cache.lookup_from(&req, Some(upstream)).await else {
            panic!("expected a miss for {upstream}");
        };
        read(fill.record(response(200, &[("cache-control", "max-age=60")], body))).await;
    }
    for (upstream, body) in [("stable", "one"), ("canary", "two")] {
        let Lookup::Hit(hit) = cache.lookup_from(&req, Some(upstream)).await else {
            panic!("expected a hit for {upstream}");
        };
        assert_eq!(hit.body(), body);
    }
    // A route that does not split has its own entries too.
    assert_eq!(status(&cache, &req).await, Status::Miss);
    // Purging the path drops every upstream's entry.
    assert_eq!(cache.purge("/v"), 2);
    assert!(matches!(
        cache.lookup_from(&req, Some("stable")).await,
        Lookup::Miss(_)
    ));
}

#[tokio::test]
async fn age_grows_with_time_stored() {
    let cache = Cache::new(Rules::default());
    fill(&cache, &get("/age"), response(200, &[("age", "3")], "x")).await;
    assert_eq!(header(&hit(&cache, &get("/age")).await, "age"), Some("3"));
    cache.inner.clock.advance(Duration::from_millis(5_500));
    assert_eq!(header(&hit(&cache, &get("/age")).await, "age"), Some("8"));
}

#[tokio::test]
async fn entry_expires_at_its_lifetime() {
    let cache = Cache::new(Rules::default());
    let req = get("/short");
    fill(
        &cache,
        &req,
        response(200, &[("cache-control", "max-age=1")], "x"),
    )
    .await;
    assert_eq!(status(&cache, &req).await, Status::Hit);
    cache.inner.clock.advance(Duration::from_millis(1_100));
    let Lookup::Miss(refill) = cache.lookup(&req).await else {
        panic!("expected a miss");
    };
    // The refill replaces the stale entry.
    read(refill.record(response(200, &[("cache-control", "max-age=60")], "y"))).await;
    assert_eq!(hit(&cache, &req).await.body(), "y");
}

#[tokio::test]
async fn moka_drops_entries_at_their_lifetime_too() {
    let cache = Cache::new(Rules {
        ttl: Duration::from_millis(50),
        ..Rules::default()
    });
    let req = get("/gone");
    fill(&cache, &req, response(200, &[], "x")).await;
    let key = Key::new(&req, cache.rules(), None);
    assert!(cache.inner.store.get(&key).is_some());
    // moka keeps its own (real) clock; its timer wheel reclaims the memory about a second later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(cache.inner.store.get(&key).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_for_another_vary_variant_fills_its_own() {
    let cache = Arc::new(Cache::new(Rules::default()));
    let lang = |value: &'static str| request(Method::GET, "/lv", &[("accept-language", value)]);
    let Lookup::Miss(leader) = cache.lookup(&lang("en")).await else {
        panic!("expected a miss");
    };
    let waiter = {
        let cache = Arc::clone(&cache);
        tokio::spawn(async move {
            match cache.lookup(&lang("fr")).await {
                Lookup::Miss(fill) => {
                    let exclusive = fill.lead.is_some();
                    read(fill.record(response(200, &[("vary", "accept-language")], "fr"))).await;
                    exclusive
                }
                other => panic!("expected a miss, got {other:?}"),
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "waits for the fill of the key");
    read(leader.record(response(200, &[("vary", "accept-language")], "en"))).await;
    assert!(waiter.await.expect("task"), "then leads the next fill");
    assert_eq!(hit(&cache, &lang("en")).await.body(), "en");
    assert_eq!(hit(&cache, &lang("fr")).await.body(), "fr");
}

#[tokio::test]
async fn upstream_vary_keeps_one_variant_per_header_value() {
    let cache = Cache::new(Rules::default());
    let lang = |value: &'static str| request(Method::GET, "/v", &[("accept-language", value)]);
    let vary = [("vary", "Accept-Language")];
    fill(&cache, &lang("en"), response(200, &vary, "hello")).await;
    fill(&cache, &lang("fr"), response(200, &vary, "bonjour")).await;
    assert_eq!(hit(&cache, &lang("en")).await.body(), "hello");
    assert_eq!(hit(&cache, &lang("fr")).await.body(), "bonjour");
    // Values are compared trimmed.
    assert_eq!(hit(&cache, &lang(" en ")).await.body(), "hello");
    assert_eq!(status(&cache, &lang("de")).await, Status::Miss);
    // Absent matches absent only.
    assert_eq!(status(&cache, &get("/v")).await, Status::Miss);
    fill(&cache, &get("/v"), response(200, &vary, "default")).await;
    assert_eq!(hit(&cache, &get("/v")).await.body(), "default");
    assert_eq!(hit(&cache, &lang("en")).await.body(), "hello");
    // A new response for a variant replaces it, the others stay.
    cache.inner.clock.advance(Duration::from_secs(31));
    fill(&cache, &lang("en"), response(200, &vary, "hi")).await;
    assert_eq!(hit(&cache, &lang("en")).await.body(), "hi");
    assert_eq!(status(&cache, &lang("fr")).await, Status::Miss);
}

#[tokio::test]
async fn at_most_eight_variants_per_key_oldest_replaced() {
    let cache = Cache::new(Rules::default());
    let user = |n: usize| request(Method::GET, "/many", &[("x-user", &*format!("u{n}"))]);
    for n in 0..10 {
        fill(&cache, &user(n), response(200, &[("vary", "x-user")], "x")).await;
    }
    for n in 0..2 {
        assert_eq!(status(&cache, &user(n)).await, Status::Miss, "u{n}");
    }
    for n in 2..10 {
        assert_eq!(status(&cache, &user(n)).await, Status::Hit, "u{n}");
    }
}

#[tokio::test]
async fn key_is_host_path_query_and_rules_vary() {
    let rules = Rules {
        vary: vec![HeaderName::from_static("x-consumer")],
        ..Rules::default()
    };
    let cache = Cache::new(rules);
    let req = |uri: &str, headers: &[(&str, &str)]| request(Method::GET, uri, headers);
    let alice = [("x-consumer", "alice")];
    fill(&cache, &req("/k?a=1", &alice), response(200, &[], "alice")).await;
    assert_eq!(hit(&cache, &req("/k?a=1", &alice)).await.body(), "alice");
    // The host is case-insensitive and may come from the URI's authority.
    let upper = [("host", "EXAMPLE.com"), ("x-consumer", "alice")];
    assert_eq!(status(&cache, &req("/k?a=1", &upper)).await, Status::Hit);
    assert_eq!(
        status(&cache, &req("http://example.com/k?a=1", &alice)).await,
        Status::Hit
    );
    let ported = [("host", "example.com:8080"), ("x-consumer", "alice")];
    assert_eq!(status(&cache, &req("/k?a=1", &ported)).await, Status::Miss);
    assert_eq!(status(&cache, &req("/k?a=2", &alice)).await, Status::Miss);
    assert_eq!(status(&cache, &req("/k?A=1", &alice)).await, Status::Miss);
    assert_eq!(status(&cache, &req("/k", &alice)).await, Status::Miss);
    assert_eq!(
        status(&cache, &req("/k?a=1", &[("x-consumer", "bob")])).await,
        Status::Miss
    );
    assert_eq!(status(&cache, &req("/k?a=1", &[])).await, Status::Miss);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry_and_bypasses_on_a_miss() {
    let cache = Cache::new(Rules::default());
    let head = request(Method::HEAD, "/head", &[]);
    assert_eq!(status(&cache, &head).await, Status::Bypass);
    // The HEAD stored nothing.
    fill(
        &cache,
        &get("/head"),
        response(200, &[("content-length", "5")], "hello"),
    )
    .await;
    let answer = hit(&cache, &head).await;
    assert!(answer.body().is_empty());
    assert_eq!(header(&answer, "content-length"), Some("5"));
    assert_eq!(header(&answer, "x-cache"), Some("HIT"));

    let get_only = Cache::new(Rules {
        methods: vec![Method::GET],
        ..Rules::default()
    });
    fill(&get_only, &get("/head"), response(200, &[], "hello")).await;
    assert_eq!(status(&get_only, &head).await, Status::Bypass);
}

#[tokio::test]
async fn other_methods_and_range_requests_bypass() {
    let cache = Cache::new(Rules::default());
    fill(&cache, &get("/r"), response(200, &[], "whole")).await;
    let ranged = request(Method::GET, "/r", &[("range", "bytes=0-1")]);
    assert_eq!(status(&cache, &ranged).await, Status::Bypass);
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        assert_eq!(
            status(&cache, &request(method.clone(), "/r", &[])).await,
            Status::Bypass,
            "{method}"
        );
    }
}

#[tokio::test]
async fn client_directives_are_honoured_when_configured() {
    let cache = Cache::new(Rules {
        client_no_cache: true,
        ..Rules::default()
    });
    let plain = get("/c");
    fill(&cache, &plain, response(200, &[], "v0")).await;
    let refreshing: [(&str, &str); 3] = [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ];
    for (n, directive) in refreshing.into_iter().enumerate() {
        let req = request(Method::GET, "/c", &[directive]);
        let Lookup::Miss(refresh) = cache.lookup(&req).await else {
            panic!("{directive:?} should miss");
        };
        let body = ["v1", "v2", "v3"][n];
        read(refresh.record(response(200, &[], body))).await;
        assert_eq!(hit(&cache, &plain).await.body(), body, "{directive:?}");
    }
    let no_store = request(Method::GET, "/c", &[("cache-control", "no-store")]);
    assert_eq!(status(&cache, &no_store).await, Status::Bypass);
    // max-age=N refuses older entries only.
    cache.inner.clock.advance(Duration::from_secs(10));
    let max_age = |n: &str| {
        request(
            Method::GET,
            "/c",
            &[("cache-control", &*format!("max-age={n}"))],
        )
    };
    assert_eq!(status(&cache, &max_age("20")).await, Status::Hit);
    assert_eq!(status(&cache, &max_age("5")).await, Status::Miss);
}

#[tokio::test]
async fn client_directives_are_ignored_by_default() {
    let cache = Cache::new(Rules::default());
    // A client's no-store does not keep the response from being stored either.
    let no_store = request(Method::GET, "/c", &[("cache-control", "no-store")]);
    fill(&cache, &no_store, response(200, &[], "v0")).await;
    for directive in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
    ] {
        let req = request(Method::GET, "/c", &[directive]);
        assert_eq!(status(&cache, &req).await, Status::Hit, "{directive:?}");
    }
}

#[tokio::test]
async fn eviction_beyond_max_size_reports_bytes() {
    let evicted = Arc::new(AtomicU64::new(0));
    let evictions = Arc::new(AtomicU64::new(0));
    let (bytes, count) = (Arc::clone(&evicted), Arc::clone(&evictions));
    let cache = Cache::new(Rules {
        max_size: 8 * 1024,
        ..Rules::default()
    })
    .on_eviction(move |weight| {
        bytes.fetch_add(weight, Ordering::Relaxed);
        count.fetch_add(1, Ordering::Relaxed);
    });
    let body: &'static str = "x".repeat(1000).leak();
    for n in 0..20 {
        fill(&cache, &get(&format!("/e{n}")), response(200, &[], body)).await;
        cache.inner.store.run_pending_tasks();
    }
    assert!(evictions.load(Ordering::Relaxed) > 0);
    assert!(evicted.load(Ordering::Relaxed) >= 1000 * evictions.load(Ordering::Relaxed));
    assert!(cache.bytes() <= 8 * 1024, "{} bytes", cache.bytes());
    assert!(cache.entries() < 20);
    // Least recently used first.
    assert_eq!(status(&cache, &get("/e19")).await, Status::Hit);
    assert_eq!(status(&cache, &get("/e0")).await, Status::Miss);

    // Purges, replacements and expiry are not evictions.
    let before = evictions.load(Ordering::Relaxed);
    cache.inner.clock.advance(Duration::from_secs(31));
    fill(&cache, &get("/e19"), response(200, &[], "y")).await;
    cache.purge_all();
    cache.inner.store.run_pending_tasks();
    assert_eq!(evictions.load(Ordering::Relaxed), before);
    assert_eq!(cache.entries(), 0);
}

#[tokio::test]
async fn entries_and_bytes_count_what_is_held() {
    let cache = Cache::new(Rules::default());
    assert_eq!((cache.entries(), cache.bytes()), (0, 0));
    fill(
        &cache,
        &get("/a"),
        response(200, &[("content-type", "text/plain")], "hello"),
    )
    .await;
    cache.inner.store.run_pending_tasks();
    assert_eq!(cache.entries(), 1);
    let expected = KEY_OVERHEAD
        + (HOST.len() + "/a".len()) as u64
        + VARIANT_OVERHEAD
        + 5
        + ("content-type".len() + "text/plain".len()) as u64;
    assert_eq!(cache.bytes(), expected);
}

#[tokio::test]
async fn purge_drops_a_path_or_a_path_and_query() {
    let cache = Cache::new(Rules::default());
    let other_host = |uri: &str| request(Method::GET, uri, &[("host", "other.example")]);
    for req in [
        get("/a"),
        get("/a?x=1"),
        get("/a?x=2"),
        get("/ab"),
        get("/b"),
        other_host("/a"),
    ] {
        fill(&cache, &req, response(200, &[], "x")).await;
    }
    assert_eq!(cache.purge("/a?x=1"), 1);
    assert_eq!(status(&cache, &get("/a?x=1")).await, Status::Miss);
    assert_eq!(status(&cache, &get("/a?x=2")).await, Status::Hit);
    assert_eq!(cache.purge("/a"), 3);
    for req in [get("/a"), get("/a?x=2"), other_host("/a")] {
        assert_eq!(status(&cache, &req).await, Status::Miss);
    }
    assert_eq!(status(&cache, &get("/ab")).await, Status::Hit);
    assert_eq!(status(&cache, &get("/b")).await, Status::Hit);
    assert_eq!(cache.purge("/nothing"), 0);
    cache.purge_all();
    assert_eq!(status(&cache, &get("/b")).await, Status::Miss);
    cache.inner.store.run_pending_tasks();
    assert_eq!(cache.entries(), 0);
}

#[tokio::test]
async fn fill_started_before_a_purge_does_not_store() {
    let cache = Cache::new(Rules::default());
    let Lookup::Miss(before) = cache.lookup(&get("/p")).await else {
        panic!("expected a miss");
    };
    cache.purge("/p");
    read(before.record(response(200, &[], "old"))).await;
    assert_eq!(fills_in_progress(&cache), 0);
    assert_eq!(status(&cache, &get("/p")).await, Status::Miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_misses_sends_one_request_upstream() {
    let cache = Arc::new(Cache::new(Rules::default()));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                match cache.lookup(&get("/burst")).await {
                    Lookup::Hit(response) => {
                        assert_eq!(response.body(), "abcdef");
                        Status::Hit
                    }
                    Lookup::Miss(fill) => {
                        let body = slow_body(&["ab", "cd", "ef"], Duration::from_millis(50));
                        let sent = read(fill.record(Response::new(body))).await;
                        assert_eq!(sent.body(), "abcdef");
                        Status::Miss
                    }
                    Lookup::Bypass => Status::Bypass,
                }
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    let count = |s: Status| statuses.iter().filter(|&&t| t == s).count();
    assert_eq!(count(Status::Miss), 1, "{statuses:?}");
    assert_eq!(count(Status::Hit), 99, "{statuses:?}");
    assert_eq!(fills_in_progress(&cache), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_go_upstream_promptly_when_the_fill_is_dropped() {
    let cache = Arc::new(Cache::new(Rules {
        lock_timeout: Duration::from_secs(30),
        ..Rules::default()
    }));
    let upstream = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, upstream) = (Arc::clone(&cache), Arc::clone(&upstream));
            tokio::spawn(async move {
                match cache.lookup(&get("/fail")).await {
                    Lookup::Miss(fill) => {
                        upstream.fetch_add(1, Ordering::Relaxed);
                        // An upstream error: the fill is dropped unused.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        drop(fill);
                        true
                    }
                    _ => false,
                }
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.expect("task"), "every request is a miss");
    }
    assert_eq!(upstream.load(Ordering::Relaxed), 100);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fills_in_progress(&cache), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_released_at_once_by_an_unstorable_response() {
    let cache = Arc::new(Cache::new(Rules {
        lock_timeout: Duration::from_secs(30),
        ..Rules::default()
    }));
    let Lookup::Miss(leader) = cache.lookup(&get("/private")).await else {
        panic!("expected a miss");
    };
    let waiter = {
        let cache = Arc::clone(&cache);
        tokio::spawn(async move { status(&cache, &get("/private")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished());
    // The body is still streaming, but a private response will not be stored: no one waits.
    let (_tx, body) = channel_body();
    let _streaming =
        leader.record(response(200, &[("cache-control", "private")], "").map(|_| body));
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("released")
        .expect("task");
    assert_eq!(waited, Status::Miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_give_up_after_lock_timeout() {
    let cache = Arc::new(Cache::new(Rules {
        lock_timeout: Duration::from_millis(100),
        ..Rules::default()
    }));
    let Lookup::Miss(leader) = cache.lookup(&get("/slow")).await else {
        panic!("expected a miss");
    };
    assert!(leader.lead.is_some());
    let started = Instant::now();
    let Lookup::Miss(late) = cache.lookup(&get("/slow")).await else {
        panic!("expected a miss");
    };
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    // Not exclusive, but it may store.
    assert!(late.lead.is_none());
    read(late.record(response(200, &[], "late"))).await;
    assert_eq!(hit(&cache, &get("/slow")).await.body(), "late");
    drop(leader);
    assert_eq!(fills_in_progress(&cache), 0);
}

#[tokio::test]
async fn dropped_waiter_leaves_nothing_behind() {
    let cache = Cache::new(Rules::default());
    let Lookup::Miss(leader) = cache.lookup(&get("/w")).await else {
        panic!("expected a miss");
    };
    for _ in 0..3 {
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), cache.lookup(&get("/w"))).await;
        assert!(gave_up.is_err());
    }
    let lead = leader.lead.as_ref().expect("exclusive");
    // Only the in-progress map's own receiver is left.
    assert_eq!(lead.done.receiver_count(), 1);
    assert_eq!(fills_in_progress(&cache), 1);
    drop(leader);
    assert_eq!(fills_in_progress(&cache), 0);
    assert_eq!(status(&cache, &get("/w")).await, Status::Miss);
}

#[tokio::test]
async fn body_larger_than_max_entry_size_streams_through_unstored() {
    let cache = Cache::new(Rules {
        max_entry_size: 10,
        ..Rules::default()
    });
    // Length unknown up front: recorded until it outgrows the limit.
    let (tx, body) = channel_body();
    for chunk in ["12345678", "abcdefgh", "ABCDEFGH"] {
        tx.send(Ok(Bytes::from_static(chunk.as_bytes())))
            .expect("send");
    }
    drop(tx);
    let sent = fill(&cache, &get("/big"), Response::new(body)).await;
    assert_eq!(sent.body(), "12345678abcdefghABCDEFGH");
    assert_eq!(status(&cache, &get("/big")).await, Status::Miss);

    // Content-Length too big: not even recorded, the waiters are released before the body.
    let Lookup::Miss(fill) = cache.lookup(&get("/big")).await else {
        panic!("expected a miss");
    };
    let sent = fill.record(response(200, &[("content-length", "11")], "0123456789A"));
    assert_eq!(fills_in_progress(&cache), 0);
    assert_eq!(read(sent).await.body(), "0123456789A");
    assert_eq!(status(&cache, &get("/big")).await, Status::Miss);

    // Exactly the limit is stored.
    fill_exact(&cache).await;
}

async fn fill_exact(cache: &Cache) {
    fill(cache, &get("/fits"), response(200, &[], "0123456789")).await;
    assert_eq!(hit(cache, &get("/fits")).await.body(), "0123456789");
}

#[tokio::test]
async fn body_that_errors_midway_is_not_stored() {
    let cache = Cache::new(Rules::default());
    let Lookup::Miss(fill) = cache.lookup(&get("/err")).await else {
        panic!("expected a miss");
    };
    let (tx, body) = channel_body();
    tx.send(Ok(Bytes::from_static(b"ab"))).expect("send");
    tx.send(Err(Broken)).expect("send");
    let sent = fill.record(Response::new(body));
    assert!(sent.into_body().collect().await.is_err());
    assert_eq!(fills_in_progress(&cache), 0);
    assert_eq!(status(&cache, &get("/err")).await, Status::Miss);
}

#[tokio::test]
async fn body_shorter_than_its_content_length_is_not_stored() {
    let cache = Cache::new(Rules::default());
    let (tx, body) = channel_body();
    tx.send(Ok(Bytes::from_static(b"abc"))).expect("send");
    drop(tx);
    let mut upstream = Response::new(body);
    upstream
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
    fill(&cache, &get("/short-body"), upstream).await;
    assert_eq!(status(&cache, &get("/short-body")).await, Status::Miss);
}

#[tokio::test]
async fn client_that_goes_away_stores_nothing_and_releases_waiters() {
    let cache = Cache::new(Rules::default());
    let Lookup::Miss(fill) = cache.lookup(&get("/gone")).await else {
        panic!("expected a miss");
    };
    let (tx, body) = channel_body();
    tx.send(Ok(Bytes::from_static(b"ab"))).expect("send");
    let mut sent = fill.record(Response::new(body)).into_body();
    sent.frame().await.expect("frame").expect("data");
    drop(sent);
    assert_eq!(fills_in_progress(&cache), 0);
    assert_eq!(status(&cache, &get("/gone")).await, Status::Miss);
}

#[tokio::test]
async fn recording_passes_frames_through_as_they_arrive() {
    let cache = Cache::new(Rules::default());
    let Lookup::Miss(fill) = cache.lookup(&get("/stream")).await else {
        panic!("expected a miss");
    };
    let (tx, body) = channel_body();
    let mut sent = fill.record(Response::new(body)).into_body();
    tx.send(Ok(Bytes::from_static(b"first"))).expect("send");
    let first = sent.frame().await.expect("frame").expect("ok");
    assert_eq!(first.into_data().expect("data"), "first");
    // Nothing stored while the body is still open.
    assert_eq!(fills_in_progress(&cache), 1);
    tx.send(Ok(Bytes::from_static(b"second"))).expect("send");
    let second = sent.frame().await.expect("frame").expect("ok");
    assert_eq!(second.into_data().expect("data"), "second");
    drop(tx);
    assert!(sent.frame().await.is_none());
    assert_eq!(hit(&cache, &get("/stream")).await.body(), "firstsecond");
}

#[tokio::test]
async fn empty_body_is_stored_without_being_polled() {
    let cache = Cache::new(Rules::default());
    let Lookup::Miss(fill) = cache.lookup(&get("/empty")).await else {
        panic!("expected a miss");
    };
    let sent = fill.record(response(204, &[], ""));
    assert!(sent.body().is_end_stream());
    let answer = hit(&cache, &get("/empty")).await;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert!(answer.body().is_empty());
}

#[tokio::test]
async fn unstorable_response_is_marked_miss_and_passed_unchanged() {
    let cache = Cache::new(Rules::default());
    let sent = fill(
        &cache,
        &get("/u"),
        response(
            200,
            &[("cache-control", "no-store"), ("x-cache", "HIT")],
            "body",
        ),
    )
    .await;
    assert_eq!(sent.headers().get_all("x-cache").iter().count(), 1);
    assert_eq!(header(&sent, "x-cache"), Some("MISS"));
    assert_eq!(header(&sent, "cache-control"), Some("no-store"));
    assert_eq!(sent.body(), "body");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn recording_is_transparent_and_stores_bodies_within_the_limit(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..6),
        limit in 0u64..48,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let cache = Cache::new(Rules { max_entry_size: limit, ..Rules::default() });
            let (tx, body) = channel_body();
            let mut whole = Vec::new();
            for chunk in &chunks {
                whole.extend_from_slice(chunk);
                tx.send(Ok(Bytes::from(chunk.clone()))).expect("send");
            }
            drop(tx);
            let Lookup::Miss(fill) = cache.lookup(&get("/p")).await else {
                panic!("expected a miss");
            };
            let mut sent = fill.record(Response::new(body)).into_body();
            for chunk in &chunks {
                let frame = sent.frame().await.expect("frame").expect("ok");
                assert_eq!(frame.into_data().expect("data"), chunk.as_slice());
            }
            assert!(sent.frame().await.is_none());
            let stored = match cache.lookup(&get("/p")).await {
                Lookup::Hit(response) => Some(response.into_body()),
                _ => None,
            };
            if whole.len() as u64 <= limit {
                assert_eq!(stored.as_deref(), Some(whole.as_slice()));
            } else {
                assert!(stored.is_none());
            }
        });
    }
}

const VALIDATED: &[(&str, &str)] = &[
    ("cache-control", "max-age=1"),
    ("etag", "\"v1\""),
    ("last-modified", "Tue, 01 Dec 2026 00:00:00 GMT"),
    ("content-type", "text/plain"),
    ("x-origin", "a"),
];

#[tokio::test]
async fn conditional_hit_is_answered_not_modified_when_its_condition_holds() {
    let cache = Cache::new(Rules::default());
    fill(&cache, &get("/c"), response(200, VALIDATED, "body")).await;
    // (request conditions, whether the answer is 304)
    let table: &[(&[(&str, &str)], bool)] = &[
        (&[("if-none-match", "\"v1\"")], true),
        (&[("if-none-match", "W/\"v1\"")], true),
        (&[("if-none-match", "\"v0\", \"v1\"")], true),
        (&[("if-none-match", "*")], true),
        (&[("if-none-match", "\"v2\"")], false),
        // If-None-Match decides when present, even against a matching date.
        (
            &[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Tue, 01 Dec 2026 00:00:00 GMT"),
            ],
            false,
        ),
        (
            &[("if-modified-since", "Tue, 01 Dec 2026 00:00:00 GMT")],
            true,
        ),
        (
            &[("if-modified-since", "Wed, 02 Dec 2026 00:00:00 GMT")],
            true,
        ),
        (
            &[("if-modified-since", "Mon, 30 Nov 2026 23:59:59 GMT")],
            false,
        ),
        (&[("if-modified-since", "not a date")], false),
        (&[], false),
    ];
    for (conditions, not_modified) in table {
        let answer = hit(&cache, &request(Method::GET, "/c", conditions)).await;
        if *not_modified {
            assert_eq!(answer.status(), StatusCode::NOT_MODIFIED, "{conditions:?}");
            assert!(answer.body().is_empty());
            assert_eq!(header(&answer, "etag"), Some("\"v1\""));
            assert_eq!(header(&answer, "cache-control"), Some("max-age=1"));
            assert_eq!(header(&answer, "x-origin"), Some("a"));
            assert_eq!(
                header(&answer, "content-type"),
                None,
                "no representation metadata"
            );
            assert_eq!(header(&answer, "content-length"), None);
            assert_eq!(header(&answer, "x-cache"), Some("HIT"));
        } else {
            assert_eq!(answer.status(), StatusCode::OK, "{conditions:?}");
            assert_eq!(answer.body(), "body");
        }
    }
}

#[tokio::test]
async fn a_response_without_etag_matches_only_a_star() {
    let cache = Cache::new(Rules::default());
    fill(&cache, &get("/n"), response(200, &[], "body")).await;
    let tagged = request(Method::GET, "/n", &[("if-none-match", "\"v1\"")]);
    assert_eq!(hit(&cache, &tagged).await.status(), StatusCode::OK);
    let any = request(Method::GET, "/n", &[("if-none-match", "*")]);
    assert_eq!(hit(&cache, &any).await.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn stale_entry_is_revalidated_and_a_304_refreshes_it() {
    let cache = Cache::new(Rules::default());
    let req = get("/r");
    fill(&cache, &req, response(200, VALIDATED, "body")).await;
    cache.inner.clock.advance(Duration::from_millis(1_100));

    let Lookup::Miss(mut refill) = cache.lookup(&req).await else {
        panic!("expected a miss on the stale entry");
    };
    let mut upstream = HeaderMap::new();
    upstream.insert(IF_NONE_MATCH, HeaderValue::from_static("\"client\""));
    refill.revalidate(&mut upstream);
    assert_eq!(upstream.get(IF_NONE_MATCH).unwrap(), "\"v1\"");
    assert_eq!(
        upstream.get(IF_MODIFIED_SINCE).unwrap(),
        "Tue, 01 Dec 2026 00:00:00 GMT"
    );
    let confirmed = response(
        304,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("x-origin", "b"),
            ("content-length", "0"),
        ],
        "",
    );
    let answer = read(refill.record(confirmed)).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.body(), "body", "the stored body, not the 304's");
    assert_eq!(header(&answer, "x-cache"), Some("REVALIDATED"));
    assert_eq!(header(&answer, "x-origin"), Some("b"), "headers updated");
    assert_eq!(header(&answer, "content-length"), None);
    assert_eq!(header(&answer, "content-type"), Some("text/plain"));

    // Fresh again for the 304's max-age, with the updated headers.
    cache.inner.clock.advance(Duration::from_secs(30));
    let again = hit(&cache, &req).await;
    assert_eq!(again.body(), "body");
    assert_eq!(header(&again, "x-origin"), Some("b"));
    assert_eq!(header(&again, "cache-control"), Some("max-age=60"));
}

#[tokio::test]
async fn a_revalidation_answers_the_clients_own_condition() {
    let cache = Cache::new(Rules::default());
    fill(&cache, &get("/o"), response(200, VALIDATED, "body")).await;
    cache.inner.clock.advance(Duration::from_millis(1_100));
    let req = request(Method::GET, "/o", &[("if-none-match", "\"v1\"")]);
    let Lookup::Miss(mut refill) = cache.lookup(&req).await else {
        panic!("expected a miss");
    };
    let mut upstream = req.headers.clone();
    refill.revalidate(&mut upstream);
    let answer = read(refill.record(response(304, &[("etag", "\"v1\"")], ""))).await;
    assert_eq!(answer.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&answer, "x-cache"), Some("REVALIDATED"));
    assert!(answer.body().is_empty());
}

#[tokio::test]
async fn a_changed_response_replaces_the_stale_entry() {
    let cache = Cache::new(Rules::default());
    let req = get("/changed");
    fill(&cache, &req, response(200, VALIDATED, "old")).await;
    cache.inner.clock.advance(Duration::from_millis(1_100));
    let Lookup::Miss(mut refill) = cache.lookup(&req).await else {
        panic!("expected a miss");
    };
    refill.revalidate(&mut HeaderMap::new());
    let answer = read(refill.record(response(
        200,
        &[("cache-control", "max-age=60"), ("etag", "\"v2\"")],
        "new",
    )))
    .await;
    assert_eq!(header(&answer, "x-cache"), Some("MISS"));
    assert_eq!(answer.body(), "new");
    assert_eq!(hit(&cache, &req).await.body(), "new");
}

#[tokio::test]
async fn without_a_validator_or_with_keep_zero_nothing_is_revalidated() {
    for (rules, headers) in [
        (Rules::default(), &[("cache-control", "max-age=1")][..]),
        (
            Rules {
                keep: Duration::ZERO,
                ..Rules::default()
            },
            VALIDATED,
        ),
    ] {
        let cache = Cache::new(rules);
        let req = get("/plain");
        fill(&cache, &req, response(200, headers, "x")).await;
        cache.inner.clock.advance(Duration::from_millis(1_100));
        let Lookup::Miss(mut refill) = cache.lookup(&req).await else {
            panic!("expected a miss");
        };
        let mut upstream = HeaderMap::new();
        refill.revalidate(&mut upstream);
        assert!(upstream.is_empty(), "{headers:?}: {upstream:?}");
        // A 304 that was not asked for passes through; nothing is refreshed.
        let answer = read(refill.record(response(304, &[], ""))).await;
        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&answer, "x-cache"), Some("MISS"));
        assert_eq!(status(&cache, &req).await, Status::Miss);
    }
}

#[tokio::test]
async fn a_304_that_forbids_storing_answers_once_and_drops_the_entry() {
    let cache = Cache::new(Rules::default());
    let req = get("/gone-private");
    fill(&cache, &req, response(200, VALIDATED, "body")).await;
    cache.inner.clock.advance(Duration::from_millis(1_100));
    let Lookup::Miss(mut refill) = cache.lookup(&req).await else {
        panic!("expected a miss");
    };
    refill.revalidate(&mut HeaderMap::new());
    let answer = read(refill.record(response(
        304,
        &[("cache-control", "no-store"), ("etag", "\"v1\"")],
        "",
    )))
    .await;
    assert_eq!(answer.body(), "body");
    assert_eq!(header(&answer, "x-cache"), Some("REVALIDATED"));
    assert_eq!(header(&answer, "cache-control"), Some("no-store"));
    let Lookup::Miss(mut next) = cache.lookup(&req).await else {
        panic!("expected a miss");
    };
    let mut upstream = HeaderMap::new();
    next.revalidate(&mut upstream);
    assert!(
        upstream.is_empty(),
        "nothing left to revalidate: {upstream:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_revalidation_are_answered_from_the_refreshed_entry() {
    let cache = Arc::new(Cache::new(Rules::default()));
    let req = get("/shared");
    fill(&cache, &req, response(200, VALIDATED, "body")).await;
    cache.inner.clock.advance(Duration::from_millis(1_100));
    let Lookup::Miss(mut lead) = cache.lookup(&req).await else {
        panic!("expected a miss");
    };
    lead.revalidate(&mut HeaderMap::new());
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                match cache.lookup(&get("/shared")).await {
                    Lookup::Hit(response) => response.into_body(),
                    other => panic!("expected the refreshed entry, got {other:?}"),
                }
            })
        })
        .collect();
    // Every waiter is in line (holds the lead's receiver, besides the fills map) before the
    // 304 arrives: released as unstored, they would each go upstream instead.
    let done = &lead.lead.as_ref().expect("the exclusive fill").done;
    let deadline = Instant::now() + Duration::from_secs(5);
    while done.receiver_count() < 11 {
        assert!(Instant::now() < deadline, "waiters never got in line");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let refreshed = response(304, &[("cache-control", "max-age=60")], "");
    assert_eq!(read(lead.record(refreshed)).await.body(), "body");
    for waiter in waiters {
        assert_eq!(waiter.await.expect("task"), "body");
    }
}
