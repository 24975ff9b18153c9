//! Bodies compressed and decompressed on the fly.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use compression_codecs::brotli::params::EncoderParams;
use compression_codecs::zstd::params::{CParameter, DParameter};
use compression_codecs::{
    BrotliDecoder, BrotliEncoder, DecodeV2, EncodeV2, GzipDecoder, ZstdDecoder, ZstdEncoder,
};
use compression_core::Level;
use compression_core::util::{PartialBuffer, WriteBuffer};
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::gzip::PooledGzip;
use crate::{Codec, Levels};

/// The size of a data frame the codecs fill before it is sent: large enough that a big body
/// goes out in few frames, small enough to keep per-stream memory modest.
const FRAME: usize = 32 * 1024;

/// The least room a codec gets to write into.
const MIN_SPARE: usize = 4 * 1024;

/// The largest zstd window a request body may use, as a power of two: 8 MiB, the most RFC 8878
/// §3.1.1.1.2 lets an HTTP decoder require. Without it a few bytes of request could make the
/// gateway allocate zstd's default maximum of 128 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The highest zstd level responses are compressed at: above 19 zstd's window grows past the
/// 8 MiB that RFC 9659 lets the `zstd` content coding use, and browsers refuse such responses.
const ZSTD_LEVEL_MAX: i32 = 19;

/// Why a body could not be compressed or decompressed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The codec failed: corrupt or truncated input when decoding, an internal error when
    /// encoding. `codec` is the coding's token (`gzip`, `br`, `zstd`).
    #[error("{codec} stream failed: {source}")]
    Io {
        /// The coding's token.
        codec: &'static str,
        /// What the codec reported.
        #[source]
        source: io::Error,
    },
    /// Decoding produced more than the limit (a decompression bomb, or just a body too large
    /// once decoded); the value is the limit in bytes.
    #[error("decompressed body larger than {0} bytes")]
    TooLarge(u64),
}

impl CodecError {
    fn io(codec: Codec, source: io::Error) -> Self {
        Self::Io {
            codec: codec.token(),
            source,
        }
    }

    fn stalled(codec: Codec) -> Self {
        Self::io(codec, io::Error::other("codec made no progress"))
    }
}

/// The bytes of the next data frame, filled by a codec in place.
#[derive(Debug, Default)]
struct Output {
    buf: BytesMut,
}

