//! Sparse per-segment indexes, in Kafka's file formats.
//!
//! `.index`: entries of 8 bytes, a 4-byte offset relative to the segment's base offset and
//! a 4-byte byte position in the `.log` file, both big-endian. One entry is added each
//! time `INDEX_INTERVAL_BYTES` of log have been appended since the last one, pointing at
//! the start of a batch. `.timeindex`: entries of 12 bytes, an 8-byte timestamp and a
//! 4-byte relative offset; an entry is added alongside an offset entry only when the
//! segment's largest timestamp has grown, so timestamps are strictly increasing.
//!
//! Neither file has a checksum. They are written when a segment is closed and rebuilt from
//! the log after an unclean shutdown, so a torn index can never outlive recovery. Loaded
//! indexes are sanity-checked (entry size, monotonicity, positions within the log) and
//! rebuilt on any failure.

use crate::limits::{OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES};
use crate::types::{Offset, Timestamp};

/// One offset-index entry, with the relative offset resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub offset: Offset,
    pub position: u32,
}

/// One time-index entry, with the relative offset resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: Timestamp,
    pub offset: Offset,
}

/// Both sparse indexes of one segment, in memory.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    base_offset: Offset,
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    bytes_since_entry: u32,
    interval_bytes: u32,
}

impl SegmentIndex {
    pub fn new(base_offset: Offset, interval_bytes: u32) -> SegmentIndex {
        assert!(interval_bytes > 0);
        SegmentIndex {
            base_offset,
            offsets: Vec::new(),
            times: Vec::new(),
            bytes_since_entry: 0,
            interval_bytes,
        }
    }

