//! One cleaning pass of a compacted partition (`PartitionLog::compact`): the sealed
//! segments below the active one and the high watermark are read twice, once to note
//! each key's latest offset (`compact::KeyMap`, within a byte budget) and once to rewrite
//! them with only the records that survive (`compact::clean_batch`), neighbours merged
//! while the result fits in `segment.bytes`.
//!
//! A run of batches removed whole becomes one empty filler batch, so batches still follow
//! each other without gaps and a segment still ends where the next begins.
//!
//! Each output segment replaces its inputs in an order that a crash at any step leaves
//! either the old segments or the new one, never a mix:
//! 1. the new log is written to `<base>.log.cleaned` and fsynced (a crash: recovery
//!    deletes `.cleaned` files);
//! 2. after checking that the partition did not change meanwhile (else the new file is
//!    dropped), it is renamed to `<base>.log.swap`, the commit point, and in the same
//!    step the segments are replaced in memory (and their batches dropped from the tail
//!    cache); readers holding the old files keep reading them, new reads find the new
//!    segment. Then the directory is fsynced. A crash after the rename: recovery
//!    finishes the swap (it deletes every segment whose base lies in the swap's offsets,
//!    then renames the swap); a power cut before the fsync: the old segments, which hold
//!    the same surviving records at the same offsets;
//! 3. the old segments' files are deleted and the directory fsynced;
//! 4. the swap is renamed to `<base>.log`, its indexes written, the directory fsynced.
//!
//! A group whose records all survive, and that merges nothing, is left as it is. The key
//! map covers the segments not cleaned yet (from `LogState::cleaned_to`), as in Kafka:
//! the clean ones hold each of their keys once already.
//!
//! Output segments are swapped one at a time from the oldest, so a crash between two
//! leaves the older ones cleaned and the younger ones not. That is a correct log: a
//! tombstone is removed only where the records it deleted are older, and those were in
//! segments already swapped.
//!
//! Retention skips the partition while a pass runs (`LogState::cleaning`); truncation
//! never reaches below the high watermark, where cleaning stays. Replicas clean their
//! logs independently; a filler never spans two leader epochs, so a follower that
//! takes the rest of one (`read_replicated`) learns the same epoch boundaries as its
//! leader has.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::DmaFile;

use super::PartitionLog;
use crate::batch::{self, BatchHeader, HEADER_BYTES};
use crate::compact::{self, Cleaned, KeyMap, RecordRef};
use crate::error::{EngineError, Result};
use crate::file;
use crate::index::SegmentIndex;
use crate::limits::{COMPACTION_IO_BYTES, COMPACTION_KEY_MAP_BYTES, DECOMPRESSED_BATCH_BYTES_MAX};
use crate::segment::Segment;
use crate::types::{Offset, Timestamp};

/// Suffix of a cleaned log not yet committed, and of one committed but not yet in place.
pub(crate) const CLEANED_SUFFIX: &str = ".log.cleaned";
pub(crate) const SWAP_SUFFIX: &str = ".log.swap";

/// How a cleaning pass treats records (Kafka's topic configs of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionSettings {
    /// `delete.retention.ms`: a tombstone stays at least this long after its segment was
    /// last written (sealed or cleaned), so consumers behind can see the delete.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: a segment whose newest record is younger is not cleaned.
    pub min_compaction_lag_ms: i64,
    /// Bytes the pass's key map may take; a log with more keys is cleaned in part.
    pub key_map_bytes: usize,
    /// Bytes a second the pass may read and write, if limited (Kafka's
    /// `log.cleaner.io.max.bytes.per.second`): it sleeps when ahead.
    pub io_bytes_per_sec: Option<u64>,
    /// Tests only: stop after this step of the first swap, as a crash would.
    pub stop_after: Option<SwapStep>,
}

/// The steps of a swap (see the module doc), for crash tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SwapStep {
    Written,
    Committed,
    OldDeleted,
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    pub segments_in: usize,
    pub segments_out: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_removed: u64,
    /// True if a test's `stop_after` ended the pass midway.
    pub stopped: bool,
}

/// A sealed segment picked for cleaning.
#[derive(Clone, Debug)]
struct Input {
    base: Offset,
    next: Offset,
    size: u64,
    file: Rc<DmaFile>,
    path: PathBuf,
    /// Milliseconds since the epoch when it was first cleaned (a cleaned segment's file
    /// keeps that time as its mtime, see `Output::finish`); meaningful if `clean`.
    cleaned_ms: i64,
    /// Cleaned by an earlier pass of this process (below `LogState::cleaned_to`).
    clean: bool,
}

