//! What replication asks of a partition log: byte-for-byte replicated appends, reads
//! of whole batches past the high watermark, a high watermark that follows the commit
//! index, and truncation of a divergent suffix (within a segment, at a segment's base,
//! across segments), each surviving a restart.

mod common;

use bytes::Bytes;
use common::*;
use spate_engine::batch::{self, BatchBuilder, BatchHeader, Compression};
use spate_engine::{
    AckPolicy, CompactionSettings, EngineError, LeaderEpoch, Offset, PartitionLog, Timestamp,
    ValidBatch,
};

/// A leader's stored batch: `count` records at `base`, epoch `epoch`.
fn stored(base: i64, count: i32, epoch: i32) -> Bytes {
    let mut b = batch(count, 200, 1_000 + base);
    batch::patch(&mut b, Offset(base), LeaderEpoch(epoch));
    b.freeze()
}

/// A leader's stored batch of one record, `key` = `value`, at `base` in `epoch`.
fn keyed(base: i64, key: &str, value: &str, epoch: i32) -> Bytes {
    let mut builder = BatchBuilder::new();
    builder.push(1_000 + base, Some(key.as_bytes()), Some(value.as_bytes()));
    let mut bytes = Vec::new();
    builder.finish(Compression::None, None, &mut bytes).unwrap();
    batch::patch(&mut bytes, Offset(base), LeaderEpoch(epoch));
    Bytes::from(bytes)
}

/// Appends `n` batches of 3 records in `epoch` from the log end; returns their bytes.
async fn replicate(log: &PartitionLog, n: usize, epoch: i32) -> Vec<Bytes> {
    let mut out = Vec::new();
    for _ in 0..n {
        let b = stored(log.offsets().log_end.0, 3, epoch);
        let header = log
            .append_replicated(ValidBatch::check(b.clone()).unwrap())
            .await
            .expect("replicated append");
        assert_eq!(header.leader_epoch, LeaderEpoch(epoch));
        out.push(b);
    }
    out
}

/// Copies `leader`'s batches to `follower` from the follower's log end until it reaches
/// `until`, as the replication driver does: each batch validated, then appended.
async fn follow(leader: &PartitionLog, follower: &PartitionLog, until: Offset) {
    while follower.offsets().log_end < until {
        let from = follower.offsets().log_end;
        let batches = read_replicated_all(leader, from, until).await;
        assert!(!batches.is_empty(), "the leader has batches from {from:?}");
        for bytes in batches {
            let header = follower
                .append_replicated(ValidBatch::check(Bytes::from(bytes)).expect("valid"))
                .await
                .expect("a replicated append");
            assert!(header.last_offset() < until || header.base_offset < until);
        }
    }
}

async fn durable(log: &PartitionLog) {
    while log.offsets().durable_end < log.offsets().log_end {
        log.wait_for_progress().await;
    }
}

/// Every batch `read_replicated` returns from `from`, as bytes.
async fn read_replicated_all(log: &PartitionLog, from: Offset, until: Offset) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = from;
    while at < until {
        let read = log.read_replicated(at, until, 10_000).await.expect("read");
        if read.end == at {
            break;
        }
        let mut bytes = Vec::new();
        for chunk in &read.chunks {
            chunk.copy_to(&mut bytes).expect("read a chunk");
        }
        let mut pos = 0;
        for (epoch, offsets) in &read.batches {
            let h = BatchHeader::parse(&bytes[pos..]).unwrap();
            assert_eq!((h.leader_epoch.0, h.offsets()), (*epoch, *offsets));
            out.push(bytes[pos..pos + h.size].to_vec());
            pos += h.size;
        }
        assert_eq!(pos, bytes.len(), "whole batches only");
        at = read.end;
    }
    out
}