    /// Notes a batch appended at `position`. Adds entries when the interval has passed
    /// (and always for the segment's first batch, so lookups never scan from nowhere).
    pub fn on_append(
        &mut self,
        base_offset: Offset,
        position: u32,
        size: u32,
        max_timestamp: Timestamp,
    ) {
        assert!(
            base_offset >= self.base_offset,
            "batch below segment base offset"
        );
        if let Some(last) = self.offsets.last() {
            assert!(
                base_offset > last.offset && position > last.position,
                "index not monotonic"
            );
        }
        if self.offsets.is_empty() || self.bytes_since_entry >= self.interval_bytes {
            self.offsets.push(OffsetEntry {
                offset: base_offset,
                position,
            });
            if self
                .times
                .last()
                .is_none_or(|t| max_timestamp > t.timestamp)
            {
                self.times.push(TimeEntry {
                    timestamp: max_timestamp,
                    offset: base_offset,
                });
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry = self.bytes_since_entry.saturating_add(size);
    }

    /// The last entry whose offset is at most `target`: where a scan for `target` starts.
    /// Position 0 when `target` precedes every entry.
    pub fn lookup(&self, target: Offset) -> OffsetEntry {
        let i = self.offsets.partition_point(|e| e.offset <= target);
        if i == 0 {
            OffsetEntry {
                offset: self.base_offset,
                position: 0,
            }
        } else {
            self.offsets[i - 1]
        }
    }

    /// The offset from which a scan for the first timestamp >= `target` starts: the entry
    /// just before the first entry at or past `target`, so no qualifying batch is skipped.
    pub fn lookup_time(&self, target: Timestamp) -> Offset {
        let i = self.times.partition_point(|e| e.timestamp < target);
        if i == 0 {
            self.base_offset
        } else {
            self.times[i - 1].offset
        }
    }

    /// Adds a last time entry for the segment's largest timestamp when it closes, so that
    /// the `.timeindex` of a closed segment ends with the segment's max timestamp (Kafka
    /// does the same), which is what retention and time lookups read after a restart.
    pub fn seal_time(&mut self, max_timestamp: Timestamp, offset: Offset) {
        let newer = self
            .times
            .last()
            .is_none_or(|t| max_timestamp > t.timestamp && offset > t.offset);
        if newer && max_timestamp != Timestamp::NONE {
            self.times.push(TimeEntry {
                timestamp: max_timestamp,
                offset,
            });
        }
    }

    /// The largest timestamp the time index knows (after `seal_time`, the segment's).
    pub fn last_time(&self) -> Option<TimeEntry> {
        self.times.last().copied()
    }

    /// Drops entries pointing at or past `position` (after truncation).
    pub fn truncate_to_position(&mut self, position: u32) {
        self.offsets.retain(|e| e.position < position);
        if let Some(last) = self.offsets.last().copied() {
            self.times.retain(|t| t.offset <= last.offset);
        } else {
            self.times.clear();
        }
        self.bytes_since_entry = self.interval_bytes;
    }

    pub fn interval_bytes(&self) -> u32 {
        self.interval_bytes
    }

    pub fn base_offset(&self) -> Offset {
        self.base_offset
    }

    pub fn offset_entries(&self) -> &[OffsetEntry] {
        &self.offsets
    }

    pub fn time_entries(&self) -> &[TimeEntry] {
        &self.times
    }

    /// Encodes the `.index` file.
    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_INDEX_ENTRY_BYTES);
        for e in &self.offsets {
            out.extend_from_slice(&self.relative(e.offset).to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Encodes the `.timeindex` file.
    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_INDEX_ENTRY_BYTES);
        for e in &self.times {
            out.extend_from_slice(&e.timestamp.0.to_be_bytes());
            out.extend_from_slice(&self.relative(e.offset).to_be_bytes());
        }
        out
    }

    fn relative(&self, offset: Offset) -> u32 {
        u32::try_from(offset.0 - self.base_offset.0).expect("relative offset fits in u32")
    }

    /// Decodes both files and checks them against the segment: entries strictly
    /// increasing, positions below `log_bytes`. Returns `None` if anything is off; the
    /// caller then rebuilds the index from the log.
    pub fn decode(
        base_offset: Offset,
        interval_bytes: u32,
        index_file: &[u8],
        time_file: &[u8],
        log_bytes: u64,
    ) -> Option<SegmentIndex> {
        if index_file.len() % OFFSET_INDEX_ENTRY_BYTES != 0
            || time_file.len() % TIME_INDEX_ENTRY_BYTES != 0
        {
            return None;
        }
        let mut index = SegmentIndex::new(base_offset, interval_bytes);
        for chunk in index_file.chunks_exact(OFFSET_INDEX_ENTRY_BYTES) {
            let relative = u32::from_be_bytes(chunk[0..4].try_into().ok()?);
            let position = u32::from_be_bytes(chunk[4..8].try_into().ok()?);
            let entry = OffsetEntry {
                offset: base_offset.plus(i64::from(relative)),
                position,
            };
            let monotonic = index
                .offsets
                .last()
                .is_none_or(|l| l.offset < entry.offset && l.position < entry.position);
            if !monotonic || u64::from(position) >= log_bytes {
                return None;
            }
            index.offsets.push(entry);
        }
        for chunk in time_file.chunks_exact(TIME_INDEX_ENTRY_BYTES) {
            let timestamp = Timestamp(i64::from_be_bytes(chunk[0..8].try_into().ok()?));
            let relative = u32::from_be_bytes(chunk[8..12].try_into().ok()?);
            let entry = TimeEntry {
                timestamp,
                offset: base_offset.plus(i64::from(relative)),
            };
            let monotonic = index
                .times
                .last()
                .is_none_or(|l| l.timestamp < entry.timestamp && l.offset < entry.offset);
            if !monotonic || index.offsets.is_empty() {
                return None;
            }
            index.times.push(entry);
        }
        // A closed segment with data always has an entry for its first batch.
        if log_bytes > 0 && index.offsets.first().is_none_or(|e| e.position != 0) {
            return None;
        }
        index.bytes_since_entry = interval_bytes;
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(batches: usize, size: u32) -> SegmentIndex {
        let mut idx = SegmentIndex::new(Offset(100), 4096);
        for i in 0..batches {
            let pos = i as u32 * size;
            idx.on_append(
                Offset(100 + 10 * i as i64),
                pos,
                size,
                Timestamp(1000 + i as i64),
            );
        }
        idx
    }

    #[test]
    fn entries_are_sparse_by_interval() {
        let idx = filled(100, 1000);
        // First batch always, then every ≥4096 bytes: every 5th batch of 1000 bytes.
        assert_eq!(idx.offset_entries().len(), 20);
        assert_eq!(
            idx.offset_entries()[1],
            OffsetEntry {
                offset: Offset(150),
                position: 5000
            }
        );
    }

    #[test]
    fn lookup_returns_the_entry_at_or_before() {
        let idx = filled(100, 1000);
        assert_eq!(idx.lookup(Offset(100)).position, 0);
        assert_eq!(idx.lookup(Offset(149)).position, 0);
        assert_eq!(idx.lookup(Offset(150)).position, 5000);
        assert_eq!(idx.lookup(Offset(99_999)).position, 95_000);
        assert_eq!(idx.lookup(Offset(5)).position, 0);
    }

    #[test]
    fn files_round_trip_and_bad_files_are_refused() {
        let idx = filled(100, 1000);
        let (o, t) = (idx.encode_offsets(), idx.encode_times());
        let back = SegmentIndex::decode(Offset(100), 4096, &o, &t, 100_000).unwrap();
        assert_eq!(back.offset_entries(), idx.offset_entries());
        assert_eq!(back.time_entries(), idx.time_entries());
        assert!(SegmentIndex::decode(Offset(100), 4096, &o[..7], &t, 100_000).is_none());
        assert!(SegmentIndex::decode(Offset(100), 4096, &o, &t, 50_000).is_none());
        let mut swapped = o.clone();
        swapped[8..16].copy_from_slice(&o[0..8]);
        assert!(SegmentIndex::decode(Offset(100), 4096, &swapped, &t, 100_000).is_none());
    }

    #[test]
    fn time_lookup_never_skips_a_qualifying_batch() {
        let idx = filled(100, 1000);
        // Batch i has max timestamp 1000+i; entries exist every 5th batch.
        assert_eq!(idx.lookup_time(Timestamp(0)), Offset(100));
        assert!(idx.lookup_time(Timestamp(1007)) <= Offset(170));
        assert_eq!(idx.lookup_time(Timestamp(1005)), Offset(100));
        assert_eq!(idx.lookup_time(Timestamp(1006)), Offset(150));
    }

    proptest::proptest! {
        #[test]
        fn lookup_position_never_passes_the_target(
            sizes in proptest::collection::vec(61u32..10_000, 1..300),
            probe in 0i64..5000,
        ) {
            let mut idx = SegmentIndex::new(Offset(0), 4096);
            let (mut pos, mut off) = (0u32, 0i64);
            let mut starts = Vec::new();
            for s in &sizes {
                idx.on_append(Offset(off), pos, *s, Timestamp(off));
                starts.push((off, pos));
                pos += s;
                off += 3;
            }
            let e = idx.lookup(Offset(probe));
            proptest::prop_assert!(e.offset.0 <= probe.max(0));
            // The entry is a real batch start.
            proptest::prop_assert!(starts.iter().any(|&(o, p)| o == e.offset.0 && p == e.position));
            // And nothing between the entry and the target is more than one interval of
            // bytes away from an entry (sparseness bound).
            let next_entry_pos = idx.offset_entries().iter().map(|x| x.position).find(|&p| p > e.position);
            if let Some(n) = next_entry_pos {
                proptest::prop_assert!(n - e.position < 4096 + 10_000);
            }
        }
    }
}
