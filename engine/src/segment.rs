//! One segment of a partition log: `<base>.log`, `<base>.index`, `<base>.timeindex`.
//!
//! A segment tracks three byte positions in its `.log`, each a promise:
//! - `size`: bytes appended (staged included): the logical end, where the next batch goes;
//! - `durable`: bytes written and covered by a completed `fdatasync`;
//! - and, between them, the staged bytes in `staging` waiting for the next flush cycle.
//!
//! `durable <= size` always. Only the active (last) segment has staged bytes. A segment
//! is *sealed* once it is no longer active, all its bytes are durable, its file has been
//! truncated to `size` (dropping O_DIRECT zero padding) and its index files are written;
//! only sealed segments may be deleted by retention or counted below the recovery point.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::DmaFile;

use crate::batch::BatchHeader;
use crate::error::{EngineError, Result};
use crate::file;
use crate::index::SegmentIndex;
use crate::limits::SEGMENT_PREALLOCATION_BYTES;
use crate::staging::{PendingWrite, Staging};
use crate::types::{Offset, Timestamp};

/// What a flush cycle took from one segment's staging.
#[derive(Debug)]
pub struct Taken {
    pub writes: Vec<PendingWrite>,
    /// The position the segment is durable to once these writes are synced: after the
    /// last batch they hold whole.
    pub end: u64,
    /// For a front, the offset after its last batch; `None` when everything staged was
    /// taken.
    pub front_end: Option<Offset>,
    /// Grow the file to this size with `fallocate` before writing.
    pub preallocate: Option<u64>,
    /// Bytes taken that were not already durable.
    pub new_bytes: usize,
}

/// One segment and its in-memory state. Lives on the shard that owns the partition.
#[derive(Debug)]
pub struct Segment {
    pub base_offset: Offset,
    /// One past the last offset in this segment (the base of the next batch).
    pub next_offset: Offset,
    pub log_path: PathBuf,
    /// O_DIRECT descriptor for writes and engine reads.
    pub file: Rc<DmaFile>,
    /// Buffered descriptor for zero-copy `sendfile` reads; shared with in-flight reads on
    /// other shards, so a deleted segment stays readable until they finish.
    pub reader: Arc<std::fs::File>,
    pub size: u64,
    pub durable: u64,
    /// Bytes the file is allocated to (by `fallocate` or by earlier writes). The region
    /// past `size` reads as zeros, which recovery treats like O_DIRECT padding, or, in a
    /// recycled file (see `log::recycle`), as old batches, which it cuts as a torn tail.
    pub allocated: u64,
    pub index: SegmentIndex,
    pub max_timestamp: Timestamp,
    /// Offset of the batch holding `max_timestamp`.
    pub max_timestamp_offset: Offset,
    /// Wall-clock time of the first append, for `segment.ms` rolling.
    pub first_append_at: Option<Timestamp>,
    pub staging: Option<Staging>,
    pub sealed: bool,
}

impl Segment {
    /// Creates the files of a new, empty segment. The caller must `fsync` the directory
    /// before acknowledging anything written to it.
    pub async fn create(dir: &Path, base_offset: Offset, index_interval: u32) -> Result<Segment> {
        let log_path = file::segment_path(dir, base_offset.0, "log");
        let segment = Segment::create_empty(dir, log_path, base_offset, index_interval).await?;
        segment
            .file
            .truncate(0)
            .await
            .map_err(|e| EngineError::glommio("truncate", &segment.log_path, e))?;
        Ok(segment)
    }

