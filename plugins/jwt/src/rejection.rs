//! Why a request is refused, and the 401 that says so (RFC 6750 §3).

use wasmgate_sdk::Action;

/// Why a request is refused. The messages are fixed text: nothing the client sent is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// Not three base64url parts, a header or payload that is not a JSON object, bad base64.
    Malformed,
    /// `alg` is `none`, unknown, or not one the configured key may verify.
    AlgorithmNotAccepted,
    /// A `crit` header parameter: the plugin understands no JWS extension (RFC 7515 §4.1.11).
    CriticalHeader,
    /// The token's `kid` names no key of the JWKS.
    UnknownKid,
    /// No `kid`, and several keys of the JWKS accept the token's `alg`.
    KidRequired,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is ahead (beyond the leeway).
    NotYetValid,
    /// `iat` is ahead (beyond the leeway).
    IssuedInFuture,
    /// A claim of `required_claims` is absent.
    MissingClaim,
    /// A registered claim has the wrong type (`exp` not a number, `aud` not strings, ...).
    MalformedClaim,
    /// `iss` is not one of `issuer`.
    WrongIssuer,
    /// No `aud` value is one of `audience`.
    WrongAudience,
    /// The consumer claim is empty or cannot travel in an HTTP header.
    UnusableConsumer,
}

impl Rejection {
    /// The message of the JSON body and of `error_description`.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::MissingToken => "missing bearer token",
            Self::Malformed => "malformed token",
            Self::AlgorithmNotAccepted => "token algorithm not accepted",
            Self::CriticalHeader => "unsupported critical header parameter",
            Self::UnknownKid => "no key matches the token's kid",
            Self::KidRequired => "token has no kid and several keys fit",
            Self::BadSignature => "invalid signature",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::IssuedInFuture => "token issued in the future",
            Self::MissingClaim => "token lacks a required claim",
            Self::MalformedClaim => "token has a malformed claim",
            Self::WrongIssuer => "token issuer not accepted",
            Self::WrongAudience => "token audience not accepted",
            Self::UnusableConsumer => "token subject is not a usable consumer name",
        }
    }

    /// The 401: JSON body, and a `WWW-Authenticate: Bearer` challenge that carries
    /// `error="invalid_token"` unless the request had no token at all (RFC 6750 §3.1).
    pub(crate) fn answer(self, realm: &str) -> Action {
        let message = self.message();
        let challenge = match self {
            Self::MissingToken => format!("Bearer realm=\"{realm}\""),
            _ => format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{message}\""
            ),
        };
        Action::reject(401, "unauthorized", message).header("www-authenticate", challenge)
    }
}