/// Clears `LogState::cleaning` however the pass ends.
struct Cleaning<'a>(&'a PartitionLog);

impl Drop for Cleaning<'_> {
    fn drop(&mut self) {
        self.0 .0.state.borrow_mut().cleaning = false;
    }
}

impl PartitionLog {
    /// Runs a cleaning pass if the partition is compacted and due one: the share of its
    /// cleanable bytes not cleaned yet reaches `min.cleanable.dirty.ratio`, or a segment
    /// not cleaned yet has a record older than `max.compaction.lag.ms`.
    pub async fn clean_if_due(
        &self,
        now: Timestamp,
        io_bytes_per_sec: Option<u64>,
    ) -> Result<Option<CompactionOutcome>> {
        let settings = {
            let st = self.0.state.borrow();
            let config = st.config();
            // A replica cleans its own log, below its high watermark (committed and
            // durable, so never truncated), as Kafka's replicas do. A follower whose log
            // ends inside one of its leader's fillers gets the rest of it
            // (`read_replicated`).
            if !config.cleanup_compact || st.cleaning || st.truncating {
                return Ok(None);
            }
            let active = st.active().base_offset;
            let cleanable = st.segments.values().filter(|s| {
                s.sealed && s.base_offset != active && s.next_offset <= st.high_watermark
            });
            let (mut total, mut dirty, mut overdue) = (0u64, 0u64, false);
            for segment in cleanable {
                if lagging(segment, config.min_compaction_lag_ms, now) {
                    break;
                }
                total += segment.size;
                if segment.base_offset >= st.cleaned_to {
                    dirty += segment.size;
                    overdue |= segment.max_timestamp != Timestamp::NONE
                        && now.0.saturating_sub(segment.max_timestamp.0)
                            >= config.max_compaction_lag_ms;
                }
            }
            let ratio_due = total > 0
                && u128::from(dirty) * 1_000_000
                    >= u128::from(total) * u128::from(config.min_cleanable_dirty_ppm);
            if dirty == 0 || !(ratio_due || overdue) {
                return Ok(None);
            }
            CompactionSettings {
                delete_retention_ms: config.delete_retention_ms,
                min_compaction_lag_ms: config.min_compaction_lag_ms,
                key_map_bytes: COMPACTION_KEY_MAP_BYTES,
                io_bytes_per_sec,
                stop_after: None,
            }
        };
        self.compact(&settings, now).await.map(Some)
    }

    /// Runs one cleaning pass over the sealed segments below the high watermark.
    pub async fn compact(
        &self,
        settings: &CompactionSettings,
        now: Timestamp,
    ) -> Result<CompactionOutcome> {
        let Some(inputs) = self.pick(settings, now)? else {
            return Ok(CompactionOutcome::default());
        };
        let _cleaning = Cleaning(self);
        let throttle = Rc::new(Throttle::new(settings.io_bytes_per_sec));
        let (keys, inputs) = self
            .note_keys(inputs, settings.key_map_bytes, &throttle)
            .await?;
        if inputs.is_empty() {
            return Ok(CompactionOutcome::default());
        }
        let segment_bytes = self.0.state.borrow().config().segment_bytes;
        let mut outcome = CompactionOutcome::default();
        for group in groups(&inputs, segment_bytes) {
            let stopped = self
                .clean_group(group, (&keys, &throttle), settings, now, &mut outcome)
                .await?;
            if stopped {
                outcome.stopped = true;
                break;
            }
            let end = group.last().expect("a group has a segment").next;
            let mut st = self.0.state.borrow_mut();
            st.cleaned_to = st.cleaned_to.max(end);
        }
        tracing::info!(partition = %self.0.tp, ?outcome, "cleaned");
        Ok(outcome)
    }

