//! The unflushed tail of the active segment, in aligned DMA buffers.
//!
//! O_DIRECT writes must start and end on `DIRECT_IO_ALIGNMENT` boundaries, but batches
//! end anywhere. So the staging area always starts at an aligned file position: when a
//! flush cycle takes the staged bytes, the partial last page (durable bytes followed by
//! zeros) is copied into a fresh staging area and rewritten, with the next batches after
//! it, by the next cycle. The rewrite puts the same bytes where they already were, so a
//! torn rewrite cannot damage durable data.
//!
//! Invariants: `start` is aligned; `prefix <= len`; `prefix < DIRECT_IO_ALIGNMENT`; every
//! chunk but the last is full; chunk sizes are multiples of the alignment.

use glommio::io::{DmaBuffer, DmaFile};

use crate::file::align_up;
use crate::limits::{DIRECT_IO_ALIGNMENT, STAGING_CHUNK_BYTES, STAGING_CHUNK_BYTES_MIN};

/// One aligned write a flush cycle must issue.
#[derive(Debug)]
pub struct PendingWrite {
    pub position: u64,
    pub buffer: DmaBuffer,
}

/// The staged tail of one segment.
#[derive(Debug)]
pub struct Staging {
    /// File position of the first staged byte; aligned.
    start: u64,
    chunks: Vec<DmaBuffer>,
    /// Bytes filled in the last chunk.
    last_filled: usize,
    /// Total bytes staged from `start`, including the carried-over prefix.
    len: usize,
    /// Bytes at the front that were already durable (the carried partial page).
    prefix: usize,
}

impl Staging {
    /// An empty staging area at aligned `start`, beginning with `prefix`: the bytes from
    /// `start` to the log's current end, already on disk.
    pub fn new(file: &DmaFile, start: u64, prefix: &[u8]) -> Staging {
        assert_eq!(start % DIRECT_IO_ALIGNMENT, 0);
        assert!((prefix.len() as u64) < DIRECT_IO_ALIGNMENT);
        let mut staging = Staging {
            start,
            chunks: Vec::new(),
            last_filled: 0,
            len: 0,
            prefix: prefix.len(),
        };
        if !prefix.is_empty() {
            staging.push(file, prefix);
        }
        staging.prefix = prefix.len();
        staging
    }

    /// File position just past the last staged byte: the segment's logical size.
    pub fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    /// Whether anything beyond the carried prefix waits to be written.
    pub fn has_new_bytes(&self) -> bool {
        self.len > self.prefix
    }

    /// Copies `bytes` in, growing the chunk list as needed.
    pub fn push(&mut self, file: &DmaFile, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.chunks.last().map_or(0, |c| c.len() - self.last_filled);
            if room == 0 {
                let size = self.next_chunk_size(bytes.len());
                self.chunks.push(file.alloc_dma_buffer(size));
                self.last_filled = 0;
                continue;
            }
            let n = room.min(bytes.len());
            let chunk = self.chunks.last_mut().expect("a chunk with room");
            chunk.as_bytes_mut()[self.last_filled..self.last_filled + n]
                .copy_from_slice(&bytes[..n]);
            self.last_filled += n;
            self.len += n;
            bytes = &bytes[n..];
        }
    }

    fn next_chunk_size(&self, wanted: usize) -> usize {
        let grown = self
            .chunks
            .last()
            .map_or(STAGING_CHUNK_BYTES_MIN, |c| c.len() * 2);
        let wanted = align_up(wanted as u64) as usize;
        grown
            .max(wanted.min(STAGING_CHUNK_BYTES))
            .clamp(STAGING_CHUNK_BYTES_MIN, STAGING_CHUNK_BYTES)
    }

    /// Seals what is staged into aligned writes, zero-padded, and resets this area to
    /// start at the last partial page, carrying its bytes over (see the module doc).
    pub fn take(&mut self, file: &DmaFile) -> Vec<PendingWrite> {
        let end = self.end();
        let carry_start = end - end % DIRECT_IO_ALIGNMENT;
        let carry = self.copy_range(carry_start, end);
        let mut writes = Vec::with_capacity(self.chunks.len());
        let mut position = self.start;
        let count = self.chunks.len();
        for (i, mut chunk) in std::mem::take(&mut self.chunks).into_iter().enumerate() {
            let filled = if i + 1 == count {
                self.last_filled
            } else {
                chunk.len()
            };
            let padded = align_up(filled as u64) as usize;
            chunk.as_bytes_mut()[filled..padded].fill(0);
            chunk.trim_to_size(padded);
            writes.push(PendingWrite {
                position,
                buffer: chunk,
            });
            position += padded as u64;
        }
        *self = Staging::new(file, carry_start, &carry);
        writes
    }

    /// Copies staged bytes in the file range [from, to), which must lie inside the
    /// staging area.
    fn copy_range(&self, from: u64, to: u64) -> Vec<u8> {
        assert!(from >= self.start && to <= self.end() && from <= to);
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut chunk_start = self.start;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let filled = if i + 1 == self.chunks.len() {
                self.last_filled
            } else {
                chunk.len()
            };
            let chunk_end = chunk_start + filled as u64;
            let lo = from.max(chunk_start);
            let hi = to.min(chunk_end);
            if lo < hi {
                out.extend_from_slice(
                    &chunk.as_bytes()[(lo - chunk_start) as usize..(hi - chunk_start) as usize],
                );
            }
            chunk_start = chunk_end;
        }
        assert_eq!(out.len() as u64, to - from);
        out
    }
}
