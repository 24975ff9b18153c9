//! The router's cost per request: a route table of realistic size (exact hosts, a wildcard host,
//! path prefixes, methods and a header condition), matched for requests that hit early, late,
//! on a header, and not at all. Run: `cargo bench -p wasmgate-tests --bench router`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use wasmgate_proxy::{Match, Router};

/// 40 services, each with four routes (read, write, admin by header, catch-all), on their own host,
/// plus a wildcard host and a default route: 162 routes.
fn table() -> String {
    let mut toml = String::new();
    for i in 0..40 {
        toml.push_str(&format!(
            "[[routes]]\nname = \"svc{i}-read\"\nhosts = [\"svc{i}.example.com\"]\npaths = [\"/v1/items\", \"/v1/users\"]\nmethods = [\"GET\", \"HEAD\"]\nrespond = {{ body = \"x\" }}\n\n\
             [[routes]]\nname = \"svc{i}-write\"\nhosts = [\"svc{i}.example.com\"]\npaths = [\"/v1/items\"]\nmethods = [\"POST\", \"PUT\", \"DELETE\"]\nrespond = {{ body = \"x\" }}\n\n\
             [[routes]]\nname = \"svc{i}-admin\"\nhosts = [\"svc{i}.example.com\"]\npaths = [\"/admin\"]\nheaders = {{ x-role = \"admin\" }}\nrespond = {{ body = \"x\" }}\n\n\
             [[routes]]\nname = \"svc{i}-rest\"\nhosts = [\"svc{i}.example.com\"]\nrespond = {{ body = \"x\" }}\n\n"
        ));
    }
    toml.push_str(
        "[[routes]]\nname = \"tenants\"\nhosts = [\"*.tenants.example.com\"]\npaths = [\"/api\"]\nrespond = { body = \"x\" }\n\n\
         [[routes]]\nname = \"default\"\npaths = [\"/health\"]\nrespond = { body = \"x\" }\n",
    );
    toml
}

fn router() -> Router {
    let config = wasmgate_config::parse(Path::new("bench.toml"), &table()).expect("bench config");
    assert_eq!(config.routes.len(), 162);
    Router::new(&config.routes)
}

fn bench(c: &mut Criterion) {
    let router = router();
    let plain = HeaderMap::new();
    let mut admin = HeaderMap::new();
    admin.insert("x-role", HeaderValue::from_static("admin"));
    let cases: [(&str, &str, &str, Method, &HeaderMap, bool); 5] = [
        (
            "first host, prefix",
            "svc0.example.com",
            "/v1/items/7",
            Method::GET,
            &plain,
            true,
        ),
        (
            "last host, prefix",
            "svc39.example.com",
            "/v1/users/7/orders",
            Method::GET,
            &plain,
            true,
        ),
        (
            "header condition",
            "svc20.example.com",
            "/admin/users",
            Method::GET,
            &admin,
            true,
        ),
        (
            "wildcard host",
            "acme.tenants.example.com",
            "/api/v2/things",
            Method::GET,
            &plain,
            true,
        ),
        (
            "no match",
            "unknown.example.org",
            "/nothing/here",
            Method::GET,
            &plain,
            false,
        ),
    ];
    let mut group = c.benchmark_group("router");
    for (name, host, path, method, headers, found) in &cases {
        // The case must route as named, or the bench would time the wrong path.
        let matched = router.route(Some(host), path, method, headers);
        assert_eq!(matches!(matched, Match::Found { .. }), *found, "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| {
                black_box(router.route(
                    black_box(Some(host)),
                    black_box(path),
                    black_box(method),
                    black_box(headers),
                ))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
