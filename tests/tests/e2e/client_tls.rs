//! Client certificates on the TLS listeners (`[gateway.tls] client_auth`): required or
//! optional, verified against a CA file, and the verified subject handed to plugins.

use std::time::Duration;

use serde_json::Value;
use wasmgate_tests::*;

const COPIER: &str = env!("WASM_COPIER");

/// A gateway with one TLS listener for `localhost`, asking for client certificates signed by
/// `client.pem` (`required` or not), and a route whose copier plugin puts the verified subject
/// (context key `tls.client_subject`) into `x-client-subject`.
async fn gateway(required: bool) -> (TestGateway, TestCert, TestCert) {
    let dir = workdir_with_plugins(&[("copier", COPIER)]);
    let server = self_signed(dir.path(), "server", &["localhost"]);
    let client = self_signed(dir.path(), "client", &["app.internal"]);
    let up = echo_upstream("up").await;
    let gw = TestGateway::start_in(
        dir,
        &format!(
            "[gateway]\nlisten = []\n\
             [gateway.tls]\nlisten = [\"127.0.0.1:0\"]\n\
             certificates = [{{ cert = \"server.pem\", key = \"server.key\" }}]\n\
             client_auth = {{ ca = \"client.pem\", required = {required} }}\n\
             [upstreams.u]\ntargets = [\"{up}\"]\n\
             [[routes]]\nname = \"all\"\nupstream = \"u\"\n\
             [[routes.plugins]]\nname = \"copier\"\n\
             config = {{ from = \"-\", to = \"x-client-subject\", from_context = \"tls.client_subject\" }}\n"
        ),
    )
    .await
    .expect("start");
    (gw, server, client)
}

/// A client trusting `server`, presenting `identity` when given.
fn client_with(server: &TestCert, identity: Option<&TestCert>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10))
        .add_root_certificate(
            reqwest::Certificate::from_pem(server.pem.as_bytes()).expect("server certificate"),
        );
    if let Some(id) = identity {
        let key = std::fs::read_to_string(&id.key).expect("client key");
        let pem = format!("{}{key}", id.pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

/// What the copier plugin put into `x-client-subject` for a request by `client`.
async fn subject_seen(client: &reqwest::Client, gw: &TestGateway) -> Value {
    let body: Value = client
        .get(url(gw))
        .send()
        .await
        .expect("served")
        .json()
        .await
        .expect("json");
    body["headers"]["x-client-subject"].clone()
}

fn url(gw: &TestGateway) -> String {
    let port = gw.https.expect("tls listener").port();
    format!("https://localhost:{port}/x")
}

#[tokio::test]
async fn a_required_client_certificate_is_verified_and_its_subject_reaches_plugins() {
    let (gw, server, client) = gateway(true).await;
    let subject = subject_seen(&client_with(&server, Some(&client)), &gw).await;
    assert!(
        subject.as_str().is_some_and(|s| s.starts_with("CN=")),
        "the plugin saw the subject: {subject}"
    );

    let refused = client_with(&server, None).get(url(&gw)).send().await;
    assert!(
        refused.is_err(),
        "no certificate, no connection: {refused:?}"
    );

    // A certificate from another authority is refused too.
    let dir = workdir();
    let stranger = self_signed(dir.path(), "stranger", &["app.internal"]);
    let refused = client_with(&server, Some(&stranger))
        .get(url(&gw))
        .send()
        .await;
    assert!(refused.is_err(), "an unknown issuer: {refused:?}");
}

#[tokio::test]
async fn an_optional_client_certificate_lets_clients_without_one_in() {
    let (gw, server, client) = gateway(false).await;
    let none = subject_seen(&client_with(&server, None), &gw).await;
    assert_eq!(none, "-", "no subject without a certificate");
    let subject = subject_seen(&client_with(&server, Some(&client)), &gw).await;
    assert!(
        subject.as_str().is_some_and(|s| s.starts_with("CN=")),
        "{subject}"
    );
}