#[test]
fn replicated_appends_keep_the_leaders_bytes_and_the_commit_drives_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, small_segments(8 * 1024)).await;
        log.set_replicated();
        let sent = replicate(&log, 40, 3).await;
        durable(&log).await;
        let end = log.offsets().log_end;
        assert_eq!(end, Offset(120));
        assert!(log.segment_count() > 2, "batches span segments");
        // Nothing is visible until the commit index says so, and then only what is durable.
        assert_eq!(log.offsets().high_watermark, Offset(0));
        log.set_commit(Offset(60));
        assert_eq!(log.offsets().high_watermark, Offset(60));
        assert_eq!(read_all(&log, Offset(0)).await.len(), 20);
        // A follower reads everything, byte for byte, whatever the high watermark.
        let read: Vec<Vec<u8>> = read_replicated_all(&log, Offset(0), end).await;
        assert_eq!(read, sent.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
        // A batch not at the log end, or from inside a batch, is refused.
        let gap = log
            .append_replicated(ValidBatch::check(stored(200, 3, 3)).unwrap())
            .await;
        assert!(
            matches!(gap, Err(EngineError::ReplicaDiverged { .. })),
            "{gap:?}"
        );
        let inside = log.read_replicated(Offset(1), end, 10_000).await;
        assert!(
            matches!(inside, Err(EngineError::ReplicaDiverged { .. })),
            "{inside:?}"
        );
        assert_eq!(log.offsets().log_end, end);
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_cuts_whole_batches_in_a_segment_at_a_base_and_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let kept = run({
        let root = root.clone();
        async move {
            let log = create(&root, small_segments(8 * 1024)).await;
            log.set_replicated();
            let mut sent = replicate(&log, 40, 1).await;
            durable(&log).await;
            log.set_commit(Offset(30));
            let bases = log.segment_bases();
            assert!(bases.len() >= 4, "{bases:?}");
            // Inside a segment: batch 30..33 and everything after go.
            log.truncate_to(Offset(33)).await.unwrap();
            sent.truncate(11);
            assert_eq!(log.offsets().log_end, Offset(33));
            // Below the high watermark, or inside a batch: refused, nothing changes.
            assert!(log.truncate_to(Offset(27)).await.is_err());
            assert!(log.truncate_to(Offset(31)).await.is_err());
            assert_eq!(log.offsets().log_end, Offset(33));
            // The log takes new batches of a new epoch at the cut.
            sent.extend(replicate(&log, 30, 2).await);
            durable(&log).await;
            // At a segment's base, after more segments were rolled.
            let base = *log.segment_bases().iter().rev().nth(1).unwrap();
            log.truncate_to(base).await.unwrap();
            sent.truncate((base.0 / 3) as usize);
            assert_eq!(log.offsets().log_end, base);
            assert!(
                *log.segment_bases().last().unwrap() < base,
                "the segment at the cut is gone"
            );
            sent.extend(replicate(&log, 5, 4).await);
            durable(&log).await;
            let end = log.offsets().log_end;
            let read = read_replicated_all(&log, Offset(0), end).await;
            assert_eq!(read, sent.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
            // A crash (no clean close): recovery finds the same log.
            sent
        }
    });
    run(async move {
        let log = reopen(&root).await.expect("reopen after truncations");
        let end = log.offsets().log_end;
        assert_eq!(end, Offset(kept.len() as i64 * 3));
        log.set_replicated();
        let read = read_replicated_all(&log, Offset(0), end).await;
        assert_eq!(read, kept.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
        // Epochs read back as stored: 1, then 2, then 4.
        let epochs: Vec<i32> = read
            .iter()
            .map(|b| BatchHeader::parse(b).unwrap().leader_epoch.0)
            .collect();
        assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
        assert_eq!(epochs.last(), Some(&4));
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_to_the_log_start_empties_the_log_and_leader_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, small_segments(8 * 1024)).await;
        log.set_replicated();
        replicate(&log, 10, 1).await;
        durable(&log).await;
        log.truncate_to(Offset(0)).await.unwrap();
        assert_eq!(log.offsets().log_end, Offset(0));
        assert_eq!(log.segment_count(), 1);
        // Leader appends keep working after a cut (a replica that became leader).
        let b = append(&log, 2, 100, 0, AckPolicy::Appended).await;
        assert_eq!(BatchHeader::parse(&b).unwrap().base_offset, Offset(0));
        durable(&log).await;
        log.close().await.unwrap();
    });
}

/// A follower whose whole log lies below its leader's log start starts over, empty, at
/// that offset: the old segments go, appends go on from there, everything below it
/// counts as committed, and a restart finds the same log. A restart at or before the
/// log end is refused and changes nothing.
#[test]
fn a_log_restarted_past_its_end_starts_empty_there_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, small_segments(8 * 1024)).await;
        log.set_replicated();
        replicate(&log, 40, 1).await;
        durable(&log).await;
        log.set_commit(Offset(60));
        assert!(log.segment_count() > 2);
        for refused in [Offset(120), Offset(119), Offset(0)] {
            let outcome = log.restart_at(refused).await;
            assert!(
                matches!(outcome, Err(EngineError::ReplicaDiverged { .. })),
                "{outcome:?}"
            );
        }
        assert_eq!(log.offsets().log_end, Offset(120));
        log.restart_at(Offset(1_000)).await.unwrap();
        let offsets = log.offsets();
        assert_eq!(
            (offsets.log_start, offsets.log_end, offsets.high_watermark),
            (Offset(1_000), Offset(1_000), Offset(1_000))
        );
        assert_eq!(log.segment_bases(), vec![Offset(1_000)]);
        let files = std::fs::read_dir(log.dir()).unwrap().count();
        // One segment's three files, partition.meta, the checkpoint (and maybe a
        // producer snapshot of an old segment, which recovery ignores).
        assert!(files <= 6, "{files} files left");
        // Batches a leader stored from there on follow, and become visible when committed.
        let sent = replicate(&log, 4, 2).await;
        durable(&log).await;
        log.set_commit(Offset(1_012));
        assert_eq!(log.offsets().high_watermark, Offset(1_012));
        let read = read_all(&log, Offset(1_000)).await;
        assert_eq!(read, sent.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
        log.close().await.unwrap();
        let log = reopen(&root).await.unwrap();
        let offsets = log.offsets();
        assert_eq!(
            (offsets.log_start, offsets.log_end),
            (Offset(1_000), Offset(1_012))
        );
        log.set_replicated();
        log.set_commit(Offset(1_012));
        assert_eq!(read_all(&log, Offset(1_000)).await.len(), 4);
        log.close().await.unwrap();
    });
}

