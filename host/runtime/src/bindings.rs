//! Generated bindings for the `wasmgate:plugin/plugin` world, kept out of the public API.

wasmtime::component::bindgen!({
    world: "wasmgate:plugin/plugin",
    path: "../../wit",
    // Shared-state calls may go to Redis: they await the network instead of blocking the worker.
    imports: {
        "wasmgate:plugin/shared-state": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "wasmgate:plugin/types.request": crate::imports::RequestHandle,
        "wasmgate:plugin/types.response": crate::imports::ResponseHandle,
    },
});
