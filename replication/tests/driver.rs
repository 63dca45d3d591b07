//! The driver end to end: three brokers (one thread and one glommio executor each, as a
//! one-shard `spate serve` would run them) replicate a partition over loopback TCP into
//! real engine logs. The leader is killed twice (its executor stops mid-write, its log
//! left unclosed, as after `kill -9`), restarted, and must catch up. At the end every
//! replica's log is identical byte for byte, and every acknowledged acks=all write is at
//! the offset it was acknowledged with.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use spate_engine::batch::{self, BatchHeader, SimpleRecord};
use spate_engine::{
    Offset, PartitionConfig, PartitionLog, ShardId, ShardResources, TopicPartition,
};
use spate_replication::driver::{Acks, DriverError, Replicator, Status};
use spate_replication::replica::ReplicaId;
use spate_replication::wire::PartitionKey;

mod common;

use common::{driver_config, three_brokers, wait_for};

const WRITERS_PER_BROKER: usize = 4;

fn tp() -> TopicPartition {
    TopicPartition::new("replicated", 0)
}

fn key() -> PartitionKey {
    PartitionKey {
        topic: "replicated".into(),
        partition: 0,
    }
}

/// What the test sees of a broker and tells it.
#[derive(Default)]
struct Shared {
    /// Acknowledged writes: (offset, value).
    acked: Mutex<Vec<(i64, String)>>,
    produce: AtomicBool,
    /// Writes refused with NOT_ENOUGH_REPLICAS.
    not_enough: std::sync::atomic::AtomicU64,
    /// Makes every written value unique across brokers and their restarts.
    next_value: std::sync::atomic::AtomicU64,
    statuses: Mutex<BTreeMap<u32, Status>>,
}

struct Broker {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

async fn open_or_create(root: &Path) -> PartitionLog {
    let shard = ShardResources::new(ShardId(0), None);
    let dir = root.join(tp().dir_name());
    if dir.exists() {
        PartitionLog::open(dir, shard).await.expect("reopen")
    } else {
        PartitionLog::create(root, tp(), small_segments(), shard)
            .await
            .expect("create")
    }
}

fn small_segments() -> PartitionConfig {
    let mut c = PartitionConfig::default();
    c.set("segment.bytes", "16384").unwrap();
    c
}

fn start(id: u32, root: PathBuf, addrs: &BTreeMap<u32, SocketAddr>, shared: Arc<Shared>) -> Broker {
    let stop = Arc::new(AtomicBool::new(false));
    let (config, membership) = driver_config(id, addrs);
    let halt = stop.clone();
    let thread = std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move {
                let log = open_or_create(&root).await;
                let driver = Replicator::start(config).expect("start");
                driver
                    .add(key(), log, membership, false)
                    .await
                    .expect("add");
                let writers: Vec<_> = (0..WRITERS_PER_BROKER)
                    .map(|w| {
                        glommio::spawn_local(writer(
                            id,
                            w,
                            driver.clone(),
                            shared.clone(),
                            halt.clone(),
                        ))
                    })
                    .collect();
                while !halt.load(Ordering::SeqCst) {
                    if let Some(status) = driver.status(&key()) {
                        if std::env::var_os("SPATE_DRIVER_TRACE").is_some()
                            && shared.statuses.lock().unwrap().get(&id) != Some(&status)
                        {
                            eprintln!("broker {id}: {status:?}");
                        }
                        shared.statuses.lock().unwrap().insert(id, status);
                    }
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                // A crash: the executor stops with writes in flight and the log unclosed.
                // Stopping the driver closes its sockets, as the end of a process would
                // (an executor that returns does not drop its tasks by itself).
                driver.stop();
                drop(writers);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            });
    });
    Broker { stop, thread }
}

