//! `engine-append`: durable append throughput of the storage engine against the raw
//! O_DIRECT write bandwidth of the same disk, measured in the same run.
//!
//! The raw baseline writes `raw_block_bytes` blocks sequentially with O_DIRECT, one at a
//! time, then one `fdatasync` at the end: what `dd oflag=direct bs=1M` measures. The
//! engine runs on one shard (one core) with `partitions` partitions, each fed by
//! `inflight` concurrent appenders that each wait for durability (an fsync) before their
//! next append. Each appender copies its batch into a fresh buffer per append, standing
//! in for the copy a network receive makes.
//!
//! Each configuration runs in up to three modes (`Mode`): new logs, and the steady state
//! of a broker whose retention deletes a segment for each one it rolls, with and without
//! recycling the deleted files. Each engine run is compared with a raw run just before it,
//! because this disk's bandwidth swings by a factor of two within seconds.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use spate_engine::{
    AckPolicy, LeaderEpoch, LogStats, PartitionConfig, PartitionLog, ShardId, ShardResources,
    TopicPartition,
};

/// Microsecond latencies from 1 µs to an hour, 3 significant digits. Explicit bounds:
/// `Histogram::new` starts tiny and `saturating_record` would clamp instead of growing.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub name: String,
    pub bytes: u64,
    pub seconds: f64,
    pub appends: u64,
    pub fsyncs: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Measurement {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// Creates (or empties) a file for a raw baseline, opened for O_DIRECT writes.
pub(crate) async fn create_raw(path: &Path) -> glommio::io::DmaFile {
    glommio::io::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .expect("create raw file")
}

/// Sequential O_DIRECT writes of `block` bytes for `duration`, then one fdatasync.
pub async fn raw_direct(dir: &Path, block: usize, duration: Duration) -> Measurement {
    let path = dir.join(format!("raw-{block}.bin"));
    let file = create_raw(&path).await;
    let start = Instant::now();
    let mut position = 0u64;
    let mut latency = latency_histogram();
    while start.elapsed() < duration {
        let mut buffer = file.alloc_dma_buffer(block);
        buffer.as_bytes_mut().fill(0x5A);
        let t = Instant::now();
        let written = file.write_at(buffer, position).await.expect("raw write");
        latency.saturating_record(t.elapsed().as_micros() as u64);
        position += written as u64;
    }
    file.fdatasync().await.expect("raw fdatasync");
    let seconds = start.elapsed().as_secs_f64();
    file.close().await.expect("close");
    let _ = std::fs::remove_file(&path);
    Measurement {
        name: format!("raw O_DIRECT, {} KiB blocks", block / 1024),
        bytes: position,
        seconds,
        appends: position / block as u64,
        fsyncs: 1,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
    }
}

/// The engine's I/O pattern without the engine: `files` files, each written by its own
/// task in cycles of `cycle_bytes` (1 MiB O_DIRECT writes issued together, into space
/// preallocated in the engine's steps), each cycle ending in `fdatasync`. The ratio of
/// the engine to this is the engine's own overhead; the ratio of this to `raw_direct` is
/// what the filesystem charges for durability and for many files.
pub async fn raw_like_engine(
    dir: &Path,
    files: usize,
    cycle_bytes: usize,
    duration: Duration,
) -> Measurement {
    let step = spate_engine::limits::SEGMENT_PREALLOCATION_BYTES;
    let block = 1usize << 20;
    let per_cycle = (cycle_bytes / block).max(1) as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..files {
        let path = dir.join(format!("raw-like-{i}.bin"));
        let file = Rc::new(create_raw(&path).await);
        tasks.push(glommio::spawn_local(async move {
            let (mut position, mut allocated, mut cycles) = (0u64, 0u64, 0u64);
            while start.elapsed() < duration {
                let end = position + per_cycle * block as u64;
                if end > allocated {
                    allocated = end.div_ceil(step) * step;
                    file.pre_allocate(allocated, false)
                        .await
                        .expect("fallocate");
                }
                let writes = (0..per_cycle).map(|i| {
                    let mut buffer = file.alloc_dma_buffer(block);
                    buffer.as_bytes_mut().fill(0x5A);
                    file.write_at(buffer, position + i * block as u64)
                });
                for written in futures::future::join_all(writes).await {
                    written.expect("raw write");
                }
                file.fdatasync().await.expect("raw fdatasync");
                position = end;
                cycles += 1;
            }
            let _ = std::fs::remove_file(&path);
            (position, cycles)
        }));
    }
    let (mut bytes, mut fsyncs) = (0, 0);
    for task in tasks {
        let (b, c) = task.await;
        bytes += b;
        fsyncs += c;
    }
    Measurement {
        name: format!(
            "raw like the engine: {files} file(s), fsync per {} MiB",
            cycle_bytes >> 20
        ),
        bytes,
        seconds: start.elapsed().as_secs_f64(),
        appends: bytes / block as u64,
        fsyncs,
        p50_us: 0,
        p99_us: 0,
    }
}

/// How the partitions' logs start out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// New, empty logs with the default config (1 GiB segments, no size retention): every
    /// byte goes to freshly allocated space.
    Fresh,
    /// Logs in the steady state of a full broker: `steady_segment_bytes` segments and
    /// `retention.bytes` of two segments, first written four segments' worth, so
    /// retention deletes a segment for each one rolled. With `recycle`, new segments are written over the
    /// deleted ones' files (the engine's default); without, each is a new file.
    Steady { recycle: bool },
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s {
            "fresh" => Ok(Mode::Fresh),
            "steady" => Ok(Mode::Steady { recycle: true }),
            "steady-unrecycled" => Ok(Mode::Steady { recycle: false }),
            _ => Err(format!(
                "unknown mode {s:?}: expected fresh, steady or steady-unrecycled"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Fresh => "fresh",
            Mode::Steady { recycle: true } => "steady",
            Mode::Steady { recycle: false } => "steady-unrecycled",
        })
    }
}

