//! What a run leaves behind: a summary table on stdout, and in the output directory the
//! JSON results, the HdrHistogram interval logs (one histogram per second, readable by
//! HdrHistogram's own log tools; values in microseconds) and the SVG charts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::error::{BenchError, Result};
use crate::latency::{Percentiles, Recorder};
use crate::results::RunResult;
use crate::run::Finished;

/// Writes `results.json`, the interval logs and the charts of `finished` into `dir`.
pub fn write_outputs(finished: &Finished, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(BenchError::io(format!("cannot create {}", dir.display())))?;
    let json = serde_json::to_string_pretty(&finished.result).expect("results serialise");
    let path = dir.join("results.json");
    std::fs::write(&path, json + "\n")
        .map_err(BenchError::io(format!("cannot write {}", path.display())))?;
    let started = UNIX_EPOCH + Duration::from_millis(finished.result.started_at_unix_ms);
    for (name, recorder) in [("ack", &finished.ack), ("e2e", &finished.e2e)] {
        if let Some(recorder) = recorder.as_ref().filter(|r| r.count() > 0) {
            let path = dir.join(format!("{name}.hlog"));
            write_interval_log(recorder, name, started, &path)?;
        }
    }
    crate::plot::charts(std::slice::from_ref(&finished.result), dir)
}

fn write_interval_log(
    recorder: &Recorder,
    tag: &str,
    started: std::time::SystemTime,
    path: &Path,
) -> Result<()> {
    let io = |e: std::io::Error| BenchError::Io {
        what: format!("cannot write {}", path.display()),
        source: e,
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment(&format!(
            "spate bench {tag} latency, microseconds, one histogram per second after the warm-up"
        ))
        .with_start_time(started)
        .with_base_time(started)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut file, &mut serializer)
        .map_err(io)?;
    let tag = Tag::new(tag);
    for (second, histogram) in recorder.seconds().iter().enumerate() {
        log.write_histogram(
            histogram,
            Duration::from_secs(second as u64),
            Duration::from_secs(1),
            tag,
        )
        .map_err(|e| BenchError::Io {
            what: format!("cannot write {}", path.display()),
            source: std::io::Error::other(format!("{e:?}")),
        })?;
    }
    drop(log);
    std::io::Write::flush(&mut file).map_err(io)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn latency_row(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<26} p50 {:>8}  p90 {:>8}  p99 {:>8}  p99.9 {:>8}  p99.99 {:>8}  max {:>8}  ms  ({} records)",
        ms(p.p50_us),
        ms(p.p90_us),
        ms(p.p99_us),
        ms(p.p999_us),
        ms(p.p9999_us),
        ms(p.max_us),
        p.count
    );
}

/// The human summary of one run.
pub fn summary(r: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {:?} against {} — {}{}",
        r.label,
        r.mode,
        r.broker.bootstrap,
        r.workload.describe(),
        if r.interrupted {
            " — INTERRUPTED, partial results"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "  measured {:.1} s after {} s of warm-up",
        r.measured_seconds, r.warmup_seconds
    );
    if let Some(p) = &r.produce {
        let _ = writeln!(
            out,
            "  produce: {:.0} records/s, {:.1} MB/s of batches; due {} sent {} acknowledged {} failed {}",
            p.records_per_s, p.mb_per_s, p.due, p.sent, p.acknowledged, p.failed
        );
        for (why, n) in &p.errors {
            let _ = writeln!(out, "    failed: {n} × {why}");
        }
        for why in &p.fatal {
            let _ = writeln!(out, "    producer stopped: {why}");
        }
        if p.ack_latency.count > 0 {
            let from_due = if p.open_loop {
                "ack latency (from due)"
            } else {
                "ack latency"
            };
            latency_row(&mut out, from_due, &p.ack_latency);
            if p.open_loop {
                latency_row(
                    &mut out,
                    "ack latency (from send)",
                    &p.ack_latency_from_send,
                );
            }
        }
    }
    if let Some(c) = &r.consume {
        let _ = writeln!(
            out,
            "  consume: {:.0} records/s, {:.1} MB/s of batches; consumed {}",
            c.records_per_s, c.mb_per_s, c.consumed
        );
        for (why, n) in &c.errors {
            let _ = writeln!(out, "    fetch error: {n} × {why}");
        }
        if c.unstamped > 0 {
            let _ = writeln!(
                out,
                "    {} records carried no send time (not written by this run)",
                c.unstamped
            );
        }
        if let Some(e2e) = &c.e2e_latency {
            latency_row(&mut out, "end-to-end latency", e2e);
        }
    }
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            out,
            "  ceilings: disk write {:.0} MB/s, read {:.0} MB/s, 4 KiB fdatasync p50 {} p99 {} ms, loopback {:.0} MB/s",
            b.disk_write_mb_per_s,
            b.disk_read_mb_per_s,
            ms(b.fsync.p50_us),
            ms(b.fsync.p99_us),
            b.loopback_mb_per_s
        );
        if let Some(p) = &r.produce {
            let _ = writeln!(
                out,
                "  produce = {:.0}% of the disk's write bandwidth",
                100.0 * p.mb_per_s / b.disk_write_mb_per_s
            );
        }
        if let Some(c) = &r.consume {
            let _ = writeln!(
                out,
                "  consume = {:.0}% of loopback TCP bandwidth",
                100.0 * c.mb_per_s / b.loopback_mb_per_s
            );
        }
    }
    out
}
