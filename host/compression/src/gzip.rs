//! gzip compressors reused across responses on the same thread.
//!
//! Setting up a deflate stream allocates and clears its window and hash tables, several hundred
//! KiB: for a 1 KiB response that was most of the gzip cost (and evicted the CPU's caches on
//! every request). A compressor that finished a response is reset and kept for the next one on
//! the same worker thread; resetting clears only its hash table.

use std::cell::RefCell;
use std::io;

use compression_codecs::EncodeV2;
use compression_core::util::{PartialBuffer, WriteBuffer};
use flate2::{Compress, Compression, FlushCompress, Status};

/// Compressors kept per thread (per level), at most.
const KEPT: usize = 8;

thread_local! {
    static IDLE: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// A gzip stream (header and trailer written by the deflate engine itself) on a pooled
/// compressor.
pub(crate) struct PooledGzip {
    level: u32,
    compress: Option<Compress>,
    /// Whether nothing was fed since the last flush (a flush would only add an empty block).
    flushed: bool,
}

impl PooledGzip {
    pub(crate) fn new(level: u32) -> Self {
        let level = level.min(9);
        let reused = IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let at = idle.iter().rposition(|(l, _)| *l == level)?;
            Some(idle.swap_remove(at).1)
        });
        let compress = reused.unwrap_or_else(|| Compress::new_gzip(Compression::new(level), 15));
        Self {
            level,
            compress: Some(compress),
            flushed: true,
        }
    }

    fn run(
        &mut self,
        input: &mut PartialBuffer<&[u8]>,
        output: &mut WriteBuffer<'_>,
        flush: FlushCompress,
    ) -> io::Result<Status> {
        let compress = self
            .compress
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream used after it was given back"))?;
        let (read, written) = (compress.total_in(), compress.total_out());
        let status = compress
            .compress(input.unwritten(), output.initialize_unwritten(), flush)
            .map_err(io::Error::other)?;
        input.advance(usize::try_from(compress.total_in() - read).unwrap_or(usize::MAX));
        output.advance(usize::try_from(compress.total_out() - written).unwrap_or(usize::MAX));
        Ok(status)
    }
}

impl Drop for PooledGzip {
    fn drop(&mut self) {
        if let Some(mut compress) = self.compress.take() {
            compress.reset();
            let level = self.level;
            // A thread being torn down has no pool left: the compressor is just dropped.
            let _ = IDLE.try_with(|idle| {
                let mut idle = idle.borrow_mut();
                if idle.len() < KEPT {
                    idle.push((level, compress));
                }
            });
        }
    }
}

impl EncodeV2 for PooledGzip {
    fn encode(
        &mut self,
        input: &mut PartialBuffer<&[u8]>,
        output: &mut WriteBuffer<'_>,
    ) -> io::Result<()> {
        self.flushed = false;
        match self.run(input, output, FlushCompress::None)? {
            Status::Ok | Status::BufError => Ok(()),
            Status::StreamEnd => Err(io::Error::other("gzip stream ended while encoding")),
        }
    }

    fn flush(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool> {
        if self.flushed {
            return Ok(true);
        }
        self.run(
            &mut PartialBuffer::new(&[][..]),
            output,
            FlushCompress::Sync,
        )?;
        // Done once the sync block fitted: the engine stops short of the end of `output` then.
        let done = !output.has_no_spare_space();
        self.flushed = done;
        Ok(done)
    }

    fn finish(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool> {
        Ok(matches!(
            self.run(
                &mut PartialBuffer::new(&[][..]),
                output,
                FlushCompress::Finish
            )?,
            Status::StreamEnd
        ))
    }
}
