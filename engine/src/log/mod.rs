//! A partition log: ordered segments, the append path, and the offsets that describe it.
//!
//! Lives on, and is only touched by, the shard that owns the partition; there are no
//! locks, only `RefCell` borrows that are never held across an `.await`.
//!
//! Offsets, each a promise (all dense, `log_start <= high_watermark <= durable_end <= log_end`):
//! - `log_start`: the first offset still in the log (retention moves it forward);
//! - `log_end`: the next offset to assign; batches below it are appended (maybe only staged);
//! - `durable_end`: every offset below it is written and covered by a completed `fdatasync`;
//! - `high_watermark`: the last offset + 1 readers may see. On a single node it equals
//!   `durable_end`; replication will drive it to the quorum commit index instead.
//!
//! Appends are validated, stamped with their base offset and leader epoch, staged into
//! the active segment's aligned buffers and the tail cache, then made durable by the
//! partition's flusher (group commit, see `flush`). A storage failure takes the partition
//! offline through `Inner::fail`, the one place that does so.

mod compact;
mod flush;
pub(crate) mod open;
mod read;
mod recycle;
mod replica;
mod retention;
mod scan;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::BytesMut;
use futures::channel::oneshot;
use glommio::channels::local_channel::LocalSender;
use glommio::sync::{Semaphore, StaticPermit};
use glommio::task::JoinHandle;

use crate::batch::{self, BatchHeader};
use crate::cache::TailCache;
use crate::config::{AckPolicy, PartitionConfig};
use crate::error::{EngineError, Result};
use crate::limits::{PARTITION_STAGED_BYTES_MAX, SHARD_STAGED_BYTES_MAX};
use crate::meta::PartitionMeta;
use crate::producers::{ProducerStates, Verdict};
use crate::segment::Segment;
use crate::types::{LeaderEpoch, Offset, ShardId, Timestamp, TopicPartition};

pub use compact::{CompactionOutcome, CompactionSettings, SwapStep};
pub use read::{ReadChunk, ReadResult};
pub use replica::{ReplicaRead, ValidBatch};
pub use retention::RetentionOutcome;

/// Resources one shard's partitions share. Created once per shard.
#[derive(Debug)]
pub struct ShardResources {
    pub shard: ShardId,
    /// Permits for staged bytes over the whole shard (`SHARD_STAGED_BYTES_MAX`).
    pub staged: Rc<Semaphore>,
    /// Tail-cache bytes over the whole shard.
    pub cache_bytes: Rc<Cell<usize>>,
    /// Task queue for flushes, sealing, retention and checkpoints.
    pub background: Option<glommio::TaskQueueHandle>,
    /// Whether retention keeps deleted segment files for new segments to write over (see
    /// `recycle`). On by default; benchmarks turn it off to measure what it gains.
    pub recycle_segments: Cell<bool>,
    /// Bytes of the free files the shard's open partitions keep, at most
    /// `SHARD_RECYCLED_BYTES_MAX`.
    pub recycled_bytes: Cell<u64>,
}

impl ShardResources {
    pub fn new(shard: ShardId, background: Option<glommio::TaskQueueHandle>) -> Rc<ShardResources> {
        Rc::new(ShardResources {
            shard,
            staged: Rc::new(Semaphore::new(SHARD_STAGED_BYTES_MAX as u64)),
            cache_bytes: Rc::new(Cell::new(0)),
            background,
            recycle_segments: Cell::new(true),
            recycled_bytes: Cell::new(0),
        })
    }
}

/// What an append resolved with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub log_start: Offset,
    /// The broker's time of the append (for LogAppendTime topics).
    pub append_time: Timestamp,
}

/// The offsets of a partition at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOffsets {
    pub log_start: Offset,
    pub high_watermark: Offset,
    pub durable_end: Offset,
    pub log_end: Offset,
}

/// Counters of a partition's write path, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Appends accepted.
    pub appends: u64,
    /// Sync rounds: each one `fdatasync` per dirty segment, covering one or more flush
    /// cycles' writes.
    pub flush_cycles: u64,
    /// Bytes handed to O_DIRECT writes, padding and rewritten partial pages included.
    pub bytes_written: u64,
    /// Segments rolled (started after the first).
    pub segments_rolled: u64,
    /// Of those, segments started by writing over a free file (see `recycle`).
    pub segments_recycled: u64,
}

/// A handle to a partition log, cheap to clone, usable only on its shard.
#[derive(Clone, Debug)]
pub struct PartitionLog(Rc<Inner>);

