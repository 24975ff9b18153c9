//! The content codings and their levels.

use std::fmt;

/// A content coding the gateway can produce for responses (and decode in requests): `zstd`,
/// `br` or `gzip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Zstandard (RFC 8878), token `zstd`: the fastest to compress at a ratio close to brotli.
    Zstd,
    /// Brotli (RFC 7932), token `br`: the best ratio for text; every current browser decodes it.
    Brotli,
    /// gzip (RFC 1952), token `gzip` (`x-gzip` accepted too): understood by every client.
    Gzip,
}

impl Codec {
    /// Every codec, in the gateway's default order of preference.
    pub const ALL: [Codec; 3] = [Codec::Zstd, Codec::Brotli, Codec::Gzip];

    /// The coding's token as it appears in `Content-Encoding` and `Accept-Encoding` (and in the
    /// `codecs` setting): `zstd`, `br` or `gzip`.
    pub fn token(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Brotli => "br",
            Codec::Gzip => "gzip",
        }
    }

    /// The codec named by `token`, case-insensitively; `x-gzip` (RFC 9110 §8.4.1.3) is gzip.
    /// `None` for any other coding, including `identity`.
    pub fn from_token(token: &str) -> Option<Self> {
        if token.eq_ignore_ascii_case("zstd") {
            Some(Codec::Zstd)
        } else if token.eq_ignore_ascii_case("br") {
            Some(Codec::Brotli)
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Codec::Gzip)
        } else {
            None
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// Compression levels per codec: higher levels give smaller responses for more CPU per byte.
///
/// The defaults favour latency and CPU, as a gateway compresses every response anew: gzip 1
/// (nginx's `gzip_comp_level` default), brotli 4, zstd 3 (zstd's own default). Out-of-range
/// values are clamped: gzip to 0–9, brotli to 0–11, zstd to at most 19, because higher zstd
/// levels use a window larger than the 8 MiB that browsers accept for the `zstd` coding
/// (RFC 9659); zstd's negative "fast" levels are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// gzip level, 0 (stored, no compression) to 9.
    pub gzip: u32,
    /// brotli quality, 0 to 11.
    pub brotli: u32,
    /// zstd level, 1 to 19 (negative levels trade ratio for even more speed).
    pub zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Self {
            gzip: 1,
            brotli: 4,
            zstd: 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_case_insensitively() {
        for codec in Codec::ALL {
            assert_eq!(Codec::from_token(codec.token()), Some(codec));
            assert_eq!(
                Codec::from_token(&codec.token().to_ascii_uppercase()),
                Some(codec)
            );
        }
        assert_eq!(Codec::from_token("X-GZIP"), Some(Codec::Gzip));
        assert_eq!(Codec::from_token("identity"), None);
        assert_eq!(Codec::from_token("deflate"), None);
        assert_eq!(Codec::from_token(" gzip"), None);
    }
}
