//! Walking the batches of a `.log` file on disk.
//!
//! `find_batch` reads only headers, in windows of `HEADER_SCAN_WINDOW_BYTES`, to find the
//! batch containing an offset from a sparse-index position (at most one index interval
//! of headers). `verify` reads every byte, checking each batch's CRC and that offsets are
//! dense, and reports where and why it stopped; recovery decides what that means.

use std::ops::ControlFlow;
use std::path::Path;

use glommio::io::DmaFile;

use crate::batch::{self, BatchHeader, HEADER_BYTES};
use crate::error::{EngineError, Result};
use crate::file;
use crate::limits::{BATCH_BYTES_MAX, HEADER_SCAN_WINDOW_BYTES};
use crate::segment::Segment;
use crate::types::Offset;

/// Calls `visit(position, header)` for each batch from `from` while below `bound`, until
/// it breaks. Headers below `bound` were durable, so an unreadable one is corruption.
pub(crate) async fn headers(
    file: &DmaFile,
    path: &Path,
    from: u64,
    bound: u64,
    mut visit: impl FnMut(u64, &BatchHeader) -> ControlFlow<()>,
) -> Result<()> {
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = from;
    let mut position = from;
    while position + HEADER_BYTES as u64 <= bound {
        let within = position - window_start;
        if window.len() < (within as usize).saturating_add(HEADER_BYTES) || position < window_start
        {
            let len = HEADER_SCAN_WINDOW_BYTES.min((bound - position) as usize);
            window = file::read_at(file, path, position, len).await?;
            window_start = position;
            if window.len() < HEADER_BYTES {
                return Err(corrupt(path, position, "file ends inside a batch header"));
            }
        }
        let at = (position - window_start) as usize;
        let header = BatchHeader::parse(&window[at..])
            .map_err(|e| corrupt(path, position, &e.to_string()))?;
        if header.size > BATCH_BYTES_MAX || position + header.size as u64 > bound {
            return Err(corrupt(
                path,
                position,
                &format!(
                    "a batch of {} bytes runs past the durable end at byte {bound}",
                    header.size
                ),
            ));
        }
        if visit(position, &header).is_break() {
            return Ok(());
        }
        position += header.size as u64;
    }
    Ok(())
}

/// The position and size of the batch containing `target`, scanning from `from`.
pub(crate) async fn find_batch(
    file: &DmaFile,
    path: &Path,
    from: u64,
    bound: u64,
    target: Offset,
) -> Result<Option<(u64, BatchHeader)>> {
    let mut found = None;
    headers(file, path, from, bound, |position, header| {
        if header.last_offset() >= target {
            found = Some((position, *header));
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await?;
    Ok(found)
}

fn corrupt(path: &Path, position: u64, reason: &str) -> EngineError {
    EngineError::CorruptSegment {
        path: path.into(),
        position,
        reason: reason.into(),
    }
}

/// Where a verifying scan stopped short of the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub position: u64,
    /// The offset the batch at `position` should have started with.
    pub expected_offset: Offset,
    pub reason: String,
    /// Everything from `position` to the end of the file is zero: O_DIRECT padding or
    /// never-written space, not damaged data.
    pub zero_tail: bool,
}

/// Reads the whole segment from position 0, verifying every batch (header, CRC, dense
/// offsets) and rebuilding the segment's index, max timestamp and next offset as it goes.
/// Returns `Some` at the first invalid batch; the segment then describes exactly the
/// valid prefix.
pub(crate) async fn verify(segment: &mut Segment) -> Result<Option<Invalid>> {
    let file_size = segment.size;
    let path = segment.log_path.clone();
    let mut window: Vec<u8> = Vec::new();
    let mut window_start = 0u64;
    let mut position = 0u64;
    segment.index =
        crate::index::SegmentIndex::new(segment.base_offset, segment.index.interval_bytes());
    segment.next_offset = segment.base_offset;
    while position < file_size {
        let available = (file_size - position) as usize;
        let at = (position - window_start) as usize;
        if position < window_start || window.len() < at + HEADER_BYTES.min(available) {
            window = file::read_at(
                &segment.file,
                &path,
                position,
                HEADER_SCAN_WINDOW_BYTES.max(1 << 20).min(available),
            )
            .await?;
            window_start = position;
        }
        let at = (position - window_start) as usize;
        let outcome = check_batch(segment, &path, &window, at, position, available).await?;
        match outcome {
            Ok(header) => {
                segment.note_batch(
                    &header,
                    u32::try_from(position).expect("segment position fits in u32"),
                );
                position += header.size as u64;
            }
            Err(reason) => {
                let zero_tail = zero_from(&segment.file, &path, position, file_size).await?;
                segment.size = position;
                segment.durable = position;
                return Ok(Some(Invalid {
                    position,
                    expected_offset: segment.next_offset,
                    reason,
                    zero_tail,
                }));
            }
        }
    }
    Ok(None)
}

/// Checks the batch at `position`. Inner `Err` is a reason the batch is invalid.
async fn check_batch(
    segment: &Segment,
    path: &Path,
    window: &[u8],
    at: usize,
    position: u64,
    available: usize,
) -> Result<std::result::Result<BatchHeader, String>> {
    let header = match BatchHeader::parse(&window[at..]) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if position + header.size as u64 > u64::from(u32::MAX) {
        return Ok(Err(
            "segment is larger than the 4 GiB its index positions can address".into(),
        ));
    }
    if header.size > available {
        return Ok(Err(format!(
            "batch of {} bytes runs past the end of the file",
            header.size
        )));
    }
    if header.size > BATCH_BYTES_MAX {
        return Ok(Err(format!(
            "batch length {} is over the engine's limit",
            header.size
        )));
    }
    if header.base_offset != segment.next_offset {
        return Ok(Err(format!(
            "batch starts at offset {} where {} was expected",
            header.base_offset.0, segment.next_offset.0
        )));
    }
    let owned;
    let bytes: &[u8] = if at + header.size <= window.len() {
        &window[at..at + header.size]
    } else {
        owned = file::read_at(&segment.file, path, position, header.size).await?;
        &owned
    };
    if let Err(e) = batch::verify_stored(bytes) {
        return Ok(Err(e.to_string()));
    }
    Ok(Ok(header))
}

/// Whether every byte in [from, to) is zero.
async fn zero_from(file: &DmaFile, path: &Path, from: u64, to: u64) -> Result<bool> {
    const STEP: usize = 1 << 20;
    // Compared as slices (one memcmp): a preallocated segment's tail is megabytes of
    // zeros, read at every unclean open.
    let zeros = vec![0u8; STEP];
    let mut position = from;
    while position < to {
        let len = ((to - position) as usize).min(STEP);
        let bytes = file::read_at(file, path, position, len).await?;
        if bytes.is_empty() {
            break;
        }
        if bytes[..] != zeros[..bytes.len()] {
            return Ok(false);
        }
        position += bytes.len() as u64;
    }
    Ok(true)
}
