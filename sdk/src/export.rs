//! The glue between the component's exports and a [`Plugin`]: what [`export!`](crate::export)
//! expands to calls these.

use std::any::Any;
use std::cell::OnceCell;

use crate::__bindings::exports::wasmgate::plugin::lifecycle;
use crate::__bindings::wasmgate::plugin::types;
use crate::{Action, ConfigError, Context, Error, Hooks, Plugin, Request, Response};

thread_local! {
    /// The plugin instance, set by a successful `init`. A component instance is single-threaded
    /// and hosts exactly one plugin type (one `export!`), so a thread-local cell is the whole
    /// registry; `Any` lets the SDK hold it without knowing the type.
    static INSTANCE: OnceCell<Box<dyn Any>> = const { OnceCell::new() };
}

/// JSON → `T::Config` → `T::new`: the path of the gateway's `init`, shared with
/// `testing::instance`.
pub(crate) fn instantiate<T: Plugin>(config_json: &str) -> Result<T, ConfigError> {
    let config: T::Config = serde_json::from_str(config_json)
        .map_err(|e| ConfigError::new(format!("invalid config: {e}")))?;
    T::new(config)
}

/// Runs `f` on the initialised instance, or fails with "plugin not initialised".
fn with_instance<T: Plugin, R>(f: impl FnOnce(&T) -> Result<R, Error>) -> Result<R, Error> {
    INSTANCE.with(|cell| {
        let plugin = cell
            .get()
            .ok_or_else(|| Error::new("plugin not initialised"))?
            .downcast_ref::<T>()
            .ok_or_else(|| Error::new("plugin type mismatch (more than one export! ?)"))?;
        f(plugin)
    })
}

/// `lifecycle.init`.
pub fn init<T: Plugin>(config_json: &str) -> Result<(), lifecycle::ConfigError> {
    let already = || lifecycle::ConfigError {
        message: "plugin already initialised".to_owned(),
    };
    if INSTANCE.with(|cell| cell.get().is_some()) {
        return Err(already());
    }
    let plugin = instantiate::<T>(config_json).map_err(|e| lifecycle::ConfigError {
        message: e.message().to_owned(),
    })?;
    INSTANCE.with(|cell| cell.set(Box::new(plugin)).map_err(|_| already()))
}

/// `lifecycle.describe`. `name` and `version` are the plugin crate's, captured where `export!`
/// expands. Before a successful `init` (which the gateway never does) it reports no hooks.
pub fn describe<T: Plugin>(name: &str, version: &str) -> lifecycle::PluginInfo {
    let (hooks, needs_body) =
        with_instance::<T, _>(|p| Ok((p.hooks(), p.needs_body()))).unwrap_or((Hooks::NONE, false));
    let mut wit_hooks = lifecycle::Hooks::empty();
    if hooks.contains(Hooks::REQUEST) {
        wit_hooks |= lifecycle::Hooks::ON_REQUEST;
    }
    if hooks.contains(Hooks::RESPONSE) {
        wit_hooks |= lifecycle::Hooks::ON_RESPONSE;
    }
    lifecycle::PluginInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        hooks: wit_hooks,
        needs_body,
    }
}

/// `http-filter.on-request`.
pub fn on_request<T: Plugin>(
    request: &types::Request,
) -> Result<types::Action, types::PluginError> {
    with_instance::<T, _>(|p| p.on_request(&mut Request::from_host(request), &Context::host()))
        .and_then(to_wit)
        .map_err(|e| types::PluginError {
            message: e.to_string(),
        })
}

/// `http-filter.on-response`.
pub fn on_response<T: Plugin>(
    response: &types::Response,
) -> Result<types::Action, types::PluginError> {
    with_instance::<T, _>(|p| p.on_response(&mut Response::from_host(response), &Context::host()))
        .and_then(to_wit)
        .map_err(|e| types::PluginError {
            message: e.to_string(),
        })
}

/// An [`Action`] for the gateway; an answer the gateway would refuse becomes a plugin error here,
/// with a message saying what is wrong.
fn to_wit(action: Action) -> Result<types::Action, Error> {
    match action {
        Action::Continue => Ok(types::Action::Continue),
        Action::Respond(reply) => {
            reply.validate().map_err(Error::new)?;
            Ok(match reply.rejection {
                Some(r) => types::Action::Reject(types::Rejection {
                    status: reply.status,
                    error: r.error,
                    message: r.message,
                    headers: reply.headers,
                }),
                None => types::Action::Respond(types::ResponseSpec {
                    status: reply.status,
                    headers: reply.headers,
                    body: reply.body,
                }),
            })
        }
    }
}

