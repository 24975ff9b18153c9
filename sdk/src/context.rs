//! Per-request key/value strings shared along a route's plugin chain.

use std::cell::RefCell;
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
use std::collections::BTreeMap;

use crate::__bindings::wasmgate::plugin::context as wit;

/// Per-request key/value strings shared along the route's plugin chain, in both phases.
///
/// The context is held by the gateway, not by the plugin instance: a value set in
/// [`on_request`](crate::Plugin::on_request) is visible in
/// [`on_response`](crate::Plugin::on_response) of the same request (which may run on another
/// instance) and to the other plugins of the chain. An auth plugin sets `consumer`, a rate limiter
/// reads it. Values live as long as the request.
///
/// Keys declared with [`Inputs::context`](crate::Inputs::context) arrive with the call and are
/// read for free; other reads are one call into the gateway. Writes are handed back when the hook
/// returns (and read back here before that).
///
/// Prefix your keys with your plugin's name (`tagger.seen`) unless they are meant to be shared.
#[derive(Debug)]
pub struct Context {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Host {
        /// Declared keys and their values when the call started.
        declared: Vec<(String, Option<String>)>,
        /// Writes of this call, in order: a value, or `None` for a removal.
        writes: RefCell<Vec<(String, Option<String>)>>,
    },
    #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
    Mock(RefCell<BTreeMap<String, String>>),
}

impl Context {
    pub(crate) fn host(declared: Vec<(String, Option<String>)>) -> Self {
        Self {
            backend: Backend::Host {
                declared,
                writes: RefCell::new(Vec::new()),
            },
        }
    }

    /// This call's writes, for the verdict.
    pub(crate) fn into_writes(self) -> Vec<(String, Option<String>)> {
        match self.backend {
            Backend::Host { writes, .. } => writes.into_inner(),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(_) => Vec::new(),
        }
    }

    /// The value of `key`, if set earlier during this request (by this plugin or another).
    pub fn get(&self, key: &str) -> Option<String> {
        match &self.backend {
            Backend::Host { declared, writes } => {
                if let Some((_, value)) = writes.borrow().iter().rev().find(|(k, _)| k == key) {
                    return value.clone();
                }
                match declared.iter().find(|(k, _)| k == key) {
                    Some((_, value)) => value.clone(),
                    None => wit::get(key),
                }
            }
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(map) => map.borrow().get(key).cloned(),
        }
    }

    /// Sets `key` to `value` for the rest of this request.
    pub fn set(&self, key: &str, value: &str) {
        match &self.backend {
            Backend::Host { writes, .. } => writes
                .borrow_mut()
                .push((key.to_owned(), Some(value.to_owned()))),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(map) => {
                map.borrow_mut().insert(key.to_owned(), value.to_owned());
            }
        }
    }

    /// Removes `key`; no effect when absent.
    pub fn remove(&self, key: &str) {
        match &self.backend {
            Backend::Host { writes, .. } => writes.borrow_mut().push((key.to_owned(), None)),
            #[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
            Backend::Mock(map) => {
                map.borrow_mut().remove(key);
            }
        }
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
impl Context {
    /// An empty in-memory context, for native tests (feature `testing`). Pass the same context to
    /// `on_request` and `on_response` to test what flows between them.
    pub fn new() -> Self {
        Self {
            backend: Backend::Mock(RefCell::default()),
        }
    }

    /// Every key and value, sorted by key (feature `testing`; in-memory contexts only, empty for
    /// the gateway's).
    pub fn entries(&self) -> Vec<(String, String)> {
        match &self.backend {
            Backend::Host { .. } => Vec::new(),
            Backend::Mock(map) => map
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
impl Default for Context {
    /// Same as [`Context::new`].
    fn default() -> Self {
        Self::new()
    }
}
