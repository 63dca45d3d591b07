//! `engine-latency`: how long a durable append takes at a moderate, fixed rate, for the
//! storage engine alone and for the same disk written directly, in the same run.
//!
//! Both sides follow one open-loop schedule: a batch of `batch_bytes` falls due every
//! `batch_bytes / rate` seconds, and its latency runs from when it was due (not from when
//! it was issued) to when it is durable, so a stall delays every batch behind it and
//! counts for each of them.
//!
//! - **raw**: one task writes every batch that is due in one O_DIRECT write, at the file's
//!   end, padded to the page, then `fdatasync`: the ideal group commit on this disk.
//! - **engine**: one partition on a shard laid out like the broker's (a latency-sensitive
//!   task queue for the appends, the background queue for the flusher); each due batch is
//!   appended by its own task with `AckPolicy::Durable`.
//!
//! Networking and clients are left out on purpose: this isolates what the engine adds to
//! the disk's own durable-write latency.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use spate_engine::{
    AckPolicy, LeaderEpoch, PartitionConfig, PartitionLog, ShardId, ShardResources, TopicPartition,
};

use crate::engine_append::{create_raw, latency_histogram};
use crate::limits::{ENGINE_LATENCY_APPENDS_INFLIGHT_MAX, ENGINE_LATENCY_RAW_WRITE_BYTES_MAX};

/// What `engine-latency` measures.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: std::path::PathBuf,
    pub duration: Duration,
    pub batch_bytes: usize,
    pub bytes_per_second: u64,
    pub rounds: usize,
}

/// The latencies of one side of one round, in microseconds from the due time.
struct Side {
    latency: Histogram<u64>,
    batches: u64,
    /// Batches not issued because `ENGINE_LATENCY_APPENDS_INFLIGHT_MAX` were waiting.
    dropped: u64,
}

/// When batch `n` falls due.
fn due(start: Instant, interval: Duration, n: u64) -> Instant {
    start + interval.mul_f64(n as f64)
}

/// Sleeps until `at` (returns at once if it has passed).
async fn sleep_until(at: Instant) {
    if let Some(wait) = at.checked_duration_since(Instant::now()) {
        glommio::timer::sleep(wait).await;
    }
}

/// The disk alone: group commit of everything due, one write and one fdatasync a round.
async fn raw(dir: &Path, plan: &Plan, interval: Duration) -> Side {
    let path = dir.join("raw-latency.bin");
    let file = create_raw(&path).await;
    file.pre_allocate(spate_engine::limits::SEGMENT_PREALLOCATION_BYTES, false)
        .await
        .expect("fallocate");
    let (mut allocated, mut position) = (spate_engine::limits::SEGMENT_PREALLOCATION_BYTES, 0);
    let mut side = Side {
        latency: latency_histogram(),
        batches: 0,
        dropped: 0,
    };
    let start = Instant::now();
    while start.elapsed() < plan.duration {
        sleep_until(due(start, interval, side.batches)).await;
        let now = Instant::now();
        // Everything due, up to one bounded write; the rest goes in the next round, its
        // latency still counted from when it was due.
        let most = (ENGINE_LATENCY_RAW_WRITE_BYTES_MAX / plan.batch_bytes).max(1) as u64;
        let mut taken = side.batches;
        while taken - side.batches < most && due(start, interval, taken) <= now {
            taken += 1;
        }
        let bytes = spate_engine::file::align_up((taken - side.batches) * plan.batch_bytes as u64);
        if position + bytes > allocated {
            allocated += spate_engine::limits::SEGMENT_PREALLOCATION_BYTES.max(bytes);
            file.pre_allocate(allocated, false)
                .await
                .expect("fallocate");
        }
        let mut buffer = file.alloc_dma_buffer(bytes as usize);
        buffer.as_bytes_mut().fill(0x5A);
        file.write_at(buffer, position).await.expect("raw write");
        file.fdatasync().await.expect("raw fdatasync");
        position += bytes;
        let done = Instant::now();
        for n in side.batches..taken {
            let waited = done.saturating_duration_since(due(start, interval, n));
            side.latency.saturating_record(waited.as_micros() as u64);
        }
        side.batches = taken;
    }
    file.close().await.expect("close");
    let _ = std::fs::remove_file(&path);
    side
}

