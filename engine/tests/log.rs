//! Partition log behaviour: offsets, rolling, restart, reads, time lookups, retention,
//! and refusal of bad batches.

mod common;

use common::*;
use spate_engine::batch;
use spate_engine::{AckPolicy, BatchError, EngineError, LeaderEpoch, Offset, ReadChunk, Timestamp};

#[test]
fn appends_get_dense_offsets_and_read_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, Default::default()).await;
        let mut stored = Vec::new();
        for i in 0..200 {
            stored.push(
                append(
                    &log,
                    1 + i % 7,
                    10 + (i as usize * 13) % 300,
                    1000 + i64::from(i),
                    AckPolicy::Durable,
                )
                .await,
            );
        }
        let expected_end: i64 = (0..200).map(|i| i64::from(1 + i % 7)).sum();
        let offsets = log.offsets();
        assert_eq!(offsets.log_end, Offset(expected_end));
        assert_eq!(offsets.high_watermark, offsets.log_end);
        assert_eq!(read_all(&log, Offset(0)).await, stored);
        // A read from the middle starts with the batch containing the offset.
        let from_middle = read_all(&log, Offset(expected_end / 2)).await;
        assert!(
            batch::BatchHeader::parse(&from_middle[0])
                .unwrap()
                .base_offset
                <= Offset(expected_end / 2)
        );
        log.close().await.unwrap();
    });
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, Default::default()).await;
        let tasks: Vec<_> = (0..256)
            .map(|_| {
                let log = log.clone();
                glommio::spawn_local(
                    async move { append(&log, 2, 100, 0, AckPolicy::Durable).await },
                )
            })
            .collect();
        let mut bases: Vec<i64> = Vec::new();
        for t in tasks {
            bases.push(batch::BatchHeader::parse(&t.await).unwrap().base_offset.0);
        }
        bases.sort();
        assert_eq!(bases, (0..256).map(|i| i * 2).collect::<Vec<_>>());
        let stats = log.stats();
        assert_eq!(stats.appends, 256);
        assert!(
            stats.flush_cycles < 256,
            "group commit shares fsyncs: {stats:?}"
        );
        log.close().await.unwrap();
    });
}

