//! Cleaning passes on a real partition log (`PartitionLog::compact`): a keyed workload
//! with tombstones, in batches of every codec, over several sealed segments. After a
//! pass each key's latest record is at its original offset, the records removed are
//! shadowed ones, the log is smaller, a reader from the beginning ends with the same
//! table, and all of it holds after a clean reopen and after a crash. A crash at each
//! step of the swap leaves the old segments (before the commit point) or the new one
//! (after it), never a mix.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::BytesMut;
use common::{
    create, read_all, records_of as records, reopen, run, small_segments, table, Records, CODECS,
};
use spate_engine::batch::{BatchBuilder, Compression};
use spate_engine::compact;
use spate_engine::{
    AckPolicy, CompactionOutcome, CompactionSettings, LeaderEpoch, Offset, PartitionLog, SwapStep,
    Timestamp,
};

/// 60 batches of 20 records over 12 keys, every 7th record a tombstone, codecs in turn,
/// in segments of 8 KiB.
async fn write_workload(root: &Path) -> PartitionLog {
    let log = create(root, small_segments(8 * 1024)).await;
    fill(&log, "key", 60).await;
    log
}

/// Appends `batches` batches of 20 records over 12 keys named `<prefix>-<i>`.
async fn fill(log: &PartitionLog, prefix: &str, batches: usize) {
    let mut n = 0u32;
    for b in 0..batches {
        let mut builder = BatchBuilder::new();
        for _ in 0..20 {
            let key = format!("{prefix}-{}", n % 12);
            let value = format!("value-{n:05}-{}", "x".repeat(40));
            let value = (n % 7 != 3).then_some(value.as_bytes());
            builder.push(1_000 + i64::from(n), Some(key.as_bytes()), value);
            n += 1;
        }
        append_batch(log, builder, CODECS[b % CODECS.len()]).await;
    }
}

/// Seals `builder`'s records with `codec` and appends them durably.
async fn append_batch(log: &PartitionLog, mut builder: BatchBuilder, codec: Compression) {
    let mut bytes = Vec::new();
    builder.finish(codec, None, &mut bytes).unwrap();
    log.append(
        BytesMut::from(&bytes[..]),
        LeaderEpoch(1),
        AckPolicy::Durable,
    )
    .await
    .unwrap();
}

fn settings(delete_retention_ms: i64, stop_after: Option<SwapStep>) -> CompactionSettings {
    CompactionSettings {
        delete_retention_ms,
        min_compaction_lag_ms: 0,
        key_map_bytes: 1 << 20,
        io_bytes_per_sec: None,
        stop_after,
    }
}

fn log_bytes(root: &Path) -> u64 {
    let dir = root.join(common::tp().dir_name());
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Checks one cleaned read against the original: same table, every survivor where it
/// was, every key's latest record kept, and within the cleaned offsets (below
/// `cleaned_end`) one record per key.
fn check_cleaned(before: &Records, after: &Records, cleaned_end: i64) {
    assert_eq!(
        table(after),
        table(before),
        "a reader ends with the same table"
    );
    let originals: BTreeMap<i64, _> = before.iter().map(|r| (r.0, r)).collect();
    for record in after {
        assert_eq!(
            originals.get(&record.0),
            Some(&record),
            "a survivor is unchanged"
        );
    }
    let mut latest = BTreeMap::new();
    for (offset, key, _) in before {
        latest.insert(key.clone(), *offset);
    }
    let kept: std::collections::BTreeSet<i64> = after.iter().map(|r| r.0).collect();
    for offset in latest.values() {
        assert!(
            kept.contains(offset),
            "the latest record of a key at {offset} is kept"
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (offset, key, _) in after.iter().filter(|r| r.0 < cleaned_end) {
        assert!(
            seen.insert(key.clone()),
            "one record per key in the cleaned part, not at {offset}"
        );
    }
}

/// The offset where the active (last) segment starts: a pass cleans below it.
fn active_base(root: &Path) -> i64 {
    let dir = root.join(common::tp().dir_name());
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse::<i64>().ok()
        })
        .max()
        .unwrap()
}

#[test]
fn a_pass_keeps_each_keys_latest_record_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (before, after, outcome) = run(async move {
        let log = write_workload(&root).await;
        let before = records(&read_all(&log, Offset(0)).await);
        let size_before = log_bytes(&root);
        let outcome = log
            .compact(&settings(i64::MAX, None), Timestamp::now())
            .await
            .unwrap();
        let after = records(&read_all(&log, Offset(0)).await);
        check_cleaned(&before, &after, active_base(&root));
        // A read at any offset, removed or not, starts with the batch holding it, so a
        // reader goes on at the next record that survives.
        let end = log.offsets().high_watermark.0;
        for offset in (0..end).step_by(7) {
            let read = log.read(Offset(offset), 1 << 20).await.unwrap();
            let mut bytes = Vec::new();
            for chunk in read.chunks {
                chunk.copy_to(&mut bytes).unwrap();
            }
            let first = spate_engine::batch::BatchHeader::parse(&bytes).unwrap();
            assert!(
                first.base_offset.0 <= offset && offset <= first.last_offset().0,
                "a read at {offset} starts with {}..={}",
                first.base_offset.0,
                first.last_offset().0
            );
        }
        assert!(log_bytes(&root) < size_before, "the log shrank");
        // With nothing written since, there is nothing to clean.
        let again = log
            .compact(&settings(i64::MAX, None), Timestamp::now())
            .await
            .unwrap();
        assert_eq!(again, CompactionOutcome::default());
        log.close().await.unwrap();
        (before, after, outcome)
    });
    assert!(
        outcome.segments_in > 1 && outcome.segments_out >= 1,
        "{outcome:?}"
    );
    assert_eq!(outcome.records_removed as usize, before.len() - after.len());
    // Reopened cleanly, and then after a crash: the same records.
    let root = dir.path().to_path_buf();
    let expected = after.clone();
    run(async move {
        let log = reopen(&root).await.unwrap();
        assert_eq!(records(&read_all(&log, Offset(0)).await), expected);
        // Dropped without closing: a crash.
    });
    let root = dir.path().to_path_buf();
    run(async move {
        let log = reopen(&root).await.unwrap();
        assert_eq!(records(&read_all(&log, Offset(0)).await), after);
        log.close().await.unwrap();
    });
}