/// The engine: one partition, one append task per due batch.
async fn engine(dir: &Path, plan: &Plan, interval: Duration) -> Side {
    let (appends, background) = spate_engine::shard::task_queues();
    let root = dir.join("engine-latency");
    std::fs::create_dir_all(&root).expect("bench dir");
    let shard = ShardResources::new(ShardId(0), Some(background));
    let tp = TopicPartition::new("latency", 0);
    let log = PartitionLog::create(&root, tp, PartitionConfig::default(), shard)
        .await
        .expect("create");
    // One record whose value fills the batch; the encoder's overhead is under 100 bytes.
    let template = Rc::new(spate_engine::batch::encode_test_batch(
        1,
        plan.batch_bytes.saturating_sub(80).max(8),
        0,
    ));
    let latency = Rc::new(RefCell::new(latency_histogram()));
    let waiting = Rc::new(std::cell::Cell::new(0usize));
    let (mut batches, mut dropped) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < plan.duration {
        let at = due(start, interval, batches);
        sleep_until(at).await;
        batches += 1;
        if waiting.get() >= ENGINE_LATENCY_APPENDS_INFLIGHT_MAX {
            dropped += 1;
            continue;
        }
        waiting.set(waiting.get() + 1);
        let (log, template) = (log.clone(), template.clone());
        let (latency, waiting) = (latency.clone(), waiting.clone());
        glommio::spawn_local_into(
            async move {
                let batch = BytesMut::from(&template[..]);
                log.append(batch, LeaderEpoch(0), AckPolicy::Durable)
                    .await
                    .expect("append");
                let waited = Instant::now().saturating_duration_since(at);
                latency
                    .borrow_mut()
                    .saturating_record(waited.as_micros() as u64);
                waiting.set(waiting.get() - 1);
            },
            appends,
        )
        .expect("task queue exists")
        .detach();
    }
    while waiting.get() > 0 {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    log.close().await.expect("close");
    let _ = std::fs::remove_dir_all(&root);
    let latency = latency.borrow().clone();
    Side {
        latency,
        batches,
        dropped,
    }
}

fn row(name: &str, side: &Side) -> String {
    let ms = |q: f64| side.latency.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
        side.batches,
        side.dropped,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        side.latency.max() as f64 / 1000.0
    )
}

/// Runs every round, raw then engine, and renders a Markdown report.
pub async fn run(plan: Plan) -> String {
    let interval = Duration::from_secs_f64(plan.batch_bytes as f64 / plan.bytes_per_second as f64);
    let mut out = format!(
        "{} KiB batches at {:.1} MB/s ({:.0} batches/s), {} s a side; latency from due, ms\n\n",
        plan.batch_bytes / 1024,
        plan.bytes_per_second as f64 / 1e6,
        1.0 / interval.as_secs_f64(),
        plan.duration.as_secs()
    );
    out.push_str("| round: side | batches | dropped | p50 | p90 | p99 | p99.9 | max |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for round in 1..=plan.rounds.max(1) {
        let side = raw(&plan.dir, &plan, interval).await;
        out.push_str(&row(&format!("{round}: raw write + fdatasync"), &side));
        let side = engine(&plan.dir, &plan, interval).await;
        out.push_str(&row(&format!("{round}: engine"), &side));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short round at a low rate: both sides write every due batch and report it.
    #[test]
    fn both_sides_make_every_due_batch_durable() {
        let dir = std::env::temp_dir().join(format!("spate-engine-latency-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plan = Plan {
            dir: dir.clone(),
            duration: Duration::from_millis(500),
            batch_bytes: 4096,
            bytes_per_second: 400_000,
            rounds: 1,
        };
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .unwrap();
        let report = executor.run(async move { run(plan).await });
        std::fs::remove_dir_all(&dir).unwrap();
        let rows: Vec<Vec<&str>> = report
            .lines()
            .filter(|l| l.starts_with("| 1:"))
            .map(|l| l.split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows.len(), 2, "{report}");
        for row in rows {
            let batches: u64 = row[2].parse().unwrap();
            assert!((45..=55).contains(&batches), "{report}");
            assert_eq!(row[3], "0", "nothing dropped: {report}");
            assert!(row[6].parse::<f64>().unwrap() > 0.0, "{report}");
        }
    }
}