#[derive(Debug)]
pub(crate) struct Inner {
    tp: TopicPartition,
    dir: PathBuf,
    state: RefCell<LogState>,
    /// Serialises the part of an append that may roll a segment and assigns offsets, so
    /// appends land in arrival order even when one of them waits for a roll.
    gate: Semaphore,
    /// Serialises writes of the partition's metadata files (checkpoint), which share a
    /// temporary file name.
    metadata_gate: Semaphore,
    /// Rung after every append; the flusher waits on it. Capacity 1: rings coalesce.
    flush_bell: LocalSender<()>,
    flusher: RefCell<Option<JoinHandle<()>>>,
    /// The retention pass queued after a roll, while it runs (see `recycle`).
    retention_task: RefCell<Option<JoinHandle<()>>>,
    /// Another retention pass was asked for while one ran.
    retention_wanted: Cell<bool>,
    shard: Rc<ShardResources>,
}

#[derive(Debug)]
pub(crate) struct LogState {
    meta: PartitionMeta,
    segments: BTreeMap<Offset, Segment>,
    log_start: Offset,
    log_end: Offset,
    durable_end: Offset,
    high_watermark: Offset,
    /// Set for a replicated partition: the high watermark then follows the quorum commit
    /// index (`commit`, capped at the durable end) instead of the durable end.
    replicated: bool,
    commit: Offset,
    /// A truncation is cutting files: retention and `delete_records` wait their turn.
    truncating: bool,
    /// A cleaning pass is rewriting sealed segments: retention waits its turn.
    cleaning: bool,
    /// Offsets below this were cleaned by this process's last pass (0 after a restart:
    /// the whole log then counts as dirty once).
    cleaned_to: Offset,
    leader_epoch: LeaderEpoch,
    /// Bytes staged and not yet taken by a flush cycle.
    staged_bytes: usize,
    /// Shard-wide staging permits of the staged and in-flight appends, with the offset
    /// after each append's batch; in offset order.
    staged_permits: VecDeque<(Offset, StaticPermit)>,
    /// Durable appends waiting for `durable_end` to pass their end offset; in offset order.
    durable_waiters: VecDeque<(Offset, oneshot::Sender<Result<()>>)>,
    /// Woken after every flush cycle (and on failure): staged-bytes backpressure and
    /// long-polling readers. Bounded by the callers in flight.
    progress_waiters: Vec<oneshot::Sender<()>>,
    /// A segment file was created or deleted; the next cycle syncs the directory first.
    dir_dirty: bool,
    /// Deleted segments' files kept to be written over; at most `RECYCLED_SEGMENTS_MAX`.
    free: Vec<recycle::FreeFile>,
    /// Files a retention pass is renaming into `free`.
    free_reserved: usize,
    failed: Option<String>,
    closing: bool,
    cache: TailCache,
    producers: ProducerStates,
    stats: LogStats,
    /// Set once the partition's files are removed; nothing may write them again.
    deleted: bool,
}

impl LogState {
    fn config(&self) -> &PartitionConfig {
        &self.meta.config
    }

    /// The segment holding `offset`: the last one starting at or below it. Readers ask
    /// only for offsets at or past the first segment's base (the log start, or the base
    /// of the batch holding it).
    fn segment_holding(&self, offset: Offset) -> &Segment {
        let (_, segment) = self
            .segments
            .range(..=offset)
            .next_back()
            .expect("offset at or past log start lies in a segment");
        segment
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn offsets(&self) -> LogOffsets {
        LogOffsets {
            log_start: self.log_start,
            high_watermark: self.high_watermark,
            durable_end: self.durable_end,
            log_end: self.log_end,
        }
    }

    fn check_invariants(&self) {
        assert!(
            self.log_start <= self.high_watermark,
            "log start past high watermark"
        );
        assert!(
            self.high_watermark <= self.durable_end,
            "high watermark past durable end"
        );
        assert!(self.durable_end <= self.log_end, "durable end past log end");
        assert_eq!(
            self.active().next_offset,
            self.log_end,
            "active segment ends at log end"
        );
    }

    /// Whether a batch of `size` bytes and `records` records must go to a new segment.
    fn needs_roll(&self, size: usize, records: i64, now: Timestamp) -> bool {
        let active = self.active();
        if active.is_empty() {
            return false;
        }
        let config = self.config();
        let too_big = active.size + size as u64 > config.segment_bytes;
        let too_old = active
            .first_append_at
            .is_some_and(|first| now.0.saturating_sub(first.0) >= config.segment_ms);
        // Relative offsets in `.index` are u32.
        let offsets_full =
            self.log_end.0.saturating_add(records) - active.base_offset.0 > i64::from(u32::MAX);
        too_big || too_old || offsets_full
    }

    /// Stages a validated batch whose header fields are final at the log end.
    fn stage(
        &mut self,
        bytes: bytes::Bytes,
        header: &BatchHeader,
        now: Timestamp,
        permit: StaticPermit,
    ) {
        assert_eq!(
            header.base_offset, self.log_end,
            "batches are staged at the log end"
        );
        self.active_mut().append(&bytes, header, now);
        self.producers.record(header, header.base_offset);
        self.log_end = header.last_offset().next();
        self.leader_epoch = self.leader_epoch.max(header.leader_epoch);
        self.cache
            .push(header.base_offset, header.last_offset(), bytes);
        self.staged_bytes += header.size;
        self.staged_permits.push_back((self.log_end, permit));
        self.stats.appends += 1;
    }

    /// The high watermark a durable end and commit index allow.
    fn visible_end(&self) -> Offset {
        if self.replicated {
            self.high_watermark.max(self.commit.min(self.durable_end))
        } else {
            self.durable_end
        }
    }

    fn usable(&self, tp: &TopicPartition) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(EngineError::PartitionOffline {
                tp: tp.clone(),
                reason: reason.clone(),
            });
        }
        if self.closing {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }
}

