//! Operating a running gateway (the `wasmgate` binary as a child process): hot reload from the
//! watched file, SIGHUP and `POST /reload`, the admin API, metrics and the access log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmgate_tests::*;

const TAGGER: &str = env!("WASM_TAGGER");
const MISBEHAVE: &str = env!("WASM_MISBEHAVE");

fn write(path: &Path, text: &str) {
    // Written beside and renamed over, as editors and deploy tools do: the watcher never sees
    // half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn gateway_section(extra: &str) -> String {
    format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nplugin_cache_dir = \"\"\n{extra}\n"
    )
}

fn mock_route(name: &str, path: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\npaths = [\"={path}\"]\nrespond = {{ body = \"{name}\" }}\n"
    )
}

struct Running {
    _dir: tempfile::TempDir,
    config: PathBuf,
    gw: GatewayProcess,
    http: SocketAddr,
    admin: SocketAddr,
}

fn start(config_text: &str, setup: impl FnOnce(&Path)) -> Running {
    let dir = workdir();
    setup(dir.path());
    let config = dir.path().join("gateway.toml");
    write(&config, config_text);
    let gw = GatewayProcess::start(wasmgate_bin!(), &config, 1).expect("start");
    let http = gw.addrs[0];
    let admin = gw.admin().expect("admin address logged");
    Running {
        _dir: dir,
        config,
        gw,
        http,
        admin,
    }
}

