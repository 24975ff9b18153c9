//! The client's address behind trusted proxies: a load balancer in front of the gateway makes
//! every connection come from it, so the client is read from the header the balancer appends
//! to, walking it from the right through trusted hops only. An untrusted peer's header is kept
//! as data (and forwarded), never believed.

use std::net::IpAddr;

use forwarded_header_value::ForwardedHeaderValue;
use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;
use wasmgate_config::ClientAddressHeader;

use crate::forward::X_FORWARDED_FOR;

/// `gateway.trusted_proxies` and `client_address_header`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    networks: Vec<IpNet>,
    header: Option<ClientAddressHeader>,
}

impl TrustedProxies {
    pub(crate) fn new(networks: &[IpNet], header: ClientAddressHeader) -> Self {
        Self {
            networks: networks.to_vec(),
            header: (!networks.is_empty()).then_some(header),
        }
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request from `peer`: `peer` itself unless it is a trusted proxy; then
    /// the hops its header lists, from the right, up to the first one that is not trusted (or
    /// the leftmost, when all are).
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let Some(header) = self.header else {
            return peer;
        };
        if !self.trusts(peer) {
            return peer;
        }
        let hops = match header {
            ClientAddressHeader::XForwardedFor => x_forwarded_for(headers),
            ClientAddressHeader::Forwarded => forwarded(headers),
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            // A hop that is not an address (`unknown`, an obfuscated name) ends the walk.
            let Some(hop) = hop else { break };
            client = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        client
    }
}

/// The fields' values joined in order, as one list (RFC 9110 §5.3).
fn joined(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let texts: Option<Vec<&str>> = values.map(|v| v.to_str().ok()).collect();
    Some(texts?.join(","))
}

fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let Some(list) = joined(headers, &X_FORWARDED_FOR) else {
        return Vec::new();
    };
    list.split(',')
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .map(|hop| {
            hop.parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        })
        .collect()
}

fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let Some(list) = joined(headers, &FORWARDED) else {
        return Vec::new();
    };
    // A malformed Forwarded field is not believed at all.
    match ForwardedHeaderValue::from_forwarded(&list) {
        Ok(value) => value.iter().map(|s| s.forwarded_for_ip()).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn with(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, v.parse().expect("value"));
        }
        h
    }

    fn proxies(header: ClientAddressHeader) -> TrustedProxies {
        let nets: Vec<IpNet> = ["10.0.0.0/8", "192.168.1.7/32"]
            .iter()
            .map(|n| n.parse().expect("net"))
            .collect();
        TrustedProxies::new(&nets, header)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let t = proxies(ClientAddressHeader::XForwardedFor);
        let h = with("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(t.client(ip("203.0.113.9"), &h), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_hops_are_walked_from_the_right() {
        let t = proxies(ClientAddressHeader::XForwardedFor);
        // A client forging a hop at the left: the first untrusted hop from the right wins.
        let h = with("x-forwarded-for", &["6.6.6.6, 198.51.100.2", "10.1.1.1"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("198.51.100.2"));
        // Only trusted hops: the leftmost.
        let h = with("x-forwarded-for", &["10.2.2.2, 192.168.1.7"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.2.2.2"));
        // No header: the peer.
        assert_eq!(t.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // Garbage ends the walk at the last address believed.
        let h = with("x-forwarded-for", &["1.1.1.1, garbage, 10.3.3.3"]);
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("10.3.3.3"));
        // IPv4-mapped IPv6 peers are trusted by their IPv4 network.
        assert_eq!(
            t.client(
                ip("::ffff:10.0.0.1"),
                &with("x-forwarded-for", &["2.2.2.2"])
            ),
            ip("2.2.2.2")
        );
    }

    #[test]
    fn forwarded_is_read_when_configured_and_only_then() {
        let t = proxies(ClientAddressHeader::Forwarded);
        let h = with(
            "forwarded",
            &["for=198.51.100.2;proto=https, for=\"[2001:db8::1]:4711\""],
        );
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("2001:db8::1"));
        let mut both = with("forwarded", &["for=198.51.100.2"]);
        both.append("x-forwarded-for", "6.6.6.6".parse().expect("value"));
        assert_eq!(t.client(ip("10.0.0.1"), &both), ip("198.51.100.2"));
        assert_eq!(
            proxies(ClientAddressHeader::XForwardedFor)
                .client(ip("10.0.0.1"), &with("forwarded", &["for=1.1.1.1"])),
            ip("10.0.0.1")
        );
        assert_eq!(
            t.client(ip("10.0.0.1"), &with("forwarded", &["for=unknown"])),
            ip("10.0.0.1")
        );
    }
}
