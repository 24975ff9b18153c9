//! The `wasmgate` command as a child process: signals, exit codes, `check`, and memory under
//! large streamed bodies.

use std::time::Duration;

use wasmgate_tests::*;

fn write_config(dir: &tempfile::TempDir, toml: &str) -> std::path::PathBuf {
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let (up, mut arrived) = holding_upstream(Duration::from_millis(800)).await;
    let dir = workdir();
    let config = write_config(&dir, &proxy_everything_to(up, ""));
    let mut gw = GatewayProcess::start(wasmgate_bin!(), &config, 1).expect("start");
    let addr = gw.addrs[0];
    let in_flight =
        tokio::spawn(async move { client().get(format!("http://{addr}/slow")).send().await });
    arrived.recv().await.expect("request reached the upstream");
    gw.signal("TERM").expect("signal");
    let resp = in_flight
        .await
        .expect("join")
        .expect("in-flight request completed");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "slow");
    let code = tokio::task::spawn_blocking(move || {
        let code = gw.wait(Duration::from_secs(10));
        (code, gw.log_text())
    })
    .await
    .expect("join");
    assert_eq!(code.0.expect("exited"), Some(0), "{}", code.1);
    assert!(code.1.contains("SIGTERM received"), "{}", code.1);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn serves_on_the_configured_number_of_worker_threads() {
    let up = echo_upstream("up").await;
    let dir = workdir();
    let config = write_config(&dir, &proxy_everything_to(up, "workers = 3"));
    let gw = GatewayProcess::start(wasmgate_bin!(), &config, 1).expect("start");
    let url = format!("http://{}/x", gw.addrs[0]);
    let requests = (0..24).map(|_| {
        let url = url.clone();
        // A client each: separate connections, which the workers share between them.
        tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) })
    });
    for request in requests {
        assert_eq!(request.await.expect("join").expect("served"), 200);
    }
    let tasks = std::fs::read_dir(format!("/proc/{}/task", gw.pid())).expect("threads");
    // Thread names are cut to 15 bytes: "wasmgate-worker-0" reads "wasmgate-worker".
    let workers = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.starts_with("wasmgate-worker"))
        .count();
    assert_eq!(workers, 3, "{}", gw.log_text());
}

#[test]
fn check_accepts_a_valid_config_and_names_line_and_key_of_an_unknown_one() {
    let dir = workdir();
    let good = write_config(
        &dir,
        r#"
        [[routes]]
        name = "mock"
        respond = { body = "ok" }
        "#,
    );
    let (code, stderr) = check(wasmgate_bin!(), &good).expect("check");
    assert_eq!(code, 0, "{stderr}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\n[[routes]]\nname = \"mock\"\nrespond = { body = \"ok\" }\nstrip_paht = true\n",
    )
    .expect("write");
    let (code, stderr) = check(wasmgate_bin!(), &bad).expect("check");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.toml:7:1: routes[0].strip_paht: unknown key `strip_paht`, did you mean `strip_path`?"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_to_start_with_an_invalid_config() {
    let dir = workdir();
    let bad = write_config(
        &dir,
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n[[routes]]\nname = \"x\"\nupstream = \"missing\"\n",
    );
    let out = std::process::Command::new(wasmgate_bin!())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gateway.toml:5:12: routes[0].upstream: unknown upstream \"missing\""),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

const TAGGER: &str = env!("WASM_TAGGER");

