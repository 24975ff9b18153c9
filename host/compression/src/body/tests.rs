use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A body that yields the frames it was given, all ready at once.
#[derive(Debug)]
struct Frames(VecDeque<Result<Frame<Bytes>, Error>>);

impl Frames {
    fn data(chunks: &[&[u8]]) -> Self {
        Self(
            chunks
                .iter()
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect(),
        )
    }

    fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.0.push_back(Ok(Frame::trailers(trailers)));
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        Poll::Ready(self.get_mut().0.pop_front())
    }
}

/// A body fed frame by frame through a channel: Pending while the sender holds back.
#[derive(Debug)]
struct Channel(mpsc::UnboundedReceiver<Frame<Bytes>>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.get_mut().0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// Reads a body to its end: its data frames and trailers; fails on an error.
async fn collect<B>(mut body: B) -> Result<(Vec<Bytes>, Option<HeaderMap>), Error>
where
    B: Body<Data = Bytes, Error = Error> + Unpin,
{
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        assert!(trailers.is_none(), "a frame after the trailers");
        match frame.into_data() {
            Ok(d) => data.push(d),
            Err(frame) => trailers = Some(frame.into_trailers().unwrap()),
        }
    }
    assert!(body.is_end_stream(), "ended but not is_end_stream");
    Ok((data, trailers))
}

fn concat(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.iter().copied()).collect()
}

/// Compressible text, different enough that the codecs have work to do.
fn text(len: usize) -> Vec<u8> {
    let words = [
        "gateway ",
        "route ",
        "upstream ",
        "plugin ",
        "header ",
        "body\n",
    ];
    let mut seed = 7u64;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(seed >> 33) as usize % words.len()].as_bytes());
    }
    out.truncate(len);
    out
}

/// Incompressible bytes: the output is as large as the input.
fn noise(len: usize) -> Vec<u8> {
    let mut seed = 1u64;
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect()
}

/// A streaming decoder from the codec crate, independent of [`Decoder`].
struct Reference {
    decoder: Decompressor,
    done: bool,
}

impl Reference {
    fn new(codec: Codec) -> Self {
        Self {
            decoder: Decompressor::new(codec),
            done: false,
        }
    }

    /// Decodes `input`, all of it, and returns what came out.
    fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        let mut input = PartialBuffer::new(input);
        let mut out = Vec::new();
        let mut buf = vec![0; 4096];
        loop {
            let mut write = WriteBuffer::new_initialized(&mut buf);
            if !input.unwritten().is_empty() && !self.done {
                self.done = self.decoder.get().decode(&mut input, &mut write).unwrap();
                out.extend_from_slice(write.written());
            } else {
                self.done |= self.decoder.drain(&mut write).unwrap();
                let full = write.has_no_spare_space();
                out.extend_from_slice(write.written());
                if !full {
                    return out;
                }
            }
        }
    }
}

fn decompress(codec: Codec, input: &[u8]) -> Vec<u8> {
    let mut reference = Reference::new(codec);
    let out = reference.feed(input);
    assert!(reference.done, "{codec} stream not finished");
    out
}

