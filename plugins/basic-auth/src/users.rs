//! The configured users and their password hashes: parsed and checked once, verified per request.

use std::collections::BTreeMap;

use argon2::password_hash::PasswordHash;
use argon2::{Argon2, Params, PasswordVerifier};
use wasmgate_sdk::{ConfigError, Error};

/// A user's password hash, in one of the accepted formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hash {
    /// `$2a$`, `$2b$` or `$2y$` (what `htpasswd -B` writes), with its cost.
    Bcrypt { hash: String, cost: u32 },
    /// A PHC string `$argon2id$v=19$m=...,t=...,p=...$salt$hash`, with its memory cost in KiB.
    Argon2id { hash: String, memory_kib: u32 },
}

impl Hash {
    /// Parses the hash of user `user`; the error names the user and the format, never the value
    /// (an unsupported "hash" may be a plaintext password).
    fn parse(user: &str, hash: &str) -> Result<Self, ConfigError> {
        let refuse = |what: &str| ConfigError::new(format!("users.{user}: {what}"));
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            let parts: bcrypt::HashParts = hash
                .parse()
                .map_err(|e| refuse(&format!("malformed bcrypt hash ({e})")))?;
            let cost = parts.get_cost();
            if !(4..=31).contains(&cost) {
                return Err(refuse(&format!("bcrypt cost {cost} is outside 4-31")));
            }
            return Ok(Self::Bcrypt {
                hash: hash.to_owned(),
                cost,
            });
        }
        if hash.starts_with("$argon2id$") {
            let parsed = PasswordHash::new(hash)
                .map_err(|e| refuse(&format!("malformed argon2id hash ({e})")))?;
            if parsed.salt.is_none() || parsed.hash.is_none() {
                return Err(refuse("argon2id hash without a salt or an output"));
            }
            let params = Params::try_from(&parsed)
                .map_err(|e| refuse(&format!("invalid argon2id parameters ({e})")))?;
            if let Some(version) = parsed.version {
                argon2::Version::try_from(version)
                    .map_err(|e| refuse(&format!("unsupported argon2 version {version} ({e})")))?;
            }
            return Ok(Self::Argon2id {
                hash: hash.to_owned(),
                memory_kib: params.m_cost(),
            });
        }
        Err(refuse(&format!(
            "unsupported hash format: {}; only bcrypt ($2a$, $2b$, $2y$, as `htpasswd -B` makes) \
             and argon2id ($argon2id$v=19$...) hashes are accepted",
            describe(hash)
        )))
    }

    /// Whether `password` matches. An `Err` means the hash could not be used, which parsing in
    /// `new` rules out.
    pub(crate) fn verify(&self, password: &[u8]) -> Result<bool, Error> {
        match self {
            Self::Bcrypt { hash, .. } => bcrypt::verify(password, hash)
                .map_err(|e| Error::new(format!("bcrypt verification failed: {e}"))),
            Self::Argon2id { hash, .. } => {
                let parsed = PasswordHash::new(hash)
                    .map_err(|e| Error::new(format!("argon2id hash unreadable: {e}")))?;
                match Argon2::default().verify_password(password, &parsed) {
                    Ok(()) => Ok(true),
                    Err(argon2::password_hash::Error::Password) => Ok(false),
                    Err(e) => Err(Error::new(format!("argon2id verification failed: {e}"))),
                }
            }
        }
    }
}

/// Names a hash format without showing the value.
fn describe(hash: &str) -> &'static str {
    const KNOWN: &[(&str, &str)] = &[
        (
            "$apr1$",
            "Apache MD5 ($apr1$, `htpasswd -m`); regenerate with `htpasswd -B`",
        ),
        (
            "{SHA}",
            "SHA-1 ({SHA}, `htpasswd -s`); regenerate with `htpasswd -B`",
        ),
        ("$1$", "MD5-crypt ($1$)"),
        ("$5$", "SHA-256-crypt ($5$)"),
        ("$6$", "SHA-512-crypt ($6$)"),
        ("$y$", "yescrypt ($y$)"),
        ("$2x$", "legacy bcrypt with the 8-bit bug ($2x$)"),
        ("$2$", "original bcrypt ($2$)"),
        ("$argon2i$", "argon2i ($argon2i$); use argon2id"),
        ("$argon2d$", "argon2d ($argon2d$); use argon2id"),
        ("$scrypt$", "scrypt"),
        ("$pbkdf2", "PBKDF2"),
    ];
    KNOWN
        .iter()
        .find(|(prefix, _)| hash.starts_with(prefix))
        .map_or(
            "not a recognised hash (plaintext passwords are not accepted)",
            |(_, name)| name,
        )
}

/// User name → password hash.
#[derive(Debug)]
pub(crate) struct Users {
    users: BTreeMap<String, Hash>,
}

