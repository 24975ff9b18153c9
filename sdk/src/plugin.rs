//! The `Plugin` trait and what a plugin tells the gateway about itself.

use std::ops::{BitOr, BitOrAssign};

use serde::de::DeserializeOwned;

use crate::{Action, ConfigError, Context, Error, FixedEdits, Inputs, Request, Response};

/// A Wasmgate plugin: a typed configuration, a constructor and two hooks.
///
/// Register the implementing type with [`export!`](crate::export). For each route entry using the
/// plugin the gateway creates instances; each instance is built once from the entry's `config`
/// (JSON → [`Plugin::Config`] → [`Plugin::new`]) and then serves many requests, one at a time,
/// which is why the hooks take `&self`. Keep per-request data in the [`Context`] and
/// cross-request data in [`state`](crate::state), not in `self`: instances are pooled, so two
/// requests of one client may not meet the same instance.
///
/// Three outcomes of a hook stay distinct:
/// - `Ok(`[`Action::Continue`]`)`: go on;
/// - `Ok(`[`Action::Respond`]`)`: a deliberate answer to the client;
/// - `Err(`[`Error`]`)`: a plugin failure: the client gets a generic 500 and the message goes to
///   the gateway's log only (or the plugin is skipped when the route says `on_error = "allow"`).
///
/// A panic traps the instance: the gateway drops it and answers 500.
pub trait Plugin: Sized + 'static {
    /// The configuration, deserialized from the route entry's `config` table (JSON `{}` when the
    /// entry has none). Derive it with `#[derive(Deserialize)]` from the
    /// [`prelude`](crate::prelude); `#[serde(...)]` attributes work as usual.
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration, once per instance, when the gateway loads the
    /// configuration (at `wasmgate check`, start and reload).
    ///
    /// Validate the configuration here: an `Err` refuses the whole gateway configuration with the
    /// message, so the operator finds the mistake before any request does. A configuration that
    /// does not even deserialize is refused before `new` is called, with serde's message naming the
    /// field (`invalid config: ...`).
    fn new(config: Self::Config) -> Result<Self, ConfigError>;

    /// Runs for each request routed to a route using this plugin, in the route's plugin order,
    /// before the request goes upstream. It may read and edit the request and answer early with
    /// [`Action::respond`].
    ///
    /// Default: [`Action::Continue`] without looking at the request. The gateway calls it only when
    /// [`Plugin::hooks`] includes [`Hooks::REQUEST`].
    fn on_request(&self, req: &mut Request<'_>, ctx: &Context) -> Result<Action, Error> {
        let _ = (req, ctx);
        Ok(Action::Continue)
    }

    /// Runs for each response on a route using this plugin, in reverse plugin order, before it
    /// goes to the client: for upstream responses and for answers given by a later plugin's
    /// [`Action::respond`]. It may read and edit the response, or replace it with
    /// [`Action::respond`].
    ///
    /// Default: [`Action::Continue`] without looking at the response. The gateway calls it only
    /// when [`Plugin::hooks`] includes [`Hooks::RESPONSE`].
    fn on_response(&self, resp: &mut Response<'_>, ctx: &Context) -> Result<Action, Error> {
        let _ = (resp, ctx);
        Ok(Action::Continue)
    }

    /// The hooks the gateway should call, asked once per instance after [`Plugin::new`] (it may
    /// depend on the configuration).
    ///
    /// Default: [`Hooks::BOTH`]. Override it when you implement only one hook, e.g. return
    /// [`Hooks::REQUEST`] when you only implement [`on_request`](Plugin::on_request): the gateway
    /// then never calls the other, which saves a call into the plugin per request.
    fn hooks(&self) -> Hooks {
        Hooks::BOTH
    }

    /// What the hooks read on every call, asked once per instance after [`Plugin::new`] (it may
    /// depend on the configuration). The gateway hands these values over with each call, so the
    /// reads cost no call into the gateway.
    ///
    /// Default: nothing declared; every read is a call into the gateway (correct, a little
    /// slower). Declare what the hooks read on almost every request:
    ///
    /// ```
    /// # use wasmgate_sdk::prelude::*;
    /// # struct KeyAuth;
    /// # impl Plugin for KeyAuth {
    /// #     type Config = NoConfig;
    /// #     fn new(_: NoConfig) -> Result<Self, ConfigError> { Ok(KeyAuth) }
    /// fn inputs(&self) -> Inputs {
    ///     Inputs::new().request_header("x-api-key")
    /// }
    /// # }
    /// ```
    fn inputs(&self) -> Inputs {
        Inputs::new()
    }

    /// Header edits made to every request and response whatever they contain, asked once per
    /// instance after [`Plugin::new`]. The gateway applies them itself, at the plugin's place in
    /// the chain, with no call into the plugin: request edits before [`on_request`](Plugin::on_request)
    /// would run, response edits before [`on_response`](Plugin::on_response) would.
    ///
    /// Default: none. A plugin whose whole job is fixed edits returns them here and
    /// [`Hooks::NONE`] from [`Plugin::hooks`]; it is then never called per request.
    fn fixed_edits(&self) -> FixedEdits {
        FixedEdits::new()
    }

    /// Whether the hooks need the buffered body ([`Request::body`], [`Response::body`] and the
    /// `set_body` methods), asked once per instance after [`Plugin::new`].
    ///
    /// Default: `false`: bodies stream through the gateway untouched, which is faster and uses no
    /// memory; `body()` returns `None` and `set_body` fails. With `true` the gateway buffers
    /// bodies up to the route's `max_body` (1 MiB by default, 413 beyond).
    fn needs_body(&self) -> bool {
        false
    }
}

