//! Header edits: names and values checked once, applied with as few host calls as the ABI
//! allows.

use std::collections::{BTreeMap, HashMap};

use wasmgate_sdk::{ConfigError, FixedEdits, HeaderError};

use crate::message::Message;

/// Headers whose framing meaning the gateway owns: editing them would corrupt the message.
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// The header lists of one section (`request` or `response`), as configured.
#[derive(Debug, Default)]
pub(crate) struct HeaderLists {
    pub(crate) remove: Vec<String>,
    pub(crate) rename: BTreeMap<String, String>,
    pub(crate) set: BTreeMap<String, String>,
    pub(crate) add: BTreeMap<String, String>,
}

/// Checked header edits: lowercase names, valid values, each name in one list only (so the
/// order in which the lists apply never changes the outcome).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderEdits {
    remove: Vec<String>,
    /// (from, to)
    renames: Vec<(String, String)>,
    set: Vec<(String, String)>,
    add: Vec<(String, String)>,
}

impl HeaderEdits {
    /// Checks the lists of `section` (`"request"` or `"response"`, for messages).
    pub(crate) fn new(section: &str, lists: HeaderLists) -> Result<Self, ConfigError> {
        let mut owner: HashMap<String, &'static str> = HashMap::new();
        let mut claim = |name: &str, list: &'static str| -> Result<String, ConfigError> {
            let name = header_name(section, list, name)?;
            if let Some(other) = owner.insert(name.clone(), list) {
                let message = if other == list {
                    format!("{section}.{list}: header {name:?} is listed twice")
                } else {
                    format!(
                        "{section}: header {name:?} is in both {other} and {list}; \
                         each header name may appear in one list only"
                    )
                };
                return Err(ConfigError::new(message));
            }
            Ok(name)
        };
        let remove = lists
            .remove
            .iter()
            .map(|name| claim(name, "remove_headers"))
            .collect::<Result<_, _>>()?;
        let renames = lists
            .rename
            .iter()
            .map(|(from, to)| Ok((claim(from, "rename_headers")?, claim(to, "rename_headers")?)))
            .collect::<Result<_, ConfigError>>()?;
        let mut valued = |list: &'static str, pairs: &BTreeMap<String, String>| {
            pairs
                .iter()
                .map(|(name, value)| {
                    let name = claim(name, list)?;
                    header_value(section, list, &name, value)?;
                    Ok((name, value.clone()))
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let set = valued("set_headers", &lists.set)?;
        let add = valued("add_headers", &lists.add)?;
        Ok(Self {
            remove,
            renames,
            set,
            add,
        })
    }

    /// The edits as fixed edits the gateway applies itself (`request` or response side of
    /// `fixed`), when they do not depend on the message: only a rename reads it.
    pub(crate) fn fixed(
        &self,
        fixed: FixedEdits,
        request: bool,
    ) -> Result<Option<FixedEdits>, HeaderError> {
        if !self.renames.is_empty() {
            return Ok(None);
        }
        let mut fixed = fixed;
        for name in &self.remove {
            fixed = if request {
                fixed.remove_request_header(name)
            } else {
                fixed.remove_response_header(name)
            };
        }
        for (name, value) in &self.set {
            fixed = if request {
                fixed.set_request_header(name, value)?
            } else {
                fixed.set_response_header(name, value)?
            };
        }
        for (name, value) in &self.add {
            fixed = if request {
                fixed.append_request_header(name, value)?
            } else {
                fixed.append_response_header(name, value)?
            };
        }
        Ok(Some(fixed))
    }

    /// Whether there is nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.renames.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Applies the edits: one read per rename, one batched edit for removals, renames and sets,
    /// and one append per added header (and per extra value of a renamed multi-valued header).
    pub(crate) fn apply(&self, message: &mut impl Message) -> Result<(), HeaderError> {
        let renamed: Vec<(&str, &str, Vec<String>)> = self
            .renames
            .iter()
            .map(|(from, to)| (from.as_str(), to.as_str(), message.header_all(from)))
            .collect();
        let mut set: Vec<(&str, &str)> = self
            .set
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let mut remove: Vec<&str> = self.remove.iter().map(String::as_str).collect();
        for (from, to, values) in &renamed {
            if let Some(first) = values.first() {
                remove.push(from);
                set.push((to, first));
            }
        }
        if !set.is_empty() || !remove.is_empty() {
            message.edit_headers(&set, &remove)?;
        }
        for (_, to, values) in &renamed {
            for value in values.iter().skip(1) {
                message.append_header(to, value)?;
            }
        }
        for (name, value) in &self.add {
            message.append_header(name, value)?;
        }
        Ok(())
    }
}

fn header_name(section: &str, list: &str, name: &str) -> Result<String, ConfigError> {
    let parsed = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        ConfigError::new(format!(
            "{section}.{list}: {name:?} is not a valid header name"
        ))
    })?;
    let name = parsed.as_str();
    if FRAMING.contains(&name) {
        return Err(ConfigError::new(format!(
            "{section}.{list}: {name:?} cannot be edited (the gateway sets the message's framing)"
        )));
    }
    Ok(name.to_owned())
}

