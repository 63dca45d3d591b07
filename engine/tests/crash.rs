//! Crash recovery: acknowledged batches survive any damage past them; damage to
//! acknowledged data is reported with file and position, never silently dropped.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use rand::{Rng, SeedableRng};
use spate_engine::{AckPolicy, EngineError, Offset};

fn log_file(root: &Path) -> PathBuf {
    root.join(tp().dir_name()).join("00000000000000000000.log")
}

/// Writes `acked` durable batches, checkpoints, then `unacked` batches that may or may
/// not reach the disk, and "crashes" (drops the executor without closing).
/// Returns the stored acknowledged batches and the byte position where they end.
fn write_then_crash(root: &Path, acked: usize, unacked: usize, seed: u64) -> (Vec<Vec<u8>>, u64) {
    let root = root.to_path_buf();
    run(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let log = create(&root, Default::default()).await;
        let mut stored = Vec::new();
        for i in 0..acked {
            stored.push(
                append(
                    &log,
                    rng.gen_range(1..5),
                    rng.gen_range(0..3000),
                    i as i64,
                    AckPolicy::Durable,
                )
                .await,
            );
        }
        log.write_checkpoint(false).await.unwrap();
        for i in 0..unacked {
            append(
                &log,
                rng.gen_range(1..5),
                rng.gen_range(0..3000),
                i as i64,
                AckPolicy::Appended,
            )
            .await;
            if rng.gen_bool(0.3) {
                glommio::yield_if_needed().await;
                log.wait_for_progress().await;
            }
        }
        let end: u64 = stored.iter().map(|b| b.len() as u64).sum();
        (stored, end)
    })
}

#[test]
fn acknowledged_batches_survive_cuts_and_corruption_past_them() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for case in 0..40u64 {
        let dir = tempfile::tempdir().unwrap();
        let (stored, acked_end) =
            write_then_crash(dir.path(), rng.gen_range(1..30), rng.gen_range(0..20), case);
        let path = log_file(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len >= acked_end);
        // Damage somewhere at or past the acknowledged end: the unacknowledged tail or the
        // O_DIRECT zero padding.
        let at = rng.gen_range(acked_end..=len);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let damage = rng.gen_range(0..3);
        match damage {
            0 => file.set_len(at).unwrap(),
            1 if at < len => file.write_all_at(&[0xA5], at).unwrap(),
            _ => file
                .write_all_at(&vec![0u8; (len - at).min(5000) as usize], at)
                .unwrap(),
        }
        drop(file);
        let root = dir.path().to_path_buf();
        run(async move {
            let log = reopen(&root)
                .await
                .unwrap_or_else(|e| panic!("case {case} damage {damage} at {at}: {e}"));
            let acked_records: i64 = stored
                .iter()
                .map(|b| {
                    i64::from(
                        spate_engine::batch::BatchHeader::parse(b)
                            .unwrap()
                            .record_count,
                    )
                })
                .sum();
            assert!(
                log.offsets().log_end >= Offset(acked_records),
                "case {case}"
            );
            let back = read_all(&log, Offset(0)).await;
            assert_eq!(
                &back[..stored.len()],
                &stored[..],
                "case {case}: acknowledged batches intact"
            );
            // The recovered log takes new writes at the next dense offset.
            let end = log.offsets().log_end;
            let next = append(&log, 1, 10, 0, AckPolicy::Durable).await;
            assert_eq!(
                spate_engine::batch::BatchHeader::parse(&next)
                    .unwrap()
                    .base_offset,
                end
            );
            log.close().await.unwrap();
        });
    }
}

#[test]
fn an_unclean_stop_leaves_zero_padding_that_recovery_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, acked_end) = write_then_crash(dir.path(), 3, 0, 1);
    let len = std::fs::metadata(log_file(dir.path())).unwrap().len();
    assert!(
        len > acked_end && len % 4096 == 0,
        "O_DIRECT padding present: {len} vs {acked_end}"
    );
    let root = dir.path().to_path_buf();
    run(async move {
        let log = reopen(&root).await.unwrap();
        assert_eq!(read_all(&log, Offset(0)).await, stored);
        log.close().await.unwrap();
    });
    assert_eq!(
        std::fs::metadata(log_file(dir.path())).unwrap().len(),
        acked_end,
        "clean close leaves exact size"
    );
}

#[test]
fn damage_to_acknowledged_data_is_reported_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, _) = write_then_crash(dir.path(), 10, 0, 2);
    let path = log_file(dir.path());
    let third: u64 = stored[..3].iter().map(|b| b.len() as u64).sum();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&[0xFF], third + 40).unwrap();
    drop(file);
    let size_before = std::fs::metadata(&path).unwrap().len();
    let root = dir.path().to_path_buf();
    let error = run(async move { reopen(&root).await.unwrap_err() });
    let EngineError::CorruptSegment {
        path: reported,
        position,
        reason,
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(reported, &path);
    assert_eq!(*position, third);
    assert!(reason.contains("CRC"), "{reason}");
    assert!(!error.is_recoverable());
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        size_before,
        "nothing was truncated"
    );
}

#[test]
fn a_damaged_index_or_lost_checkpoint_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let stored = run({
        let root = root.clone();
        async move {
            let log = create(&root, small_segments(20_000)).await;
            let mut stored = Vec::new();
            for i in 0..100 {
                stored.push(append(&log, 2, 500, i, AckPolicy::Durable).await);
            }
            log.close().await.unwrap();
            stored
        }
    });
    let partition = root.join(tp().dir_name());
    std::fs::write(
        partition.join("00000000000000000000.index"),
        b"garbage!garbage",
    )
    .unwrap();
    std::fs::remove_file(partition.join("recovery.checkpoint")).unwrap();
    run(async move {
        let log = reopen(&root).await.unwrap();
        assert_eq!(read_all(&log, Offset(0)).await, stored);
        assert_eq!(read_all(&log, Offset(101)).await[0], stored[50]);
        log.close().await.unwrap();
    });
}

#[test]
fn a_crash_after_rolls_keeps_every_acknowledged_segment() {
    // Rolled segments that a crash left unsealed (O_DIRECT padding or preallocated zeros
    // after their last batch, no index written) must not take later segments with them.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let stored = run({
        let root = root.clone();
        async move {
            let log = create(&root, small_segments(10_000)).await;
            let mut stored = Vec::new();
            for i in 0..60 {
                stored.push(append(&log, 2, 700, i, AckPolicy::Durable).await);
            }
            assert!(log.segment_count() > 4);
            stored
        }
    });
    let partition = root.join(tp().dir_name());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for path in &logs[..logs.len() - 1] {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len + 40_000)
            .unwrap();
        std::fs::remove_file(path.with_extension("index")).unwrap();
    }
    run(async move {
        let log = reopen(&root).await.unwrap();
        assert_eq!(read_all(&log, Offset(0)).await, stored);
        log.close().await.unwrap();
        let log = reopen(&root).await.unwrap();
        assert_eq!(
            read_all(&log, Offset(0)).await,
            stored,
            "and again after a clean close"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn zeros_below_the_recovery_point_are_damage_not_padding() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, _) = write_then_crash(dir.path(), 10, 0, 3);
    let path = log_file(dir.path());
    let fifth: u64 = stored[..5].iter().map(|b| b.len() as u64).sum();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&vec![0u8; (len - fifth) as usize], fifth)
        .unwrap();
    let root = dir.path().to_path_buf();
    let error = run(async move { reopen(&root).await.unwrap_err() });
    assert!(
        matches!(error, EngineError::CorruptSegment { position, .. } if position == fifth),
        "{error}"
    );
}
