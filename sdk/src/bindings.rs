//! The bindings wit-bindgen generates for the `wasmgate:plugin/plugin` world (`../wit`), quarantined
//! here: the public API never exposes these types.

// The path is relative to this crate's manifest directory, so builds from any working directory
// (and path dependencies from other workspaces) find the WIT package.
wit_bindgen::generate!({
    path: "../wit",
    world: "wasmgate:plugin/plugin",
    // `export!` (in the plugin crate) invokes the generated export macro through
    // `$crate::__bindings`, so it must be `pub`; `default_bindings_module` is only used by its
    // one-argument form, which the SDK never calls, but names the right place anyway.
    pub_export_macro: true,
    export_macro_name: "__export_plugin",
    default_bindings_module: "wasmgate_sdk::__bindings",
    // Imports take `&str` and slices of borrowed values, so the SDK passes what it holds
    // without copying it into owned strings first.
    ownership: Borrowing {
        duplicate_if_necessary: true
    },
});
