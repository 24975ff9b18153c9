//! The in-memory request and response behave like the gateway's.
#![cfg(feature = "testing")]

use std::net::{IpAddr, Ipv6Addr};

use wasmgate_sdk::prelude::*;

#[test]
fn request_accessors() {
    let req = Request::builder()
        .method("PATCH")
        .uri("https://api.example.com:8443/users/7?x=1&y=2")
        .header("X-Api-Key", "k1")
        .header("accept", "a")
        .header("accept", "b")
        .client_ip("::1")
        .build();
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(req.path(), "/users/7");
    assert_eq!(req.query().as_deref(), Some("x=1&y=2"));
    assert_eq!(req.path_with_query(), "/users/7?x=1&y=2");
    assert_eq!(req.authority().as_deref(), Some("api.example.com:8443"));
    assert_eq!(req.scheme(), "https");
    assert_eq!(req.client_ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(req.header("x-api-key").as_deref(), Some("k1"));
    assert_eq!(req.header("ACCEPT").as_deref(), Some("a"));
    assert_eq!(req.header_all("accept"), ["a", "b"]);
    assert_eq!(
        req.headers_get(&["accept", "missing", "x-api-key"]),
        [Some("a".to_owned()), None, Some("k1".to_owned())]
    );
    assert_eq!(
        req.headers(),
        [
            ("x-api-key".to_owned(), "k1".to_owned()),
            ("accept".to_owned(), "a".to_owned()),
            ("accept".to_owned(), "b".to_owned()),
        ]
    );
    assert_eq!(req.body(), Some(Vec::new()));
}

#[test]
fn request_defaults_and_host_header() {
    let req = Request::builder().header("host", "example.org").build();
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(req.path_with_query(), "/");
    assert_eq!(req.query(), None);
    assert_eq!(req.scheme(), "http");
    assert_eq!(req.client_ip().to_string(), "127.0.0.1");
    assert_eq!(req.authority().as_deref(), Some("example.org"));
}

#[test]
fn request_edits() {
    let mut req = Request::builder()
        .uri("/a?b")
        .header("x-old", "1")
        .header("x-keep", "1")
        .build();
    req.set_path_with_query("/v2/a?b=2").unwrap();
    assert_eq!(req.path(), "/v2/a");
    assert_eq!(req.query().as_deref(), Some("b=2"));
    let err = req.set_path_with_query("v2").unwrap_err();
    assert!(err.message().starts_with("invalid path \"v2\""), "{err}");

    req.append_header("x-keep", "2").unwrap();
    assert_eq!(req.header_all("x-keep"), ["1", "2"]);
    req.remove_header("x-old");
    req.remove_header("x-absent");
    req.remove_header("not a name");
    assert_eq!(req.header("x-old"), None);

    req.edit_headers(&[("x-a", "1"), ("x-keep", "3")], &["x-a"])
        .unwrap();
    assert_eq!(req.header("x-a"), None);
    assert_eq!(req.header_all("x-keep"), ["3"]);

    // A refused edit changes nothing.
    let err = req
        .edit_headers(&[("x-b", "1"), ("bad name", "1")], &["x-keep"])
        .unwrap_err();
    assert_eq!(err.message(), r#"invalid header name "bad name""#);
    assert_eq!(req.header("x-b"), None);
    assert_eq!(req.header("x-keep").as_deref(), Some("3"));

    let err = req.set_header("x-c", "line\nbreak").unwrap_err();
    assert!(
        err.message()
            .starts_with(r#"invalid value for header "x-c""#),
        "{err}"
    );
    let err: Error = req.append_header("", "v").unwrap_err().into();
    assert_eq!(err.to_string(), r#"invalid header name """#);
}

#[test]
fn bodies() {
    let mut req = Request::builder().body("hello").build();
    assert_eq!(req.body().as_deref(), Some(&b"hello"[..]));
    req.set_body("bye!!!").unwrap();
    assert_eq!(req.body().as_deref(), Some(&b"bye!!!"[..]));
    assert_eq!(req.header("content-length").as_deref(), Some("6"));

    let mut req = Request::builder().body("hello").body_unavailable().build();
    assert_eq!(req.body(), None);
    let err = req.set_body("x").unwrap_err();
    assert!(err.message().contains("needs_body"), "{err}");

    let mut resp = Response::builder().body_unavailable().build();
    assert_eq!(resp.body(), None);
    assert!(resp.set_body("x").is_err());
}

#[test]
fn request_from_http() {
    let mut http_req = http::Request::builder()
        .method("DELETE")
        .uri("http://svc.local/items/1")
        .header("x-a", "1")
        .body(b"payload".to_vec())
        .unwrap();
    http_req
        .extensions_mut()
        .insert("192.0.2.1:5000".parse::<std::net::SocketAddr>().unwrap());
    let req = Request::new(http_req);
    assert_eq!(req.method(), http::Method::DELETE);
    assert_eq!(req.path(), "/items/1");
    assert_eq!(req.authority().as_deref(), Some("svc.local"));
    assert_eq!(req.client_ip().to_string(), "192.0.2.1");
    assert_eq!(req.body().as_deref(), Some(&b"payload"[..]));

    let back = req.into_http();
    assert_eq!(back.uri(), "http://svc.local/items/1");
    assert_eq!(back.headers()["x-a"], "1");
}

#[test]
fn response_accessors_and_edits() {
    let mut resp = Response::builder()
        .status(502)
        .header("server", "up")
        .header("set-cookie", "a=1")
        .header("set-cookie", "b=2")
        .body("bad gateway")
        .build();
    assert_eq!(resp.status(), http::StatusCode::BAD_GATEWAY);
    assert_eq!(resp.header_all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(
        resp.headers_get(&["server", "nope"]),
        [Some("up".to_owned()), None]
    );
    resp.set_status(503).unwrap();
    assert_eq!(resp.status(), 503);
    let err = resp.set_status(1000).unwrap_err();
    assert_eq!(err.message(), "invalid status 1000 (100-999)");
    resp.edit_headers(&[("retry-after", "5")], &["server"])
        .unwrap();
    resp.remove_header("set-cookie");
    resp.append_header("x-n", "1").unwrap();
    assert_eq!(
        resp.headers(),
        [
            ("retry-after".to_owned(), "5".to_owned()),
            ("x-n".to_owned(), "1".to_owned())
        ]
    );
    resp.set_body("later").unwrap();
    let http_resp = resp.into_http();
    assert_eq!(http_resp.status(), 503);
    assert_eq!(http_resp.body(), b"later");
    assert_eq!(http_resp.headers()["content-length"], "5");

    let resp = Response::new(
        http::Response::builder()
            .status(204)
            .body(Vec::new())
            .unwrap(),
    );
    assert_eq!(resp.status(), 204);
}

#[test]
fn actions() {
    assert!(Action::Continue.is_continue());
    assert_eq!(
        Action::Continue.body("x").header("a", "b"),
        Action::Continue
    );
    let action = Action::respond(429)
        .header("Retry-After", "30")
        .header("x-a", "1")
        .body(vec![1, 2]);
    assert!(!action.is_continue());
    let reply = action.reply().unwrap();
    assert_eq!(reply.status(), 429);
    assert_eq!(reply.header("retry-after"), Some("30"));
    assert_eq!(reply.headers().len(), 2);
    assert_eq!(reply.body(), [1, 2]);
}

#[test]
fn hooks_combine() {
    let mut hooks = Hooks::NONE;
    assert!(hooks.is_empty());
    hooks |= Hooks::RESPONSE;
    assert!(hooks.contains(Hooks::RESPONSE) && !hooks.contains(Hooks::REQUEST));
    assert_eq!(hooks | Hooks::REQUEST, Hooks::BOTH);
    assert!(Hooks::BOTH.contains(Hooks::NONE));
}

#[test]
fn errors() {
    let err = Error::new("boom");
    assert_eq!(err.to_string(), "boom");
    let json_err = serde_json::from_str::<u8>("x").unwrap_err();
    let err: Error = json_err.into();
    assert!(err.message().starts_with("expected value"), "{err}");
    assert_eq!(ConfigError::new("bad").to_string(), "bad");
}
