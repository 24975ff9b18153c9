//! Reading `Authorization: Basic <base64(user:password)>` (RFC 7617).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;

/// The user-id and password a client sent.
#[derive(PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: Vec<u8>,
}

// Never print the password, not even in a test failure.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What an `Authorization` header holds, for this plugin.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not the `Basic` scheme (e.g. `Bearer ...`).
    OtherScheme,
    /// `Basic`, but not base64 of `user:password`.
    Malformed,
    /// `Basic` with a user-id and a password.
    Basic(Credentials),
}

/// Parses an `Authorization` value. The scheme is case-insensitive, the base64 may lack its
/// padding; the password is kept as bytes (it need not be UTF-8) and the user-id must be UTF-8.
pub(crate) fn parse(authorization: &str) -> Parsed {
    let (scheme, token) = authorization
        .trim_start()
        .split_once(' ')
        .unwrap_or((authorization.trim(), ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Parsed::OtherScheme;
    }
    let Ok(decoded) = STANDARD_PAD_INDIFFERENT.decode(token.trim()) else {
        return Parsed::Malformed;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return Parsed::Malformed;
    };
    let (user, password) = decoded.split_at(colon);
    let Ok(user) = String::from_utf8(user.to_vec()) else {
        return Parsed::Malformed;
    };
    Parsed::Basic(Credentials {
        user,
        password: password[1..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &[u8]) -> Parsed {
        Parsed::Basic(Credentials {
            user: user.to_owned(),
            password: password.to_vec(),
        })
    }

    #[test]
    fn reads_user_and_password() {
        // base64("alice:s3cret!pass")
        assert_eq!(
            parse("Basic YWxpY2U6czNjcmV0IXBhc3M="),
            basic("alice", b"s3cret!pass")
        );
        assert_eq!(
            parse("basic   YWxpY2U6czNjcmV0IXBhc3M"),
            basic("alice", b"s3cret!pass")
        );
        assert_eq!(
            parse("BASIC YWxpY2U6czNjcmV0IXBhc3M= "),
            basic("alice", b"s3cret!pass")
        );
    }

    #[test]
    fn the_password_may_hold_colons_and_be_empty() {
        // base64("bob:a:b"), base64("bob:")
        assert_eq!(parse("Basic Ym9iOmE6Yg=="), basic("bob", b"a:b"));
        assert_eq!(parse("Basic Ym9iOg=="), basic("bob", b""));
    }

    #[test]
    fn the_password_need_not_be_utf8() {
        // base64(b"bob:\xe9t\xe9"), ISO-8859-1 "été"
        assert_eq!(parse("Basic Ym9iOul06Q=="), basic("bob", b"\xe9t\xe9"));
    }

    #[test]
    fn other_schemes_are_not_basic() {
        assert_eq!(parse("Bearer abc.def.ghi"), Parsed::OtherScheme);
        assert_eq!(parse("Basicx YWxpY2U6eA=="), Parsed::OtherScheme);
        assert_eq!(parse(""), Parsed::OtherScheme);
    }

    #[test]
    fn bad_base64_or_no_colon_is_malformed() {
        assert_eq!(parse("Basic"), Parsed::Malformed);
        assert_eq!(parse("Basic !!!"), Parsed::Malformed);
        assert_eq!(parse("Basic YWxpY2U="), Parsed::Malformed); // "alice"
        assert_eq!(parse("Basic /w==:"), Parsed::Malformed);
        assert_eq!(parse("Basic /zp4"), Parsed::Malformed); // b"\xff:x": user not UTF-8
    }
}