/// Bytes the shard's partitions together fill one segment each with, in the steady-state
/// modes: 1 GiB, the default `segment.bytes`, split among the partitions, so the shard
/// rolls about as often as with the default config and one partition, while the warm-up
/// (four segments per partition) stays at 4 GiB whatever the partition count.
const STEADY_SHARD_SEGMENT_BYTES: u64 = 1 << 30;

/// `segment.bytes` of each of `partitions` partitions in the steady-state modes.
fn steady_segment_bytes(partitions: usize) -> u64 {
    (STEADY_SHARD_SEGMENT_BYTES / partitions.max(1) as u64).max(64 << 20)
}

/// Runs `inflight` appenders per log, each appending `template` durably until `until`
/// says stop (given the bytes its partition has had and the time since `start`); returns
/// the bytes appended.
async fn drive(
    logs: &[PartitionLog],
    template: &Rc<Vec<u8>>,
    inflight: usize,
    queue: Option<glommio::TaskQueueHandle>,
    latency: Option<Rc<std::cell::RefCell<Histogram<u64>>>>,
    until: Rc<dyn Fn(u64) -> bool>,
) -> u64 {
    let mut tasks = Vec::new();
    for log in logs {
        let written = Rc::new(std::cell::Cell::new(0u64));
        for _ in 0..inflight {
            let (log, template, latency) = (log.clone(), template.clone(), latency.clone());
            let (written, until) = (written.clone(), until.clone());
            let task = async move {
                let mut bytes = 0u64;
                while !until(written.get()) {
                    let batch = BytesMut::from(&template[..]);
                    let t = Instant::now();
                    log.append(batch, LeaderEpoch(0), AckPolicy::Durable)
                        .await
                        .expect("append");
                    if let Some(latency) = &latency {
                        latency
                            .borrow_mut()
                            .saturating_record(t.elapsed().as_micros() as u64);
                    }
                    bytes += template.len() as u64;
                    written.set(written.get() + template.len() as u64);
                }
                bytes
            };
            tasks.push(match queue {
                Some(q) => glommio::spawn_local_into(task, q).expect("queue exists"),
                None => glommio::spawn_local(task),
            });
        }
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await;
    }
    bytes
}

