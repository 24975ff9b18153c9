//! What a valid file means once loaded: values, defaults and normalisation.

use std::path::Path;
use std::time::Duration;

use wasmgate_config::{HostPattern, PathPattern, RouteAction, parse};

#[test]
fn reads_every_key_of_a_full_config() {
    let text = r#"
        [gateway]
        listen = ["127.0.0.1:8080", "[::1]:8080"]
        plugins_dir = "wasm"
        header_read_timeout = "5s"
        idle_timeout = "2m"
        send_timeout = "45s"
        max_header_size = "32KiB"
        max_headers = 50
        shutdown_grace = "0s"
        workers = 3

        [gateway.http2]
        max_concurrent_streams = 64
        keepalive_interval = "0s"

        [upstreams.users]
        targets = ["127.0.0.1:9001", { address = "users.internal:80", weight = 3 }]
        connect_timeout = "250ms"
        timeout = "1m"

        [[routes]]
        name = "users"
        hosts = ["API.example.com", "*.Example.com"]
        paths = ["/users/", "=/exact"]
        methods = ["get", "POST"]
        headers = { x-version = "2" }
        upstream = "users"
        strip_path = true

        [[routes]]
        name = "mock"
        respond = { status = 201, body = "made", headers = { x-mock = "1" } }
    "#;
    let c = parse(Path::new("/etc/wasmgate/gateway.toml"), text).expect("valid");
    let g = &c.gateway;
    assert_eq!(g.listen.len(), 2);
    assert_eq!(g.plugins_dir, Path::new("/etc/wasmgate/wasm"));
    assert_eq!(g.header_read_timeout, Duration::from_secs(5));
    assert_eq!(g.idle_timeout, Duration::from_secs(120));
    assert_eq!(g.send_timeout, Duration::from_secs(45));
    assert_eq!(g.max_header_size, 32 * 1024);
    assert_eq!(g.max_headers, 50);
    assert_eq!(g.workers, 3);
    assert_eq!(g.shutdown_grace, Duration::ZERO);
    assert_eq!(g.http2.max_concurrent_streams, 64);
    assert_eq!(g.http2.keepalive_interval, None);

    let u = &c.upstreams[0];
    assert_eq!(u.targets[0].weight, 1);
    assert_eq!(u.targets[1].address.as_str(), "users.internal:80");
    assert_eq!(u.targets[1].weight, 3);
    assert_eq!(u.connect_timeout, Duration::from_millis(250));
    assert_eq!(u.timeout, Duration::from_secs(60));

    let r = &c.routes[0];
    assert_eq!(
        r.hosts,
        [
            HostPattern::Exact("api.example.com".into()),
            HostPattern::Wildcard(".example.com".into())
        ]
    );
    assert_eq!(
        r.paths,
        [
            PathPattern::Prefix("/users".into()),
            PathPattern::Exact("/exact".into())
        ]
    );
    assert_eq!(r.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(r.headers[0].0, "x-version");
    assert!(matches!(r.action, RouteAction::Upstream(0)));
    assert!(r.strip_path);
    assert_eq!(r.location.line, 22);

    let RouteAction::Respond(m) = &c.routes[1].action else {
        panic!("mock route")
    };
    assert_eq!(m.status, 201);
    assert_eq!(m.body, "made");
    assert_eq!(c.routes[1].paths, [PathPattern::Prefix("/".into())]);
}

#[test]
fn defaults_fill_an_almost_empty_file() {
    let c = parse(
        Path::new("gateway.toml"),
        "[[routes]]\nname = \"r\"\nrespond = {}\n",
    )
    .expect("valid");
    assert_eq!(c.gateway.listen, ["127.0.0.1:8080".parse().expect("addr")]);
    assert_eq!(c.gateway.max_header_size, 64 * 1024);
    assert_eq!(c.gateway.max_headers, 100);
    // One worker per CPU the test may run on.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.gateway.workers, cpus);
    assert_eq!(c.gateway.shutdown_grace, Duration::from_secs(30));
    assert!(c.gateway.tls.is_none());
}

#[test]
fn reports_every_problem_in_file_order() {
    let err = parse(
        Path::new("g.toml"),
        "[[routes]]\nname = \"a\"\nupstream = \"nope\"\n\n[[routes]]\nname = \"a\"\nrespond = { status = 700 }\n",
    )
    .expect_err("invalid");
    let lines: Vec<String> = err.diagnostics().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "g.toml:3:12: routes[0].upstream: unknown upstream \"nope\" (no [upstreams.NAME] tables are defined)",
            "g.toml:6:8: routes[1].name: duplicate route name \"a\"",
            "g.toml:7:22: routes[1].respond.status: 700 is out of range (expected 200 to 599)",
        ]
    );
}

#[test]
fn reads_the_tracing_table_with_its_defaults() {
    let text = r#"
        [gateway.tracing]
        endpoint = "https://otlp.example.com:4318"
        sample_ratio = 0.25
        headers = { x-api-key = "k" }

        [upstreams.u]
        targets = ["127.0.0.1:9001"]

        [[routes]]
        name = "r"
        upstream = "u"
    "#;
    let c = parse(Path::new("/etc/wasmgate/gateway.toml"), text).expect("valid");
    let t = c.gateway.tracing.expect("tracing on");
    assert_eq!(t.endpoint, "https://otlp.example.com:4318");
    assert!((t.sample_ratio - 0.25).abs() < f64::EPSILON);
    assert_eq!(t.service_name, "wasmgate");
    assert_eq!(t.headers, [("x-api-key".to_owned(), "k".to_owned())]);
    assert_eq!(t.timeout, Duration::from_secs(10));
    assert_eq!(t.export_interval, Duration::from_secs(5));

    let whole = text.replace("sample_ratio = 0.25", "sample_ratio = 1");
    let c = parse(Path::new("/etc/wasmgate/gateway.toml"), &whole).expect("valid");
    assert!((c.gateway.tracing.expect("on").sample_ratio - 1.0).abs() < f64::EPSILON);
}