async fn writer(id: u32, w: usize, driver: Replicator, shared: Arc<Shared>, halt: Arc<AtomicBool>) {
    while !halt.load(Ordering::SeqCst) {
        let leads = driver
            .status(&key())
            .is_some_and(|s| s.leader == Some(ReplicaId(id)));
        if !(leads && shared.produce.load(Ordering::SeqCst)) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let unique = shared.next_value.fetch_add(1, Ordering::SeqCst);
        let value = format!("b{id}-w{w}-{unique}");
        let bytes = batch::encode_uncompressed(
            0,
            &[SimpleRecord {
                key: None,
                value: Some(value.as_bytes()),
            }],
        );
        let written = driver
            .write(
                &key(),
                BytesMut::from(&bytes[..]),
                Acks::Quorum { min_insync: 2 },
                // Writer 0 gives up early and writes again, so it is writing when the
                // followers fall out of sync; the others wait for their commit.
                if w == 0 {
                    Duration::from_millis(100)
                } else {
                    Duration::from_secs(5)
                },
            )
            .await;
        match written {
            Ok(info) => shared
                .acked
                .lock()
                .unwrap()
                .push((info.base_offset.0, value)),
            Err(DriverError::NotEnoughReplicas { in_sync, required }) => {
                assert!(in_sync < required);
                shared.not_enough.fetch_add(1, Ordering::SeqCst);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {}
        }
    }
}

fn leader(shared: &Shared, alive: &BTreeSet<u32>) -> Option<(u32, i32)> {
    let statuses = shared.statuses.lock().unwrap();
    statuses
        .iter()
        .filter(|(id, s)| alive.contains(id) && s.leader == Some(ReplicaId(**id)))
        .map(|(id, s)| (*id, s.epoch))
        .max_by_key(|(_, epoch)| *epoch)
}

fn acked(shared: &Shared) -> usize {
    shared.acked.lock().unwrap().len()
}

fn kill(broker: Broker) {
    broker.stop.store(true, Ordering::SeqCst);
    broker.thread.join().unwrap();
}

/// Every batch of the log at `root`, as stored.
fn read_log(root: PathBuf) -> Vec<Vec<u8>> {
    glommio::LocalExecutorBuilder::default()
        .make()
        .unwrap()
        .run(async move {
            let log = open_or_create(&root).await;
            let end = log.offsets().log_end;
            let mut out = Vec::new();
            let mut at = Offset(0);
            while at < end {
                let read = log.read_replicated(at, end, 1 << 20).await.unwrap();
                assert!(read.end > at, "a read makes progress");
                let mut bytes = Vec::new();
                for chunk in &read.chunks {
                    chunk.copy_to(&mut bytes).expect("read a chunk");
                }
                let mut pos = 0;
                while pos < bytes.len() {
                    let h = BatchHeader::parse(&bytes[pos..]).unwrap();
                    out.push(bytes[pos..pos + h.size].to_vec());
                    pos += h.size;
                }
                at = read.end;
            }
            log.close().await.unwrap();
            out
        })
}

/// The value of the one record of a data batch; `None` for a control batch.
fn value_of(stored: &[u8]) -> Option<String> {
    let header = BatchHeader::parse(stored).unwrap();
    if header.is_control() {
        return None;
    }
    let mut values = Vec::new();
    batch::for_each_record(&stored[batch::HEADER_BYTES..], header.record_count, |r| {
        values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
    })
    .unwrap();
    assert_eq!(values.len(), 1);
    values.pop()
}

#[test]
fn three_brokers_keep_every_acknowledged_write_across_leader_crashes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (_dirs, roots, addrs) = three_brokers();
    let shared = Arc::new(Shared::default());
    shared.produce.store(true, Ordering::SeqCst);
    let mut brokers: BTreeMap<u32, Broker> = roots
        .iter()
        .map(|(id, root)| (*id, start(*id, root.clone(), &addrs, shared.clone())))
        .collect();
    let mut alive: BTreeSet<u32> = brokers.keys().copied().collect();

    wait_for("a first leader", Duration::from_secs(20), || {
        leader(&shared, &alive).is_some()
    });
    let mut target = 300;
    wait_for("300 acknowledged writes", Duration::from_secs(60), || {
        acked(&shared) >= target
    });
    for round in 0..2 {
        let (old, old_epoch) = leader(&shared, &alive).expect("a leader");
        kill(brokers.remove(&old).unwrap());
        alive.remove(&old);
        shared.statuses.lock().unwrap().remove(&old);
        eprintln!(
            "killed {old}; statuses {:?}",
            shared.statuses.lock().unwrap()
        );
        wait_for("a new leader", Duration::from_secs(20), || {
            leader(&shared, &alive).is_some_and(|(_, epoch)| epoch > old_epoch)
        });
        target = acked(&shared) + 200;
        wait_for(
            "writes under the new leader",
            Duration::from_secs(60),
            || acked(&shared) >= target,
        );
        brokers.insert(old, start(old, roots[&old].clone(), &addrs, shared.clone()));
        alive.insert(old);
        eprintln!(
            "round {round}: killed {old} (epoch {old_epoch}) and restarted it; {} acknowledged",
            acked(&shared)
        );
    }
    // The leader loses both followers and appends what it can never commit (until
    // check-quorum makes it resign); the followers come back without it and elect a
    // new leader; then it returns and must cut its uncommitted suffix.
    let (lonely, lonely_epoch) = leader(&shared, &alive).expect("a leader");
    let followers: Vec<u32> = alive.iter().copied().filter(|id| *id != lonely).collect();
    for f in &followers {
        kill(brokers.remove(f).unwrap());
        alive.remove(f);
        shared.statuses.lock().unwrap().remove(f);
    }
    wait_for(
        "the cut-off leader to append and resign",
        Duration::from_secs(20),
        || {
            let statuses = shared.statuses.lock().unwrap();
            let s = statuses[&lonely];
            s.log_end > s.commit && s.leader.is_none()
        },
    );
    let suffix = shared.statuses.lock().unwrap()[&lonely];
    // Alone, the leader's followers fall out of sync after the lag time (500 ms, before
    // check-quorum's 600 ms), and acks=all writes with min.insync.replicas = 2 are then
    // refused before anything is appended.
    assert!(
        shared.not_enough.load(Ordering::SeqCst) > 0,
        "writes were refused with NOT_ENOUGH_REPLICAS"
    );
    kill(brokers.remove(&lonely).unwrap());
    alive.remove(&lonely);
    shared.statuses.lock().unwrap().remove(&lonely);
    for f in &followers {
        brokers.insert(*f, start(*f, roots[f].clone(), &addrs, shared.clone()));
        alive.insert(*f);
    }
    wait_for(
        "a leader without the old one",
        Duration::from_secs(20),
        || leader(&shared, &alive).is_some_and(|(_, epoch)| epoch > lonely_epoch),
    );
    target = acked(&shared) + 100;
    wait_for(
        "writes under the new leader",
        Duration::from_secs(60),
        || acked(&shared) >= target,
    );
    brokers.insert(
        lonely,
        start(lonely, roots[&lonely].clone(), &addrs, shared.clone()),
    );
    alive.insert(lonely);
    eprintln!(
        "cut off {lonely} with {} uncommitted records past {:?}; {} acknowledged",
        suffix.log_end.0 - suffix.commit.0,
        suffix.commit,
        acked(&shared)
    );

    // Quiesce: every replica holds the whole log and knows it is committed.
    shared.produce.store(false, Ordering::SeqCst);
    wait_for("all replicas to converge", Duration::from_secs(30), || {
        let statuses = shared.statuses.lock().unwrap();
        let ends: BTreeSet<(Offset, Offset)> =
            statuses.values().map(|s| (s.log_end, s.commit)).collect();
        statuses.len() == 3 && ends.len() == 1 && ends.iter().all(|(end, commit)| end == commit)
    });
    for (_, broker) in std::mem::take(&mut brokers) {
        kill(broker);
    }

    let logs: Vec<Vec<Vec<u8>>> = roots.values().map(|r| read_log(r.clone())).collect();
    assert!(
        logs.iter().all(|l| *l == logs[0]),
        "every replica's log is the same, byte for byte"
    );
    let log = &logs[0];
    let mut at_offset = BTreeMap::new();
    let mut next = 0i64;
    for stored in log {
        let header = BatchHeader::parse(stored).unwrap();
        assert_eq!(header.base_offset.0, next, "offsets are dense");
        next = header.last_offset().next().0;
        if let Some(value) = value_of(stored) {
            assert!(at_offset.insert(header.base_offset.0, value).is_none());
        }
    }
    let values: BTreeSet<&String> = at_offset.values().collect();
    assert_eq!(values.len(), at_offset.len(), "no value is written twice");
    let acked = shared.acked.lock().unwrap();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(offset, value)| at_offset.get(offset) != Some(value))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost or moved: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    let epochs: BTreeSet<i32> = log
        .iter()
        .map(|b| BatchHeader::parse(b).unwrap().leader_epoch.0)
        .collect();
    assert!(epochs.len() >= 4, "four leaders wrote: {epochs:?}");
    eprintln!(
        "{} acknowledged writes, {} batches, epochs {epochs:?}",
        acked.len(),
        log.len()
    );
}
