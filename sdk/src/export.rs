//! The glue between the component's exports and a [`Plugin`]: what [`export!`](crate::export)
//! expands to calls these.

use std::any::Any;
use std::cell::OnceCell;

use crate::__bindings::exports::wasmgate::plugin::lifecycle;
use crate::__bindings::wasmgate::plugin::types;
use crate::inputs::{Declared, Input};
use crate::{
    Action, ConfigError, Context, Error, FixedEdits, HeaderEdit, Hooks, Inputs, Plugin, Request,
    Response,
};

thread_local! {
    /// The plugin instance, set by a successful `init`. A component instance is single-threaded
    /// and hosts exactly one plugin type (one `export!`), so a thread-local cell is the whole
    /// registry; `Any` lets the SDK hold it without knowing the type.
    static INSTANCE: OnceCell<Instance> = const { OnceCell::new() };
}

/// The plugin and what it declared, for the hooks.
struct Instance {
    plugin: Box<dyn Any>,
    declared: Declared,
    fixed: FixedEdits,
}

/// The most inputs a plugin may declare per phase (the gateway's limit too).
pub(crate) const MAX_INPUTS: usize = 64;

/// JSON → `T::Config` → `T::new`: the path of the gateway's `init`, shared with
/// `testing::instance`. A config that does not deserialize is refused with serde's message and
/// the path of the offending key.
pub(crate) fn instantiate<T: Plugin>(config_json: &str) -> Result<T, ConfigError> {
    let config: T::Config = crate::config::read_json(config_json)
        .map_err(|e| ConfigError::new(format!("invalid config: {}", e.message())))?;
    T::new(config)
}

/// Runs `f` on the initialised instance, or fails with "plugin not initialised".
fn with_instance<T: Plugin, R>(
    f: impl FnOnce(&T, &Declared) -> Result<R, Error>,
) -> Result<R, Error> {
    INSTANCE.with(|cell| {
        let instance = cell
            .get()
            .ok_or_else(|| Error::new("plugin not initialised"))?;
        let plugin = instance
            .plugin
            .downcast_ref::<T>()
            .ok_or_else(|| Error::new("plugin type mismatch (more than one export! ?)"))?;
        f(plugin, &instance.declared)
    })
}

/// `lifecycle.init`.
pub fn init<T: Plugin>(config_json: &str) -> Result<(), lifecycle::ConfigError> {
    let refused = |message: String| lifecycle::ConfigError { message };
    if INSTANCE.with(|cell| cell.get().is_some()) {
        return Err(refused("plugin already initialised".to_owned()));
    }
    let plugin = instantiate::<T>(config_json).map_err(|e| refused(e.message().to_owned()))?;
    let inputs = plugin.inputs();
    if inputs.request.len() > MAX_INPUTS || inputs.response.len() > MAX_INPUTS {
        return Err(refused(format!(
            "the plugin declares more than {MAX_INPUTS} inputs per hook (Plugin::inputs)"
        )));
    }
    let instance = Instance {
        fixed: plugin.fixed_edits(),
        plugin: Box::new(plugin),
        declared: Declared { inputs },
    };
    INSTANCE.with(|cell| {
        cell.set(instance)
            .map_err(|_| refused("plugin already initialised".to_owned()))
    })
}

/// `lifecycle.describe`. `name` and `version` are the plugin crate's, captured where `export!`
/// expands. Before a successful `init` (which the gateway never does) it reports no hooks.
pub fn describe<T: Plugin>(name: &str, version: &str) -> lifecycle::PluginInfo {
    let described = INSTANCE.with(|cell| {
        let instance = cell.get()?;
        let plugin = instance.plugin.downcast_ref::<T>()?;
        Some((
            plugin.hooks(),
            plugin.needs_body(),
            instance.declared.inputs.clone(),
            instance.fixed.clone(),
        ))
    });
    let (hooks, needs_body, inputs, fixed) =
        described.unwrap_or((Hooks::NONE, false, Inputs::default(), FixedEdits::default()));
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
        request_inputs: inputs.request.iter().map(wit_input).collect(),
        response_inputs: inputs.response.iter().map(wit_input).collect(),
        fixed_request_edits: owned_edits(fixed.request),
        fixed_response_edits: owned_edits(fixed.response),
    }
}

