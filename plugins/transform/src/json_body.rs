//! `json_body = { set, remove }`: edits of a JSON object's top-level members.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use wasmgate_sdk::ConfigError;

/// Checked JSON body edits.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct JsonEdits {
    /// (key, key as a JSON string, value as JSON text), in key order.
    set: Vec<(String, String, String)>,
    remove: Vec<String>,
}

impl JsonEdits {
    /// Checks `set` and `remove` of `key` (`request.json_body` or `response.json_body`).
    pub(crate) fn new(
        key: &str,
        set: BTreeMap<String, serde_json::Value>,
        remove: Vec<String>,
    ) -> Result<Self, ConfigError> {
        if set.is_empty() && remove.is_empty() {
            return Err(ConfigError::new(format!(
                "{key}: give `set` or `remove` (or leave json_body out: it makes the gateway \
                 buffer bodies)"
            )));
        }
        if let Some(name) = remove.iter().find(|name| set.contains_key(*name)) {
            return Err(ConfigError::new(format!(
                "{key}: {name:?} is in both set and remove"
            )));
        }
        let set = set
            .into_iter()
            .map(|(name, value)| {
                let quoted = serde_json::Value::String(name.clone()).to_string();
                (name, quoted, value.to_string())
            })
            .collect();
        Ok(Self { set, remove })
    }

    /// The edited body, or `None` to leave it untouched: when it is not a JSON object (not JSON
    /// at all, an array, a scalar, invalid UTF-8, nested deeper than serde_json's limit) or
    /// when nothing in it changes.
    ///
    /// Members keep their order and untouched values are copied byte for byte (numbers keep
    /// their precision). A set key replaces the first member of that name in place, or is
    /// appended; removed keys drop every member of that name, as do later duplicates of a set
    /// key. Whitespace between members is not kept.
    pub(crate) fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        let Members(members) = serde_json::from_slice(body).ok()?;
        let mut changed = !self.set.is_empty();
        let mut written = vec![false; self.set.len()];
        let mut out = Vec::with_capacity(body.len() + 64);
        out.push(b'{');
        for (name, value) in &members {
            if self.remove.iter().any(|removed| removed == name) {
                changed = true;
                continue;
            }
            match self.set.iter().position(|(key, ..)| key == name) {
                Some(i) if written[i] => {}
                Some(i) => {
                    written[i] = true;
                    let (_, quoted, new_value) = &self.set[i];
                    member(&mut out, quoted.as_bytes(), new_value);
                }
                None => {
                    let quoted = serde_json::to_string(name).ok()?;
                    member(&mut out, quoted.as_bytes(), value.get());
                }
            }
        }
        for ((_, quoted, value), done) in self.set.iter().zip(written) {
            if !done {
                member(&mut out, quoted.as_bytes(), value);
            }
        }
        out.push(b'}');
        changed.then_some(out)
    }
}

/// Writes `"key":value` after the members already in `out` (which starts with `{`).
fn member(out: &mut Vec<u8>, quoted_key: &[u8], value: &str) {
    if out.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(quoted_key);
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

/// Whether `content_type` is JSON: `application/json` or any `type/subtype+json`, parameters
/// ignored, case-insensitive.
pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    (kind == "application" && subtype == "json")
        || (!kind.is_empty() && subtype.len() > "+json".len() && subtype.ends_with("+json"))
}

/// A JSON object's members in document order, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn edits(set: Value, remove: &[&str]) -> JsonEdits {
        let set = serde_json::from_value(set).expect("an object");
        JsonEdits::new(
            "request.json_body",
            set,
            remove.iter().map(|s| (*s).to_owned()).collect(),
        )
        .expect("valid")
    }

    fn text(bytes: Option<Vec<u8>>) -> Option<String> {
        bytes.map(|b| String::from_utf8(b).expect("utf-8"))
    }

    #[test]
    fn sets_in_place_appends_new_keys_and_removes_keeping_order_and_precision() {
        let e = edits(json!({ "b": { "x": [1, 2] }, "new": true }), &["secret"]);
        let body = br#"{ "a": 12345678901234567890123, "secret": "s", "b": 1, "c": 1.50 }"#;
        assert_eq!(
            text(e.apply(body)).as_deref(),
            Some(r#"{"a":12345678901234567890123,"b":{"x":[1,2]},"c":1.50,"new":true}"#)
        );
    }

    #[test]
    fn leaves_non_objects_and_unchanged_bodies_untouched() {
        let e = edits(json!({}), &["gone"]);
        for body in [
            &b"[1,2]"[..],
            b"\"str\"",
            b"not json",
            b"",
            b"{\"a\":1",
            b"\xff\xfe",
            br#"{"kept": 1}"#,
        ] {
            assert_eq!(e.apply(body), None, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn escapes_keys_and_drops_duplicates_of_set_and_removed_keys() {
        let e = edits(json!({ "k": 2 }), &["r"]);
        let body = br#"{"k":1,"q\"uote":"\u00e9","r":1,"k":3,"r":2}"#;
        assert_eq!(
            text(e.apply(body)).as_deref(),
            Some(r#"{"k":2,"q\"uote":"\u00e9"}"#)
        );
    }

    #[test]
    fn refuses_empty_sections_and_keys_in_both_lists() {
        let err = JsonEdits::new("response.json_body", BTreeMap::new(), vec![]).unwrap_err();
        assert!(
            err.message()
                .starts_with("response.json_body: give `set` or `remove`")
        );
        let set = BTreeMap::from([("a".to_owned(), json!(1))]);
        let err = JsonEdits::new("request.json_body", set, vec!["a".to_owned()]).unwrap_err();
        assert_eq!(
            err.message(),
            r#"request.json_body: "a" is in both set and remove"#
        );
    }

    #[test]
    fn recognises_json_media_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
            "application/vnd.api+json ; v=1",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonp",
            "application/x-json5",
            "+json",
            "json",
            "",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }

    proptest! {
        /// For any JSON object, the edited body parses to the same object with the edits
        /// applied.
        #[test]
        fn edited_body_equals_the_edited_value(
            object in prop::collection::btree_map("[a-d]", any::<i32>(), 0..5),
        ) {
            let body = serde_json::to_vec(&object).expect("json");
            let e = edits(json!({ "a": "set" }), &["b"]);
            let out = e.apply(&body).expect("set always changes the body");
            let got: Value = serde_json::from_slice(&out).expect("valid json");
            let mut expected = serde_json::to_value(&object).expect("value");
            let map = expected.as_object_mut().expect("object");
            map.remove("b");
            map.insert("a".to_owned(), json!("set"));
            prop_assert_eq!(got, expected);
        }
    }
}
