//! What replication asks of a partition log (`spate_replication`'s driver): appending a
//! leader's batches as they are, reading whole batches past the high watermark for
//! followers, a high watermark that follows the quorum commit index, and cutting a
//! divergent suffix off the log.
//!
//! Invariants kept here, on top of the log's own (`log_start <= high_watermark <=
//! durable_end <= log_end`):
//! - a replicated append lands exactly at the log end and keeps the leader's epoch and
//!   bytes; nothing is renumbered, so every replica's log is the leader's byte for byte;
//! - the high watermark of a replicated log never passes the commit index it was given,
//!   nor the local durable end (a follower may learn a commit index before its own fsync);
//! - a truncation removes whole batches only, never goes below the high watermark, and
//!   deletes segments newest first, so a crash part way leaves a longer log that is still
//!   a prefix-closed log (the follower finds the divergence again and cuts again).

use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Bytes;

use super::open::{rebuild_producers, staging_for, write_checkpoint};
use super::{scan, PartitionLog, ReadChunk};
use crate::batch::{self, BatchHeader};
use crate::compact;
use crate::error::{EngineError, Result};
use crate::file;
use crate::limits::{BATCH_BYTES_MAX, SEGMENT_BASE_LIMIT};
use crate::meta::RecoveryCheckpoint;
use crate::segment::Segment;
use crate::types::{Offset, Timestamp};

/// How often a truncation waiting for the flusher to seal rolled segments looks again.
/// Truncations are rare (one per leader change at most), so a short poll is cheap.
const TRUNCATE_SEAL_POLL: Duration = Duration::from_millis(2);

/// Where a truncation cuts its target segment, and the last batch kept's timestamp.
#[derive(Debug, Clone, Copy)]
struct Cut {
    position: u64,
    last_ts: Option<(Timestamp, Offset)>,
}

/// A batch from a leader, validated once (`ValidBatch::check`) before a follower
/// appends it: the driver checks a whole fetch answer before appending any of it, and
/// the log takes only batches of this type, so nothing is appended unchecked.
#[derive(Debug, Clone)]
pub struct ValidBatch {
    bytes: Bytes,
    header: BatchHeader,
}

impl ValidBatch {
    /// Validates a whole batch (CRC, counts, records; fewer records than offsets, as
    /// compaction leaves, are fine). The leader accepted it under its config; a
    /// follower's own size limit may differ (changed on the leader first), so only the
    /// engine's hard limit applies.
    pub fn check(bytes: Bytes) -> std::result::Result<ValidBatch, crate::error::BatchError> {
        let header = batch::validate_replicated(&bytes, BATCH_BYTES_MAX)?;
        Ok(ValidBatch { bytes, header })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
}

/// Whole batches for a follower: `[from, end)`, as file ranges or cached bytes.
#[derive(Debug, Clone, Default)]
pub struct ReplicaRead {
    pub chunks: Vec<ReadChunk>,
    /// One past the last offset read; `from` when nothing was.
    pub end: Offset,
    /// `(epoch, offsets spanned)` of every batch read, in order.
    pub batches: Vec<(i32, u32)>,
}

/// How many offsets `from..end` holds, as a batch's span (at most `i32::MAX` + 1).
fn offsets_between(from: Offset, end: Offset) -> u32 {
    u32::try_from(end.0 - from.0).expect("a batch spans at most i32::MAX + 1 offsets")
}

impl ReplicaRead {
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(ReadChunk::len).sum()
    }
}

impl PartitionLog {
    /// Makes the high watermark follow `set_commit` from now on, starting from the log
    /// start: until the replica learns the commit index, nothing is visible to consumers.
    pub fn set_replicated(&self) {
        let mut st = self.0.state.borrow_mut();
        st.replicated = true;
        st.commit = st.log_start;
        st.high_watermark = st.log_start;
        st.check_invariants();
    }

