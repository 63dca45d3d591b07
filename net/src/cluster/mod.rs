//! Cluster mode: a broker of a cluster whose metadata quorum's voters are `--voters`,
//! replicating its partitions with its peers (`spate serve --voters`). A broker whose
//! id is not among the voters observes the metadata log instead of voting on it
//! (`replica::Config::observers`) and holds partition replicas like any other; the
//! voters learn its replication address from its `Hello` and its registration. A
//! cluster of one is the same code path with one voter.
//!
//! Each shard runs a `Replicator` listening for peers at the peer port plus its shard
//! index, and connects to the same shard index of every other broker: partition `tp`
//! lives on shard `default_shard(tp)` everywhere, so brokers must run the same number
//! of shards. Shard 0 also runs the metadata quorum (`__cluster_metadata-0`, under
//! `<data>/cluster-metadata/`); its leader is the controller.
//!
//! What flows where, all on the control mesh inside a broker:
//! - shard 0 publishes each newly applied `MetadataImage` to every shard with the topic
//!   catalog derived from it (`publish_loop`); every shard then brings its replicas in
//!   line with the image (`reconcile`): it creates and adds the partitions it owns a
//!   replica of, and removes those the image no longer has;
//! - every shard sends the leadership of its partitions (leader, epoch, and on the
//!   leader its in-sync replicas) to every other shard when it changes, so Metadata and
//!   Fetch on any shard answer from a local copy (`views`);
//! - produce and OffsetForLeaderEpoch run on the partition's owning shard (`replicated`);
//! - shard 0 reports the partitions this broker leads to the controller, which records
//!   them in the metadata log, so brokers without a replica name their leaders too
//!   (`leaders`).
//!
//! Invariants: a partition's log is appended to only through its shard's `Replicator`
//! once it is added there; a partition is deleted only when an image this broker
//! applied drops it (never because an image that is still catching up lacks it).

pub mod admin;
pub mod leaders;
pub mod reconcile;
pub mod register;
pub mod replicated;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use spate_engine::TopicPartition;
use spate_replication::driver::{DriverConfig, Replicator, Timing};
use spate_replication::metadata::{MetadataImage, MetadataQuorum, METADATA_TOPIC};
use spate_replication::replica::{Membership, ReplicaId};
use spate_replication::wire::PartitionKey;

use crate::node::Node;

/// The metadata log's directory under the data directory: apart from the partitions,
/// so the engine never opens it as a topic.
pub const METADATA_DIR: &str = "cluster-metadata";
/// Applied metadata records between two snapshots of the image.
const SNAPSHOT_EVERY: u64 = 1000;

/// Settings of cluster mode.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Where shard 0 listens for peers; shard i listens at the port plus i.
    pub peer_listen: SocketAddr,
    /// Every voter's id and peer address, this broker's included if it is a voter.
    pub voters: BTreeMap<u32, SocketAddr>,
    /// The same on every broker of the cluster.
    pub cluster_id: String,
    pub timing: Timing,
    /// Replicas of a topic created without a replication factor
    /// (`default.replication.factor`).
    pub default_replication_factor: u32,
}

/// Where shard `shard` of the broker whose shard 0 is at `base` listens for peers.
pub fn shard_address(base: SocketAddr, shard: usize) -> Option<SocketAddr> {
    let port = u16::try_from(usize::from(base.port()) + shard).ok()?;
    Some(SocketAddr::new(base.ip(), port))
}

/// Who leads a partition, as its owning shard last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderView {
    pub leader: Option<u32>,
    pub epoch: i32,
    /// The in-sync replicas, known only where the partition is led.
    pub isr: Option<Vec<u32>>,
}

/// The partitions of one shard and their leadership.
pub type Views = Arc<BTreeMap<TopicPartition, LeaderView>>;

/// One shard's part of cluster mode.
#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    pub replicator: Replicator,
    /// This shard's index: its peers listen at their shard 0's port plus it.
    shard: usize,
    /// On shard 0 only.
    pub quorum: Option<MetadataQuorum>,
    image: RefCell<Arc<MetadataImage>>,
    /// Indexed by shard: the leadership of that shard's partitions.
    views: RefCell<Vec<Views>>,
    /// On shard 0: producer ids taken from the metadata log and not yet handed out,
    /// `[next, end)`.
    pub(crate) producer_ids: Cell<(i64, i64)>,
    /// One refill of `producer_ids` at a time: callers that find the block empty wait
    /// for it instead of each taking a block (and, off the controller, a thread).
    pub(crate) refilling: glommio::sync::Semaphore,
}

