//! Creating, opening (with crash recovery), checkpointing and closing a partition log.
//!
//! Recovery rules (also in docs/FORMAT.md):
//! - After a clean shutdown (the checkpoint says so), segments and indexes are trusted;
//!   only the active segment's tail after its last index entry is walked to find the log end.
//! - Otherwise every segment from the one holding the checkpoint's recovery point onward
//!   is verified batch by batch (CRC, dense offsets) and its indexes rebuilt. At the first
//!   invalid batch: if the rest of the file is zeros, it is O_DIRECT padding or unwritten
//!   space and is cut; if the batch lies at or past the recovery point, it is a torn tail
//!   (or the old batches of a recycled file, see `recycle`) and is cut, with a warning
//!   naming file, position and bytes dropped; if it lies below
//!   the recovery point, acknowledged data is damaged, and opening fails with an error
//!   naming the file and position, leaving the files untouched for an operator.
//! - Segments after a cut are deleted: their data was never acknowledged, because a flush
//!   cycle acknowledges nothing until every segment it wrote is fsynced.
//! - Before accepting writes, the recovered tail is fsynced and the checkpoint rewritten
//!   with `clean_shutdown = false`, so a crash from now on is detected.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::channels::local_channel;
use glommio::io::DmaFile;
use glommio::sync::Semaphore;

use super::{compact, flush, recycle, scan, Inner, LogState, PartitionLog, ShardResources};
use crate::cache::TailCache;
use crate::config::PartitionConfig;
use crate::error::{EngineError, Result};
use crate::file::{self, align_down};
use crate::index::SegmentIndex;
use crate::limits::SEGMENT_BASE_LIMIT;
use crate::meta::{self, FileKind, PartitionMeta, RecoveryCheckpoint};
use crate::producers::ProducerStates;
use crate::segment::{finalize_files, Segment};
use crate::staging::Staging;
use crate::types::{LeaderEpoch, Offset, TopicPartition};

pub const META_FILE: &str = "partition.meta";
pub const CHECKPOINT_FILE: &str = "recovery.checkpoint";
pub const PRODUCER_SNAPSHOT_FILE: &str = "producers.snapshot";

/// What was recovered when a log was opened.
#[derive(Debug)]
struct Recovered {
    segments: BTreeMap<Offset, Segment>,
    /// Free files found, with the end offsets their names give; adopted once the log is
    /// open (see `recycle`).
    free: Vec<(Offset, PathBuf)>,
    checkpoint: RecoveryCheckpoint,
    producers: ProducerStates,
}