    /// The quorum commit index moved to `index`: readers may see below it, once it is
    /// durable here too. Wakes long-polling readers.
    pub fn set_commit(&self, index: Offset) {
        let mut st = self.0.state.borrow_mut();
        assert!(st.replicated, "only a replicated log takes a commit index");
        st.commit = st.commit.max(index);
        let visible = st.visible_end();
        if visible != st.high_watermark {
            st.high_watermark = visible;
            for tx in st.progress_waiters.drain(..) {
                let _ = tx.send(());
            }
        }
        st.check_invariants();
    }

    /// Appends a batch a leader stored, byte for byte: it must start at the log end,
    /// and it keeps its base offset and partition leader epoch. Resolves once staged;
    /// durability shows in `offsets().durable_end` (wait with `wait_for_progress`).
    pub async fn append_replicated(&self, batch: ValidBatch) -> Result<BatchHeader> {
        let inner = &self.0;
        let ValidBatch {
            bytes: batch,
            header,
        } = batch;
        let (permit, _gate, now) = inner.admit(batch.len(), header.record_count).await?;
        {
            let mut st = inner.state.borrow_mut();
            st.usable(&inner.tp)?;
            if header.base_offset != st.log_end {
                return Err(EngineError::ReplicaDiverged {
                    tp: inner.tp.clone(),
                    reason: format!(
                        "a replicated batch starts at offset {} but the log ends at {}",
                        header.base_offset.0, st.log_end.0
                    ),
                });
            }
            st.stage(batch, &header, now, permit);
            st.check_invariants();
        }
        drop(_gate);
        inner.ring_flusher();
        Ok(header)
    }

    /// Whole batches from `from` below `until`, at most `max_bytes` but always the first
    /// batch, for a follower. `from` must start a batch, or lie inside an empty one (a
    /// compaction filler), whose offsets from `from` on are then sent as a batch. Unlike
    /// `read`, it reads past the high watermark; bytes not durable yet come from the tail
    /// cache only, so a read may return less than asked, or nothing.
    pub async fn read_replicated(
        &self,
        from: Offset,
        until: Offset,
        max_bytes: usize,
    ) -> Result<ReplicaRead> {
        let inner = &self.0;
        // A log start inside a batch (DeleteRecords) leaves that batch readable for
        // followers from its base: they need it whole.
        let log_start = inner.state.borrow().log_start;
        let lowest = if from < log_start {
            self.log_start_batch().await?
        } else {
            log_start
        };
        let plan = {
            let st = inner.state.borrow();
            st.usable(&inner.tp)?;
            let empty = ReplicaRead {
                end: from,
                ..ReplicaRead::default()
            };
            let below = from < st.log_start && from != lowest;
            if below || from > st.log_end {
                return Err(EngineError::OffsetOutOfRange {
                    tp: inner.tp.clone(),
                    offset: from,
                    log_start: st.log_start,
                    log_end: st.log_end,
                });
            }
            if from >= until || from == st.log_end {
                return Ok(empty);
            }
            if st.cache.covers(from) {
                let batches = st.cache.read(from, until, max_bytes);
                return self.cached_read(from, batches);
            }
            let segment = st.segment_holding(from);
            let entry = segment.index.lookup(from);
            (
                segment.file.clone(),
                segment.log_path.clone(),
                segment.reader.clone(),
                u64::from(entry.position),
                segment.durable,
            )
        };
        let (dma, path, reader, scan_from, durable) = plan;
        let mut start = None;
        let mut read = ReplicaRead {
            end: from,
            ..ReplicaRead::default()
        };
        // The rest of an empty batch `from` lies inside, sent ahead of the file range.
        let mut cut: Option<Vec<u8>> = None;
        let (mut len, mut total) = (0u64, 0u64);
        scan::headers(&dma, &path, scan_from, durable, |position, header| {
            if header.last_offset() < from {
                return ControlFlow::Continue(());
            }
            let first = start.is_none() && cut.is_none();
            if first && header.base_offset != from {
                // A follower's log ends inside a batch only where compaction joined the
                // batches it holds the start of into one filler: it gets the rest. A
                // batch with records cannot be cut (the logs diverged), nor one past
                // `from` (a gap, which only a damaged segment has).
                if header.record_count != 0 || header.base_offset > from {
                    return ControlFlow::Break(());
                }
                let rest = compact::empty_batch_from(header, from);
                total += rest.len() as u64;
                read.end = header.last_offset().next();
                read.batches
                    .push((header.leader_epoch.0, offsets_between(from, read.end)));
                cut = Some(rest);
                return ControlFlow::Continue(());
            }
            if !first
                && (header.base_offset >= until || total + header.size as u64 > max_bytes as u64)
            {
                return ControlFlow::Break(());
            }
            start.get_or_insert(position);
            len += header.size as u64;
            total += header.size as u64;
            read.end = header.last_offset().next();
            read.batches.push((header.leader_epoch.0, header.offsets()));
            ControlFlow::Continue(())
        })
        .await?;
        if let Some(rest) = cut {
            // Once per follower catching up across a cleaned run: worth a line.
            tracing::info!(
                partition = %inner.tp,
                from = from.0,
                "a follower's log ends inside a filler; sent it the rest"
            );
            read.chunks.push(ReadChunk::Cached(Bytes::from(rest)));
        }
        match start {
            Some(position) => read.chunks.push(ReadChunk::File {
                file: reader,
                position,
                len,
            }),
            None if read.chunks.is_empty() => {
                // Either the durable bytes end before `from` (the rest is only staged and
                // no longer cached: the follower asks again), or `from` is inside a batch.
                let inside = inner.state.borrow().durable_end > from;
                if inside {
                    return Err(EngineError::ReplicaDiverged {
                        tp: inner.tp.clone(),
                        reason: format!("offset {} does not start a batch", from.0),
                    });
                }
            }
            None => {}
        }
        Ok(read)
    }

