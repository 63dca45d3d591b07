//! The tail cache: the most recent batches of a partition, in memory, so that consumers
//! reading at the tail are served without touching the disk.
//!
//! Holds `Bytes` handles to the very buffers the batches arrived in (after patching), so
//! caching costs no copy. Bounded per partition (`PARTITION_TAIL_CACHE_*`) and per shard
//! (`SHARD_TAIL_CACHE_BYTES_MAX`, through a counter shared by the shard's partitions).
//! Invariant: cached batches are contiguous: each one's base offset is the previous
//! one's last offset + 1, so the cache covers one gap-free offset range.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::limits::{
    PARTITION_TAIL_CACHE_BATCHES_MAX, PARTITION_TAIL_CACHE_BYTES_MAX, SHARD_TAIL_CACHE_BYTES_MAX,
};
use crate::types::Offset;

#[derive(Debug, Clone)]
struct Cached {
    base_offset: Offset,
    last_offset: Offset,
    bytes: Bytes,
}

/// Recent batches of one partition.
#[derive(Debug)]
pub struct TailCache {
    batches: VecDeque<Cached>,
    bytes: usize,
    /// Bytes cached by all partitions of the shard.
    shard_bytes: Rc<Cell<usize>>,
}

impl TailCache {
    pub fn new(shard_bytes: Rc<Cell<usize>>) -> TailCache {
        TailCache {
            batches: VecDeque::new(),
            bytes: 0,
            shard_bytes,
        }
    }

    /// Adds the newest batch, evicting the oldest to stay within bounds. If the shard's
    /// budget is still exceeded after evicting all of this partition's batches, the batch
    /// is not cached (readers fall back to disk).
    pub fn push(&mut self, base_offset: Offset, last_offset: Offset, bytes: Bytes) {
        if let Some(last) = self.batches.back() {
            if last.last_offset.next() != base_offset {
                self.clear();
            }
        }
        let size = bytes.len();
        if size > PARTITION_TAIL_CACHE_BYTES_MAX {
            self.clear();
            return;
        }
        while !self.batches.is_empty()
            && (self.bytes + size > PARTITION_TAIL_CACHE_BYTES_MAX
                || self.batches.len() >= PARTITION_TAIL_CACHE_BATCHES_MAX
                || self.shard_bytes.get() + size > SHARD_TAIL_CACHE_BYTES_MAX)
        {
            self.pop_front();
        }
        if self.shard_bytes.get() + size > SHARD_TAIL_CACHE_BYTES_MAX {
            return;
        }
        self.bytes += size;
        self.shard_bytes.set(self.shard_bytes.get() + size);
        self.batches.push_back(Cached {
            base_offset,
            last_offset,
            bytes,
        });
    }

    fn pop_front(&mut self) {
        if let Some(c) = self.batches.pop_front() {
            self.bytes -= c.bytes.len();
            self.shard_bytes.set(self.shard_bytes.get() - c.bytes.len());
        }
    }

    /// Drops everything (on truncation, or when the cache is no longer contiguous).
    pub fn clear(&mut self) {
        while !self.batches.is_empty() {
            self.pop_front();
        }
    }

    /// Drops batches that end below `offset` (after retention moved the log start).
    pub fn evict_below(&mut self, offset: Offset) {
        while self.batches.front().is_some_and(|c| c.last_offset < offset) {
            self.pop_front();
        }
    }

    /// Whether the cache can answer a read at `offset`: some cached batch contains it or
    /// starts after it with nothing missing in between.
    pub fn covers(&self, offset: Offset) -> bool {
        self.batches
            .front()
            .is_some_and(|c| c.base_offset <= offset)
            && self.batches.back().is_some_and(|c| c.last_offset >= offset)
    }

    /// Batches from the one containing `offset`, whose base offset is below `bound`, up to
    /// `max_bytes` (but always the first whole batch, as KIP-74 requires).
    pub fn read(&self, offset: Offset, bound: Offset, max_bytes: usize) -> Vec<Bytes> {
        let start = self.batches.partition_point(|c| c.last_offset < offset);
        let mut out = Vec::new();
        let mut total = 0usize;
        for c in self.batches.iter().skip(start) {
            if c.base_offset >= bound || (!out.is_empty() && total + c.bytes.len() > max_bytes) {
                break;
            }
            total += c.bytes.len();
            out.push(c.bytes.clone());
        }
        out
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (TailCache, Rc<Cell<usize>>) {
        let shard = Rc::new(Cell::new(0));
        (TailCache::new(shard.clone()), shard)
    }

    #[test]
    fn reads_from_the_containing_batch_within_bounds() {
        let (mut c, shard) = cache();
        for i in 0..10i64 {
            c.push(
                Offset(i * 10),
                Offset(i * 10 + 9),
                Bytes::from(vec![i as u8; 100]),
            );
        }
        assert_eq!(shard.get(), 1000);
        assert!(c.covers(Offset(55)) && !c.covers(Offset(100)));
        let r = c.read(Offset(55), Offset(80), 10_000);
        assert_eq!(r.len(), 3); // batches 50, 60, 70
        assert_eq!(r[0][0], 5);
        let r = c.read(Offset(55), Offset(1000), 150);
        assert_eq!(r.len(), 1);
        let r = c.read(Offset(55), Offset(1000), 10); // KIP-74: first batch whole
        assert_eq!(r.len(), 1);
        drop(c);
        assert_eq!(shard.get(), 0);
    }

    #[test]
    fn a_gap_clears_and_bounds_hold() {
        let (mut c, shard) = cache();
        c.push(Offset(0), Offset(0), Bytes::from(vec![0; 10]));
        c.push(Offset(5), Offset(5), Bytes::from(vec![0; 10]));
        assert!(!c.covers(Offset(0)) && c.covers(Offset(5)));
        for i in 6..(6 + PARTITION_TAIL_CACHE_BATCHES_MAX as i64 + 10) {
            c.push(Offset(i), Offset(i), Bytes::from(vec![0; 1]));
        }
        assert!(c.batches.len() <= PARTITION_TAIL_CACHE_BATCHES_MAX);
        assert_eq!(shard.get(), c.bytes);
        c.evict_below(Offset(10_000));
        assert!(c.batches.len() < PARTITION_TAIL_CACHE_BATCHES_MAX);
    }
}