/// Far more staged than one flush cycle takes (`FLUSH_FRONT_BYTES_MAX`), across segment
/// rolls: cycles take fronts, write while earlier ones sync, and every acknowledged
/// append is durable, in offset order, after an unclean stop.
#[test]
fn a_flood_of_durable_appends_is_written_in_fronts_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let segment_bytes = 3 * spate_engine::limits::FLUSH_FRONT_BYTES_MAX as u64 / 2;
    let stored = run({
        let root = root.clone();
        async move {
            let log = create(&root, small_segments(segment_bytes)).await;
            let tasks: Vec<_> = (0..48)
                .map(|task| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        let mut stored = Vec::new();
                        for round in 0..4 {
                            let value = 20_000 + 37_123 * ((task * 7 + round) % 11);
                            stored.push(append(&log, 2, value, 0, AckPolicy::Durable).await);
                        }
                        stored
                    })
                })
                .collect();
            let mut stored = Vec::new();
            for task in tasks {
                stored.extend(task.await);
            }
            stored.sort_by_key(|b| batch::BatchHeader::parse(b).unwrap().base_offset);
            let offsets = log.offsets();
            assert_eq!(offsets.durable_end, offsets.log_end, "every ack is durable");
            assert_eq!(offsets.log_end, Offset(2 * 48 * 4));
            assert!(log.segment_count() > 3, "{} segments", log.segment_count());
            assert_eq!(read_all(&log, Offset(0)).await, stored);
            // No close: the executor stops with the log open, as in a crash.
            stored
        }
    });
    run(async move {
        let log = reopen(&root).await.unwrap();
        assert_eq!(log.offsets().log_end, Offset(2 * 48 * 4));
        assert_eq!(read_all(&log, Offset(0)).await, stored);
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_at_segment_bytes_and_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let stored = run({
        let root = root.clone();
        async move {
            let log = create(&root, small_segments(64 * 1024)).await;
            let mut stored = Vec::new();
            for i in 0..300 {
                stored.push(append(&log, 3, 1000, i, AckPolicy::Durable).await);
            }
            assert!(log.segment_count() > 10, "{} segments", log.segment_count());
            log.close().await.unwrap();
            stored
        }
    });
    let partition_dir = root.join(tp().dir_name());
    let mut names: Vec<String> = std::fs::read_dir(&partition_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.contains(&"00000000000000000000.log".to_string()));
    assert!(names.contains(&"00000000000000000000.index".to_string()));
    assert!(names.contains(&"00000000000000000000.timeindex".to_string()));
    for name in names.iter().filter(|n| n.ends_with(".log")) {
        let len = std::fs::metadata(partition_dir.join(name)).unwrap().len();
        assert!(len <= 64 * 1024, "{name} is {len} bytes");
        let index = std::fs::metadata(partition_dir.join(name.replace(".log", ".index")))
            .unwrap()
            .len();
        assert!(
            index > 0 && index % 8 == 0,
            "{name} index has {index} bytes"
        );
    }
    run(async move {
        let log = reopen(&root).await.unwrap();
        assert_eq!(log.offsets().log_end, Offset(900));
        assert_eq!(read_all(&log, Offset(0)).await, stored);
        // And the log keeps growing after a restart.
        append(&log, 1, 10, 0, AckPolicy::Durable).await;
        assert_eq!(log.offsets().log_end, Offset(901));
        log.close().await.unwrap();
    });
}

#[test]
fn bad_batches_are_refused_with_typed_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let mut config = spate_engine::PartitionConfig::default();
        config.set("max.message.bytes", "10000").unwrap();
        let log = create(&root, config).await;
        append(&log, 2, 10, 0, AckPolicy::Durable).await;
        let before = (log.offsets(), read_all(&log, Offset(0)).await);
        let good = batch(2, 10, 0);
        let mut magic = good.clone();
        magic[16] = 1;
        let mut crc = good.clone();
        let last = crc.len() - 1;
        crc[last] ^= 1;
        let mut lying = good.clone();
        lying.truncate(good.len() - 3);
        let cases = [
            (magic, "magic"),
            (crc, "crc"),
            (lying, "length"),
            (batch(1, 20_000, 0), "too large"),
            (bytes::BytesMut::from(&b"short"[..]), "short"),
        ];
        for (bad, what) in cases {
            let err = log
                .append(bad, LeaderEpoch(1), AckPolicy::Durable)
                .await
                .unwrap_err();
            let EngineError::InvalidBatch(kind) = &err else {
                panic!("{what}: {err}")
            };
            match what {
                "magic" => assert_eq!(*kind, BatchError::UnsupportedMagic { magic: 1 }),
                "crc" => assert!(matches!(kind, BatchError::CrcMismatch { .. })),
                "length" => assert!(matches!(kind, BatchError::LengthMismatch { .. })),
                "too large" => assert!(kind.is_too_large()),
                _ => assert!(matches!(kind, BatchError::TooShort { .. })),
            }
            assert!(err.is_recoverable());
        }
        assert_eq!((log.offsets(), read_all(&log, Offset(0)).await), before);
        log.close().await.unwrap();
    });
}

#[test]
fn out_of_range_and_tail_reads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, Default::default()).await;
        for i in 0..10 {
            append(&log, 1, 50, i, AckPolicy::Durable).await;
        }
        assert!(matches!(
            log.read(Offset(11), 1000).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        assert!(log.read(Offset(10), 1000).await.unwrap().chunks.is_empty());
        // Recent batches come from the tail cache.
        let tail = log.read(Offset(9), 1000).await.unwrap();
        assert!(matches!(tail.chunks[0], ReadChunk::Cached(_)));
        // KIP-74: a tiny max_bytes still returns one whole batch.
        let one = log.read(Offset(3), 1).await.unwrap();
        assert_eq!(one.chunks.len(), 1);
        assert!(one.bytes() >= batch(1, 50, 0).len() as u64);
        log.close().await.unwrap();
    });
    // After a restart the cache is cold and reads come from the file.
    run(async move {
        let log = reopen(dir.path()).await.unwrap();
        let r = log.read(Offset(0), 1 << 20).await.unwrap();
        assert!(matches!(r.chunks[0], ReadChunk::File { .. }));
        assert_eq!(read_all(&log, Offset(0)).await.len(), 10);
        log.close().await.unwrap();
    });
}

#[test]
fn offsets_by_timestamp_find_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, small_segments(16 * 1024)).await;
        // Batch i holds 5 records with timestamps 1000*i .. 1000*i+4.
        for i in 0..100 {
            append(&log, 5, 200, 1000 * i, AckPolicy::Durable).await;
        }
        assert!(log.segment_count() > 3);
        let hit = log.offset_for_timestamp(Timestamp(42_002)).await.unwrap();
        assert_eq!(hit.map(|h| h.0), Some(Offset(42 * 5 + 2)));
        let hit = log.offset_for_timestamp(Timestamp(42_005)).await.unwrap();
        assert_eq!(hit.map(|h| h.0), Some(Offset(43 * 5)));
        assert_eq!(
            log.offset_for_timestamp(Timestamp(0))
                .await
                .unwrap()
                .map(|h| h.0),
            Some(Offset(0))
        );
        assert_eq!(
            log.offset_for_timestamp(Timestamp(10_000_000))
                .await
                .unwrap(),
            None
        );
        log.close().await.unwrap();
    });
}

