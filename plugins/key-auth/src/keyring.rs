//! The configured API keys and the constant-time lookup of a presented key.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use wasmgate_sdk::ConfigError;

/// Every consumer's keys, kept only as their SHA-256 digests.
///
/// A presented key is hashed and compared with every digest, without stopping at a match, so the
/// time taken depends neither on which key matched nor on how much of a key matched: comparing
/// fixed-length digests also hides the configured keys' lengths.
#[derive(Debug)]
pub(crate) struct Keyring {
    names: Vec<String>,
    keys: Vec<Key>,
}

#[derive(Debug)]
struct Key {
    /// Index into `names`.
    consumer: usize,
    digest: [u8; 32],
    /// Where the key was configured, e.g. `consumers[1].keys[0]`, for errors.
    label: String,
}

/// One consumer and its keys as configured, with the labels errors use for them.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The consumer's name.
    pub(crate) name: String,
    /// Where the name was configured, e.g. `consumers[1].name`.
    pub(crate) name_label: String,
    /// Its keys and where each was configured.
    pub(crate) keys: Vec<(String, String)>,
}

impl Keyring {
    /// Builds the keyring, refusing no consumers, a consumer without keys, empty keys, keys with
    /// leading or trailing whitespace, consumer names that cannot be sent in a header, a name
    /// given twice and a key given twice. Errors name where, never the key itself.
    pub(crate) fn new(entries: Vec<Entry>) -> Result<Self, ConfigError> {
        if entries.is_empty() {
            return Err(ConfigError::new(
                "no consumers: give at least one, e.g. \
                 consumers = [{ name = \"alice\", keys = [\"k-alice\"] }]",
            ));
        }
        let mut names: Vec<String> = Vec::with_capacity(entries.len());
        let mut labels: Vec<String> = Vec::with_capacity(entries.len());
        let mut keys: Vec<Key> = Vec::new();
        for entry in entries {
            check_consumer_name(&entry.name_label, &entry.name)?;
            if let Some(i) = names.iter().position(|n| *n == entry.name) {
                return Err(ConfigError::new(format!(
                    "{}: {:?} is also {}: consumer names must be unique",
                    entry.name_label, entry.name, labels[i]
                )));
            }
            if entry.keys.is_empty() {
                return Err(ConfigError::new(format!(
                    "{}: consumer {:?} has no keys: give it at least one",
                    entry.name_label, entry.name
                )));
            }
            let consumer = names.len();
            for (key, label) in entry.keys {
                // The key itself is never echoed: config errors end up in logs.
                if key.is_empty() {
                    return Err(ConfigError::new(format!("{label}: the key is empty")));
                }
                if key.trim() != key {
                    return Err(ConfigError::new(format!(
                        "{label}: the key starts or ends with whitespace, which HTTP strips from \
                         header values, so it could never match"
                    )));
                }
                let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
                if let Some(other) = keys.iter().find(|k| k.digest == digest) {
                    return Err(ConfigError::new(format!(
                        "{label}: the same key as {}: a key may belong to one consumer only, once",
                        other.label
                    )));
                }
                keys.push(Key {
                    consumer,
                    digest,
                    label,
                });
            }
            names.push(entry.name);
            labels.push(entry.name_label);
        }
        Ok(Self { names, keys })
    }

    /// The consumer whose key is `key`, in time independent of which one (if any) matches.
    pub(crate) fn find(&self, key: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        // Consumer index + 1 of the match, 0 for none; selected without a branch on the
        // comparison.
        let mut found = 0u64;
        for k in &self.keys {
            let index = u64::try_from(k.consumer).unwrap_or(u64::MAX - 1) + 1;
            found.conditional_assign(&index, k.digest.ct_eq(&digest));
        }
        let index = usize::try_from(found.checked_sub(1)?).ok()?;
        self.names.get(index).map(String::as_str)
    }
}

