//! Retention: deleting whole sealed segments by age (`retention.ms`), by total size
//! (`retention.bytes`), and wholly below a log start moved by `delete_records`, oldest
//! first, on the shard's background queue.
//!
//! The active segment and any segment not yet sealed are never deleted, and neither is a
//! segment holding offsets at or past the high watermark. Deleting moves `log_start` to
//! the next segment's base offset; the checkpoint records it, and in-flight zero-copy
//! reads keep working because they hold the segment's open descriptor. Up to
//! `RECYCLED_SEGMENTS_MAX` deleted `.log` files are kept as free files for later segments
//! to write over (see `recycle`).

use super::PartitionLog;
use crate::error::{EngineError, Result};
use crate::file;
use crate::segment::Segment;
use crate::types::{Offset, Timestamp};

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start: Offset,
}

impl PartitionLog {
    /// Moves the log start to `offset` (Kafka's DeleteRecords): offsets below it are no
    /// longer readable at once, and the segments wholly below it are deleted by the next
    /// retention pass. `offset` may not pass the high watermark; a lower one than the
    /// current log start changes nothing. Returns the new log start.
    pub async fn delete_records(&self, offset: Offset) -> Result<Offset> {
        let inner = &self.0;
        let log_start = {
            let mut st = inner.state.borrow_mut();
            st.usable(&inner.tp)?;
            if st.truncating {
                return Err(EngineError::ReplicaDiverged {
                    tp: inner.tp.clone(),
                    reason: "the log is being truncated to follow its leader; retry".into(),
                });
            }
            if offset > st.high_watermark || offset.0 < 0 {
                return Err(EngineError::OffsetOutOfRange {
                    tp: inner.tp.clone(),
                    offset,
                    log_start: st.log_start,
                    log_end: st.high_watermark,
                });
            }
            if offset > st.log_start {
                st.log_start = offset;
                st.cache.evict_below(offset);
                st.check_invariants();
            }
            st.log_start
        };
        self.write_checkpoint(false).await?;
        Ok(log_start)
    }

    /// Deletes the segments retention no longer keeps, as of `now`.
    pub async fn apply_retention(&self, now: Timestamp) -> Result<RetentionOutcome> {
        let inner = &self.0;
        let removed: Vec<Segment> = {
            let mut st = inner.state.borrow_mut();
            st.usable(&inner.tp)?;
            if st.truncating || st.cleaning {
                // A truncation or a cleaning pass is replacing segments; the next pass runs.
                return Ok(RetentionOutcome::default());
            }
            let config = st.config().clone();
            let mut total: u64 = st.segments.values().map(|s| s.size).sum();
            let active = st.active().base_offset;
            let mut doomed = Vec::new();
            for segment in st.segments.values() {
                let next_base = segment.next_offset;
                let deletable = segment.sealed
                    && segment.base_offset != active
                    && next_base <= st.high_watermark;
                if !deletable {
                    break;
                }
                // A compact-only topic keeps its segments (the cleaner shrinks them);
                // only a log start moved by DeleteRecords deletes them.
                let expired = config.cleanup_delete
                    && config.retention_ms >= 0
                    && segment.max_timestamp != Timestamp::NONE
                    && now.0.saturating_sub(segment.max_timestamp.0) > config.retention_ms;
                let oversize = config.cleanup_delete
                    && config.retention_bytes >= 0
                    && total - segment.size >= config.retention_bytes as u64;
                let below_start = next_base <= st.log_start;
                if !(expired || oversize || below_start) {
                    break;
                }
                total -= segment.size;
                doomed.push(segment.base_offset);
            }
            let removed: Vec<Segment> = doomed
                .iter()
                .filter_map(|base| st.segments.remove(base))
                .collect();
            if let Some(next) = st.segments.keys().next().copied() {
                if !removed.is_empty() {
                    st.log_start = st.log_start.max(next);
                    let log_start = st.log_start;
                    st.cache.evict_below(log_start);
                    st.dir_dirty = true;
                }
            }
            st.check_invariants();
            removed
        };
        let mut outcome = RetentionOutcome {
            log_start: self.offsets().log_start,
            ..Default::default()
        };
        if removed.is_empty() {
            return Ok(outcome);
        }
        // The checkpoint goes first: if we crash mid-deletion, recovery starts at the new
        // log start and any leftover old file is below it, never a hole inside the log.
        self.write_checkpoint(false).await?;
        for segment in removed {
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += segment.size;
            let base_offset = segment.base_offset;
            inner.retire(segment).await?;
            tracing::info!(partition = %inner.tp, base_offset = base_offset.0, "retention deleted a segment");
        }
        file::sync_dir(&inner.dir).await?;
        Ok(outcome)
    }
}
