//! The metadata quorum end to end: three brokers (one thread and one glommio executor
//! each) run `__cluster_metadata-0` through the driver. Whoever leads registers the
//! brokers and creates the topics the test asks for, placed by `placement::assign`;
//! every broker's image must converge on the same topics and assignments, across a
//! leader crash, and a restarted broker must come back from its snapshot plus the log.
//! A fourth broker, not a voter and not known to the voters, observes the log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{driver_config, free_port, three_brokers, wait_for};
use spate_engine::{ShardId, ShardResources};
use spate_replication::driver::Replicator;
use spate_replication::metadata::placement;
use spate_replication::metadata::{MetadataImage, MetadataQuorum, MetadataRecord, SNAPSHOT_FILE};
use spate_replication::replica::{Membership, ReplicaId};

/// What the test asks for and sees.
#[derive(Default)]
struct Shared {
    /// Topics to create, with partitions and replication factor.
    wanted: Mutex<Vec<(String, u32, u32)>>,
    /// Each live broker's image, and whether it leads.
    images: Mutex<BTreeMap<u32, (MetadataImage, bool)>>,
    /// Proposals refused because they did not apply (must stay empty: the leader checks
    /// against its image, which has everything before).
    refused: Mutex<Vec<String>>,
}

struct Broker {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts broker `id`: a voter if `addrs` (the voters) names it, else an observer
/// listening at `own`, which the voters are not told of.
fn start(id: u32, root: PathBuf, addrs: &BTreeMap<u32, SocketAddr>, shared: Arc<Shared>) -> Broker {
    start_at(id, root, addrs, addrs[&id], shared)
}

fn start_at(
    id: u32,
    root: PathBuf,
    addrs: &BTreeMap<u32, SocketAddr>,
    own: SocketAddr,
    shared: Arc<Shared>,
) -> Broker {
    let stop = Arc::new(AtomicBool::new(false));
    let mut everyone = addrs.clone();
    everyone.insert(id, own);
    let (config, _) = driver_config(id, &everyone);
    let voters = Membership::new(addrs.keys().map(|v| ReplicaId(*v)).collect(), vec![]).unwrap();
    let halt = stop.clone();
    let brokers: Vec<u32> = addrs.keys().copied().collect();
    let thread = std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move {
                let driver = Replicator::start(config).expect("driver");
                let shard = ShardResources::new(ShardId(0), None);
                let quorum =
                    MetadataQuorum::start(&driver, &root, shard, voters, "test-cluster", 2)
                        .await
                        .expect("quorum");
                while !halt.load(Ordering::SeqCst) {
                    let image = quorum.image();
                    let leads = quorum.is_leader();
                    shared
                        .images
                        .lock()
                        .unwrap()
                        .insert(id, (image.clone(), leads));
                    if leads {
                        if let Some(records) = next_change(&image, &brokers, &shared) {
                            if let Err(e) = quorum.propose(records).await {
                                if matches!(e, spate_replication::driver::DriverError::Metadata(_))
                                {
                                    shared.refused.lock().unwrap().push(e.to_string());
                                }
                                // Lost leadership, or timed out: look again shortly.
                                glommio::timer::sleep(Duration::from_millis(10)).await;
                            }
                            continue;
                        }
                    }
                    assert!(
                        quorum.stuck().is_none(),
                        "broker {id}: {:?}",
                        quorum.stuck()
                    );
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                driver.stop();
                glommio::timer::sleep(Duration::from_millis(50)).await;
            });
    });
    Broker { stop, thread }
}

/// What the leader should propose next: registrations, then wanted topics.
fn next_change(
    image: &MetadataImage,
    brokers: &[u32],
    shared: &Shared,
) -> Option<Vec<MetadataRecord>> {
    let unregistered: Vec<MetadataRecord> = brokers
        .iter()
        .filter(|b| !image.brokers.contains_key(b))
        .map(|b| MetadataRecord::RegisterBroker {
            id: *b,
            host: "127.0.0.1".into(),
            port: 9000 + *b as u16,
        })
        .collect();
    if !unregistered.is_empty() {
        return Some(unregistered);
    }
    let wanted = shared.wanted.lock().unwrap().clone();
    let (name, partitions, rf) = wanted
        .into_iter()
        .find(|(n, _, _)| !image.topics.contains_key(n))?;
    let registered: Vec<u32> = image.brokers.keys().copied().collect();
    let placed: u32 = image
        .topics
        .values()
        .map(|t| t.assignments.len() as u32)
        .sum();
    let assignments = placement::assign(&registered, 0, partitions, rf, placed).ok()?;
    Some(vec![MetadataRecord::CreateTopic {
        name: name.clone(),
        id: [name.len() as u8; 16],
        configs: vec![],
        assignments,
    }])
}

