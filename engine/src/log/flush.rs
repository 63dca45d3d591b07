//! Group commit: the partition's flusher task.
//!
//! One flusher per partition runs on the shard's background queue. A cycle *takes* every
//! staged byte (of the active segment and of a just-rolled one) and issues all its writes
//! at once. Once they complete, the cycle's *sync* stage syncs the directory if a segment
//! file was created or deleted and issues one `fdatasync` per dirty segment. When those
//! return, `durable_end` (and, on a single node, the high watermark) moves to the end of
//! what the cycle took, and every append whose batch ended at or below it resolves.
//!
//! The two stages are pipelined: cycle N+1's writes run while cycle N's `fdatasync` is in
//! flight, so the disk is never idle waiting for a flush to finish before the next writes
//! start. This is safe because cycle N+1 may only rewrite cycle N's partial last page,
//! with identical bytes where cycle N's data is: whichever version the fsync catches, the
//! durable bytes are the same. Cycles complete strictly in order, and an append still
//! resolves only after a fsync that started after its write completed.
//!
//! Under load each fsync covers many appends; at low load an append waits for exactly
//! one write and one fsync. A failed write or fsync takes the partition offline
//! (`Inner::fail`); nothing is retried.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use glommio::channels::local_channel::LocalReceiver;
use glommio::io::DmaFile;
use glommio::sync::StaticPermit;

use super::Inner;
use crate::error::{EngineError, Result};
use crate::file;
use crate::limits::SLOW_FLUSH_STAGE;
use crate::segment::finalize_files;
use crate::staging::PendingWrite;
use crate::types::Offset;

/// The writes of one segment in one cycle.
struct SegmentJob {
    base_offset: Offset,
    file: Rc<DmaFile>,
    path: PathBuf,
    writes: Vec<PendingWrite>,
    end: u64,
    /// Grow the file to this size with `fallocate` before writing.
    preallocate: Option<u64>,
}

/// What one cycle took: its writes, the log end they reach, and the staging permits to
/// return once they are durable.
struct Cycle {
    jobs: Vec<SegmentJob>,
    target: Offset,
    /// Held, not read: dropping the cycle returns its bytes to the shard-wide budget.
    _permits: Vec<StaticPermit>,
    dir_dirty: bool,
    bytes: u64,
}

impl Cycle {
    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && !self.dir_dirty
    }
}

/// Runs until the partition closes (after a final cycle) or fails.
pub(crate) async fn run(inner: Rc<Inner>, bell: LocalReceiver<()>) {
    let mut syncing: Option<Cycle> = None;
    loop {
        // With a cycle waiting for its fsync there is work to do anyway; otherwise sleep
        // until an append rings.
        if syncing.is_none() && bell.recv().await.is_none() {
            return;
        }
        let mut next = take(&inner);
        let ((written, write_time), (synced, sync_time)) = futures::join!(
            timed(write(&mut next)),
            timed(sync(&inner, syncing.as_ref()))
        );
        if write_time.max(sync_time) >= SLOW_FLUSH_STAGE {
            tracing::warn!(
                partition = %inner.tp,
                write_ms = write_time.as_millis() as u64,
                sync_ms = sync_time.as_millis() as u64,
                bytes = next.bytes,
                preallocated = next.jobs.iter().any(|j| j.preallocate.is_some()),
                "slow flush cycle"
            );
        }
        let outcome = synced.and(written);
        if let Some(done) = syncing.take() {
            if outcome.is_ok() {
                complete(&inner, &done);
            }
        }
        if let Err(error) = outcome {
            inner.fail(&error);
            return;
        }
        if let Err(error) = seal_finished_segments(&inner).await {
            inner.fail(&error);
            return;
        }
        if !next.is_empty() {
            syncing = Some(next);
            continue;
        }
        let st = inner.state.borrow();
        if st.closing && st.staged_bytes == 0 {
            return;
        }
    }
}

/// Runs `future`, returning its output and how long it took.
async fn timed<F: std::future::Future>(future: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let output = future.await;
    (output, start.elapsed())
}