/// `wasmgate ARGS` run from `dir`: exit code and stderr.
fn wasmgate_in(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(wasmgate_bin!())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run wasmgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_relative_plugin_cache_dir_resolves_against_a_relatively_named_config_file() {
    let dir = workdir_with_plugins(&[("tagger", TAGGER)]);
    write_config(
        &dir,
        r#"
        [gateway]
        plugin_cache_dir = "cache"
        [[routes]]
        name = "tagged"
        respond = { body = "ok" }
        [[routes.plugins]]
        name = "tagger"
        config = { header = "x-tag", value = "1" }
        "#,
    );
    let (code, stderr) = wasmgate_in(dir.path(), &["check", "--config", "gateway.toml"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(dir.path().join("cache").is_dir(), "{stderr}");
}

#[test]
fn an_unusable_plugin_cache_dir_is_reported_at_its_key_and_a_default_one_is_done_without() {
    let dir = workdir_with_plugins(&[("tagger", TAGGER)]);
    // A file where the folder should be: neither the folder nor anything in it can be created.
    std::fs::write(dir.path().join("blocked"), "").expect("write");
    let plugins = "[[routes]]\nname = \"tagged\"\nrespond = { body = \"ok\" }\n\
                   [[routes.plugins]]\nname = \"tagger\"\nconfig = { header = \"x-tag\", value = \"1\" }\n";
    write_config(
        &dir,
        &format!("[gateway]\nplugin_cache_dir = \"blocked/cache\"\n{plugins}"),
    );
    let (code, stderr) = wasmgate_in(dir.path(), &["check", "--config", "gateway.toml"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("gateway.toml:2:1: gateway.plugin_cache_dir: cannot use "),
        "{stderr}"
    );
    assert!(!stderr.contains(":0:0"), "{stderr}");

    // The default folder ($XDG_CACHE_HOME/wasmgate) unusable: a warning, and plugins still load.
    write_config(&dir, plugins);
    let out = std::process::Command::new(wasmgate_bin!())
        .current_dir(dir.path())
        .env("XDG_CACHE_HOME", dir.path().join("blocked"))
        .args(["check", "--config", "gateway.toml"])
        .output()
        .expect("run wasmgate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("compiling plugins without a cache"),
        "{stderr}"
    );
}

#[test]
fn a_taken_listen_address_is_reported_at_its_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = workdir();
    write_config(
        &dir,
        &format!(
            "[gateway]\nlisten = [\"{addr}\"]\n[[routes]]\nname = \"x\"\nrespond = {{ body = \"ok\" }}\n"
        ),
    );
    let (code, stderr) = wasmgate_in(dir.path(), &["run", "--config", "gateway.toml"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "gateway.toml:2:1: gateway.listen: cannot listen on {addr}: "
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_connection_is_logged_with_the_target_and_the_os_error() {
    let dead = closed_port();
    let dir = workdir();
    let config = write_config(&dir, &proxy_everything_to(dead, ""));
    let gw = GatewayProcess::start(wasmgate_bin!(), &config, 1).expect("start");
    let resp = client()
        .get(format!("http://{}/x", gw.addrs[0]))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 502);
    let seen = 0;
    tokio::task::block_in_place(|| gw.wait_for_log("connect failed", seen, Duration::from_secs(5)))
        .expect("logged");
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("connect failed"))
        .expect("the line");
    assert!(line.contains(&format!("target {dead}")), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
}

#[tokio::test]
async fn streams_200_mib_up_and_down_within_bounded_memory() {
    use futures_util::StreamExt;
    const SIZE: u64 = 200 * 1024 * 1024;
    let up = echo_upstream("up").await;
    let dir = workdir();
    // Above the default `max_request_body` of 100 MiB.
    let config = write_config(
        &dir,
        &proxy_everything_to(up, "max_request_body = \"1GiB\""),
    );
    let gw = GatewayProcess::start(wasmgate_bin!(), &config, 1).expect("start");
    let addr = gw.addrs[0];
    let c = client();

    let chunk = bytes::Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = (SIZE / chunk.len() as u64) as usize;
    let upload = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let resp = c
        .post(format!("http://{addr}/upload"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .expect("upload");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["body_bytes"], SIZE);

    let resp = c
        .get(format!("http://{addr}/bytes/{SIZE}"))
        .send()
        .await
        .expect("download");
    let mut total = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(part) = stream.next().await {
        total += part.expect("chunk").len() as u64;
    }
    assert_eq!(total, SIZE);

    let peak = gw.peak_rss().expect("rss");
    assert!(
        peak < 64 * 1024 * 1024,
        "peak RSS {} MiB",
        peak / (1024 * 1024)
    );
    eprintln!("gateway peak RSS after 2 x 200 MiB: {} KiB", peak / 1024);
}