impl Output {
    fn is_full(&self) -> bool {
        self.buf.len() >= FRAME
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Lets `f` write into the rest of the frame; returns its result and how much it wrote.
    fn fill<R>(
        &mut self,
        step: usize,
        f: impl FnOnce(&mut WriteBuffer<'_>) -> io::Result<R>,
    ) -> io::Result<(R, usize)> {
        let filled = self.buf.len();
        // After a small frame was split off (a flush), the rest of its allocation takes the
        // next ones, so a stream of small events does not allocate per event. Below
        // MIN_SPARE a fresh frame is reserved (which reclaims the old allocation once the
        // frames sent from it were dropped).
        if self.buf.capacity() - filled < MIN_SPARE {
            self.buf
                .reserve(FRAME.saturating_sub(filled).max(MIN_SPARE));
        }
        // The codecs write into initialised memory only (no unsafe here), so what they get is
        // zeroed first, `step` bytes at a time: compressed frames are mostly small, and zeroing
        // a whole frame for a 1 KiB response cost more than compressing it.
        let end = self
            .buf
            .capacity()
            .min(FRAME.max(filled + 1))
            .min(filled + step);
        self.buf.resize(end, 0);
        let mut out = WriteBuffer::new_initialized(&mut self.buf[filled..]);
        let result = f(&mut out);
        let written = out.written_len();
        self.buf.truncate(filled + written);
        result.map(|r| (r, written))
    }

    fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

type Tally = Box<dyn FnOnce(u64, u64) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the inner body.
    Streaming,
    /// The inner body waits: pushing what the codec holds out to the client.
    Flushing,
    /// The inner body ended: writing the end of the compressed stream.
    Finishing,
    /// Everything but the trailers was sent.
    Trailers,
    Done,
    Failed,
}

enum Compressor {
    Gzip(PooledGzip),
    // The brotli state is large; boxed so a body does not carry it inline.
    Brotli(Box<BrotliEncoder>),
    Zstd(ZstdEncoder),
}

impl Compressor {
    fn new(codec: Codec, levels: Levels) -> Self {
        let precise = |level: u32| Level::Precise(i32::try_from(level).unwrap_or(i32::MAX));
        match codec {
            Codec::Gzip => Self::Gzip(PooledGzip::new(levels.gzip)),
            Codec::Brotli => Self::Brotli(Box::new(BrotliEncoder::new(
                EncoderParams::default().quality(precise(levels.brotli)),
            ))),
            Codec::Zstd => Self::Zstd(ZstdEncoder::new(CParameter::quality(Level::Precise(
                levels.zstd.min(ZSTD_LEVEL_MAX),
            )))),
        }
    }

    fn get(&mut self) -> &mut dyn EncodeV2 {
        match self {
            Self::Gzip(c) => c,
            Self::Brotli(c) => &mut **c,
            Self::Zstd(c) => c,
        }
    }
}

/// A response body compressed on the fly with one codec.
///
/// Data goes through the codec as it arrives, without waiting for the whole body, and leaves
/// in frames of up to 32 KiB. Whenever the inner body has nothing ready after some data came
/// in, the codec is flushed so what arrived reaches the client now: server-sent events and
/// long polls stay live (at some cost in ratio for bodies that trickle in). At the end the
/// compressed stream is finished, then the inner body's trailers are passed on. Empty data
/// frames are skipped, and a frame is never sent empty.
///
/// The inner body's errors are passed on as they are; a codec failure becomes the inner
/// error type through `From<CodecError>`.
pub struct Encoder<B> {
    inner: B,
    codec: Codec,
    compressor: Compressor,
    /// The rest of the data frame being compressed.
    input: Bytes,
    out: Output,
    phase: Phase,
    /// Input went into the codec since it was last flushed.
    unflushed: bool,
    trailers: Option<HeaderMap>,
    bytes_in: u64,
    bytes_out: u64,
    tally: Option<Tally>,
}

impl<B> Encoder<B> {
    /// Compresses `inner` with `codec` at the level `levels` gives it. The response's headers
    /// must say so too: see [`encode_headers`](crate::encode_headers).
    pub fn new(inner: B, codec: Codec, levels: Levels) -> Self {
        Self {
            inner,
            codec,
            compressor: Compressor::new(codec, levels),
            input: Bytes::new(),
            out: Output::default(),
            phase: Phase::Streaming,
            unflushed: false,
            trailers: None,
            bytes_in: 0,
            bytes_out: 0,
            tally: None,
        }
    }

    /// Calls `tally(bytes_in, bytes_out)` once, when the whole body was compressed (for the
    /// compression ratio metric): the bytes read from the inner body and the compressed bytes
    /// sent. Not called when the body is dropped early or fails.
    pub fn with_tally(mut self, tally: Box<dyn FnOnce(u64, u64) + Send + Sync>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// Feeds the pending input to the codec until it is all taken or the frame is full.
    fn encode_input(&mut self) -> Result<(), CodecError> {
        while !self.input.is_empty() && !self.out.is_full() {
            let codec = self.compressor.get();
            let input = &self.input;
            let (consumed, written) = self
                .out
                .fill(MIN_SPARE, |out| {
                    let mut partial = PartialBuffer::new(&input[..]);
                    codec.encode(&mut partial, out)?;
                    Ok(partial.written_len())
                })
                .map_err(|e| CodecError::io(self.codec, e))?;
            self.input.advance(consumed);
            self.bytes_out += written as u64;
            if consumed == 0 && written == 0 {
                return Err(CodecError::stalled(self.codec));
            }
        }
        Ok(())
    }

    /// Flushes or finishes the codec into the frame; true once it has given out everything.
    fn drain(&mut self, finish: bool) -> Result<bool, CodecError> {
        let codec = self.compressor.get();
        let (done, written) = self
            .out
            .fill(MIN_SPARE, |out| {
                if finish {
                    codec.finish(out)
                } else {
                    codec.flush(out)
                }
            })
            .map_err(|e| CodecError::io(self.codec, e))?;
        self.bytes_out += written as u64;
        if !done && written == 0 && !self.out.is_full() {
            return Err(CodecError::stalled(self.codec));
        }
        Ok(done)
    }

    fn emit<E>(&mut self) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        Poll::Ready(Some(Ok(Frame::data(self.out.take()))))
    }

    fn end(&mut self) {
        self.phase = Phase::Done;
        if let Some(tally) = self.tally.take() {
            tally(self.bytes_in, self.bytes_out);
        }
    }
}

impl<B> Body for Encoder<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<CodecError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            let step = match this.phase {
                Phase::Streaming if !this.input.is_empty() => this.encode_input().map(|()| {
                    // A full frame goes out; otherwise read on, so small frames coalesce.
                    this.out.is_full()
                }),
                Phase::Streaming => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending if this.unflushed => {
                        this.phase = Phase::Flushing;
                        continue;
                    }
                    Poll::Pending if this.out.is_empty() => return Poll::Pending,
                    Poll::Pending => return this.emit(),
                    Poll::Ready(None) => {
                        this.phase = Phase::Finishing;
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.phase = Phase::Failed;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) if data.is_empty() => {}
                            Ok(data) => {
                                this.bytes_in += data.len() as u64;
                                this.input = data;
                                this.unflushed = true;
                            }
                            Err(frame) => {
                                // Trailers end the body: the stream is finished before them.
                                this.trailers = frame.into_trailers().ok();
                                this.phase = Phase::Finishing;
                            }
                        }
                        continue;
                    }
                },
                Phase::Flushing => this.drain(false).map(|flushed| {
                    if flushed {
                        this.unflushed = false;
                        this.phase = Phase::Streaming;
                    }
                    // Whatever the flush produced goes out now: that is its point.
                    !this.out.is_empty()
                }),
                Phase::Finishing => this.drain(true).map(|finished| {
                    if finished {
                        if this.trailers.is_some() {
                            this.phase = Phase::Trailers;
                        } else {
                            this.end();
                        }
                    }
                    !this.out.is_empty()
                }),
                Phase::Trailers => {
                    let trailers = this.trailers.take().unwrap_or_default();
                    this.end();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Phase::Done | Phase::Failed => return Poll::Ready(None),
            };
            match step {
                Ok(true) => return this.emit(),
                Ok(false) => {}
                Err(e) => {
                    this.phase = Phase::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }
}

