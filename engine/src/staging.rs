//! The unflushed tail of a segment, in aligned DMA buffers.
//!
//! O_DIRECT writes must start and end on `DIRECT_IO_ALIGNMENT` boundaries, but batches
//! end anywhere. So the staging area always starts at an aligned file position. A flush
//! cycle takes the staged bytes in one of two ways:
//! - all of them (`take`): the partial last page (durable bytes followed by zeros) is
//!   copied into a fresh staging area and rewritten, with the next batches after it, by
//!   the next cycle. The rewrite puts the same bytes where they already were, so a torn
//!   rewrite cannot damage durable data;
//! - a front of whole chunks (`take_front`), when much is staged: the chunks end on an
//!   aligned position, so nothing is carried over, and the rest stays staged for the next
//!   cycle. Each chunk remembers the last batch that ends in it, so the cycle knows which
//!   batches it makes durable.
//!
//! Invariants: `start` is aligned; `prefix <= len`; `prefix < DIRECT_IO_ALIGNMENT`; every
//! chunk but the last is full; chunk sizes are multiples of the alignment; batch ends are
//! marked in file order.

use glommio::io::{DmaBuffer, DmaFile};

use crate::file::align_up;
use crate::limits::{DIRECT_IO_ALIGNMENT, STAGING_CHUNK_BYTES, STAGING_CHUNK_BYTES_MIN};
use crate::types::Offset;

/// One aligned write a flush cycle must issue.
#[derive(Debug)]
pub struct PendingWrite {
    pub position: u64,
    pub buffer: DmaBuffer,
}

/// Where a staged batch ends: its file position and the offset after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEnd {
    pub position: u64,
    pub next_offset: Offset,
}

/// The front of the staged bytes, taken by `Staging::take_front`.
#[derive(Debug)]
pub struct Front {
    pub writes: Vec<PendingWrite>,
    /// File position just past the last write: aligned, and at or past `end`.
    pub written_to: u64,
    /// The last batch wholly inside the front: what the front makes durable.
    pub end: BatchEnd,
    /// Bytes taken that were not already durable (the carried prefix excluded).
    pub new_bytes: usize,
}

#[derive(Debug)]
struct Chunk {
    buffer: DmaBuffer,
    /// The last batch that ends inside this chunk (or exactly at its end), if any.
    last_end: Option<BatchEnd>,
}

/// The staged tail of one segment.
#[derive(Debug)]
pub struct Staging {
    /// File position of the first staged byte; aligned.
    start: u64,
    chunks: Vec<Chunk>,
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

    /// Bytes staged beyond the carried prefix.
    pub fn new_bytes(&self) -> usize {
        self.len - self.prefix
    }

    /// Records that a batch ends at the current end, with `next_offset` after it.
    pub fn mark_batch_end(&mut self, next_offset: Offset) {
        let position = self.end();
        let chunk = self.chunks.last_mut().expect("a batch was just pushed");
        if let Some(previous) = chunk.last_end {
            assert!(
                previous.position < position && previous.next_offset < next_offset,
                "batch ends are marked in file order"
            );
        }
        chunk.last_end = Some(BatchEnd {
            position,
            next_offset,
        });
    }

