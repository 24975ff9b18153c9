//! The walkthrough's plugin, tested natively through the `testing` API as a plugin author would.
#![cfg(feature = "testing")]

use wasmgate_sdk::prelude::*;
use wasmgate_sdk::testing;

#[derive(Deserialize)]
struct Config {
    header: String,
    value: String,
}

struct Tagger {
    config: Config,
}

impl Plugin for Tagger {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        if config.header.is_empty() {
            return Err(ConfigError::new("header must not be empty"));
        }
        Ok(Self { config })
    }

    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        if req.path().ends_with("/deny") {
            return Ok(Action::respond(403).body("denied by tagger"));
        }
        req.set_header(&self.config.header, &self.config.value)?;
        ctx.set("tagger.seen", "yes");
        Ok(Action::Continue)
    }

    fn on_response(&self, resp: &mut Response<'_>, ctx: &Context) -> Result<Action, Error> {
        let seen = ctx.get("tagger.seen").unwrap_or_default();
        resp.set_header("x-tagger-seen", &seen)?;
        Ok(Action::Continue)
    }
}

fn tagger() -> Tagger {
    testing::instance::<Tagger>(r#"{"header": "x-team", "value": "payments"}"#).unwrap()
}

#[test]
fn deny_path_answers_403_early() {
    let tagger = tagger();
    let ctx = Context::new();
    let mut req = Request::builder().uri("/orders/deny").build();

    let action = tagger.on_request(&mut req, &ctx).unwrap();

    let reply = action.reply().expect("an answer");
    assert_eq!(reply.status(), 403);
    assert_eq!(reply.body(), b"denied by tagger");
    assert!(reply.headers().is_empty());
    assert_eq!(action, Action::respond(403).body("denied by tagger"));
    // Nothing else happened.
    assert_eq!(req.header("x-team"), None);
    assert_eq!(ctx.get("tagger.seen"), None);
}

#[test]
fn request_is_tagged_and_context_round_trips_to_the_response() {
    let tagger = tagger();
    let ctx = Context::new();
    let mut req = Request::builder()
        .method("POST")
        .uri("/orders?id=7")
        .header("x-team", "someone-else")
        .header("x-team", "and-another")
        .client_ip("10.0.0.1")
        .body(r#"{"item": 1}"#)
        .build();

    assert_eq!(tagger.on_request(&mut req, &ctx).unwrap(), Action::Continue);
    // `set_header` replaces every value.
    assert_eq!(req.header_all("x-team"), ["payments"]);
    assert_eq!(ctx.get("tagger.seen").as_deref(), Some("yes"));
    assert_eq!(
        ctx.entries(),
        [("tagger.seen".to_owned(), "yes".to_owned())]
    );

    let upstream = req.into_http();
    assert_eq!(upstream.method(), http::Method::POST);
    assert_eq!(upstream.uri(), "/orders?id=7");
    assert_eq!(upstream.headers()["x-team"], "payments");
    assert_eq!(upstream.body(), br#"{"item": 1}"#);

    let mut resp = Response::builder()
        .status(201)
        .header("content-type", "application/json")
        .body("{}")
        .build();
    assert_eq!(
        tagger.on_response(&mut resp, &ctx).unwrap(),
        Action::Continue
    );
    assert_eq!(resp.header("x-tagger-seen").as_deref(), Some("yes"));
    let to_client = resp.into_http();
    assert_eq!(to_client.status(), 201);
    assert_eq!(to_client.headers()["x-tagger-seen"], "yes");
    assert_eq!(to_client.headers()["content-type"], "application/json");
}

#[test]
fn response_without_request_phase_gets_an_empty_tag() {
    let mut resp = Response::builder().build();
    tagger().on_response(&mut resp, &Context::new()).unwrap();
    assert_eq!(resp.header("x-tagger-seen").as_deref(), Some(""));
}

#[test]
fn configuration_is_validated_like_the_gateway_does() {
    let err = testing::instance::<Tagger>(r#"{"header": "", "value": "x"}"#)
        .err()
        .unwrap();
    assert_eq!(err.message(), "header must not be empty");

    let err = testing::instance::<Tagger>(r#"{"header": "x-team"}"#)
        .err()
        .unwrap();
    assert_eq!(
        err.message(),
        "invalid config: missing field `value` at line 1 column 20"
    );

    let err = testing::instance::<Tagger>("{}").err().unwrap();
    assert!(
        err.message()
            .starts_with("invalid config: missing field `header`"),
        "{err}"
    );
}

#[test]
fn an_invalid_configured_header_fails_the_hook_not_the_request() {
    let tagger = testing::instance::<Tagger>(r#"{"header": "x team", "value": "v"}"#).unwrap();
    let mut req = Request::builder().build();
    let err = tagger.on_request(&mut req, &Context::new()).unwrap_err();
    assert_eq!(err.message(), r#"invalid header name "x team""#);
}

#[test]
fn default_hooks_and_body_needs() {
    let tagger = tagger();
    assert_eq!(tagger.hooks(), Hooks::BOTH);
    assert!(!tagger.needs_body());
}
