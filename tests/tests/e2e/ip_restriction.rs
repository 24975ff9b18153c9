//! The shipped `ip-restriction` plugin through a real gateway: allow and deny lists matched
//! against the address the gateway saw, 127.0.0.1 for IPv4 and ::1 for IPv6. And the client
//! address itself: read from `X-Forwarded-For`, `Forwarded` or a PROXY protocol header only
//! from `trusted_proxies`, and the same for ip-restriction, per-IP rate limits and the access
//! log.

use std::net::SocketAddr;

use serde_json::Value;
use wasmgate_tests::*;

const IP_RESTRICTION: &str = env!("WASM_IP_RESTRICTION");

/// A gateway listening on `listen` with one route per `(path, config)`, each with ip-restriction
/// and that config, verbatim.
async fn gateway(listen: &str, routes: &[(&str, &str)]) -> TestGateway {
    gateway_with(listen, "", routes).await
}

/// [`gateway`] with `extra` keys in `[gateway]`.
async fn gateway_with(listen: &str, extra: &str, routes: &[(&str, &str)]) -> TestGateway {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("ip-restriction", IP_RESTRICTION)]);
    let mut toml = format!(
        "[gateway]\nlisten = [\"{listen}\"]\nplugin_cache_dir = \"\"\n{extra}\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n"
    );
    for (i, (path, config)) in routes.iter().enumerate() {
        toml.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npaths = [\"{path}\"]\nupstream = \"u\"\n\
             [[routes.plugins]]\nname = \"ip-restriction\"\nconfig = {config}\n"
        ));
    }
    TestGateway::start_in(dir, &toml).await.expect("start")
}

async fn assert_forbidden(resp: reqwest::Response) {
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert!(
        resp.headers().get("x-echo-server").is_none(),
        "the upstream was not called"
    );
    let body: Value = resp.json().await.expect("json body");
    assert_eq!(body["error"], "forbidden");
    assert_eq!(body["message"], "IP address not allowed");
}

