//! Unit tests of the whole plugin through the SDK's in-memory gateway (feature `testing`).

use serde_json::{Value, json};
use wasmgate_sdk::testing;

use super::*;

/// The issue's config shape, every key used (as JSON, the way the gateway hands it over).
const FULL_CONFIG: &str = r#"{
  "request": {
    "set_headers": { "x-source": "gateway" },
    "add_headers": { "x-tag": "added" },
    "remove_headers": ["x-debug"],
    "rename_headers": { "x-old-name": "x-new-name" },
    "rewrite_path": { "pattern": "^/old/(.*)$", "replacement": "/new/$1" },
    "set_query": { "version": "2" },
    "remove_query": ["debug"],
    "json_body": { "set": { "source": "gateway", "meta": { "v": 2 } }, "remove": ["password"] }
  },
  "response": {
    "set_headers": { "x-served-by": "wasmgate" },
    "remove_headers": ["server"],
    "json_body": { "set": { "wrapped": true }, "remove": ["internal"] }
  }
}"#;

fn plugin(config: &str) -> Transform {
    testing::instance::<Transform>(config).expect("valid config")
}

fn refused(config: &str) -> String {
    testing::instance::<Transform>(config)
        .expect_err("refused")
        .message()
        .to_owned()
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("json")
}

