//! Plugins end to end: real components compiled to wasm32-wasip2, bound to routes of a real
//! gateway, with real upstreams and clients.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmgate_tests::*;

const TAGGER: &str = env!("WASM_TAGGER");
const MISBEHAVE: &str = env!("WASM_MISBEHAVE");
const OLD_ABI: &str = env!("WASM_OLD_ABI");
const COPIER: &str = env!("WASM_COPIER");

/// A folder with `plugins/tagger.wasm` and `plugins/misbehave.wasm`, like a deployment.
fn plugins_dir() -> tempfile::TempDir {
    workdir_with_plugins(&[("tagger", TAGGER), ("misbehave", MISBEHAVE)])
}

fn misbehaving_gateway_toml(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
        [gateway]
        listen = ["127.0.0.1:0"]
        plugin_cache_dir = ""
        [upstreams.u]
        targets = ["{up}"]
        [[routes]]
        name = "bad"
        upstream = "u"
        [[routes.plugins]]
        name = "misbehave"
        memory = "32MiB"
        timeout = "100ms"
        {extra}
        "#
    )
}

/// [`misbehaving_gateway_toml`] on one worker (the plugin's calls and every other request share
/// its thread), with the plugin's `timeout` set to `timeout`.
fn one_worker_misbehaving_toml(up: std::net::SocketAddr, extra: &str, timeout: &str) -> String {
    misbehaving_gateway_toml(up, extra)
        .replacen(
            "plugin_cache_dir = \"\"",
            "plugin_cache_dir = \"\"\n        workers = 1",
            1,
        )
        .replacen(
            "timeout = \"100ms\"",
            &format!("timeout = \"{timeout}\""),
            1,
        )
}

#[tokio::test]
async fn tagger_binds_per_route_config_and_runs_both_phases() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        plugins_dir(),
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "a"
            paths = ["/a"]
            upstream = "u"
            [[routes.plugins]]
            name = "tagger"
            config = {{ header = "x-team", value = "alpha" }}
            [[routes]]
            name = "b"
            paths = ["/b"]
            upstream = "u"
            [[routes.plugins]]
            name = "tagger"
            config = {{ header = "x-env", value = "beta" }}
            "#
        ),
    )
    .await
    .expect("start");
    let c = client();
    let resp = c.get(gw.url("/a/x")).send().await.expect("send");
    assert_eq!(
        resp.headers()["x-tagger-seen"],
        "yes",
        "response phase read the context"
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["headers"]["x-team"], "alpha");
    assert!(body["headers"].get("x-env").is_none());

    let body: Value = c
        .get(gw.url("/b/x"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["headers"]["x-env"], "beta");
    assert!(body["headers"].get("x-team").is_none());

    let resp = c.get(gw.url("/a/deny")).send().await.expect("send");
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers().get("x-tagger-seen").is_none(),
        "the answering plugin's own response hook does not run"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.text().await.expect("text"), "denied by tagger");
}

#[tokio::test]
async fn a_declared_header_read_after_the_hook_edits_it_is_the_edit() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        workdir_with_plugins(&[("copier", COPIER)]),
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "copy"
            upstream = "u"
            [[routes.plugins]]
            name = "copier"
            config = {{ from = "x-from", to = "X-To", read_back = true }}
            "#
        ),
    )
    .await
    .expect("start");
    let body: Value = client()
        .get(gw.url("/"))
        .header("x-from", "new")
        .header("x-to", "sent-by-client")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["headers"]["x-to"], "new");
    assert_eq!(
        body["headers"]["x-copier-read-back"], "new",
        "the declared value of x-to was stale after the edit"
    );

    // Without the header to copy nothing is edited: the declared value is read.
    let body: Value = client()
        .get(gw.url("/"))
        .header("x-to", "sent-by-client")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["headers"]["x-copier-read-back"], "sent-by-client");
}

#[tokio::test]
async fn plugin_failures_fail_only_their_own_request_and_show_no_guest_text() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(plugins_dir(), &misbehaving_gateway_toml(up, ""))
        .await
        .expect("start");
    let c = client();
    for (path, status) in [
        ("/panic", 500),
        ("/error", 500),
        ("/oom", 500),
        ("/loop", 503),
        ("/headers", 500),
        ("/respond-headers", 500),
    ] {
        let started = Instant::now();
        let resp = c.get(gw.url(path)).send().await.expect("send");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            started.elapsed()
        );
        assert_eq!(resp.status(), status, "{path}");
        let text = resp.text().await.expect("text");
        assert!(!text.contains("secret"), "{path} leaked guest text: {text}");
        let body: Value = serde_json::from_str(&text).expect("json error body");
        assert!(body["request_id"].is_string());
        // The very next request is served normally.
        let ok = c.get(gw.url("/fine")).send().await.expect("send");
        assert_eq!(ok.status(), 200, "after {path}");
    }
}

