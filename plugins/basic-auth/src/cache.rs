//! Credentials this instance has verified already, so repeated requests skip bcrypt/argon2.

use std::cell::RefCell;
use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// SHA-256 digests of `user ":" password` that verified, at most `capacity` of them.
///
/// It lives in the instance: each pooled instance fills its own, and a changed config makes new
/// instances, so a removed user or a changed hash is never served from it. Only successes are
/// kept, so wrong guesses cannot fill it. When full it is emptied and starts over: simpler than
/// an LRU and, for a working set below the capacity, just as good.
#[derive(Debug)]
pub(crate) struct VerifiedCache {
    capacity: usize,
    digests: RefCell<BTreeSet<[u8; 32]>>,
}

/// The cache key of a user and password. Unambiguous because user names cannot contain `:`
/// (refused in the config, as RFC 7617 does).
pub(crate) fn key(user: &str, password: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(user.as_bytes())
        .chain_update(b":")
        .chain_update(password)
        .finalize()
        .into()
}

impl VerifiedCache {
    /// A cache of up to `capacity` entries; `0` turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            digests: RefCell::default(),
        }
    }

    /// Whether `key` verified before.
    pub(crate) fn contains(&self, key: &[u8; 32]) -> bool {
        self.digests.borrow().contains(key)
    }

    /// Remembers that `key` verified.
    pub(crate) fn insert(&self, key: [u8; 32]) {
        if self.capacity == 0 {
            return;
        }
        let mut digests = self.digests.borrow_mut();
        if digests.len() >= self.capacity {
            digests.clear();
        }
        digests.insert(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.digests.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_its_capacity_then_starts_over() {
        let cache = VerifiedCache::new(2);
        cache.insert(key("a", b"1"));
        cache.insert(key("b", b"2"));
        assert!(cache.contains(&key("a", b"1")) && cache.contains(&key("b", b"2")));
        cache.insert(key("c", b"3"));
        assert_eq!(cache.len(), 1);
        assert!(cache.contains(&key("c", b"3")));
        assert!(!cache.contains(&key("a", b"1")));
    }

    #[test]
    fn a_zero_capacity_keeps_nothing() {
        let cache = VerifiedCache::new(0);
        cache.insert(key("a", b"1"));
        assert!(!cache.contains(&key("a", b"1")));
    }

    #[test]
    fn the_key_depends_on_user_and_password() {
        assert_ne!(key("alice", b"x"), key("alice", b"y"));
        assert_ne!(key("alice", b"x"), key("bob", b"x"));
        assert_eq!(key("alice", b"x"), key("alice", b"x"));
    }
}