impl<B> fmt::Debug for Encoder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("codec", &self.codec)
            .field("phase", &self.phase)
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .finish_non_exhaustive()
    }
}

enum Decompressor {
    Gzip(GzipDecoder),
    Brotli(Box<BrotliDecoder>),
    Zstd(ZstdDecoder),
}

impl Decompressor {
    fn new(codec: Codec) -> Self {
        match codec {
            Codec::Gzip => Self::Gzip(GzipDecoder::new()),
            Codec::Brotli => Self::Brotli(Box::new(BrotliDecoder::new())),
            Codec::Zstd => Self::Zstd(ZstdDecoder::new_with_params(&[DParameter::window_log_max(
                ZSTD_WINDOW_LOG_MAX,
            )])),
        }
    }

    fn get(&mut self) -> &mut dyn DecodeV2 {
        match self {
            Self::Gzip(c) => c,
            Self::Brotli(c) => &mut **c,
            Self::Zstd(c) => c,
        }
    }

    /// Gives out output the codec still holds from input it took already (after it filled a
    /// frame); returns whether that reached the end of the stream.
    fn drain(&mut self, out: &mut WriteBuffer<'_>) -> io::Result<bool> {
        match self {
            // Inflate with no input fails when it has nothing pending; its flush does not. The
            // gzip stream ends with its trailer, which only `decode` reads.
            Self::Gzip(c) => c.flush(out).map(|_| false),
            // These report the end of the stream from `decode` only, and take empty input in
            // their stride (zstd guards against repeated calls without progress).
            Self::Brotli(c) => c.decode(&mut PartialBuffer::new(&[][..]), out),
            Self::Zstd(c) => c.decode(&mut PartialBuffer::new(&[][..]), out),
        }
    }
}

/// A request body decompressed on the fly, for plugins that read bodies and upstreams that
/// expect plain ones. Fails with [`CodecError::TooLarge`] once more than `limit` decoded bytes
/// came out (so a small compressed body cannot expand into gigabytes), and with
/// [`CodecError::Io`] on corrupt or truncated input. Concatenated gzip members and zstd frames
/// are decoded one after the other; anything after the end of a brotli stream is an error. An
/// empty body stays empty. Trailers are passed on after the data.
pub struct Decoder<B> {
    inner: B,
    codec: Codec,
    decompressor: Decompressor,
    input: Bytes,
    out: Output,
    phase: Phase,
    limit: u64,
    decoded: u64,
    /// Compressed bytes arrived at all.
    fed: bool,
    /// The last stream (member, frame) ended; more input starts another one.
    ended: bool,
    /// The codec filled the frame, so it may hold more output without further input.
    draining: bool,
    trailers: Option<HeaderMap>,
}