    /// The base offset of the batch holding the log start: the log start itself unless
    /// DeleteRecords put it inside a batch (or the log is empty there). A follower that
    /// starts over starts here, and reads from here are served, so that it holds the
    /// batch whole, as the leader does.
    pub async fn log_start_batch(&self) -> Result<Offset> {
        let inner = &self.0;
        let (dma, path, position, durable, log_start) = {
            let st = inner.state.borrow();
            st.usable(&inner.tp)?;
            let log_start = st.log_start;
            if log_start >= st.durable_end {
                return Ok(log_start);
            }
            let segment = st.segment_holding(log_start);
            let position = u64::from(segment.index.lookup(log_start).position);
            let (dma, path) = (segment.file.clone(), segment.log_path.clone());
            (dma, path, position, segment.durable, log_start)
        };
        let mut base = log_start;
        scan::headers(&dma, &path, position, durable, |_, header| {
            if header.last_offset() < log_start {
                return ControlFlow::Continue(());
            }
            base = header.base_offset.min(log_start);
            ControlFlow::Break(())
        })
        .await?;
        Ok(base)
    }

    fn cached_read(&self, from: Offset, batches: Vec<Bytes>) -> Result<ReplicaRead> {
        let mut read = ReplicaRead {
            end: from,
            ..ReplicaRead::default()
        };
        for bytes in batches {
            let header = BatchHeader::parse(&bytes).map_err(EngineError::InvalidBatch)?;
            if read.chunks.is_empty() && header.base_offset != from {
                return Err(EngineError::ReplicaDiverged {
                    tp: self.0.tp.clone(),
                    reason: format!("offset {} does not start a batch", from.0),
                });
            }
            read.end = header.last_offset().next();
            read.batches.push((header.leader_epoch.0, header.offsets()));
            read.chunks.push(ReadChunk::Cached(bytes));
        }
        Ok(read)
    }