/// A log start DeleteRecords put inside a batch: the batch is still read whole for a
/// follower from its base (and nowhere else below the log start), and a follower that
/// starts over at that base holds it as the leader does.
#[test]
fn a_log_start_inside_a_batch_leaves_that_batch_readable_for_followers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("leader")).unwrap();
    std::fs::create_dir_all(root.join("follower")).unwrap();
    run(async move {
        let leader = create(&root.join("leader"), small_segments(8 * 1024)).await;
        leader.set_replicated();
        let sent = replicate(&leader, 40, 1).await;
        durable(&leader).await;
        leader.set_commit(Offset(120));
        assert_eq!(leader.log_start_batch().await.unwrap(), Offset(0));
        // Offset 64 is the second record of the batch at 63.
        leader.delete_records(Offset(64)).await.unwrap();
        assert_eq!(leader.offsets().log_start, Offset(64));
        assert_eq!(leader.log_start_batch().await.unwrap(), Offset(63));
        for below in [Offset(60), Offset(62), Offset(64)] {
            let read = leader.read_replicated(below, Offset(120), 10_000).await;
            assert!(read.is_err(), "{below:?}: {read:?}");
        }
        let follower = create(&root.join("follower"), small_segments(8 * 1024)).await;
        follower.set_replicated();
        follower.restart_at(Offset(63)).await.unwrap();
        follow(&leader, &follower, Offset(120)).await;
        durable(&follower).await;
        follower.set_commit(Offset(120));
        let copied = read_replicated_all(&follower, Offset(63), Offset(120)).await;
        let expected: Vec<Vec<u8>> = sent[21..].iter().map(|b| b.to_vec()).collect();
        assert_eq!(copied, expected);
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

/// A crash inside `restart_at`, in each of its two windows, recovers to a whole log:
/// before the checkpoint names the new start, the new empty segment after the gap is
/// dropped and the old log stays; after it, the old segments (all below the new start)
/// are deleted and the log is the empty one at the new start.
#[test]
fn a_crash_inside_a_restart_recovers_the_old_log_or_the_new_one() {
    use spate_engine::meta::{self, FileKind, RecoveryCheckpoint};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let partition = root.join(tp().dir_name());
    let checkpoint = |partition: &std::path::Path, log_start: i64, recovery_point: i64| {
        let checkpoint = RecoveryCheckpoint {
            log_start: Offset(log_start),
            recovery_point: Offset(recovery_point),
            leader_epoch: LeaderEpoch(1),
            clean_shutdown: false,
        };
        let bytes = meta::encode(FileKind::RecoveryCheckpoint, &checkpoint);
        std::fs::write(partition.join("recovery.checkpoint"), bytes).unwrap();
    };
    let new_segment = |partition: &std::path::Path| {
        for ext in ["log", "index", "timeindex"] {
            std::fs::write(partition.join(format!("{:020}.{ext}", 1_000)), b"").unwrap();
        }
    };
    run(async move {
        let log = create(&root, small_segments(8 * 1024)).await;
        replicate(&log, 40, 1).await;
        durable(&log).await;
        log.close().await.unwrap();
        // Window 1: the new segment exists, the checkpoint is the old one (as written
        // while the log was open: not a clean shutdown).
        checkpoint(&partition, 0, 0);
        new_segment(&partition);
        let log = reopen(&root).await.unwrap();
        let offsets = log.offsets();
        assert_eq!(
            (offsets.log_start, offsets.log_end),
            (Offset(0), Offset(120))
        );
        assert!(!partition.join(format!("{:020}.log", 1_000)).exists());
        log.close().await.unwrap();
        // Window 2: the checkpoint names the new start; no old segment is deleted yet.
        new_segment(&partition);
        checkpoint(&partition, 1_000, 1_000);
        let log = reopen(&root).await.unwrap();
        let offsets = log.offsets();
        assert_eq!(
            (offsets.log_start, offsets.log_end),
            (Offset(1_000), Offset(1_000))
        );
        assert_eq!(log.segment_bases(), vec![Offset(1_000)]);
        log.close().await.unwrap();
    });
}

/// A compacted leader, and followers that catch up from it: one from scratch, one whose
/// log ends inside a run of batches the leader's cleaning turned into one filler (it gets
/// the rest of the filler). Both end with the leader's offsets, epochs and table; the
/// leader's fillers never span two epochs.
#[test]
fn followers_catch_up_from_a_compacted_leader_even_from_inside_a_filler() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    for replica in ["leader", "behind", "fresh"] {
        std::fs::create_dir_all(root.join(replica)).unwrap();
    }
    run(async move {
        let leader = create(&root.join("leader"), small_segments(8 * 1024)).await;
        leader.set_replicated();
        // 300 one-record batches over 5 keys, epoch 1 then 2 from offset 150: every
        // key is rewritten in epoch 2, so epoch 1 is removed whole by a pass.
        for i in 0..300i64 {
            let epoch = if i < 150 { 1 } else { 2 };
            let b = keyed(i, &format!("k{}", i % 5), &format!("v{i}"), epoch);
            leader
                .append_replicated(ValidBatch::check(b).unwrap())
                .await
                .unwrap();
        }
        durable(&leader).await;
        let end = leader.offsets().log_end;
        leader.set_commit(end);
        // This follower has the first 100 batches before the leader cleans.
        let behind = create(&root.join("behind"), small_segments(8 * 1024)).await;
        behind.set_replicated();
        follow(&leader, &behind, Offset(100)).await;
        assert_eq!(behind.offsets().log_end, Offset(100));
        let settings = CompactionSettings {
            delete_retention_ms: i64::MAX,
            min_compaction_lag_ms: 0,
            key_map_bytes: 1 << 20,
            io_bytes_per_sec: None,
            stop_after: None,
        };
        let outcome = leader.compact(&settings, Timestamp::now()).await.unwrap();
        assert!(outcome.records_removed > 150, "{outcome:?}");
        let cleaned = read_replicated_all(&leader, Offset(0), end).await;
        let first_of_epoch_2 = cleaned
            .iter()
            .map(|b| BatchHeader::parse(b).unwrap())
            .find(|h| h.leader_epoch.0 == 2)
            .unwrap();
        assert_eq!(
            first_of_epoch_2.base_offset,
            Offset(150),
            "a filler ends where its epoch does"
        );
        let filler = BatchHeader::parse(&cleaned[0]).unwrap();
        assert_eq!((filler.record_count, filler.base_offset), (0, Offset(0)));
        assert!(
            filler.last_offset() >= Offset(100),
            "offset 100 is inside a filler"
        );
        // The follower inside the filler gets its rest, then the leader's batches.
        follow(&leader, &behind, end).await;
        durable(&behind).await;
        let got = read_replicated_all(&behind, Offset(100), end).await;
        let rest = BatchHeader::parse(&got[0]).unwrap();
        assert_eq!(
            (rest.base_offset, rest.last_offset(), rest.record_count),
            (Offset(100), filler.last_offset(), 0)
        );
        assert_eq!(rest.leader_epoch, filler.leader_epoch);
        assert_eq!(
            got[1..],
            cleaned[1..],
            "then the leader's batches, byte for byte"
        );
        // A follower from scratch gets the leader's log byte for byte.
        let fresh = create(&root.join("fresh"), small_segments(8 * 1024)).await;
        fresh.set_replicated();
        follow(&leader, &fresh, end).await;
        durable(&fresh).await;
        assert_eq!(read_replicated_all(&fresh, Offset(0), end).await, cleaned);
        // Every replica ends with the same table.
        behind.set_commit(end);
        fresh.set_commit(end);
        let want = table(&records_of(&read_all(&leader, Offset(0)).await));
        assert_eq!(want.len(), 5);
        for log in [&behind, &fresh] {
            assert_eq!(table(&records_of(&read_all(log, Offset(0)).await)), want);
            assert_eq!(log.offsets().log_end, end);
        }
        for log in [leader, behind, fresh] {
            log.close().await.unwrap();
        }
    });
}
