//! The configured networks, as sorted disjoint lists searched in O(log n) per request.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use wasmgate_sdk::ConfigError;

/// The networks of `allow` or `deny`, per address family.
///
/// Both lists are aggregated (`ipnet`'s `aggregate`): overlapping and adjacent networks are
/// merged, so the result is sorted and disjoint, and the only network that can hold an address
/// is the last one starting at or below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Rules {
    /// Parses the entries of the config key `key`: CIDR networks or bare addresses.
    pub(crate) fn parse(key: &str, entries: &[String]) -> Result<Self, ConfigError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let net = parse_entry(entry).ok_or_else(|| {
                ConfigError::new(format!(
                    "{key}[{index}]: {entry:?} is not an IP address or CIDR network \
                     (e.g. \"192.0.2.7\", \"10.0.0.0/8\", \"2001:db8::/32\")"
                ))
            })?;
            match net {
                IpNet::V4(net) => v4.push(net),
                // Clients with IPv4-mapped addresses are matched as IPv4 (see `contains`), so an
                // IPv4-mapped network is an IPv4 rule written in IPv6 notation.
                IpNet::V6(net) => match mapped_ipv4(net) {
                    Some(net) => v4.push(net),
                    None => v6.push(net),
                },
            }
        }
        Ok(Self {
            v4: Ipv4Net::aggregate(&v4),
            v6: Ipv6Net::aggregate(&v6),
        })
    }

    /// Whether `ip` is in one of the networks. An IPv4-mapped IPv6 address is looked up as IPv4.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let after = self.v4.partition_point(|net| net.network() <= ip);
                after > 0 && self.v4[after - 1].contains(&ip)
            }
            IpAddr::V6(ip) => {
                let after = self.v6.partition_point(|net| net.network() <= ip);
                after > 0 && self.v6[after - 1].contains(&ip)
            }
        }
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address as a single-address network. Host bits set
/// in a network (`10.1.2.3/8`) are ignored, as nginx and Kong do.
fn parse_entry(entry: &str) -> Option<IpNet> {
    match entry.parse::<IpNet>() {
        Ok(net) => Some(net.trunc()),
        Err(_) => entry.parse::<IpAddr>().ok().map(IpNet::from),
    }
}

/// `::ffff:a.b.c.d/N` with N >= 96 as the IPv4 network `a.b.c.d/(N-96)`.
fn mapped_ipv4(net: Ipv6Net) -> Option<Ipv4Net> {
    const MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);
    if net.prefix_len() < 96 || !MAPPED.contains(&net) {
        return None;
    }
    let ip = net.network().to_ipv4_mapped()?;
    Ipv4Net::new(ip, net.prefix_len() - 96).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(entries: &[&str]) -> Rules {
        let entries: Vec<String> = entries.iter().map(|&e| e.to_owned()).collect();
        Rules::parse("allow", &entries).expect("valid")
    }

    #[test]
    fn merges_overlapping_networks_into_sorted_disjoint_lists() {
        let r = rules(&[
            "10.0.1.0/24",
            "10.0.0.0/24",
            "10.0.0.7",
            "2001:db8::/33",
            "2001:db8:8000::/33",
        ]);
        assert_eq!(r.v4, vec!["10.0.0.0/23".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(r.v6, vec!["2001:db8::/32".parse::<Ipv6Net>().unwrap()]);
    }

    #[test]
    fn mapped_networks_become_ipv4_rules() {
        let r = rules(&["::ffff:192.0.2.0/120", "::ffff:0:0/96"]);
        assert!(r.v6.is_empty());
        assert_eq!(r.v4, vec!["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]);
        // A wider network is an IPv6 rule: it covers more than the mapped range.
        let r = rules(&["::/64"]);
        assert_eq!(r.v4, vec![]);
        assert!(!r.contains("10.0.0.1".parse().unwrap()));
        assert!(r.contains("::1".parse().unwrap()));
    }

    #[test]
    fn edges_of_the_address_space_match() {
        let r = rules(&[
            "255.255.255.255",
            "0.0.0.0",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        assert!(r.contains("255.255.255.255".parse().unwrap()));
        assert!(r.contains("0.0.0.0".parse().unwrap()));
        assert!(!r.contains("255.255.255.254".parse().unwrap()));
        assert!(r.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()));
        assert!(!r.contains("::".parse().unwrap()));
    }
}