impl PartitionLog {
    /// Creates a new, empty partition under `root`. On any failure the partly created
    /// directory is removed: nothing is half-created.
    pub async fn create(
        root: &Path,
        tp: TopicPartition,
        config: PartitionConfig,
        shard: Rc<ShardResources>,
    ) -> Result<PartitionLog> {
        let dir = root.join(tp.dir_name());
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(EngineError::PartitionExists(tp));
            }
            Err(e) => return Err(EngineError::io("create directory", &dir, e)),
        }
        let meta = PartitionMeta {
            topic: tp.topic.to_string(),
            partition: tp.partition.0,
            shard: shard.shard,
            config,
            topic_id: None,
            topic_seen_at: None,
        };
        let made = async {
            file::write_atomic(
                &dir,
                META_FILE,
                &meta::encode(FileKind::PartitionMeta, &meta),
            )
            .await?;
            let checkpoint = RecoveryCheckpoint {
                log_start: Offset::ZERO,
                recovery_point: Offset::ZERO,
                leader_epoch: LeaderEpoch(-1),
                clean_shutdown: false,
            };
            write_checkpoint(&dir, &checkpoint).await?;
            let segment =
                Segment::create(&dir, Offset::ZERO, meta.config.index_interval_bytes).await?;
            file::sync_dir(&dir).await?;
            file::sync_dir(root).await?;
            Ok::<_, EngineError>(segment)
        }
        .await;
        match made {
            Ok(segment) => {
                let segments = BTreeMap::from([(Offset::ZERO, segment)]);
                let checkpoint = RecoveryCheckpoint {
                    log_start: Offset::ZERO,
                    recovery_point: Offset::ZERO,
                    leader_epoch: LeaderEpoch(-1),
                    clean_shutdown: false,
                };
                Ok(PartitionLog::assemble(
                    tp,
                    dir,
                    meta,
                    Recovered {
                        segments,
                        free: Vec::new(),
                        checkpoint,
                        producers: ProducerStates::default(),
                    },
                    shard,
                ))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = file::sync_dir(root).await;
                Err(e)
            }
        }
    }

    /// Opens an existing partition directory, recovering it if it was not closed cleanly.
    pub async fn open(dir: PathBuf, shard: Rc<ShardResources>) -> Result<PartitionLog> {
        let meta_path = dir.join(META_FILE);
        let meta: PartitionMeta = file::read_small(&meta_path)
            .await?
            .and_then(|bytes| meta::decode_partition_meta(&bytes))
            .ok_or_else(|| EngineError::CorruptSegment {
                path: meta_path.clone(),
                position: 0,
                reason: "missing or invalid partition.meta; the partition's identity is unknown"
                    .into(),
            })?;
        let tp = TopicPartition::new(&meta.topic, meta.partition);
        let mut recovered = recover(&dir, &meta).await?;
        let free = std::mem::take(&mut recovered.free);
        if meta.shard != shard.shard {
            tracing::info!(partition = %tp, from = meta.shard.0, to = shard.shard.0, "partition placed on a new shard");
            let moved = PartitionMeta {
                shard: shard.shard,
                ..meta.clone()
            };
            file::write_atomic(
                &dir,
                META_FILE,
                &meta::encode(FileKind::PartitionMeta, &moved),
            )
            .await?;
        }
        let log = PartitionLog::assemble(tp, dir, meta, recovered, shard);
        if let Err(e) = log.write_checkpoint(false).await {
            log.stop().await;
            return Err(e);
        }
        if let Err(e) = log.0.adopt(free).await {
            log.stop().await;
            return Err(e);
        }
        Ok(log)
    }

    fn assemble(
        tp: TopicPartition,
        dir: PathBuf,
        mut meta: PartitionMeta,
        recovered: Recovered,
        shard: Rc<ShardResources>,
    ) -> PartitionLog {
        meta.shard = shard.shard;
        let mut segments = recovered.segments;
        let first_base = *segments.keys().next().expect("a log has a segment");
        let active = segments
            .values_mut()
            .next_back()
            .expect("a log has a segment");
        let log_end = active.next_offset;
        let log_start = recovered.checkpoint.log_start.clamp(first_base, log_end);
        let (bell_tx, bell_rx) = local_channel::new_bounded(1);
        let state = LogState {
            meta,
            segments,
            log_start,
            log_end,
            durable_end: log_end,
            high_watermark: log_end,
            replicated: false,
            truncating: false,
            cleaning: false,
            cleaned_to: Offset::ZERO,
            commit: Offset::ZERO,
            leader_epoch: recovered.checkpoint.leader_epoch,
            staged_bytes: 0,
            staged_permits: VecDeque::new(),
            durable_waiters: VecDeque::new(),
            progress_waiters: Vec::new(),
            dir_dirty: false,
            free: Vec::new(),
            free_reserved: 0,
            failed: None,
            closing: false,
            cache: TailCache::new(shard.cache_bytes.clone()),
            producers: recovered.producers,
            stats: Default::default(),
            deleted: false,
        };
        state.check_invariants();
        let inner = Rc::new(Inner {
            tp,
            dir,
            state: RefCell::new(state),
            gate: Semaphore::new(1),
            metadata_gate: Semaphore::new(1),
            flush_bell: bell_tx,
            flusher: RefCell::new(None),
            retention_task: RefCell::new(None),
            retention_wanted: std::cell::Cell::new(false),
            shard,
        });
        let task = flush::run(inner.clone(), bell_rx);
        let handle = match inner.shard.background {
            Some(queue) => glommio::spawn_local_into(task, queue)
                .expect("background queue exists")
                .detach(),
            None => glommio::spawn_local(task).detach(),
        };
        *inner.flusher.borrow_mut() = Some(handle);
        PartitionLog(inner)
    }

    /// Writes the recovery checkpoint. The recovery point is the durable end, but never
    /// past the first segment that is not sealed yet (its index is not on disk).
    pub async fn write_checkpoint(&self, clean_shutdown: bool) -> Result<()> {
        let inner = &self.0;
        let _serial = inner.metadata_permit().await?;
        let checkpoint = {
            let st = inner.state.borrow();
            if st.deleted {
                // A periodic pass may still hold a handle; the directory may be reused.
                return Ok(());
            }
            let active = st.active().base_offset;
            let first_unsealed = st
                .segments
                .values()
                .find(|s| !s.sealed && s.base_offset != active)
                .map_or(st.durable_end, |s| s.base_offset);
            RecoveryCheckpoint {
                log_start: st.log_start,
                recovery_point: st.durable_end.min(first_unsealed),
                leader_epoch: st.leader_epoch,
                clean_shutdown,
            }
        };
        write_checkpoint(&inner.dir, &checkpoint).await
    }

    /// Replaces the partition's config, persisting it first. New values apply to the next
    /// append, roll and retention pass; existing segments are not rewritten.
    pub async fn update_config(&self, config: PartitionConfig) -> Result<()> {
        self.rewrite_meta(|meta| meta.config = config).await
    }

    /// The id of the topic this partition was created for, if recorded.
    pub fn topic_id(&self) -> Option<[u8; 16]> {
        self.0.state.borrow().meta.topic_id
    }

    /// The cluster metadata offset at which the topic was seen with `topic_id`, if
    /// recorded.
    pub fn topic_seen_at(&self) -> Option<i64> {
        self.0.state.borrow().meta.topic_seen_at
    }

    /// Records the id of the topic this partition belongs to, and an offset of the
    /// cluster metadata log whose image named it so, persisting them first.
    pub async fn set_topic(&self, id: [u8; 16], seen_at: i64) -> Result<()> {
        self.rewrite_meta(|meta| {
            meta.topic_id = Some(id);
            meta.topic_seen_at = Some(seen_at);
        })
        .await
    }

    /// Changes `partition.meta` with `change`, writing it atomically before the new
    /// value is used.
    async fn rewrite_meta(&self, change: impl FnOnce(&mut PartitionMeta)) -> Result<()> {
        let inner = &self.0;
        let _serial = inner.metadata_permit().await?;
        let meta = {
            let st = inner.state.borrow();
            st.usable(&inner.tp)?;
            let mut meta = st.meta.clone();
            change(&mut meta);
            meta
        };
        file::write_atomic(
            &inner.dir,
            META_FILE,
            &meta::encode(FileKind::PartitionMeta, &meta),
        )
        .await?;
        inner.state.borrow_mut().meta = meta;
        Ok(())
    }

    /// Stops the flusher after a last cycle, then returns once nothing more will run.
    async fn stop(&self) {
        let inner = &self.0;
        if let Ok(gate) = inner.gate.acquire_permit(1).await {
            inner.state.borrow_mut().closing = true;
            drop(gate);
        }
        inner.ring_flusher();
        let handle = inner.flusher.borrow_mut().take();
        if let Some(handle) = handle {
            handle.await;
        }
        // A retention pass queued after a roll finds the log closing, or finishes first.
        let retention = inner.retention_task.borrow_mut().take();
        if let Some(handle) = retention {
            handle.await;
        }
        inner.forget_free();
        inner.gate.close();
        let mut st = inner.state.borrow_mut();
        for (_, tx) in st.durable_waiters.drain(..) {
            let _ = tx.send(Err(EngineError::ShuttingDown));
        }
        for tx in st.progress_waiters.drain(..) {
            let _ = tx.send(());
        }
    }

    /// Closes the log cleanly: flushes everything, finalizes the active segment's files,
    /// and records a clean shutdown so the next open skips recovery.
    pub async fn close(&self) -> Result<()> {
        self.stop().await;
        let inner = &self.0;
        if let Some(reason) = inner.state.borrow().failed.clone() {
            return Err(EngineError::PartitionOffline {
                tp: inner.tp.clone(),
                reason,
            });
        }
        let (file, path, size, index) = {
            let st = inner.state.borrow();
            let active = st.active();
            assert!(
                st.segments
                    .values()
                    .all(|s| s.sealed || s.base_offset == active.base_offset),
                "the flusher seals every rolled segment before it stops"
            );
            assert_eq!(active.durable, active.size, "closing with unflushed bytes");
            (
                active.file.clone(),
                active.log_path.clone(),
                active.size,
                active.index.clone(),
            )
        };
        finalize_files(&inner.dir, &file, &path, size, &index).await?;
        self.write_checkpoint(true).await?;
        tracing::debug!(partition = %inner.tp, "closed cleanly");
        Ok(())
    }

    /// Stops the log and removes its directory and files.
    pub async fn delete(&self, root: &Path) -> Result<()> {
        self.stop().await;
        self.0.state.borrow_mut().deleted = true;
        let dir = &self.0.dir;
        std::fs::remove_dir_all(dir).map_err(|e| EngineError::io("remove directory", dir, e))?;
        file::sync_dir(root).await
    }
}

