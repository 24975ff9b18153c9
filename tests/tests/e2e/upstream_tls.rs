//! `https://` upstream targets: verified against a CA file, by name, with client certificates
//! (mutual TLS), HTTP/2 or HTTP/1.1 chosen by ALPN, and clear 502s when verification fails.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wasmgate_tests::*;

/// A gateway (one worker) in `dir` forwarding everything to the upstream `u` written as
/// `upstream` (the keys of `[upstreams.u]`).
async fn gateway(dir: tempfile::TempDir, upstream: &str) -> TestGateway {
    TestGateway::start_in(
        dir,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\
             [upstreams.u]\n{upstream}\n\
             [[routes]]\nname = \"all\"\nupstream = \"u\"\n"
        ),
    )
    .await
    .expect("start")
}

/// The keys of an upstream with one `https://` target at `up`, trusting `upstream.pem` for the
/// name `api.internal`, plus `extra` keys.
fn trusting(up: SocketAddr, extra: &str) -> String {
    format!(
        "targets = [\"https://{up}\"]\n{extra}\n\
         tls = {{ ca = \"upstream.pem\", server_name = \"api.internal\" }}"
    )
}

fn connections_opened(gw: &TestGateway) -> u64 {
    gw.metric("wasmgate_upstream_connections_total{upstream=\"u\"")
}

async fn get(gw: &TestGateway) -> (u16, Value) {
    let resp = client().get(gw.url("/x")).send().await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn upstream_cert(dir: &Path) -> TestCert {
    self_signed(dir, "upstream", &["api.internal"])
}

#[tokio::test]
async fn https_target_verified_by_its_ca_speaks_h2_chosen_by_alpn() {
    let dir = workdir();
    let cert = upstream_cert(dir.path());
    let up = tls_echo_upstream(&cert, &["h2", "http/1.1"], None).await;
    let gw = gateway(dir, &trusting(up, "")).await;
    for _ in 0..5 {
        let (status, body) = get(&gw).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], "HTTP/2.0");
        assert_eq!(body["path"], "/x");
    }
    assert_eq!(connections_opened(&gw), 1, "one multiplexed connection");
}

#[tokio::test]
async fn protocol_http1_keeps_an_https_target_on_http1() {
    let dir = workdir();
    let cert = upstream_cert(dir.path());
    let up = tls_echo_upstream(&cert, &["h2", "http/1.1"], None).await;
    let gw = gateway(dir, &trusting(up, "protocol = \"http1\"")).await;
    for _ in 0..3 {
        let (status, body) = get(&gw).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], "HTTP/1.1");
    }
    assert_eq!(connections_opened(&gw), 1, "kept alive");
}

#[tokio::test]
async fn a_target_that_only_speaks_http1_gets_http1_under_auto() {
    let dir = workdir();
    let cert = self_signed(dir.path(), "upstream", &["127.0.0.1"]);
    let up = tls_echo_upstream(&cert, &["http/1.1"], None).await;
    // No server_name: the target's IP address is checked against the certificate.
    let gw = gateway(
        dir,
        &format!("targets = [\"https://{up}\"]\ntls = {{ ca = \"upstream.pem\" }}"),
    )
    .await;
    let (status, body) = get(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "HTTP/1.1");
}

