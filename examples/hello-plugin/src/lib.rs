//! An example plugin: the shape of every Wasmgate plugin, and what the SDK offers.
//!
//! * config: `{ greeting = "hello", window = "1m" }` (both optional)
//! * request phase: answers paths ending in `/hello/wave` itself (plugins see the path the client
//!   sent, before any `strip_path`); otherwise counts the client's visits in the
//!   gateway's shared state, adds `x-greeting` and `x-visits` for the upstream and remembers the
//!   count in the request context
//! * response phase: adds `x-greeting` and `x-visits` to the response

use std::time::Duration;

use wasmgate_sdk::prelude::*;
use wasmgate_sdk::state;

/// The plugin's config, from the route's `config = { ... }` in gateway.toml.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_greeting")]
    greeting: String,
    /// Visits are counted per client in windows of this many seconds.
    #[serde(default = "default_window_secs")]
    window_secs: u64,
}

fn default_greeting() -> String {
    "hello".to_owned()
}

fn default_window_secs() -> u64 {
    60
}

struct Hello {
    greeting: String,
    window: Duration,
}

impl Plugin for Hello {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        if config.greeting.trim().is_empty() {
            return Err(ConfigError::new("greeting must not be empty"));
        }
        if config.window_secs == 0 {
            return Err(ConfigError::new("window_secs must be at least 1"));
        }
        Ok(Self {
            greeting: config.greeting,
            window: Duration::from_secs(config.window_secs),
        })
    }

    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        if req.path().ends_with("/hello/wave") {
            return Ok(Action::respond(200)
                .header("content-type", "text/plain")
                .body(format!("{} from a plugin\n", self.greeting)));
        }
        let visits = state::counter_add(&format!("visits:{}", req.client_ip()), 1, self.window);
        let visits = visits.value.to_string();
        req.edit_headers(
            &[("x-greeting", &self.greeting), ("x-visits", &visits)],
            &[],
        )?;
        ctx.set("hello.visits", &visits);
        Ok(Action::Continue)
    }

    fn on_response(&self, resp: &mut Response<'_>, ctx: &Context) -> Result<Action, Error> {
        let visits = ctx.get("hello.visits").unwrap_or_default();
        resp.edit_headers(
            &[("x-greeting", &self.greeting), ("x-visits", &visits)],
            &[],
        )?;
        Ok(Action::Continue)
    }
}

wasmgate_sdk::export!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing;

    fn plugin() -> Hello {
        testing::instance::<Hello>(r#"{ "greeting": "hi" }"#).expect("valid config")
    }

    #[test]
    fn answers_wave_itself() {
        let mut req = Request::builder().uri("/hello/wave").build();
        let action = plugin().on_request(&mut req, &Context::new()).expect("ok");
        let reply = action.reply().expect("an answer");
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.body(), b"hi from a plugin\n");
    }

    #[test]
    fn counts_visits_per_client_and_tags_both_directions() {
        testing::reset_state();
        let plugin = plugin();
        let ctx = Context::new();
        for expected in ["1", "2"] {
            let mut req = Request::builder().uri("/x").client_ip("10.0.0.1").build();
            assert!(plugin.on_request(&mut req, &ctx).expect("ok").is_continue());
            assert_eq!(req.header("x-visits").as_deref(), Some(expected));
            assert_eq!(req.header("x-greeting").as_deref(), Some("hi"));
        }
        let mut other = Request::builder().uri("/x").client_ip("10.0.0.2").build();
        plugin.on_request(&mut other, &Context::new()).expect("ok");
        assert_eq!(other.header("x-visits").as_deref(), Some("1"));

        let mut resp = Response::builder().status(200).build();
        plugin.on_response(&mut resp, &ctx).expect("ok");
        assert_eq!(resp.header("x-visits").as_deref(), Some("2"));
    }

    #[test]
    fn refuses_an_empty_greeting_and_unknown_keys() {
        assert!(testing::instance::<Hello>(r#"{ "greeting": " " }"#).is_err());
        let err = testing::instance::<Hello>(r#"{ "greting": "x" }"#)
            .err()
            .expect("refused");
        assert!(
            err.message().contains("unknown field `greting`"),
            "{}",
            err.message()
        );
    }
}