impl Users {
    /// Parses every user's hash, refusing names that cannot be Basic user-ids or header values.
    pub(crate) fn new(users: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        if users.is_empty() {
            return Err(ConfigError::new(
                "users is empty: give at least one user and its password hash, \
                 e.g. users = { alice = \"$2y$05$...\" } (htpasswd -nB alice)",
            ));
        }
        let users = users
            .into_iter()
            .map(|(user, hash)| {
                check_user_name(&user)?;
                Ok((user.clone(), Hash::parse(&user, &hash)?))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self { users })
    }

    /// The user's hash, if the user exists.
    pub(crate) fn get(&self, user: &str) -> Option<&Hash> {
        self.users.get(user)
    }

    /// A hash verified in place of an unknown user's, so that an unknown user takes as long to
    /// refuse as a wrong password (the first user's, in name order).
    pub(crate) fn decoy(&self) -> Option<&Hash> {
        self.users.values().next()
    }

    /// The user with the largest argon2id memory cost, and that cost in KiB.
    pub(crate) fn largest_argon2_memory(&self) -> Option<(&str, u32)> {
        self.users
            .iter()
            .filter_map(|(user, hash)| match hash {
                Hash::Argon2id { memory_kib, .. } => Some((user.as_str(), *memory_kib)),
                Hash::Bcrypt { .. } => None,
            })
            .max_by_key(|&(_, kib)| kib)
    }
}

/// RFC 7617: a user-id cannot contain a colon. The name is also the consumer header's value.
fn check_user_name(user: &str) -> Result<(), ConfigError> {
    if user.trim().is_empty() || user.trim() != user {
        return Err(ConfigError::new(format!(
            "users: user name {user:?} is blank or starts or ends with whitespace"
        )));
    }
    if user.contains(':') {
        return Err(ConfigError::new(format!(
            "users: user name {user:?} contains ':', which Basic credentials cannot carry"
        )));
    }
    if http::HeaderValue::from_str(user).is_err() {
        return Err(ConfigError::new(format!(
            "users: user name {user:?} contains characters that cannot be sent in a header"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{ARGON2ID_CAROL, HTPASSWD_ALICE};

    fn parse_err(hash: &str) -> String {
        Hash::parse("alice", hash)
            .err()
            .unwrap()
            .message()
            .to_owned()
    }

    #[test]
    fn verifies_an_htpasswd_bcrypt_hash() {
        let hash = Hash::parse("alice", HTPASSWD_ALICE).unwrap();
        assert!(matches!(hash, Hash::Bcrypt { cost: 5, .. }));
        assert!(hash.verify(b"s3cret!pass").unwrap());
        assert!(!hash.verify(b"s3cret!pas").unwrap());
        assert!(!hash.verify(b"").unwrap());
    }

    #[test]
    fn verifies_2a_and_2b_prefixes() {
        // The same bcrypt computation under each prefix.
        for prefix in ["$2a$", "$2b$"] {
            let hash = HTPASSWD_ALICE.replacen("$2y$", prefix, 1);
            assert!(
                Hash::parse("alice", &hash)
                    .unwrap()
                    .verify(b"s3cret!pass")
                    .unwrap()
            );
        }
    }

    #[test]
    fn verifies_a_reference_argon2id_hash() {
        let hash = Hash::parse("carol", ARGON2ID_CAROL).unwrap();
        assert!(matches!(
            hash,
            Hash::Argon2id {
                memory_kib: 4096,
                ..
            }
        ));
        assert!(hash.verify(b"correct horse").unwrap());
        assert!(!hash.verify(b"correct horse ").unwrap());
    }

    #[test]
    fn refuses_unsupported_formats_naming_the_user_but_not_the_value() {
        let err = parse_err("$apr1$jw1dBqR3$jZTspGgQ/xSczH3ttvQqQ.");
        assert!(
            err.starts_with("users.alice: unsupported hash format: Apache MD5"),
            "{err}"
        );
        let err = parse_err("{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI=");
        assert!(err.contains("SHA-1"), "{err}");
        let err = parse_err("hunter2");
        assert!(
            err.contains("plaintext passwords are not accepted"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse_err(&HTPASSWD_ALICE.replacen("$2y$", "$2x$", 1));
        assert!(err.contains("$2x$"), "{err}");
        let err = parse_err("$argon2i$v=19$m=4096,t=2,p=1$d2FzbWdhdGVzYWx0MTZi$x");
        assert!(err.contains("use argon2id"), "{err}");
    }

    #[test]
    fn refuses_malformed_hashes() {
        let err = parse_err(&HTPASSWD_ALICE[..50]);
        assert!(
            err.starts_with("users.alice: malformed bcrypt hash"),
            "{err}"
        );
        let err = parse_err(&HTPASSWD_ALICE.replacen("$05$", "$03$", 1));
        assert!(err.contains("bcrypt cost 3 is outside 4-31"), "{err}");
        let err = parse_err("$argon2id$v=19$m=4096,t=2,p=1$d2FzbWdhdGVzYWx0MTZi");
        assert!(err.contains("without a salt or an output"), "{err}");
        let err = parse_err(
            "$argon2id$v=19$m=1,t=2,p=1$d2FzbWdhdGVzYWx0MTZi$JWXh8tiGAYJzt3HVAcjxrtfmqgCo3NZ3wqbfQuD8D9Q",
        );
        assert!(err.contains("invalid argon2id parameters"), "{err}");
        let err = parse_err("$argon2id$garbage");
        assert!(err.starts_with("users.alice: "), "{err}");
        assert!(err.contains("argon2id"), "{err}");
    }

    #[test]
    fn refuses_user_names_basic_auth_cannot_carry() {
        let users = |name: &str| {
            Users::new(BTreeMap::from([(
                name.to_owned(),
                HTPASSWD_ALICE.to_owned(),
            )]))
            .err()
            .unwrap()
            .message()
            .to_owned()
        };
        assert!(users("a:b").contains("contains ':'"));
        assert!(users(" ").contains("blank"));
        assert!(users("a\u{7}").contains("cannot be sent in a header"));
        assert!(
            Users::new(BTreeMap::new())
                .err()
                .unwrap()
                .message()
                .starts_with("users is empty")
        );
    }
}