    /// The segments a pass may clean, oldest first; `None` if none (or the partition is
    /// busy). Marks the partition as being cleaned.
    fn pick(&self, settings: &CompactionSettings, now: Timestamp) -> Result<Option<Vec<Input>>> {
        let inner = &self.0;
        let mut st = inner.state.borrow_mut();
        st.usable(&inner.tp)?;
        if st.truncating || st.cleaning {
            return Ok(None);
        }
        let active = st.active().base_offset;
        let mut inputs = Vec::new();
        for segment in st.segments.values() {
            let cleanable = segment.sealed
                && segment.base_offset != active
                && segment.next_offset <= st.high_watermark
                && !segment.is_empty();
            if !cleanable || lagging(segment, settings.min_compaction_lag_ms, now) {
                break;
            }
            inputs.push(Input {
                base: segment.base_offset,
                next: segment.next_offset,
                size: segment.size,
                file: segment.file.clone(),
                path: segment.log_path.clone(),
                cleaned_ms: modified_ms(&segment.log_path),
                clean: segment.next_offset <= st.cleaned_to,
            });
        }
        if inputs.is_empty() {
            return Ok(None);
        }
        st.cleaning = true;
        Ok(Some(inputs))
    }

    /// Notes the latest offset of every key of the dirty segments (from the first one
    /// not cleaned yet, as Kafka's cleaner does: the clean ones hold each of their keys
    /// once already); returns the map and the inputs the pass may clean: the clean ones
    /// and the dirty ones the map covers whole (all, unless it filled up). A batch whose
    /// records cannot be read (one that inflates past the bound) is left out of the map,
    /// so its records and every record of its keys stay.
    async fn note_keys(
        &self,
        inputs: Vec<Input>,
        budget: usize,
        throttle: &Rc<Throttle>,
    ) -> Result<(KeyMap, Vec<Input>)> {
        let mut keys = KeyMap::new(budget);
        let mut covered = inputs.iter().take_while(|i| i.clean).count();
        if covered == inputs.len() {
            // Nothing dirty: nothing to clean.
            return Ok((keys, Vec::new()));
        }
        'segments: for input in &inputs[covered..] {
            let mut full = false;
            let mut batches = Batches::new(input, throttle);
            while let Some((bytes, header)) = batches.next().await? {
                if header.is_control() {
                    continue;
                }
                let Ok(section) = compact::records_section(bytes, DECOMPRESSED_BATCH_BYTES_MAX)
                else {
                    continue;
                };
                let mut noted = Vec::new();
                if compact::each_record(&header, &section, |r| {
                    noted.extend(r.key.map(|k| (k, r.offset)))
                })
                .is_err()
                {
                    continue;
                }
                for (key, offset) in noted {
                    full |= !full && !keys.insert(key, offset);
                }
                if full {
                    break;
                }
            }
            if full {
                tracing::warn!(partition = %self.0.tp, base_offset = input.base.0, keys = keys.len(),
                    "the cleaner's key map is full: cleaning the segments before this one");
                break 'segments;
            }
            covered += 1;
        }
        let mut inputs = inputs;
        inputs.truncate(covered);
        Ok((keys, inputs))
    }

    /// Rewrites one group of neighbouring segments into one and swaps it in; returns true
    /// if a test's `stop_after` stopped it.
    async fn clean_group(
        &self,
        group: &[Input],
        (keys, throttle): (&KeyMap, &Rc<Throttle>),
        settings: &CompactionSettings,
        now: Timestamp,
        outcome: &mut CompactionOutcome,
    ) -> Result<bool> {
        let inner = &self.0;
        let base = group[0].base;
        let cleaned_path = inner.dir.join(format!("{:020}{CLEANED_SUFFIX}", base.0));
        let interval = inner.state.borrow().config().index_interval_bytes;
        let mut out = Output::create(&cleaned_path, base, interval, throttle.clone()).await?;
        let removed_before = outcome.records_removed;
        let mut fillers_in = 0usize;
        for input in group {
            // Kafka's rule: a tombstone stays `delete.retention.ms` after its segment was
            // first cleaned, so a consumer that read the values it deletes sees it.
            let tombstones_expire = input.clean
                && now.0.saturating_sub(input.cleaned_ms) > settings.delete_retention_ms;
            let keep = |record: &RecordRef<'_>| match record.key {
                None => true,
                Some(key) => {
                    keys.latest(key)
                        .is_none_or(|latest| latest <= record.offset)
                        && !(record.is_tombstone() && tombstones_expire)
                }
            };
            let mut batches = Batches::new(input, throttle);
            while let Some((bytes, header)) = batches.next().await? {
                // An earlier pass's filler joins the run around it, so runs do not stay
                // split across passes.
                if compact::is_filler(&header) {
                    fillers_in += 1;
                    out.skip(&header).await?;
                    continue;
                }
                // A batch whose records cannot be read stays whole (see `note_keys`).
                let cleaned = compact::clean_batch(bytes, DECOMPRESSED_BATCH_BYTES_MAX, keep)
                    .unwrap_or(Cleaned::Kept);
                outcome.records_removed += removed_records(&header, &cleaned);
                match cleaned {
                    Cleaned::Kept => out.push(bytes).await?,
                    Cleaned::Rewritten(new) => out.push(&new).await?,
                    Cleaned::Removed => out.skip(&header).await?,
                }
                glommio::yield_if_needed().await;
            }
            outcome.segments_in += 1;
            outcome.bytes_in += input.size;
        }
        // The new segment's mtime: when its oldest data was first cleaned (now, for data
        // cleaned for the first time), so tombstone retention counts from there however
        // often the segment is rewritten later.
        let first_cleaned = group
            .iter()
            .map(|i| if i.clean { i.cleaned_ms } else { now.0 })
            .max()
            .unwrap_or(now.0);
        let written = out.finish(first_cleaned).await?;
        let end = group.last().map_or(base, |i| i.next);
        if written.next != end {
            return Err(EngineError::CorruptSegment {
                path: group
                    .last()
                    .map_or_else(|| cleaned_path.clone(), |i| i.path.clone()),
                position: 0,
                reason: format!(
                    "the segments from offset {} end at {}, but their batches at {}",
                    base.0, end.0, written.next.0
                ),
            });
        }
        // Nothing removed, merged or joined: the segment stays as it is.
        let unchanged = outcome.records_removed == removed_before
            && group.len() == 1
            && written.fillers == fillers_in;
        if unchanged && settings.stop_after.is_none() {
            file::remove(&written.path).await?;
            // Cleaned for the first time all the same: its tombstones' clock starts now.
            if let Some(input) = group.first().filter(|i| !i.clean) {
                set_mtime(&input.path, now.0)?;
            }
            return Ok(false);
        }
        outcome.segments_out += 1;
        outcome.bytes_out += written.size;
        if settings.stop_after == Some(SwapStep::Written) {
            return Ok(true);
        }
        self.swap(group, written, settings.stop_after).await
    }

    /// Steps 2 to 4 of the module doc; returns true if stopped midway by a test.
    async fn swap(
        &self,
        group: &[Input],
        written: Written,
        stop: Option<SwapStep>,
    ) -> Result<bool> {
        let inner = &self.0;
        let base = group[0].base;
        let swap_path = inner.dir.join(format!("{:020}{SWAP_SUFFIX}", base.0));
        let final_path = file::segment_path(&inner.dir, base.0, "log");
        // Opened before the commit point, so that the check, the commit and the swap in
        // memory below happen with nothing in between (the descriptors follow renames).
        let dma = Rc::new(file::open_dma(&written.path, false).await?);
        let reader = Arc::new(file::open_reader(&written.path)?);
        let next = written.next;
        let segment = Segment {
            base_offset: base,
            next_offset: next,
            log_path: final_path.clone(),
            file: dma,
            reader,
            size: written.size,
            durable: written.size,
            allocated: written.size,
            max_timestamp: written.max_timestamp.0,
            max_timestamp_offset: written.max_timestamp.1,
            index: written.index,
            first_append_at: None,
            staging: None,
            sealed: true,
        };
        // A truncation, a deletion or the partition becoming a replica (whose high
        // watermark starts again from the log start) may have come while the pass read
        // and wrote: then the new segment is dropped, uncommitted. Only what stays below
        // the high watermark is cleaned, since nothing truncates that.
        let changed = {
            let st = inner.state.borrow();
            let inputs_unchanged = group.iter().all(|i| {
                st.segments
                    .get(&i.base)
                    .is_some_and(|s| s.next_offset == i.next && s.sealed)
            });
            !inputs_unchanged
                || next > st.high_watermark
                || st.deleted
                || st.truncating
                || st.failed.is_some()
        };
        if changed {
            file::remove(&written.path).await?;
            return Err(EngineError::ReplicaDiverged {
                tp: inner.tp.clone(),
                reason: "the partition changed during a cleaning pass; it will be cleaned again"
                    .into(),
            });
        }
        // From the check to the swap in memory nothing awaits, so nothing can come between.
        {
            let mut st = inner.state.borrow_mut();
            rename(&written.path, &swap_path)?;
            if stop == Some(SwapStep::Committed) {
                return Ok(true);
            }
            for input in group {
                st.segments.remove(&input.base);
            }
            st.segments.insert(base, segment);
            // The tail cache may hold the old batches; reads below go to the new file.
            st.cache.evict_below(next);
            st.check_invariants();
        }
        file::sync_dir(&inner.dir).await?;
        for input in group {
            if inner.state.borrow().deleted {
                // The partition's files are gone, and the directory may be another's now.
                return Ok(false);
            }
            for path in input_paths(&inner.dir, input.base) {
                file::remove(&path).await?;
            }
        }
        if stop == Some(SwapStep::OldDeleted) {
            file::sync_dir(&inner.dir).await?;
            return Ok(true);
        }
        // The removals are durable before the rename, so a crash never finds the new
        // `.log` beside an old segment it overlaps.
        file::sync_dir(&inner.dir).await?;
        if inner.state.borrow().deleted {
            return Ok(false);
        }
        rename(&swap_path, &final_path)?;
        let index = self
            .0
            .state
            .borrow()
            .segments
            .get(&base)
            .map(|s| s.index.clone());
        if let Some(index) = index {
            write_indexes(&inner.dir, &index).await?;
        }
        file::sync_dir(&inner.dir).await?;
        Ok(false)
    }
}