/// Durable appends of `batch_bytes` batches to `partitions` partitions for `duration`.
pub async fn engine_append(
    dir: &Path,
    batch_bytes: usize,
    partitions: usize,
    inflight: usize,
    duration: Duration,
    mode: Mode,
) -> Measurement {
    let root = dir.join(format!("engine-{batch_bytes}-{partitions}"));
    std::fs::create_dir_all(&root).expect("bench dir");
    let (queue, config, shard) = match mode {
        Mode::Fresh => (
            None,
            PartitionConfig::default(),
            ShardResources::new(ShardId(0), None),
        ),
        Mode::Steady { recycle } => {
            let (latency, background) = spate_engine::shard::task_queues();
            let mut config = PartitionConfig::default();
            let segment = steady_segment_bytes(partitions);
            config
                .set("segment.bytes", &segment.to_string())
                .expect("valid segment.bytes");
            config
                .set("retention.bytes", &(2 * segment).to_string())
                .expect("valid retention.bytes");
            let shard = ShardResources::new(ShardId(0), Some(background));
            shard.recycle_segments.set(recycle);
            (Some(latency), config, shard)
        }
    };
    let mut logs = Vec::new();
    for p in 0..partitions {
        let tp = TopicPartition::new("bench", p as i32);
        logs.push(
            PartitionLog::create(&root, tp, config.clone(), shard.clone())
                .await
                .expect("create"),
        );
    }
    // One record whose value fills the batch; the encoder's overhead is under 100 bytes.
    let template = spate_engine::batch::encode_test_batch(1, batch_bytes - 80, 0);
    let template: Rc<Vec<u8>> = Rc::new(template);
    if mode != Mode::Fresh {
        drive(
            &logs,
            &template,
            inflight,
            queue,
            None,
            Rc::new(move |written| written >= 4 * steady_segment_bytes(partitions)),
        )
        .await;
    }
    let before: Vec<LogStats> = logs.iter().map(PartitionLog::stats).collect();
    let latency = Rc::new(std::cell::RefCell::new(latency_histogram()));
    let start = Instant::now();
    let until = Rc::new(move |_| start.elapsed() >= duration);
    let bytes = drive(
        &logs,
        &template,
        inflight,
        queue,
        Some(latency.clone()),
        until,
    )
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let (mut appends, mut fsyncs, mut rolled, mut recycled) = (0, 0, 0, 0);
    for (log, before) in logs.iter().zip(&before) {
        let stats = log.stats();
        appends += stats.appends - before.appends;
        fsyncs += stats.flush_cycles - before.flush_cycles;
        rolled += stats.segments_rolled - before.segments_rolled;
        recycled += stats.segments_recycled - before.segments_recycled;
        log.close().await.expect("close");
    }
    let _ = std::fs::remove_dir_all(&root);
    let latency = latency.borrow();
    let state = match mode {
        Mode::Fresh => String::new(),
        Mode::Steady { .. } => {
            format!(", {mode} ({recycled} of {rolled} rolled segments recycled)")
        }
    };
    Measurement {
        name: format!(
            "engine, {} KiB batches, {partitions} partition(s), {inflight} in flight each{state}",
            batch_bytes / 1024
        ),
        bytes,
        seconds,
        appends,
        fsyncs,
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
    }
}

/// What `engine-append` measures.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: std::path::PathBuf,
    pub duration: Duration,
    pub batch_bytes: Vec<usize>,
    pub partitions: Vec<usize>,
    pub inflight_bytes: usize,
    pub raw_block_bytes: usize,
    pub rounds: usize,
    pub modes: Vec<Mode>,
}

