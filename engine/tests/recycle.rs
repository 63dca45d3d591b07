//! Recycled segment files: retention keeps deleted `.log` files as `<end>.free`, a roll
//! writes a new segment over one, and neither reads nor recovery ever see the old bytes
//! left past the new data.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use spate_engine::{AckPolicy, Offset, PartitionConfig, ReadChunk, Timestamp};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn config() -> PartitionConfig {
    let mut config = small_segments(SEGMENT_BYTES);
    config
        .set("retention.bytes", &(2 * SEGMENT_BYTES).to_string())
        .unwrap();
    config
}

fn partition_dir(root: &Path) -> PathBuf {
    root.join(tp().dir_name())
}

/// The free files in a partition's directory, by name.
/// The bytes of the free files in a partition's directory.
fn free_bytes(root: &Path) -> u64 {
    free_files(root)
        .iter()
        .map(|n| {
            std::fs::metadata(partition_dir(root).join(n))
                .unwrap()
                .len()
        })
        .sum()
}

fn free_files(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(partition_dir(root))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".free"))
        .collect();
    names.sort();
    names
}

/// Appends `n` durable batches of about 10 KiB, returning them as stored.
async fn fill(log: &spate_engine::PartitionLog, n: usize) -> Vec<Vec<u8>> {
    let mut stored = Vec::new();
    for i in 0..n {
        stored.push(append(log, 2, 5000, 1_000 + i as i64, AckPolicy::Durable).await);
    }
    stored
}

/// The stored batches from `log_start` on.
fn kept(stored: &[Vec<u8>], log_start: Offset) -> Vec<Vec<u8>> {
    stored
        .iter()
        .filter(|b| {
            spate_engine::batch::BatchHeader::parse(b)
                .unwrap()
                .base_offset
                >= log_start
        })
        .cloned()
        .collect()
}

#[test]
fn deleted_segments_are_written_over_and_read_back_right_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let shard = shard0();
        let log = create_on(&root, config(), shard.clone()).await;
        let mut stored = fill(&log, 40).await;
        let deleted = log.apply_retention(Timestamp(2_000)).await.unwrap();
        assert!(deleted.segments_deleted >= 2, "{deleted:?}");
        let free = free_files(&root);
        assert_eq!(free.len(), 2, "the pool keeps at most two files: {free:?}");
        assert_eq!(shard.recycled_bytes.get(), free_bytes(&root));
        // Each free file is named by the end of the offsets it held, all below the log start.
        for name in &free {
            let end: i64 = name.trim_end_matches(".free").parse().unwrap();
            assert!(Offset(end) <= log.offsets().log_start);
        }
        stored.extend(fill(&log, 20).await);
        let stats = log.stats();
        assert!(stats.segments_recycled >= 2, "{stats:?}");
        assert!(free_files(&root).is_empty());
        assert_eq!(
            shard.recycled_bytes.get(),
            0,
            "a reused file leaves the budget"
        );
        let start = log.offsets().log_start;
        assert_eq!(read_all(&log, start).await, kept(&stored, start));
        // Keep going through several rounds of retention and recycling.
        for _ in 0..5 {
            log.apply_retention(Timestamp(2_000)).await.unwrap();
            stored.extend(fill(&log, 15).await);
        }
        let stats = log.stats();
        assert!(stats.segments_recycled >= 6, "{stats:?}");
        let start = log.offsets().log_start;
        assert_eq!(read_all(&log, start).await, kept(&stored, start));
        log.apply_retention(Timestamp(2_000)).await.unwrap();
        let free_before = free_files(&root);
        assert!(!free_before.is_empty());
        assert_eq!(shard.recycled_bytes.get(), free_bytes(&root));
        let offsets = log.offsets();
        log.close().await.unwrap();
        assert_eq!(
            shard.recycled_bytes.get(),
            0,
            "a closed log's files leave the budget"
        );

        // A clean restart keeps the free files and reuses them.
        let log = reopen_on(&root, shard.clone()).await.unwrap();
        assert_eq!(log.offsets(), offsets);
        assert_eq!(free_files(&root), free_before);
        assert_eq!(shard.recycled_bytes.get(), free_bytes(&root));
        assert_eq!(
            read_all(&log, offsets.log_start).await,
            kept(&stored, offsets.log_start)
        );
        stored.extend(fill(&log, 10).await);
        assert!(log.stats().segments_recycled >= 1);
        let start = log.offsets().log_start;
        assert_eq!(read_all(&log, start).await, kept(&stored, start));
        log.close().await.unwrap();
    });
}