#[test]
fn a_later_pass_merges_cleaned_segments_and_joins_their_fillers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = write_workload(&root).await;
        log.compact(&settings(i64::MAX, None), Timestamp::now())
            .await
            .unwrap();
        // More of the same keys: the next pass shadows records in the clean part too.
        fill(&log, "key", 30).await;
        let before = records(&read_all(&log, Offset(0)).await);
        let again = log
            .compact(&settings(i64::MAX, None), Timestamp::now())
            .await
            .unwrap();
        assert!(again.records_removed > 0, "{again:?}");
        assert!(
            again.segments_out < again.segments_in,
            "neighbours merged: {again:?}"
        );
        let stored = read_all(&log, Offset(0)).await;
        let fillers: Vec<bool> = stored
            .iter()
            .map(|b| compact::is_filler(&spate_engine::batch::BatchHeader::parse(b).unwrap()))
            .collect();
        // Joined into runs: at most one filler per segment.
        let fillers = fillers.iter().filter(|f| **f).count();
        let segments = std::fs::read_dir(root.join(common::tp().dir_name()))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert!(
            fillers <= segments,
            "{fillers} fillers in {segments} segments"
        );
        let after = records(&stored);
        check_cleaned(&before, &after, active_base(&root));
        log.close().await.unwrap();
    });
}

#[test]
fn tombstones_go_once_their_retention_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, small_segments(8 * 1024)).await;
        // Ten keys written, then deleted: each key's latest record is its tombstone.
        for value in [Some(&b"value"[..]), None] {
            let mut builder = BatchBuilder::new();
            for k in 0..10 {
                builder.push(1_000, Some(format!("gone-{k}").as_bytes()), value);
            }
            append_batch(&log, builder, Compression::Gzip).await;
        }
        fill(&log, "other", 30).await;
        let tombstones = |records: &Records| {
            records
                .iter()
                .filter(|r| {
                    r.2.is_none() && r.1.as_deref().is_some_and(|k| k.starts_with(b"gone-"))
                })
                .count()
        };
        // First cleaning: the tombstones stay, whatever their age.
        log.compact(&settings(0, None), Timestamp::now())
            .await
            .unwrap();
        assert_eq!(tombstones(&records(&read_all(&log, Offset(0)).await)), 10);
        // A later pass within delete.retention.ms of that cleaning: they stay.
        std::thread::sleep(std::time::Duration::from_millis(50));
        fill(&log, "more", 30).await;
        log.compact(&settings(60_000, None), Timestamp::now())
            .await
            .unwrap();
        assert_eq!(tombstones(&records(&read_all(&log, Offset(0)).await)), 10);
        // Past it: they go, and the keys they deleted stay deleted.
        fill(&log, "again", 30).await;
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before = records(&read_all(&log, Offset(0)).await);
        log.compact(&settings(20, None), Timestamp::now())
            .await
            .unwrap();
        let after = records(&read_all(&log, Offset(0)).await);
        assert_eq!(tombstones(&after), 0);
        let gone = |r: &(i64, Option<Vec<u8>>, Option<Vec<u8>>)| {
            r.1.as_deref().is_some_and(|k| k.starts_with(b"gone-"))
        };
        assert!(
            !after.iter().any(gone),
            "nothing of the deleted keys is left"
        );
        assert_eq!(table(&after), table(&before));
        log.close().await.unwrap();
    });
}