/// The hooks a plugin implements; the gateway never calls the others. Combine with `|`.
///
/// ```
/// use wasmgate_sdk::Hooks;
///
/// assert_eq!(Hooks::REQUEST | Hooks::RESPONSE, Hooks::BOTH);
/// assert!(Hooks::BOTH.contains(Hooks::RESPONSE));
/// assert!(!Hooks::REQUEST.contains(Hooks::RESPONSE));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hooks {
    bits: u8,
}

impl Hooks {
    /// No hook: the plugin is never called per request.
    pub const NONE: Self = Self { bits: 0 };
    /// [`Plugin::on_request`].
    pub const REQUEST: Self = Self { bits: 1 };
    /// [`Plugin::on_response`].
    pub const RESPONSE: Self = Self { bits: 1 << 1 };
    /// Both hooks.
    pub const BOTH: Self = Self { bits: 0b11 };

    /// Whether every hook of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.bits & other.bits == other.bits
    }

    /// Whether no hook is set.
    pub const fn is_empty(self) -> bool {
        self.bits == 0
    }
}

impl BitOr for Hooks {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self {
            bits: self.bits | rhs.bits,
        }
    }
}

impl BitOrAssign for Hooks {
    fn bitor_assign(&mut self, rhs: Self) {
        self.bits |= rhs.bits;
    }
}

/// The [`Plugin::Config`] of a plugin without configuration: accepts an absent or empty `config`
/// (`{}` or `null`) and refuses any key, so a misplaced setting is reported instead of ignored.
///
/// ```
/// # #[cfg(feature = "testing")] {
/// use wasmgate_sdk::prelude::*;
///
/// struct Noop;
///
/// impl Plugin for Noop {
///     type Config = NoConfig;
///     fn new(_: NoConfig) -> Result<Self, ConfigError> {
///         Ok(Noop)
///     }
/// }
///
/// assert!(wasmgate_sdk::testing::instance::<Noop>("{}").is_ok());
/// assert!(wasmgate_sdk::testing::instance::<Noop>(r#"{"limit": 3}"#).is_err());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NoConfig;

impl<'de> serde::Deserialize<'de> for NoConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NoConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("no configuration (an empty table)")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<NoConfig, E> {
                Ok(NoConfig)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<NoConfig, E> {
                Ok(NoConfig)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoConfig, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(NoConfig),
                    Some(key) => Err(serde::de::Error::custom(format!(
                        "unknown key `{key}`: this plugin takes no configuration"
                    ))),
                }
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}
