//! Log compaction's record work, without I/O: which records of a run of stored batches a
//! cleaning pass keeps, and those batches rewritten to hold only them.
//!
//! A record survives unless a later record of the cleaned range has the same key
//! (`KeyMap` holds each key's latest offset), or it is a tombstone (a key with a null
//! value) whose retention has passed. Records without a key are kept: a compacted topic
//! should hold none, and keeping them loses nothing.
//!
//! A rewritten batch keeps everything but its records: base offset and last offset delta
//! (so the offsets after it stay where they were), leader epoch, timestamps, producer id,
//! epoch and base sequence, and attributes, so its codec. The surviving records keep
//! their bytes (their offset and timestamp deltas with them), are recompressed with the
//! batch's codec, and the CRC is computed anew. Control batches are kept whole. A batch
//! left without records is dropped, unless an idempotent producer wrote it: it then stays
//! empty, so the producer's last sequence survives, as in Kafka.
//!
//! Invariants, asserted on the way out: a rewritten batch is a valid stored batch
//! (`batch::verify_stored`) with the same base offset, last offset and header fields,
//! and it holds a subset of the original's records, in order.

use std::collections::HashMap;

use crate::batch::{self, BatchHeader, Compression, CRC_START, HEADER_BYTES};
use crate::compression;
use crate::error::BatchError;
use crate::types::{LeaderEpoch, Offset, Timestamp};

/// Where `batchLength` and `recordCount` sit in a batch header.
const BATCH_LENGTH_AT: usize = 8;
const RECORD_COUNT_AT: usize = 57;
const CRC_AT: usize = 17;
/// What a key costs in a `KeyMap` beyond its bytes: the offset, the hash table's slot
/// and the allocation's header, roughly.
const KEY_ENTRY_OVERHEAD_BYTES: usize = 48;

/// Each key's latest offset in the range a cleaning pass looked at, within a byte budget.
#[derive(Debug)]
pub struct KeyMap {
    latest: HashMap<Box<[u8]>, Offset>,
    bytes: usize,
    limit: usize,
}

impl KeyMap {
    /// An empty map that holds at most `limit_bytes` of keys and bookkeeping.
    pub fn new(limit_bytes: usize) -> KeyMap {
        KeyMap {
            latest: HashMap::new(),
            bytes: 0,
            limit: limit_bytes,
        }
    }

    /// Notes `key` at `offset`; the later of two offsets wins (offsets of a malformed
    /// compressed batch may repeat). Returns false, noting nothing, if a new key would
    /// take the map past its budget: the pass must then stop before this offset.
    pub fn insert(&mut self, key: &[u8], offset: Offset) -> bool {
        if let Some(latest) = self.latest.get_mut(key) {
            *latest = (*latest).max(offset);
            return true;
        }
        let cost = key.len() + KEY_ENTRY_OVERHEAD_BYTES;
        if self.bytes + cost > self.limit {
            return false;
        }
        self.bytes += cost;
        self.latest.insert(key.into(), offset);
        true
    }

    /// The latest offset of `key`, if it was noted.
    pub fn latest(&self, key: &[u8]) -> Option<Offset> {
        self.latest.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// One record of a batch, as a cleaning pass sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: Offset,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's whole encoding, its length varint included.
    pub bytes: &'a [u8],
}

impl RecordRef<'_> {
    /// A key with a null value: it deletes the key.
    pub fn is_tombstone(&self) -> bool {
        self.key.is_some() && self.value.is_none()
    }
}

/// A batch's records section, decompressed (at most `max_out` bytes). A batch of no
/// records has no section, whatever its codec (as Kafka writes one).
pub fn records_section(bytes: &[u8], max_out: usize) -> Result<Vec<u8>, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.record_count == 0 {
        return Ok(Vec::new());
    }
    let stored = bytes
        .get(HEADER_BYTES..header.size)
        .ok_or(BatchError::LengthMismatch {
            declared: header.size as i64,
            present: bytes.len(),
        })?;
    compression::decompress(header.compression()?, stored, max_out)
}

