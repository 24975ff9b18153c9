//! Finding the key in a query parameter, and the query without it.

/// What a query string holds under one parameter name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct QueryKey {
    /// The first value of the parameter, percent-decoded (`+` is a space), if present.
    pub(crate) value: Option<String>,
    /// The query without any occurrence of the parameter, with every other parameter exactly as
    /// the client wrote it (not re-encoded), or `None` when the parameter did not occur.
    pub(crate) without: Option<String>,
}

/// Looks for parameter `name` (compared after percent-decoding) in the raw query `query` (without
/// `?`).
pub(crate) fn find(query: &str, name: &str) -> QueryKey {
    let mut out = QueryKey::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut found = false;
    for pair in query.split('&') {
        // One pair at a time, so the others can be kept byte for byte.
        let decoded = form_urlencoded::parse(pair.as_bytes()).next();
        match decoded {
            Some((key, value)) if key == name => {
                found = true;
                if out.value.is_none() {
                    out.value = Some(value.into_owned());
                }
            }
            _ => kept.push(pair),
        }
    }
    if found {
        out.without = Some(kept.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_decoded_value_and_keeps_the_rest_byte_for_byte() {
        let q = find("a=1&apikey=k%2Dalice&b=%7Ex+y&c", "apikey");
        assert_eq!(q.value.as_deref(), Some("k-alice"));
        assert_eq!(q.without.as_deref(), Some("a=1&b=%7Ex+y&c"));
    }

    #[test]
    fn removes_every_occurrence_and_uses_the_first() {
        let q = find("apikey=one&x=1&apikey=two", "apikey");
        assert_eq!(q.value.as_deref(), Some("one"));
        assert_eq!(q.without.as_deref(), Some("x=1"));
    }

    #[test]
    fn an_encoded_parameter_name_matches() {
        let q = find("api%6Bey=k&z=", "apikey");
        assert_eq!(q.value.as_deref(), Some("k"));
        assert_eq!(q.without.as_deref(), Some("z="));
    }

    #[test]
    fn leaves_a_query_without_the_parameter_alone() {
        assert_eq!(find("apikeys=k&xapikey=k", "apikey"), QueryKey::default());
        assert_eq!(find("", "apikey"), QueryKey::default());
    }

    #[test]
    fn the_only_parameter_leaves_an_empty_query() {
        let q = find("apikey=", "apikey");
        assert_eq!(q.value.as_deref(), Some(""));
        assert_eq!(q.without.as_deref(), Some(""));
        let q = find("apikey", "apikey");
        assert_eq!(q.value.as_deref(), Some(""));
    }
}