impl<B> Decoder<B> {
    /// Decodes `inner`, compressed with `codec`, failing beyond `limit` decoded bytes. The
    /// request's headers must say so too: see [`decoded_headers`](crate::decoded_headers).
    pub fn new(inner: B, codec: Codec, limit: u64) -> Self {
        Self {
            inner,
            codec,
            decompressor: Decompressor::new(codec),
            input: Bytes::new(),
            out: Output::default(),
            phase: Phase::Streaming,
            limit,
            decoded: 0,
            fed: false,
            ended: false,
            draining: false,
            trailers: None,
        }
    }

    fn has_work(&self) -> bool {
        !self.input.is_empty() || self.draining
    }

    /// Decodes pending input (or what the codec still holds) until there is none or the frame
    /// is full.
    fn decode_input(&mut self) -> Result<(), CodecError> {
        let codec = self.codec;
        let failed = |e| CodecError::io(codec, e);
        while self.has_work() && !self.out.is_full() {
            if self.input.is_empty() {
                let decompressor = &mut self.decompressor;
                let (ended, written) = self
                    .out
                    .fill(FRAME, |out| decompressor.drain(out))
                    .map_err(failed)?;
                self.count(written)?;
                self.ended |= ended;
                // Only a full frame can have left more behind.
                self.draining = !ended && self.out.is_full();
                continue;
            }
            let decoder = self.decompressor.get();
            if self.ended {
                if codec == Codec::Brotli {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "data after the end of the stream",
                    )));
                }
                decoder.reinit().map_err(failed)?;
                self.ended = false;
            }
            let input = &self.input;
            let ((done, consumed), written) = self
                .out
                .fill(FRAME, |out| {
                    let mut partial = PartialBuffer::new(&input[..]);
                    let done = decoder.decode(&mut partial, out)?;
                    Ok((done, partial.written_len()))
                })
                .map_err(failed)?;
            self.input.advance(consumed);
            self.count(written)?;
            self.ended = done;
            // A full frame may have left output inside the codec; with input left, the next
            // decode call gives it out anyway.
            self.draining = !done && self.input.is_empty() && self.out.is_full();
            if !done && consumed == 0 && written == 0 {
                return Err(CodecError::stalled(codec));
            }
        }
        Ok(())
    }

    fn count(&mut self, written: usize) -> Result<(), CodecError> {
        self.decoded += written as u64;
        if self.decoded > self.limit {
            return Err(CodecError::TooLarge(self.limit));
        }
        Ok(())
    }

    /// The inner body ended: the compressed stream must have ended too.
    fn finish(&mut self) -> Result<(), CodecError> {
        if self.fed && !self.ended {
            return Err(CodecError::io(
                self.codec,
                io::Error::new(io::ErrorKind::UnexpectedEof, "body ended inside the stream"),
            ));
        }
        self.phase = if self.trailers.is_some() {
            Phase::Trailers
        } else {
            Phase::Done
        };
        Ok(())
    }
}

impl<B> Body for Decoder<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<CodecError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            let step = match this.phase {
                Phase::Streaming if this.has_work() => {
                    this.decode_input().map(|()| this.out.is_full())
                }
                Phase::Streaming => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending if this.out.is_empty() => return Poll::Pending,
                    Poll::Pending => Ok(true),
                    Poll::Ready(None) => this.finish().map(|()| !this.out.is_empty()),
                    Poll::Ready(Some(Err(e))) => {
                        this.phase = Phase::Failed;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            if !data.is_empty() {
                                this.fed = true;
                                this.input = data;
                            }
                            Ok(false)
                        }
                        Err(frame) => {
                            this.trailers = frame.into_trailers().ok();
                            this.finish().map(|()| !this.out.is_empty())
                        }
                    },
                },
                Phase::Trailers => {
                    this.phase = Phase::Done;
                    let trailers = this.trailers.take().unwrap_or_default();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                // Done with output left: the last data frame.
                Phase::Done if !this.out.is_empty() => Ok(true),
                Phase::Done | Phase::Failed | Phase::Flushing | Phase::Finishing => {
                    return Poll::Ready(None);
                }
            };
            match step {
                Ok(true) => return Poll::Ready(Some(Ok(Frame::data(this.out.take())))),
                Ok(false) => {}
                Err(e) => {
                    this.phase = Phase::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done && self.out.is_empty()
    }
}

impl<B> fmt::Debug for Decoder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("codec", &self.codec)
            .field("phase", &self.phase)
            .field("limit", &self.limit)
            .field("decoded", &self.decoded)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