#[test]
fn retention_deletes_whole_old_segments_and_moves_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let mut config = small_segments(8 * 1024);
        config.set("retention.bytes", "40000").unwrap();
        let log = create(&root, config).await;
        for i in 0..200 {
            append(&log, 1, 1000, 1_000_000 + i, AckPolicy::Durable).await;
        }
        let segments_before = log.segment_count();
        let outcome = log.apply_retention(Timestamp(1_000_200)).await.unwrap();
        assert!(outcome.segments_deleted > 0 && outcome.segments_deleted < segments_before);
        let offsets = log.offsets();
        assert_eq!(offsets.log_start, log.segment_bases()[0]);
        assert!(offsets.log_start > Offset(0));
        assert!(matches!(
            log.read(Offset(0), 100).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        let kept = read_all(&log, offsets.log_start).await;
        assert_eq!(kept.len() as i64, 200 - offsets.log_start.0);
        // Time retention: everything closed is older than a week at "now" far ahead.
        let week_later = Timestamp(1_000_200 + 8 * 24 * 3600 * 1000);
        log.apply_retention(week_later).await.unwrap();
        assert_eq!(log.segment_count(), 1, "only the active segment is left");
        let start = log.offsets().log_start;
        log.close().await.unwrap();
        let log = reopen(&root).await.unwrap();
        assert_eq!(
            log.offsets().log_start,
            start,
            "the log start survives a restart"
        );
        log.close().await.unwrap();
    });
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// For any batch sizes and segment size: offsets stay dense across segments, every
    /// segment holds at most `segment.bytes` (unless one batch alone is larger), segments
    /// are named by their first offset, and everything reads back, also after a restart.
    #[test]
    fn segment_roll_keeps_offsets_dense_and_segments_bounded(
        segment_bytes in 200u64..20_000,
        batches in proptest::collection::vec((1i32..6, 0usize..3000), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let stored = run({
            let root = root.clone();
            let batches = batches.clone();
            async move {
                let log = create(&root, small_segments(segment_bytes)).await;
                let mut stored = Vec::new();
                for (i, (count, value)) in batches.into_iter().enumerate() {
                    stored.push(append(&log, count, value, i as i64, AckPolicy::Durable).await);
                }
                assert_eq!(read_all(&log, Offset(0)).await, stored);
                log.close().await.unwrap();
                stored
            }
        });
        let partition = root.join(tp().dir_name());
        let mut next_base = 0i64;
        let mut position_in_segment = 0u64;
        let mut segments = Vec::new();
        for b in &stored {
            let header = batch::BatchHeader::parse(b).unwrap();
            proptest::prop_assert_eq!(header.base_offset, Offset(next_base));
            if segments.is_empty() || position_in_segment + b.len() as u64 > segment_bytes && position_in_segment > 0 {
                segments.push(header.base_offset.0);
                position_in_segment = 0;
            }
            position_in_segment += b.len() as u64;
            next_base = header.last_offset().next().0;
        }
        for base in &segments {
            let path = partition.join(format!("{base:020}.log"));
            let len = std::fs::metadata(&path).unwrap().len();
            proptest::prop_assert!(len > 0, "{} exists and holds data", path.display());
        }
        let mut on_disk: Vec<i64> = std::fs::read_dir(&partition)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().unwrap().strip_suffix(".log").map(|s| s.parse().unwrap()))
            .collect();
        on_disk.sort();
        proptest::prop_assert_eq!(&on_disk, &segments);
        run(async move {
            let log = reopen(&root).await.unwrap();
            assert_eq!(read_all(&log, Offset(0)).await, stored);
            log.close().await.unwrap();
        });
    }
}

#[test]
fn delete_records_moves_the_log_start_and_retention_drops_the_segments_below() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, small_segments(4096)).await;
        for i in 0..100 {
            append(&log, 1, 500, i, AckPolicy::Durable).await;
        }
        let before = log.segment_count();
        assert!(matches!(
            log.delete_records(Offset(101)).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.delete_records(Offset(42)).await.unwrap(), Offset(42));
        assert_eq!(
            log.delete_records(Offset(10)).await.unwrap(),
            Offset(42),
            "never moves back"
        );
        assert!(matches!(
            log.read(Offset(41), 100).await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log, Offset(42)).await.len(), 58);
        let outcome = log.apply_retention(Timestamp(0)).await.unwrap();
        assert!(outcome.segments_deleted > 0);
        assert!(log.segment_count() < before);
        assert!(
            log.segment_bases()[0] <= Offset(42),
            "the segment holding the log start stays"
        );
        log.close().await.unwrap();
        let log = reopen(&root).await.unwrap();
        assert_eq!(log.offsets().log_start, Offset(42));
        assert_eq!(read_all(&log, Offset(42)).await.len(), 58);
        log.close().await.unwrap();
    });
}

