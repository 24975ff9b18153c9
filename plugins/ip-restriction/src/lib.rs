//! Wasmgate plugin `ip-restriction`: lets a request through or answers `403` by the client's IP
//! address, the peer address the gateway saw on the connection.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "ip-restriction"
//! config = { allow = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"] }
//! ```
//!
//! Exactly one of `allow` (only these addresses pass) and `deny` (these addresses are refused)
//! is given. Entries are CIDR networks or bare addresses (a bare address is a `/32` or `/128`),
//! IPv4 and IPv6. A client connecting over IPv6 with an IPv4-mapped address (`::ffff:a.b.c.d`)
//! is matched as the IPv4 address `a.b.c.d`. See the crate's README for every key.

#![warn(missing_docs)]

mod rules;

use wasmgate_sdk::prelude::*;

use rules::Rules;

/// The `config` table of a route's `ip-restriction` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Only clients in these networks pass; every other client gets the rejection.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Clients in these networks get the rejection; every other client passes.
    #[serde(default)]
    pub deny: Option<Vec<String>>,
    /// The status of the rejection, 400–599. Default `403`.
    #[serde(default = "default_status")]
    pub status: u16,
    /// The `message` of the rejection's JSON body. Default `"IP address not allowed"`.
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_status() -> u16 {
    403
}

fn default_message() -> String {
    "IP address not allowed".to_owned()
}

/// Whether the listed networks are the ones let through or the ones refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Allow,
    Deny,
}

/// The plugin: the networks, aggregated and sorted once in [`Plugin::new`], and the ready-made
/// rejection.
#[derive(Debug)]
pub struct IpRestriction {
    mode: Mode,
    rules: Rules,
    rejection: Action,
}

impl Plugin for IpRestriction {
    type Config = Config;

