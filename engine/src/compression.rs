//! Decompression of the records inside compressed batches, with a bound on the output:
//! a batch that would inflate past the limit is refused, never allocated for. Used where
//! the broker must see individual records of a compressed batch (the exact offset for a
//! timestamp). Batches are stored and served compressed, as the producer sent them.
//!
//! Kafka's codecs: gzip (RFC 1952), snappy (raw, or the xerial framing Java clients
//! write), LZ4 (the frame format) and zstd.

use std::io::Read;

use crate::batch::Compression;
use crate::error::BatchError;

/// The xerial snappy stream header: magic, then two big-endian i32 version fields.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = XERIAL_MAGIC.len() + 8;

fn malformed(codec: Compression, reason: impl std::fmt::Display) -> BatchError {
    BatchError::MalformedRecords {
        reason: format!("{codec:?} records: {reason}"),
    }
}

/// Decompresses `input` (a batch's records section) compressed with `codec`, producing at
/// most `max_out` bytes.
pub fn decompress(codec: Compression, input: &[u8], max_out: usize) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => bounded(codec, input, max_out),
        Compression::Gzip => bounded(codec, flate2::read::MultiGzDecoder::new(input), max_out),
        Compression::Lz4 => bounded(codec, lz4_flex::frame::FrameDecoder::new(input), max_out),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::new(input).map_err(|e| malformed(codec, e))?;
            bounded(codec, decoder, max_out)
        }
        Compression::Snappy if input.starts_with(XERIAL_MAGIC) => xerial(input, max_out),
        Compression::Snappy => snappy_block(input, max_out),
    }
}

/// Compresses a records section with `codec`, as a producer does: gzip, raw snappy (which
/// Kafka's brokers and librdkafka read), the LZ4 frame format, zstd at its default level.
pub fn compress(codec: Compression, input: &[u8]) -> Result<Vec<u8>, BatchError> {
    use std::io::Write;
    match codec {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(input).map_err(|e| malformed(codec, e))?;
            encoder.finish().map_err(|e| malformed(codec, e))
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .map_err(|e| malformed(codec, e)),
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(input).map_err(|e| malformed(codec, e))?;
            encoder.finish().map_err(|e| malformed(codec, e))
        }
        Compression::Zstd => zstd::bulk::compress(input, 0).map_err(|e| malformed(codec, e)),
    }
}

/// Reads all of `reader`, refusing output past `max_out`.
fn bounded(codec: Compression, reader: impl Read, max_out: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max_out).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| malformed(codec, e))?;
    if out.len() > max_out {
        return Err(malformed(
            codec,
            format_args!("inflate past {max_out} bytes"),
        ));
    }
    Ok(out)
}

fn snappy_block(input: &[u8], max_out: usize) -> Result<Vec<u8>, BatchError> {
    let codec = Compression::Snappy;
    // The declared length is checked before anything is allocated for it.
    let len = snap::raw::decompress_len(input).map_err(|e| malformed(codec, e))?;
    if len > max_out {
        return Err(malformed(
            codec,
            format_args!("declare {len} bytes, over {max_out}"),
        ));
    }
    snap::raw::Decoder::new()
        .decompress_vec(input)
        .map_err(|e| malformed(codec, e))
}

/// The xerial framing: the header, then blocks of a big-endian u32 length and a raw
/// snappy block.
fn xerial(input: &[u8], max_out: usize) -> Result<Vec<u8>, BatchError> {
    let codec = Compression::Snappy;
    let mut rest = input
        .get(XERIAL_HEADER_BYTES..)
        .ok_or_else(|| malformed(codec, "truncated xerial header"))?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, body) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed(codec, "truncated xerial block length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = body
            .get(..len)
            .ok_or_else(|| malformed(codec, "xerial block runs past the batch"))?;
        out.extend(snappy_block(block, max_out - out.len())?);
        rest = &body[len..];
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// `data` compressed with `codec` by the codecs' own encoders (for tests).
    pub(crate) fn compress(codec: Compression, data: &[u8]) -> Vec<u8> {
        match codec {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Snappy => snap::raw::Encoder::new().compress_vec(data).unwrap(),
            Compression::Lz4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
        }
    }

    pub(crate) const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn every_codec_round_trips_and_respects_the_bound() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        for codec in CODECS {
            let packed = compress(codec, &data);
            assert_eq!(
                decompress(codec, &packed, data.len()).unwrap(),
                data,
                "{codec:?}"
            );
            let err = decompress(codec, &packed, data.len() - 1).unwrap_err();
            assert!(err.to_string().contains("records"), "{codec:?}: {err}");
            if codec != Compression::None {
                assert!(decompress(codec, &packed[..packed.len() / 2], 1 << 20).is_err());
                assert!(
                    decompress(codec, b"\xff\xfe\xfdgarbage", 1 << 20).is_err(),
                    "{codec:?}"
                );
            }
        }
    }

    #[test]
    fn xerial_framed_snappy_is_read() {
        let data = b"hello xerial snappy, hello again".repeat(100);
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        for chunk in data.chunks(1000) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            framed.extend_from_slice(&(block.len() as u32).to_be_bytes());
            framed.extend_from_slice(&block);
        }
        assert_eq!(
            decompress(Compression::Snappy, &framed, data.len()).unwrap(),
            data
        );
        assert!(decompress(Compression::Snappy, &framed, data.len() - 1).is_err());
        assert!(decompress(Compression::Snappy, &framed[..framed.len() - 3], 1 << 20).is_err());
    }
}