    /// Copies `bytes` in, growing the chunk list as needed.
    pub fn push(&mut self, file: &DmaFile, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self
                .chunks
                .last()
                .map_or(0, |c| c.buffer.len() - self.last_filled);
            if room == 0 {
                let size = self.next_chunk_size(bytes.len());
                self.chunks.push(Chunk {
                    buffer: file.alloc_dma_buffer(size),
                    last_end: None,
                });
                self.last_filled = 0;
                continue;
            }
            let n = room.min(bytes.len());
            let chunk = &mut self.chunks.last_mut().expect("a chunk with room").buffer;
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
            .map_or(STAGING_CHUNK_BYTES_MIN, |c| c.buffer.len() * 2);
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
        for (
            i,
            Chunk {
                buffer: mut chunk, ..
            },
        ) in std::mem::take(&mut self.chunks).into_iter().enumerate()
        {
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

    /// Takes whole chunks from the front, at most `max_bytes` of them, always leaving the
    /// last chunk staged; the front ends after the last batch that ends in it. `None` if
    /// no batch ends in such a front (a batch larger than `max_bytes`): take it all then.
    pub fn take_front(&mut self, max_bytes: usize) -> Option<Front> {
        // Chunks after the one holding the last batch end carry only its successor's
        // first bytes: they wait, so the front ends as close to that end as chunks allow.
        let (mut bytes, mut count, mut end) = (0, 0, None);
        for (i, chunk) in self.chunks[..self.chunks.len().saturating_sub(1)]
            .iter()
            .enumerate()
        {
            bytes += chunk.buffer.len();
            if bytes > max_bytes {
                break;
            }
            if let Some(e) = chunk.last_end {
                (count, end) = (i + 1, Some(e));
            }
        }
        let end = end?;
        let mut writes = Vec::with_capacity(count);
        let mut position = self.start;
        for Chunk { buffer, .. } in self.chunks.drain(..count) {
            let len = buffer.len();
            writes.push(PendingWrite { position, buffer });
            position += len as u64;
        }
        assert!(end.position <= position, "the front holds its last batch");
        let taken = (position - self.start) as usize;
        let new_bytes = taken - self.prefix;
        self.start = position;
        self.len -= taken;
        self.prefix = 0;
        assert!(!self.chunks.is_empty(), "the last chunk stays staged");
        Some(Front {
            writes,
            written_to: position,
            end,
            new_bytes,
        })
    }

    /// Copies staged bytes in the file range [from, to), which must lie inside the
    /// staging area.
    fn copy_range(&self, from: u64, to: u64) -> Vec<u8> {
        assert!(from >= self.start && to <= self.end() && from <= to);
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut chunk_start = self.start;
        for (i, Chunk { buffer: chunk, .. }) in self.chunks.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The file image a sequence of takes writes, starting at file position `base`.
    struct Image {
        base: u64,
        bytes: Vec<u8>,
    }

    impl Image {
        fn apply(&mut self, writes: &[PendingWrite]) -> u64 {
            let mut end = 0;
            for w in writes {
                assert_eq!(w.position % DIRECT_IO_ALIGNMENT, 0, "aligned position");
                assert_eq!(
                    w.buffer.len() as u64 % DIRECT_IO_ALIGNMENT,
                    0,
                    "aligned length"
                );
                let at = (w.position - self.base) as usize;
                let until = at + w.buffer.len();
                if self.bytes.len() < until {
                    self.bytes.resize(until, 0);
                }
                self.bytes[at..until].copy_from_slice(w.buffer.as_bytes());
                end = end.max(w.position + w.buffer.len() as u64);
            }
            end
        }
    }

    /// Random pushes, fronts and whole takes: the writes reproduce the pushed bytes at
    /// their positions, and each front ends after the last batch it holds whole.
    #[test]
    fn fronts_and_whole_takes_write_every_pushed_byte_where_it_belongs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("staging");
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move {
                let file = glommio::io::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .dma_open(&path)
                    .await
                    .unwrap();
                for seed in 0..40u64 {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let base = rng.gen_range(0..8u64) * DIRECT_IO_ALIGNMENT;
                    let prefix: Vec<u8> = (0..rng.gen_range(0..DIRECT_IO_ALIGNMENT as usize))
                        .map(|_| rng.gen())
                        .collect();
                    let mut staging = Staging::new(&file, base, &prefix);
                    let mut image = Image {
                        base,
                        bytes: Vec::new(),
                    };
                    let mut model = prefix.clone();
                    let mut ends: Vec<BatchEnd> = Vec::new();
                    let mut durable = base + prefix.len() as u64;
                    let mut next_offset = Offset(0);
                    for _ in 0..rng.gen_range(1..40) {
                        match rng.gen_range(0..10) {
                            0..=6 => {
                                let len = rng.gen_range(61..400_000);
                                let mut batch = vec![0u8; len];
                                rng.fill(&mut batch[..]);
                                let new_before = staging.new_bytes();
                                staging.push(&file, &batch);
                                next_offset = Offset(next_offset.0 + rng.gen_range(1..5));
                                staging.mark_batch_end(next_offset);
                                model.extend_from_slice(&batch);
                                ends.push(BatchEnd {
                                    position: base + model.len() as u64,
                                    next_offset,
                                });
                                assert_eq!(staging.new_bytes(), new_before + len);
                                assert_eq!(staging.end(), base + model.len() as u64);
                            }
                            7..=8 => {
                                let max = rng.gen_range(1..5) * STAGING_CHUNK_BYTES;
                                let (end_before, new_before) = (staging.end(), staging.new_bytes());
                                let Some(front) = staging.take_front(max) else {
                                    continue;
                                };
                                let written_to = image.apply(&front.writes);
                                let taken: usize =
                                    front.writes.iter().map(|w| w.buffer.len()).sum();
                                assert!(taken <= max, "a front is at most {max} bytes");
                                let expected = ends
                                    .iter()
                                    .rev()
                                    .find(|e| e.position <= written_to)
                                    .copied();
                                assert_eq!(Some(front.end), expected, "seed {seed}");
                                assert!(front.end.position > durable, "a front makes progress");
                                assert_eq!(staging.end(), end_before, "the end stays");
                                assert_eq!(staging.new_bytes(), new_before - front.new_bytes);
                                assert_eq!(
                                    staging.start, written_to,
                                    "the rest starts after the front"
                                );
                                durable = front.end.position;
                            }
                            _ => {
                                let end = staging.end();
                                image.apply(&staging.take(&file));
                                assert!(!staging.has_new_bytes());
                                assert_eq!(staging.end(), end);
                                durable = end;
                            }
                        }
                    }
                    let end = staging.end();
                    image.apply(&staging.take(&file));
                    assert_eq!(end, base + model.len() as u64);
                    assert!(
                        image.bytes[..model.len()] == model[..],
                        "seed {seed}: bytes differ"
                    );
                    assert!(
                        image.bytes[model.len()..].iter().all(|&b| b == 0),
                        "seed {seed}: padding is zeros"
                    );
                }
                file.close().await.unwrap();
            });
    }
}
