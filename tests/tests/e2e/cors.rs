//! The shipped `cors` plugin through a real gateway, with the issue's config shape: preflights
//! answered by the plugin, origin filtering, `Vary: Origin`, and CORS headers on an auth
//! plugin's 401.

use serde_json::Value;
use wasmgate_tests::*;

const CORS: &str = env!("WASM_CORS");
const KEY_AUTH: &str = env!("WASM_KEY_AUTH");

const ALLOWED: &str = "https://app.example.com";

/// Route `/api`: cors with the issue's keys; route `/auth`: cors, then key-auth.
async fn gateway() -> TestGateway {
    let up = echo_upstream("up").await;
    let dir = workdir_with_plugins(&[("cors", CORS), ("key-auth", KEY_AUTH)]);
    let cors = r#"{ origins = ["https://app.example.com", "https://*.example.org"], methods = ["GET", "POST"], headers = ["content-type", "x-api-key"], expose_headers = ["x-request-id"], credentials = false, max_age = "10m" }"#;
    TestGateway::start_in(
        dir,
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "api"
            paths = ["/api"]
            upstream = "u"
            [[routes.plugins]]
            name = "cors"
            config = {cors}
            [[routes]]
            name = "auth"
            paths = ["/auth"]
            upstream = "u"
            [[routes.plugins]]
            name = "cors"
            config = {{ origins = ["{ALLOWED}"], credentials = true }}
            [[routes.plugins]]
            name = "key-auth"
            config = {{ header = "x-api-key", keys = {{ alice = "k-alice", bob = "k-bob" }} }}
            "#
        ),
    )
    .await
    .expect("start")
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

fn cors_headers(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn preflight(gw: &TestGateway, path: &str, origin: &str) -> reqwest::RequestBuilder {
    client()
        .request(reqwest::Method::OPTIONS, gw.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
}

#[tokio::test]
async fn answers_an_allowed_preflight_itself() {
    let gw = gateway().await;
    for origin in [ALLOWED, "https://eu.shop.example.org"] {
        let resp = preflight(&gw, "/api/items", origin)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 204, "{origin}");
        assert!(
            header(&resp, "x-echo-server").is_none(),
            "the upstream was not called"
        );
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        assert_eq!(
            header(&resp, "access-control-allow-methods").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(
            header(&resp, "access-control-allow-headers").as_deref(),
            Some("content-type, x-api-key")
        );
        assert_eq!(
            header(&resp, "access-control-max-age").as_deref(),
            Some("600")
        );
        assert!(header(&resp, "access-control-allow-credentials").is_none());
        assert_eq!(header(&resp, "vary").as_deref(), Some("Origin"));
        assert!(resp.bytes().await.expect("body").is_empty());
    }
}

#[tokio::test]
async fn refuses_a_preflight_from_another_origin_without_naming_it() {
    let gw = gateway().await;
    for origin in [
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.example",
        "https://example.org",
        "null",
    ] {
        let resp = preflight(&gw, "/api/items", origin)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 403, "{origin}");
        assert!(
            cors_headers(&resp).is_empty(),
            "{origin}: {:?}",
            cors_headers(&resp)
        );
        assert!(header(&resp, "x-echo-server").is_none());
        let body = resp.text().await.expect("text");
        assert!(!body.contains(origin), "{body}");
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["error"], "forbidden");
    }
}

#[tokio::test]
async fn adds_cors_headers_for_allowed_origins_only() {
    let gw = gateway().await;
    let c = client();
    let resp = c
        .get(gw.url("/api/items"))
        .header("origin", "HTTPS://App.Example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-echo-server").as_deref(), Some("up"));
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("HTTPS://App.Example.com"),
        "the origin as the browser sent it"
    );
    assert_eq!(
        header(&resp, "access-control-expose-headers").as_deref(),
        Some("x-request-id")
    );
    assert_eq!(header(&resp, "vary").as_deref(), Some("Origin"));

    for origin in [Some("https://evil.example"), None] {
        let mut req = c.get(gw.url("/api/items"));
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), 200, "the request itself still goes through");
        assert!(cors_headers(&resp).is_empty(), "{origin:?}");
        assert_eq!(
            header(&resp, "vary").as_deref(),
            Some("Origin"),
            "{origin:?}: caches must tell origins apart"
        );
    }
}

/// Listed before key-auth, cors answers preflights (which carry no key) and puts its headers on
/// key-auth's 401, so the browser lets the page read it.
#[tokio::test]
async fn works_in_front_of_an_auth_plugin() {
    let gw = gateway().await;
    let c = client();
    let resp = preflight(&gw, "/auth/x", ALLOWED)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    assert_eq!(
        header(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(&resp, "access-control-allow-headers").as_deref(),
        Some("content-type"),
        "no headers configured: the requested ones are echoed"
    );

    let resp = c
        .get(gw.url("/auth/x"))
        .header("origin", ALLOWED)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(ALLOWED)
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );

    let resp = c
        .get(gw.url("/auth/x"))
        .header("origin", ALLOWED)
        .header("x-api-key", "k-alice")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some(ALLOWED)
    );
}
