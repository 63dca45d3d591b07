//! `spate log`: offline inspection of a data directory, as `kafka-dump-log.sh` does.
//!
//! - `dump PATH` decodes one segment file: for a `.log`, every batch (offsets, position,
//!   size, CRC check, codec, timestamps, producer) and with `--records` every record;
//!   for an `.index` or `.timeindex`, its entries.
//! - `verify DIR` checks every `.log` of a data directory (or of one partition): each
//!   batch's header and CRC, offsets increasing across batches and segments, and each
//!   segment starting at the offset its name says. It exits non-zero on any damage.
//!
//! JSON output (`--format json`):
//! - `dump` of a `.log`: `{"file", "batches": [{"base_offset", "last_offset", "position",
//!   "size", "records", "crc_valid", "compression", "base_timestamp", "max_timestamp",
//!   "producer_id", "producer_epoch", "base_sequence", "transactional", "control",
//!   "records_detail": [{"offset", "timestamp", "key", "value", "headers"}]}],
//!   "padding_bytes", "error"}`
//! - `dump` of an index: `{"file", "entries": [{"offset", "position" | "timestamp"}]}`
//! - `verify`: `{"segments", "batches", "problems": [...]}`

use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::{Args, Subcommand};
use kafka_protocol::records::RecordBatchDecoder;
use serde_json::{json, Value};
use spate_engine::batch::{verify_stored, BatchHeader};

use crate::client_args::{print_json, print_table, say, Format};

/// Bytes of a batch's fixed header (through recordCount).
const BATCH_HEADER_BYTES: usize = 61;

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Decode a segment file (`.log`, `.index` or `.timeindex`).
    Dump(DumpArgs),
    /// Check every segment of a data directory, or of one partition's directory.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
pub struct DumpArgs {
    path: PathBuf,
    /// Also decode each batch's records (decompressing them).
    #[arg(long)]
    records: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

pub fn run(command: LogCommand) -> Result<(), String> {
    match command {
        LogCommand::Dump(args) => dump(&args),
        LogCommand::Verify(args) => verify(&args),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// One batch found in a `.log`, or why the walk stopped.
struct Walked {
    batches: Vec<(usize, BatchHeader, bool)>,
    /// Zero bytes after the last batch (the O_DIRECT tail of an active segment).
    padding: usize,
    /// Bytes after the last batch starting with a batch of a lower offset: the old
    /// batches of a recycled segment file, past the active segment's end.
    stale: usize,
    /// Why the walk stopped before the end, if it did.
    error: Option<String>,
}

/// Walks the batches of a `.log` image: (position, header, CRC valid).
fn walk(bytes: &[u8]) -> Walked {
    let mut position = 0;
    let mut batches = Vec::new();
    while position < bytes.len() {
        let rest = &bytes[position..];
        if rest.iter().all(|&b| b == 0) {
            return Walked {
                batches,
                padding: rest.len(),
                stale: 0,
                error: None,
            };
        }
        if rest.len() < BATCH_HEADER_BYTES {
            let error = format!(
                "{} bytes at position {position} are too few for a batch",
                rest.len()
            );
            return Walked {
                batches,
                padding: 0,
                stale: 0,
                error: Some(error),
            };
        }
        let header = match BatchHeader::parse(rest) {
            Ok(h) if h.size <= rest.len() => h,
            Ok(h) => {
                let error = format!(
                    "batch at position {position} claims {} bytes, {} remain",
                    h.size,
                    rest.len()
                );
                return Walked {
                    batches,
                    padding: 0,
                    stale: 0,
                    error: Some(error),
                };
            }
            Err(e) => {
                return Walked {
                    batches,
                    padding: 0,
                    stale: 0,
                    error: Some(format!("at position {position}: {e}")),
                }
            }
        };
        let expected = batches
            .last()
            .map(|(_, h, _): &(usize, BatchHeader, bool)| h.last_offset().next());
        if expected.is_some_and(|next| header.base_offset < next) {
            return Walked {
                batches,
                padding: 0,
                stale: rest.len(),
                error: None,
            };
        }
        let crc_valid = verify_stored(&rest[..header.size]).is_ok();
        batches.push((position, header, crc_valid));
        position += header.size;
    }
    Walked {
        batches,
        padding: 0,
        stale: 0,
        error: None,
    }
}

fn compression_name(header: &BatchHeader) -> String {
    header.compression().map_or_else(
        |e| format!("invalid ({e})"),
        |c| format!("{c:?}").to_lowercase(),
    )
}

/// A byte string for people: UTF-8 when it is, else hex.
fn show(bytes: Option<&Bytes>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::from(s),
            Err(_) => Value::from(format!(
                "0x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )),
        },
    }
}

fn records_of(batch: &[u8]) -> Result<Vec<Value>, String> {
    let mut bytes = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode(&mut bytes)
        .map_err(|e| format!("cannot decode records: {e}"))?;
    Ok(set
        .records
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), show(v.as_ref())))
                .collect();
            json!({"offset": r.offset, "timestamp": r.timestamp, "key": show(r.key.as_ref()), "value": show(r.value.as_ref()), "headers": headers})
        })
        .collect())
}