#[tokio::test]
async fn ipv4_allow_and_deny_lists_match_the_clients_address() {
    let gw = gateway(
        "127.0.0.1:0",
        &[
            ("/allow-loopback", r#"{ allow = ["127.0.0.0/8"] }"#),
            ("/allow-exact", r#"{ allow = ["127.0.0.1"] }"#),
            ("/allow-other", r#"{ allow = ["10.0.0.0/8", "192.0.2.1"] }"#),
            ("/deny-exact", r#"{ deny = ["127.0.0.1"] }"#),
            ("/deny-other", r#"{ deny = ["10.0.0.0/8", "::1"] }"#),
        ],
    )
    .await;
    let c = client();
    for path in ["/allow-loopback", "/allow-exact", "/deny-other"] {
        let resp = c.get(gw.url(path)).send().await.expect("send");
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["x-echo-server"], "up", "{path}");
    }
    for path in ["/allow-other", "/deny-exact"] {
        assert_forbidden(c.get(gw.url(path)).send().await.expect("send")).await;
    }
}

/// `[::1]` when this machine has IPv6 loopback, otherwise `None` (the test then says so and
/// passes: there is nothing to test).
fn ipv6_loopback() -> Option<SocketAddr> {
    let listener = std::net::TcpListener::bind("[::1]:0").ok()?;
    listener.local_addr().ok()
}

#[tokio::test]
async fn ipv6_allow_and_deny_lists_match_the_clients_address() {
    if ipv6_loopback().is_none() {
        eprintln!("skipped: cannot bind [::1] on this machine");
        return;
    }
    let gw = gateway(
        "[::1]:0",
        &[
            ("/allow-exact", r#"{ allow = ["::1"] }"#),
            ("/allow-net", r#"{ allow = ["::/64"] }"#),
            ("/allow-v4", r#"{ allow = ["127.0.0.1"] }"#),
            ("/deny-exact", r#"{ deny = ["::1/128"] }"#),
            (
                "/deny-other",
                r#"{ deny = ["2001:db8::/32", "127.0.0.1"] }"#,
            ),
        ],
    )
    .await;
    assert!(gw.http.is_ipv6(), "{}", gw.http);
    let c = client();
    for path in ["/allow-exact", "/allow-net", "/deny-other"] {
        let resp = c.get(gw.url(path)).send().await.expect("send");
        assert_eq!(resp.status(), 200, "{path}");
    }
    for path in ["/allow-v4", "/deny-exact"] {
        assert_forbidden(c.get(gw.url(path)).send().await.expect("send")).await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_the_address_it_forwards() {
    let routes = [("/", r#"{ allow = ["198.51.100.0/24"] }"#)];
    let forwarded_for = |gw: &TestGateway, xff: &'static str| {
        client()
            .get(gw.url("/"))
            .header("x-forwarded-for", xff)
            .send()
    };
    // No trusted proxies: the header is data; the client is the peer, 127.0.0.1.
    let untrusting = gateway("127.0.0.1:0", &routes).await;
    assert_forbidden(
        forwarded_for(&untrusting, "198.51.100.7")
            .await
            .expect("send"),
    )
    .await;

    let trusting = gateway_with("127.0.0.1:0", "trusted_proxies = [\"127.0.0.1\"]", &routes).await;
    let resp = forwarded_for(&trusting, "198.51.100.7")
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let echoed: Value = resp.json().await.expect("json");
    // The chain goes on to the upstream with the proxy's own hop appended.
    assert_eq!(
        echoed["headers"]["x-forwarded-for"],
        "198.51.100.7, 127.0.0.1"
    );
    // A client that forges an allowed address at the left is read from the right.
    assert_forbidden(
        forwarded_for(&trusting, "198.51.100.7, 203.0.113.5")
            .await
            .expect("send"),
    )
    .await;

    let forwarded = gateway_with(
        "127.0.0.1:0",
        "trusted_proxies = [\"127.0.0.0/8\"]\nclient_address_header = \"forwarded\"",
        &routes,
    )
    .await;
    let resp = client()
        .get(forwarded.url("/"))
        .header("forwarded", "for=198.51.100.9;proto=https")
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "Forwarded is the configured header");
}

/// Sends `header` then a GET on one connection; the answer (empty when the gateway closed it).
async fn with_proxy_header(gw: &TestGateway, header: &[u8]) -> String {
    with_proxy_header_to(gw, header, "/").await
}

/// [`with_proxy_header`] with a GET of `path`.
async fn with_proxy_header_to(gw: &TestGateway, header: &[u8], path: &str) -> String {
    let mut raw = header.to_vec();
    raw.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes(),
    );
    let started = std::time::Instant::now();
    let answer = raw_exchange(gw.http, &raw, std::time::Duration::from_secs(5))
        .await
        .expect("exchange");
    // Answered or closed at once, never left hanging.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "hung: {answer:?}"
    );
    answer
}

#[tokio::test]
async fn a_proxy_protocol_header_names_the_client_and_is_required() {
    let routes = [("/", r#"{ allow = ["198.51.100.0/24", "2001:db8::/32"] }"#)];
    let gw = gateway_with(
        "127.0.0.1:0",
        "trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true",
        &routes,
    )
    .await;
    // v1, as text.
    let answer = with_proxy_header(&gw, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n").await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    // v2, binary, built by the parser crate's own builder.
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::9]:40000".parse::<SocketAddr>().expect("addr"),
            "[::1]:80".parse::<SocketAddr>().expect("addr"),
        ),
    )
    .build()
    .expect("v2 header");
    let answer = with_proxy_header(&gw, &v2).await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
    // A client outside the allowed networks, named by the header: refused by the plugin.
    let answer = with_proxy_header(&gw, b"PROXY TCP4 203.0.113.5 127.0.0.1 40000 80\r\n").await;
    assert_eq!(raw_status(&answer), Some(403), "{answer}");
    // No header, or a broken one: the connection is closed unanswered.
    assert_eq!(with_proxy_header(&gw, b"").await, "");
    assert_eq!(with_proxy_header(&gw, b"PROXY TCP4 nonsense\r\n").await, "");

    // A peer that is not a trusted proxy may not send one at all.
    let untrusted = gateway_with(
        "127.0.0.1:0",
        "trusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = true",
        &routes,
    )
    .await;
    let answer = with_proxy_header(
        &untrusted,
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n",
    )
    .await;
    assert_eq!(answer, "");
}

#[tokio::test]
async fn a_proxy_protocol_header_naming_no_client_leaves_the_peer_as_the_client() {
    // `/peer` lets only the peer itself through; `/` only the networks a header could name.
    let routes = [
        ("/peer", r#"{ allow = ["127.0.0.1"] }"#),
        ("/", r#"{ allow = ["198.51.100.0/24"] }"#),
    ];
    let gw = gateway_with(
        "127.0.0.1:0",
        "trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true",
        &routes,
    )
    .await;
    use ppp::v2::{AddressFamily, Builder, Command, Protocol, Version};
    // What a balancer sends for its own health checks: v2 LOCAL (bare, or with addresses, which
    // LOCAL says to ignore) and v1 UNKNOWN.
    let local = Builder::new(
        Version::Two | Command::Local,
        AddressFamily::Unspecified | Protocol::Unspecified,
    )
    .build()
    .expect("v2 LOCAL header");
    let local_with_addresses = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Stream,
        (
            "198.51.100.7:40000".parse::<SocketAddr>().expect("addr"),
            "127.0.0.1:80".parse::<SocketAddr>().expect("addr"),
        ),
    )
    .build()
    .expect("v2 LOCAL header with addresses");
    let headers: [(&str, &[u8]); 3] = [
        ("v2 LOCAL", &local),
        ("v2 LOCAL with addresses", &local_with_addresses),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n"),
    ];
    for (what, header) in headers {
        let answer = with_proxy_header_to(&gw, header, "/peer").await;
        assert_eq!(raw_status(&answer), Some(200), "{what}: {answer}");
        // The hop the gateway appends is its client: the peer.
        assert!(
            answer.contains(r#""x-forwarded-for":"127.0.0.1""#),
            "{what}: {answer}"
        );
        let answer = with_proxy_header_to(&gw, header, "/").await;
        assert_eq!(raw_status(&answer), Some(403), "{what}: {answer}");
    }
}

const RATE_LIMIT: &str = env!("WASM_RATE_LIMIT");

/// A gateway with `extra` in `[gateway]` and its access log in a file, whose one route lets each
/// client IP make one request an hour (198.51.100.3 two); the access log's path.
async fn rate_limited_per_ip(extra: &str) -> (TestGateway, std::path::PathBuf) {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("rate-limit", RATE_LIMIT)]);
    let log = dir.path().join("access.log");
    let toml = format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\nplugin_cache_dir = \"\"\naccess_log = \"{}\"\n{extra}\n\
         [upstreams.u]\ntargets = [\"{up}\"]\n\
         [[routes]]\nname = \"all\"\nupstream = \"u\"\n\
         [[routes.plugins]]\nname = \"rate-limit\"\n\
         config = {{ limit = 1, window = \"1h\", by = \"ip\", algorithm = \"token_bucket\", \
         overrides = {{ \"198.51.100.3\" = 2 }} }}\n",
        log.display()
    );
    let gw = TestGateway::start_in(dir, &toml).await.expect("start");
    (gw, log)
}

/// The statuses of GETs sent with each `X-Forwarded-For` in turn.
async fn statuses_forwarded_for(gw: &TestGateway, chain: &[&str]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for xff in chain {
        let resp = client()
            .get(gw.url("/"))
            .header("x-forwarded-for", *xff)
            .send()
            .await
            .expect("send");
        statuses.push(resp.status().as_u16());
    }
    statuses
}

/// The `client` of the access log's first `n` lines, once it has them.
async fn logged_clients(log: &std::path::Path, n: usize) -> Vec<String> {
    let lines = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let entry: Value = serde_json::from_str(l).expect("a JSON line");
                entry["client"].as_str().expect("client").to_owned()
            })
            .collect::<Vec<_>>()
    };
    eventually(
        std::time::Duration::from_secs(5),
        "the access log lines",
        || lines().len() >= n,
    )
    .await;
    lines()
}

#[tokio::test]
async fn per_ip_rate_limits_and_the_access_log_use_the_forwarded_client_only_from_a_trusted_proxy()
{
    // The peer is a trusted proxy: each address it forwards is a client of its own, counted
    // apart, and overrides keyed by it apply.
    let (trusting, log) = rate_limited_per_ip("trusted_proxies = [\"127.0.0.1\"]").await;
    let sent = [
        "198.51.100.1",
        "198.51.100.1",
        "198.51.100.2",
        // A hop the client wrote itself is passed over: the proxy's is the nearest.
        "203.0.113.9, 198.51.100.3",
        "198.51.100.3",
        "198.51.100.3",
    ];
    assert_eq!(
        statuses_forwarded_for(&trusting, &sent).await,
        [200, 429, 200, 200, 200, 429]
    );
    assert_eq!(
        logged_clients(&log, sent.len()).await,
        [
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.3",
            "198.51.100.3"
        ]
    );

    // The peer is not trusted: whatever it claims, every request is the peer's, counted as one.
    let (untrusting, log) = rate_limited_per_ip("trusted_proxies = [\"10.0.0.0/8\"]").await;
    assert_eq!(
        statuses_forwarded_for(&untrusting, &["198.51.100.1", "198.51.100.3"]).await,
        [200, 429]
    );
    assert_eq!(logged_clients(&log, 2).await, ["127.0.0.1", "127.0.0.1"]);
}

/// A gateway with `extra` in `[gateway]`, balancing by client IP over three echo targets.
async fn hashing_by_ip(extra: &str) -> TestGateway {
    let mut targets = Vec::new();
    for name in ["a", "b", "c"] {
        targets.push(format!("\"{}\"", echo_upstream(name).await));
    }
    TestGateway::start(&format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n\
         [upstreams.pool]\ntargets = [{}]\nbalance = \"hash\"\nhash_on = \"ip\"\n\
         [[routes]]\nname = \"all\"\nupstream = \"pool\"\n",
        targets.join(", ")
    ))
    .await
    .expect("start")
}

/// The target that served each of 20 forwarded addresses, asked twice each.
async fn owners_of_forwarded(gw: &TestGateway) -> std::collections::HashSet<String> {
    let mut owners = std::collections::HashSet::new();
    for host in 1..=20u8 {
        let xff = format!("198.51.100.{host}");
        let mut served = Vec::new();
        for _ in 0..2 {
            let resp = client()
                .get(gw.url("/"))
                .header("x-forwarded-for", &xff)
                .send()
                .await
                .expect("send");
            served.push(served_by(&resp));
        }
        assert_eq!(served[0], served[1], "{xff} moved");
        owners.insert(served[0].clone());
    }
    owners
}

#[tokio::test]
async fn hash_balancing_by_ip_uses_the_forwarded_client_only_from_a_trusted_proxy() {
    // Through a trusted proxy, 20 clients: spread, each kept on its target.
    let trusting = hashing_by_ip("trusted_proxies = [\"127.0.0.1\"]").await;
    let owners = owners_of_forwarded(&trusting).await;
    assert!(owners.len() >= 2, "20 clients all on {owners:?}");
    // From an untrusted peer, whatever it forwards, one client: one target.
    let untrusting = hashing_by_ip("trusted_proxies = [\"10.0.0.0/8\"]").await;
    let owners = owners_of_forwarded(&untrusting).await;
    assert_eq!(owners.len(), 1, "{owners:?}");
}