pub(super) async fn write_checkpoint(dir: &Path, checkpoint: &RecoveryCheckpoint) -> Result<()> {
    file::write_atomic(
        dir,
        CHECKPOINT_FILE,
        &meta::encode(FileKind::RecoveryCheckpoint, checkpoint),
    )
    .await
}

/// Files found in a partition's directory: segments by base offset, and free files (see
/// `recycle`) with the end offset their names give.
struct Listed {
    logs: Vec<(Offset, PathBuf)>,
    free: Vec<(Offset, PathBuf)>,
}

/// Lists `<20 digits>.log` files by base offset and free files, removing leftover
/// temporaries and cleaned segments never committed, and finishing the swaps of committed
/// ones.
async fn list_segments(dir: &Path) -> Result<Listed> {
    let mut logs = Vec::new();
    let mut free = Vec::new();
    let mut swaps = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io("list directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("list directory", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.ends_with(compact::CLEANED_SUFFIX) {
            file::remove(&entry.path()).await?;
        } else if let Some(end) = recycle::parse_free_name(&name) {
            free.push((end, entry.path()));
        } else if let Some(stem) = name.strip_suffix(compact::SWAP_SUFFIX) {
            match stem.parse::<i64>() {
                Ok(base) if stem.len() == 20 && (0..SEGMENT_BASE_LIMIT).contains(&base) => {
                    swaps.push((Offset(base), entry.path()))
                }
                _ => {
                    tracing::warn!(file = %entry.path().display(), "ignoring a swap file whose name is not a valid base offset")
                }
            }
        } else if let Some(stem) = name.strip_suffix(".log") {
            if stem.len() == 20 {
                // Base offsets near i64::MAX would overflow offset arithmetic; no real log
                // reaches them, so such a name is not a segment of ours.
                match stem.parse::<i64>() {
                    Ok(base) if (0..SEGMENT_BASE_LIMIT).contains(&base) => {
                        logs.push((Offset(base), entry.path()))
                    }
                    _ => {
                        tracing::warn!(file = %entry.path().display(), "ignoring a .log file whose name is not a valid base offset")
                    }
                }
            }
        }
    }
    swaps.sort();
    for (base, path) in swaps {
        finish_swap(dir, base, &path, &mut logs).await?;
    }
    logs.sort();
    Ok(Listed { logs, free })
}