    /// Removes every batch at or past `to`, which must start a batch (or be the log end)
    /// and not be below the high watermark. Waits for staged appends to become durable
    /// first, and holds off appends meanwhile. Appends still waiting to be durable past
    /// `to` fail with `ReplicaDiverged`.
    pub async fn truncate_to(&self, to: Offset) -> Result<()> {
        let inner = &self.0;
        let _gate = self.hold_appends().await?;
        let (target, position) = {
            let st = inner.state.borrow();
            if to == st.log_end {
                return Ok(());
            }
            if to < st.high_watermark || to > st.log_end {
                return Err(EngineError::ReplicaDiverged {
                    tp: inner.tp.clone(),
                    reason: format!(
                        "cannot truncate to {}: the high watermark is {} and the log ends at {}",
                        to.0, st.high_watermark.0, st.log_end.0
                    ),
                });
            }
            // The segment that will be active: the last one starting below `to`, or the
            // first one when `to` is its base.
            let target = st.segments.range(..to).next_back().map_or_else(
                || *st.segments.keys().next().expect("a log has a segment"),
                |(b, _)| *b,
            );
            (target, st.segments[&target].index.lookup(to).position)
        };
        // From here until the end, retention leaves the segments alone.
        inner.state.borrow_mut().truncating = true;
        // Where the cut falls, checked before anything changes: `to` must start a batch.
        let outcome = match self.find_cut(target, to, u64::from(position)).await {
            Ok(cut) => {
                let outcome = self.cut(target, to, cut).await;
                if let Err(error) = &outcome {
                    // Files may be half cut: nothing may trust this log any more.
                    inner.fail(error);
                }
                outcome
            }
            Err(error) => Err(error),
        };
        inner.state.borrow_mut().truncating = false;
        outcome
    }

    /// Removes every record and starts the log again, empty, at `at`, past its end: what
    /// a follower does when its leader's log starts past the follower's end (retention
    /// or DeleteRecords deleted everything the follower lacks; Kafka's
    /// `truncateFullyAndStartAt`). Every offset below `at` is committed (a log start
    /// never passes the high watermark), so the high watermark and commit index become
    /// `at`. Idempotent producers' state is forgotten (their next batch starts a new
    /// sequence, as after any lost snapshot). Waits for staged appends first and holds
    /// off appends meanwhile, as `truncate_to` does.
    pub async fn restart_at(&self, at: Offset) -> Result<()> {
        let inner = &self.0;
        let _gate = self.hold_appends().await?;
        {
            let st = inner.state.borrow();
            if at <= st.log_end || at.0 >= SEGMENT_BASE_LIMIT {
                return Err(EngineError::ReplicaDiverged {
                    tp: inner.tp.clone(),
                    reason: format!(
                        "cannot restart the log at {}: it ends at {} (a restart goes past the end, below {SEGMENT_BASE_LIMIT})",
                        at.0, st.log_end.0
                    ),
                });
            }
        }
        inner.state.borrow_mut().truncating = true;
        let outcome = self.start_over(at).await;
        if let Err(error) = &outcome {
            // Old and new segments may both be on disk: nothing may trust this log any more.
            inner.fail(error);
        }
        inner.state.borrow_mut().truncating = false;
        outcome?;
        tracing::info!(partition = %inner.tp, at = at.0, "restarted the log at the leader's log start");
        self.write_checkpoint(false).await
    }