#[test]
fn applies_every_request_edit() {
    let p = plugin(FULL_CONFIG);
    let mut req = Request::builder()
        .method("POST")
        .uri("/old/users/7?debug=1&page=2")
        .header("content-type", "application/json")
        .header("x-debug", "1")
        .header("x-old-name", "v")
        .header("x-tag", "client")
        .header("x-source", "spoofed")
        .body(r#"{"user":"ann","password":"hunter2"}"#)
        .build();
    assert!(
        testing::on_request(&p, &mut req, &Context::new())
            .unwrap()
            .is_continue()
    );
    assert_eq!(req.path_with_query(), "/new/users/7?page=2&version=2");
    assert_eq!(req.header("x-debug"), None);
    assert_eq!(req.header("x-old-name"), None);
    assert_eq!(req.header("x-new-name").as_deref(), Some("v"));
    assert_eq!(req.header_all("x-source"), ["gateway"]);
    assert_eq!(req.header_all("x-tag"), ["client", "added"]);
    let body = req.body().expect("body");
    assert_eq!(
        json_of(&body),
        json!({ "user": "ann", "source": "gateway", "meta": { "v": 2 } })
    );
    assert_eq!(
        req.header("content-length"),
        Some(body.len().to_string()),
        "content-length follows the new body"
    );
}

#[test]
fn applies_every_response_edit() {
    let p = plugin(FULL_CONFIG);
    let mut resp = Response::builder()
        .header("content-type", "application/json; charset=utf-8")
        .header("server", "upstream/1.0")
        .body(r#"{"data":[1,2],"internal":"x"}"#)
        .build();
    assert!(
        testing::on_response(&p, &Request::builder().build(), &mut resp, &Context::new())
            .unwrap()
            .is_continue()
    );
    assert_eq!(resp.header("server"), None);
    assert_eq!(resp.header("x-served-by").as_deref(), Some("wasmgate"));
    assert_eq!(
        resp.body().as_deref(),
        Some(&br#"{"data":[1,2],"wrapped":true}"#[..])
    );
}

#[test]
fn non_json_and_unavailable_bodies_pass_untouched() {
    let p = plugin(FULL_CONFIG);
    let mut text = Request::builder()
        .uri("/x")
        .header("content-type", "text/plain")
        .body(r#"{"password":"p"}"#)
        .build();
    testing::on_request(&p, &mut text, &Context::new()).unwrap();
    assert_eq!(text.body().as_deref(), Some(&br#"{"password":"p"}"#[..]));
    assert_eq!(text.header("content-length"), None);

    let mut untyped = Request::builder()
        .uri("/x")
        .body(r#"{"password":"p"}"#)
        .build();
    testing::on_request(&p, &mut untyped, &Context::new()).unwrap();
    assert_eq!(untyped.body().as_deref(), Some(&br#"{"password":"p"}"#[..]));

    // A response over the route's max_body: the gateway hands over no body.
    let mut big = Response::builder()
        .header("content-type", "application/json")
        .body_unavailable()
        .build();
    testing::on_response(&p, &Request::builder().build(), &mut big, &Context::new()).unwrap();
    assert_eq!(big.header("x-served-by").as_deref(), Some("wasmgate"));

    let mut array = Response::builder()
        .header("content-type", "application/json")
        .body("[1,2]")
        .build();
    testing::on_response(&p, &Request::builder().build(), &mut array, &Context::new()).unwrap();
    assert_eq!(array.body().as_deref(), Some(&b"[1,2]"[..]));
}

#[test]
fn paths_that_do_not_match_keep_their_path_but_get_query_edits() {
    let p = plugin(FULL_CONFIG);
    let mut req = Request::builder().uri("/other?a=%20b&debug").build();
    testing::on_request(&p, &mut req, &Context::new()).unwrap();
    assert_eq!(req.path_with_query(), "/other?a=%20b&version=2");
}

#[test]
fn a_rewrite_alone_keeps_the_query_as_sent() {
    let p = plugin(
        r#"{ "request": { "rewrite_path": { "pattern": "^/api/v1/", "replacement": "/v2/" } } }"#,
    );
    let mut req = Request::builder().uri("/api/v1/items?q=a+b&x=%2F").build();
    testing::on_request(&p, &mut req, &Context::new()).unwrap();
    assert_eq!(req.path_with_query(), "/v2/items?q=a+b&x=%2F");
    let mut other = Request::builder().uri("/health?x=1").build();
    testing::on_request(&p, &mut other, &Context::new()).unwrap();
    assert_eq!(other.path_with_query(), "/health?x=1");
}

#[test]
fn removing_the_last_query_parameter_drops_the_question_mark() {
    let p = plugin(r#"{ "request": { "remove_query": ["token"] } }"#);
    let mut req = Request::builder().uri("/a?token=s").build();
    testing::on_request(&p, &mut req, &Context::new()).unwrap();
    assert_eq!(req.path_with_query(), "/a");
}

#[test]
fn declares_only_the_hooks_and_bodies_its_config_uses() {
    let request_only = plugin(r#"{ "request": { "set_headers": { "x-a": "1" } } }"#);
    assert_eq!(
        request_only.hooks(),
        Hooks::NONE,
        "fixed headers need no call"
    );
    assert_eq!(request_only.fixed_edits().request().len(), 1);
    assert!(!request_only.needs_body());
    let response_only = plugin(r#"{ "response": { "remove_headers": ["server"] } }"#);
    assert_eq!(
        response_only.hooks(),
        Hooks::NONE,
        "fixed headers need no call"
    );
    assert_eq!(response_only.fixed_edits().response().len(), 1);
    assert!(!response_only.needs_body());
    let renames = plugin(r#"{ "request": { "rename_headers": { "x-a": "x-b" } } }"#);
    assert_eq!(
        renames.hooks(),
        Hooks::REQUEST,
        "a rename reads the request"
    );
    assert!(renames.fixed_edits().request().is_empty());
    let query_only = plugin(r#"{ "request": { "remove_query": ["a"] } }"#);
    assert_eq!(query_only.hooks(), Hooks::REQUEST);
    let full = plugin(FULL_CONFIG);
    assert_eq!(full.hooks(), Hooks::BOTH);
    assert!(full.needs_body());
    let response_json = plugin(r#"{ "response": { "json_body": { "remove": ["x"] } } }"#);
    assert_eq!(response_json.hooks(), Hooks::RESPONSE);
    assert!(response_json.needs_body());
    assert_eq!(plugin("{}").hooks(), Hooks::NONE);
}

#[test]
fn refuses_bad_configs_naming_the_key() {
    let err = refused(r#"{ "request": { "set_header": {} } }"#);
    assert!(
        err.starts_with("request: unknown field `set_header`"),
        "{err}"
    );
    let err = refused(r#"{ "requests": {} }"#);
    assert!(err.starts_with("unknown field `requests`"), "{err}");
    let err = refused(r#"{ "request": { "set_headers": { "x-a": 1 } } }"#);
    assert!(
        err.starts_with("request.set_headers.x-a: invalid type: integer `1`, expected a string"),
        "{err}"
    );
    let err = refused(r#"{ "request": { "remove_headers": ["ok", 2] } }"#);
    assert!(
        err.starts_with("request.remove_headers[1]: invalid type"),
        "{err}"
    );
    let err = refused(
        r#"{ "request": { "rewrite_path": { "pattern": "^/old/(.*$", "replacement": "/new/$1" } } }"#,
    );
    assert!(
        err.starts_with(
            r#"request.rewrite_path.pattern = "^/old/(.*$": invalid regular expression"#
        ),
        "{err}"
    );
    let err = refused(r#"{ "request": { "rewrite_path": { "pattern": "^/old" } } }"#);
    assert!(
        err.starts_with("request.rewrite_path: missing field `replacement`"),
        "{err}"
    );
    let err = refused(r#"{ "response": { "json_body": { "set": {}, "remove": [] } } }"#);
    assert!(
        err.starts_with("response.json_body: give `set` or `remove`"),
        "{err}"
    );
    let err = refused(r#"{ "response": { "rename_headers": { "a": "b" } } }"#);
    assert!(
        err.starts_with("response: unknown field `rename_headers`"),
        "{err}"
    );
}