/// Finishes a cleaning pass's swap that a crash interrupted after its commit point: the
/// segments whose bases lie in the swap's offsets go, and the swap takes its place (its
/// indexes are rebuilt when it is loaded).
async fn finish_swap(
    dir: &Path,
    base: Offset,
    swap: &Path,
    logs: &mut Vec<(Offset, PathBuf)>,
) -> Result<()> {
    let dma = file::open_dma(swap, false).await?;
    let size = dma
        .file_size()
        .await
        .map_err(|e| EngineError::glommio("stat", swap, e))?;
    let mut next = base;
    scan::headers(&dma, swap, 0, size, |_, header| {
        next = header.last_offset().next();
        std::ops::ControlFlow::Continue(())
    })
    .await?;
    let replaced: Vec<Offset> = logs
        .iter()
        .map(|(b, _)| *b)
        .filter(|b| (base..next).contains(b))
        .chain([base])
        .collect();
    for old in &replaced {
        for ext in ["log", "index", "timeindex"] {
            file::remove(&file::segment_path(dir, old.0, ext)).await?;
        }
    }
    logs.retain(|(b, _)| !(base..next).contains(b));
    let final_path = file::segment_path(dir, base.0, "log");
    std::fs::rename(swap, &final_path).map_err(|e| EngineError::io("rename", swap, e))?;
    file::sync_dir(dir).await?;
    tracing::info!(dir = %dir.display(), base_offset = base.0, next_offset = next.0, "finished a cleaned segment's swap after a crash");
    logs.push((base, final_path));
    Ok(())
}