impl PartitionLog {
    pub fn topic_partition(&self) -> &TopicPartition {
        &self.0.tp
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.0.dir
    }

    pub fn offsets(&self) -> LogOffsets {
        self.0.state.borrow().offsets()
    }

    pub fn stats(&self) -> LogStats {
        self.0.state.borrow().stats
    }

    pub fn config(&self) -> PartitionConfig {
        self.0.state.borrow().config().clone()
    }

    /// Number of segments (closed and active).
    pub fn segment_count(&self) -> usize {
        self.0.state.borrow().segments.len()
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.0.state.borrow().segments.keys().copied().collect()
    }

    /// Whether the log is closing or deleted: it takes no more appends.
    pub fn is_closing(&self) -> bool {
        let st = self.0.state.borrow();
        st.closing || st.deleted
    }

    /// The reason the partition went offline, if it did.
    pub fn failure(&self) -> Option<String> {
        self.0.state.borrow().failed.clone()
    }

    /// Validates a producer's batch, assigns its offsets, stages it, and resolves per
    /// `policy`. A rejected batch writes nothing. The batch's bytes become the stored and
    /// cached bytes; only base offset and leader epoch are changed.
    pub async fn append(
        &self,
        mut batch: BytesMut,
        leader_epoch: LeaderEpoch,
        policy: AckPolicy,
    ) -> Result<AppendInfo> {
        let inner = &self.0;
        let max_bytes = inner.state.borrow().config().batch_bytes_max();
        let header = batch::validate(&batch, max_bytes)?;
        inner.state.borrow().usable(&inner.tp)?;
        let size = batch.len();
        let (permit, _gate, now) = inner.admit(size, header.record_count).await?;
        let (info, waiter, appended) = 'staged: {
            let mut st = inner.state.borrow_mut();
            st.usable(&inner.tp)?;
            if let Verdict::Duplicate {
                base_offset,
                last_offset,
            } = st.producers.check(&header)?
            {
                // A producer's retry: answer with the first append's offsets, once that
                // append is as durable as this one asks.
                let waiter =
                    (policy == AckPolicy::Durable && st.durable_end <= last_offset).then(|| {
                        let (tx, rx) = oneshot::channel();
                        st.durable_waiters.push_back((last_offset.next(), tx));
                        rx
                    });
                let info = AppendInfo {
                    base_offset,
                    last_offset,
                    log_start: st.log_start,
                    append_time: now,
                };
                break 'staged (info, waiter, false);
            }
            let base_offset = st.log_end;
            batch::patch(&mut batch, base_offset, leader_epoch);
            let header = BatchHeader {
                base_offset,
                leader_epoch,
                ..header
            };
            st.stage(batch.freeze(), &header, now, permit);
            let waiter = (policy == AckPolicy::Durable).then(|| {
                let (tx, rx) = oneshot::channel();
                let end = st.log_end;
                st.durable_waiters.push_back((end, tx));
                rx
            });
            st.check_invariants();
            let info = AppendInfo {
                base_offset,
                last_offset: header.last_offset(),
                log_start: st.log_start,
                append_time: now,
            };
            (info, waiter, true)
        };
        drop(_gate);
        if appended {
            inner.ring_flusher();
        }
        if let Some(waiter) = waiter {
            waiter.await.map_err(|_| EngineError::ShuttingDown)??;
        }
        Ok(info)
    }

    /// Resolves after the next flush cycle completes, or at once if the partition failed
    /// or is closing. Long-polling readers use it to wait for the high watermark to move.
    pub async fn wait_for_progress(&self) {
        self.0.wait_for_progress().await
    }

    /// Resolves once the high watermark passes `offset` (data to read there), the
    /// partition fails or closes, or `timeout` elapses; returns whether data is there.
    pub async fn wait_for_data(&self, offset: Offset, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.offsets().high_watermark > offset {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline || self.failure().is_some() {
                return false;
            }
            let progressed = futures::future::select(
                Box::pin(self.0.wait_for_progress()),
                Box::pin(glommio::timer::sleep(deadline - now)),
            )
            .await;
            if matches!(progressed, futures::future::Either::Right(_)) {
                return self.offsets().high_watermark > offset;
            }
            if self.0.state.borrow().closing {
                return false;
            }
        }
    }
}

