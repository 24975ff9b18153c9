//! The plugin boundary's cost: a warm pooled hook call, a call on a fresh instance
//! (`isolation = "request"`), and a 3-plugin chain, each through the same `Chain` API the proxy
//! uses. Run: `cargo bench -p wasmgate-tests --bench plugin_calls`.

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use wasmgate_runtime::{Context, MemoryState, RequestView, Runtime};

const TAGGER: &str = env!("WASM_TAGGER");

fn runtime(rt: &tokio::runtime::Runtime, plugins: &str) -> Runtime {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "[gateway]\nplugin_cache_dir = \"\"\n[[routes]]\nname = \"r\"\nrespond = {{ body = \"x\" }}\n{plugins}"
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).expect("write");
    let config = wasmgate_config::load(&path).expect("config");
    rt.block_on(Runtime::load(&config, Arc::new(MemoryState::new())))
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
    let cases = [
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
    for (name, plugins) in cases {
        let runtime = runtime(&rt, &plugins);
        let chain = runtime.chain(0).expect("chain").clone();
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let chain = chain.clone();
                let id = id.clone();
                async move { chain.on_request(view(), Context::new(), &id).await }
            });
        });
    }
    let _ = Path::new(TAGGER);
}

criterion_group!(benches, bench);
criterion_main!(benches);