fn header_value(section: &str, list: &str, name: &str, value: &str) -> Result<(), ConfigError> {
    http::HeaderValue::from_str(value).map_err(|_| {
        ConfigError::new(format!(
            "{section}.{list}.{name}: {value:?} is not a valid header value"
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use wasmgate_sdk::Request;

    use super::*;

    fn lists(
        remove: &[&str],
        rename: &[(&str, &str)],
        set: &[(&str, &str)],
        add: &[(&str, &str)],
    ) -> HeaderLists {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        HeaderLists {
            remove: remove.iter().map(|s| (*s).to_owned()).collect(),
            rename: map(rename),
            set: map(set),
            add: map(add),
        }
    }

    fn refused(lists: HeaderLists) -> String {
        HeaderEdits::new("request", lists)
            .expect_err("refused")
            .message()
            .to_owned()
    }

    #[test]
    fn applies_every_list_and_keeps_all_values_of_a_renamed_header() {
        let edits = HeaderEdits::new(
            "request",
            lists(
                &["X-Drop"],
                &[("x-old", "X-New")],
                &[("x-set", "s")],
                &[("x-add", "a")],
            ),
        )
        .expect("valid");
        let mut req = Request::builder()
            .header("x-drop", "1")
            .header("x-old", "o1")
            .header("x-old", "o2")
            .header("x-set", "before")
            .header("x-add", "first")
            .header("x-keep", "k")
            .build();
        edits.apply(&mut req).expect("applied");
        assert_eq!(req.header("x-drop"), None);
        assert_eq!(req.header("x-old"), None);
        assert_eq!(req.header_all("x-new"), ["o1", "o2"]);
        assert_eq!(req.header_all("x-set"), ["s"]);
        assert_eq!(req.header_all("x-add"), ["first", "a"]);
        assert_eq!(req.header("x-keep").as_deref(), Some("k"));
    }

    #[test]
    fn renaming_an_absent_header_changes_nothing() {
        let edits =
            HeaderEdits::new("request", lists(&[], &[("x-old", "x-new")], &[], &[])).unwrap();
        let mut req = Request::builder().header("x-new", "kept").build();
        edits.apply(&mut req).unwrap();
        assert_eq!(req.header_all("x-new"), ["kept"]);
    }

    #[test]
    fn refuses_a_name_in_two_lists_or_twice() {
        assert_eq!(
            refused(lists(&["x-a"], &[], &[("X-A", "1")], &[])),
            r#"request: header "x-a" is in both remove_headers and set_headers; each header name may appear in one list only"#
        );
        assert_eq!(
            refused(lists(&["x-a", "X-A"], &[], &[], &[])),
            r#"request.remove_headers: header "x-a" is listed twice"#
        );
        assert!(
            refused(lists(&[], &[("x-a", "x-b")], &[], &[("x-b", "1")]))
                .contains(r#"header "x-b" is in both rename_headers and add_headers"#)
        );
    }

    #[test]
    fn refuses_invalid_names_values_and_framing_headers() {
        assert_eq!(
            refused(lists(&["x a"], &[], &[], &[])),
            r#"request.remove_headers: "x a" is not a valid header name"#
        );
        assert_eq!(
            refused(lists(&[], &[], &[("x-a", "line\nbreak")], &[])),
            r#"request.set_headers.x-a: "line\nbreak" is not a valid header value"#
        );
        assert_eq!(
            refused(lists(&["Content-Length"], &[], &[], &[])),
            r#"request.remove_headers: "content-length" cannot be edited (the gateway sets the message's framing)"#
        );
    }
}
