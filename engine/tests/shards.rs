//! Shards: partitions placed and reached across the channel mesh, placement kept over
//! restarts (and re-homed when the shard count shrinks), one process per data directory.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use spate_engine::batch;
use spate_engine::{
    AckPolicy, EngineConfig, EngineError, LeaderEpoch, Offset, PartitionConfig, ShardSet,
    TopicPartition,
};

fn config(root: &std::path::Path, shards: usize) -> EngineConfig {
    let mut c = EngineConfig::new(root, shards);
    c.cores = spate_engine::shard::CoreSet::Unpinned;
    c
}

fn partitions() -> Vec<TopicPartition> {
    (0..8).map(|p| TopicPartition::new("orders", p)).collect()
}

/// Runs `body` on shard 0 only; other shards just serve the mesh.
/// Creates a partition that shard 1 owns (reached from shard 0 through the mesh).
async fn create_on_shard1(shard: &spate_engine::Shard) -> TopicPartition {
    let tp = partitions()
        .into_iter()
        .find(|tp| shard.owner(tp).0 == 1)
        .expect("a partition owned by shard 1");
    shard
        .create_partition(tp.clone(), PartitionConfig::default())
        .await
        .unwrap();
    tp
}

fn on_shard0<F, Fut>(config: EngineConfig, body: F) -> spate_engine::Result<()>
where
    F: Fn(spate_engine::Shard) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    ShardSet::start(config, move |shard| {
        let body = body.clone();
        async move {
            if shard.id().0 == 0 {
                body(shard).await;
            }
        }
    })?
    .join()
}

#[test]
fn partitions_on_any_shard_are_reached_through_the_mesh_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let owners = Arc::new(Mutex::new(Vec::new()));
    let seen = owners.clone();
    on_shard0(config(dir.path(), 2), move |shard| {
        let seen = seen.clone();
        async move {
            for tp in partitions() {
                shard
                    .create_partition(tp.clone(), PartitionConfig::default())
                    .await
                    .unwrap();
                seen.lock().unwrap().push(shard.owner(&tp));
                for i in 0..10 {
                    let b = BytesMut::from(&batch::encode_test_batch(3, 100, i)[..]);
                    let info = shard
                        .append(tp.clone(), b, LeaderEpoch(0), AckPolicy::Durable)
                        .await
                        .unwrap();
                    assert_eq!(info.base_offset, Offset(i * 3));
                }
                let read = shard.read(tp.clone(), Offset(0), 1 << 20).await.unwrap();
                assert_eq!(read.high_watermark, Offset(30));
                assert!(read.bytes() > 0);
            }
            let again = shard
                .create_partition(partitions()[0].clone(), PartitionConfig::default())
                .await;
            assert!(matches!(again, Err(EngineError::PartitionExists(_))));
            let unknown = shard.offsets(TopicPartition::new("nope", 0)).await;
            assert!(matches!(unknown, Err(EngineError::UnknownPartition(_))));
        }
    })
    .unwrap();
    let owners = owners.lock().unwrap().clone();
    assert!(
        owners.iter().any(|s| s.0 == 0) && owners.iter().any(|s| s.0 == 1),
        "spread over both shards: {owners:?}"
    );

    // Restart with the same shard count: same owners, same data.
    let expected = owners.clone();
    on_shard0(config(dir.path(), 2), move |shard| {
        let expected = expected.clone();
        async move {
            for (tp, owner) in partitions().into_iter().zip(expected) {
                assert_eq!(shard.owner(&tp), owner);
                assert_eq!(shard.offsets(tp).await.unwrap().log_end, Offset(30));
            }
        }
    })
    .unwrap();

    // Restart on one shard: everything is re-homed to shard 0 and still readable.
    on_shard0(config(dir.path(), 1), |shard| async move {
        for tp in partitions() {
            assert_eq!(shard.owner(&tp).0, 0);
            assert_eq!(shard.local(&tp).unwrap().offsets().log_end, Offset(30));
        }
        shard
            .delete_partition(partitions()[7].clone())
            .await
            .unwrap();
    })
    .unwrap();
    assert!(!dir.path().join("orders-7").exists());
    on_shard0(config(dir.path(), 2), |shard| async move {
        assert!(shard.offsets(partitions()[7].clone()).await.is_err());
        assert_eq!(
            shard
                .offsets(partitions()[6].clone())
                .await
                .unwrap()
                .log_end,
            Offset(30)
        );
    })
    .unwrap();
}

#[test]
fn a_data_directory_serves_one_process_and_bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Arc::new(Mutex::new(rx));
    let holder = ShardSet::start(config(dir.path(), 1), move |_| {
        let rx = rx.clone();
        async move {
            let _ = rx.lock().unwrap().recv();
        }
    })
    .unwrap();
    let second = ShardSet::start(config(dir.path(), 1), |_| async {});
    let message = second.unwrap_err().to_string();
    assert!(message.contains("another broker"), "{message}");
    tx.send(()).unwrap();
    holder.join().unwrap();

    assert!(ShardSet::start(config(dir.path(), 0), |_| async {}).is_err());
    assert!(ShardSet::start(config(&dir.path().join("missing"), 1), |_| async {}).is_err());
}