async fn recover(dir: &Path, meta: &PartitionMeta) -> Result<Recovered> {
    let checkpoint = file::read_small(&dir.join(CHECKPOINT_FILE))
        .await?
        .and_then(|bytes| meta::decode::<RecoveryCheckpoint>(FileKind::RecoveryCheckpoint, &bytes));
    if checkpoint.is_none() {
        tracing::warn!(dir = %dir.display(), "no valid recovery checkpoint: verifying every segment");
    }
    let checkpoint = checkpoint.unwrap_or(RecoveryCheckpoint {
        log_start: Offset::ZERO,
        recovery_point: Offset::ZERO,
        leader_epoch: LeaderEpoch(-1),
        clean_shutdown: false,
    });
    let interval = meta.config.index_interval_bytes;
    let Listed { logs: listed, free } = list_segments(dir).await?;
    let mut segments = BTreeMap::new();
    if listed.is_empty() {
        let base = checkpoint.log_start;
        segments.insert(base, Segment::create(dir, base, interval).await?);
        file::sync_dir(dir).await?;
        return Ok(Recovered {
            segments,
            free,
            checkpoint,
            producers: ProducerStates::default(),
        });
    }
    let verify_from = if checkpoint.clean_shutdown {
        Offset(i64::MAX)
    } else {
        listed
            .iter()
            .rev()
            .find(|(base, _)| *base <= checkpoint.recovery_point)
            .map_or(listed[0].0, |(b, _)| *b)
    };
    // A segment is kept only if it starts exactly where the recovered log before it ends.
    // A gap means the previous segment lost a torn tail, so nothing from here on was
    // acknowledged (a flush cycle acknowledges nothing until every segment it wrote is
    // fsynced); everything from the gap on is deleted.
    let mut discarding = false;
    let mut changed_dir = false;
    let next_bases: Vec<Offset> = listed.iter().skip(1).map(|(b, _)| *b).collect();
    for (i, (base, path)) in listed.into_iter().enumerate() {
        // A segment wholly below the log start is left over from a retention pass that a
        // crash interrupted after its checkpoint: finish deleting it.
        let below_start = next_bases
            .get(i)
            .is_some_and(|next| *next <= checkpoint.log_start);
        let previous_end = segments
            .values()
            .next_back()
            .map(|s: &Segment| s.next_offset);
        if let Some(end) = previous_end {
            if end > base {
                return Err(EngineError::CorruptSegment {
                    path,
                    position: 0,
                    reason: format!(
                        "segment overlaps the previous one, which ends at offset {}",
                        end.0
                    ),
                });
            }
            if end < base && base >= verify_from {
                tracing::warn!(file = %path.display(), expected = end.0, "a segment starts past the end of the recovered log before it");
                discarding = true;
            }
        }
        if discarding || below_start {
            tracing::warn!(file = %path.display(), "deleting a segment below the log start or after a lost tail");
            for ext in ["log", "index", "timeindex"] {
                file::remove(&file::segment_path(dir, base.0, ext)).await?;
            }
            changed_dir = true;
            continue;
        }
        let mut segment = Segment::open(path, base, interval).await?;
        if base >= verify_from {
            changed_dir |= verify_segment(&mut segment, &checkpoint).await?;
            segment
                .file
                .fdatasync()
                .await
                .map_err(|e| EngineError::glommio("fdatasync", &segment.log_path, e))?;
        } else {
            load_sealed(dir, &mut segment).await?;
        }
        segments.insert(base, segment);
    }
    if changed_dir {
        file::sync_dir(dir).await?;
    }
    // Verified segments other than the last were rolled but maybe not sealed before the
    // stop: seal them now, so the checkpoint may count them below the recovery point.
    let last = *segments.keys().next_back().expect("at least one segment");
    for segment in segments
        .values_mut()
        .filter(|s| s.base_offset != last && s.base_offset >= verify_from)
    {
        segment
            .index
            .seal_time(segment.max_timestamp, segment.max_timestamp_offset);
        finalize_files(
            dir,
            &segment.file,
            &segment.log_path,
            segment.size,
            &segment.index,
        )
        .await?;
    }
    let active = segments
        .values_mut()
        .next_back()
        .expect("at least one segment");
    activate(active).await?;
    let producers = rebuild_producers(
        dir,
        (&active.file, &active.log_path),
        active.size,
        active.base_offset,
    )
    .await?;
    Ok(Recovered {
        segments,
        free,
        checkpoint,
        producers,
    })
}

