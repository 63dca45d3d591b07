//! Kafka v2 RecordBatch: header layout, validation, and the two fields the broker patches.
//!
//! A batch is stored on disk byte for byte as the producer sent it, except `baseOffset`
//! and `partitionLeaderEpoch`, which the leader assigns. Both lie before the CRC'd region,
//! so patching them keeps the producer's CRC valid and a fetch can send the bytes as they
//! are. All integers are big-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  baseOffset            (patched by the broker)
//!      8     4  batchLength           (bytes after this field: total = 12 + batchLength)
//!     12     4  partitionLeaderEpoch  (patched by the broker)
//!     16     1  magic                 (must be 2)
//!     17     4  crc                   (CRC-32C of bytes 21..end)
//!     21     2  attributes            (bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control)
//!     23     4  lastOffsetDelta
//!     27     8  baseTimestamp
//!     35     8  maxTimestamp
//!     43     8  producerId
//!     51     2  producerEpoch
//!     53     4  baseSequence
//!     57     4  recordCount
//!     61     …  records
//! ```

mod build;

pub(crate) use build::for_each_record_at;
pub use build::{for_each_record, BatchBuilder, ProducerFields, RecordView};

use crate::error::BatchError;
use crate::limits::{COMPRESSED_RECORDS_PER_BYTE_MAX, DECOMPRESSED_BATCH_BYTES_MAX};
use crate::types::{LeaderEpoch, Offset, Timestamp};

/// Bytes of the fixed batch header.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `batchLength`'s coverage begins (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;
/// Where the CRC'd region starts.
pub const CRC_START: usize = 21;

const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const EPOCH_AT: usize = 12;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

/// Compression codec from the low three attribute bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// The parsed fixed header of one batch. Holds no reference to the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    /// Total bytes of the batch, header included (12 + batchLength).
    pub size: usize,
    pub leader_epoch: LeaderEpoch,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: Timestamp,
    pub max_timestamp: Timestamp,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the fixed header from the start of `bytes`. Checks only that the header is
    /// present and that the length field is sane; `validate` checks the rest.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::TooShort {
                present: bytes.len(),
            });
        }
        let batch_length = be_i32(bytes, 8);
        if batch_length < (HEADER_BYTES - LOG_OVERHEAD) as i32 {
            return Err(BatchError::LengthMismatch {
                declared: i64::from(batch_length) + LOG_OVERHEAD as i64,
                present: bytes.len(),
            });
        }
        let last_offset_delta = be_i32(bytes, LAST_OFFSET_DELTA_AT);
        let record_count = be_i32(bytes, RECORD_COUNT_AT);
        if last_offset_delta < 0 || record_count < 0 {
            return Err(BatchError::CountMismatch {
                count: record_count,
                last_offset_delta,
            });
        }
        Ok(BatchHeader {
            base_offset: Offset(be_i64(bytes, 0)),
            size: batch_length as usize + LOG_OVERHEAD,
            leader_epoch: LeaderEpoch(be_i32(bytes, EPOCH_AT)),
            magic: bytes[MAGIC_AT] as i8,
            crc: u32::from_be_bytes(bytes[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes")),
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta,
            base_timestamp: Timestamp(be_i64(bytes, BASE_TIMESTAMP_AT)),
            max_timestamp: Timestamp(be_i64(bytes, MAX_TIMESTAMP_AT)),
            producer_id: be_i64(bytes, PRODUCER_ID_AT),
            producer_epoch: be_i16(bytes, PRODUCER_EPOCH_AT),
            base_sequence: be_i32(bytes, BASE_SEQUENCE_AT),
            record_count,
        })
    }

    /// The offset of the batch's last record. Saturates rather than overflowing, since a
    /// producer's batch may carry any base offset before the broker assigns one.
    pub fn last_offset(&self) -> Offset {
        Offset(
            self.base_offset
                .0
                .saturating_add(i64::from(self.last_offset_delta)),
        )
    }

    /// How many offsets the batch spans: lastOffsetDelta + 1, or 0 if the delta is
    /// negative (a batch no validator accepts). Compaction never changes it, though it
    /// may leave fewer records.
    pub fn offsets(&self) -> u32 {
        u32::try_from(i64::from(self.last_offset_delta) + 1).unwrap_or(0)
    }

    /// The compression codec, if the attribute bits name a known one.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        match self.attributes & 0x7 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            codec => Err(BatchError::UnknownCompression { codec: codec as u8 }),
        }
    }

    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// Whether the batch is a transaction control batch (commit/abort marker).
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Validates one whole batch as a producer sent it: magic 2, the declared length equals
/// the bytes present, the CRC-32C matches, the record count agrees with lastOffsetDelta,
/// a known codec, and the size is within `max_bytes`. Returns the parsed header.
pub fn validate(bytes: &[u8], max_bytes: usize) -> Result<BatchHeader, BatchError> {
    validate_as(bytes, max_bytes, Records::Dense)
}