/// Takes everything staged into a new cycle.
fn take(inner: &Inner) -> Cycle {
    let mut st = inner.state.borrow_mut();
    let mut jobs = Vec::new();
    let segment_bytes = st.config().segment_bytes;
    for segment in st.segments.values_mut() {
        if let Some((writes, end, preallocate)) = segment.take_writes(segment_bytes) {
            jobs.push(SegmentJob {
                base_offset: segment.base_offset,
                file: segment.file.clone(),
                path: segment.log_path.clone(),
                writes,
                end,
                preallocate,
            });
        }
    }
    st.staged_bytes = 0;
    let bytes = jobs
        .iter()
        .flat_map(|j| j.writes.iter())
        .map(|w| w.buffer.len() as u64)
        .sum();
    Cycle {
        jobs,
        target: st.log_end,
        _permits: std::mem::take(&mut st.staged_permits),
        dir_dirty: std::mem::take(&mut st.dir_dirty),
        bytes,
    }
}

/// Issues all of a cycle's writes at once and waits for them.
async fn write(cycle: &mut Cycle) -> Result<()> {
    for job in &cycle.jobs {
        if let Some(size) = job.preallocate {
            job.file
                .pre_allocate(size, false)
                .await
                .map_err(|e| EngineError::glommio("fallocate", &job.path, e))?;
        }
    }
    let mut writes = Vec::new();
    for job in &mut cycle.jobs {
        for pending in std::mem::take(&mut job.writes) {
            let (file, path) = (job.file.clone(), job.path.clone());
            writes.push(async move {
                let len = pending.buffer.len();
                let written = file
                    .write_at(pending.buffer, pending.position)
                    .await
                    .map_err(|e| EngineError::glommio("write", &path, e))?;
                if written != len {
                    return Err(EngineError::io(
                        "short write",
                        &path,
                        std::io::ErrorKind::WriteZero.into(),
                    ));
                }
                Ok(())
            });
        }
    }
    try_join_all(writes).await.map(|_| ())
}

/// Makes a written cycle durable: the directory if it changed, then each segment.
async fn sync(inner: &Inner, cycle: Option<&Cycle>) -> Result<()> {
    let Some(cycle) = cycle else { return Ok(()) };
    if cycle.dir_dirty {
        file::sync_dir(&inner.dir).await?;
    }
    try_join_all(cycle.jobs.iter().map(|job| async move {
        job.file
            .fdatasync()
            .await
            .map_err(|e| EngineError::glommio("fdatasync", &job.path, e))
    }))
    .await
    .map(|_| ())
}

/// Publishes a durable cycle: positions and offsets, then wakes waiters. The cycle's
/// staging permits are returned when it is dropped by the caller.
fn complete(inner: &Inner, cycle: &Cycle) {
    let target = cycle.target;
    let mut st = inner.state.borrow_mut();
    st.stats.flush_cycles += 1;
    st.stats.bytes_written += cycle.bytes;
    for job in &cycle.jobs {
        let segment = st
            .segments
            .get_mut(&job.base_offset)
            .expect("flushed segment still exists");
        assert!(
            job.end >= segment.durable && job.end <= segment.size,
            "durable position moves forward within the segment"
        );
        segment.durable = job.end;
    }
    assert!(
        target >= st.durable_end,
        "durable end never moves backwards"
    );
    st.durable_end = target;
    st.high_watermark = st.visible_end();
    while st
        .durable_waiters
        .front()
        .is_some_and(|(end, _)| *end <= target)
    {
        let (_, tx) = st.durable_waiters.pop_front().expect("front exists");
        let _ = tx.send(Ok(()));
    }
    for tx in st.progress_waiters.drain(..) {
        let _ = tx.send(());
    }
    st.check_invariants();
}

/// Seals every segment that is no longer active and is fully durable.
async fn seal_finished_segments(inner: &Inner) -> Result<()> {
    loop {
        let job = {
            let st = inner.state.borrow();
            let active = st.active().base_offset;
            st.segments
                .values()
                .find(|s| !s.sealed && s.base_offset != active && s.durable == s.size)
                .map(|s| s.base_offset)
        };
        let Some(base) = job else { return Ok(()) };
        // Sealing awaits I/O, so it works on a copy of the segment's bookkeeping and
        // publishes the result after; readers keep using the segment meanwhile.
        let (file, path, size, mut index, max_ts, max_ts_offset) = {
            let st = inner.state.borrow();
            let s = &st.segments[&base];
            (
                s.file.clone(),
                s.log_path.clone(),
                s.size,
                s.index.clone(),
                s.max_timestamp,
                s.max_timestamp_offset,
            )
        };
        index.seal_time(max_ts, max_ts_offset);
        finalize_files(&inner.dir, &file, &path, size, &index).await?;
        let mut st = inner.state.borrow_mut();
        if let Some(s) = st.segments.get_mut(&base) {
            s.index = index;
            s.staging = None;
            s.sealed = true;
        }
    }
}