fn compress(codec: Codec, input: &[u8]) -> Vec<u8> {
    let mut encoder = Compressor::new(codec, Levels::default());
    let mut input = PartialBuffer::new(input);
    let mut out = Vec::new();
    let mut buf = vec![0; 4096];
    while !input.unwritten().is_empty() {
        let mut write = WriteBuffer::new_initialized(&mut buf);
        encoder.get().encode(&mut input, &mut write).unwrap();
        out.extend_from_slice(write.written());
    }
    loop {
        let mut write = WriteBuffer::new_initialized(&mut buf);
        let done = encoder.get().finish(&mut write).unwrap();
        out.extend_from_slice(write.written());
        if done {
            return out;
        }
    }
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

fn codec_error(e: &Error) -> &CodecError {
    e.downcast_ref::<CodecError>()
        .unwrap_or_else(|| panic!("not a codec error: {e}"))
}

#[test]
fn bodies_are_send_sync_and_unpin() {
    fn check<T: Send + Sync + Unpin>() {}
    check::<Encoder<Frames>>();
    check::<Decoder<Frames>>();
}

#[tokio::test]
async fn round_trips_a_multi_frame_body_with_trailers() {
    let chunks = [
        b"hello, ".to_vec(),
        Vec::new(),
        text(10_000),
        b"!".to_vec(),
        text(50_000),
    ];
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let plain: Vec<u8> = chunks.concat();
    for codec in Codec::ALL {
        let body = Frames::data(&refs).with_trailers(trailers());
        let (frames, got_trailers) = collect(Encoder::new(body, codec, Levels::default()))
            .await
            .unwrap();
        assert!(frames.iter().all(|f| !f.is_empty() && f.len() <= FRAME));
        assert_eq!(got_trailers, Some(trailers()), "{codec}");
        let compressed = concat(&frames);
        assert!(
            compressed.len() < plain.len() / 2,
            "{codec} did not compress"
        );
        assert_eq!(decompress(codec, &compressed), plain, "{codec}");
    }
}

#[tokio::test]
async fn round_trips_a_one_mebibyte_frame() {
    for input in [noise(1 << 20), text(1 << 20)] {
        for codec in Codec::ALL {
            let body = Frames::data(&[&input]);
            let (frames, _) = collect(Encoder::new(body, codec, Levels::default()))
                .await
                .unwrap();
            assert!(frames.iter().all(|f| !f.is_empty() && f.len() <= FRAME));
            assert_eq!(decompress(codec, &concat(&frames)), input, "{codec}");
        }
    }
}

#[tokio::test]
async fn an_empty_body_is_a_valid_empty_stream() {
    for codec in Codec::ALL {
        let (frames, trailers) = collect(Encoder::new(Frames::data(&[]), codec, Levels::default()))
            .await
            .unwrap();
        assert!(trailers.is_none());
        let compressed = concat(&frames);
        assert!(!compressed.is_empty(), "{codec}");
        assert_eq!(decompress(codec, &compressed), b"", "{codec}");
    }
}

#[tokio::test]
async fn flushes_what_arrived_when_the_source_waits() {
    let first = text(3000);
    let second = b"data: second event\n\n".to_vec();
    for codec in Codec::ALL {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut encoder = Encoder::new(Channel(rx), codec, Levels::default());
        let mut reference = Reference::new(codec);

        tx.send(Frame::data(Bytes::from(first.clone()))).unwrap();
        let mut decoded = Vec::new();
        while decoded.len() < first.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), encoder.frame())
                .await
                .unwrap_or_else(|_| panic!("{codec}: nothing sent while the source waits"))
                .unwrap()
                .unwrap();
            decoded.extend(reference.feed(&frame.into_data().unwrap()));
        }
        assert_eq!(decoded, first, "{codec}");
        assert!(!encoder.is_end_stream());

        tx.send(Frame::data(Bytes::from(second.clone()))).unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), encoder.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            reference.feed(&frame.into_data().unwrap()),
            second,
            "{codec}"
        );

        drop(tx);
        let (rest, _) = collect(encoder).await.unwrap();
        assert_eq!(reference.feed(&concat(&rest)), b"", "{codec}");
        assert!(reference.done, "{codec} stream not finished");
    }
}

#[tokio::test]
async fn does_not_flush_while_the_source_has_data_ready() {
    // Many small frames ready at once come out as few frames, not one per input frame.
    let chunk = text(100);
    let chunks: Vec<&[u8]> = (0..200).map(|_| chunk.as_slice()).collect();
    let (frames, _) = collect(Encoder::new(
        Frames::data(&chunks),
        Codec::Gzip,
        Levels::default(),
    ))
    .await
    .unwrap();
    assert!(frames.len() <= 2, "{} frames", frames.len());
}

#[tokio::test]
async fn tally_is_called_once_with_bytes_in_and_out() {
    for codec in Codec::ALL {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let input = [text(5000), text(70_000)];
        let body =
            Frames::data(&[input[0].as_slice(), input[1].as_slice()]).with_trailers(trailers());
        let encoder = Encoder::new(body, codec, Levels::default())
            .with_tally(Box::new(move |i, o| seen.lock().unwrap().push((i, o))));
        let (frames, _) = collect(encoder).await.unwrap();
        let out = concat(&frames).len() as u64;
        assert_eq!(*calls.lock().unwrap(), [(75_000, out)], "{codec}");
    }
}

