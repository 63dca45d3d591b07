//! The cleaner's throughput against the disk's in one run: a partition of keyed records
//! (1 KiB values, half random, 10,000 keys, batches of 64 records, 64 MiB segments;
//! `--mib` of records before compression) is written, then
//! one cleaning pass (`PartitionLog::compact`) runs over its sealed segments, for each
//! codec. Reported: MB/s of log cleaned (input bytes over the pass's time), and, over the
//! same segments before cleaning, MB/s of a plain sequential O_DIRECT read, the floor the
//! cleaner's two reads and one write stand on.
//!
//!     cargo bench -p spate-engine --bench compaction [-- --mib N] [-- --dir PATH]
//!
//! Not a criterion bench: one pass rewrites the log, so it cannot be repeated in place.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::BytesMut;
use spate_engine::batch::{BatchBuilder, Compression};
use spate_engine::{
    AckPolicy, CompactionSettings, LeaderEpoch, PartitionConfig, PartitionLog, ShardId,
    ShardResources, Timestamp, TopicPartition,
};

const KEYS: u64 = 10_000;
const RECORDS_PER_BATCH: u64 = 64;
const VALUE_BYTES: usize = 1024;
const SEGMENT_BYTES: u64 = 64 << 20;

fn args() -> (u64, PathBuf) {
    let mut mib = 512;
    let mut dir = std::env::temp_dir();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mib" => mib = it.next().and_then(|v| v.parse().ok()).expect("--mib N"),
            "--dir" => dir = it.next().map(PathBuf::from).expect("--dir PATH"),
            _ => {} // cargo bench passes --bench
        }
    }
    (mib, dir)
}

/// Writes about `mib` MiB of keyed records; returns the log.
async fn write(root: &Path, codec: Compression, mib: u64) -> PartitionLog {
    let mut config = PartitionConfig::default();
    config
        .set("segment.bytes", &SEGMENT_BYTES.to_string())
        .unwrap();
    config.set("cleanup.policy", "compact").unwrap();
    let tp = TopicPartition::new("compaction-bench", 0);
    let log = PartitionLog::create(root, tp, config, ShardResources::new(ShardId(0), None))
        .await
        .expect("create");
    // Half random, half repeated: values compress about 2:1, so every codec does work.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut value = vec![b'v'; VALUE_BYTES];
    let batches = (mib << 20) / (RECORDS_PER_BATCH * VALUE_BYTES as u64);
    let mut n = 0u64;
    for _ in 0..batches {
        let mut builder = BatchBuilder::new();
        for _ in 0..RECORDS_PER_BATCH {
            // Keys spread by a multiplicative hash, so each batch shadows older ones.
            let key = format!("key-{}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % KEYS);
            for byte in &mut value[..VALUE_BYTES / 2] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            builder.push(n as i64, Some(key.as_bytes()), Some(&value));
            n += 1;
        }
        let mut bytes = Vec::new();
        builder.finish(codec, None, &mut bytes).expect("a batch");
        log.append(
            BytesMut::from(&bytes[..]),
            LeaderEpoch(0),
            AckPolicy::Appended,
        )
        .await
        .expect("append");
    }
    // Durable, so every rolled segment is sealed and below the high watermark.
    let mut last = BatchBuilder::new();
    last.push(n as i64, Some(b"end"), Some(b"end"));
    let mut bytes = Vec::new();
    last.finish(codec, None, &mut bytes).unwrap();
    log.append(
        BytesMut::from(&bytes[..]),
        LeaderEpoch(0),
        AckPolicy::Durable,
    )
    .await
    .expect("append");
    log
}

/// Bytes of the sealed `.log` files (all but the newest), and the time to read them.
fn read_sealed(dir: &Path) -> (u64, f64) {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop();
    let start = Instant::now();
    let mut total = 0;
    let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).unwrap();
    // SAFETY: a 1 MiB, 4096-aligned allocation for O_DIRECT reads, freed below.
    let buffer = unsafe { std::slice::from_raw_parts_mut(std::alloc::alloc(layout), 1 << 20) };
    for path in &logs {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap();
        loop {
            let n = file.read(buffer).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buffer.as_mut_ptr(), layout) };
    (total, seconds)
}

fn main() {
    let (mib, dir) = args();
    println!("cleaner throughput: {mib} MiB of 1 KiB values over {KEYS} keys, segments of 64 MiB");
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let root = tempfile::tempdir_in(&dir).expect("a directory to write in");
        let path = root.path().to_path_buf();
        let (read, cleaned) = glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                let log = write(&path, codec, mib).await;
                let partition_dir = path.join(log.topic_partition().dir_name());
                let read = read_sealed(&partition_dir);
                let settings = CompactionSettings {
                    delete_retention_ms: i64::MAX,
                    min_compaction_lag_ms: 0,
                    key_map_bytes: spate_engine::limits::COMPACTION_KEY_MAP_BYTES,
                    io_bytes_per_sec: None,
                    stop_after: None,
                };
                let start = Instant::now();
                let outcome = log
                    .compact(&settings, Timestamp::now())
                    .await
                    .expect("a pass");
                let seconds = start.elapsed().as_secs_f64();
                log.close().await.expect("close");
                (read, (outcome, seconds))
            });
        let (outcome, seconds) = cleaned;
        let mb = |bytes: u64, s: f64| bytes as f64 / 1e6 / s;
        let cleaner = mb(outcome.bytes_in, seconds);
        let raw = mb(read.0, read.1);
        println!(
            "{codec:?}: cleaned {:.0} MB in {seconds:.2} s = {cleaner:.0} MB/s ({} records removed, {:.1} MB left); \
             O_DIRECT read of the same segments {raw:.0} MB/s; cleaner / read = {:.2}",
            outcome.bytes_in as f64 / 1e6,
            outcome.records_removed,
            outcome.bytes_out as f64 / 1e6,
            cleaner / raw
        );
    }
}
