//! Wasmgate's control plane: the admin listener ([`Admin`]) and configuration reloads
//! ([`Reloader`], [`Watcher`]). Depends on the data path, never the other way round.

mod api;
mod reload;

pub use api::{Admin, Draining};
pub use reload::{ConfigFile, Fingerprint, ReloadError, Reloader, Watcher};