    /// Opens (creating if need be) `log_path` as an empty segment's `.log`, whatever it
    /// holds, and writes empty index files beside it.
    pub(crate) async fn create_empty(
        dir: &Path,
        log_path: PathBuf,
        base_offset: Offset,
        index_interval: u32,
    ) -> Result<Segment> {
        let dma = file::open_dma(&log_path, true).await?;
        for ext in ["index", "timeindex"] {
            file::write_atomic(dir, &format!("{:020}.{ext}", base_offset.0), &[]).await?;
        }
        let reader = Arc::new(file::open_reader(&log_path)?);
        let staging = Staging::new(&dma, 0, &[]);
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            log_path,
            file: Rc::new(dma),
            reader,
            size: 0,
            durable: 0,
            allocated: 0,
            index: SegmentIndex::new(base_offset, index_interval),
            max_timestamp: Timestamp::NONE,
            max_timestamp_offset: base_offset,
            first_append_at: None,
            staging: Some(staging),
            sealed: false,
        })
    }

    /// Opens an existing segment's `.log`; recovery fills in the rest.
    pub async fn open(
        log_path: PathBuf,
        base_offset: Offset,
        index_interval: u32,
    ) -> Result<Segment> {
        let dma = file::open_dma(&log_path, false).await?;
        let size = dma
            .file_size()
            .await
            .map_err(|e| EngineError::glommio("stat", &log_path, e))?;
        let reader = Arc::new(file::open_reader(&log_path)?);
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            log_path,
            file: Rc::new(dma),
            reader,
            size,
            durable: size,
            allocated: size,
            index: SegmentIndex::new(base_offset, index_interval),
            max_timestamp: Timestamp::NONE,
            max_timestamp_offset: base_offset,
            first_append_at: None,
            staging: None,
            sealed: true,
        })
    }

    /// Stages a patched batch at the end of this (active) segment.
    pub fn append(&mut self, bytes: &[u8], header: &BatchHeader, now: Timestamp) {
        assert!(!self.sealed, "append to a sealed segment");
        assert_eq!(
            header.base_offset, self.next_offset,
            "offsets must be dense"
        );
        assert_eq!(header.size, bytes.len());
        let staging = self.staging.as_mut().expect("active segment has staging");
        assert_eq!(staging.end(), self.size, "staging and segment size agree");
        let position = u32::try_from(self.size).expect("segment position fits in u32");
        staging.push(&self.file, bytes);
        staging.mark_batch_end(header.last_offset().next());
        self.note_batch(header, position);
        self.size += bytes.len() as u64;
        self.first_append_at.get_or_insert(now);
    }

    /// Records a batch found at `position` (by append or by a recovery scan).
    pub fn note_batch(&mut self, header: &BatchHeader, position: u32) {
        self.index.on_append(
            header.base_offset,
            position,
            header.size as u32,
            header.max_timestamp,
        );
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.max_timestamp_offset = header.base_offset;
        }
        self.next_offset = header.last_offset().next();
    }

    /// Takes staged bytes for a flush cycle: all of them, or, when more than
    /// `front_bytes_max` is staged, a front of whole chunks ending after a batch (see
    /// `Staging::take_front`). Preallocation goes in steps of
    /// `SEGMENT_PREALLOCATION_BYTES`, never much past `segment_bytes`.
    pub fn take_writes(&mut self, segment_bytes: u64, front_bytes_max: usize) -> Option<Taken> {
        let staging = self.staging.as_mut()?;
        if !staging.has_new_bytes() {
            return None;
        }
        let front = if staging.new_bytes() > front_bytes_max {
            staging.take_front(front_bytes_max)
        } else {
            None
        };
        let (writes, written_to, end, new_bytes) = match front {
            Some(front) => (
                front.writes,
                front.written_to,
                Some(front.end),
                front.new_bytes,
            ),
            None => {
                let (end, new_bytes) = (staging.end(), staging.new_bytes());
                let writes = staging.take(&self.file);
                (writes, end, None, new_bytes)
            }
        };
        let needed = file::align_up(written_to);
        let preallocate = (needed > self.allocated).then(|| {
            let step = SEGMENT_PREALLOCATION_BYTES;
            let stepped = needed.div_ceil(step) * step;
            stepped.min(file::align_up(segment_bytes)).max(needed)
        });
        if let Some(size) = preallocate {
            self.allocated = size;
        }
        Some(Taken {
            writes,
            end: end.map_or(written_to, |e| e.position),
            front_end: end.map(|e| e.next_offset),
            preallocate,
            new_bytes,
        })
    }

    /// Paths of all three files.
    pub fn paths(&self, dir: &Path) -> [PathBuf; 3] {
        let base = self.base_offset.0;
        ["log", "index", "timeindex"].map(|ext| file::segment_path(dir, base, ext))
    }

    /// Whether the segment holds no batch.
    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }
}

/// Makes a segment's files final: truncates the O_DIRECT zero padding off `.log`, makes
/// that durable, and writes `.index` and `.timeindex` atomically. Used when a segment is
/// sealed and, for the active segment, at a clean shutdown.
pub async fn finalize_files(
    dir: &Path,
    file: &DmaFile,
    log_path: &Path,
    size: u64,
    index: &SegmentIndex,
) -> Result<()> {
    file.truncate(size)
        .await
        .map_err(|e| EngineError::glommio("truncate", log_path, e))?;
    file.fdatasync()
        .await
        .map_err(|e| EngineError::glommio("fdatasync", log_path, e))?;
    let base = index.base_offset().0;
    file::write_atomic(dir, &format!("{base:020}.index"), &index.encode_offsets()).await?;
    file::write_atomic(dir, &format!("{base:020}.timeindex"), &index.encode_times()).await
}