#[tokio::test]
async fn concurrent_requests_keep_succeeding_while_others_trap() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(plugins_dir(), &misbehaving_gateway_toml(up, ""))
        .await
        .expect("start");
    let c = client();
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for i in 0..400 {
        let url = gw.url("/fine");
        let c2 = c.clone();
        good.push(tokio::spawn(async move {
            c2.get(url).send().await.map(|r| r.status().as_u16())
        }));
        if i % 40 == 0 {
            for path in ["/panic", "/loop", "/oom"] {
                let url = gw.url(path);
                let c3 = c.clone();
                bad.push(tokio::spawn(async move {
                    c3.get(url).send().await.map(|r| r.status().as_u16())
                }));
            }
        }
    }
    for g in good {
        assert_eq!(g.await.expect("join").expect("send"), 200);
    }
    for b in bad {
        assert!(b.await.expect("join").expect("send") >= 500);
    }
}

#[tokio::test]
async fn pooled_instances_are_reused_and_request_isolation_gets_fresh_ones() {
    let up = echo_upstream("up").await;
    let c = client();
    let calls = |gw: &TestGateway| {
        let c = c.clone();
        let url = gw.url("/count");
        async move {
            let body: Value = c
                .get(url)
                .send()
                .await
                .expect("send")
                .json()
                .await
                .expect("json");
            body["headers"]["x-instance-calls"]
                .as_str()
                .expect("header")
                .parse::<u64>()
                .expect("number")
        }
    };
    let pooled = TestGateway::start_in(plugins_dir(), &misbehaving_gateway_toml(up, ""))
        .await
        .expect("start");
    let mut max = 0;
    for _ in 0..10 {
        max = max.max(calls(&pooled).await);
    }
    assert!(
        max >= 5,
        "sequential requests reuse pooled instances (max count {max})"
    );

    let isolated = TestGateway::start_in(
        plugins_dir(),
        &misbehaving_gateway_toml(up, r#"isolation = "request""#),
    )
    .await
    .expect("start");
    for _ in 0..5 {
        assert_eq!(
            calls(&isolated).await,
            1,
            "each request gets a fresh instance"
        );
    }
}

#[tokio::test]
async fn trapped_instance_is_not_reused() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(plugins_dir(), &misbehaving_gateway_toml(up, ""))
        .await
        .expect("start");
    let c = client();
    // Sequential requests from one client land on the same idle instance (LIFO pool).
    for _ in 0..3 {
        c.get(gw.url("/count")).send().await.expect("send");
    }
    assert_eq!(
        c.get(gw.url("/panic")).send().await.expect("send").status(),
        500
    );
    let body: Value = c
        .get(gw.url("/count"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let calls: u64 = body["headers"]["x-instance-calls"]
        .as_str()
        .expect("header")
        .parse()
        .expect("number");
    assert!(
        calls <= 2,
        "a trapped instance must be replaced (count {calls})"
    );
}

#[tokio::test]
async fn on_error_allow_skips_the_failing_plugin() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        plugins_dir(),
        &misbehaving_gateway_toml(up, r#"on_error = "allow""#),
    )
    .await
    .expect("start");
    let resp = client().get(gw.url("/panic")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn buffered_bodies_are_given_to_plugins_and_limited_by_max_body() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        plugins_dir(),
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "body"
            upstream = "u"
            max_body = "1KiB"
            [[routes.plugins]]
            name = "misbehave"
            config = {{ needs_body = true }}
            "#
        ),
    )
    .await
    .expect("start");
    let c = client();
    let body: Value = c
        .post(gw.url("/upper"))
        .body("hello")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(body["headers"]["x-body-seen"], "5");
    assert_eq!(body["body_bytes"], 5);
    assert_eq!(body["headers"]["content-length"], "5");
    let resp = c
        .post(gw.url("/upper"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn plugin_errors_are_located_config_errors_at_start() {
    let dir = plugins_dir();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        r#"
[[routes]]
name = "r"
respond = { body = "x" }

[[routes.plugins]]
name = "tagger"
config = { header = "", value = "v" }

[[routes.plugins]]
name = "nonexistent"

[[routes.plugins]]
name = "misbehave"
config = { fail_init = true }
"#,
    )
    .expect("write");
    let config = wasmgate_config::load(&path).expect("syntactically valid");
    let problems = wasmgate_proxy::prepare(config).await.expect_err("refused");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    assert!(text.contains("gateway.toml:6:1: routes[0].plugins[0].config: route \"r\": plugin \"tagger\" refused its config: header must not be empty"), "{text}");
    assert!(
        text.contains(
            "gateway.toml:10:1: routes[0].plugins[1]: route \"r\": plugin \"nonexistent\":"
        ),
        "{text}"
    );
    assert!(text.contains("nonexistent.wasm not found"), "{text}");
    assert!(text.contains("fail_init is set"), "{text}");
}

#[test]
fn check_reports_the_plugins_own_config_error_and_a_missing_plugin() {
    let dir = plugins_dir();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"r\"\nrespond = { body = \"x\" }\n[[routes.plugins]]\nname = \"tagger\"\nconfig = { header = \"\", value = \"v\" }\n[[routes.plugins]]\nname = \"missing\"\n",
    )
    .expect("write");
    let (code, stderr) = check(wasmgate_bin!(), &path).expect("check");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("plugin \"tagger\" refused its config: header must not be empty"),
        "{stderr}"
    );
    assert!(stderr.contains("plugin \"missing\""), "{stderr}");
    assert!(stderr.contains("missing.wasm not found"), "{stderr}");
}

