//! Write [Wasmgate](https://github.com/wasmgate/wasmgate) gateway plugins in Rust.
//!
//! A plugin is a WebAssembly component (`wasm32-wasip2`) that the gateway runs on the routes that
//! list it, sandboxed. With this crate a plugin is one trait, one constructor and one macro:
//! implement [`Plugin`] for a type, give it a typed configuration, and register it with
//! [`export!`]. The crate is the only dependency a plugin needs: it brings its own serde
//! (`#[derive(Deserialize)]` from the [`prelude`]) and the component bindings.
//!
//! # Walkthrough
//!
//! A new library crate, built as a `cdylib`:
//!
//! ```toml
//! [package]
//! name = "tagger"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! wasmgate-sdk = { path = "../wasmgate/sdk" }
//!
//! [dev-dependencies]
//! wasmgate-sdk = { path = "../wasmgate/sdk", features = ["testing"] }
//! ```
//!
//! `src/lib.rs`: a plugin that tags each request with a configured header, answers `403` on paths
//! ending in `/deny`, and tells the client whether it saw the request:
//!
//! ```
//! use wasmgate_sdk::prelude::*;
//!
//! /// The route entry's `config` table, e.g. `config = { header = "x-team", value = "payments" }`.
//! #[derive(Deserialize)]
//! struct Config {
//!     header: String,
//!     value: String,
//! }
//!
//! struct Tagger {
//!     config: Config,
//! }
//!
//! impl Plugin for Tagger {
//!     type Config = Config;
//!
//!     // Once per instance, when the gateway loads its configuration: refuse bad values here.
//!     fn new(config: Config) -> Result<Self, ConfigError> {
//!         if config.header.is_empty() {
//!             return Err(ConfigError::new("header must not be empty"));
//!         }
//!         Ok(Self { config })
//!     }
//!
//!     // For each request, before it goes upstream.
//!     fn on_request(&self, req: &mut Request, ctx: &Context) -> Result<Action, Error> {
//!         if req.path().ends_with("/deny") {
//!             return Ok(Action::respond(403).body("denied by tagger"));
//!         }
//!         req.set_header(&self.config.header, &self.config.value)?;
//!         ctx.set("tagger.seen", "yes");
//!         Ok(Action::Continue)
//!     }
//!
//!     // For each response, before it goes to the client.
//!     fn on_response(&self, resp: &mut Response, ctx: &Context) -> Result<Action, Error> {
//!         let seen = ctx.get("tagger.seen").unwrap_or_default();
//!         resp.set_header("x-tagger-seen", &seen)?;
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! wasmgate_sdk::export!(Tagger);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (once:
//! `rustup target add wasm32-wasip2`); the plugin is
//! `target/wasm32-wasip2/release/tagger.wasm`. Then list it on a route of the gateway's
//! configuration with its `config`.
//!
//! A few things worth knowing:
//!
//! - **Configuration** is the route entry's `config` table as JSON (`{}` when absent), deserialized
//!   into [`Plugin::Config`] with serde: `#[serde(default)]`, `rename_all`, `deny_unknown_fields`,
//!   `Option` fields, nested structs and enums all work. A plugin without configuration uses
//!   [`NoConfig`]. Validate in [`Plugin::new`]: an error refuses the gateway's configuration at
//!   `wasmgate check`, start and reload, never at request time.
//! - **Three outcomes**: [`Action::Continue`]; a deliberate answer, [`Action::respond`] (or
//!   [`Action::reject`] for a refusal in the gateway's own JSON error format, stamped with the
//!   request id); a failure, `Err(`[`Error`]`)`, which the client sees as a generic 500 while the
//!   message goes to the gateway's log.
//! - **State**: instances are pooled and reused, so keep nothing per request in `self`. Per-request
//!   values shared along the plugin chain (and between your two hooks) go in the [`Context`];
//!   state that outlives a request (rate-limit counters, caches) goes in [`state`].
//! - **Cost**: the request stays in the gateway. What a hook reads on every request (a header, a
//!   context key, the client's address) is declared once in [`Plugin::inputs`] and arrives with
//!   the call for free; any other read is one call across the sandbox boundary. Edits are
//!   collected and handed back with the hook's result. A request hook can schedule edits of the
//!   response ([`Request::set_response_header`]), so a plugin that only decorates responses needs
//!   no response hook; edits that never depend on the request ([`Plugin::fixed_edits`]) cost no
//!   call at all. Override [`Plugin::hooks`] when you use a single hook (or none), and ask for
//!   bodies ([`Plugin::needs_body`]) only when you read or replace them.
//! - [`log`] writes into the gateway's log.
//!
//! # Testing natively
//!
//! With the `testing` feature (as a dev-dependency, above), plugins run natively under
//! `cargo test`: no wasm, no gateway. `testing::instance` builds the plugin from JSON exactly as
//! the gateway does, requests and responses are built in memory, and [`state`] and [`log`] work in
//! memory too. For the plugin above:
//!
//! ```
//! # use wasmgate_sdk::prelude::*;
//! # #[derive(Deserialize)] struct Config { header: String, value: String }
//! # struct Tagger { config: Config }
//! # impl Plugin for Tagger {
//! #     type Config = Config;
//! #     fn new(config: Config) -> Result<Self, ConfigError> {
//! #         if config.header.is_empty() { return Err(ConfigError::new("header must not be empty")); }
//! #         Ok(Self { config })
//! #     }
//! #     fn on_request(&self, req: &mut Request, ctx: &Context) -> Result<Action, Error> {
//! #         if req.path().ends_with("/deny") { return Ok(Action::respond(403).body("denied by tagger")); }
//! #         req.set_header(&self.config.header, &self.config.value)?;
//! #         ctx.set("tagger.seen", "yes");
//! #         Ok(Action::Continue)
//! #     }
//! #     fn on_response(&self, resp: &mut Response, ctx: &Context) -> Result<Action, Error> {
//! #         let seen = ctx.get("tagger.seen").unwrap_or_default();
//! #         resp.set_header("x-tagger-seen", &seen)?;
//! #         Ok(Action::Continue)
//! #     }
//! # }
//! # #[cfg(feature = "testing")] {
//! use wasmgate_sdk::testing;
//!
//! // #[test]
//! // fn tags_and_reports() {
//! let tagger = testing::instance::<Tagger>(r#"{"header": "x-team", "value": "payments"}"#).unwrap();
//! let ctx = Context::new();
//!
//! let mut req = Request::builder().method("POST").uri("/orders?id=7").build();
//! assert_eq!(tagger.on_request(&mut req, &ctx).unwrap(), Action::Continue);
//! assert_eq!(req.header("x-team").as_deref(), Some("payments"));
//!
//! let mut resp = Response::builder().status(201).build();
//! assert_eq!(tagger.on_response(&mut resp, &ctx).unwrap(), Action::Continue);
//! assert_eq!(resp.header("x-tagger-seen").as_deref(), Some("yes"));
//!
//! let mut denied = Request::builder().uri("/orders/deny").build();
//! let action = tagger.on_request(&mut denied, &Context::new()).unwrap();
//! assert_eq!(action.reply().map(|r| r.status()), Some(403));
//!
//! let err = testing::instance::<Tagger>(r#"{"header": "", "value": "x"}"#).err().unwrap();
//! assert_eq!(err.message(), "header must not be empty");
//! // }
//! # }
//! ```
//!
//! # Features
//!
//! - `testing`: the in-memory constructors and the `testing` module, for native tests. It has no
//!   effect on `wasm32` builds.

#![warn(missing_docs)]

mod action;
pub mod config;
mod context;
mod error;
mod export;
mod headers;
mod inputs;
pub mod log;
mod message;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
mod mock;
mod plugin;
mod request;
mod response;
pub mod state;
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub mod testing;

pub use action::{Action, Reply};
pub use context::Context;
pub use error::{ConfigError, Error, HeaderError};
pub use inputs::{FixedEdits, HeaderEdit, Inputs};
pub use plugin::{Hooks, NoConfig, Plugin};
pub use request::Request;
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub use request::RequestBuilder;
pub use response::Response;
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub use response::ResponseBuilder;

/// What a plugin needs, in one import: `use wasmgate_sdk::prelude::*;`.
///
/// `Deserialize` is both serde's trait and the SDK's derive of it (`#[derive(Deserialize)]`), which
/// works without a `serde` dependency in the plugin crate and accepts serde's `#[serde(...)]`
/// attributes. It supports non-generic structs and enums:
///
/// ```compile_fail
/// use wasmgate_sdk::prelude::*;
///
/// #[derive(Deserialize)] // error: `wasmgate_sdk::Deserialize` does not support generic items
/// struct Config<T> {
///     value: T,
/// }
/// ```
pub mod prelude {
    pub use serde::de::{Deserialize, DeserializeOwned};
    pub use wasmgate_sdk_macros::Deserialize;

    pub use crate::{
        Action, ConfigError, Context, Error, FixedEdits, HeaderEdit, HeaderError, Hooks, Inputs,
        NoConfig, Plugin, Request, Response,
    };
}

/// Generated component bindings. Not a public API: used by [`export!`].
#[doc(hidden)]
#[path = "bindings.rs"]
pub mod __bindings;

/// Not a public API: what [`export!`] and `#[derive(Deserialize)]` expand to use.
#[doc(hidden)]
pub mod __private {
    pub use serde;

    pub use crate::export::{describe, init, on_request, on_response};
}