    /// Carries out a checked restart. Crash safety: the new empty segment at `at` exists
    /// (and the directory is synced) before the checkpoint names `at` the log start, and
    /// the old segments go only after that. A crash before the checkpoint leaves the old
    /// log, whose last segment ends before `at`: recovery drops the new segment after
    /// the gap. A crash after it leaves old segments wholly below the log start, which
    /// recovery deletes.
    async fn start_over(&self, at: Offset) -> Result<()> {
        let inner = &self.0;
        let interval = inner.state.borrow().config().index_interval_bytes;
        let segment = Segment::create(&inner.dir, at, interval).await?;
        file::sync_dir(&inner.dir).await?;
        let checkpoint = RecoveryCheckpoint {
            log_start: at,
            recovery_point: at,
            leader_epoch: inner.state.borrow().leader_epoch,
            clean_shutdown: false,
        };
        // As in `cut`: no periodic checkpoint of the old state between these two.
        let serial = inner.metadata_permit().await?;
        write_checkpoint(&inner.dir, &checkpoint).await?;
        let old = {
            let mut st = inner.state.borrow_mut();
            let old = std::mem::replace(&mut st.segments, [(at, segment)].into());
            st.log_start = at;
            st.log_end = at;
            st.durable_end = at;
            st.high_watermark = at;
            st.commit = st.commit.max(at);
            st.cleaned_to = st.cleaned_to.max(at);
            st.cache.clear();
            st.producers = Default::default();
            st.dir_dirty = false;
            assert!(st.durable_waiters.is_empty(), "quiesced: nothing waits");
            st.check_invariants();
            old
        };
        drop(serial);
        for segment in old.into_values() {
            for path in segment.paths(&inner.dir) {
                file::remove(&path).await?;
            }
        }
        file::sync_dir(&inner.dir).await
    }

    /// Carries out a checked truncation. Crash safety: the checkpoint first says that
    /// only offsets below `to` are durable, so recovery verifies the target segment and
    /// every later one and drops a later segment left after a gap; then later segments
    /// go, newest first, and the directory is synced before the target is cut.
    async fn cut(&self, target: Offset, to: Offset, cut: Cut) -> Result<()> {
        let inner = &self.0;
        let checkpoint = {
            let st = inner.state.borrow();
            RecoveryCheckpoint {
                log_start: st.log_start,
                recovery_point: to,
                leader_epoch: st.leader_epoch,
                clean_shutdown: false,
            }
        };
        // Held until the log's state matches the files, so that no periodic checkpoint
        // of the state before the cut lands in between.
        let serial = inner.metadata_permit().await?;
        write_checkpoint(&inner.dir, &checkpoint).await?;
        self.remove_segments_after(target).await?;
        file::sync_dir(&inner.dir).await?;
        let producers = self.cut_segment(target, to, cut).await?;
        {
            let mut st = inner.state.borrow_mut();
            st.log_end = to;
            st.durable_end = to;
            st.high_watermark = st.high_watermark.min(to);
            st.cache.clear();
            st.producers = producers;
            let waiters: Vec<_> = st.durable_waiters.drain(..).collect();
            for (end, tx) in waiters {
                let _ = tx.send(Err(EngineError::ReplicaDiverged {
                    tp: inner.tp.clone(),
                    reason: format!(
                        "the log was truncated to {} before offset {} became durable",
                        to.0, end.0
                    ),
                }));
            }
            st.check_invariants();
        }
        drop(serial);
        tracing::info!(partition = %inner.tp, to = to.0, "truncated the log to follow the leader");
        self.write_checkpoint(false).await
    }

    /// Where segment `target` is cut for a truncation to `to`, scanning its batches from
    /// `position` (an index entry at or below `to`); `ReplicaDiverged` if `to` falls
    /// inside a batch.
    async fn find_cut(&self, target: Offset, to: Offset, position: u64) -> Result<Cut> {
        let inner = &self.0;
        let (dma, path, size) = {
            let st = inner.state.borrow();
            let s = &st.segments[&target];
            (s.file.clone(), s.log_path.clone(), s.size)
        };
        let mut found = None;
        let mut inside = false;
        let mut last_ts = None;
        scan::headers(&dma, &path, position, size, |at, header| {
            if header.base_offset >= to {
                found = Some(at);
                return ControlFlow::Break(());
            }
            if header.last_offset() >= to {
                inside = true;
                return ControlFlow::Break(());
            }
            last_ts = Some((header.max_timestamp, header.base_offset));
            ControlFlow::Continue(())
        })
        .await?;
        if inside {
            return Err(EngineError::ReplicaDiverged {
                tp: inner.tp.clone(),
                reason: format!("offset {} does not start a batch", to.0),
            });
        }
        Ok(Cut {
            position: found.unwrap_or(size),
            last_ts,
        })
    }