/// Validates a batch a leader replicates: as `validate`, except that compaction may have
/// left fewer records than the batch spans offsets, or none (a filler). The records
/// there are keep their offset deltas, so those only have to rise within the span.
pub fn validate_replicated(bytes: &[u8], max_bytes: usize) -> Result<BatchHeader, BatchError> {
    validate_as(bytes, max_bytes, Records::Compacted)
}

/// Which records a batch must hold for the offsets it spans.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Records {
    /// One per offset: a producer's batch.
    Dense,
    /// At most one per offset, in order: a batch compaction may have cleaned.
    Compacted,
}

fn validate_as(bytes: &[u8], max_bytes: usize, rule: Records) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic {
            magic: header.magic,
        });
    }
    if header.size != bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.size as i64,
            present: bytes.len(),
        });
    }
    if bytes.len() > max_bytes {
        return Err(BatchError::TooLarge {
            size: bytes.len(),
            max: max_bytes,
        });
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let compression = header.compression()?;
    let counts_fit = match rule {
        Records::Dense => {
            header.record_count >= 1 && header.last_offset_delta == header.record_count - 1
        }
        Records::Compacted => header.record_count <= header.last_offset_delta.saturating_add(1),
    };
    if !counts_fit {
        return Err(BatchError::CountMismatch {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if compression == Compression::None {
        walk_records(bytes, &header, rule)?;
    } else {
        let claim_max = (bytes.len() - HEADER_BYTES) as i64 * COMPRESSED_RECORDS_PER_BYTE_MAX;
        if i64::from(header.record_count) > claim_max {
            return Err(BatchError::MalformedRecords {
                reason: format!(
                    "{} records claimed in {} compressed bytes",
                    header.record_count,
                    bytes.len() - HEADER_BYTES
                ),
            });
        }
    }
    Ok(header)
}

/// Checks a batch read back from a segment: header sane, magic 2, and CRC intact. Unlike
/// `validate`, it accepts batches whose record count is below lastOffsetDelta + 1, since
/// compaction leaves such batches.
pub fn verify_stored(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic {
            magic: header.magic,
        });
    }
    if header.size > bytes.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.size as i64,
            present: bytes.len(),
        });
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..header.size]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.last_offset_delta < 0 || header.record_count < 0 {
        return Err(BatchError::CountMismatch {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Stamps the broker-assigned base offset and leader epoch into a batch. Neither field is
/// covered by the CRC, so the batch stays valid.
pub fn patch(bytes: &mut [u8], base_offset: Offset, leader_epoch: LeaderEpoch) {
    assert!(
        bytes.len() >= HEADER_BYTES,
        "patching a batch shorter than its header"
    );
    bytes[0..8].copy_from_slice(&base_offset.0.to_be_bytes());
    bytes[EPOCH_AT..EPOCH_AT + 4].copy_from_slice(&leader_epoch.0.to_be_bytes());
}

/// Turns a producer's batch into a LogAppendTime batch stamped `time` (for topics with
/// `message.timestamp.type=LogAppendTime`): sets the timestamp-type attribute and
/// maxTimestamp, which consumers then read as every record's time, and reseals the CRC.
/// The batch is validated first, so a corrupt batch is refused, never resealed.
pub fn stamp_log_append_time(bytes: &mut [u8], time: Timestamp) -> Result<(), BatchError> {
    validate(bytes, usize::MAX)?;
    // Attributes are a big-endian i16; the timestamp-type bit (0x08) is in its low byte.
    bytes[ATTRIBUTES_AT + 1] |= 0x08;
    bytes[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&time.0.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[CRC_START..]);
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    debug_assert!(
        validate(bytes, usize::MAX).is_ok(),
        "a stamped batch stays valid"
    );
    Ok(())
}

/// Walks the records of an uncompressed batch: exactly its record count, each record's
/// length within the batch, and no bytes left over. Offset deltas are 0, 1, 2, … for
/// `Records::Dense`, and rise within the batch's span for `Records::Compacted`.
fn walk_records(bytes: &[u8], header: &BatchHeader, rule: Records) -> Result<(), BatchError> {
    let malformed = |reason: &str| BatchError::MalformedRecords {
        reason: reason.into(),
    };
    let mut at = HEADER_BYTES;
    let mut previous = -1i64;
    for index in 0..i64::from(header.record_count) {
        let length =
            read_varint(bytes, &mut at).ok_or_else(|| malformed("truncated record length"))?;
        let length = usize::try_from(length).map_err(|_| malformed("negative record length"))?;
        let end = at
            .checked_add(length)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| malformed("record runs past the batch"))?;
        let mut field = at + 1; // record attributes
        read_varint(&bytes[..end], &mut field)
            .ok_or_else(|| malformed("truncated timestamp delta"))?;
        let offset_delta = read_varint(&bytes[..end], &mut field)
            .ok_or_else(|| malformed("truncated offset delta"))?;
        match rule {
            Records::Dense if offset_delta != index => {
                return Err(malformed("offset deltas are not 0, 1, 2, ..."));
            }
            Records::Compacted
                if offset_delta <= previous
                    || offset_delta > i64::from(header.last_offset_delta) =>
            {
                return Err(malformed("offset deltas do not rise within the batch"));
            }
            _ => previous = offset_delta,
        }
        at = end;
    }
    if at != bytes.len() {
        return Err(malformed("bytes left over after the last record"));
    }
    Ok(())
}

/// Reads a zig-zag varint (Kafka's record field encoding) at `*at`, advancing it.
fn read_varint(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// The offset of the first record of a batch whose timestamp is at least `target`.
/// Compressed records are decompressed (up to `DECOMPRESSED_BATCH_BYTES_MAX`). Returns
/// `None` if no record qualifies, or if the records cannot be read (malformed, or too
/// large once decompressed): the caller then answers with the batch's base offset, which
/// is never later than the exact record.
pub fn first_record_at_or_after(bytes: &[u8], target: Timestamp) -> Option<Offset> {
    let header = BatchHeader::parse(bytes).ok()?;
    if header.attributes & 0x08 != 0 {
        // LogAppendTime: every record's time is maxTimestamp, so the caller's base
        // offset is exact.
        return None;
    }
    let records = bytes.get(HEADER_BYTES..header.size)?;
    let codec = header.compression().ok()?;
    if codec == Compression::None {
        return first_at_or_after(&header, records, target);
    }
    match crate::compression::decompress(codec, records, DECOMPRESSED_BATCH_BYTES_MAX) {
        Ok(records) => first_at_or_after(&header, &records, target),
        Err(e) => {
            tracing::debug!(error = %e, "timestamp lookup falls back to the batch start");
            None
        }
    }
}

/// Walks `records` (a batch's records section, uncompressed) for the first record at or
/// after `target`.
fn first_at_or_after(header: &BatchHeader, records: &[u8], target: Timestamp) -> Option<Offset> {
    let mut at = 0;
    for _ in 0..header.record_count {
        let length = read_varint(records, &mut at)?;
        let record_start = at;
        at += 1; // record attributes
        let timestamp_delta = read_varint(records, &mut at)?;
        let offset_delta = read_varint(records, &mut at)?;
        if !(0..=i64::from(header.last_offset_delta)).contains(&offset_delta) {
            return None;
        }
        if header.base_timestamp.0.saturating_add(timestamp_delta) >= target.0 {
            return Some(Offset(header.base_offset.0.saturating_add(offset_delta)));
        }
        at = record_start.checked_add(usize::try_from(length).ok()?)?;
    }
    None
}

/// One record for `encode_uncompressed`.
#[derive(Debug, Clone, Copy)]
pub struct SimpleRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Encodes records as one uncompressed v2 batch with CreateTime timestamps
/// `base_timestamp + i`, no producer id, base offset 0: what a simple producer sends.
/// Used by the benchmark harness and tests.
pub fn encode_uncompressed(base_timestamp: i64, records: &[SimpleRecord<'_>]) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch has at least one record");
    let mut builder = BatchBuilder::new();
    for (i, record) in records.iter().enumerate() {
        builder.push(base_timestamp + i as i64, record.key, record.value);
    }
    let mut out = Vec::with_capacity(builder.size_uncompressed());
    builder
        .finish(Compression::None, None, &mut out)
        .expect("an uncompressed batch of fewer than 2^31 bytes");
    out
}

/// A batch of `count` records whose values are `value_bytes` long (bytes derived from the
/// record index), for tests and benchmarks.
pub fn encode_test_batch(count: i32, value_bytes: usize, base_timestamp: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| vec![(i % 251) as u8; value_bytes])
        .collect();
    let records: Vec<SimpleRecord<'_>> = values
        .iter()
        .map(|v| SimpleRecord {
            key: None,
            value: Some(v),
        })
        .collect();
    encode_uncompressed(base_timestamp, &records)
}

/// The control record type of a leader's epoch marker: KRaft's `LEADER_CHANGE`. Kafka
/// clients skip control batches they do not act on, so consumers never see it.
pub const LEADER_CHANGE_CONTROL_TYPE: i16 = 2;

/// A new leader's epoch marker: a control batch of one record whose key is the control
/// record key (version 0, type `LEADER_CHANGE_CONTROL_TYPE`) and whose value is empty.
/// Replication needs an entry of the leader's own epoch in the log before it may count
/// commits (Raft's rule), and this is that entry.
pub fn encode_leader_marker(timestamp: i64) -> Vec<u8> {
    let mut key = [0u8; 4];
    key[2..4].copy_from_slice(&LEADER_CHANGE_CONTROL_TYPE.to_be_bytes());
    let mut batch = encode_uncompressed(
        timestamp,
        &[SimpleRecord {
            key: Some(&key),
            value: Some(&[]),
        }],
    );
    let attributes = i16::from_be_bytes([batch[ATTRIBUTES_AT], batch[ATTRIBUTES_AT + 1]]) | 0x20;
    batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

/// Makes `batch` an idempotent producer's batch (producer id, epoch, first sequence) and
/// reseals its CRC. For tests and the benchmark harness.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    assert!(batch.len() >= HEADER_BYTES, "a whole batch");
    batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_batch(count: i32, value_bytes: usize, base_ts: i64) -> Vec<u8> {
        encode_test_batch(count, value_bytes, base_ts)
    }

    /// `batch` claiming `last_offset_delta`, resealed.
    fn with_delta(batch: &[u8], last_offset_delta: i32) -> Vec<u8> {
        let mut out = batch.to_vec();
        out[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&last_offset_delta.to_be_bytes());
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn a_replicated_batch_may_hold_fewer_records_than_offsets_but_never_more() {
        let b = build_batch(3, 10, 1000);
        let sparse = with_delta(&b, 5);
        assert!(matches!(
            validate(&sparse, 1 << 20),
            Err(BatchError::CountMismatch { .. })
        ));
        let h = validate_replicated(&sparse, 1 << 20).unwrap();
        assert_eq!((h.record_count, h.offsets()), (3, 6));
        assert!(matches!(
            validate_replicated(&with_delta(&b, 1), 1 << 20),
            Err(BatchError::CountMismatch { .. })
        ));
    }

    #[test]
    fn a_built_batch_validates() {
        let b = build_batch(3, 10, 1000);
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.size, b.len());
        assert_eq!(h.max_timestamp, Timestamp(1002));
    }

    /// `batch` with its records compressed by `codec` (test compressors), resealed.
    fn recompressed(batch: &[u8], codec: Compression) -> Vec<u8> {
        let packed = crate::compression::tests::compress(codec, &batch[HEADER_BYTES..]);
        let mut out = batch[..HEADER_BYTES].to_vec();
        out.extend_from_slice(&packed);
        let length = (out.len() - LOG_OVERHEAD) as i32;
        out[8..12].copy_from_slice(&length.to_be_bytes());
        out[ATTRIBUTES_AT + 1] = (out[ATTRIBUTES_AT + 1] & !0x07) | codec as u8;
        let crc = crc32c::crc32c(&out[CRC_START..]);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn timestamp_lookup_is_exact_inside_every_codec() {
        // Records at 1000, 1001, ... 1019.
        let plain = build_batch(20, 30, 1000);
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = recompressed(&plain, codec);
            let h = validate(&b, 1 << 20).unwrap();
            assert_eq!(h.compression().unwrap(), codec);
            for (target, want) in [
                (0, Some(0)),
                (1000, Some(0)),
                (1007, Some(7)),
                (1019, Some(19)),
                (1020, None),
            ] {
                assert_eq!(
                    first_record_at_or_after(&b, Timestamp(target)),
                    want.map(Offset),
                    "{codec:?} at {target}"
                );
            }
        }
        // Undecodable compressed records fall back (None), never panic.
        let mut bad = recompressed(&plain, Compression::Lz4);
        bad.truncate(HEADER_BYTES + (bad.len() - HEADER_BYTES) / 2);
        let length = (bad.len() - LOG_OVERHEAD) as i32;
        bad[8..12].copy_from_slice(&length.to_be_bytes());
        assert_eq!(first_record_at_or_after(&bad, Timestamp(1007)), None);
    }

    #[test]
    fn log_append_time_stamping_reseals_and_refuses_corrupt_batches() {
        let mut b = build_batch(3, 10, 1000);
        stamp_log_append_time(&mut b, Timestamp(77_000)).unwrap();
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.max_timestamp, Timestamp(77_000));
        assert_ne!(h.attributes & 0x08, 0, "timestamp type is LogAppendTime");
        assert_eq!(first_record_at_or_after(&b, Timestamp(0)), None);
        let mut corrupt = build_batch(3, 10, 1000);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        let before = corrupt.clone();
        assert!(matches!(
            stamp_log_append_time(&mut corrupt, Timestamp(5)),
            Err(BatchError::CrcMismatch { .. })
        ));
        assert_eq!(corrupt, before, "a refused batch is left as it was");
    }

    #[test]
    fn bad_input_gets_a_typed_error() {
        let good = build_batch(2, 5, 0);
        let mut b = good.clone();
        b[16] = 1;
        assert_eq!(
            validate(&b, 1 << 20),
            Err(BatchError::UnsupportedMagic { magic: 1 })
        );
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::CrcMismatch { .. })
        ));
        let b = &good[..good.len() - 1];
        assert!(matches!(
            validate(b, 1 << 20),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate(&good, 10),
            Err(BatchError::TooLarge { .. })
        ));
        assert!(matches!(
            validate(&good[..30], 1 << 20),
            Err(BatchError::TooShort { .. })
        ));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::LengthMismatch { .. })
        ));
    }

    fn recrc(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn record_counts_are_checked_against_the_records() {
        // Claims 3 records (lastOffsetDelta 2) but holds 2, with a valid CRC.
        let mut b = build_batch(2, 5, 0);
        b[23..27].copy_from_slice(&2i32.to_be_bytes());
        b[57..61].copy_from_slice(&3i32.to_be_bytes());
        recrc(&mut b);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::MalformedRecords { .. })
        ));
        // A compressed batch claiming two billion records in a few bytes.
        let mut b = build_batch(1, 5, 0);
        b[21..23].copy_from_slice(&4i16.to_be_bytes()); // zstd
        b[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        recrc(&mut b);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::MalformedRecords { .. })
        ));
        // Trailing garbage after the last record.
        let mut b = build_batch(1, 5, 0);
        b.push(0);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        recrc(&mut b);
        assert!(matches!(
            validate(&b, 1 << 20),
            Err(BatchError::MalformedRecords { .. })
        ));
    }

    #[test]
    fn patching_keeps_the_crc_valid() {
        let mut b = build_batch(4, 3, 0);
        patch(&mut b, Offset(1234), LeaderEpoch(7));
        let h = validate(&b, 1 << 20).unwrap();
        assert_eq!(h.base_offset, Offset(1234));
        assert_eq!(h.leader_epoch, LeaderEpoch(7));
        assert_eq!(h.last_offset(), Offset(1237));
    }

    #[test]
    fn finds_the_first_record_at_a_timestamp() {
        let mut b = build_batch(5, 2, 100);
        patch(&mut b, Offset(50), LeaderEpoch(0));
        assert_eq!(
            first_record_at_or_after(&b, Timestamp(102)),
            Some(Offset(52))
        );
        assert_eq!(first_record_at_or_after(&b, Timestamp(0)), Some(Offset(50)));
        assert_eq!(first_record_at_or_after(&b, Timestamp(105)), None);
    }

    proptest::proptest! {
        #[test]
        fn validator_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(0u8..=255, 0..200)) {
            let _ = validate(&bytes, 1 << 20);
            let _ = verify_stored(&bytes);
            let _ = first_record_at_or_after(&bytes, Timestamp(0));
        }

        #[test]
        fn any_single_byte_flip_in_the_crc_region_is_caught(at in 21usize..80, bit in 0u8..8) {
            let mut b = build_batch(2, 8, 0);
            let at = at.min(b.len() - 1);
            b[at] ^= 1 << bit;
            proptest::prop_assert!(validate(&b, 1 << 20).is_err());
        }
    }
}