impl Inner {
    /// Serialises writers of the partition's metadata files.
    async fn metadata_permit(&self) -> Result<glommio::sync::Permit<'_>> {
        self.metadata_gate
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    fn ring_flusher(&self) {
        // Full means a ring is already pending: rings coalesce, which is the point.
        let _ = self.flush_bell.try_send(());
    }

    async fn wait_for_progress(&self) {
        let rx = {
            let mut st = self.state.borrow_mut();
            if st.failed.is_some() || st.closing {
                return;
            }
            // Waiters that gave up (a long poll that timed out) are dropped here, so an
            // idle partition polled forever does not accumulate them.
            st.progress_waiters.retain(|tx| !tx.is_canceled());
            let (tx, rx) = oneshot::channel();
            st.progress_waiters.push(tx);
            rx
        };
        let _ = rx.await;
    }

    /// What every append waits for before it may stage `size` bytes of `records`
    /// records: its share of the shard's staging budget, its turn at the append gate,
    /// room in the partition's staging, and a new segment if this one is full. Returns
    /// the permits to hold and the append's time.
    async fn admit(
        &self,
        size: usize,
        records: i32,
    ) -> Result<(StaticPermit, glommio::sync::Permit<'_>, Timestamp)> {
        let permit = self
            .shard
            .staged
            .acquire_static_permit(size as u64)
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        let gate = self
            .gate
            .acquire_permit(1)
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        // The partition may have started closing (or failed) while this append waited;
        // it must not roll a segment the stopped flusher would never seal.
        self.state.borrow().usable(&self.tp)?;
        self.wait_for_staging_room(size).await?;
        let now = Timestamp::now();
        if self
            .state
            .borrow()
            .needs_roll(size, i64::from(records), now)
        {
            self.roll().await?;
        }
        Ok((permit, gate, now))
    }

    /// Backpressure: waits while this partition has more than its share staged.
    async fn wait_for_staging_room(&self, size: usize) -> Result<()> {
        loop {
            let staged = self.state.borrow().staged_bytes;
            if staged == 0 || staged + size <= PARTITION_STAGED_BYTES_MAX {
                return Ok(());
            }
            self.ring_flusher();
            self.wait_for_progress().await;
            self.state.borrow().usable(&self.tp)?;
        }
    }

    /// Starts a new active segment at `log_end`. The old one keeps its staged bytes; the
    /// flusher writes them and seals it. Called with the append gate held.
    async fn roll(&self) -> Result<()> {
        let (base, interval, producers) = {
            let st = self.state.borrow();
            (
                st.log_end,
                st.config().index_interval_bytes,
                st.producers.snapshot(st.log_end),
            )
        };
        // The producers as of the new segment's start, so that after a restart those whose
        // last batches are in older segments are still known (see `open::rebuild_producers`).
        // Saved before the segment exists: a segment never lacks its snapshot for want of
        // a crash in between.
        crate::file::write_atomic(
            &self.dir,
            open::PRODUCER_SNAPSHOT_FILE,
            &crate::meta::encode(crate::meta::FileKind::ProducerSnapshot, &producers),
        )
        .await?;
        let free = self.take_free(base);
        let recycled = free.is_some();
        let segment = match free {
            Some(free) => Segment::reuse(&self.dir, base, interval, &free).await?,
            None => Segment::create(&self.dir, base, interval).await?,
        };
        tracing::debug!(partition = %self.tp, base_offset = base.0, recycled, "rolled a new segment");
        let mut st = self.state.borrow_mut();
        assert!(
            st.segments.insert(base, segment).is_none(),
            "segment base offsets are unique"
        );
        st.dir_dirty = true;
        st.stats.segments_rolled += 1;
        Ok(())
    }

    /// Takes the partition offline after a storage failure: every waiting append gets an
    /// error, new calls are refused, nothing is retried (after a failed fsync the file's
    /// contents are unknown). The one place that does this, and it says so loudly.
    fn fail(&self, error: &EngineError) {
        let reason = error.to_string();
        tracing::error!(partition = %self.tp, %reason, "partition taken offline after a storage failure");
        let mut st = self.state.borrow_mut();
        st.failed.get_or_insert(reason.clone());
        for (_, tx) in st.durable_waiters.drain(..) {
            let _ = tx.send(Err(EngineError::PartitionOffline {
                tp: self.tp.clone(),
                reason: reason.clone(),
            }));
        }
        for tx in st.progress_waiters.drain(..) {
            let _ = tx.send(());
        }
        st.staged_permits.clear();
    }
}
