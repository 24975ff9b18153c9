//! The configured API keys and the constant-time lookup of a presented key.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use wasmgate_sdk::ConfigError;

/// Every consumer's key, kept only as its SHA-256 digest.
///
/// A presented key is hashed and compared with every digest, without stopping at a match, so the
/// time taken depends neither on which key matched nor on how much of a key matched: comparing
/// fixed-length digests also hides the configured keys' lengths.
#[derive(Debug)]
pub(crate) struct Keyring {
    consumers: Vec<Consumer>,
}

#[derive(Debug)]
struct Consumer {
    name: String,
    digest: [u8; 32],
}

impl Keyring {
    /// Builds the keyring from `keys` (consumer → key), refusing empty keys, keys with leading or
    /// trailing whitespace, consumer names that cannot be sent in a header, and a key shared by
    /// two consumers.
    pub(crate) fn new(keys: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        if keys.is_empty() {
            return Err(ConfigError::new(
                "keys is empty: give at least one consumer and its key, \
                 e.g. keys = { alice = \"k-alice\" }",
            ));
        }
        let mut consumers: Vec<Consumer> = Vec::with_capacity(keys.len());
        for (name, key) in keys {
            check_consumer_name(&name)?;
            // The key itself is never echoed: config errors end up in logs.
            if key.is_empty() {
                return Err(ConfigError::new(format!("keys.{name}: the key is empty")));
            }
            if key.trim() != key {
                return Err(ConfigError::new(format!(
                    "keys.{name}: the key starts or ends with whitespace, which HTTP strips from \
                     header values, so it could never match"
                )));
            }
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            if let Some(other) = consumers.iter().find(|c| c.digest == digest) {
                return Err(ConfigError::new(format!(
                    "keys.{name}: the same key as keys.{}: each consumer needs its own key",
                    other.name
                )));
            }
            consumers.push(Consumer { name, digest });
        }
        Ok(Self { consumers })
    }

    /// The consumer whose key is `key`, in time independent of which one (if any) matches.
    pub(crate) fn find(&self, key: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        // Index + 1 of the match, 0 for none; selected without a branch on the comparison.
        let mut found = 0u64;
        for (index, consumer) in (1u64..).zip(&self.consumers) {
            found.conditional_assign(&index, consumer.digest.ct_eq(&digest));
        }
        let index = usize::try_from(found.checked_sub(1)?).ok()?;
        self.consumers.get(index).map(|c| c.name.as_str())
    }
}

/// A consumer name goes into the upstream header and the request context: it must be a valid
/// header value, and blank or padded names are almost certainly mistakes.
fn check_consumer_name(name: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() || name.trim() != name {
        return Err(ConfigError::new(format!(
            "keys: consumer name {name:?} is blank or starts or ends with whitespace"
        )));
    }
    if http::HeaderValue::from_str(name).is_err() {
        return Err(ConfigError::new(format!(
            "keys: consumer name {name:?} contains characters that cannot be sent in a header"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(pairs: &[(&str, &str)]) -> Result<Keyring, String> {
        let keys = pairs
            .iter()
            .map(|&(c, k)| (c.to_owned(), k.to_owned()))
            .collect();
        Keyring::new(keys).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn finds_each_consumer_by_its_key_only() {
        let ring = keyring(&[("alice", "k-alice"), ("bob", "k-bob"), ("carol", "k")]).unwrap();
        assert_eq!(ring.find(b"k-alice"), Some("alice"));
        assert_eq!(ring.find(b"k-bob"), Some("bob"));
        assert_eq!(ring.find(b"k"), Some("carol"));
        for wrong in [&b"k-alic"[..], b"k-alicee", b"K-ALICE", b"", b"k-bob\0"] {
            assert_eq!(ring.find(wrong), None, "{wrong:?}");
        }
    }

    #[test]
    fn refuses_duplicate_keys_naming_both_consumers_but_not_the_key() {
        let err = keyring(&[("alice", "same-key"), ("bob", "same-key")])
            .err()
            .unwrap();
        assert_eq!(
            err,
            "keys.bob: the same key as keys.alice: each consumer needs its own key"
        );
        assert!(!err.contains("same-key\""));
    }

    #[test]
    fn refuses_empty_and_padded_keys_and_bad_consumer_names() {
        assert_eq!(
            keyring(&[("alice", "")]).err().unwrap(),
            "keys.alice: the key is empty"
        );
        assert!(
            keyring(&[("alice", " k")])
                .err()
                .unwrap()
                .contains("whitespace")
        );
        assert!(keyring(&[("", "k")]).err().unwrap().contains("blank"));
        assert!(
            keyring(&[("a\nb", "k")])
                .err()
                .unwrap()
                .contains("cannot be sent")
        );
        assert!(keyring(&[]).err().unwrap().starts_with("keys is empty"));
    }
}