fn wit_input(input: &Input) -> types::Input {
    match input {
        Input::Header(name) => types::Input::Header(name.clone()),
        Input::Context(key) => types::Input::Context(key.clone()),
        Input::Method => types::Input::Method,
        Input::PathWithQuery => types::Input::PathWithQuery,
        Input::Authority => types::Input::Authority,
        Input::ClientIp => types::Input::ClientAddress,
        Input::Scheme => types::Input::Scheme,
        Input::Status => types::Input::Status,
    }
}

/// Header edits for a verdict or the plugin info.
fn owned_edits(edits: Vec<HeaderEdit>) -> Vec<types::HeaderEditResult> {
    edits
        .into_iter()
        .map(|edit| match edit {
            HeaderEdit::Set { name, value } => types::HeaderEditResult::Set((name, value)),
            HeaderEdit::Append { name, value } => types::HeaderEditResult::Append((name, value)),
            HeaderEdit::Remove { name } => types::HeaderEditResult::Remove(name),
        })
        .collect()
}

fn context_writes(writes: Vec<(String, Option<String>)>) -> Vec<types::ContextWrite> {
    writes
        .into_iter()
        .map(|(key, value)| types::ContextWrite { key, value })
        .collect()
}

/// The declared context keys of `list` with their values, taken out of `values`.
fn context_inputs(list: &[Input], values: &mut [Option<String>]) -> Vec<(String, Option<String>)> {
    list.iter()
        .zip(values.iter_mut())
        .filter_map(|(input, value)| match input {
            Input::Context(key) => Some((key.clone(), value.take())),
            _ => None,
        })
        .collect()
}

fn plugin_error(e: Error) -> types::PluginError {
    types::PluginError {
        message: e.to_string(),
    }
}

/// `http-filter.on-request`.
pub fn on_request<T: Plugin>(
    request: &types::Request,
    mut inputs: Vec<Option<String>>,
) -> Result<types::RequestVerdict, types::PluginError> {
    with_instance::<T, _>(|plugin, declared| {
        let ctx = Context::host(context_inputs(&declared.inputs.request, &mut inputs));
        let mut req = Request::from_host(request, declared, inputs);
        let action = to_wit(plugin.on_request(&mut req, &ctx)?)?;
        let (request_edits, response_edits) = req.into_edits();
        Ok(types::RequestVerdict {
            action,
            request_edits: owned_edits(request_edits),
            response_edits: owned_edits(response_edits),
            context_writes: context_writes(ctx.into_writes()),
        })
    })
    .map_err(plugin_error)
}

/// `http-filter.on-response`.
pub fn on_response<T: Plugin>(
    response: &types::Response,
    mut inputs: Vec<Option<String>>,
) -> Result<types::ResponseVerdict, types::PluginError> {
    with_instance::<T, _>(|plugin, declared| {
        let ctx = Context::host(context_inputs(&declared.inputs.response, &mut inputs));
        let mut resp = Response::from_host(response, declared, inputs);
        let action = to_wit(plugin.on_response(&mut resp, &ctx)?)?;
        Ok(types::ResponseVerdict {
            action,
            response_edits: owned_edits(resp.into_edits()),
            context_writes: context_writes(ctx.into_writes()),
        })
    })
    .map_err(plugin_error)
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
                    inputs: ::std::vec::Vec<::core::option::Option<::std::string::String>>,
                ) -> ::core::result::Result<
                    __wasmgate_http_filter::RequestVerdict,
                    __wasmgate_http_filter::PluginError,
                > {
                    $crate::__private::on_request::<$plugin>(request, inputs)
                }

                fn on_response(
                    response: &__wasmgate_http_filter::Response,
                    inputs: ::std::vec::Vec<::core::option::Option<::std::string::String>>,
                ) -> ::core::result::Result<
                    __wasmgate_http_filter::ResponseVerdict,
                    __wasmgate_http_filter::PluginError,
                > {
                    $crate::__private::on_response::<$plugin>(response, inputs)
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
        let err = with_instance::<P, ()>(|_, _| Ok(())).unwrap_err();
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
            err.message
                .starts_with("invalid config: hooks: invalid type"),
            "{}",
            err.message
        );
        // A failed init leaves the plugin uninitialised.
        assert!(with_instance::<P, ()>(|_, _| Ok(())).is_err());
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
        assert!(with_instance::<P, _>(|p, _| Ok(p.hooks)).is_ok());

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
