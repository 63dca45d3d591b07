//! Writing batches the way a producer does, and walking the records of one.
//!
//! `BatchBuilder` collects records into an uncompressed records section, then seals it
//! into one v2 batch: compressed with the chosen codec, with the producer's id, epoch and
//! first sequence when idempotent, and the CRC-32C over everything after it. Its buffers
//! are reused from batch to batch, so a load generator allocates nothing per record.
//! `for_each_record` reads an uncompressed records section back, checking every length
//! against the bytes present: a malformed section is an error, never a panic.

use super::*;

/// Accumulates records for one batch. Empty after `finish`.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    records: Vec<u8>,
    scratch: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

/// The producer fields of an idempotent batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerFields {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// Records pushed since the last `finish`.
    pub fn count(&self) -> i32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the batch if sealed uncompressed now.
    pub fn size_uncompressed(&self) -> usize {
        HEADER_BYTES + self.records.len()
    }

    /// Appends one record with CreateTime `timestamp` (ms).
    pub fn push(&mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        assert!(
            self.count < i32::MAX,
            "a batch holds fewer than 2^31 records"
        );
        if self.count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let body = &mut self.scratch;
        body.clear();
        body.push(0); // record attributes
        put_varint(body, timestamp - self.base_timestamp);
        put_varint(body, i64::from(self.count)); // offset delta
        put_bytes(body, key);
        put_bytes(body, value);
        put_varint(body, 0); // header count
        put_varint(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(body);
        self.count += 1;
    }

    /// Seals the records pushed so far into one batch appended to `out`, and empties the
    /// builder. Base offset 0 and leader epoch -1, as a producer sends them.
    pub fn finish(
        &mut self,
        compression: Compression,
        producer: Option<ProducerFields>,
        out: &mut Vec<u8>,
    ) -> Result<(), BatchError> {
        assert!(self.count > 0, "a batch has at least one record");
        let start = out.len();
        out.resize(start + HEADER_BYTES, 0);
        if compression == Compression::None {
            out.extend_from_slice(&self.records);
        } else {
            let compressed = crate::compression::compress(compression, &self.records)?;
            out.extend_from_slice(&compressed);
        }
        let batch = &mut out[start..];
        let length =
            i32::try_from(batch.len() - LOG_OVERHEAD).map_err(|_| BatchError::TooLarge {
                size: batch.len(),
                max: i32::MAX as usize,
            })?;
        let codec_bits: i16 = match compression {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        };
        let producer = producer.unwrap_or(ProducerFields {
            id: -1,
            epoch: -1,
            base_sequence: -1,
        });
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        batch[EPOCH_AT..EPOCH_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
        batch[MAGIC_AT] = 2;
        batch[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&codec_bits.to_be_bytes());
        let last_delta = self.count - 1;
        batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&last_delta.to_be_bytes());
        batch[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8]
            .copy_from_slice(&self.base_timestamp.to_be_bytes());
        batch[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&self.max_timestamp.to_be_bytes());
        batch[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&producer.id.to_be_bytes());
        batch[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
            .copy_from_slice(&producer.epoch.to_be_bytes());
        batch[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4]
            .copy_from_slice(&producer.base_sequence.to_be_bytes());
        batch[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        self.records.clear();
        self.count = 0;
        Ok(())
    }
}

pub(super) fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// One record as `for_each_record` hands it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset_delta: i64,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Calls `f` on each of the `count` records of an uncompressed records section.
pub fn for_each_record<'a>(
    records: &'a [u8],
    count: i32,
    mut f: impl FnMut(RecordView<'a>),
) -> Result<(), BatchError> {
    for_each_record_at(records, count, |_, record| f(record)).map(|_| ())
}

/// `for_each_record`, with each record's byte range in `records` (its length varint
/// included); returns where the last record ends.
pub(crate) fn for_each_record_at<'a>(
    records: &'a [u8],
    count: i32,
    mut f: impl FnMut(std::ops::Range<usize>, RecordView<'a>),
) -> Result<usize, BatchError> {
    let malformed = |reason: &str| BatchError::MalformedRecords {
        reason: reason.into(),
    };
    let mut at = 0;
    for _ in 0..count {
        let start = at;
        let length =
            read_varint(records, &mut at).ok_or_else(|| malformed("truncated record length"))?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|&e| e <= records.len())
            .ok_or_else(|| malformed("record runs past the batch"))?;
        let record = &records[..end];
        at += 1; // record attributes
        let timestamp_delta =
            read_varint(record, &mut at).ok_or_else(|| malformed("truncated timestamp delta"))?;
        let offset_delta =
            read_varint(record, &mut at).ok_or_else(|| malformed("truncated offset delta"))?;
        let key = read_bytes(record, &mut at).ok_or_else(|| malformed("truncated key"))?;
        let value = read_bytes(record, &mut at).ok_or_else(|| malformed("truncated value"))?;
        f(
            start..end,
            RecordView {
                offset_delta,
                timestamp_delta,
                key,
                value,
            },
        );
        at = end;
    }
    Ok(at)
}

/// A varint-length byte string at `*at` (-1 is null), advancing `*at`.
fn read_bytes<'a>(bytes: &'a [u8], at: &mut usize) -> Option<Option<&'a [u8]>> {
    let length = read_varint(bytes, at)?;
    if length < 0 {
        return Some(None);
    }
    let end = at.checked_add(usize::try_from(length).ok()?)?;
    let out = bytes.get(*at..end)?;
    *at = end;
    Some(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(codec: Compression, producer: Option<ProducerFields>) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for i in 0..50u8 {
            let key = [i; 3];
            builder.push(
                1_000 + i64::from(i),
                (i % 2 == 0).then_some(&key[..]),
                Some(&[i; 100]),
            );
        }
        let mut out = Vec::new();
        builder.finish(codec, producer, &mut out).unwrap();
        assert!(builder.is_empty());
        out
    }

    #[test]
    fn every_codec_builds_a_valid_batch_whose_records_read_back() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = build(codec, None);
            let header = validate(&batch, 1 << 20).unwrap();
            assert_eq!(header.compression().unwrap(), codec);
            assert_eq!(header.record_count, 50);
            assert_eq!(header.max_timestamp.0, 1_049);
            let section = &batch[HEADER_BYTES..];
            let records = if codec == Compression::None {
                section.to_vec()
            } else {
                crate::compression::decompress(codec, section, 1 << 20).unwrap()
            };
            let mut seen = 0;
            for_each_record(&records, header.record_count, |r| {
                let i = seen as u8;
                assert_eq!(r.offset_delta, seen);
                assert_eq!(r.timestamp_delta, seen);
                assert_eq!(r.value, Some(&[i; 100][..]));
                assert_eq!(r.key.is_some(), i % 2 == 0);
                seen += 1;
            })
            .unwrap();
            assert_eq!(seen, 50);
        }
    }

    #[test]
    fn producer_fields_are_written_inside_the_crc() {
        let producer = ProducerFields {
            id: 7,
            epoch: 2,
            base_sequence: 40,
        };
        let batch = build(Compression::None, Some(producer));
        let header = validate(&batch, 1 << 20).unwrap();
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (7, 2, 40)
        );
    }

    #[test]
    fn a_truncated_records_section_is_an_error() {
        let batch = build(Compression::None, None);
        let section = &batch[HEADER_BYTES..batch.len() - 5];
        assert!(for_each_record(section, 50, |_| {}).is_err());
        assert!(for_each_record(&[0x7f], 1, |_| {}).is_err());
    }
}
