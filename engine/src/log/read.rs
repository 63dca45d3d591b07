//! The read path: batches from an offset, as zero-copy file ranges or cached bytes, and
//! lookups by timestamp.
//!
//! A read returns whole batches starting with the batch that *contains* the fetch offset
//! (a consumer skips the records before it, as Kafka clients do), never past the high
//! watermark. Data at the tail comes from the tail cache; older data comes back as a
//! range of a segment file for `sendfile`/`splice`. Like Kafka, a file range is cut at
//! `max_bytes` and may end inside a batch (clients drop a trailing partial batch), but it
//! always holds the whole first batch, however large (KIP-74). A read never spans two
//! segments; the next fetch continues in the next one.

use std::sync::Arc;

use bytes::Bytes;

use super::{scan, PartitionLog};
use crate::batch;
use crate::error::{EngineError, Result};
use crate::file;
use crate::types::{Offset, Timestamp};

/// A piece of a read result, ready to be written to a socket in order.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    /// `len` bytes of a segment file from `position`, to be sent with `sendfile`.
    File {
        file: Arc<std::fs::File>,
        position: u64,
        len: u64,
    },
    /// Whole batches from the tail cache.
    Cached(Bytes),
}

impl ReadChunk {
    pub fn len(&self) -> u64 {
        match self {
            ReadChunk::File { len, .. } => *len,
            ReadChunk::Cached(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the chunk's bytes to `out`, reading a file range with `pread`: a copy,
    /// for tools and tests that look at the bytes rather than send them.
    pub fn copy_to(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            ReadChunk::File {
                file,
                position,
                len,
            } => {
                let start = out.len();
                out.resize(start + *len as usize, 0);
                std::os::unix::fs::FileExt::read_exact_at(&**file, &mut out[start..], *position)
            }
            ReadChunk::Cached(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

/// What a read returns: the data and the partition's offsets when it was read.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub chunks: Vec<ReadChunk>,
    pub log_start: Offset,
    pub high_watermark: Offset,
    pub log_end: Offset,
}

impl ReadResult {
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(ReadChunk::len).sum()
    }
}

impl PartitionLog {
    /// `read`, and when that finds nothing at `offset` (the reader is caught up), waits
    /// up to `wait` for data there and reads again: a long poll's wait and read in one
    /// call. Errors (offset out of range, a failed partition) return at once.
    pub async fn read_or_wait(
        &self,
        offset: Offset,
        max_bytes: usize,
        wait: std::time::Duration,
    ) -> Result<ReadResult> {
        let first = self.read(offset, max_bytes).await?;
        if first.bytes() > 0 || wait.is_zero() {
            return Ok(first);
        }
        drop(first);
        // Read again even after a timeout: the watermarks may have moved meanwhile.
        self.wait_for_data(offset, wait).await;
        self.read(offset, max_bytes).await
    }

    /// Reads batches from `offset`, up to `max_bytes` (at least one whole batch).
    /// `offset` outside [log_start, log_end] is `OffsetOutOfRange`; at or past the high
    /// watermark the result is empty.
    pub async fn read(&self, offset: Offset, max_bytes: usize) -> Result<ReadResult> {
        let inner = &self.0;
        let plan = {
            let st = inner.state.borrow();
            st.usable(&inner.tp)?;
            let mut result = ReadResult {
                chunks: Vec::new(),
                log_start: st.log_start,
                high_watermark: st.high_watermark,
                log_end: st.log_end,
            };
            if offset < st.log_start || offset > st.log_end {
                return Err(EngineError::OffsetOutOfRange {
                    tp: inner.tp.clone(),
                    offset,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            if offset >= st.high_watermark {
                return Ok(result);
            }
            if st.cache.covers(offset) {
                let batches = st.cache.read(offset, st.high_watermark, max_bytes);
                result.chunks = batches.into_iter().map(ReadChunk::Cached).collect();
                return Ok(result);
            }
            let segment = st.segment_holding(offset);
            // Below the high watermark every byte up to `durable` is on disk and visible.
            let entry = segment.index.lookup(offset);
            let plan = (
                segment.file.clone(),
                segment.log_path.clone(),
                segment.reader.clone(),
                entry.position,
                segment.durable,
            );
            (result, plan)
        };
        let (mut result, (dma, path, reader, from, bound)) = plan;
        let Some((position, header)) =
            scan::find_batch(&dma, &path, u64::from(from), bound, offset).await?
        else {
            // The offset lies in a later segment (this one ends before it): read from there.
            return self.read_next_segment(offset, max_bytes, result).await;
        };
        let len = (bound - position).min((max_bytes as u64).max(header.size as u64));
        assert!(
            len >= header.size as u64,
            "a read holds its whole first batch"
        );
        result.chunks.push(ReadChunk::File {
            file: reader,
            position,
            len,
        });
        Ok(result)
    }

    /// A fetch offset past the end of its segment's data (the segment's last batches were
    /// removed by compaction, or the offset is the next segment's base): continue at the
    /// next segment's first batch.
    async fn read_next_segment(
        &self,
        offset: Offset,
        max_bytes: usize,
        result: ReadResult,
    ) -> Result<ReadResult> {
        let next = {
            let st = self.0.state.borrow();
            st.segments
                .range(offset.next()..)
                .next()
                .map(|(base, _)| *base)
        };
        match next {
            Some(base) if base < result.high_watermark => {
                Box::pin(self.read(base, max_bytes)).await
            }
            _ => Ok(result),
        }
    }

    /// The first offset whose record timestamp is at least `target`, with the timestamp of
    /// the batch it was found in; `None` if every record is older. For compressed batches
    /// the answer is the batch's base offset (never later than the exact record).
    pub async fn offset_for_timestamp(
        &self,
        target: Timestamp,
    ) -> Result<Option<(Offset, Timestamp)>> {
        let inner = &self.0;
        let (plan, log_start, high_watermark) = {
            let st = inner.state.borrow();
            st.usable(&inner.tp)?;
            let found = st
                .segments
                .values()
                .find(|s| s.max_timestamp >= target && s.base_offset < st.high_watermark);
            let Some(segment) = found else {
                return Ok(None);
            };
            let start = segment.index.lookup_time(target);
            let position = segment.index.lookup(start).position;
            let plan = (
                segment.file.clone(),
                segment.log_path.clone(),
                u64::from(position),
                segment.durable,
            );
            (plan, st.log_start, st.high_watermark)
        };
        let (dma, path, from, bound) = plan;
        let mut hit = None;
        scan::headers(&dma, &path, from, bound, |position, header| {
            if header.base_offset >= high_watermark {
                return std::ops::ControlFlow::Break(());
            }
            if header.max_timestamp >= target {
                hit = Some((position, *header));
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        })
        .await?;
        let Some((position, header)) = hit else {
            return Ok(None);
        };
        let bytes = file::read_at(&dma, &path, position, header.size).await?;
        let exact = batch::first_record_at_or_after(&bytes, target).unwrap_or(header.base_offset);
        Ok(Some((exact.max(log_start), header.max_timestamp)))
    }

    /// The offset and timestamp of the record with the largest timestamp below the high
    /// watermark (ListOffsets -3); the earliest such record on ties. `None` for an empty
    /// log.
    pub async fn offset_of_max_timestamp(&self) -> Result<Option<(Offset, Timestamp)>> {
        let inner = &self.0;
        let plan = {
            let st = inner.state.borrow();
            st.usable(&inner.tp)?;
            let best = st
                .segments
                .values()
                .filter(|s| s.base_offset < st.high_watermark && s.max_timestamp != Timestamp::NONE)
                .fold(None::<&crate::segment::Segment>, |best, s| match best {
                    Some(b) if b.max_timestamp >= s.max_timestamp => Some(b),
                    _ => Some(s),
                });
            let Some(segment) = best else { return Ok(None) };
            let target = segment.max_timestamp_offset;
            let from = u64::from(segment.index.lookup(target).position);
            (
                segment.file.clone(),
                segment.log_path.clone(),
                from,
                segment.durable,
                target,
                segment.max_timestamp,
            )
        };
        let (dma, path, from, bound, target, max_timestamp) = plan;
        let Some((position, header)) = scan::find_batch(&dma, &path, from, bound, target).await?
        else {
            return Ok(None);
        };
        let bytes = file::read_at(&dma, &path, position, header.size).await?;
        let exact =
            batch::first_record_at_or_after(&bytes, max_timestamp).unwrap_or(header.base_offset);
        Ok(Some((exact, max_timestamp)))
    }
}