fn dump(args: &DumpArgs) -> Result<(), String> {
    let bytes = read(&args.path)?;
    let file = args.path.display().to_string();
    match args.path.extension().and_then(|e| e.to_str()) {
        Some("log") => dump_log(args, &file, &bytes),
        Some("index") => dump_index(args.format, &file, &bytes, 8),
        Some("timeindex") => dump_index(args.format, &file, &bytes, 12),
        _ => Err(format!(
            "{file} is not a segment file (.log, .index or .timeindex)"
        )),
    }
}

fn dump_log(args: &DumpArgs, file: &str, bytes: &[u8]) -> Result<(), String> {
    let walked = walk(bytes);
    let mut batches = Vec::new();
    for (position, h, crc_valid) in &walked.batches {
        let mut batch = json!({
            "base_offset": h.base_offset.0, "last_offset": h.last_offset().0, "position": position,
            "size": h.size, "records": h.record_count, "crc_valid": crc_valid,
            "compression": compression_name(h), "base_timestamp": h.base_timestamp.0,
            "max_timestamp": h.max_timestamp.0, "producer_id": h.producer_id,
            "producer_epoch": h.producer_epoch, "base_sequence": h.base_sequence,
            "transactional": h.is_transactional(), "control": h.is_control(),
        });
        if args.records && *crc_valid {
            batch["records_detail"] =
                Value::from(records_of(&bytes[*position..position + h.size])?);
        }
        batches.push(batch);
    }
    match args.format {
        Format::Json => print_json(
            &json!({"file": file, "batches": batches, "padding_bytes": walked.padding,
                "stale_bytes": walked.stale, "error": walked.error}),
        ),
        Format::Text => {
            say(format!("dumping {file}"));
            for b in &batches {
                say(format!(
                    "baseOffset: {} lastOffset: {} count: {} position: {} size: {} crcValid: {} compression: {} baseTimestamp: {} maxTimestamp: {} producerId: {} producerEpoch: {} baseSequence: {} isTransactional: {} isControl: {}",
                    b["base_offset"], b["last_offset"], b["records"], b["position"], b["size"], b["crc_valid"],
                    b["compression"].as_str().unwrap_or_default(), b["base_timestamp"], b["max_timestamp"],
                    b["producer_id"], b["producer_epoch"], b["base_sequence"], b["transactional"], b["control"]
                ));
                for r in b["records_detail"].as_array().into_iter().flatten() {
                    say(format!(
                        "| offset: {} timestamp: {} key: {} value: {} headers: {}",
                        r["offset"], r["timestamp"], r["key"], r["value"], r["headers"]
                    ));
                }
            }
            if walked.padding > 0 {
                say(format!(
                    "{} bytes of zero padding after the last batch",
                    walked.padding
                ));
            }
            if walked.stale > 0 {
                say(format!(
                    "{} bytes after the last batch start with an older offset: old batches of a recycled segment file, not part of the log",
                    walked.stale
                ));
            }
        }
    }
    let bad_crc = walked.batches.iter().filter(|(_, _, ok)| !ok).count();
    match (walked.error, bad_crc) {
        (Some(e), _) => Err(format!("{file}: {e}")),
        (None, 0) => Ok(()),
        (None, n) => Err(format!("{file}: {n} batch(es) fail their CRC check")),
    }
}