/// A consumer name goes into the upstream header and the request context: it must be a valid
/// header value, and blank or padded names are almost certainly mistakes.
fn check_consumer_name(label: &str, name: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() || name.trim() != name {
        return Err(ConfigError::new(format!(
            "{label}: consumer name {name:?} is blank or starts or ends with whitespace"
        )));
    }
    if http::HeaderValue::from_str(name).is_err() {
        return Err(ConfigError::new(format!(
            "{label}: consumer name {name:?} contains characters that cannot be sent in a header"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The legacy form's labels: `keys.NAME` for both the name and its one key.
    fn legacy(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|&(c, k)| Entry {
                name: c.to_owned(),
                name_label: "keys".to_owned(),
                keys: vec![(k.to_owned(), format!("keys.{c}"))],
            })
            .collect()
    }

    fn keyring(entries: Vec<Entry>) -> Result<Keyring, String> {
        Keyring::new(entries).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn finds_each_consumer_by_its_key_only() {
        let ring = keyring(legacy(&[
            ("alice", "k-alice"),
            ("bob", "k-bob"),
            ("carol", "k"),
        ]))
        .unwrap();
        assert_eq!(ring.find(b"k-alice"), Some("alice"));
        assert_eq!(ring.find(b"k-bob"), Some("bob"));
        assert_eq!(ring.find(b"k"), Some("carol"));
        for wrong in [&b"k-alic"[..], b"k-alicee", b"K-ALICE", b"", b"k-bob\0"] {
            assert_eq!(ring.find(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn every_key_of_a_consumer_finds_it() {
        let ring = keyring(vec![
            Entry {
                name: "alice".into(),
                name_label: "consumers[0].name".into(),
                keys: vec![("k-a".into(), "consumers[0].keys[0]".into())],
            },
            Entry {
                name: "bob".into(),
                name_label: "consumers[1].name".into(),
                keys: vec![
                    ("k-old".into(), "consumers[1].keys[0]".into()),
                    ("k-new".into(), "consumers[1].keys[1]".into()),
                ],
            },
        ])
        .unwrap();
        assert_eq!(ring.find(b"k-a"), Some("alice"));
        assert_eq!(ring.find(b"k-old"), Some("bob"));
        assert_eq!(ring.find(b"k-new"), Some("bob"));
        assert_eq!(ring.find(b"k-b"), None);
    }

    #[test]
    fn refuses_duplicate_keys_naming_both_places_but_not_the_key() {
        let err = keyring(legacy(&[("alice", "same-key"), ("bob", "same-key")]))
            .err()
            .unwrap();
        assert_eq!(
            err,
            "keys.bob: the same key as keys.alice: a key may belong to one consumer only, once"
        );
        assert!(!err.contains("same-key\""));
    }

    #[test]
    fn refuses_duplicate_names_and_consumers_without_keys() {
        let entry = |name: &str, i: usize, keys: &[&str]| Entry {
            name: name.into(),
            name_label: format!("consumers[{i}].name"),
            keys: keys
                .iter()
                .enumerate()
                .map(|(k, key)| ((*key).into(), format!("consumers[{i}].keys[{k}]")))
                .collect(),
        };
        let err = keyring(vec![entry("alice", 0, &["a"]), entry("alice", 1, &["b"])])
            .err()
            .unwrap();
        assert_eq!(
            err,
            "consumers[1].name: \"alice\" is also consumers[0].name: consumer names must be unique"
        );
        let err = keyring(vec![entry("alice", 0, &[])]).err().unwrap();
        assert_eq!(
            err,
            "consumers[0].name: consumer \"alice\" has no keys: give it at least one"
        );
    }

    #[test]
    fn refuses_empty_and_padded_keys_and_bad_consumer_names() {
        assert_eq!(
            keyring(legacy(&[("alice", "")])).err().unwrap(),
            "keys.alice: the key is empty"
        );
        assert!(
            keyring(legacy(&[("alice", " k")]))
                .err()
                .unwrap()
                .contains("whitespace")
        );
        assert!(
            keyring(legacy(&[("", "k")]))
                .err()
                .unwrap()
                .contains("blank")
        );
        assert!(
            keyring(legacy(&[("a\nb", "k")]))
                .err()
                .unwrap()
                .contains("cannot be sent")
        );
        assert!(
            keyring(Vec::new())
                .err()
                .unwrap()
                .starts_with("no consumers")
        );
    }
}
