//! `#[derive(Deserialize)]` from the prelude: serde's attributes work through the SDK's own serde.
//! Nothing here names the `serde` crate (only `serde_json`, to parse), as in a plugin crate.

use wasmgate_sdk::prelude::*;

fn parse<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// Docs and other attributes are dropped from the mirror.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    /// The header to set.
    header_name: String,
    #[serde(default)]
    max_requests: u32,
    #[serde(default = "default_window")]
    window_secs: u64,
    burst: Option<u32>,
    upstream: Upstream,
    #[serde(default)]
    mode: Mode,
    #[serde(rename = "allow")]
    allowed: Vec<String>,
}

fn default_window() -> u64 {
    60
}

#[derive(Debug, PartialEq, Deserialize)]
struct Upstream {
    host: String,
    port: u16,
}

#[derive(Debug, PartialEq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Enforce,
    Observe,
    #[serde(rename = "off")]
    Disabled,
}

#[test]
fn full_config() {
    let config: Config = parse(
        r#"{
            "header-name": "x-team",
            "max-requests": 10,
            "window-secs": 1,
            "burst": 5,
            "upstream": {"host": "a", "port": 80},
            "mode": "observe",
            "allow": ["10.0.0.0/8"]
        }"#,
    )
    .unwrap();
    assert_eq!(
        config,
        Config {
            header_name: "x-team".into(),
            max_requests: 10,
            window_secs: 1,
            burst: Some(5),
            upstream: Upstream {
                host: "a".into(),
                port: 80
            },
            mode: Mode::Observe,
            allowed: vec!["10.0.0.0/8".into()],
        }
    );
}

#[test]
fn defaults_and_options() {
    let config: Config =
        parse(r#"{"header-name": "h", "upstream": {"host": "a", "port": 1}, "allow": []}"#)
            .unwrap();
    assert_eq!(config.max_requests, 0);
    assert_eq!(config.window_secs, 60);
    assert_eq!(config.burst, None);
    assert_eq!(config.mode, Mode::Enforce);
}

#[test]
fn unit_variants_with_renames() {
    assert_eq!(parse::<Mode>(r#""off""#).unwrap(), Mode::Disabled);
    assert_eq!(parse::<Mode>(r#""enforce""#).unwrap(), Mode::Enforce);
    let err = parse::<Mode>(r#""Enforce""#).unwrap_err();
    assert!(err.contains("unknown variant `Enforce`"), "{err}");
}

#[test]
fn deny_unknown_fields_names_the_field() {
    let err = parse::<Config>(
        r#"{"header-name": "h", "upstream": {"host": "a", "port": 1}, "allow": [], "header_name": "x"}"#,
    )
    .unwrap_err();
    assert!(err.contains("unknown field `header_name`"), "{err}");
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    let err =
        parse::<Config>(r#"{"upstream": {"host": "a", "port": 1}, "allow": []}"#).unwrap_err();
    assert!(err.contains("missing field `header-name`"), "{err}");
    let err = parse::<Upstream>(r#"{"host": "a", "port": "http"}"#).unwrap_err();
    assert!(
        err.contains("invalid type: string \"http\", expected u16"),
        "{err}"
    );
}

/// Container-level `#[serde(default)]` uses `Default` of the config type itself.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(default)]
struct Limits {
    per_minute: u32,
    per_hour: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_minute: 60,
            per_hour: 1000,
        }
    }
}

#[test]
fn container_default() {
    assert_eq!(
        parse::<Limits>(r#"{"per_hour": 5}"#).unwrap(),
        Limits {
            per_minute: 60,
            per_hour: 5
        }
    );
}

mod private_fields {
    use wasmgate_sdk::prelude::*;

    /// Private fields, in another module: the mirror lives next to the type.
    #[derive(Deserialize)]
    pub(crate) struct Secret {
        key: String,
    }

    impl Secret {
        pub(crate) fn key(&self) -> &str {
            &self.key
        }
    }
}

#[test]
fn private_fields_in_another_module() {
    let secret: private_fields::Secret = parse(r#"{"key": "k"}"#).unwrap();
    assert_eq!(secret.key(), "k");
}

#[derive(Debug, PartialEq, Deserialize)]
struct Pair(String, u8);

#[derive(Debug, PartialEq, Deserialize)]
struct Marker;

#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Auth {
    ApiKey { header: String },
    Basic { realm: Option<String> },
}

#[test]
fn tuple_unit_and_tagged_enums() {
    assert_eq!(parse::<Pair>(r#"["a", 1]"#).unwrap(), Pair("a".into(), 1));
    assert_eq!(parse::<Marker>("null").unwrap(), Marker);
    assert_eq!(
        parse::<Auth>(r#"{"type": "api_key", "header": "x-key"}"#).unwrap(),
        Auth::ApiKey {
            header: "x-key".into()
        }
    );
    assert_eq!(
        parse::<Auth>(r#"{"type": "basic"}"#).unwrap(),
        Auth::Basic { realm: None }
    );
}

#[test]
fn no_config() {
    assert_eq!(parse::<NoConfig>("{}").unwrap(), NoConfig);
    assert_eq!(parse::<NoConfig>("null").unwrap(), NoConfig);
    let err = parse::<NoConfig>(r#"{"limit": 1}"#).unwrap_err();
    assert!(err.contains("unknown key `limit`"), "{err}");
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(default = "Timeouts::strict")]
struct Timeouts {
    connect_ms: u32,
    #[cfg(any())]
    compiled_out: u32,
    read_ms: u32,
}

impl Timeouts {
    fn strict() -> Self {
        Self {
            connect_ms: 100,
            #[cfg(any())]
            compiled_out: 0,
            read_ms: 1_000,
        }
    }
}

#[derive(Debug, PartialEq, Default, Deserialize)]
#[serde(default)]
struct Window(u32, #[serde(default)] Option<String>);

#[test]
fn container_default_path_cfg_fields_and_tuple_default() {
    assert_eq!(
        parse::<Timeouts>(r#"{"read_ms": 5}"#).unwrap(),
        Timeouts {
            connect_ms: 100,
            read_ms: 5
        }
    );
    assert_eq!(parse::<Window>("[7]").unwrap(), Window(7, None));
}