pub fn key_of(tp: &TopicPartition) -> PartitionKey {
    PartitionKey {
        topic: tp.topic.to_string(),
        partition: tp.partition.0,
    }
}

pub fn metadata_partition() -> TopicPartition {
    TopicPartition::new(METADATA_TOPIC, 0)
}

impl Cluster {
    /// Starts this shard's replicator, and on shard 0 the metadata quorum.
    pub async fn start(node: &Rc<Node>, config: ClusterConfig) -> Result<Rc<Cluster>, String> {
        let shard = node.shard.id().index();
        let me = u32::try_from(node.config.node_id)
            .map_err(|_| format!("node id {} is not a voter id", node.config.node_id))?;
        let address = |base| {
            shard_address(base, shard)
                .ok_or_else(|| format!("peer port of {base} plus shard {shard} is past 65535"))
        };
        let peers = config
            .voters
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, base)| Ok((ReplicaId(*id), address(*base)?)))
            .collect::<Result<_, String>>()?;
        let replicator = Replicator::start(DriverConfig {
            broker: ReplicaId(me),
            listen: address(config.peer_listen)?,
            peers,
            timing: config.timing,
        })
        .map_err(|e| e.to_string())?;
        let quorum = if shard == 0 {
            let voters = config.voters.keys().map(|id| ReplicaId(*id)).collect();
            let voters = Membership::new(voters, Vec::new())?;
            let root = node.config.data_dir.join(METADATA_DIR);
            std::fs::create_dir_all(&root)
                .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
            let quorum = MetadataQuorum::start(
                &replicator,
                &root,
                node.shard.resources(),
                voters,
                &config.cluster_id,
                SNAPSHOT_EVERY,
            )
            .await
            .map_err(|e| format!("cannot start the metadata quorum: {e}"))?;
            Some(quorum)
        } else {
            None
        };
        let image = MetadataImage::new(&config.cluster_id);
        Ok(Rc::new(Cluster {
            config,
            replicator,
            shard,
            quorum,
            image: RefCell::new(Arc::new(image)),
            views: RefCell::new(vec![Views::default(); node.shard.shard_count()]),
            producer_ids: Cell::new((0, 0)),
            refilling: glommio::sync::Semaphore::new(1),
        }))
    }

    /// This broker's id.
    pub fn me(&self) -> u32 {
        self.replicator.broker().0
    }

    /// The image this shard last received.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Takes a newer image, and links to the replication addresses it names.
    pub(crate) fn set_image(&self, image: Arc<MetadataImage>) {
        for (id, broker) in &image.brokers {
            let Some(peer) = broker.peer.as_deref() else {
                continue;
            };
            let address = peer.parse().ok().and_then(|a| shard_address(a, self.shard));
            match address {
                Some(address) => {
                    self.replicator.set_peer(ReplicaId(*id), address);
                }
                None => {
                    tracing::warn!(broker = id, %peer, "a registered replication address is not IP:PORT")
                }
            }
        }
        *self.image.borrow_mut() = image;
    }

    /// Whether `id` is a broker of this cluster: a voter, or registered.
    pub fn is_broker(&self, id: u32) -> bool {
        self.config.voters.contains_key(&id) || self.image().brokers.contains_key(&id)
    }

    /// The brokers of this cluster as far as this shard knows: voters and registered.
    pub fn broker_count(&self) -> usize {
        let image = self.image();
        let others = image
            .brokers
            .keys()
            .filter(|id| !self.config.voters.contains_key(id));
        self.config.voters.len() + others.count()
    }

    /// Where this broker's shard 0 takes replication traffic, as peers reach it.
    pub fn peer_address(&self) -> SocketAddr {
        self.config.peer_address(self.me())
    }

    pub(crate) fn set_views(&self, shard: usize, views: Views) {
        if let Some(slot) = self.views.borrow_mut().get_mut(shard) {
            *slot = views;
        }
    }

    /// Every partition with a replica on this broker that this broker leads, and the
    /// epoch, from every shard's views.
    pub fn led_here(&self) -> BTreeMap<TopicPartition, i32> {
        let me = Some(self.me());
        self.views
            .borrow()
            .iter()
            .flat_map(|views| views.iter())
            .filter(|(_, view)| view.leader == me)
            .map(|(tp, view)| (tp.clone(), view.epoch))
            .collect()
    }

    /// The leadership of `tp` as its owning shard on this broker last reported it;
    /// `None` if this broker holds no replica of it.
    pub fn view(&self, owner: usize, tp: &TopicPartition) -> Option<LeaderView> {
        self.views.borrow().get(owner)?.get(tp).cloned()
    }

    /// The leader and epoch of `tp` as `view` has them, without copying the ISR (for
    /// the fetch path).
    pub fn leader_of(&self, owner: usize, tp: &TopicPartition) -> Option<(Option<u32>, i32)> {
        let views = self.views.borrow();
        let view = views.get(owner)?.get(tp)?;
        Some((view.leader, view.epoch))
    }

    /// The controller (the metadata quorum's leader), if one is known.
    pub fn controller(&self) -> Option<u32> {
        self.view(0, &metadata_partition())?.leader
    }
}