#[test]
fn config_changes_are_persisted_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, Default::default()).await;
        append(&log, 1, 3000, 0, AckPolicy::Durable).await;
        assert_eq!(log.segment_count(), 1);
        let mut config = log.config();
        config.set("segment.bytes", "4096").unwrap();
        log.update_config(config.clone()).await.unwrap();
        append(&log, 1, 3000, 0, AckPolicy::Durable).await;
        assert_eq!(
            log.segment_count(),
            2,
            "the new segment.bytes applies to the next append"
        );
        log.close().await.unwrap();
        let log = reopen(&root).await.unwrap();
        assert_eq!(log.config(), config);
        log.close().await.unwrap();
    });
}

#[test]
fn the_topic_id_and_the_metadata_offset_it_was_seen_at_are_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(async move {
        let log = create(&root, Default::default()).await;
        assert_eq!((log.topic_id(), log.topic_seen_at()), (None, None));
        log.set_topic([3; 16], 42).await.unwrap();
        let config = log.config();
        log.close().await.unwrap();
        let log = reopen(&root).await.unwrap();
        assert_eq!(
            (log.topic_id(), log.topic_seen_at()),
            (Some([3; 16]), Some(42))
        );
        assert_eq!(log.config(), config, "the other fields are kept");
        log.close().await.unwrap();
    });
}

/// An idempotent producer's batch: `count` records from sequence `sequence`.
fn producer_batch(sequence: i32, count: i32) -> bytes::BytesMut {
    let mut b = batch(count, 500, 0);
    batch::set_producer(&mut b, 7, 0, sequence);
    b
}

/// Appends producer 7's batches, then other batches until the segment rolls, so the
/// producer's last batches are all in a sealed segment. Returns the last batch's offsets.
async fn produce_then_roll(log: &spate_engine::PartitionLog) -> (Offset, Offset) {
    let mut last = None;
    for i in 0..5 {
        let info = log
            .append(producer_batch(i * 3, 3), LeaderEpoch(1), AckPolicy::Durable)
            .await
            .unwrap();
        last = Some((info.base_offset, info.last_offset));
    }
    let segments = log.segment_count();
    while log.segment_count() == segments {
        append(log, 1, 2000, 0, AckPolicy::Durable).await;
    }
    last.unwrap()
}

#[test]
fn idempotent_producers_are_remembered_across_a_roll_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let first = run({
        let root = root.clone();
        async move {
            let log = create(&root, small_segments(16 * 1024)).await;
            let last = produce_then_roll(&log).await;
            log.close().await.unwrap();
            last
        }
    });
    run({
        let root = root.clone();
        async move {
            let log = reopen(&root).await.unwrap();
            let end = log.offsets().log_end;
            // The retry of the last batch gets its first offsets and appends nothing.
            let retry = log
                .append(producer_batch(12, 3), LeaderEpoch(1), AckPolicy::Durable)
                .await
                .unwrap();
            assert_eq!((retry.base_offset, retry.last_offset), first);
            assert_eq!(log.offsets().log_end, end);
            // The next sequence continues; a gap is refused.
            let gap = log
                .append(producer_batch(16, 1), LeaderEpoch(1), AckPolicy::Durable)
                .await;
            assert!(
                matches!(gap, Err(EngineError::OutOfOrderSequence { .. })),
                "{gap:?}"
            );
            log.append(producer_batch(15, 1), LeaderEpoch(1), AckPolicy::Durable)
                .await
                .unwrap();
            log.close().await.unwrap();
        }
    });
    // Without the snapshot, the producer is forgotten: what the snapshot is for.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run({
        let root = root.clone();
        async move {
            let log = create(&root, small_segments(16 * 1024)).await;
            produce_then_roll(&log).await;
            log.close().await.unwrap();
        }
    });
    std::fs::remove_file(root.join(tp().dir_name()).join("producers.snapshot")).unwrap();
    run(async move {
        let log = reopen(&root).await.unwrap();
        let retry = log
            .append(producer_batch(12, 3), LeaderEpoch(1), AckPolicy::Durable)
            .await;
        assert!(
            matches!(retry, Err(EngineError::UnknownProducerId { .. })),
            "{retry:?}"
        );
        log.close().await.unwrap();
    });
}