fn dump_index(format: Format, file: &str, bytes: &[u8], entry: usize) -> Result<(), String> {
    if bytes.len() % entry != 0 {
        return Err(format!(
            "{file}: {} bytes is not a whole number of {entry}-byte entries",
            bytes.len()
        ));
    }
    let base: i64 = Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{file}: the name is not a base offset"))?;
    let entries: Vec<(i64, i64)> = bytes
        .chunks_exact(entry)
        .map(|e| {
            let (a, b) = e.split_at(entry - 4);
            let second = u32::from_be_bytes(b.try_into().expect("4 bytes"));
            if entry == 8 {
                let relative = u32::from_be_bytes(a.try_into().expect("4 bytes"));
                (base + i64::from(relative), i64::from(second))
            } else {
                (
                    i64::from_be_bytes(a.try_into().expect("8 bytes")),
                    base + i64::from(second),
                )
            }
        })
        .collect();
    let (first, second) = if entry == 8 {
        ("offset", "position")
    } else {
        ("timestamp", "offset")
    };
    match format {
        Format::Json => print_json(&json!({
            "file": file,
            "entries": entries.iter().map(|(a, b)| json!({first: a, second: b})).collect::<Vec<_>>(),
        })),
        Format::Text => print_table(
            &[&first.to_uppercase(), &second.to_uppercase()],
            &entries
                .iter()
                .map(|(a, b)| vec![a.to_string(), b.to_string()])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

/// The `.log` files under `dir`: of each partition directory, or of `dir` itself.
fn segments(dir: &Path) -> Result<Vec<Vec<PathBuf>>, String> {
    let list = |d: &Path| -> Result<Vec<PathBuf>, String> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("cannot list {}: {e}", d.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        Ok(logs)
    };
    let own = list(dir)?;
    if !own.is_empty() {
        return Ok(vec![own]);
    }
    let mut partitions: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    partitions.sort();
    partitions.iter().map(|p| list(p)).collect()
}

fn verify(args: &VerifyArgs) -> Result<(), String> {
    let mut problems = Vec::new();
    let (mut segment_count, mut batch_count) = (0, 0);
    for partition in segments(&args.dir)? {
        let mut next: Option<i64> = None;
        for (i, path) in partition.iter().enumerate() {
            segment_count += 1;
            let name = path.display().to_string();
            let bytes = read(path)?;
            let walked = walk(&bytes);
            let named: Option<i64> = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok());
            if let (Some(named), Some((_, first, _))) = (named, walked.batches.first()) {
                if first.base_offset.0 != named {
                    problems.push(format!(
                        "{name}: named for offset {named} but starts at {}",
                        first.base_offset.0
                    ));
                }
            }
            for (position, h, crc_valid) in &walked.batches {
                batch_count += 1;
                if !crc_valid {
                    problems.push(format!(
                        "{name}: batch at position {position} (offset {}) fails its CRC check",
                        h.base_offset.0
                    ));
                }
                if next.is_some_and(|n| h.base_offset.0 < n) {
                    problems.push(format!(
                        "{name}: batch at position {position} starts at offset {}, before {}",
                        h.base_offset.0,
                        next.unwrap_or_default()
                    ));
                }
                next = Some(h.last_offset().0 + 1);
            }
            if let Some(e) = walked.error {
                problems.push(format!("{name}: {e}"));
            }
            // Only the active (last) segment of a broker that stopped uncleanly may end in
            // a recycled file's old batches; a sealed segment is trimmed to its data.
            if walked.stale > 0 && i + 1 < partition.len() {
                problems.push(format!(
                    "{name}: {} bytes after the last batch start with an older offset",
                    walked.stale
                ));
            }
        }
    }
    match args.format {
        Format::Json => print_json(
            &json!({"segments": segment_count, "batches": batch_count, "problems": problems}),
        ),
        Format::Text => {
            for p in &problems {
                say(format!("problem: {p}"));
            }
            say(format!(
                "checked {segment_count} segment(s), {batch_count} batch(es): {} problem(s)",
                problems.len()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} is damaged: {} problem(s)",
            args.dir.display(),
            problems.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_engine::batch::{encode_test_batch, patch};
    use spate_engine::{LeaderEpoch, Offset};

    fn stored(base: i64, count: i32) -> Vec<u8> {
        let mut b = bytes::BytesMut::from(&encode_test_batch(count, 50, 0)[..]);
        patch(&mut b, Offset(base), LeaderEpoch(0));
        b.to_vec()
    }

    #[test]
    fn a_walk_stops_at_a_recycled_files_older_batches_and_counts_them_apart() {
        let mut file = [stored(100, 2), stored(102, 3)].concat();
        let old = [stored(40, 2), stored(42, 2)].concat();
        file.extend_from_slice(&old);
        let walked = walk(&file);
        assert_eq!(walked.batches.len(), 2);
        assert_eq!(walked.stale, old.len());
        assert_eq!((walked.padding, walked.error), (0, None));

        // Zero padding and damage are reported as before.
        let mut padded = stored(0, 1);
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(walk(&padded).padding, 100);
        let mut torn = stored(0, 1);
        torn.extend_from_slice(&stored(1, 1)[..30]);
        assert!(walk(&torn).error.is_some());
    }
}