/// Whether `segment` holds a record younger than `min.compaction.lag.ms`. With no lag
/// (the default) nothing lags, whatever its timestamps say (a producer's clock may be
/// ahead of ours).
fn lagging(segment: &Segment, min_lag_ms: i64, now: Timestamp) -> bool {
    min_lag_ms > 0
        && segment.max_timestamp != Timestamp::NONE
        && now.0.saturating_sub(segment.max_timestamp.0) < min_lag_ms
}

/// The files of the segment based at `base`.
fn input_paths(dir: &Path, base: Offset) -> [PathBuf; 3] {
    ["log", "index", "timeindex"].map(|ext| file::segment_path(dir, base.0, ext))
}

async fn write_indexes(dir: &Path, index: &SegmentIndex) -> Result<()> {
    let base = index.base_offset().0;
    file::write_atomic(dir, &format!("{base:020}.index"), &index.encode_offsets()).await?;
    file::write_atomic(dir, &format!("{base:020}.timeindex"), &index.encode_times()).await
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| EngineError::io("rename", from, e))
}

/// Sets `path`'s mtime to `ms` since the epoch: when its data was first cleaned.
fn set_mtime(path: &Path, ms: i64) -> Result<()> {
    let mtime =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(mtime))
        .map_err(|e| EngineError::io("set the mtime of", path, e))
}

