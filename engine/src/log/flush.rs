//! Group commit: the partition's flusher task.
//!
//! One flusher per partition runs on the shard's background queue. It drives two stages,
//! each with at most one operation in flight:
//! - **write**: a cycle *takes* staged bytes (of a just-rolled segment and of the active
//!   one) and issues all their writes at once. It takes everything staged, unless more
//!   than `FLUSH_FRONT_BYTES_MAX` is: then only a front of whole chunks, ending after a
//!   batch, and the rest waits for the next cycle;
//! - **sync**: once a cycle's writes complete, the next sync round covers it (with every
//!   other written cycle): it syncs the directory if a segment file was created or
//!   deleted, then issues one `fdatasync` per dirty segment. When those return, each
//!   covered cycle completes in order: `durable_end` (and, on a single node, the high
//!   watermark) moves to the end of what it took, and every append whose batch ended at
//!   or below it resolves.
//!
//! The stages overlap: the next cycle's writes start as soon as the previous writes
//! complete, while their `fdatasync` runs, and a sync round's appends resolve as soon as
//! it returns, while the next writes run. Under a steady load the disk then always has
//! writes to do, even while resolved appenders refill the staging; with one cycle taking
//! everything, it would sit idle meanwhile (measured in docs/PERFORMANCE.md).
//!
//! Safety: writes are issued one cycle at a time, in order, so a cycle rewriting the
//! previous one's partial last page (see `staging`) never races it; the rewrite puts
//! identical bytes where the previous cycle's data is, so whichever version an `fdatasync`
//! catches, the durable bytes are the same. A sync round covers only cycles whose writes
//! completed before it started, so an append resolves only after an `fdatasync` that
//! started after its write completed.
//!
//! Under load each fsync covers many appends; at low load an append waits for exactly
//! one write and one fsync. A failed write or fsync takes the partition offline
//! (`Inner::fail`); nothing is retried.