/// Rebuilds idempotent producers' state: the snapshot taken when the active segment
/// was started, then the active segment's batch headers on top. A snapshot of another
/// offset (the segment it was taken for was lost in a crash, or it is from before a
/// truncation) or a damaged one is ignored with a warning: producers whose batches are
/// all in older segments are then forgotten, and their next batch must start a new
/// sequence (clients do so on UNKNOWN_PRODUCER_ID).
pub(super) async fn rebuild_producers(
    dir: &Path,
    (dma, log_path): (&DmaFile, &Path),
    size: u64,
    base_offset: Offset,
) -> Result<ProducerStates> {
    let path = dir.join(PRODUCER_SNAPSHOT_FILE);
    let snapshot = file::read_small(&path).await?.map(|bytes| {
        meta::decode::<crate::producers::ProducerSnapshot>(FileKind::ProducerSnapshot, &bytes)
    });
    let mut producers = match snapshot {
        Some(Some(s)) if s.offset == base_offset.0 => ProducerStates::restore(&s),
        Some(Some(s)) => {
            tracing::warn!(path = %path.display(), snapshot = s.offset, active = base_offset.0,
                "producer snapshot is not for the active segment: ignored");
            ProducerStates::default()
        }
        Some(None) => {
            tracing::warn!(path = %path.display(), "producer snapshot is damaged: ignored");
            ProducerStates::default()
        }
        None => ProducerStates::default(),
    };
    scan::headers(dma, log_path, 0, size, |_, header| {
        producers.record(header, header.base_offset);
        std::ops::ControlFlow::Continue(())
    })
    .await?;
    Ok(producers)
}