/// When `path` was last written, in ms since the epoch (0 if unknown: its tombstones are
/// then old enough to go).
fn modified_ms(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records a cleaning removed from one batch.
fn removed_records(header: &BatchHeader, cleaned: &Cleaned) -> u64 {
    let before = u64::try_from(header.record_count).unwrap_or(0);
    let after = match cleaned {
        Cleaned::Kept => before,
        Cleaned::Rewritten(new) => {
            BatchHeader::parse(new).map_or(0, |h| u64::try_from(h.record_count).unwrap_or(0))
        }
        Cleaned::Removed => 0,
    };
    before - after
}

/// Neighbouring inputs merged while their sizes add up to at most `segment_bytes` (a
/// cleaned segment is never larger than its inputs) and their offsets fit the index's
/// u32 relative offsets.
fn groups(inputs: &[Input], segment_bytes: u64) -> Vec<&[Input]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, input) in inputs.iter().enumerate() {
        let span = input.next.0 - inputs[start].base.0;
        if i > start && (bytes + input.size > segment_bytes || span > i64::from(u32::MAX)) {
            out.push(&inputs[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += input.size;
    }
    out.push(&inputs[start..]);
    out
}

/// Keeps a pass's reads and writes at or below a byte rate, if one is set.
struct Throttle {
    limit: Option<u64>,
    started: std::time::Instant,
    bytes: std::cell::Cell<u64>,
}

impl Throttle {
    fn new(limit: Option<u64>) -> Throttle {
        Throttle {
            limit: limit.filter(|l| *l > 0),
            started: std::time::Instant::now(),
            bytes: std::cell::Cell::new(0),
        }
    }

    /// Counts `bytes` of disk traffic and sleeps while the pass is ahead of the rate.
    async fn spend(&self, bytes: u64) {
        let Some(limit) = self.limit else {
            return;
        };
        let total = self.bytes.get().saturating_add(bytes);
        self.bytes.set(total);
        if let Some(wait) = ahead_by(total, self.started.elapsed(), limit) {
            glommio::timer::sleep(wait).await;
        }
    }
}

/// How far ahead of `limit` bytes a second `bytes` in `elapsed` are, if ahead.
fn ahead_by(bytes: u64, elapsed: std::time::Duration, limit: u64) -> Option<std::time::Duration> {
    // A due time past what a Duration holds is no wait at all rather than a panic.
    let due = std::time::Duration::try_from_secs_f64(bytes as f64 / limit as f64).ok()?;
    due.checked_sub(elapsed).filter(|d| !d.is_zero())
}

/// The batches of an input segment, read in windows of `COMPACTION_IO_BYTES`.
struct Batches<'a> {
    input: &'a Input,
    throttle: &'a Throttle,
    position: u64,
    window: Vec<u8>,
    window_start: u64,
}

impl<'a> Batches<'a> {
    fn new(input: &'a Input, throttle: &'a Throttle) -> Batches<'a> {
        Batches {
            input,
            throttle,
            position: 0,
            window: Vec::new(),
            window_start: 0,
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> EngineError {
        EngineError::CorruptSegment {
            path: self.input.path.clone(),
            position: self.position,
            reason: reason.into(),
        }
    }

    /// The next batch and its header; `None` at the end of the segment.
    async fn next(&mut self) -> Result<Option<(&[u8], BatchHeader)>> {
        let remaining = self.input.size - self.position;
        if remaining == 0 {
            return Ok(None);
        }
        let mut size = HEADER_BYTES;
        for _ in 0..2 {
            // The window only ever starts at a position already reached.
            debug_assert!(self.window_start <= self.position);
            let at = (self.position - self.window_start) as usize;
            let present = self.window.len().saturating_sub(at);
            if present < size {
                let len = COMPACTION_IO_BYTES.max(size) as u64;
                let len = len.min(remaining) as usize;
                self.window =
                    file::read_at(&self.input.file, &self.input.path, self.position, len).await?;
                self.window_start = self.position;
                self.throttle.spend(len as u64).await;
            }
            let header =
                BatchHeader::parse(&self.window[(self.position - self.window_start) as usize..])
                    .map_err(|e| self.corrupt(e.to_string()))?;
            if (header.size as u64) > remaining {
                return Err(self.corrupt("a batch runs past the end of the file"));
            }
            size = header.size;
            let at = (self.position - self.window_start) as usize;
            if self.window.len() >= at + size {
                let header = batch::verify_stored(&self.window[at..at + size])
                    .map_err(|e| self.corrupt(e.to_string()))?;
                self.position += size as u64;
                return Ok(Some((&self.window[at..at + size], header)));
            }
        }
        Err(self.corrupt("a batch could not be read whole"))
    }
}

/// A cleaned segment as written.
struct Written {
    path: PathBuf,
    next: Offset,
    size: u64,
    index: SegmentIndex,
    max_timestamp: (Timestamp, Offset),
    fillers: usize,
}

/// A cleaned segment being written: batches are buffered and written in aligned
/// `COMPACTION_IO_BYTES` steps; a run of removed batches becomes one filler batch.
struct Output {
    path: PathBuf,
    file: DmaFile,
    buffer: Vec<u8>,
    written: u64,
    size: u64,
    next: Offset,
    index: SegmentIndex,
    /// The newest timestamp written and the batch holding it.
    max_timestamp: (Timestamp, Offset),
    /// The removed run not yet written: (first offset, last offset, epoch, max timestamp).
    removed: Option<(Offset, Offset, i32, i64)>,
    /// Fillers written.
    fillers: usize,
    throttle: Rc<Throttle>,
}

impl Output {
    async fn create(
        path: &Path,
        base: Offset,
        interval: u32,
        throttle: Rc<Throttle>,
    ) -> Result<Output> {
        let file = file::open_dma(path, true).await?;
        file.truncate(0)
            .await
            .map_err(|e| EngineError::glommio("truncate", path, e))?;
        Ok(Output {
            path: path.to_path_buf(),
            file,
            buffer: Vec::new(),
            written: 0,
            size: 0,
            next: base,
            index: SegmentIndex::new(base, interval),
            max_timestamp: (Timestamp::NONE, base),
            removed: None,
            fillers: 0,
            throttle,
        })
    }

    /// Notes a batch removed whole (or an earlier filler): it joins the removed run,
    /// written as one filler unless that would span more offsets than a batch can, or
    /// two leader epochs (a follower must find each epoch's start where its leader has
    /// it).
    async fn skip(&mut self, header: &BatchHeader) -> Result<()> {
        let last = header.last_offset();
        let max = header.max_timestamp.0;
        if let Some((first, _, epoch, _)) = self.removed {
            if last.0 - first.0 > i64::from(i32::MAX) || epoch != header.leader_epoch.0 {
                self.write_removed().await?;
            }
        }
        self.removed = Some(match self.removed {
            Some((first, _, _, ts)) => (first, last, header.leader_epoch.0, ts.max(max)),
            None => (header.base_offset, last, header.leader_epoch.0, max),
        });
        Ok(())
    }

    /// Writes the removed run as one filler.
    async fn write_removed(&mut self) -> Result<()> {
        if let Some((first, last, epoch, max)) = self.removed.take() {
            let filler = compact::filler_batch(first, last, epoch, max);
            self.fillers += 1;
            self.append(&filler).await?;
        }
        Ok(())
    }

    async fn push(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_removed().await?;
        self.append(bytes).await
    }

    async fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let header = batch::verify_stored(bytes).expect("cleaned batches are valid");
        if header.base_offset != self.next {
            // Base offsets lie outside the CRC: a damaged one shows here.
            return Err(EngineError::CorruptSegment {
                path: self.path.clone(),
                position: self.size,
                reason: format!(
                    "a batch at offset {} where offset {} was due",
                    header.base_offset.0, self.next.0
                ),
            });
        }
        let position = u32::try_from(self.size).expect("a cleaned segment fits in u32 bytes");
        self.index.on_append(
            header.base_offset,
            position,
            header.size as u32,
            header.max_timestamp,
        );
        if header.max_timestamp > self.max_timestamp.0 {
            self.max_timestamp = (header.max_timestamp, header.base_offset);
        }
        self.next = header.last_offset().next();
        self.size += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= COMPACTION_IO_BYTES {
            let aligned = file::align_down(self.buffer.len() as u64) as usize;
            file::write_padded(
                &self.file,
                &self.path,
                self.written,
                &self.buffer[..aligned],
            )
            .await?;
            self.written += aligned as u64;
            self.buffer.drain(..aligned);
            self.throttle.spend(aligned as u64).await;
        }
        Ok(())
    }

    /// Writes what is left, cuts the padding off, sets the file's mtime to `cleaned_ms`
    /// and fsyncs.
    async fn finish(mut self, cleaned_ms: i64) -> Result<Written> {
        self.write_removed().await?;
        file::write_padded(&self.file, &self.path, self.written, &self.buffer).await?;
        self.file
            .truncate(self.size)
            .await
            .map_err(|e| EngineError::glommio("truncate", &self.path, e))?;
        set_mtime(&self.path, cleaned_ms)?;
        self.file
            .fdatasync()
            .await
            .map_err(|e| EngineError::glommio("fdatasync", &self.path, e))?;
        let (max_timestamp, at) = self.max_timestamp;
        self.index.seal_time(max_timestamp, at);
        Ok(Written {
            path: self.path,
            next: self.next,
            size: self.size,
            index: self.index,
            max_timestamp: self.max_timestamp,
            fillers: self.fillers,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ahead_by;

    #[test]
    fn the_throttle_waits_only_when_ahead_of_its_rate() {
        // 10 MB at 10 MB/s is due at 1 s.
        assert_eq!(
            ahead_by(10_000_000, Duration::from_millis(250), 10_000_000),
            Some(Duration::from_millis(750))
        );
        assert_eq!(
            ahead_by(10_000_000, Duration::from_secs(1), 10_000_000),
            None
        );
        assert_eq!(
            ahead_by(10_000_000, Duration::from_secs(2), 10_000_000),
            None
        );
        assert_eq!(ahead_by(0, Duration::ZERO, 1), None);
        assert_eq!(ahead_by(u64::MAX, Duration::ZERO, 1), None);
    }
}
