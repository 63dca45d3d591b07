//! Group commit: the partition's flusher task.
//!
//! One flusher per partition runs on the shard's background queue. A cycle takes every
//! staged byte (of the active segment and of a just-rolled one), issues all writes at
//! once, syncs the directory if a segment file was created or deleted, then issues one
//! `fdatasync` per dirty segment. When they all return, `durable_end` (and, on a single
//! node, the high watermark) moves to the end of what the cycle took, and every append
//! whose batch ended at or below it resolves. A new cycle starts as soon as one ends if
//! anything was appended meanwhile, so under load each fsync covers many appends, and at
//! low load an append waits for exactly one write and one fsync.
//!
//! A failed write or fsync takes the partition offline (`Inner::fail`); nothing is retried.

use std::path::PathBuf;
use std::rc::Rc;

use futures::future::try_join_all;
use glommio::channels::local_channel::LocalReceiver;
use glommio::io::DmaFile;

use super::Inner;
use crate::error::{EngineError, Result};
use crate::file;
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
}

/// Runs until the partition closes (after a final cycle) or fails.
pub(crate) async fn run(inner: Rc<Inner>, bell: LocalReceiver<()>) {
    while bell.recv().await.is_some() {
        if let Err(error) = cycle(&inner).await {
            inner.fail(&error);
            return;
        }
        if let Err(error) = seal_finished_segments(&inner).await {
            inner.fail(&error);
            return;
        }
        let st = inner.state.borrow();
        if st.closing && st.staged_bytes == 0 {
            return;
        }
    }
}

/// One group-commit cycle.
async fn cycle(inner: &Inner) -> Result<()> {
    let (jobs, target, permits, dir_dirty) = {
        let mut st = inner.state.borrow_mut();
        let mut jobs = Vec::new();
        for segment in st.segments.values_mut() {
            if let Some((writes, end)) = segment.take_writes() {
                jobs.push(SegmentJob {
                    base_offset: segment.base_offset,
                    file: segment.file.clone(),
                    path: segment.log_path.clone(),
                    writes,
                    end,
                });
            }
        }
        st.staged_bytes = 0;
        let permits = std::mem::take(&mut st.staged_permits);
        let dir_dirty = std::mem::take(&mut st.dir_dirty);
        (jobs, st.log_end, permits, dir_dirty)
    };
    if jobs.is_empty() && !dir_dirty {
        return Ok(());
    }
    let mut jobs = jobs;
    let bytes: u64 = jobs
        .iter()
        .flat_map(|j| j.writes.iter())
        .map(|w| w.buffer.len() as u64)
        .sum();
    let mut writes = Vec::new();
    for job in &mut jobs {
        for write in std::mem::take(&mut job.writes) {
            let (file, path) = (job.file.clone(), job.path.clone());
            writes.push(async move {
                let len = write.buffer.len();
                let written = file
                    .write_at(write.buffer, write.position)
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
    try_join_all(writes).await?;
    if dir_dirty {
        file::sync_dir(&inner.dir).await?;
    }
    try_join_all(jobs.iter().map(|job| async move {
        job.file
            .fdatasync()
            .await
            .map_err(|e| EngineError::glommio("fdatasync", &job.path, e))
    }))
    .await?;
    complete(inner, &jobs, target);
    {
        let mut st = inner.state.borrow_mut();
        st.stats.flush_cycles += 1;
        st.stats.bytes_written += bytes;
    }
    drop(permits);
    Ok(())
}

/// Publishes a finished cycle: durable positions and offsets, then wakes waiters.
fn complete(inner: &Inner, jobs: &[SegmentJob], target: Offset) {
    let mut st = inner.state.borrow_mut();
    for job in jobs {
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
    st.high_watermark = target;
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
