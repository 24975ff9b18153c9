//! The end-to-end suite: real gateways (in process and as the `wasmgate` command) on 127.0.0.1,
//! real upstream servers, and the plugins compiled to wasm32-wasip2 by `build.rs`.
//!
//! One test binary with a module per area, rather than a binary per file: every binary links
//! wasmtime, hyper and the harness again, which cost minutes of CI per file. Run one area with
//! `cargo test -p wasmgate-tests --test e2e -- jwt::`.

mod balance;
mod basic_auth;
mod cache;
mod chain;
mod chaos;
mod circuit_breaking;
mod client_tls;
mod compression;
mod config_errors;
mod cors;
mod discovery;
mod ejection;
mod framing;
mod grpc;
mod h2_abuse;
mod h2spec;
mod health;
mod ip_restriction;
mod jwt;
mod key_auth;
mod operations;
mod paths;
mod plugins;
mod process;
mod proxy;
mod quickstart;
mod rate_limit;
mod retries;
mod shared_state;
mod tracing;
mod traffic;
mod transform;
mod upstream_pool;
mod upstream_tls;
mod websocket;
