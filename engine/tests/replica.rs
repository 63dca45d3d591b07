//! What replication asks of a partition log: byte-for-byte replicated appends, reads
//! of whole batches past the high watermark, a high watermark that follows the commit
//! index, and truncation of a divergent suffix (within a segment, at a segment's base,
//! across segments), each surviving a restart.

mod common;

use bytes::Bytes;
use common::*;
use spate_engine::batch::{self, BatchHeader};
use spate_engine::{AckPolicy, EngineError, LeaderEpoch, Offset, PartitionLog, ValidBatch};

/// A leader's stored batch: `count` records at `base`, epoch `epoch`.
fn stored(base: i64, count: i32, epoch: i32) -> Bytes {
    let mut b = batch(count, 200, 1_000 + base);
    batch::patch(&mut b, Offset(base), LeaderEpoch(epoch));
    b.freeze()
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
        for (epoch, records) in &read.batches {
            let h = BatchHeader::parse(&bytes[pos..]).unwrap();
            assert_eq!(
                (h.leader_epoch.0, h.record_count as u32),
                (*epoch, *records)
            );
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