#[tokio::test]
async fn protocol_h2_refuses_a_target_that_does_not_offer_it() {
    let dir = workdir();
    let cert = upstream_cert(dir.path());
    let up = tls_echo_upstream(&cert, &["http/1.1"], None).await;
    let gw = gateway(dir, &trusting(up, "protocol = \"h2\"")).await;
    let (status, _) = get(&gw).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn certificates_that_do_not_verify_get_502() {
    let dir = workdir();
    let cert = upstream_cert(dir.path());
    self_signed(dir.path(), "other", &["api.internal"]);
    let up = tls_echo_upstream(&cert, &["http/1.1"], None).await;
    // Not signed by the system's roots. A machine without any system roots refuses the
    // config instead (an https upstream could never be verified there): also a pass.
    let copy = workdir();
    let system_roots = TestGateway::start_in(
        copy,
        &format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\
             [upstreams.u]\ntargets = [\"https://{up}\"]\ntls = {{ server_name = \"api.internal\" }}\n\
             [[routes]]\nname = \"all\"\nupstream = \"u\"\n"
        ),
    )
    .await;
    match system_roots {
        Ok(gw) => assert_eq!(get(&gw).await.0, 502, "not signed by a system root"),
        Err(e) => assert!(
            e.to_string().contains("no system root certificates found"),
            "{e:#}"
        ),
    }
    for tls in [
        // Signed by another CA.
        "{ ca = \"other.pem\", server_name = \"api.internal\" }",
        // For another name (the target's address, 127.0.0.1).
        "{ ca = \"upstream.pem\" }",
    ] {
        let copy = workdir();
        for f in ["upstream.pem", "other.pem"] {
            std::fs::copy(dir.path().join(f), copy.path().join(f)).expect("copy");
        }
        let gw = gateway(copy, &format!("targets = [\"https://{up}\"]\ntls = {tls}")).await;
        let (status, body) = get(&gw).await;
        assert_eq!(status, 502, "tls = {tls}");
        assert_eq!(body["error"], "upstream_unavailable");
        // The one retry (the upstream's only target, again) fails the same way.
        assert!(
            gw.metrics().contains("outcome=\"connect_error\"} 2"),
            "counted as a connect error: tls = {tls}"
        );
    }
}

#[tokio::test]
async fn verify_false_accepts_an_unverifiable_certificate() {
    let dir = workdir();
    let cert = upstream_cert(dir.path());
    let up = tls_echo_upstream(&cert, &["http/1.1"], None).await;
    let gw = gateway(
        dir,
        &format!("targets = [\"https://{up}\"]\ntls = {{ verify = false }}"),
    )
    .await;
    let (status, body) = get(&gw).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_for_mutual_tls() {
    let dir = workdir();
    let cert = upstream_cert(dir.path());
    let client_cert = self_signed(dir.path(), "gateway-client", &["gateway.internal"]);
    let up = tls_echo_upstream(&cert, &["h2", "http/1.1"], Some(&client_cert)).await;
    let with_cert = workdir();
    let without_cert = workdir();
    for copy in [&with_cert, &without_cert] {
        for f in ["upstream.pem", "gateway-client.pem", "gateway-client.key"] {
            std::fs::copy(dir.path().join(f), copy.path().join(f)).expect("copy");
        }
    }
    let gw = gateway(
        with_cert,
        &format!(
            "targets = [\"https://{up}\"]\n\
             tls = {{ ca = \"upstream.pem\", server_name = \"api.internal\", \
                      cert = \"gateway-client.pem\", key = \"gateway-client.key\" }}"
        ),
    )
    .await;
    let (status, body) = get(&gw).await;
    assert_eq!(status, 200, "{body}");

    let gw = gateway(without_cert, &trusting(up, "")).await;
    let (status, _) = get(&gw).await;
    assert_eq!(
        status, 502,
        "the upstream refuses a gateway without a certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_failure_is_logged_with_the_reason() {
    let dir = workdir();
    let cert = upstream_cert(dir.path());
    let up = tls_echo_upstream(&cert, &["http/1.1"], None).await;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
             [upstreams.u]\ntargets = [\"https://{up}\"]\ntls = {{ ca = \"upstream.pem\" }}\n\
             [[routes]]\nname = \"all\"\nupstream = \"u\"\n"
        ),
    )
    .expect("write config");
    let gw = GatewayProcess::start(wasmgate_bin!(), &config, 1).expect("start");
    let resp = client()
        .get(format!("http://{}/x", gw.addrs[0]))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 502);
    tokio::task::block_in_place(|| gw.wait_for_log("connect failed", 0, Duration::from_secs(5)))
        .expect("logged");
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("connect failed"))
        .expect("the line");
    assert!(line.contains(&format!("target {up}")), "{line}");
    assert!(
        line.contains("tls handshake with \"127.0.0.1\" failed"),
        "{line}"
    );
    assert!(line.contains("certificate"), "the reason: {line}");
}
