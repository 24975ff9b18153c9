//! DNS discovery: a target given by name becomes one target per address it resolves to, and
//! follows changes of the records without a reload.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use wasmgate_tests::*;

/// Echo upstreams on the same port of 127.0.0.2, 127.0.0.3 and 127.0.0.4 (loopback addresses
/// a name can resolve to), named after their last digit.
async fn three_addresses() -> u16 {
    let first = echo::spawn(SocketAddr::from(([127, 0, 0, 2], 0)), "2")
        .await
        .expect("bind");
    for last in [3, 4] {
        echo::spawn(
            SocketAddr::from(([127, 0, 0, last], first.port())),
            &last.to_string(),
        )
        .await
        .expect("bind the same port on another loopback address");
    }
    first.port()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A gateway resolving with `dns` (asking again every 50 ms), whose upstream `api` is the name
/// `api.test`, and a route `all` to it that sends the target's name as `Host`.
fn config(dns: &TestDns, port: u16) -> String {
    format!(
        "[gateway]\nlisten = [\"127.0.0.1:0\"]\n\
         [gateway.dns]\nnameservers = [\"{}\"]\nmin_ttl = \"50ms\"\n\
         [upstreams.api]\ntargets = [\"api.test:{port}\"]\n\
         [[routes]]\nname = \"all\"\nupstream = \"api\"\npreserve_host = false\n",
        dns.addr
    )
}

/// The servers that answered `n` requests.
async fn servers(gw: &TestGateway, n: usize) -> HashSet<String> {
    let c = client();
    let mut seen = HashSet::new();
    for _ in 0..n {
        let resp = c.get(gw.url("/")).send().await.expect("send");
        assert_eq!(resp.status(), 200);
        seen.insert(
            resp.headers()["x-echo-server"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
    }
    seen
}

fn addresses(gw: &TestGateway) -> Vec<(String, Option<String>)> {
    let mut targets: Vec<_> = gw.upstreams()[0]
        .targets
        .iter()
        .map(|t| (t.address.clone(), t.discovered_from.clone()))
        .collect();
    targets.sort();
    targets
}

#[tokio::test]
async fn every_address_of_a_name_is_a_target_and_record_changes_need_no_reload() {
    let port = three_addresses().await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip(2)]);
    let gw = TestGateway::start(&config(&dns, port))
        .await
        .expect("start");
    let name = format!("api.test:{port}");
    eventually(Duration::from_secs(5), "the name is resolved", || {
        addresses(&gw) == [(format!("127.0.0.2:{port}"), Some(name.clone()))]
    })
    .await;
    assert_eq!(servers(&gw, 4).await, HashSet::from(["2".to_owned()]));
    // The target is spoken to by its name: Host (and SNI over TLS) carry it, not the address.
    let echoed: serde_json::Value = client()
        .get(gw.url("/"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(echoed["headers"]["host"], name.as_str());

    dns.set("api.test", &[ip(2), ip(3), ip(4)]);
    eventually(
        Duration::from_secs(5),
        "the new records are targets",
        || addresses(&gw).len() == 3,
    )
    .await;
    assert_eq!(
        servers(&gw, 6).await,
        HashSet::from(["2".to_owned(), "3".to_owned(), "4".to_owned()]),
        "round-robin over every address"
    );
    assert!(
        gw.metrics()
            .contains(&format!("target=\"127.0.0.3:{port}\"")),
        "metrics name each discovered address"
    );

    dns.set("api.test", &[ip(4)]);
    eventually(
        Duration::from_secs(5),
        "a removed record is no target",
        || addresses(&gw) == [(format!("127.0.0.4:{port}"), Some(name.clone()))],
    )
    .await;
    assert_eq!(servers(&gw, 4).await, HashSet::from(["4".to_owned()]));
}

#[tokio::test]
async fn an_address_that_stays_keeps_its_connections_when_the_records_change() {
    let port = three_addresses().await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip(2)]);
    let gw = TestGateway::start(&config(&dns, port))
        .await
        .expect("start");
    eventually(Duration::from_secs(5), "the name is resolved", || {
        addresses(&gw).len() == 1 && addresses(&gw)[0].1.is_some()
    })
    .await;
    // One client connection, so one worker and its one kept-alive connection to the target.
    let c = client();
    let mut seen = HashSet::new();
    let mut ask = async |n: usize| {
        for _ in 0..n {
            seen.insert(served_by(&c.get(gw.url("/")).send().await.expect("send")));
        }
    };
    ask(3).await;
    let connections = format!(
        "wasmgate_upstream_connections_total{{upstream=\"api\",target=\"127.0.0.2:{port}\"}}"
    );
    let opened = gw.metric(&connections);
    assert!(opened >= 1);

    dns.set("api.test", &[ip(2), ip(3)]);
    eventually(Duration::from_secs(5), "the new record is a target", || {
        addresses(&gw).len() == 2
    })
    .await;
    ask(4).await;
    assert_eq!(seen, HashSet::from(["2".to_owned(), "3".to_owned()]));
    assert_eq!(
        gw.metric(&connections),
        opened,
        "the address that stayed opened a new connection"
    );
}

#[tokio::test]
async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
    let port = three_addresses().await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip(3)]);
    let gw = TestGateway::start(&config(&dns, port))
        .await
        .expect("start");
    eventually(Duration::from_secs(5), "the name is resolved", || {
        addresses(&gw)
            .first()
            .is_some_and(|(a, _)| a == &format!("127.0.0.3:{port}"))
    })
    .await;
    dns.remove("api.test");
    let asked = dns.queries();
    eventually(
        Duration::from_secs(5),
        "the gateway asked again, in vain",
        || dns.queries() >= asked + 2,
    )
    .await;
    assert_eq!(addresses(&gw).len(), 1);
    assert_eq!(servers(&gw, 3).await, HashSet::from(["3".to_owned()]));
}

#[tokio::test]
async fn a_reload_keeps_the_discovered_addresses() {
    let port = three_addresses().await;
    let dns = TestDns::start().await;
    dns.set("api.test", &[ip(2), ip(3)]);
    let toml = config(&dns, port);
    let gw = TestGateway::start(&toml).await.expect("start");
    eventually(Duration::from_secs(5), "the name is resolved", || {
        addresses(&gw).len() == 2
    })
    .await;
    // The DNS server goes away: only what was discovered before the reload can serve after it.
    drop(dns);
    gw.reload(&toml.replace("name = \"all\"", "name = \"renamed\""))
        .await
        .expect("reload");
    assert_eq!(
        addresses(&gw).len(),
        2,
        "the reload forgot the discovered addresses"
    );
    assert_eq!(
        servers(&gw, 4).await,
        HashSet::from(["2".to_owned(), "3".to_owned()])
    );
}