use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::future::{try_join_all, LocalBoxFuture};
use futures::{FutureExt, Stream, StreamExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::io::DmaFile;
use glommio::sync::StaticPermit;

use super::Inner;
use crate::error::{EngineError, Result};
use crate::file;
use crate::limits::{FLUSH_FRONT_BYTES_MAX, SLOW_FLUSH_STAGE};
use crate::segment::finalize_files;
use crate::staging::PendingWrite;
use crate::types::Offset;

/// The writes of one segment in one cycle.
struct SegmentJob {
    base_offset: Offset,
    file: Rc<DmaFile>,
    path: PathBuf,
    writes: Vec<PendingWrite>,
    /// The segment position durable once this job is synced.
    end: u64,
    /// Grow the file to this size with `fallocate` before writing.
    preallocate: Option<u64>,
}

/// What one cycle took: its writes, the offset they make durable, and the staging
/// permits to return once they are durable.
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

/// A stage's operation in flight; resolves with its outcome and how long it took.
type Operation = LocalBoxFuture<'static, (Result<()>, Duration)>;

/// The cycles between taking and completing.
#[derive(Default)]
struct Pipeline {
    /// The cycle whose writes are in flight.
    writing: Option<(Cycle, Operation)>,
    /// Cycles written and waiting for the next sync round; in order. Bounded like the
    /// staged bytes they hold (`PARTITION_STAGED_BYTES_MAX`): each cycle but a
    /// directory-only one holds at least one staging chunk.
    written: Vec<Cycle>,
    /// The cycles the sync round in flight covers; in order.
    syncing: Option<(Vec<Cycle>, Operation)>,
}

enum Event {
    Written(Result<()>, Duration),
    Synced(Result<()>, Duration),
    /// An append rang: there may be bytes to take.
    Rang,
    /// The bell's sender is gone.
    Hung,
}

/// Runs until the partition closes (after the last cycle completes) or fails.
pub(crate) async fn run(inner: Rc<Inner>, bell: LocalReceiver<()>) {
    let mut bell = Box::pin(bell.stream());
    let mut pipeline = Pipeline::default();
    loop {
        pipeline.start_stages(&inner);
        if pipeline.writing.is_none() && pipeline.syncing.is_none() {
            {
                let st = inner.state.borrow();
                if st.closing && st.staged_bytes == 0 {
                    return;
                }
            }
            if bell.next().await.is_none() {
                return;
            }
            if let Err(error) = seal_finished_segments(&inner).await {
                inner.fail(&error);
                return;
            }
            continue;
        }
        let outcome = match pipeline.next_event(bell.as_mut()).await {
            Event::Written(result, took) => {
                let (cycle, _) = pipeline.writing.take().expect("a write was in flight");
                warn_if_slow(&inner, "write", took, cycle.bytes);
                result.map(|()| pipeline.written.push(cycle))
            }
            Event::Synced(result, took) => {
                let (cycles, _) = pipeline.syncing.take().expect("a sync was in flight");
                let bytes = cycles.iter().map(|c| c.bytes).sum();
                warn_if_slow(&inner, "sync", took, bytes);
                match result {
                    Ok(()) => {
                        complete(&inner, &cycles);
                        drop(cycles);
                        seal_finished_segments(&inner).await
                    }
                    Err(error) => Err(error),
                }
            }
            // A roll may have left a durable segment to seal with nothing more to sync.
            Event::Rang => seal_finished_segments(&inner).await,
            Event::Hung => return,
        };
        if let Err(error) = outcome {
            inner.fail(&error);
            return;
        }
    }
}

impl Pipeline {
    /// Starts whatever stage is free and has work: the next cycle's writes, and a sync
    /// round over the written cycles.
    fn start_stages(&mut self, inner: &Rc<Inner>) {
        if self.writing.is_none() {
            let mut cycle = take(inner);
            if !cycle.is_empty() {
                let operation = timed(write(&mut cycle)).boxed_local();
                self.writing = Some((cycle, operation));
            }
        }
        if self.syncing.is_none() && !self.written.is_empty() {
            let cycles = std::mem::take(&mut self.written);
            let operation = timed(sync(inner, &cycles)).boxed_local();
            self.syncing = Some((cycles, operation));
        }
    }

    /// Waits for an operation in flight to finish, or, while no write is in flight, for
    /// an append to ring.
    async fn next_event(&mut self, mut bell: Pin<&mut impl Stream<Item = ()>>) -> Event {
        std::future::poll_fn(|cx| {
            if let Some((_, operation)) = &mut self.writing {
                if let Poll::Ready((result, took)) = operation.poll_unpin(cx) {
                    return Poll::Ready(Event::Written(result, took));
                }
            }
            if let Some((_, operation)) = &mut self.syncing {
                if let Poll::Ready((result, took)) = operation.poll_unpin(cx) {
                    return Poll::Ready(Event::Synced(result, took));
                }
            }
            if self.writing.is_none() {
                if let Poll::Ready(rung) = bell.as_mut().poll_next(cx) {
                    return Poll::Ready(rung.map_or(Event::Hung, |()| Event::Rang));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Runs `future`, returning its output and how long it took.
async fn timed<F: std::future::Future>(future: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let output = future.await;
    (output, start.elapsed())
}

/// A stage taking at least `SLOW_FLUSH_STAGE` bounds acks=all latency: say so.
fn warn_if_slow(inner: &Inner, stage: &str, took: Duration, bytes: u64) {
    if took >= SLOW_FLUSH_STAGE {
        tracing::warn!(
            partition = %inner.tp,
            stage,
            ms = took.as_millis() as u64,
            bytes,
            "slow flush stage"
        );
    }
}

/// Takes what is staged into a new cycle: everything, or a front (see the module doc).
fn take(inner: &Inner) -> Cycle {
    let mut st = inner.state.borrow_mut();
    let mut jobs = Vec::new();
    let segment_bytes = st.config().segment_bytes;
    let (mut taken, mut new_bytes) = (0usize, 0usize);
    let mut front_end = None;
    for segment in st.segments.values_mut() {
        let has_new = segment.staging.as_ref().is_some_and(|s| s.has_new_bytes());
        if taken >= FLUSH_FRONT_BYTES_MAX && has_new {
            // The segments before this one are taken whole: the front ends where it starts.
            front_end = Some(segment.base_offset);
            break;
        }
        let Some(t) =
            segment.take_writes(segment_bytes, FLUSH_FRONT_BYTES_MAX.saturating_sub(taken))
        else {
            continue;
        };
        taken += t.writes.iter().map(|w| w.buffer.len()).sum::<usize>();
        new_bytes += t.new_bytes;
        jobs.push(SegmentJob {
            base_offset: segment.base_offset,
            file: segment.file.clone(),
            path: segment.log_path.clone(),
            writes: t.writes,
            end: t.end,
            preallocate: t.preallocate,
        });
        if t.front_end.is_some() {
            front_end = t.front_end;
            break;
        }
    }
    assert!(new_bytes <= st.staged_bytes, "took more than was staged");
    st.staged_bytes -= new_bytes;
    let target = match front_end {
        Some(end) => end,
        None => {
            assert_eq!(st.staged_bytes, 0, "a whole take leaves nothing staged");
            st.log_end
        }
    };
    let mut permits = Vec::new();
    while st
        .staged_permits
        .front()
        .is_some_and(|(end, _)| *end <= target)
    {
        permits.push(st.staged_permits.pop_front().expect("front exists").1);
    }
    Cycle {
        jobs,
        target,
        _permits: permits,
        dir_dirty: std::mem::take(&mut st.dir_dirty),
        bytes: taken as u64,
    }
}

/// Issues all of a cycle's writes at once; the returned future waits for them.
fn write(cycle: &mut Cycle) -> impl std::future::Future<Output = Result<()>> + 'static {
    let mut preallocations = Vec::new();
    let mut writes = Vec::new();
    for job in &mut cycle.jobs {
        if let Some(size) = job.preallocate {
            preallocations.push((job.file.clone(), job.path.clone(), size));
        }
        for pending in std::mem::take(&mut job.writes) {
            writes.push((job.file.clone(), job.path.clone(), pending));
        }
    }
    async move {
        for (file, path, size) in preallocations {
            file.pre_allocate(size, false)
                .await
                .map_err(|e| EngineError::glommio("fallocate", &path, e))?;
        }
        try_join_all(writes.into_iter().map(|(file, path, pending)| async move {
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
        }))
        .await
        .map(|_| ())
    }
}

/// Makes written cycles durable: the directory if it changed, then each segment once.
fn sync(
    inner: &Inner,
    cycles: &[Cycle],
) -> impl std::future::Future<Output = Result<()>> + 'static {
    let dir = cycles
        .iter()
        .any(|c| c.dir_dirty)
        .then(|| inner.dir.clone());
    let mut files: Vec<(Offset, Rc<DmaFile>, PathBuf)> = Vec::new();
    for job in cycles.iter().flat_map(|c| &c.jobs) {
        if !files.iter().any(|(base, _, _)| *base == job.base_offset) {
            files.push((job.base_offset, job.file.clone(), job.path.clone()));
        }
    }
    async move {
        if let Some(dir) = dir {
            file::sync_dir(&dir).await?;
        }
        try_join_all(files.into_iter().map(|(_, file, path)| async move {
            file.fdatasync()
                .await
                .map_err(|e| EngineError::glommio("fdatasync", &path, e))
        }))
        .await
        .map(|_| ())
    }
}

/// Publishes durable cycles, in order: positions and offsets, then wakes waiters. The
/// cycles' staging permits are returned when the caller drops them.
fn complete(inner: &Inner, cycles: &[Cycle]) {
    let mut st = inner.state.borrow_mut();
    st.stats.flush_cycles += 1;
    for cycle in cycles {
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
            cycle.target >= st.durable_end,
            "durable end never moves backwards"
        );
        st.durable_end = cycle.target;
    }
    let target = st.durable_end;
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

/// Seals every segment that is no longer active and is fully durable, then queues a
/// retention pass: a sealed segment may take the log past `retention.bytes`, and the
/// files that pass deletes are what the next roll recycles.
async fn seal_finished_segments(inner: &Rc<Inner>) -> Result<()> {
    let mut sealed = false;
    loop {
        let job = {
            let st = inner.state.borrow();
            let active = st.active().base_offset;
            st.segments
                .values()
                .find(|s| !s.sealed && s.base_offset != active && s.durable == s.size)
                .map(|s| s.base_offset)
        };
        let Some(base) = job else {
            if sealed {
                inner.queue_retention();
            }
            return Ok(());
        };
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
        sealed = true;
    }
}