#[tokio::test]
async fn tally_is_not_called_when_dropped_early_or_failed() {
    let calls = Arc::new(Mutex::new(0));
    let tally = |calls: &Arc<Mutex<i32>>| -> Tally {
        let calls = calls.clone();
        Box::new(move |_, _| *calls.lock().unwrap() += 1)
    };
    let input = noise(200_000);
    let mut encoder = Encoder::new(Frames::data(&[&input]), Codec::Gzip, Levels::default())
        .with_tally(tally(&calls));
    encoder.frame().await.unwrap().unwrap();
    drop(encoder);

    let mut body = Frames::data(&[b"some data"]);
    body.0.push_back(Err("upstream reset".into()));
    let encoder = Encoder::new(body, Codec::Gzip, Levels::default()).with_tally(tally(&calls));
    let err = collect(encoder).await.unwrap_err();
    assert_eq!(err.to_string(), "upstream reset");
    assert_eq!(*calls.lock().unwrap(), 0);
}

#[tokio::test]
async fn is_end_stream_only_once_everything_was_emitted() {
    let mut encoder = Encoder::new(
        Frames::data(&[b"abc"]).with_trailers(trailers()),
        Codec::Zstd,
        Levels::default(),
    );
    assert!(!encoder.is_end_stream());
    let data = encoder.frame().await.unwrap().unwrap();
    assert!(data.is_data());
    assert!(!encoder.is_end_stream(), "trailers still to come");
    let trailers = encoder.frame().await.unwrap().unwrap();
    assert!(trailers.is_trailers());
    assert!(encoder.is_end_stream());
    assert!(encoder.frame().await.is_none());

    let mut encoder = Encoder::new(Frames::data(&[b"abc"]), Codec::Zstd, Levels::default());
    encoder.frame().await.unwrap().unwrap();
    assert!(
        encoder.is_end_stream(),
        "the last data frame ends the stream"
    );
}

#[tokio::test]
async fn levels_out_of_range_are_clamped() {
    let levels = Levels {
        gzip: 99,
        brotli: 99,
        zstd: 999,
    };
    let input = text(20_000);
    for codec in Codec::ALL {
        let (frames, _) = collect(Encoder::new(Frames::data(&[&input]), codec, levels))
            .await
            .unwrap();
        assert_eq!(decompress(codec, &concat(&frames)), input, "{codec}");
    }
}

#[tokio::test]
async fn decoder_round_trips_per_codec() {
    let plain = text(300_000);
    for codec in Codec::ALL {
        let compressed = compress(codec, &plain);
        let chunks: Vec<&[u8]> = compressed.chunks(1000).collect();
        let body = Frames::data(&chunks).with_trailers(trailers());
        let (frames, got_trailers) = collect(Decoder::new(body, codec, 1 << 20)).await.unwrap();
        assert!(frames.iter().all(|f| !f.is_empty() && f.len() <= FRAME));
        assert_eq!(concat(&frames), plain, "{codec}");
        assert_eq!(got_trailers, Some(trailers()));
    }
}

#[tokio::test]
async fn decoder_handles_a_highly_compressed_frame() {
    // One small frame that decodes to much more than one output frame.
    let plain = vec![b'a'; 1 << 20];
    for codec in Codec::ALL {
        let compressed = compress(codec, &plain);
        let body = Frames::data(&[&compressed]);
        let (frames, _) = collect(Decoder::new(body, codec, 1 << 20)).await.unwrap();
        assert!(frames.len() >= 32, "{codec}");
        assert_eq!(concat(&frames), plain, "{codec}");
    }
}

#[tokio::test]
async fn decoder_stops_a_decompression_bomb() {
    let zeros = vec![0; 10 << 20];
    for codec in Codec::ALL {
        let bomb = compress(codec, &zeros);
        assert!(bomb.len() < 128 << 10, "{codec}: {} bytes", bomb.len());
        let decoder = Decoder::new(Frames::data(&[&bomb]), codec, 1 << 20);
        let err = collect(decoder).await.unwrap_err();
        assert!(
            matches!(codec_error(&err), CodecError::TooLarge(limit) if *limit == 1 << 20),
            "{codec}: {err}"
        );
        assert_eq!(
            err.to_string(),
            "decompressed body larger than 1048576 bytes"
        );
    }
}