/// Verifies a segment past the recovery point; returns whether its tail was cut.
async fn verify_segment(segment: &mut Segment, checkpoint: &RecoveryCheckpoint) -> Result<bool> {
    let file_size = segment.size;
    let Some(invalid) = scan::verify(segment).await? else {
        return Ok(false);
    };
    let dropped = file_size - invalid.position;
    // Every offset below the recovery point was fsynced: invalid bytes there, even zeros,
    // are damage to acknowledged data, reported and never cut.
    if invalid.expected_offset < checkpoint.recovery_point {
        return Err(EngineError::CorruptSegment {
            path: segment.log_path.clone(),
            position: invalid.position,
            reason: format!(
                "{} (offset {} is below the recovery point {}, so it was acknowledged as durable)",
                invalid.reason, invalid.expected_offset.0, checkpoint.recovery_point.0
            ),
        });
    }
    if invalid.zero_tail {
        tracing::info!(file = %segment.log_path.display(), position = invalid.position, bytes = dropped, "cut zero padding after the last batch");
    } else {
        tracing::warn!(
            file = %segment.log_path.display(),
            position = invalid.position,
            bytes = dropped,
            reason = %invalid.reason,
            "truncated a torn tail (or a recycled file's old batches) past the recovery point"
        );
    }
    segment
        .file
        .truncate(invalid.position)
        .await
        .map_err(|e| EngineError::glommio("truncate", &segment.log_path, e))?;
    segment.allocated = invalid.position;
    Ok(true)
}

/// Loads a sealed segment's indexes (rebuilding them if invalid) and finds its end.
async fn load_sealed(dir: &Path, segment: &mut Segment) -> Result<()> {
    let base = segment.base_offset.0;
    let index = file::read_small(&file::segment_path(dir, base, "index"))
        .await?
        .unwrap_or_default();
    let times = file::read_small(&file::segment_path(dir, base, "timeindex"))
        .await?
        .unwrap_or_default();
    let interval = segment.index.interval_bytes();
    let Some(decoded) =
        SegmentIndex::decode(segment.base_offset, interval, &index, &times, segment.size)
    else {
        tracing::warn!(file = %segment.log_path.display(), "index missing or invalid: rebuilding from the log");
        if let Some(invalid) = scan::verify(segment).await? {
            return Err(EngineError::CorruptSegment {
                path: segment.log_path.clone(),
                position: invalid.position,
                reason: invalid.reason,
            });
        }
        return Ok(());
    };
    let from = decoded
        .offset_entries()
        .last()
        .map_or(0, |e| u64::from(e.position));
    segment.index = decoded;
    if let Some(last) = segment.index.last_time() {
        segment.max_timestamp = last.timestamp;
        segment.max_timestamp_offset = last.offset;
    }
    let mut end = from;
    let mut next = segment.base_offset;
    let mut last_ts = None;
    scan::headers(
        &segment.file,
        &segment.log_path,
        from,
        segment.size,
        |position, header| {
            end = position + header.size as u64;
            next = header.last_offset().next();
            last_ts = Some((header.max_timestamp, header.base_offset));
            std::ops::ControlFlow::Continue(())
        },
    )
    .await?;
    if end != segment.size {
        return Err(EngineError::CorruptSegment {
            path: segment.log_path.clone(),
            position: end,
            reason: format!(
                "the last batch ends at byte {end} but the file has {} bytes",
                segment.size
            ),
        });
    }
    segment.next_offset = next;
    if let Some((ts, offset)) = last_ts {
        if ts > segment.max_timestamp {
            segment.max_timestamp = ts;
            segment.max_timestamp_offset = offset;
        }
    }
    Ok(())
}

/// Makes the last segment writable: staging starts at the last aligned position with the
/// partial page read back from disk.
async fn activate(segment: &mut Segment) -> Result<()> {
    let staging = staging_for(&segment.file, &segment.log_path, segment.size).await?;
    segment.staging = Some(staging);
    segment.sealed = false;
    segment.durable = segment.size;
    Ok(())
}

/// Staging for appends after byte `size` of a segment file: it starts at the last
/// aligned position, with the partial page read back from disk.
pub(super) async fn staging_for(dma: &DmaFile, path: &Path, size: u64) -> Result<Staging> {
    let start = align_down(size);
    let prefix = if size > start {
        file::read_at(dma, path, start, (size - start) as usize).await?
    } else {
        Vec::new()
    };
    assert_eq!(
        prefix.len() as u64,
        size - start,
        "partial page read back whole"
    );
    Ok(Staging::new(dma, start, &prefix))
}
