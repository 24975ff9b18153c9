//! Unit tests of the whole plugin through the SDK's in-memory gateway (feature `testing`).

use wasmgate_sdk::testing;

use super::*;

/// The issue's config shape, as JSON.
const ISSUE_CONFIG: &str = r#"{
  "origins": ["https://app.example.com", "https://*.example.org"],
  "methods": ["GET", "POST"],
  "headers": ["content-type", "x-api-key"],
  "expose_headers": ["x-request-id"],
  "credentials": false,
  "max_age": "10m"
}"#;

fn plugin(config: &str) -> Cors {
    testing::instance::<Cors>(config).expect("valid config")
}

fn refused(config: &str) -> String {
    testing::instance::<Cors>(config)
        .expect_err("refused")
        .message()
        .to_owned()
}

fn preflight(origin: &str) -> Request<'static> {
    Request::builder()
        .method("OPTIONS")
        .uri("/api/items")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-custom")
        .build()
}

/// Runs a request through `on_request` and, when it continues, an upstream response (with
/// `upstream` headers) through `on_response`: the final response's headers.
fn exchange(p: &Cors, mut req: Request<'static>, upstream: &[(&str, &str)]) -> Response<'static> {
    let ctx = Context::new();
    assert!(
        p.on_request(&mut req, &ctx)
            .expect("on_request")
            .is_continue(),
        "not a preflight"
    );
    let mut resp = upstream
        .iter()
        .fold(Response::builder(), |b, (n, v)| b.header(n, v))
        .build();
    p.on_response(&mut resp, &ctx).expect("on_response");
    resp
}

fn get(origin: Option<&str>) -> Request<'static> {
    let b = Request::builder().uri("/api/items");
    match origin {
        Some(o) => b.header("origin", o).build(),
        None => b.build(),
    }
}

#[test]
fn answers_an_allowed_preflight_with_204_and_every_header() {
    let p = plugin(ISSUE_CONFIG);
    let action = p
        .on_request(&mut preflight("https://app.example.com"), &Context::new())
        .unwrap();
    let reply = action.reply().expect("answered by the plugin");
    assert_eq!(reply.status(), 204);
    assert_eq!(reply.header(ALLOW_ORIGIN), Some("https://app.example.com"));
    assert_eq!(reply.header(ALLOW_METHODS), Some("GET, POST"));
    assert_eq!(reply.header(ALLOW_HEADERS), Some("content-type, x-api-key"));
    assert_eq!(reply.header(MAX_AGE), Some("600"));
    assert_eq!(reply.header(ALLOW_CREDENTIALS), None);
    assert_eq!(reply.header("vary"), Some("Origin"));
    assert!(reply.body().is_empty());
}

#[test]
fn refuses_a_preflight_from_another_origin_without_cors_headers() {
    let p = plugin(ISSUE_CONFIG);
    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let action = p
            .on_request(&mut preflight(origin), &Context::new())
            .unwrap();
        let reply = action.reply().expect("answered");
        assert_eq!(reply.status(), 403, "{origin}");
        assert!(
            reply
                .headers()
                .iter()
                .all(|(n, _)| !n.starts_with("access-control-")),
            "{origin}: {:?}",
            reply.headers()
        );
        assert!(!String::from_utf8_lossy(reply.body()).contains(origin));
        assert_eq!(reply.header("vary"), Some("Origin"));
    }
}