    fn new(config: Config) -> Result<Self, ConfigError> {
        let (mode, key, entries) = match (config.allow, config.deny) {
            (Some(allow), None) => (Mode::Allow, "allow", allow),
            (None, Some(deny)) => (Mode::Deny, "deny", deny),
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "give either `allow` or `deny`, not both: with `allow`, every address not \
                     listed is refused already",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "missing `allow` or `deny`: list the networks to let through \
                     (allow = [\"10.0.0.0/8\"]) or to refuse (deny = [\"192.0.2.0/24\"])",
                ));
            }
        };
        if entries.is_empty() {
            return Err(ConfigError::new(format!(
                "`{key}` is empty: list at least one address or CIDR network"
            )));
        }
        let rules = Rules::parse(key, &entries)?;
        if !(400..=599).contains(&config.status) {
            return Err(ConfigError::new(format!(
                "status: {} is not an error status (400-599)",
                config.status
            )));
        }
        let rejection = Action::reject(config.status, "forbidden", config.message);
        Ok(Self {
            mode,
            rules,
            rejection,
        })
    }

    fn on_request(&self, req: &mut Request<'_>, _ctx: &Context) -> Result<Action, Error> {
        let listed = self.rules.contains(req.client_ip());
        let allowed = match self.mode {
            Mode::Allow => listed,
            Mode::Deny => !listed,
        };
        Ok(if allowed {
            Action::Continue
        } else {
            self.rejection.clone()
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST
    }

    /// The client address comes with the call.
    fn inputs(&self) -> Inputs {
        Inputs::new().client_ip()
    }
}

wasmgate_sdk::export!(IpRestriction);

#[cfg(test)]
mod tests {
    use super::*;
    use wasmgate_sdk::testing;

    fn plugin(config: &str) -> IpRestriction {
        testing::instance::<IpRestriction>(config).expect("valid config")
    }

    fn config_error(config: &str) -> String {
        testing::instance::<IpRestriction>(config)
            .expect_err("refused")
            .message()
            .to_owned()
    }

    fn status_for(plugin: &IpRestriction, ip: &str) -> Option<u16> {
        let mut req = Request::builder().uri("/x").client_ip(ip).build();
        let action = plugin.on_request(&mut req, &Context::new()).expect("ok");
        action.reply().map(|r| r.status())
    }

    #[test]
    fn allow_lets_listed_ipv4_clients_through_and_refuses_others() {
        let p = plugin(r#"{"allow": ["10.0.0.0/8", "192.0.2.7"]}"#);
        assert_eq!(status_for(&p, "10.1.2.3"), None);
        assert_eq!(status_for(&p, "192.0.2.7"), None);
        assert_eq!(status_for(&p, "192.0.2.8"), Some(403));
        assert_eq!(status_for(&p, "11.0.0.1"), Some(403));
    }

    #[test]
    fn deny_refuses_listed_clients_and_lets_others_through() {
        let p = plugin(r#"{"deny": ["127.0.0.1", "2001:db8::/32"]}"#);
        assert_eq!(status_for(&p, "127.0.0.1"), Some(403));
        assert_eq!(status_for(&p, "2001:db8:1::5"), Some(403));
        assert_eq!(status_for(&p, "127.0.0.2"), None);
        assert_eq!(status_for(&p, "2001:db9::1"), None);
    }

    #[test]
    fn ipv6_networks_and_bare_addresses_match() {
        let p = plugin(r#"{"allow": ["::1", "fd00::/8"]}"#);
        assert_eq!(status_for(&p, "::1"), None);
        assert_eq!(status_for(&p, "fd12:3456::1"), None);
        assert_eq!(status_for(&p, "::2"), Some(403));
        assert_eq!(status_for(&p, "fe80::1"), Some(403));
        assert_eq!(status_for(&p, "127.0.0.1"), Some(403), "IPv4 is not ::1");
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_rules() {
        let p = plugin(r#"{"allow": ["203.0.113.0/24"]}"#);
        assert_eq!(status_for(&p, "::ffff:203.0.113.9"), None);
        assert_eq!(status_for(&p, "::ffff:198.51.100.1"), Some(403));

        let p = plugin(r#"{"deny": ["127.0.0.1"]}"#);
        assert_eq!(status_for(&p, "::ffff:127.0.0.1"), Some(403));
    }

    #[test]
    fn ipv4_mapped_rules_match_ipv4_clients() {
        let p = plugin(r#"{"deny": ["::ffff:10.0.0.0/104"]}"#);
        assert_eq!(status_for(&p, "10.9.9.9"), Some(403));
        assert_eq!(status_for(&p, "11.0.0.1"), None);
    }

    #[test]
    fn overlapping_and_adjacent_networks_all_match() {
        let p = plugin(
            r#"{"allow": ["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.4", "0.0.0.0/32"]}"#,
        );
        for ip in [
            "10.0.0.0",
            "10.0.0.255",
            "10.0.1.1",
            "10.0.1.255",
            "10.0.3.4",
            "0.0.0.0",
        ] {
            assert_eq!(status_for(&p, ip), None, "{ip}");
        }
        for ip in [
            "10.0.2.0",
            "10.0.3.3",
            "10.0.3.5",
            "9.255.255.255",
            "0.0.0.1",
        ] {
            assert_eq!(status_for(&p, ip), Some(403), "{ip}");
        }
    }

    #[test]
    fn host_bits_in_a_network_are_ignored() {
        let p = plugin(r#"{"allow": ["10.1.2.3/8"]}"#);
        assert_eq!(status_for(&p, "10.200.0.1"), None);
    }

    #[test]
    fn rejection_is_a_json_403_by_default() {
        let p = plugin(r#"{"deny": ["0.0.0.0/0", "::/0"]}"#);
        let mut req = Request::builder().client_ip("198.51.100.4").build();
        let action = p.on_request(&mut req, &Context::new()).expect("ok");
        let reply = action.reply().expect("an answer");
        assert_eq!(reply.status(), 403);
        assert!(
            reply.error().is_some(),
            "a rejection in the gateway's error format"
        );
        let body: serde_json::Value = serde_json::from_slice(reply.body()).expect("json");
        assert_eq!(body["error"], "forbidden");
        assert_eq!(body["message"], "IP address not allowed");
    }

    #[test]
    fn status_and_message_are_configurable() {
        let p = plugin(r#"{"deny": ["::/0"], "status": 404, "message": "no \"such\" thing"}"#);
        let mut req = Request::builder().client_ip("2001:db8::1").build();
        let action = p.on_request(&mut req, &Context::new()).expect("ok");
        let reply = action.reply().expect("an answer");
        assert_eq!(reply.status(), 404);
        let body: serde_json::Value = serde_json::from_slice(reply.body()).expect("json");
        assert_eq!(body["message"], "no \"such\" thing");
    }

    #[test]
    fn refuses_both_or_neither_list() {
        let err = config_error(r#"{"allow": ["10.0.0.0/8"], "deny": ["10.0.0.1"]}"#);
        assert!(err.contains("either `allow` or `deny`, not both"), "{err}");
        let err = config_error("{}");
        assert!(err.contains("missing `allow` or `deny`"), "{err}");
        let err = config_error(r#"{"deny": []}"#);
        assert!(err.contains("`deny` is empty"), "{err}");
    }

    #[test]
    fn refuses_a_bad_entry_naming_its_index_and_value() {
        let err = config_error(r#"{"allow": ["10.0.0.0/8", "10.0.0.300"]}"#);
        assert!(err.starts_with(r#"allow[1]: "10.0.0.300" is not"#), "{err}");
        let err = config_error(r#"{"deny": ["10.0.0.0/33"]}"#);
        assert!(err.starts_with(r#"deny[0]: "10.0.0.0/33" is not"#), "{err}");
        let err = config_error(r#"{"deny": ["example.com"]}"#);
        assert!(err.contains("example.com"), "{err}");
        let err = config_error(r#"{"deny": [" 10.0.0.1"]}"#);
        assert!(err.contains(r#"" 10.0.0.1""#), "{err}");
    }

    #[test]
    fn refuses_a_non_error_status_and_unknown_keys() {
        let err = config_error(r#"{"deny": ["10.0.0.1"], "status": 200}"#);
        assert!(err.contains("status: 200"), "{err}");
        let err = config_error(r#"{"deny": ["10.0.0.1"], "whitelist": []}"#);
        assert!(err.contains("unknown field `whitelist`"), "{err}");
    }

    #[test]
    fn only_the_request_hook_is_called() {
        assert_eq!(plugin(r#"{"deny": ["10.0.0.1"]}"#).hooks(), Hooks::REQUEST);
    }
}
