//! Discovery of targets given by a DNS name: every address the name resolves to becomes a
//! target, and the name is resolved again when its TTL runs out (within `gateway.dns`'s
//! `min_ttl` and `max_ttl`). A change swaps the upstream's target set in place, keeping the
//! health and the connections of the addresses that stay; no reload is involved. One task per
//! upstream resolves all of its names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;
use wasmgate_config::{Dns, DnsLookup};

use crate::upstream::{Blueprint, Endpoint, TargetSet};

/// The longest wait before a name that failed to resolve is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The gateway's resolver, shared by the upstreams of a configuration.
#[derive(Clone)]
pub(crate) struct Resolver {
    inner: TokioResolver,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `dns.nameservers`, or those of the system's configuration.
    pub(crate) fn new(dns: &Dns) -> Result<Self, String> {
        let mut builder = if dns.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
        } else {
            let servers = dns
                .nameservers
                .iter()
                .map(|addr| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut c| {
                            c.port = addr.port();
                            c
                        })
                        .collect();
                    NameServerConfig::new(addr.ip(), true, connections)
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        builder.options_mut().ip_strategy = match dns.lookup {
            DnsLookup::Ipv4ThenIpv6 => LookupIpStrategy::Ipv4thenIpv6,
            DnsLookup::Ipv6ThenIpv4 => LookupIpStrategy::Ipv6thenIpv4,
            DnsLookup::Ipv4AndIpv6 => LookupIpStrategy::Ipv4AndIpv6,
            DnsLookup::Ipv4 => LookupIpStrategy::Ipv4Only,
            DnsLookup::Ipv6 => LookupIpStrategy::Ipv6Only,
        };
        let inner = builder
            .build()
            .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
        Ok(Self {
            inner,
            min_ttl: dns.min_ttl,
            max_ttl: dns.max_ttl,
        })
    }

    /// The addresses of `host` (with `port`), sorted, and how long they hold.
    async fn resolve(&self, host: &str, port: u16) -> Result<(Vec<SocketAddr>, Duration), String> {
        let lookup = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| e.to_string())?;
        let mut addresses: Vec<SocketAddr> =
            lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        addresses.sort_unstable();
        addresses.dedup();
        if addresses.is_empty() {
            return Err("no address records".to_owned());
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now())
            .clamp(self.min_ttl, self.max_ttl);
        Ok((addresses, ttl))
    }
}

/// What is known of one name.
struct Name {
    host: String,
    port: u16,
    /// The addresses last resolved; empty until the first answer.
    addresses: Vec<SocketAddr>,
    due: Instant,
    failures: u32,
}

/// Resolves the upstream's names, each again when its answer expires, and swaps in a new target
/// set whenever an answer changes. A name that fails to resolve (or resolves to nothing) keeps
/// its last addresses — or, before its first answer, the system resolver at each connection —
/// and is tried again sooner, backing off from `min_ttl` to 30 s.
pub(crate) async fn run(
    blueprint: Arc<Blueprint>,
    set: Arc<ArcSwap<TargetSet>>,
    resolver: Resolver,
) {
    let now = Instant::now();
    let current = set.load_full();
    let mut names: BTreeMap<usize, Name> = blueprint
        .names()
        .into_iter()
        .map(|i| {
            let address = &blueprint.defined[i].address;
            let host = blueprint.defined[i].host();
            // A set kept across a reload starts from what was discovered before it.
            let addresses = current
                .endpoints()
                .iter()
                .filter(|e| e.defined == i)
                .filter_map(|e| e.address)
                .collect();
            let name = Name {
                host: host.to_owned(),
                port: address.port_u16().unwrap_or(80),
                addresses,
                due: now,
                failures: 0,
            };
            (i, name)
        })
        .collect();
    loop {
        let Some(due) = names.values().map(|n| n.due).min() else {
            return;
        };
        tokio::time::sleep_until(due).await;
        let mut changed = false;
        for name in names.values_mut().filter(|n| n.due <= Instant::now()) {
            match resolver.resolve(&name.host, name.port).await {
                Ok((addresses, ttl)) => {
                    name.failures = 0;
                    name.due = Instant::now() + ttl;
                    if addresses != name.addresses {
                        tracing::info!(
                            upstream = %blueprint.name,
                            name = %name.host,
                            ?addresses,
                            "targets discovered"
                        );
                        name.addresses = addresses;
                        changed = true;
                    }
                }
                Err(error) => {
                    name.failures += 1;
                    let wait = resolver
                        .min_ttl
                        .saturating_mul(1 << name.failures.min(16))
                        .min(MAX_RETRY.max(resolver.min_ttl));
                    name.due = Instant::now() + wait;
                    tracing::warn!(
                        upstream = %blueprint.name,
                        name = %name.host,
                        %error,
                        kept = ?name.addresses,
                        retry_in = ?wait,
                        "cannot resolve a target's name; its last addresses stay"
                    );
                }
            }
        }
        if changed {
            let mut endpoints = Vec::new();
            for defined in 0..blueprint.defined.len() {
                match names.get(&defined) {
                    Some(name) if !name.addresses.is_empty() => {
                        endpoints.extend(name.addresses.iter().map(|&a| Endpoint {
                            defined,
                            address: Some(a),
                        }));
                    }
                    _ => endpoints.push(Endpoint {
                        defined,
                        address: None,
                    }),
                }
            }
            let previous = set.load_full();
            set.store(Arc::new(blueprint.rebuild(&endpoints, &previous)));
        }
    }
}
