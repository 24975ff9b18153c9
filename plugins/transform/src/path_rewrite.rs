//! `rewrite_path`: a regular expression on the path and its replacement.

use std::borrow::Cow;

use regex::Regex;
use wasmgate_sdk::ConfigError;

/// A compiled `rewrite_path = { pattern, replacement }`.
#[derive(Debug)]
pub(crate) struct PathRewrite {
    pattern: Regex,
    replacement: String,
}

impl PathRewrite {
    /// Compiles `pattern` and checks `replacement`: it must start with `/`, carry no query or
    /// fragment, and name only groups the pattern has (the regex crate would silently put
    /// nothing in place of an unknown group).
    pub(crate) fn new(pattern: &str, replacement: String) -> Result<Self, ConfigError> {
        let key = "request.rewrite_path";
        let compiled = Regex::new(pattern).map_err(|err| {
            ConfigError::new(format!(
                "{key}.pattern = {pattern:?}: invalid regular expression: {err}"
            ))
        })?;
        if !replacement.starts_with('/') {
            return Err(ConfigError::new(format!(
                "{key}.replacement = {replacement:?}: must start with '/'"
            )));
        }
        if replacement.contains(['?', '#']) {
            return Err(ConfigError::new(format!(
                "{key}.replacement = {replacement:?}: must be a path without '?' or '#' \
                 (edit the query with set_query and remove_query)"
            )));
        }
        if replacement.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(ConfigError::new(format!(
                "{key}.replacement = {replacement:?}: not a valid HTTP path (percent-encode \
                 spaces and other special characters)"
            )));
        }
        if let Some(group) = unknown_group(&compiled, &replacement) {
            return Err(ConfigError::new(format!(
                "{key}.replacement = {replacement:?}: refers to group {group:?}, which the \
                 pattern does not have (write ${{1}}x rather than $1x to follow a group with text)"
            )));
        }
        Ok(Self {
            pattern: compiled,
            replacement,
        })
    }

    /// The path with the first match of the pattern replaced; unchanged (borrowed) when the
    /// pattern does not match.
    pub(crate) fn apply<'p>(&self, path: &'p str) -> Cow<'p, str> {
        self.pattern.replace(path, self.replacement.as_str())
    }
}

/// The first group reference of `replacement` that `regex` lacks, in the regex crate's
/// replacement syntax: `$name` (the longest run of `[_0-9A-Za-z]`), `${name}`, `$$` for `$`; a
/// `$` that starts no reference is literal.
fn unknown_group<'r>(regex: &Regex, replacement: &'r str) -> Option<&'r str> {
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
            continue;
        }
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => continue,
            }
        } else {
            let end = rest
                .find(|c: char| c != '_' && !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        rest = after;
        if name.is_empty() {
            continue;
        }
        let known = match name.parse::<usize>() {
            Ok(index) => index < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            return Some(name);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(pattern: &str, replacement: &str) -> Result<PathRewrite, String> {
        PathRewrite::new(pattern, replacement.to_owned()).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn rewrites_with_groups_and_leaves_other_paths_alone() {
        let r = rewrite("^/old/(.*)$", "/new/$1").unwrap();
        assert_eq!(r.apply("/old/a/b"), "/new/a/b");
        assert!(matches!(r.apply("/other/x"), Cow::Borrowed("/other/x")));
        let named = rewrite("^/u/(?P<id>[0-9]+)$", "/users/${id}/profile").unwrap();
        assert_eq!(named.apply("/u/42"), "/users/42/profile");
        assert_eq!(rewrite("^/a", "/$$/b").unwrap().apply("/a"), "/$/b");
        let perl = rewrite(r"(?i)^/Items/(\d+)/(\w+)$", "/items/$2/$1").unwrap();
        assert_eq!(perl.apply("/ITEMS/42/name"), "/items/name/42");
    }

    #[test]
    fn refuses_an_invalid_pattern_naming_the_key_and_the_regex_error() {
        let err = rewrite("^/old/(.*$", "/new").unwrap_err();
        assert!(
            err.starts_with(
                r#"request.rewrite_path.pattern = "^/old/(.*$": invalid regular expression: "#
            ),
            "{err}"
        );
        assert!(err.contains("unclosed group"), "{err}");
    }

    #[test]
    fn refuses_replacements_that_cannot_make_a_path() {
        assert_eq!(
            rewrite("^/a", "new").unwrap_err(),
            r#"request.rewrite_path.replacement = "new": must start with '/'"#
        );
        assert!(
            rewrite("^/a", "/b?x=1")
                .unwrap_err()
                .contains("without '?' or '#'")
        );
        assert!(
            rewrite("^/a", "/b c")
                .unwrap_err()
                .contains("not a valid HTTP path")
        );
        let err = rewrite("^/old/(.*)$", "/new/$1x").unwrap_err();
        assert!(err.contains(r#"refers to group "1x""#), "{err}");
        assert!(rewrite("^/old/(.*)$", "/new/$2").is_err());
        assert!(rewrite("^/old/(.*)$", "/new/${name}").is_err());
        assert!(rewrite("^/old/(.*)$", "/new/${1}x").is_ok());
        assert!(rewrite("^/old/(.*)$", "/new/$0").is_ok());
    }
}
