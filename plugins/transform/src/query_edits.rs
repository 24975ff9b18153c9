//! `set_query` and `remove_query`: query parameter edits that leave untouched parameters exactly
//! as the client encoded them.

use std::collections::BTreeMap;

use wasmgate_sdk::ConfigError;

/// Checked query edits.
#[derive(Debug, Default)]
pub(crate) struct QueryEdits {
    /// Parameter names (decoded) dropped from the query: removed ones and set ones.
    dropped: Vec<String>,
    /// The set parameters, `application/x-www-form-urlencoded`, e.g. `page=1&q=a+b`.
    appended: String,
}

impl QueryEdits {
    pub(crate) fn new(
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Self, ConfigError> {
        if set.contains_key("") || remove.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "request.set_query / remove_query: a parameter name must not be empty",
            ));
        }
        if let Some(name) = remove.iter().find(|name| set.contains_key(*name)) {
            return Err(ConfigError::new(format!(
                "request: query parameter {name:?} is in both set_query and remove_query"
            )));
        }
        let appended = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(set)
            .finish();
        Ok(Self {
            dropped: remove.iter().chain(set.keys()).cloned().collect(),
            appended,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.dropped.is_empty()
    }

    /// The edited query (without `?`; empty for none), or `None` when nothing changes.
    ///
    /// Every parameter named in `remove_query` or `set_query` is dropped (all of its
    /// occurrences, whatever the encoding of its name); the set ones are appended at the end.
    pub(crate) fn apply(&self, query: Option<&str>) -> Option<String> {
        let mut changed = !self.appended.is_empty();
        let mut out = String::with_capacity(query.map_or(0, str::len) + self.appended.len() + 1);
        for piece in query.unwrap_or_default().split('&') {
            let name = form_urlencoded::parse(piece.as_bytes())
                .next()
                .map(|(name, _)| name);
            let Some(name) = name else {
                // An empty piece ("a=1&&b=2") carries no parameter.
                continue;
            };
            if self.dropped.iter().any(|dropped| *dropped == name) {
                changed = true;
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(piece);
        }
        if !changed {
            return None;
        }
        if !self.appended.is_empty() {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&self.appended);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn edits(set: &[(&str, &str)], remove: &[&str]) -> QueryEdits {
        let set = set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let remove: Vec<String> = remove.iter().map(|s| (*s).to_owned()).collect();
        QueryEdits::new(&set, &remove).expect("valid")
    }

    #[test]
    fn sets_and_removes_keeping_other_parameters_byte_for_byte() {
        let e = edits(&[("page", "1"), ("q", "a b&c")], &["debug"]);
        assert_eq!(
            e.apply(Some("x=%7E%20y&debug=1&page=9&z")).as_deref(),
            Some("x=%7E%20y&z&page=1&q=a+b%26c")
        );
        assert_eq!(e.apply(None).as_deref(), Some("page=1&q=a+b%26c"));
    }

    #[test]
    fn removes_every_occurrence_whatever_the_encoding_of_the_name() {
        let e = edits(&[], &["api key"]);
        assert_eq!(
            e.apply(Some("api+key=1&a=2&api%20key=3")).as_deref(),
            Some("a=2")
        );
        assert_eq!(e.apply(Some("api+key=1")).as_deref(), Some(""));
    }

    #[test]
    fn leaves_the_query_alone_when_nothing_matches() {
        let e = edits(&[], &["debug"]);
        assert_eq!(e.apply(Some("a=1&&b")), None);
        assert_eq!(e.apply(None), None);
    }

    #[test]
    fn refuses_a_parameter_in_both_lists_or_an_empty_name() {
        let set = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
        let err = QueryEdits::new(&set, &["a".to_owned()]).unwrap_err();
        assert_eq!(
            err.message(),
            r#"request: query parameter "a" is in both set_query and remove_query"#
        );
        assert!(QueryEdits::new(&BTreeMap::new(), &[String::new()]).is_err());
    }

    proptest! {
        /// Whatever the query, the result decodes to the kept parameters, in order, followed by
        /// the set ones; no removed or replaced name survives.
        #[test]
        fn result_decodes_to_kept_then_set_parameters(
            pairs in prop::collection::vec(("[a-c ]{0,2}", "[a-z0-9 &=%+]{0,3}"), 0..6),
        ) {
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish();
            let e = edits(&[("b", "new value")], &["a"]);
            let out = e.apply(Some(&query)).expect("set_query always changes the query");
            let decoded: Vec<(String, String)> = form_urlencoded::parse(out.as_bytes())
                .into_owned()
                .collect();
            let mut expected: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .filter(|(k, _)| k != "a" && k != "b")
                .collect();
            expected.push(("b".to_owned(), "new value".to_owned()));
            prop_assert_eq!(decoded, expected);
        }
    }
}
