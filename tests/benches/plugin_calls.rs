//! The plugin boundary's cost: a warm hook that reads one declared header and sets one, a warm
//! pooled hook call of the SDK walkthrough's plugin, a call on a fresh instance
//! (`isolation = "request"`), a 3-plugin chain, and the shipped key-auth, rate-limit and
//! transform chain of `cargo xtask bench` through both phases, each through the same `Chain` API
//! the proxy uses. Run: `cargo bench -p wasmgate-tests --bench plugin_calls`.

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use wasmgate_runtime::{Context, RequestView, ResponseView, Runtime, SharedState};

const TAGGER: &str = env!("WASM_TAGGER");
const COPIER: &str = env!("WASM_COPIER");

/// The `wasmgate-3-plugins` scenario of `cargo xtask bench`, with the same configs.
const SHIPPED_CHAIN: &str = concat!(
    "[[routes.plugins]]\npath = \"",
    env!("WASM_KEY_AUTH"),
    "\"\nconfig = { header = \"x-api-key\", consumers = [{ name = \"alice\", keys = [\"k-alice\"] }] }\n",
    "[[routes.plugins]]\npath = \"",
    env!("WASM_RATE_LIMIT"),
    "\"\nconfig = { limit = 1000000000, window = \"1m\", by = \"consumer\" }\n",
    "[[routes.plugins]]\npath = \"",
    env!("WASM_TRANSFORM"),
    "\"\nconfig = { request = { set_headers = { \"x-bench\" = \"1\" } }, response = { set_headers = { \"x-served-by\" = \"wasmgate\" } } }\n",
);

fn runtime(rt: &tokio::runtime::Runtime, plugins: &str) -> Runtime {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[gateway]\nplugin_cache_dir = \"\"\n[[routes]]\nname = \"r\"\nrespond = {{ body = \"x\" }}\n{plugins}"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).expect("write");
    let config = wasmgate_config::load(&path).expect("config");
    rt.block_on(Runtime::load(&config, Arc::new(SharedState::memory())))
        .expect("load plugins")
}

fn entry(isolation: &str, header: &str) -> String {
    format!(
        "[[routes.plugins]]\npath = {TAGGER:?}\nisolation = \"{isolation}\"\nconfig = {{ header = \"{header}\", value = \"v\" }}\n"
    )
}

fn view() -> RequestView {
    let (parts, ()) = http::Request::builder()
        .method("GET")
        .uri("/users/7?x=1")
        .header("host", "api.example.com")
        .header("user-agent", "bench")
        .header("accept", "*/*")
        .body(())
        .expect("request")
        .into_parts();
    RequestView {
        parts,
        body: None,
        body_replaced: false,
        path_rewritten: false,
        client: [127, 0, 0, 1].into(),
        tls: false,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let id = HeaderValue::from_static("bench");
    let copier = format!(
        "[[routes.plugins]]\npath = {COPIER:?}\nconfig = {{ from = \"user-agent\", to = \"x-agent\" }}\n"
    );
    let cases = [
        ("warm hook reading one header and setting one", copier),
        ("warm pooled on_request", entry("pooled", "x-a")),
        ("fresh instance on_request", entry("request", "x-a")),
        (
            "3-plugin chain on_request",
            [
                entry("pooled", "x-a"),
                entry("pooled", "x-b"),
                entry("pooled", "x-c"),
            ]
            .concat(),
        ),
    ];
    // What every case below also pays per iteration, outside the chain: building the request
    // and an empty context. Subtract it to get a hook's own cost.
    c.bench_function("baseline: building the request and context", |b| {
        b.iter(|| (view(), Context::new()));
    });
    for (name, plugins) in cases {
        let runtime = runtime(&rt, &plugins);
        let chain = runtime.chain(0).expect("chain").clone();
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let chain = chain.clone();
                let id = id.clone();
                async move { chain.on_request(view(), Context::new(), &id, 0).await }
            });
        });
    }
    // Both phases, as the gateway runs them for a request that reaches the upstream: two hook
    // calls (key-auth's and rate-limit's request hooks); transform's fixed headers and
    // rate-limit's scheduled ones are applied by the host.
    let runtime = runtime(&rt, SHIPPED_CHAIN);
    let chain = runtime.chain(0).expect("chain").clone();
    c.bench_function(
        "shipped key-auth + rate-limit + transform, both phases",
        |b| {
            b.to_async(&rt).iter(|| {
                let chain = chain.clone();
                let id = id.clone();
                async move {
                    let mut request = view();
                    let key = HeaderValue::from_static("k-alice");
                    request.parts.headers.insert("x-api-key", key);
                    let (_, ctx, outcome, _) =
                        chain.on_request(request, Context::new(), &id, 0).await;
                    assert!(matches!(
                        outcome,
                        wasmgate_runtime::RequestOutcome::Continue
                    ));
                    let (parts, ()) = http::Response::new(()).into_parts();
                    let response = ResponseView {
                        parts,
                        body: None,
                        body_replaced: false,
                    };
                    let (view, _, result, _) =
                        chain.on_response(chain.len(), response, ctx, &id, 0).await;
                    assert!(result.is_ok() && view.parts.headers.contains_key("x-served-by"));
                    assert!(view.parts.headers.contains_key("ratelimit-remaining"));
                }
            });
        },
    );
    let _ = Path::new(TAGGER);
}

criterion_group!(benches, bench);
criterion_main!(benches);
