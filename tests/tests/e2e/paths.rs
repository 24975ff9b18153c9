//! Canonical paths: no encoding of a path lets a request past the route meant to catch it and
//! reach the upstream as a path a lenient server reads as that route's. A probe set of encodings
//! of `/admin/secret` against a route answering `/admin` itself, everything else proxied.

use std::time::Duration;

use wasmgate_tests::*;

/// Encodings of `/admin/secret` (and of `/admin/secret` seen through a lenient server), as a
/// client may send them.
const PROBES: &[&str] = &[
    "/admin/secret",
    "//admin/secret",
    "///admin//secret",
    "/./admin/secret",
    "/admin/./secret",
    "/x/../admin/secret",
    "/x/y/../../admin/secret",
    "/../admin/secret",
    "/x/%2e%2e/admin/secret",
    "/x/%2E%2E/admin/secret",
    "/x/.%2e/admin/secret",
    "/x/%2e./admin/secret",
    "/%2e/admin/secret",
    "/x/..;/admin/secret",
    "/x/..;foo=bar/admin/secret",
    "/admin;x/secret",
    "/admin;/secret",
    "/admin;jsessionid=1/secret;x",
    "/%61dmin/secret",
    "/%41DMIN/secret",
    "/adm%69n/secret",
    "/%61%64%6d%69%6e/%73%65%63%72%65%74",
    "/admin%2fsecret",
    "/admin%2Fsecret",
    "/admin%5csecret",
    "/admin%5Csecret",
    "/x/..%2fadmin/secret",
    "/x/..%5cadmin/secret",
    "/x%2f..%2fadmin/secret",
    "/%2fadmin/secret",
    "/\\admin/secret",
    "/admin\\secret",
    "/x\\..\\admin\\secret",
    "/ADMIN/secret",
    "/Admin/secret",
    "/aDmIn/SECRET",
    "/%41dmin/secret",
    "/admin/secret/",
    "/admin/secret?x=1",
    "/admin/secret#x",
    "/admin%3bx/secret",
    "/admin%00/secret",
    "/%2561dmin/secret",
    "/admin/x/../secret",
    "/admin/%2e%2e/admin/secret",
    "/x/%2e%2e%2fadmin/secret",
    "/x;/../admin/secret",
];

/// What a lenient server makes of the path it received: `;` parameters dropped (before
/// decoding, as Tomcat does), every escape decoded, backslashes as slashes, slashes merged, dot
/// segments resolved, letters lowered (as a case-insensitive file system would).
fn lenient(path: &str) -> String {
    let without_parameters: Vec<&str> = path
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect();
    let decoded = percent_encoding::percent_decode_str(&without_parameters.join("/"))
        .decode_utf8_lossy()
        .replace('\\', "/")
        .to_ascii_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn config(up: std::net::SocketAddr, gateway: &str) -> String {
    format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n{gateway}\n\
         [upstreams.app]\ntargets = [\"{up}\"]\n\
         [[routes]]\nname = \"admin\"\npaths = [\"/admin\"]\ncase_sensitive = false\n\
         respond = {{ status = 403, body = \"forbidden\" }}\n\
         [[routes]]\nname = \"app\"\npaths = [\"/\"]\nupstream = \"app\"\n"
    )
}

/// Sends each probe; returns the probes that reached the upstream as `/admin/secret` by a
/// lenient reading, and how many were forwarded at all.
async fn bypasses(gw: &TestGateway) -> (Vec<String>, usize) {
    let mut bypasses = Vec::new();
    let mut forwarded = 0;
    for probe in PROBES {
        let request = format!("GET {probe} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        let response = raw_exchange(gw.http, request.as_bytes(), Duration::from_secs(5))
            .await
            .expect("exchange");
        match raw_status(&response) {
            Some(200) => {
                forwarded += 1;
                let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
                let echoed: serde_json::Value = serde_json::from_str(body.trim())
                    .unwrap_or_else(|e| panic!("{probe}: {e}: {response}"));
                let path = echoed["path"].as_str().expect("path");
                if lenient(path) == "/admin/secret" {
                    bypasses.push(format!("{probe} reached the upstream as {path}"));
                }
            }
            Some(400 | 403 | 404) => {}
            other => panic!("{probe}: unexpected answer {other:?}: {response}"),
        }
    }
    (bypasses, forwarded)
}

#[tokio::test]
async fn no_encoding_of_a_path_bypasses_its_route() {
    let up = echo_upstream("app").await;
    for gateway in ["", "escaped_slashes = \"decode\""] {
        let gw = TestGateway::start(&config(up, gateway))
            .await
            .expect("start");
        let (bypasses, forwarded) = bypasses(&gw).await;
        assert!(
            bypasses.is_empty(),
            "{} of {} probes bypassed the admin route ({gateway}):\n{}",
            bypasses.len(),
            PROBES.len(),
            bypasses.join("\n")
        );
        // The probes that are not the admin path (double encoding, an encoded `;` or NUL)
        // still reach the upstream: the set does not pass by refusing everything.
        assert!(forwarded >= 3, "{forwarded} forwarded ({gateway})");
    }
}

#[tokio::test]
async fn routing_plugins_and_upstream_see_the_same_canonical_path() {
    let up = echo_upstream("app").await;
    let gw = TestGateway::start(&config(up, "")).await.expect("start");
    for (sent, seen) in [
        ("/a/%62/./c/../d?q=%2e", "/a/b/d"),
        ("//a///b/", "/a/b/"),
        ("/a;v=1/b", "/a;v=1/b"),
        ("/%7euser/%e2%82%ac", "/~user/%E2%82%AC"),
    ] {
        let request = format!("GET {sent} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        let response = raw_exchange(gw.http, request.as_bytes(), Duration::from_secs(5))
            .await
            .expect("exchange");
        assert_eq!(raw_status(&response), Some(200), "{sent}: {response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
        let echoed: serde_json::Value = serde_json::from_str(body.trim()).expect("json");
        assert_eq!(echoed["path"], seen, "{sent}");
    }
    // The query is not a path: it goes on as it came.
    let response = raw_exchange(
        gw.http,
        b"GET /a/../b?x=%2e%2e/y HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("exchange");
    assert!(response.contains(r#""query":"x=%2e%2e/y""#), "{response}");
}

#[tokio::test]
async fn escaped_slashes_kept_stay_escaped_for_routing_and_upstream() {
    let up = echo_upstream("app").await;
    let gw = TestGateway::start(&config(
        up,
        "escaped_slashes = \"keep\"\nmerge_slashes = false",
    ))
    .await
    .expect("start");
    for (sent, seen) in [("/files/a%2fb", "/files/a%2Fb"), ("//x//y", "//x//y")] {
        let request = format!("GET {sent} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        let response = raw_exchange(gw.http, request.as_bytes(), Duration::from_secs(5))
            .await
            .expect("exchange");
        assert_eq!(raw_status(&response), Some(200), "{sent}: {response}");
        assert!(
            response.contains(&format!("\"path\":\"{seen}\"")),
            "{sent}: {response}"
        );
    }
}