/// Calls `f` on every record of a batch whose decompressed records section is
/// `section`, with its absolute offset.
pub fn each_record<'a>(
    header: &BatchHeader,
    section: &'a [u8],
    mut f: impl FnMut(RecordRef<'a>),
) -> Result<(), BatchError> {
    let malformed = |reason: &str| BatchError::MalformedRecords {
        reason: reason.into(),
    };
    let mut outside = false;
    let end = batch::for_each_record_at(section, header.record_count, |range, record| {
        let delta = record.offset_delta;
        outside |= !(0..=i64::from(header.last_offset_delta)).contains(&delta);
        if !outside {
            f(RecordRef {
                offset: Offset(header.base_offset.0.saturating_add(delta)),
                key: record.key,
                value: record.value,
                bytes: &section[range],
            });
        }
    })?;
    if outside {
        return Err(malformed("offset delta outside the batch"));
    }
    if end != section.len() {
        return Err(malformed("bytes after the last record"));
    }
    Ok(())
}

/// What cleaning did to one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleaned {
    /// Every record survives: the stored bytes stay as they are.
    Kept,
    /// Some records survive (or none, of an idempotent producer's batch): the new bytes.
    Rewritten(Vec<u8>),
    /// No record survives: the batch goes.
    Removed,
}

/// Cleans one stored batch: `keep` says which records survive. Control batches are kept
/// whole without asking.
pub fn clean_batch(
    bytes: &[u8],
    max_out: usize,
    mut keep: impl FnMut(&RecordRef<'_>) -> bool,
) -> Result<Cleaned, BatchError> {
    let header = batch::verify_stored(bytes)?;
    if header.is_control() {
        return Ok(Cleaned::Kept);
    }
    let section = records_section(bytes, max_out)?;
    let mut kept = Vec::with_capacity(section.len());
    let mut count: i32 = 0;
    let mut dropped = false;
    each_record(&header, &section, |record| {
        if keep(&record) {
            kept.extend_from_slice(record.bytes);
            count += 1;
        } else {
            dropped = true;
        }
    })?;
    if !dropped {
        return Ok(Cleaned::Kept);
    }
    if count == 0 && header.producer_id < 0 {
        return Ok(Cleaned::Removed);
    }
    let codec = header.compression()?;
    let records = if count == 0 {
        Vec::new()
    } else {
        compression::compress(codec, &kept)?
    };
    let rewritten = rebuild(&bytes[..HEADER_BYTES], &records, count);
    if rewritten.len() >= header.size {
        // Recompressed at our level, the survivors can take more room than the whole
        // batch did: keep it as it is.
        return Ok(Cleaned::Kept);
    }
    check_rewritten(&header, codec, &rewritten, count);
    Ok(Cleaned::Rewritten(rewritten))
}

/// A batch with `header`'s fixed fields and a new records section of `count` records.
fn rebuild(header: &[u8], records: &[u8], count: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + records.len());
    out.extend_from_slice(header);
    out.extend_from_slice(records);
    let batch_length = i32::try_from(out.len() - batch::LOG_OVERHEAD)
        .expect("a cleaned batch is no larger than a decompression-bounded batch");
    out[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
    out[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The rewrite's invariants: a valid stored batch, at the same offsets, with the same
/// header fields but its length, count and CRC.
fn check_rewritten(original: &BatchHeader, codec: Compression, rewritten: &[u8], count: i32) {
    let header = batch::verify_stored(rewritten).expect("a rewritten batch is valid");
    assert_eq!(header.base_offset, original.base_offset);
    assert_eq!(header.last_offset(), original.last_offset());
    assert_eq!(header.attributes, original.attributes);
    assert_eq!(header.compression().ok(), Some(codec));
    assert_eq!(header.producer_id, original.producer_id);
    assert_eq!(header.base_sequence, original.base_sequence);
    assert_eq!(header.max_timestamp, original.max_timestamp);
    assert_eq!(header.record_count, count);
    assert!(count < original.record_count, "a rewrite drops records");
}

/// Whether a batch is a filler (`filler_batch`): no records, no producer, not control.
pub fn is_filler(header: &BatchHeader) -> bool {
    header.record_count == 0 && header.producer_id < 0 && !header.is_control()
}

/// An empty batch covering offsets `base..=last` (at most `i32::MAX` + 1 offsets),
/// standing in for a run of batches a
/// cleaning pass removed whole: batches then still follow each other without gaps (the
/// next batch's base is the last one's end), which recovery and the indexes rely on, and
/// a reader that lands in the run moves on past `last` (Kafka's consumers skip batches
/// of no records). Not compressed and not a producer's (producer id -1).
pub fn filler_batch(base: Offset, last: Offset, leader_epoch: i32, max_timestamp: i64) -> Vec<u8> {
    let filler = empty_batch(&BatchHeader {
        base_offset: base,
        size: HEADER_BYTES,
        leader_epoch: LeaderEpoch(leader_epoch),
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: span_delta(base, last),
        base_timestamp: Timestamp(max_timestamp),
        max_timestamp: Timestamp(max_timestamp),
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count: 0,
    });
    debug_assert!(is_filler(&batch::verify_stored(&filler).expect("valid")));
    filler
}

/// The offsets from `from` on of an empty batch (a filler, or an idempotent producer's
/// batch that compaction emptied), as a batch of their own: for a follower whose log
/// ends inside the run the batch replaced (it holds that run's batches up to `from`).
/// Producer fields stay, the base sequence moved on by the offsets cut (wrapping, as
/// Kafka's sequences do), and the codec bits are cleared: there is nothing to
/// decompress.
pub fn empty_batch_from(header: &BatchHeader, from: Offset) -> Vec<u8> {
    assert_eq!(header.record_count, 0, "only an empty batch is cut");
    assert!(header.base_offset < from && from <= header.last_offset());
    let cut = from.0 - header.base_offset.0;
    let base_sequence = if header.base_sequence < 0 {
        header.base_sequence
    } else {
        let wrapped = (i64::from(header.base_sequence) + cut) % (i64::from(i32::MAX) + 1);
        i32::try_from(wrapped).expect("reduced below i32::MAX + 1")
    };
    empty_batch(&BatchHeader {
        base_offset: from,
        size: HEADER_BYTES,
        attributes: header.attributes & !0x07,
        last_offset_delta: span_delta(from, header.last_offset()),
        base_sequence,
        ..*header
    })
}

/// `last - base` as a lastOffsetDelta: a batch spans at most `i32::MAX` + 1 offsets.
fn span_delta(base: Offset, last: Offset) -> i32 {
    let delta = i32::try_from(last.0 - base.0).expect("a batch spans at most i32::MAX + 1 offsets");
    assert!(delta >= 0, "a batch covers at least one offset");
    delta
}

/// A batch of no records with `fields`' header values (its size, CRC and count are
/// computed).
fn empty_batch(fields: &BatchHeader) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_BYTES];
    out[0..8].copy_from_slice(&fields.base_offset.0.to_be_bytes());
    out[12..16].copy_from_slice(&fields.leader_epoch.0.to_be_bytes());
    out[16] = 2; // magic
    out[21..23].copy_from_slice(&fields.attributes.to_be_bytes());
    out[23..27].copy_from_slice(&fields.last_offset_delta.to_be_bytes());
    out[27..35].copy_from_slice(&fields.base_timestamp.0.to_be_bytes());
    out[35..43].copy_from_slice(&fields.max_timestamp.0.to_be_bytes());
    out[43..51].copy_from_slice(&fields.producer_id.to_be_bytes());
    out[51..53].copy_from_slice(&fields.producer_epoch.to_be_bytes());
    out[53..57].copy_from_slice(&fields.base_sequence.to_be_bytes());
    let batch = rebuild(&out, &[], 0);
    let header = batch::verify_stored(&batch).expect("an empty batch is a valid batch");
    assert_eq!(
        (
            header.base_offset,
            header.last_offset(),
            header.record_count
        ),
        (fields.base_offset, fields.last_offset(), 0)
    );
    assert_eq!(header.producer_id, fields.producer_id);
    batch
}