/// Registers `T` as the plugin of this component: `wasmgate_sdk::export!(MyPlugin);`, once, at
/// the root of the plugin crate (a `cdylib` built for `wasm32-wasip2`).
///
/// It implements the component's exports (`wasmgate:plugin/lifecycle` and
/// `wasmgate:plugin/http-filter`) for `T`:
/// - `init(config-json)` deserializes `T::Config` from the route entry's `config` (an error reads
///   `invalid config: <serde's message, naming the field>`), calls [`Plugin::new`] and keeps the
///   instance;
/// - `describe()` reports the crate's name and version (`CARGO_PKG_NAME`, `CARGO_PKG_VERSION` of
///   the crate invoking the macro), [`Plugin::hooks`] and [`Plugin::needs_body`];
/// - `on-request` / `on-response` call the hooks; before a successful `init` they fail with
///   "plugin not initialised".
///
/// ```
/// use wasmgate_sdk::prelude::*;
///
/// struct Noop;
///
/// impl Plugin for Noop {
///     type Config = NoConfig;
///
///     fn new(_: NoConfig) -> Result<Self, ConfigError> {
///         Ok(Noop)
///     }
///
///     // Only on_request (the default one, here) is called.
///     fn hooks(&self) -> Hooks {
///         Hooks::REQUEST
///     }
/// }
///
/// wasmgate_sdk::export!(Noop);
/// ```
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        /// Native builds (for `cargo test`) have no component exports; this keeps the plugin's
        /// code reachable there, so the compiler does not report it as unused.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __wasmgate_native_init(config_json: &str) -> bool {
            $crate::__private::init::<$plugin>(config_json).is_ok()
        }

        const _: () = {
            use $crate::__bindings::exports::wasmgate::plugin::{
                http_filter as __wasmgate_http_filter, lifecycle as __wasmgate_lifecycle,
            };

            struct __WasmgatePlugin;

            impl __wasmgate_lifecycle::Guest for __WasmgatePlugin {
                fn init(
                    config_json: ::std::string::String,
                ) -> ::core::result::Result<(), __wasmgate_lifecycle::ConfigError> {
                    $crate::__private::init::<$plugin>(&config_json)
                }

                fn describe() -> __wasmgate_lifecycle::PluginInfo {
                    $crate::__private::describe::<$plugin>(
                        ::core::env!("CARGO_PKG_NAME"),
                        ::core::env!("CARGO_PKG_VERSION"),
                    )
                }
            }

            impl __wasmgate_http_filter::Guest for __WasmgatePlugin {
                fn on_request(
                    request: &__wasmgate_http_filter::Request,
                ) -> ::core::result::Result<
                    __wasmgate_http_filter::Action,
                    __wasmgate_http_filter::PluginError,
                > {
                    $crate::__private::on_request::<$plugin>(request)
                }

                fn on_response(
                    response: &__wasmgate_http_filter::Response,
                ) -> ::core::result::Result<
                    __wasmgate_http_filter::Action,
                    __wasmgate_http_filter::PluginError,
                > {
                    $crate::__private::on_response::<$plugin>(response)
                }
            }

            // The component exports exist only in the wasm build: their names (`wasmgate:plugin/…`)
            // are not valid native symbol names, and native builds are for `cargo test`.
            #[cfg(target_arch = "wasm32")]
    $crate::__bindings::__export_plugin!(__WasmgatePlugin with_types_in $crate::__bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reply;

    #[derive(serde::Deserialize)]
    struct Config {
        hooks: String,
    }

    struct P {
        hooks: Hooks,
    }

    impl Plugin for P {
        type Config = Config;

        fn new(config: Config) -> Result<Self, ConfigError> {
            let hooks = match config.hooks.as_str() {
                "request" => Hooks::REQUEST,
                "response" => Hooks::RESPONSE,
                "both" => Hooks::BOTH,
                other => return Err(ConfigError::new(format!("unknown hooks {other:?}"))),
            };
            Ok(Self { hooks })
        }

        fn hooks(&self) -> Hooks {
            self.hooks
        }

        fn needs_body(&self) -> bool {
            true
        }
    }

    // Each test runs on its own thread, so each sees a fresh (thread-local) instance cell.

    #[test]
    fn hooks_fail_and_describe_reports_nothing_before_init() {
        let err = with_instance::<P, ()>(|_| Ok(())).unwrap_err();
        assert_eq!(err.message(), "plugin not initialised");
        let info = describe::<P>("p", "1.0.0");
        assert!(info.hooks.is_empty());
        assert!(!info.needs_body);
    }

    #[test]
    fn init_reports_serde_errors_naming_the_field() {
        let err = init::<P>(r#"{"hoks": "request"}"#).unwrap_err();
        assert!(
            err.message
                .starts_with("invalid config: missing field `hooks`"),
            "{}",
            err.message
        );
        let err = init::<P>(r#"{"hooks": 3}"#).unwrap_err();
        assert!(
            err.message.starts_with("invalid config: invalid type"),
            "{}",
            err.message
        );
        // A failed init leaves the plugin uninitialised.
        assert!(with_instance::<P, ()>(|_| Ok(())).is_err());
    }

    #[test]
    fn init_reports_the_plugins_own_refusal() {
        let err = init::<P>(r#"{"hooks": "sometimes"}"#).unwrap_err();
        assert_eq!(err.message, r#"unknown hooks "sometimes""#);
    }

    #[test]
    fn init_then_describe() {
        init::<P>(r#"{"hooks": "request"}"#).unwrap();
        let info = describe::<P>("tagger", "1.2.3");
        assert_eq!(info.name, "tagger");
        assert_eq!(info.version, "1.2.3");
        assert_eq!(info.hooks, lifecycle::Hooks::ON_REQUEST);
        assert!(info.needs_body);
        assert!(with_instance::<P, _>(|p| Ok(p.hooks)).is_ok());

        let err = init::<P>(r#"{"hooks": "both"}"#).unwrap_err();
        assert_eq!(err.message, "plugin already initialised");
    }

    #[test]
    fn describe_maps_both_hooks() {
        init::<P>(r#"{"hooks": "both"}"#).unwrap();
        let info = describe::<P>("p", "0.1.0");
        assert_eq!(
            info.hooks,
            lifecycle::Hooks::ON_REQUEST | lifecycle::Hooks::ON_RESPONSE
        );
    }

    #[test]
    fn actions_are_converted_and_bad_answers_refused() {
        assert!(matches!(
            to_wit(Action::Continue),
            Ok(types::Action::Continue)
        ));
        let action = Action::respond(401)
            .header("www-authenticate", "Bearer")
            .body("no");
        let Ok(types::Action::Respond(spec)) = to_wit(action) else {
            panic!("expected an answer");
        };
        assert_eq!(spec.status, 401);
        assert_eq!(
            spec.headers,
            vec![("www-authenticate".to_owned(), "Bearer".to_owned())]
        );
        assert_eq!(spec.body, b"no");

        let bad_status = to_wit(Action::respond(42)).unwrap_err();
        assert!(
            bad_status.message().contains("invalid status 42"),
            "{bad_status}"
        );
        let bad_name = to_wit(Action::respond(200).header("a b", "x")).unwrap_err();
        assert!(
            bad_name.message().contains(r#"invalid header name "a b""#),
            "{bad_name}"
        );
        let bad_value = to_wit(Action::respond(200).header("x", "a\nb")).unwrap_err();
        assert!(
            bad_value.message().contains("invalid value for header"),
            "{bad_value}"
        );
        let _: Option<&Reply> = Action::Continue.reply();
    }

    #[test]
    fn rejections_go_to_the_gateway_as_code_and_message() {
        let action =
            Action::reject(429, "rate_limited", "too many requests").header("retry-after", "3");
        let Ok(types::Action::Reject(r)) = to_wit(action) else {
            panic!("expected a rejection");
        };
        assert_eq!((r.status, r.error.as_str()), (429, "rate_limited"));
        assert_eq!(r.message, "too many requests");
        assert_eq!(r.headers, vec![("retry-after".to_owned(), "3".to_owned())]);

        let plain = Action::reject(401, "unauthorized", "no").body("custom");
        assert!(matches!(to_wit(plain), Ok(types::Action::Respond(_))));

        let not_an_error = to_wit(Action::reject(302, "moved", "elsewhere")).unwrap_err();
        assert!(not_an_error.message().contains("400-599"), "{not_an_error}");
        let bad_code = to_wit(Action::reject(403, "Not Allowed", "no")).unwrap_err();
        assert!(
            bad_code.message().contains("invalid error code"),
            "{bad_code}"
        );
    }
}
