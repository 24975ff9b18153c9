//! Response compression and request decompression of a route ([`wasmgate_compression`]),
//! with the byte counts of `wasmgate_compression_bytes_total`.

use http::{HeaderValue, Method, Response};
use prometheus_client::metrics::counter::Counter;
use wasmgate_compression::{Codec, Decision, Decoder, Encoder, Rules};
use wasmgate_telemetry::Metrics;

use crate::body::Body;

/// A route's compression settings with their counters.
#[derive(Debug)]
pub(crate) struct Compression {
    rules: Rules,
    decompress_requests: bool,
    /// In and out byte counters, by [`Codec::ALL`]'s order.
    tallies: Vec<(Counter, Counter)>,
}

impl Compression {
    pub(crate) fn new(
        config: &wasmgate_config::Compression,
        route: &str,
        metrics: &Metrics,
    ) -> Self {
        Self {
            rules: config.rules.clone(),
            decompress_requests: config.decompress_requests,
            tallies: Codec::ALL
                .iter()
                .map(|c| metrics.compression(route, c.token()))
                .collect(),
        }
    }

    /// Compresses `response` when the rules and the client's `Accept-Encoding` say so, and
    /// names the codec it used.
    pub(crate) fn respond(
        &self,
        accept_encoding: &[HeaderValue],
        method: &Method,
        response: Response<Body>,
    ) -> (Response<Body>, Option<Codec>) {
        let decision = self.rules.decide(
            accept_encoding,
            method,
            response.status(),
            response.headers(),
        );
        let (mut parts, body) = response.into_parts();
        let used = match decision {
            Decision::Compress(codec) => Some(codec),
            _ => None,
        };
        let body = match decision {
            Decision::Identity => body,
            Decision::IdentityVaried => {
                wasmgate_compression::add_vary(&mut parts.headers);
                body
            }
            Decision::Compress(codec) => {
                wasmgate_compression::encode_headers(&mut parts.headers, codec);
                let index = Codec::ALL.iter().position(|c| *c == codec).unwrap_or(0);
                let (bytes_in, bytes_out) = self.tallies[index].clone();
                let encoder = Encoder::new(body, codec, self.rules.levels).with_tally(Box::new(
                    move |read, written| {
                        bytes_in.inc_by(read);
                        bytes_out.inc_by(written);
                    },
                ));
                Body::wrap(encoder)
            }
        };
        (Response::from_parts(parts, body), used)
    }

    /// A compressed request body decompressed (for plugins that read bodies), at most `limit`
    /// bytes of it; `body` as it is when the route does not decompress or the body is not
    /// compressed with a codec the gateway knows.
    pub(crate) fn request(&self, parts: &mut http::request::Parts, body: Body, limit: u64) -> Body {
        if !self.decompress_requests {
            return body;
        }
        let Some(codec) = wasmgate_compression::request_codec(&parts.headers) else {
            return body;
        };
        wasmgate_compression::decoded_headers(&mut parts.headers);
        Body::wrap(Decoder::new(body, codec, limit))
    }
}