/// One configuration's results over the rounds.
#[derive(Debug, Default)]
struct Series {
    name: String,
    mb_per_s: Vec<f64>,
    versus_raw: Vec<f64>,
    versus_like: Vec<f64>,
    last: Option<Measurement>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Runs every round and renders a Markdown report.
pub async fn run(plan: Plan) -> String {
    let mut raw = Series::default();
    let mut likes: Vec<Series> = plan.partitions.iter().map(|_| Series::default()).collect();
    let mut engines: Vec<Series> = Vec::new();
    // Raw runs just before each engine configuration, the references of its "% of raw".
    let mut adjacent = Vec::new();
    for round in 0..plan.rounds.max(1) {
        let base = raw_direct(&plan.dir, plan.raw_block_bytes, plan.duration).await;
        raw.mb_per_s.push(base.mb_per_s());
        raw.name.clone_from(&base.name);
        let mut like_now = Vec::new();
        for (series, &parts) in likes.iter_mut().zip(&plan.partitions) {
            let m = raw_like_engine(&plan.dir, parts, plan.inflight_bytes, plan.duration).await;
            series.mb_per_s.push(m.mb_per_s());
            series.versus_raw.push(m.mb_per_s() / base.mb_per_s());
            series.name.clone_from(&m.name);
            like_now.push(m.mb_per_s());
            series.last = Some(m);
        }
        let mut i = 0;
        let mut configurations = Vec::new();
        for &batch in &plan.batch_bytes {
            for (p, &parts) in plan.partitions.iter().enumerate() {
                for &mode in &plan.modes {
                    configurations.push((batch, p, parts, mode));
                }
            }
        }
        for (batch, p, parts, mode) in configurations {
            // The disk's bandwidth swings by a factor of two within seconds here, so each
            // configuration is compared with a raw run just before it.
            let base = raw_direct(&plan.dir, plan.raw_block_bytes, plan.duration).await;
            adjacent.push(base.mb_per_s());
            let inflight = (plan.inflight_bytes / batch).clamp(1, 512);
            let m = engine_append(&plan.dir, batch, parts, inflight, plan.duration, mode).await;
            if round == 0 {
                engines.push(Series {
                    name: m.name.clone(),
                    ..Default::default()
                });
            }
            let series = &mut engines[i];
            series.mb_per_s.push(m.mb_per_s());
            series.versus_raw.push(m.mb_per_s() / base.mb_per_s());
            series.versus_like.push(m.mb_per_s() / like_now[p]);
            series.last = Some(m);
            i += 1;
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "{} round(s) of {} s per configuration; medians of per-round values. Each engine \
         row's % of raw is against a raw run just before it ({} such runs: {:.0} to {:.0} \
         MB/s, median {:.0}); the raw row is the run at the start of each round.\n\n",
        plan.rounds.max(1),
        plan.duration.as_secs(),
        adjacent.len(),
        adjacent.iter().copied().fold(f64::INFINITY, f64::min),
        adjacent.iter().copied().fold(0.0, f64::max),
        median(&adjacent),
    ));
    out.push_str("| configuration | MB/s (median) | MB/s per round | % of raw | % of raw like the engine | appends/fsync | p50 µs | p99 µs |\n");
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let percent = |v: &[f64]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("{:.0}%", 100.0 * median(v))
        }
    };
    for series in std::iter::once(&raw).chain(&likes).chain(&engines) {
        let (per_fsync, p50, p99) =
            series
                .last
                .as_ref()
                .map_or((String::new(), String::new(), String::new()), |m| {
                    let per_fsync = format!("{:.1}", m.appends as f64 / m.fsyncs.max(1) as f64);
                    if m.p99_us == 0 {
                        (per_fsync, String::new(), String::new())
                    } else {
                        (per_fsync, m.p50_us.to_string(), m.p99_us.to_string())
                    }
                });
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} |\n",
            series.name,
            median(&series.mb_per_s),
            rounds(&series.mb_per_s),
            percent(&series.versus_raw),
            percent(&series.versus_like),
            per_fsync,
            p50,
            p99
        ));
    }
    out
}