#[tokio::test]
async fn decoder_allows_exactly_the_limit() {
    let plain = text(100_000);
    for codec in Codec::ALL {
        let compressed = compress(codec, &plain);
        let body = Frames::data(&[&compressed]);
        let (frames, _) = collect(Decoder::new(body, codec, 100_000)).await.unwrap();
        assert_eq!(concat(&frames), plain);
    }
}

#[tokio::test]
async fn decoder_rejects_corrupt_input() {
    for codec in Codec::ALL {
        let body = Frames::data(&[&[0xff; 64]]);
        let err = collect(Decoder::new(body, codec, 1 << 20))
            .await
            .unwrap_err();
        match codec_error(&err) {
            CodecError::Io { codec: token, .. } => assert_eq!(*token, codec.token()),
            other => panic!("{codec}: {other}"),
        }
        assert!(
            err.to_string()
                .starts_with(&format!("{codec} stream failed: "))
        );
    }
}

#[tokio::test]
async fn decoder_rejects_truncated_input() {
    let plain = text(50_000);
    for codec in Codec::ALL {
        let compressed = compress(codec, &plain);
        let cut = &compressed[..compressed.len() - 4];
        let err = collect(Decoder::new(Frames::data(&[cut]), codec, 1 << 20))
            .await
            .unwrap_err();
        assert!(
            matches!(codec_error(&err), CodecError::Io { .. }),
            "{codec}: {err}"
        );
    }
}

#[tokio::test]
async fn decoder_reads_concatenated_gzip_members_and_zstd_frames() {
    for codec in [Codec::Gzip, Codec::Zstd] {
        let mut compressed = compress(codec, b"first ");
        compressed.extend(compress(codec, b"second"));
        let (frames, _) = collect(Decoder::new(Frames::data(&[&compressed]), codec, 1 << 20))
            .await
            .unwrap();
        assert_eq!(concat(&frames), b"first second", "{codec}");
    }
}

#[tokio::test]
async fn decoder_rejects_data_after_a_brotli_stream() {
    let mut compressed = compress(Codec::Brotli, b"first");
    compressed.extend_from_slice(b"junk");
    let err = collect(Decoder::new(
        Frames::data(&[&compressed]),
        Codec::Brotli,
        1 << 20,
    ))
    .await
    .unwrap_err();
    assert!(matches!(codec_error(&err), CodecError::Io { .. }), "{err}");
}

#[tokio::test]
async fn decoder_passes_an_empty_body() {
    for codec in Codec::ALL {
        let (frames, _) = collect(Decoder::new(Frames::data(&[b""]), codec, 10))
            .await
            .unwrap();
        assert!(frames.is_empty());
    }
}

#[tokio::test]
async fn decoder_streams_what_arrived() {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut decoder = Decoder::new(Channel(rx), Codec::Gzip, 1 << 20);
    let compressed = compress(Codec::Gzip, &text(10_000));
    let (head, tail) = compressed.split_at(compressed.len() / 2);
    tx.send(Frame::data(Bytes::copy_from_slice(head))).unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), decoder.frame())
        .await
        .expect("decoded data held back")
        .unwrap()
        .unwrap();
    let mut decoded = frame.into_data().unwrap().to_vec();
    tx.send(Frame::data(Bytes::copy_from_slice(tail))).unwrap();
    drop(tx);
    let (rest, _) = collect(decoder).await.unwrap();
    decoded.extend(concat(&rest));
    assert_eq!(decoded, text(10_000));
}

#[test]
fn a_reused_gzip_compressor_starts_each_response_afresh() {
    // One thread: the second and third streams run on the compressor the first gave back,
    // including one given back mid-stream.
    let mut abandoned = Compressor::new(Codec::Gzip, Levels::default());
    let mut input = PartialBuffer::new(&b"never finished"[..]);
    let mut buf = vec![0; 64];
    let mut write = WriteBuffer::new_initialized(&mut buf);
    abandoned.get().encode(&mut input, &mut write).unwrap();
    drop(abandoned);
    for plain in [text(50_000), b"second".repeat(7), noise(3000)] {
        assert_eq!(
            decompress(Codec::Gzip, &compress(Codec::Gzip, &plain)),
            plain
        );
    }
}