#[test]
fn a_plugin_built_for_the_0_1_abi_is_refused_naming_both_versions_and_how_to_rebuild() {
    let dir = workdir_with_plugins(&[("old-abi", OLD_ABI)]);
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"r\"\nrespond = { body = \"x\" }\n[[routes.plugins]]\nname = \"old-abi\"\n",
    )
    .expect("write");
    let (code, stderr) = check(wasmgate_bin!(), &path).expect("check");
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "old-abi.wasm was built for the plugin ABI wasmgate:plugin@0.1.0, and this gateway runs @0.2.0"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("rebuild it against wasmgate-sdk 0.2"),
        "{stderr}"
    );
    assert!(!stderr.contains("import"), "no link error: {stderr}");
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused_with_its_reason() {
    let dir = plugins_dir();
    let plugins = dir.path().join("plugins");
    std::fs::write(plugins.join("garbage.wasm"), b"not wasm at all").expect("write");
    // A valid component of another world: the echo of a core module is enough to be refused.
    std::fs::write(plugins.join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[[routes]]\nname = \"r\"\nrespond = { body = \"x\" }\n[[routes.plugins]]\nname = \"garbage\"\n[[routes.plugins]]\nname = \"core\"\n",
    )
    .expect("write");
    let (code, stderr) = check(wasmgate_bin!(), &path).expect("check");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("garbage.wasm is not a valid WebAssembly component"),
        "{stderr}"
    );
    assert!(
        stderr.contains("core.wasm is not a valid WebAssembly component"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_panic_is_logged_with_route_and_plugin_and_memory_stays_bounded() {
    let up = echo_upstream("up").await;
    let dir = plugins_dir();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, misbehaving_gateway_toml(up, "")).expect("write");
    let gw = GatewayProcess::start(wasmgate_bin!(), &path, 1).expect("start");
    let addr = gw.addrs[0];
    let c = client();
    let resp = c
        .get(format!("http://{addr}/panic"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 500);
    for _ in 0..20 {
        let resp = c
            .get(format!("http://{addr}/oom"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 500);
    }
    assert_eq!(
        c.get(format!("http://{addr}/fine"))
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let peak = gw.peak_rss().expect("rss");
    assert!(
        peak < 256 * 1024 * 1024,
        "peak RSS {} MiB after 20 memory bombs",
        peak >> 20
    );
    // The log is written by another thread: wait for the lines rather than sleeping.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = gw.log_text();
        if log.contains("secret guest panic text") && log.contains("plugin failed") {
            assert!(
                log.contains("route=\"bad\"") || log.contains("route=bad"),
                "{log}"
            );
            assert!(log.contains("misbehave"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "panic not logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn compiled_plugins_are_cached_on_disk() {
    let dir = plugins_dir();
    let cache = dir.path().join("cache");
    let toml = format!(
        "[gateway]\nplugin_cache_dir = \"{}\"\n[[routes]]\nname = \"r\"\nrespond = {{ body = \"x\" }}\n[[routes.plugins]]\nname = \"tagger\"\nconfig = {{ header = \"a\", value = \"b\" }}\n",
        cache.display()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).expect("write");
    let config = wasmgate_config::load(&path).expect("valid");
    wasmgate_proxy::prepare(config.clone()).await.expect("load");
    let files = cached_files(&cache);
    assert!(!files.is_empty(), "nothing cached in {}", cache.display());
    let before: Vec<_> = files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect();
    wasmgate_proxy::prepare(config).await.expect("load again");
    let after: Vec<_> = cached_files(&cache)
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect();
    assert_eq!(
        before, after,
        "a second load reuses the cached code instead of recompiling"
    );
}

fn cached_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_none() {
                // Compiled code has no extension; wasmtime's cache also keeps usage statistics
                // (`.stats`) next to it, written atomically through `.wip-*` files, which change.
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_client_stalling_a_buffered_body_gets_408() {
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        plugins_dir(),
        &format!(
            r#"
            [gateway]
            listen = ["127.0.0.1:0"]
            header_read_timeout = "300ms"
            plugin_cache_dir = ""
            [upstreams.u]
            targets = ["{up}"]
            [[routes]]
            name = "body"
            upstream = "u"
            [[routes.plugins]]
            name = "misbehave"
            config = {{ needs_body = true }}
            "#
        ),
    )
    .await
    .expect("start");
    let started = Instant::now();
    let resp = raw_exchange(
        gw.http,
        b"POST /upper HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b",
        Duration::from_secs(5),
    )
    .await
    .expect("io");
    assert_eq!(raw_status(&resp), Some(408), "{resp}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_looping_plugin_does_not_stall_the_other_requests_of_its_worker() {
    // One worker: the looping call and every other request share one thread. The call yields at
    // each epoch tick once it has run for 1 ms, so the worker keeps serving while it loops until
    // its 300 ms timeout. A call that did not yield would leave at most the requests already
    // answered before it started.
    let up = echo_upstream("up").await;
    let toml = one_worker_misbehaving_toml(up, "", "300ms");
    let gw = TestGateway::start_in(plugins_dir(), &toml)
        .await
        .expect("start");
    let c = client();
    assert_eq!(
        c.get(gw.url("/fine")).send().await.expect("send").status(),
        200
    );
    let looping = tokio::spawn(c.get(gw.url("/loop")).send());
    let mut served_meanwhile = 0;
    let mut slowest = Duration::ZERO;
    while !looping.is_finished() {
        let sent = Instant::now();
        let status = c.get(gw.url("/fine")).send().await.expect("send").status();
        assert_eq!(status, 200);
        if !looping.is_finished() {
            served_meanwhile += 1;
            // One of these overlaps the loop whenever it starts: without yielding it would wait
            // for the rest of the loop's 300 ms.
            slowest = slowest.max(sent.elapsed());
        }
    }
    let status = looping.await.expect("join").expect("send").status();
    assert_eq!(status, 503, "the loop hit its timeout");
    assert!(
        served_meanwhile >= 10,
        "only {served_meanwhile} requests were served while the plugin looped"
    );
    assert!(
        slowest < Duration::from_millis(150),
        "a request waited {slowest:?} while the plugin looped"
    );
}

#[tokio::test]
async fn max_instances_bounds_the_instances_a_worker_may_use_at_once() {
    let up = echo_upstream("up").await;
    // One worker with one instance; the loop holds it for 1.5 s, longer than a request waits
    // for an instance (1 s).
    let toml = one_worker_misbehaving_toml(up, "max_instances = 1", "1500ms");
    let gw = TestGateway::start_in(plugins_dir(), &toml)
        .await
        .expect("start");
    let c = client();
    assert_eq!(
        c.get(gw.url("/fine")).send().await.expect("send").status(),
        200
    );
    let looping = tokio::spawn(c.get(gw.url("/loop")).send());
    loop {
        assert!(
            !looping.is_finished(),
            "the loop ended before a request had to wait for its instance"
        );
        let sent = Instant::now();
        let resp = c.get(gw.url("/fine")).send().await.expect("send");
        if resp.status() == 200 {
            // Served before the loop took the instance.
            continue;
        }
        assert_eq!(resp.status(), 503, "no second instance: unavailable");
        assert!(
            sent.elapsed() >= Duration::from_millis(900),
            "it waited for the instance first ({:?})",
            sent.elapsed()
        );
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"], "plugin_unavailable");
        break;
    }
    let status = looping.await.expect("join").expect("send").status();
    assert_eq!(status, 503, "the loop hit its timeout");
    assert_eq!(
        c.get(gw.url("/fine")).send().await.expect("send").status(),
        200,
        "the timed-out instance's slot is free again"
    );
}
