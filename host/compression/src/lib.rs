//! Wasmgate's response compression and request decompression.
//!
//! For each response the gateway asks [`Rules::decide`] whether to compress it, given the
//! request's `Accept-Encoding` and the response's status and headers. On
//! [`Decision::Compress`] it edits the headers with [`encode_headers`] and wraps the body in an
//! [`Encoder`], which compresses as data arrives and flushes whenever the upstream pauses, so
//! streamed responses stay live. On [`Decision::IdentityVaried`] it only adds
//! `Vary: Accept-Encoding` ([`add_vary`]) so caches keep the variants apart.
//!
//! Request bodies sent with a `Content-Encoding` ([`request_codec`]) can be decoded with a
//! [`Decoder`] that stops at a size limit, for plugins that read bodies.
//!
//! The codings are zstd, brotli (`br`) and gzip, through the streaming codecs of
//! `compression-codecs` (the engine of async-compression).

mod body;
mod codec;
mod gzip;
mod headers;
mod negotiate;
mod rules;

pub use body::{CodecError, Decoder, Encoder};
pub use codec::{Codec, Levels};
pub use headers::{add_vary, decoded_headers, encode_headers, request_codec};
pub use negotiate::negotiate;
pub use rules::{Decision, InvalidMediaRange, MediaRange, Rules};