/// Cross-shard replies under load: many appends and long-poll waits in flight at once,
/// waits timing out and waits abandoned by their requesters, every answer delivered
/// (`shard::reply`, which replaced `futures` oneshots after a glommio double free).
#[test]
fn cross_shard_replies_arrive_under_concurrent_appends_and_abandoned_waits() {
    let dir = tempfile::tempdir().unwrap();
    on_shard0(config(dir.path(), 2), move |shard| async move {
        let tp = create_on_shard1(&shard).await;
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let (shard, tp) = (shard.clone(), tp.clone());
                glommio::spawn_local(async move {
                    if i % 2 == 0 {
                        let b = BytesMut::from(&batch::encode_test_batch(1, 50, 0)[..]);
                        let info = shard.append(tp, b, LeaderEpoch(0), AckPolicy::Appended);
                        Some(info.await.unwrap().base_offset)
                    } else {
                        // Waits far ahead of the log, some abandoned after 1 ms: their
                        // replies arrive for receivers that are gone.
                        let wait = shard.wait_for_data(
                            tp,
                            Offset(1_000_000),
                            std::time::Duration::from_millis(i % 7),
                        );
                        let abandon = glommio::timer::sleep(std::time::Duration::from_millis(1));
                        futures::pin_mut!(wait, abandon);
                        if let futures::future::Either::Left((answer, _)) =
                            futures::future::select(wait, abandon).await
                        {
                            assert!(!answer.unwrap(), "no data that far ahead");
                        }
                        None
                    }
                })
            })
            .collect();
        let mut offsets: Vec<i64> = Vec::new();
        for task in tasks {
            if let Some(offset) = task.await {
                offsets.push(offset.0);
            }
        }
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..200).collect::<Vec<i64>>(),
            "every append answered once"
        );
    })
    .unwrap();
}

/// A long poll's read from another shard (`read_or_wait`, one round trip): an empty
/// partition answers empty after the wait; a waiting read is woken by an append and
/// answers with it, long before its wait ends; an offset past the end is an error at
/// once, not a wait.
#[test]
fn a_long_poll_read_from_another_shard_waits_for_data_and_returns_it() {
    let dir = tempfile::tempdir().unwrap();
    on_shard0(config(dir.path(), 2), move |shard| async move {
        let tp = create_on_shard1(&shard).await;
        let ms = std::time::Duration::from_millis;

        let started = std::time::Instant::now();
        let empty = shard
            .read_or_wait(tp.clone(), Offset(0), 4096, ms(50))
            .await;
        let empty = empty.unwrap();
        assert_eq!(empty.bytes(), 0);
        assert!(
            started.elapsed() >= ms(40),
            "it waited before answering empty"
        );

        let started = std::time::Instant::now();
        let waiting = {
            let (shard, tp) = (shard.clone(), tp.clone());
            glommio::spawn_local(async move {
                shard.read_or_wait(tp, Offset(0), 1 << 20, ms(30_000)).await
            })
        };
        glommio::timer::sleep(ms(20)).await;
        let b = BytesMut::from(&batch::encode_test_batch(3, 10, 0)[..]);
        shard
            .append(tp.clone(), b, LeaderEpoch(0), AckPolicy::Durable)
            .await
            .unwrap();
        let read = waiting.await.unwrap();
        assert!(
            read.bytes() > 0,
            "the append woke the read, which returned it"
        );
        assert_eq!(read.high_watermark, Offset(3));
        assert!(
            started.elapsed() < ms(10_000),
            "woken by the append, not the timeout"
        );

        let past_end = shard.read_or_wait(tp, Offset(10), 4096, ms(30_000)).await;
        assert!(matches!(
            past_end,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
    })
    .unwrap();
}

/// A shard whose thread dies (a panic) sends no "done" to its peers. They must not wait
/// for it when they stop: its dropped channel ends count as done. Otherwise a signalled
/// broker with one dead shard would never exit.
#[test]
fn a_shard_whose_thread_dies_does_not_keep_the_others_from_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let noticed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = noticed.clone();
    let set = ShardSet::start(config(dir.path(), 2), move |shard| {
        let seen = seen.clone();
        async move {
            if shard.id().0 == 1 {
                panic!("shard 1 dies (on purpose)");
            }
            // Shard 0 learns of it (the broker stops on that).
            for _ in 0..500 {
                if shard.a_peer_died() {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    })
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(set.join()));
    let joined = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("shard 0 stopped although shard 1 had died");
    let error = joined.expect_err("a dead shard is an error").to_string();
    assert!(error.contains("shard thread"), "{error}");
    assert!(noticed.load(std::sync::atomic::Ordering::Relaxed));
}

#[test]
fn on_a_shard_a_roll_queues_retention_and_later_rolls_write_over_the_deleted_files() {
    let dir = tempfile::tempdir().unwrap();
    on_shard0(config(dir.path(), 1), move |shard| async move {
        let tp = TopicPartition::new("recycled", 0);
        let mut config = PartitionConfig::default();
        config.set("segment.bytes", "65536").unwrap();
        config.set("retention.bytes", "131072").unwrap();
        shard.create_partition(tp.clone(), config).await.unwrap();
        let log = shard.local(&tp).unwrap();
        // No retention pass is called here and the periodic one is minutes away: only the
        // pass queued after each seal can delete segments and free their files.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while log.stats().segments_recycled < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "rolls did not recycle: {:?}",
                log.stats()
            );
            let b = BytesMut::from(&batch::encode_test_batch(2, 5000, 1_000)[..]);
            shard
                .append(tp.clone(), b, LeaderEpoch(0), AckPolicy::Durable)
                .await
                .unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let offsets = log.offsets();
        assert!(offsets.log_start > Offset(0));
        assert!(
            log.segment_count() <= 4,
            "retention keeps up with the rolls"
        );
        let read = shard
            .read(tp.clone(), offsets.log_start, 1 << 20)
            .await
            .unwrap();
        assert!(!read.chunks.is_empty());
    })
    .unwrap();
}