/// Runs a pass stopped after `step` and "crashes"; returns what a reopened log reads.
fn crash_after(step: SwapStep) -> (Records, Records, CompactionOutcome) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (before, outcome) = run(async move {
        let log = write_workload(&root).await;
        let before = records(&read_all(&log, Offset(0)).await);
        let outcome = log
            .compact(&settings(i64::MAX, Some(step)), Timestamp::now())
            .await
            .unwrap();
        (before, outcome)
    });
    let root = dir.path().to_path_buf();
    let reopened = run(async move {
        let log = reopen(&root).await.unwrap();
        let read = records(&read_all(&log, Offset(0)).await);
        // And the log goes on: a full pass after the crash cleans it.
        log.compact(&settings(i64::MAX, None), Timestamp::now())
            .await
            .unwrap();
        let cleaned = records(&read_all(&log, Offset(0)).await);
        assert_eq!(table(&cleaned), table(&read));
        log.close().await.unwrap();
        read
    });
    (before, reopened, outcome)
}

#[test]
fn a_crash_before_the_commit_point_leaves_the_old_segments() {
    let (before, reopened, outcome) = crash_after(SwapStep::Written);
    assert!(outcome.stopped);
    assert_eq!(reopened, before);
}

#[test]
fn a_crash_after_the_commit_point_leaves_the_new_segment() {
    for step in [SwapStep::Committed, SwapStep::OldDeleted] {
        let (before, reopened, outcome) = crash_after(step);
        assert!(outcome.stopped, "{step:?}");
        assert_eq!(table(&reopened), table(&before), "{step:?}");
        assert!(
            reopened.len() < before.len(),
            "{step:?}: the cleaned segment is in place"
        );
        let originals: BTreeMap<i64, _> = before.iter().map(|r| (r.0, r)).collect();
        for record in &reopened {
            assert_eq!(originals.get(&record.0), Some(&record), "{step:?}");
        }
    }
}

#[test]
fn a_compacted_partition_is_cleaned_when_dirty_enough_and_not_deleted_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = write_workload(&root).await;
        // cleanup.policy=delete (the default): no cleaning pass.
        assert_eq!(
            log.clean_if_due(Timestamp::now(), None).await.unwrap(),
            None
        );
        let mut config = small_segments(8 * 1024);
        config.set("cleanup.policy", "compact").unwrap();
        config.set("retention.ms", "1").unwrap();
        log.update_config(config).await.unwrap();
        let before = records(&read_all(&log, Offset(0)).await);
        // Compact only: retention by age deletes nothing, however old the records.
        let retained = log.apply_retention(Timestamp::now()).await.unwrap();
        assert_eq!(retained.segments_deleted, 0);
        let first = log.clean_if_due(Timestamp::now(), None).await.unwrap();
        assert!(first.is_some_and(|o| o.records_removed > 0), "{first:?}");
        // Everything cleanable is clean now: not due again until more is written.
        assert_eq!(
            log.clean_if_due(Timestamp::now(), None).await.unwrap(),
            None
        );
        let after = records(&read_all(&log, Offset(0)).await);
        assert_eq!(table(&after), table(&before));
        log.close().await.unwrap();
    });
}

#[test]
fn a_rate_limited_pass_takes_at_least_its_bytes_over_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = write_workload(&root).await;
        let rate = 100_000;
        let limited = CompactionSettings {
            io_bytes_per_sec: Some(rate),
            ..settings(i64::MAX, None)
        };
        let started = std::time::Instant::now();
        let outcome = log.compact(&limited, Timestamp::now()).await.unwrap();
        // Every input byte is read twice (keys, then rewrite): at least that long.
        let floor = std::time::Duration::from_secs_f64(2.0 * outcome.bytes_in as f64 / rate as f64);
        assert!(outcome.bytes_in > 0);
        assert!(
            started.elapsed() >= floor,
            "{:?} < {floor:?}",
            started.elapsed()
        );
        log.close().await.unwrap();
    });
}