/// Whether this broker may answer a client's read of `tp` as its leader, given the
/// leader epoch the client knows (-1: none): `None` if it may, else the error that
/// sends the client to refresh its metadata (Kafka's rules: an older epoch is fenced,
/// a newer one is not known here yet). On a single broker the only epoch is 0.
pub fn leader_check(
    node: &Node,
    tp: &TopicPartition,
    current_leader_epoch: i32,
) -> Option<kafka_protocol::ResponseError> {
    use kafka_protocol::ResponseError;
    let Some(cluster) = node.cluster() else {
        return (current_leader_epoch > 0).then_some(ResponseError::UnknownLeaderEpoch);
    };
    let owner = node.shard.owner(tp).index();
    match cluster.leader_of(owner, tp) {
        Some((leader, epoch)) if leader == Some(cluster.me()) => {
            if current_leader_epoch >= 0 && current_leader_epoch < epoch {
                Some(ResponseError::FencedLeaderEpoch)
            } else if current_leader_epoch > epoch {
                Some(ResponseError::UnknownLeaderEpoch)
            } else {
                None
            }
        }
        _ if has_partition(&node.catalog(), tp) => Some(ResponseError::NotLeaderOrFollower),
        _ => Some(ResponseError::UnknownTopicOrPartition),
    }
}

/// Whether the cluster's topics include partition `tp`.
pub fn has_partition(catalog: &spate_engine::catalog::Catalog, tp: &TopicPartition) -> bool {
    catalog
        .topics
        .get(&*tp.topic)
        .is_some_and(|t| (0..t.partitions).contains(&tp.partition.0))
}

impl ClusterConfig {
    /// Where broker `me`'s shard 0 takes replication traffic, as peers reach it: its
    /// address in `voters` if it is one, else where it listens.
    pub fn peer_address(&self, me: u32) -> SocketAddr {
        self.voters.get(&me).copied().unwrap_or(self.peer_listen)
    }

    /// Cluster mode with the replication timeouts' defaults. `cluster_id` defaults to
    /// one derived from the voters, so brokers given the same voters agree on it.
    pub fn new(
        peer_listen: SocketAddr,
        voters: BTreeMap<u32, SocketAddr>,
        cluster_id: Option<String>,
        default_replication_factor: u32,
    ) -> ClusterConfig {
        let cluster_id = cluster_id.unwrap_or_else(|| derived_cluster_id(&voters));
        ClusterConfig {
            peer_listen,
            voters,
            cluster_id,
            timing: Timing::default(),
            default_replication_factor,
        }
    }
}

/// A cluster id from the voters' ids and addresses (stable across builds: CRC-32C).
fn derived_cluster_id(voters: &BTreeMap<u32, SocketAddr>) -> String {
    let text: String = voters.iter().map(|(id, a)| format!("{id}@{a},")).collect();
    let low = crc32c::crc32c(text.as_bytes());
    let high = crc32c::crc32c_append(low, text.as_bytes());
    format!("spate-{high:08x}{low:08x}")
}

/// Parses `--voters`: `ID@HOST:PORT` entries separated by commas, the peer address of
/// each voter's shard 0. Ids are distinct, and so are addresses.
pub fn parse_voters(text: &str) -> Result<BTreeMap<u32, SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let mut voters = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let invalid = |why: &str| format!("invalid voter '{entry}': {why} (expected ID@HOST:PORT)");
        let (id, address) = entry.split_once('@').ok_or_else(|| invalid("no '@'"))?;
        // Kafka's broker ids are non-negative i32s.
        let id: u32 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| i32::try_from(*id).is_ok())
            .ok_or_else(|| invalid("the id is not a number from 0 to 2147483647"))?;
        let address = address
            .to_socket_addrs()
            .map_err(|e| invalid(&e.to_string()))?
            .next()
            .ok_or_else(|| invalid("the address resolves to nothing"))?;
        if voters.values().any(|a| *a == address) {
            return Err(invalid("another voter has this address"));
        }
        if voters.insert(id, address).is_some() {
            return Err(invalid("the id is given twice"));
        }
    }
    if voters.is_empty() {
        return Err("--voters names no voter".into());
    }
    Ok(voters)
}