#[test]
fn echoes_the_requested_headers_when_none_are_configured() {
    let p = plugin(r#"{ "origins": ["https://app.example.com"], "credentials": true }"#);
    let action = p
        .on_request(&mut preflight("https://app.example.com"), &Context::new())
        .unwrap();
    let reply = action.reply().expect("answered");
    assert_eq!(reply.header(ALLOW_HEADERS), Some("content-type, x-custom"));
    assert_eq!(
        reply.header(ALLOW_METHODS),
        Some("GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS")
    );
    assert_eq!(reply.header(ALLOW_CREDENTIALS), Some("true"));
    assert_eq!(reply.header(MAX_AGE), None);
    assert_eq!(
        reply.header("vary"),
        Some("Origin, Access-Control-Request-Headers")
    );
}

#[test]
fn options_without_a_requested_method_is_forwarded() {
    let p = plugin(ISSUE_CONFIG);
    let req = Request::builder()
        .method("OPTIONS")
        .header("origin", "https://app.example.com")
        .build();
    let resp = exchange(&p, req, &[]);
    assert_eq!(
        resp.header(ALLOW_ORIGIN).as_deref(),
        Some("https://app.example.com")
    );
}

#[test]
fn allowed_origins_get_their_origin_back_and_the_exposed_headers() {
    let p = plugin(ISSUE_CONFIG);
    for origin in ["https://app.example.com", "https://a.b.example.org"] {
        let resp = exchange(&p, get(Some(origin)), &[("content-type", "text/plain")]);
        assert_eq!(resp.header(ALLOW_ORIGIN).as_deref(), Some(origin));
        assert_eq!(resp.header(EXPOSE_HEADERS).as_deref(), Some("x-request-id"));
        assert_eq!(resp.header(ALLOW_CREDENTIALS), None);
        assert_eq!(resp.header_all("vary"), ["Origin"]);
    }
}

#[test]
fn credentials_add_allow_credentials_to_responses() {
    let p = plugin(r#"{ "origins": ["https://app.example.com"], "credentials": true }"#);
    let resp = exchange(&p, get(Some("https://app.example.com")), &[]);
    assert_eq!(resp.header(ALLOW_CREDENTIALS).as_deref(), Some("true"));
    assert_eq!(resp.header(EXPOSE_HEADERS), None);
}

#[test]
fn other_origins_get_no_cors_headers_even_from_the_upstream() {
    let p = plugin(ISSUE_CONFIG);
    let upstream = [
        (ALLOW_ORIGIN, "*"),
        (ALLOW_CREDENTIALS, "true"),
        (EXPOSE_HEADERS, "x-secret"),
    ];
    for origin in [Some("https://evil.example"), None] {
        let resp = exchange(&p, get(origin), &upstream);
        assert_eq!(resp.header(ALLOW_ORIGIN), None, "{origin:?}");
        assert_eq!(resp.header(ALLOW_CREDENTIALS), None);
        assert_eq!(resp.header(EXPOSE_HEADERS), None);
        assert_eq!(resp.header_all("vary"), ["Origin"], "{origin:?}");
    }
}

#[test]
fn vary_is_appended_to_not_clobbered() {
    let p = plugin(ISSUE_CONFIG);
    let resp = exchange(
        &p,
        get(Some("https://app.example.com")),
        &[("vary", "Accept-Encoding"), ("vary", "Accept-Language")],
    );
    assert_eq!(
        resp.header_all("vary"),
        ["Accept-Encoding, Accept-Language, Origin"]
    );
    let already = exchange(&p, get(None), &[("vary", "accept-encoding, origin")]);
    assert_eq!(already.header_all("vary"), ["accept-encoding, origin"]);
    let star = exchange(&p, get(None), &[("vary", "*")]);
    assert_eq!(star.header_all("vary"), ["*"]);
}

#[test]
fn star_allows_every_origin_with_a_literal_star() {
    let p = plugin(r#"{ "origins": ["*"], "expose_headers": ["x-total"] }"#);
    let action = p
        .on_request(&mut preflight("https://anyone.example"), &Context::new())
        .unwrap();
    let reply = action.reply().expect("answered");
    assert_eq!(reply.status(), 204);
    assert_eq!(reply.header(ALLOW_ORIGIN), Some("*"));
    assert_eq!(reply.header("vary"), Some("Access-Control-Request-Headers"));
    let resp = exchange(
        &p,
        get(Some("https://anyone.example")),
        &[(ALLOW_CREDENTIALS, "true")],
    );
    assert_eq!(resp.header(ALLOW_ORIGIN).as_deref(), Some("*"));
    assert_eq!(resp.header(EXPOSE_HEADERS).as_deref(), Some("x-total"));
    assert_eq!(resp.header(ALLOW_CREDENTIALS), None);
    assert_eq!(resp.header("vary"), None);
}

#[test]
fn refuses_bad_configs_naming_the_key_and_value() {
    assert!(
        refused(r#"{ "origins": ["*"], "credentials": true }"#)
            .starts_with(r#"credentials = true with origins = ["*"]"#)
    );
    assert!(refused("{}").contains("missing field `origins`"));
    assert_eq!(
        refused(r#"{ "origins": ["https://a.com"], "methods": ["GET", "BAD METHOD"] }"#),
        r#"methods[1] = "BAD METHOD": not a valid method"#
    );
    assert_eq!(
        refused(r#"{ "origins": ["https://a.com"], "methods": [] }"#),
        "methods: must list at least one method (leave it out for the default list)"
    );
    assert_eq!(
        refused(r#"{ "origins": ["https://a.com"], "headers": ["x a"] }"#),
        r#"headers[0] = "x a": not a valid header name"#
    );
    assert!(
        refused(
            r#"{ "origins": ["https://a.com"], "credentials": true, "expose_headers": ["*"] }"#
        )
        .starts_with(r#"expose_headers[0] = "*": browsers do not treat"#)
    );
    assert_eq!(
        refused(r#"{ "origins": ["https://a.com"], "headers": ["X-A", "x-a"] }"#),
        r#"headers[1] = "x-a": listed twice"#
    );
    let err = refused(r#"{ "origins": ["https://a.com", 7] }"#);
    assert!(
        err.starts_with("origins[1]: invalid type: integer `7`"),
        "{err}"
    );
    let err = refused(r#"{ "origins": ["https://a.com"], "max_age": "forever" }"#);
    assert!(err.starts_with("max_age: invalid duration"), "{err}");
    let err = refused(r#"{ "origins": ["https://a.com"], "origin": [] }"#);
    assert!(err.starts_with("unknown field `origin`"), "{err}");
}
