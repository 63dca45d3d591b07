//! Recycling the `.log` files of segments that retention deleted.
//!
//! On this kind of disk an `fdatasync` after writing fresh space must also commit the
//! block allocation (or, for `fallocate`d space, the change of its extents from unwritten
//! to written) to the filesystem's journal; writing over blocks already written commits
//! only the data. Measured in docs/PERFORMANCE.md: durable 1 MiB writes ran 2.3 times as
//! fast over written blocks as into preallocated ones. So, as databases recycle their
//! write-ahead log files, retention keeps up to `RECYCLED_SEGMENTS_MAX` deleted `.log`
//! files per partition as *free files*, named `<end offset>.free`, and a roll renames one
//! to the new segment's name and writes over it.
//!
//! Invariants:
//! - A free file holds only offsets below the end offset in its name, and becomes a
//!   segment only at a base offset at or past that end. Past the new data, the file still
//!   holds old batches; recovery accepts a batch only if it starts at exactly the offset
//!   the log expects, which an old batch, whose offsets are all lower, never does. So
//!   after a crash the old bytes are cut like a torn tail.
//! - A free file is reused only once no read holds its descriptors: a zero-copy fetch of
//!   the deleted segment may still be sending from it, and must not see new bytes.
//! - A sealed segment, and the active one at a clean shutdown, is truncated to its data as
//!   always, so only the active segment after a crash ever has old bytes past its end.
//! - At most `RECYCLED_SEGMENTS_MAX` free files per partition, and at most
//!   `SHARD_RECYCLED_BYTES_MAX` bytes of them per shard (`ShardResources::recycled_bytes`
//!   counts those of open partitions), so retention still frees the disk.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::DmaFile;

use super::{Inner, PartitionLog, ShardResources};
use crate::error::{EngineError, Result};
use crate::file;
use crate::limits::{RECYCLED_SEGMENTS_MAX, SEGMENT_BASE_LIMIT, SHARD_RECYCLED_BYTES_MAX};
use crate::segment::Segment;
use crate::types::{Offset, Timestamp};

/// The suffix of a free file.
pub(crate) const FREE_SUFFIX: &str = ".free";

/// A deleted segment's `.log`, kept to be written over by a later segment.
#[derive(Debug)]
pub(crate) struct FreeFile {
    /// One past the last offset the file held.
    end: Offset,
    path: PathBuf,
    /// The file's size, counted in the shard's `recycled_bytes`.
    bytes: u64,
    /// The deleted segment's descriptors, which reads in flight may still share. `None`
    /// for a file found at startup.
    held: Option<(Rc<DmaFile>, Arc<std::fs::File>)>,
}

impl FreeFile {
    fn in_use(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|(dma, reader)| Rc::strong_count(dma) > 1 || Arc::strong_count(reader) > 1)
    }
}

fn free_path(dir: &Path, end: Offset) -> PathBuf {
    dir.join(format!("{:020}{FREE_SUFFIX}", end.0))
}

/// The end offset named by a free file's name, if `name` is one.
pub(crate) fn parse_free_name(name: &str) -> Option<Offset> {
    let stem = name.strip_suffix(FREE_SUFFIX)?;
    let end = stem.parse::<i64>().ok()?;
    (stem.len() == 20 && (0..=SEGMENT_BASE_LIMIT).contains(&end)).then_some(Offset(end))
}

/// Counts `bytes` more of free files on `shard`, if its budget allows.
fn reserve(shard: &ShardResources, bytes: u64) -> bool {
    let total = shard.recycled_bytes.get() + bytes;
    let fits = total <= SHARD_RECYCLED_BYTES_MAX;
    if fits {
        shard.recycled_bytes.set(total);
    }
    fits
}

/// Stops counting `bytes` of free files on `shard`.
fn release(shard: &ShardResources, bytes: u64) {
    let held = shard.recycled_bytes.get();
    assert!(held >= bytes, "free-file bytes released more than once");
    shard.recycled_bytes.set(held - bytes);
}

impl Inner {
    /// Takes in the free files found when the log was opened: each is kept if every
    /// offset it held lies below the log's first segment, within the pool's bounds; the
    /// rest are deleted.
    pub(super) async fn adopt(&self, mut found: Vec<(Offset, PathBuf)>) -> Result<()> {
        let first = *self
            .state
            .borrow()
            .segments
            .keys()
            .next()
            .expect("a log has a segment");
        // The newest first: they are the likeliest to be as large as a full segment.
        found.sort();
        for (end, path) in found.into_iter().rev() {
            let bytes = std::fs::metadata(&path)
                .map_err(|e| EngineError::io("stat", &path, e))?
                .len();
            let kept = {
                let mut st = self.state.borrow_mut();
                let keep = end <= first
                    && st.free.len() < RECYCLED_SEGMENTS_MAX
                    && reserve(&self.shard, bytes);
                if keep {
                    st.free.push(FreeFile {
                        end,
                        path: path.clone(),
                        bytes,
                        held: None,
                    });
                }
                keep
            };
            if kept {
                continue;
            }
            tracing::info!(file = %path.display(), "deleting a free segment file");
            file::remove(&path).await?;
        }
        Ok(())
    }