#[test]
fn a_crash_in_a_recycled_segment_loses_no_acknowledged_batch_and_keeps_no_old_one() {
    for unacked in [0usize, 3, 9] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (stored, log_end) = run({
            let root = root.clone();
            async move {
                let log = create(&root, config()).await;
                let mut stored = fill(&log, 40).await;
                log.apply_retention(Timestamp(2_000)).await.unwrap();
                assert!(!free_files(&root).is_empty());
                // Roll into a recycled file and write a little of it: past these batches
                // it still holds a whole old segment.
                let recycled_before = log.stats().segments_recycled;
                while log.stats().segments_recycled == recycled_before {
                    stored.extend(fill(&log, 1).await);
                }
                stored.extend(fill(&log, 2).await);
                log.write_checkpoint(false).await.unwrap();
                stored.extend(fill(&log, 1).await);
                let log_end = log.offsets().log_end;
                for i in 0..unacked {
                    append(&log, 1, 3000, i as i64, AckPolicy::Appended).await;
                }
                // Dropping the executor without closing is the crash.
                (stored, log_end)
            }
        });
        run(async move {
            let log = reopen(&root).await.expect("recovery succeeds");
            let offsets = log.offsets();
            assert!(
                offsets.log_end >= log_end,
                "every acknowledged batch is kept ({unacked} unacknowledged)"
            );
            let read = read_all(&log, offsets.log_start).await;
            let expected = kept(&stored, offsets.log_start);
            assert_eq!(&read[..expected.len()], &expected[..]);
            // Anything past the acknowledged end is one of the unacknowledged batches, in
            // order: never an old batch of the recycled file.
            for extra in &read[expected.len()..] {
                let header = spate_engine::batch::BatchHeader::parse(extra).unwrap();
                assert!(header.base_offset >= log_end);
                assert_eq!(header.record_count, 1);
            }
            // The log goes on from its recovered end.
            let next = append(&log, 1, 100, 9, AckPolicy::Durable).await;
            let header = spate_engine::batch::BatchHeader::parse(&next).unwrap();
            assert_eq!(header.base_offset, offsets.log_end);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn a_free_file_is_not_written_over_while_a_read_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        // Large enough that the oldest batches are no longer in the tail cache, so a read
        // of them is a file range holding the segment's descriptor.
        let mut config = small_segments(1 << 20);
        config
            .set("retention.bytes", &(2u64 << 20).to_string())
            .unwrap();
        let log = create(&root, config).await;
        for i in 0..120 {
            append(&log, 1, 100_000, i, AckPolicy::Durable).await;
        }
        let held = log.read(Offset(0), 1000).await.unwrap();
        assert!(
            matches!(held.chunks.first(), Some(ReadChunk::File { .. })),
            "the oldest batches come from the file"
        );
        let mut before = Vec::new();
        held.chunks[0].copy_to(&mut before).unwrap();
        // Retention deletes the held segment, and others; the pool keeps the first two.
        let outcome = log.apply_retention(Timestamp(2_000)).await.unwrap();
        assert!(outcome.segments_deleted >= 3, "{outcome:?}");
        // Roll twice: one free file is held by the read, so only the other is reused.
        let rolled = log.stats().segments_rolled;
        while log.stats().segments_rolled < rolled + 2 {
            append(&log, 1, 100_000, 0, AckPolicy::Durable).await;
        }
        assert_eq!(log.stats().segments_recycled, 1);
        // The held read still sends the deleted segment's bytes.
        let mut after = Vec::new();
        held.chunks[0].copy_to(&mut after).unwrap();
        assert_eq!(before, after);
        drop(held);
        // Once the read is gone, its file is free to be written over.
        let rolled = log.stats().segments_rolled;
        while log.stats().segments_rolled < rolled + 1 {
            append(&log, 1, 100_000, 0, AckPolicy::Durable).await;
        }
        assert_eq!(log.stats().segments_recycled, 2);
        log.close().await.unwrap();
    });
}

#[test]
fn free_files_that_could_hold_live_offsets_are_deleted_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, config()).await;
        fill(&log, 40).await;
        log.apply_retention(Timestamp(2_000)).await.unwrap();
        let kept_before = free_files(&root);
        assert!(!kept_before.is_empty());
        let offsets = log.offsets();
        log.close().await.unwrap();
        // A free file claiming offsets at or past the log's first segment (as after a
        // truncation below the log start) must never become a segment.
        let bad = partition_dir(&root).join(format!("{:020}.free", offsets.log_end.0 + 5));
        std::fs::write(&bad, vec![7u8; 8192]).unwrap();
        let log = reopen(&root).await.unwrap();
        assert!(!bad.exists(), "an unsafe free file is deleted");
        assert_eq!(free_files(&root), kept_before);
        assert_eq!(log.offsets(), offsets);
        log.close().await.unwrap();
    });
}

#[test]
fn past_the_shard_budget_retention_unlinks_deleted_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let shard = shard0();
        // Other partitions of the shard already keep nearly all the budget.
        let others = spate_engine::limits::SHARD_RECYCLED_BYTES_MAX - 1000;
        shard.recycled_bytes.set(others);
        let log = create_on(&root, config(), shard.clone()).await;
        fill(&log, 40).await;
        let deleted = log.apply_retention(Timestamp(2_000)).await.unwrap();
        assert!(deleted.segments_deleted >= 2, "{deleted:?}");
        assert!(free_files(&root).is_empty(), "{:?}", free_files(&root));
        assert_eq!(shard.recycled_bytes.get(), others);
        // With room again, the next deleted segments are kept.
        shard.recycled_bytes.set(0);
        fill(&log, 20).await;
        log.apply_retention(Timestamp(2_000)).await.unwrap();
        assert!(!free_files(&root).is_empty());
        assert_eq!(shard.recycled_bytes.get(), free_bytes(&root));
        log.close().await.unwrap();
        assert_eq!(shard.recycled_bytes.get(), 0);
    });
}
