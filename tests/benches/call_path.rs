//! What a synchronous (fiber-free) call into a plugin would save: the same export of the same
//! component called with wasmtime's `call` (on the caller's stack) and `call_async` (on a fiber,
//! as the gateway calls every hook so that a long call can yield to its worker's other
//! requests). The export is `describe` of the `copier` fixture before `init` (a call that does
//! next to nothing, so the difference is the fiber's cost), on an engine configured like the
//! gateway's (epoch interruption, pooling allocator). Run:
//! `cargo bench -p wasmgate-tests --bench call_path`.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::{Component, Linker, Val};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Store};

const COPIER: &str = env!("WASM_COPIER");

fn bench(c: &mut Criterion) {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.allocation_strategy(InstanceAllocationStrategy::pooling());
    let engine = Engine::new(&config).expect("engine");
    let component = Component::from_file(&engine, COPIER).expect("component");
    // `describe` before `init` calls no import: traps stand in for all of them, and no async
    // host function makes the store require `call_async`.
    let mut linker = Linker::<()>::new(&engine);
    linker
        .define_unknown_imports_as_traps(&component)
        .expect("stub imports");
    let mut store = Store::new(&engine, ());
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker
        .instantiate(&mut store, &component)
        .expect("instantiate");
    let lifecycle = instance
        .get_export_index(&mut store, None, "wasmgate:plugin/lifecycle@0.2.0")
        .expect("lifecycle export");
    let describe = instance
        .get_export_index(&mut store, Some(&lifecycle), "describe")
        .expect("describe export");
    let describe = instance
        .get_func(&mut store, describe)
        .expect("describe func");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut results = [Val::Bool(false)];

    c.bench_function("describe, synchronous call (no fiber)", |b| {
        b.iter(|| {
            describe.call(&mut store, &[], &mut results).expect("call");
        });
    });
    c.bench_function("describe, async call (on a fiber)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    describe
                        .call_async(&mut store, &[], &mut results)
                        .await
                        .expect("call");
                }
                start.elapsed()
            })
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