    /// Deletes a segment that retention dropped, keeping its `.log` as a free file when
    /// the pool has room. The caller syncs the directory.
    pub(super) async fn retire(&self, segment: Segment) -> Result<()> {
        let [log, index, timeindex] = segment.paths(&self.dir);
        file::remove(&index).await?;
        file::remove(&timeindex).await?;
        assert!(segment.sealed, "only sealed segments are retired");
        let keep = {
            let mut st = self.state.borrow_mut();
            // Reserved before the rename, so a concurrent pass sees the pool as full.
            let keep = self.shard.recycle_segments.get()
                && segment.size > 0
                && st.free.len() + st.free_reserved < RECYCLED_SEGMENTS_MAX
                && reserve(&self.shard, segment.size);
            if keep {
                st.free_reserved += 1;
            }
            keep
        };
        if !keep {
            return file::remove(&log).await;
        }
        let path = free_path(&self.dir, segment.next_offset);
        let renamed = std::fs::rename(&log, &path).map_err(|e| EngineError::io("rename", &log, e));
        let mut st = self.state.borrow_mut();
        st.free_reserved -= 1;
        // A log that closed meanwhile has forgotten its pool: the file stays on disk for
        // the next open to adopt.
        if renamed.is_err() || st.closing {
            release(&self.shard, segment.size);
            return renamed;
        }
        st.free.push(FreeFile {
            end: segment.next_offset,
            path,
            bytes: segment.size,
            held: Some((segment.file, segment.reader)),
        });
        Ok(())
    }

    /// Forgets the pool when the partition closes: its files stay on disk for the next
    /// open to adopt, and no longer count in the shard's budget.
    pub(super) fn forget_free(&self) {
        let free = std::mem::take(&mut self.state.borrow_mut().free);
        for f in free {
            release(&self.shard, f.bytes);
        }
    }

    /// Takes a free file a segment starting at `base` may be written over: one whose
    /// offsets all lie below `base` and that no read holds. Returns its path.
    pub(super) fn take_free(&self, base: Offset) -> Option<PathBuf> {
        let mut st = self.state.borrow_mut();
        let i = st.free.iter().position(|f| f.end <= base && !f.in_use())?;
        let free = st.free.swap_remove(i);
        st.stats.segments_recycled += 1;
        release(&self.shard, free.bytes);
        Some(free.path)
    }

    /// Queues a retention pass on the shard's background queue, so that the segments a
    /// roll made deletable become free files before the next roll, rather than at the
    /// next periodic check. Only on a shard with a background queue (every real shard); at
    /// most one pass runs at a time, and one more follows if asked for meanwhile.
    pub(super) fn queue_retention(self: &Rc<Inner>) {
        let Some(queue) = self.shard.background else {
            return;
        };
        self.retention_wanted.set(true);
        if self.retention_task.borrow().is_some() {
            return;
        }
        let log = PartitionLog(self.clone());
        let task = async move {
            while log.0.retention_wanted.replace(false) {
                if let Err(e) = log.apply_retention(Timestamp::now()).await {
                    tracing::debug!(partition = %log.0.tp, error = %e, "retention after a roll did not run");
                    break;
                }
            }
            log.0.retention_task.borrow_mut().take();
        };
        let handle = glommio::spawn_local_into(task, queue)
            .expect("background queue exists")
            .detach();
        *self.retention_task.borrow_mut() = Some(handle);
    }
}

impl Segment {
    /// A new, empty segment at `base_offset` written over the free file at `free`: its
    /// blocks stay allocated, and everything in it past `size` is old bytes.
    pub async fn reuse(
        dir: &Path,
        base_offset: Offset,
        index_interval: u32,
        free: &Path,
    ) -> Result<Segment> {
        let log_path = file::segment_path(dir, base_offset.0, "log");
        std::fs::rename(free, &log_path).map_err(|e| EngineError::io("rename", free, e))?;
        let mut segment = Segment::create_empty(dir, log_path, base_offset, index_interval).await?;
        segment.allocated = segment
            .file
            .file_size()
            .await
            .map_err(|e| EngineError::glommio("stat", &segment.log_path, e))?;
        Ok(segment)
    }
}