    /// Holds off appends (for as long as the permit lives) and waits until the log is
    /// quiet: what a truncation or a restart needs before it replaces files.
    async fn hold_appends(&self) -> Result<glommio::sync::Permit<'_>> {
        let gate = self
            .0
            .gate
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        self.quiesce().await?;
        Ok(gate)
    }

    /// Waits until everything appended is durable and every rolled segment is sealed, so
    /// the flusher touches no file a truncation is about to cut. Called with the append
    /// gate held, so nothing new is staged meanwhile.
    async fn quiesce(&self) -> Result<()> {
        let inner = &self.0;
        loop {
            let settled = {
                let st = inner.state.borrow();
                st.usable(&inner.tp)?;
                let active = st.active().base_offset;
                st.durable_end == st.log_end
                    && st.staged_bytes == 0
                    && st
                        .segments
                        .values()
                        .all(|s| s.sealed || s.base_offset == active)
            };
            if settled {
                return Ok(());
            }
            inner.ring_flusher();
            futures::future::select(
                Box::pin(inner.wait_for_progress()),
                Box::pin(glommio::timer::sleep(TRUNCATE_SEAL_POLL)),
            )
            .await;
        }
    }

    /// Deletes the segments after `target`, newest first.
    async fn remove_segments_after(&self, target: Offset) -> Result<()> {
        let inner = &self.0;
        loop {
            let removed = {
                let mut st = inner.state.borrow_mut();
                let last = *st.segments.keys().next_back().expect("a log has a segment");
                if last <= target {
                    return Ok(());
                }
                st.segments.remove(&last).expect("listed segment exists")
            };
            for path in removed.paths(&inner.dir) {
                file::remove(&path).await?;
            }
        }
    }

    /// Cuts segment `target` at `cut` and makes it the active segment again. Returns the
    /// idempotent producers' state rebuilt as a restart would: the active segment's
    /// snapshot, if it is for this segment, and its batches (producers known only from
    /// batches in older segments are forgotten, and must start a new sequence).
    async fn cut_segment(
        &self,
        target: Offset,
        to: Offset,
        cut: Cut,
    ) -> Result<crate::producers::ProducerStates> {
        let inner = &self.0;
        let (dma, path) = {
            let st = inner.state.borrow();
            let s = &st.segments[&target];
            (s.file.clone(), s.log_path.clone())
        };
        let Cut {
            position: cut,
            last_ts,
        } = cut;
        dma.truncate(cut)
            .await
            .map_err(|e| EngineError::glommio("truncate", &path, e))?;
        dma.fdatasync()
            .await
            .map_err(|e| EngineError::glommio("fdatasync", &path, e))?;
        {
            let mut st = inner.state.borrow_mut();
            let segment = st.segments.get_mut(&target).expect("target segment exists");
            segment
                .index
                .truncate_to_position(u32::try_from(cut).expect("segment positions fit in u32"));
            segment.size = cut;
            segment.durable = cut;
            segment.allocated = cut;
            segment.next_offset = to.max(segment.base_offset);
            // The largest timestamp left: the time index's last entry, or a later batch
            // scanned above.
            let (mut max_ts, mut max_offset) = segment
                .index
                .last_time()
                .map_or((Timestamp::NONE, segment.base_offset), |t| {
                    (t.timestamp, t.offset)
                });
            if let Some((ts, offset)) = last_ts {
                if ts > max_ts {
                    (max_ts, max_offset) = (ts, offset);
                }
            }
            segment.max_timestamp = max_ts;
            segment.max_timestamp_offset = max_offset;
        }
        // A sealed segment becomes active again: staging from its last partial page.
        let staging = staging_for(&dma, &path, cut).await?;
        {
            let mut st = inner.state.borrow_mut();
            let segment = st.segments.get_mut(&target).expect("target segment exists");
            segment.staging = Some(staging);
            segment.sealed = false;
        }
        rebuild_producers(&inner.dir, (&dma, &path), cut, target).await
    }
}