async fn get(url: String) -> (u16, String) {
    let resp = client().get(url).send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let (status, body) = get(format!("http://{admin}{path}")).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// Polls until `url` answers `status`, for at most `limit`; how long it took.
async fn until_status(url: &str, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(resp) = client().get(url).send().await
            && resp.status().as_u16() == status
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{url} did not answer {status} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_route_added_to_the_watched_file_serves_within_3s() {
    let base = format!("{}{}", gateway_section(""), mock_route("a", "/a"));
    let run = start(&base, |_| {});
    assert_eq!(get(format!("http://{}/b", run.http)).await.0, 404);
    write(&run.config, &format!("{base}{}", mock_route("b", "/b")));
    let took = until_status(
        &format!("http://{}/b", run.http),
        200,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        get(format!("http://{}/a", run.http)).await,
        (200, "a".into())
    );
    let metrics = get(format!("http://{}/metrics", run.admin)).await.1;
    assert!(
        metrics.contains(r#"wasmgate_config_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
    eprintln!("new route served {took:?} after the write");
}

/// The value of the counter `name{result="RESULT"}` in the admin API's metrics.
async fn counter(admin: SocketAddr, name: &str, result: &str) -> u64 {
    let metrics = get(format!("http://{admin}/metrics")).await.1;
    let prefix = format!("{name}{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}

/// `wasmgate_config_reloads_total` by result: (success, failure).
async fn reloads(admin: SocketAddr) -> (u64, u64) {
    let name = "wasmgate_config_reloads_total";
    (
        counter(admin, name, "success").await,
        counter(admin, name, "failure").await,
    )
}

/// Waits until the watcher has looked at the files `at_least` times with this result.
async fn file_checks(admin: SocketAddr, result: &str, at_least: u64) -> u64 {
    let start = Instant::now();
    loop {
        let seen = counter(admin, "wasmgate_config_file_checks_total", result).await;
        if seen >= at_least {
            return seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the watcher made {seen} {result} checks, not {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Long enough for the watcher to have acted on anything else it saw: two debounce periods.
const WATCHER_SETTLES: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_checking_or_touching_the_file_does_not_reload_and_a_change_reloads_once() {
    let base = format!("{}{}", gateway_section(""), mock_route("a", "/a"));
    let run = start(&base, |_| {});

    // What operators do to a live file without changing it: read it, check it, touch it, and
    // deploy the same content again (written beside and renamed over).
    std::fs::read_to_string(&run.config).expect("read");
    let (code, out) = check(wasmgate_bin!(), &run.config).expect("check");
    assert_eq!(code, 0, "{out}");
    std::fs::File::options()
        .append(true)
        .open(&run.config)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()))
        .expect("touch");
    write(&run.config, &base);
    // The touch and the rewrite are writes: the watcher looks, finds the same content, and
    // stops there (before the fix, reading the file started a reload that read it again...).
    let unchanged = file_checks(run.admin, "unchanged", 1).await;
    tokio::time::sleep(WATCHER_SETTLES).await;
    assert_eq!(reloads(run.admin).await, (0, 0), "{}", run.gw.log_text());
    assert_eq!(
        counter(run.admin, "wasmgate_config_file_checks_total", "unchanged").await,
        unchanged,
        "no further look without a further write"
    );

    write(&run.config, &format!("{base}{}", mock_route("b", "/b")));
    until_status(
        &format!("http://{}/b", run.http),
        200,
        Duration::from_secs(3),
    )
    .await;
    tokio::time::sleep(WATCHER_SETTLES).await;
    assert_eq!(reloads(run.admin).await, (1, 0), "{}", run.gw.log_text());

    // A broken file fails once, not once per look at it.
    let seen = run.gw.log_len();
    write(&run.config, "[gateway\n");
    let gw = &run.gw;
    tokio::task::block_in_place(|| gw.wait_for_log("reload failed", seen, Duration::from_secs(5)))
        .expect("the failed reload is logged");
    let (code, _) = check(wasmgate_bin!(), &run.config).expect("check");
    assert_eq!(code, 1);
    std::fs::read_to_string(&run.config).expect("read");
    tokio::time::sleep(WATCHER_SETTLES).await;
    assert_eq!(reloads(run.admin).await, (1, 1), "{}", run.gw.log_text());
    assert_eq!(
        get(format!("http://{}/b", run.http)).await,
        (200, "b".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_folder_named_by_a_reload_through_the_admin_api_is_watched_too() {
    let base = format!("{}{}", gateway_section(""), mock_route("a", "/a"));
    let run = start(&base, |dir| {
        std::fs::create_dir(dir.join("ext")).expect("mkdir");
        std::fs::copy(TAGGER, dir.join("ext/tagger.wasm")).expect("copy");
    });
    let tagged = format!(
        "{base}[[routes.plugins]]\npath = \"ext/tagger.wasm\"\nconfig = {{ header = \"x-tag\", value = \"1\" }}\n"
    );
    std::fs::write(run.config.with_extension("next"), &tagged).expect("write");
    // Renamed over by a deploy tool the watcher also sees; POST /reload races it, and either way
    // exactly this content ends up loaded.
    std::fs::rename(run.config.with_extension("next"), &run.config).expect("rename");
    let reloaded = post_reload(run.admin).await;
    assert_eq!(reloaded["result"], "success", "{reloaded}");

    // The plugin file changes: the watcher, refreshed after that reload, sees it.
    let before = counter(run.admin, "wasmgate_config_file_checks_total", "changed").await;
    write(
        &run.config.with_file_name("ext/tagger.wasm"),
        "not a component",
    );
    file_checks(run.admin, "changed", before + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_old_routes_serving_and_reports_every_problem() {
    let base = format!("{}{}", gateway_section(""), mock_route("a", "/a"));
    let run = start(&base, |_| {});
    let seen = run.gw.log_len();
    write(
        &run.config,
        &format!(
            "{base}[[routes]]\nname = \"b\"\npaths = [\"/b\"]\nupstream = \"nowhere\"\nstrip_paht = true\n"
        ),
    );
    let gw = &run.gw;
    tokio::task::block_in_place(|| gw.wait_for_log("reload failed", seen, Duration::from_secs(5)))
        .expect("the failed reload is logged");
    let log = run.gw.log_text();
    assert!(
        log.contains("gateway.toml:14:1: routes[1].strip_paht"),
        "{log}"
    );
    assert!(log.contains("nowhere"), "{log}");
    assert_eq!(
        get(format!("http://{}/a", run.http)).await,
        (200, "a".into())
    );

    let resp = client()
        .post(format!("http://{}/reload", run.admin))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["result"], "failure");
    let errors = body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{body}");
    let metrics = get(format!("http://{}/metrics", run.admin)).await.1;
    assert!(
        metrics.contains(r#"wasmgate_config_reloads_total{result="failure"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"wasmgate_config_reloads_total{result="success"} 0"#),
        "{metrics}"
    );
}

async fn post_reload(admin: SocketAddr) -> Value {
    let resp = client()
        .post(format!("http://{admin}/reload"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_what_runs_and_a_reverted_restart_setting_is_no_longer_pending() {
    let base = |listen: &str, extra: &str| {
        format!(
            "[gateway]\nlisten = [\"{listen}\"]\nadmin = \"127.0.0.1:0\"\nwatch = false\n\
             header_read_timeout = \"10s\"\n{}{extra}",
            mock_route("a", "/a")
        )
    };
    let run = start(&base("127.0.0.1:0", ""), |_| {});
    let elsewhere = closed_port();

    // A new listener needs a restart; the new route does not.
    write(
        &run.config,
        &base(&elsewhere.to_string(), &mock_route("b", "/b")).replace(
            "header_read_timeout = \"10s\"",
            "header_read_timeout = \"5s\"",
        ),
    );
    let reloaded = post_reload(run.admin).await;
    assert_eq!(
        reloaded["restart_needed"],
        serde_json::json!(["gateway.listen", "gateway.header_read_timeout"])
    );
    assert_eq!(
        get(format!("http://{}/b", run.http)).await,
        (200, "b".into())
    );
    let config = admin_json(run.admin, "/config").await;
    assert_eq!(
        config["gateway"]["listen"],
        serde_json::json!(["127.0.0.1:0"])
    );
    assert_eq!(config["gateway"]["header_read_timeout_ms"], 10_000);
    assert_eq!(
        config["pending_restart"],
        serde_json::json!({
            "gateway.listen": [elsewhere.to_string()],
            "gateway.header_read_timeout": 5000,
        })
    );
    assert!(
        tokio::net::TcpStream::connect(elsewhere).await.is_err(),
        "not listening before a restart"
    );

    // Put back as it runs: nothing is pending any more, and nothing is warned about.
    let seen = run.gw.log_len();
    write(
        &run.config,
        &base(
            "127.0.0.1:0",
            &format!("{}{}", mock_route("b", "/b"), mock_route("c", "/c")),
        ),
    );
    let reloaded = post_reload(run.admin).await;
    assert_eq!(reloaded["restart_needed"], serde_json::json!([]));
    assert_eq!(
        get(format!("http://{}/c", run.http)).await,
        (200, "c".into())
    );
    let config = admin_json(run.admin, "/config").await;
    assert_eq!(config["pending_restart"], serde_json::json!({}));
    let log = run.gw.log_text();
    let after: Vec<&str> = log.lines().skip(seen).collect();
    assert!(
        !after.iter().any(|l| l.contains("only after a restart")),
        "{log}"
    );
}

/// `wasmgate reload ARGS`: exit code, stdout, stderr.
fn reload_command(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(wasmgate_bin!())
        .arg("reload")
        .args(args)
        .output()
        .expect("run wasmgate reload");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmgate_reload_asks_the_running_gateway_and_prints_the_outcome() {
    let admin = closed_port();
    let section = |listen: &str| {
        format!("[gateway]\nlisten = [\"{listen}\"]\nadmin = \"{admin}\"\nwatch = false\n")
    };
    let run = start(
        &format!("{}{}", section("127.0.0.1:0"), mock_route("a", "/a")),
        |_| {},
    );
    let config = run.config.to_str().expect("utf-8 path").to_owned();

    write(
        &run.config,
        &format!(
            "{}{}{}",
            section(&closed_port().to_string()),
            mock_route("a", "/a"),
            mock_route("b", "/b")
        ),
    );
    let (code, out, err) = tokio::task::block_in_place(|| reload_command(&["--config", &config]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("{config}: reloaded (2 routes, 0 plugins)")
    );
    assert!(
        err.contains("apply only after a restart: gateway.listen"),
        "{err}"
    );
    assert_eq!(
        get(format!("http://{}/b", run.http)).await,
        (200, "b".into())
    );

    // A problem only the gateway finds (a plugin file that is not there): every line, exit 1.
    write(
        &run.config,
        &format!(
            "{}{}[[routes.plugins]]\nname = \"missing\"\n",
            section("127.0.0.1:0"),
            mock_route("a", "/a")
        ),
    );
    let admin_flag = run.admin.to_string();
    let (code, _, err) = tokio::task::block_in_place(|| {
        reload_command(&["--config", &config, "--admin", &admin_flag])
    });
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("routes[0].plugins[0]: route \"a\": plugin \"missing\""),
        "{err}"
    );
    assert!(
        err.contains("still serves its previous configuration"),
        "{err}"
    );
    assert_eq!(
        get(format!("http://{}/b", run.http)).await,
        (200, "b".into())
    );
}

#[test]
fn wasmgate_reload_says_what_is_missing_without_an_admin_api() {
    let dir = workdir();
    let config = dir.path().join("gateway.toml");
    write(&config, &mock_route("a", "/a"));
    let path = config.to_str().expect("utf-8 path");
    let (code, _, err) = reload_command(&["--config", path]);
    assert_eq!(code, Some(1));
    assert!(err.contains("gateway.admin is not set"), "{err}");
    let (code, _, err) = reload_command(&["--config", path, "--admin", &closed_port().to_string()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach the admin API at"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let base = format!(
        "{}{}",
        gateway_section("watch = false"),
        mock_route("a", "/a")
    );
    let run = start(&base, |_| {});
    write(&run.config, &format!("{base}{}", mock_route("b", "/b")));
    assert_eq!(
        get(format!("http://{}/b", run.http)).await.0,
        404,
        "not watched"
    );
    let seen = run.gw.log_len();
    run.gw.signal("HUP").expect("signal");
    let gw = &run.gw;
    tokio::task::block_in_place(|| gw.wait_for_log("reloaded", seen, Duration::from_secs(5)))
        .expect("reloaded");
    assert_eq!(
        get(format!("http://{}/b", run.http)).await,
        (200, "b".into())
    );
}

fn tagged_route(up: SocketAddr, value: &str) -> String {
    format!(
        r#"
        [upstreams.echo]
        targets = ["{up}"]
        [[routes]]
        name = "tagged"
        upstream = "echo"
        [[routes.plugins]]
        name = "tagger"
        config = {{ header = "x-tag", value = "{value}" }}
        "#
    )
}

fn with_tagger(dir: &Path) {
    std::fs::create_dir(dir.join("plugins")).expect("mkdir");
    std::fs::copy(TAGGER, dir.join("plugins/tagger.wasm")).expect("copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_keep_alive_load_lose_no_request() {
    let up = echo_upstream("echo").await;
    let config_for = |v: &str| {
        format!(
            "{}{}",
            gateway_section("watch = false"),
            tagged_route(up, v)
        )
    };
    let run = start(&config_for("v0"), with_tagger);
    let url = format!("http://{}/load", run.http);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop, ok) = (url.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client, reused for every request.
            let c = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let body: Value = r.json().await.expect("json");
                        let tag = body["headers"]["x-tag"].as_str().unwrap_or("");
                        if tag.starts_with('v') {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!("untagged: {body}"));
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        }));
    }
    let admin = client();
    let started = Instant::now();
    for i in 1..=20 {
        write(&run.config, &config_for(&format!("v{i}")));
        let resp = admin
            .post(format!("http://{}/reload", run.admin))
            .send()
            .await
            .expect("reload");
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.expect("client task"));
    }
    let served = ok.load(Ordering::Relaxed);
    eprintln!(
        "{served} requests over {:?} and 20 reloads, {} failed",
        started.elapsed(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(served > 100, "only {served} requests");
    let (_, body) = get(format!("http://{}/after", run.http)).await;
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["headers"]["x-tag"], "v20", "the last reload serves");
    let metrics = get(format!("http://{}/metrics", run.admin)).await.1;
    assert!(
        metrics.contains(r#"wasmgate_config_reloads_total{result="success"} 20"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_api_reports_health_metrics_routes_plugins_and_config() {
    let up = echo_upstream("echo").await;
    let run = start(
        &format!("{}{}", gateway_section(""), tagged_route(up, "secret-ish")),
        with_tagger,
    );
    for path in ["/health", "/ready"] {
        assert_eq!(get(format!("http://{}{path}", run.admin)).await.0, 200);
    }
    assert_eq!(get(format!("http://{}/users/1", run.http)).await.0, 200);
    let missing = client()
        .get(format!("http://{}/x", run.http))
        .header("host", "unknown.example")
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), 200, "the route matches any host");

    let metrics = get(format!("http://{}/metrics", run.admin)).await.1;
    for needle in [
        r#"wasmgate_requests_total{route="tagged",method="GET",status="200"} 2"#,
        r#"wasmgate_request_duration_seconds_count{route="tagged"} 2"#,
        r#"wasmgate_plugin_duration_seconds_count{route="tagged",plugin="tagger",phase="request"} 2"#,
        r#"wasmgate_plugin_duration_seconds_count{route="tagged",plugin="tagger",phase="response"} 2"#,
        r#"wasmgate_plugin_failures_total{route="tagged",plugin="tagger",kind="trap"} 0"#,
        "wasmgate_connections_active",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    for needle in [
        format!(
            r#"wasmgate_upstream_requests_total{{upstream="echo",target="{up}",outcome="response"}} 2"#
        ),
        format!(r#"wasmgate_upstream_duration_seconds_count{{upstream="echo",target="{up}"}} 2"#),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }

    let routes = admin_json(run.admin, "/routes").await;
    assert_eq!(routes["routes"][0]["name"], "tagged");
    assert_eq!(routes["routes"][0]["upstream"]["name"], "echo");
    assert_eq!(routes["routes"][0]["plugins"][0], "tagger");

    let plugins = admin_json(run.admin, "/plugins").await;
    let p = &plugins["plugins"][0];
    assert_eq!(p["name"], "tagger");
    assert_eq!(p["route"], "tagged");
    assert_eq!(p["sha256"].as_str().map(str::len), Some(64));
    assert!(p["pooled_instances"].as_u64() >= Some(1), "{p}");
    assert_eq!(p["failures"]["trap"], 0);

    let config = admin_json(run.admin, "/config").await;
    assert_eq!(
        config["routes"][0]["plugins"][0]["config"]["header"],
        "x-tag"
    );
    assert!(
        config["file"]
            .as_str()
            .unwrap_or("")
            .ends_with("gateway.toml")
    );

    let wrong = client()
        .get(format!("http://{}/reload", run.admin))
        .send()
        .await
        .expect("send");
    assert_eq!(wrong.status(), 405);
}

#[tokio::test]
async fn config_redacts_api_keys_in_either_form_and_either_direction() {
    let route = |name: &str, config: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npaths = [\"/{name}\"]\nrespond = {{ body = \"ok\" }}\n\
             [[routes.plugins]]\nname = \"key-auth\"\nconfig = {config}\n"
        )
    };
    let text = format!(
        "{}{}{}",
        gateway_section(""),
        route(
            "new",
            r#"{ consumers = [{ name = "alice", keys = ["k-secret-1", "k-secret-2"] }] }"#
        ),
        // The legacy table written backwards is accepted: the API key is the table's key.
        route("reversed", r#"{ keys = { k-secret-3 = "bob" } }"#),
    );
    let run = start(&text, |dir| {
        std::fs::create_dir(dir.join("plugins")).expect("mkdir");
        std::fs::copy(env!("WASM_KEY_AUTH"), dir.join("plugins/key-auth.wasm")).expect("copy");
    });
    let config = get(format!("http://{}/config", run.admin)).await.1;
    for secret in ["k-secret-1", "k-secret-2", "k-secret-3"] {
        assert!(!config.contains(secret), "{secret} shown in\n{config}");
    }
    assert!(
        config.contains("\"alice\""),
        "consumer names stay: {config}"
    );
}

#[tokio::test]
async fn a_changed_plugin_file_is_recompiled_and_swapped_in() {
    let up = echo_upstream("echo").await;
    let run = start(
        &format!("{}{}", gateway_section(""), tagged_route(up, "one")),
        with_tagger,
    );
    let body: Value =
        serde_json::from_str(&get(format!("http://{}/x", run.http)).await.1).expect("json");
    assert_eq!(body["headers"]["x-tag"], "one");
    let before = admin_json(run.admin, "/plugins").await["plugins"][0]["sha256"].clone();

    // Another component under the same name: it accepts the config and adds no header.
    let plugins = run.config.parent().expect("dir").join("plugins");
    let tmp = plugins.join("next.tmp");
    std::fs::copy(MISBEHAVE, &tmp).expect("copy");
    std::fs::rename(&tmp, plugins.join("tagger.wasm")).expect("rename");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = admin_json(run.admin, "/plugins").await["plugins"][0]["sha256"].clone();
        if now != before {
            break;
        }
        assert!(Instant::now() < deadline, "plugin not swapped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body: Value =
        serde_json::from_str(&get(format!("http://{}/x", run.http)).await.1).expect("json");
    assert!(body["headers"].get("x-tag").is_none(), "{body}");

    // The new plugin keeps a counter of its own through the host API.
    for _ in 0..3 {
        assert_eq!(get(format!("http://{}/metric", run.http)).await.0, 200);
    }
    let metrics = get(format!("http://{}/metrics", run.admin)).await.1;
    assert!(
        metrics.contains(
            r#"wasmgate_plugin_counter_total{route="tagged",plugin="tagger",name="counted"} 6"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("Not A Valid Name"), "{metrics}");
    // Logged once per binding of the entry, not per call (three calls here). Under load the
    // watcher may see the rename as two changes 250 ms apart, and each reload binds anew. The
    // log is read from the process's stderr by a thread: wait for the line, not just read.
    eventually(Duration::from_secs(5), "the invalid name is logged", || {
        run.gw.log_text().contains("plugin counter ignored")
    })
    .await;
    let log = run.gw.log_text();
    let logged = log.matches("plugin counter ignored").count();
    let reloads = log.matches("reloading").count();
    assert!(
        logged >= 1 && logged <= reloads && logged < 3,
        "an invalid name is logged once per binding: {logged} times after {reloads} reloads\n{log}"
    );
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request() {
    let up = echo_upstream("echo").await;
    let run = start(
        &format!("{}{}", gateway_section(""), tagged_route(up, "v")),
        with_tagger,
    );
    let resp = client()
        .post(format!("http://{}/orders?x=1", run.http))
        .header("x-request-id", "req-42")
        .body("0123456789")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let sent = resp.bytes().await.expect("body").len() as u64;
    let rejected = raw_exchange(
        run.http,
        b"GET /nope%2fx HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("exchange");
    assert_eq!(raw_status(&rejected), Some(400));

    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<Value> = run
            .gw
            .stdout
            .lock()
            .expect("stdout")
            .iter()
            .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line = lines
        .iter()
        .find(|l| l["request_id"] == "req-42")
        .expect("a line for the request");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/orders");
    assert_eq!(line["route"], "tagged");
    assert_eq!(line["upstream"], up.to_string());
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 10);
    assert_eq!(line["bytes_out"], sent);
    assert_eq!(line["client"], "127.0.0.1");
    assert!(
        line["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("127.0.0.1:"))
    );
    assert!(line["duration_ms"].as_f64() > Some(0.0));
    assert!(line["plugin_ms"].as_f64() > Some(0.0));
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    // Rejected requests are logged too, without a route.
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == 400 && l["route"].is_null()),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_each_upstream_target_with_its_health() {
    let dead = closed_port();
    let alive = echo_upstream("alive").await;
    let run = start(
        &format!(
            "{}[upstreams.pool]\ntargets = [\"{dead}\", {{ address = \"{alive}\", weight = 2 }}]\n\
             balance = \"least_request\"\n\
             [[routes]]\nname = \"all\"\nupstream = \"pool\"\n",
            gateway_section("")
        ),
        |_| {},
    );
    let before = admin_json(run.admin, "/upstreams").await;
    assert_eq!(before["upstreams"][0]["name"], "pool");
    assert_eq!(before["upstreams"][0]["balance"], "least_request");
    assert_eq!(before["upstreams"][0]["targets"][0]["health"], "healthy");
    // Requests until the dead target is drawn once: refused, retried, ejected.
    for _ in 0..40 {
        assert_eq!(get(format!("http://{}/x", run.http)).await.0, 200);
        let now = admin_json(run.admin, "/upstreams").await;
        if now["upstreams"][0]["targets"][0]["health"] == "ejected" {
            let dead_target = &now["upstreams"][0]["targets"][0];
            assert_eq!(dead_target["address"], dead.to_string());
            assert_eq!(dead_target["ejections_in_row"], 1);
            let left = dead_target["ejected_for_ms"].as_u64().expect("ms");
            assert!(left > 0 && left <= 10_000, "{left}");
            let alive_target = &now["upstreams"][0]["targets"][1];
            assert_eq!(alive_target["health"], "healthy");
            assert_eq!(alive_target["weight"], 2);
            assert_eq!(alive_target["in_flight"], 0);
            assert!(alive_target["ejected_for_ms"].is_null());
            return;
        }
    }
    panic!("the dead target was never drawn in 40 requests");
}

#[tokio::test]
async fn admin_api_shows_each_upstream_s_breaker_limits_and_what_counts_against_them() {
    let (slow, mut arrived) = holding_upstream(Duration::from_secs(2)).await;
    let idle = echo_upstream("idle").await;
    let run = start(
        &format!(
            "{}[upstreams.limited]\ntargets = [\"{slow}\"]\n\
             max_connections = 1\nmax_pending = 5\nmax_requests = 10\n\
             [upstreams.open]\ntargets = [\"{idle}\"]\n\
             [[routes]]\nname = \"limited\"\npaths = [\"/limited\"]\nupstream = \"limited\"\n\
             [[routes]]\nname = \"open\"\nupstream = \"open\"\n",
            gateway_section("")
        ),
        |_| {},
    );
    let breaker = |json: &Value, upstream: usize| json["upstreams"][upstream]["breaker"].clone();
    let before = admin_json(run.admin, "/upstreams").await;
    assert_eq!(
        breaker(&before, 0),
        serde_json::json!({
            "open_connections": 0, "max_connections": 1, "pending": 0, "max_pending": 5,
            "in_flight": 0, "max_requests": 10,
        })
    );
    assert_eq!(
        breaker(&before, 1),
        serde_json::json!({
            "open_connections": null, "max_connections": null, "pending": 0,
            "max_pending": null, "in_flight": 0, "max_requests": null,
        })
    );
    // One request holds the one connection, a second waits for it.
    let url = format!("http://{}/limited", run.http);
    let held = tokio::spawn(get(url.clone()));
    arrived
        .recv()
        .await
        .expect("the first request reached the target");
    let waiting = tokio::spawn(get(url));
    let started = Instant::now();
    let under_load = loop {
        let now = admin_json(run.admin, "/upstreams").await;
        if breaker(&now, 0)["pending"] == 1 {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the second request never waited: {now}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        breaker(&under_load, 0),
        serde_json::json!({
            "open_connections": 1, "max_connections": 1, "pending": 1, "max_pending": 5,
            "in_flight": 2, "max_requests": 10,
        })
    );
    assert_eq!(held.await.expect("task").0, 200);
    assert_eq!(waiting.await.expect("task").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_every_admin_endpoint_requires_it_and_a_reload_rotates_it() {
    let token = "0123456789abcdef-token";
    let run = start(
        &format!(
            "{}{}",
            gateway_section("admin_token_file = \"admin.token\"\nwatch = false"),
            mock_route("m", "/m")
        ),
        |dir| write(&dir.join("admin.token"), &format!("{token}\n")),
    );
    let c = client();
    for path in [
        "/health",
        "/ready",
        "/metrics",
        "/routes",
        "/config",
        "/upstreams",
    ] {
        let url = format!("http://{}{path}", run.admin);
        let refused = c.get(&url).send().await.expect("send");
        assert_eq!(refused.status(), 401, "{path} without a token");
        assert_eq!(
            refused.headers()["www-authenticate"],
            "Bearer realm=\"wasmgate admin\""
        );
        let wrong = c
            .get(&url)
            .bearer_auth("0123456789abcdef-wrong")
            .send()
            .await
            .expect("send");
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let allowed = c.get(&url).bearer_auth(token).send().await.expect("send");
        assert_eq!(allowed.status(), 200, "{path} with the token");
        if path == "/config" {
            let body = allowed.text().await.expect("body");
            assert!(
                !body.contains(token),
                "the token leaked into /config: {body}"
            );
        }
    }
    let refused = c
        .post(format!("http://{}/reload", run.admin))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 401);
    // `wasmgate reload` sends the token from the config file.
    let (code, out, err) = reload_command(&[
        "--config",
        run.config.to_str().expect("utf-8"),
        "--admin",
        &run.admin.to_string(),
    ]);
    assert_eq!(code, Some(0), "{out}{err}");

    // A reload rotates the token: asked for with the old one, after which only the new works.
    let rotated = "fedcba9876543210-rotated";
    write(&run.config.with_file_name("admin.token"), rotated);
    let reloaded = c
        .post(format!("http://{}/reload", run.admin))
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    assert_eq!(
        reloaded.status(),
        200,
        "{}",
        reloaded.text().await.unwrap_or_default()
    );
    let url = format!("http://{}/routes", run.admin);
    let old = c.get(&url).bearer_auth(token).send().await.expect("send");
    assert_eq!(old.status(), 401, "the old token after the rotation");
    let new = c.get(&url).bearer_auth(rotated).send().await.expect("send");
    assert_eq!(new.status(), 200, "the new token after the rotation");
}

#[test]
fn check_warns_of_an_admin_api_beyond_loopback_without_a_token() {
    let dir = workdir();
    let config = dir.path().join("gateway.toml");
    write(
        &config,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"0.0.0.0:9901\"\n{}",
            mock_route("m", "/m")
        ),
    );
    let (code, err) = check(wasmgate_bin!(), &config).expect("check");
    assert_eq!(code, 0, "a warning is not an error: {err}");
    assert!(
        err.contains("warning:") && err.contains("gateway.admin") && err.contains("admin_token"),
        "{err}"
    );
    write(
        &config,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"0.0.0.0:9901\"\nadmin_token = \"short\"\n{}",
            mock_route("m", "/m")
        ),
    );
    let (code, err) = check(wasmgate_bin!(), &config).expect("check");
    assert_eq!(code, 1);
    assert!(
        err.contains("gateway.admin_token: the admin token must be at least 16 characters"),
        "{err}"
    );
}