fn kill(broker: Broker) {
    broker.stop.store(true, Ordering::SeqCst);
    broker.thread.join().expect("a broker thread panicked");
}

fn want(shared: &Shared, name: &str, partitions: u32, rf: u32) {
    shared
        .wanted
        .lock()
        .unwrap()
        .push((name.into(), partitions, rf));
}

/// Every broker in `alive` has every wanted topic, and all their images agree.
fn converged(shared: &Shared, alive: &BTreeSet<u32>) -> bool {
    let wanted: Vec<String> = shared
        .wanted
        .lock()
        .unwrap()
        .iter()
        .map(|w| w.0.clone())
        .collect();
    let images = shared.images.lock().unwrap();
    let views: Vec<&MetadataImage> = alive
        .iter()
        .filter_map(|id| images.get(id).map(|(i, _)| i))
        .collect();
    views.len() == alive.len()
        && views
            .iter()
            .all(|i| wanted.iter().all(|w| i.topics.contains_key(w)))
        && views
            .iter()
            .all(|i| i.topics == views[0].topics && i.brokers == views[0].brokers)
}

fn leader(shared: &Shared, alive: &BTreeSet<u32>) -> Option<u32> {
    let images = shared.images.lock().unwrap();
    alive
        .iter()
        .copied()
        .find(|id| images.get(id).is_some_and(|(_, leads)| *leads))
}

#[test]
fn three_brokers_agree_on_topics_across_a_controller_crash_and_restart_from_a_snapshot() {
    let (_dirs, roots, addrs) = three_brokers();
    let shared = Arc::new(Shared::default());
    let mut brokers: BTreeMap<u32, Broker> = roots
        .iter()
        .map(|(id, root)| (*id, start(*id, root.clone(), &addrs, shared.clone())))
        .collect();
    // The observer knows the voters; they learn its address from its hello.
    let observer_dir = tempfile::tempdir().unwrap();
    let observer_addr = free_port();
    let observer = start_at(
        4,
        observer_dir.path().to_path_buf(),
        &addrs,
        observer_addr,
        shared.clone(),
    );
    let mut alive: BTreeSet<u32> = brokers.keys().copied().collect();
    alive.insert(4);

    want(&shared, "orders", 6, 3);
    want(&shared, "clicks", 4, 2);
    wait_for("two topics everywhere", Duration::from_secs(30), || {
        converged(&shared, &alive)
    });
    let first = leader(&shared, &alive).expect("a controller");
    kill(brokers.remove(&first).unwrap());
    alive.remove(&first);
    shared.images.lock().unwrap().remove(&first);
    want(&shared, "payments", 3, 3);
    wait_for(
        "a topic created by the next controller",
        Duration::from_secs(30),
        || converged(&shared, &alive),
    );
    brokers.insert(
        first,
        start(first, roots[&first].clone(), &addrs, shared.clone()),
    );
    alive.insert(first);
    want(&shared, "audit", 2, 1);
    wait_for(
        "all four topics on all three brokers",
        Duration::from_secs(30),
        || converged(&shared, &alive),
    );

    let image = shared.images.lock().unwrap()[&first].0.clone();
    assert_eq!(image.brokers.len(), 3);
    let orders = &image.topics["orders"].assignments;
    assert_eq!(orders.len(), 6);
    let leaders: BTreeSet<u32> = orders.iter().map(|r| r[0]).collect();
    assert_eq!(
        leaders.len(),
        3,
        "preferred leaders spread over the brokers: {orders:?}"
    );
    assert!(image.topics["clicks"]
        .assignments
        .iter()
        .all(|r| r.len() == 2));
    assert!(
        shared.refused.lock().unwrap().is_empty(),
        "{:?}",
        shared.refused.lock().unwrap()
    );
    assert!(
        !shared.images.lock().unwrap()[&4].1,
        "an observer never leads"
    );
    for (_, broker) in std::mem::take(&mut brokers) {
        kill(broker);
    }
    kill(observer);
    // Every broker wrote snapshots (one every two records), and a snapshot read back is
    // a prefix of the final image.
    for root in roots.values() {
        let bytes = std::fs::read(root.join("__cluster_metadata-0").join(SNAPSHOT_FILE))
            .expect("a snapshot");
        let snapshot = MetadataImage::decode_snapshot(&bytes).expect("a valid snapshot");
        assert!(snapshot.applied > 0);
        assert!(snapshot.topics.keys().all(|t| image.topics.contains_key(t)));
    }
}
