//! The glommio driver: runs one shard's replicas against the engine's partition logs
//! and real sockets. It is the only part of this crate that does I/O.
//!
//! Each partition's replica is stepped by one event at a time — a tick, a message, a
//! durable report, a client write — under the partition's `step` permit, and the
//! actions of a step are carried out in order before the next step starts. So the
//! engine log and the replica's view of it move together: whenever no step runs, the
//! log's end equals the replica's log end, and the replica's durable end never passes
//! the log's. Sends go to the shard's outbox only once every action before them is
//! done, so a vote or an epoch is durable before any message that depends on it
//! leaves (the order `replica` asks for); the outbox is flushed after every step.
//!
//! Mapping from actions to the engine:
//! - `Append` from a fetch answer: the answer's batches, validated and checked against
//!   the leader's description before the replica sees them, appended byte for byte;
//! - `Append` of the leader's own epoch marker: a one-record control batch;
//! - a client write is appended by the engine first (so idempotent producers' duplicates
//!   are answered without reaching the replica) and only then given to the replica;
//! - `Truncate` cuts the log, `Commit` moves the log's high watermark, `Persist` writes
//!   `quorum-state`; the epoch cache is saved before an append that starts an epoch and
//!   after a truncation (`store`).
//!
//! Not built yet: replica-set changes (a control batch stating the new set, and its
//! replay at recovery) and placement of a partition's replicas on the same shard index
//! of every broker; see `docs/REPLICATION.md`.

mod link;
mod step;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::sync::Semaphore;
use spate_engine::{AckPolicy, AppendInfo, EngineError, LeaderEpoch, Offset, PartitionLog};

use crate::epochs::EpochCache;
use crate::limits::FETCH_RECORDS_MAX;
use crate::outbox::Outbox;
use crate::replica::{Action, Config, Membership, Replica, ReplicaId};
use crate::wire::PartitionKey;
use link::Links;

/// How long a write waiting for the commit index sleeps between checks that its
/// replica still leads (it wakes at once when the high watermark moves).
const COMMIT_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Timeouts of the replicas a driver runs (`replica::Config`).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub election_timeout_ms: u64,
    pub fetch_timeout_ms: u64,
    pub fetch_wait_ms: u64,
    pub check_quorum_ms: u64,
    pub preferred_leader_check_ms: Option<u64>,
    /// How often replicas are ticked.
    pub tick_ms: u64,
    /// A follower that has not caught up with the leader for this long is out of sync
    /// (`replica.lag.time.max.ms`).
    pub replica_lag_ms: u64,
}

impl Default for Timing {
    /// KRaft's defaults (`quorum.election.timeout.ms` 1 s, `quorum.fetch.timeout.ms`
    /// 2 s) and Kafka's `replica.fetch.wait.max.ms` (500 ms).
    fn default() -> Timing {
        Timing {
            election_timeout_ms: 1000,
            fetch_timeout_ms: 2000,
            fetch_wait_ms: 500,
            check_quorum_ms: 2000,
            preferred_leader_check_ms: Some(30_000),
            tick_ms: 10,
            replica_lag_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub broker: ReplicaId,
    /// Where peers connect to this shard.
    pub listen: SocketAddr,
    /// The other brokers' replication addresses.
    pub peers: BTreeMap<ReplicaId, SocketAddr>,
    pub timing: Timing,
}

/// When a client write is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// Once the leader has appended it (acks=1).
    Leader,
    /// Once the quorum commit index passes it (acks=all), and only if at least
    /// `min_insync` replicas, the leader included, are in sync when it is appended
    /// (`min.insync.replicas`; else `NotEnoughReplicas` and nothing is appended).
    Quorum { min_insync: usize },
}

/// Errors of the driver. Replication's other errors (`WireError`, `ChangeError`) come
/// from callers that can get nothing else; these are the ones a client write or a
/// partition's set-up can get.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("this broker does not lead {partition}; the leader is {leader:?}")]
    NotLeader {
        partition: String,
        leader: Option<ReplicaId>,
    },
    #[error("no replica of {0} on this shard")]
    UnknownPartition(String),
    #[error("{in_sync} replicas are in sync, fewer than min.insync.replicas = {required}")]
    NotEnoughReplicas { in_sync: usize, required: usize },
    #[error("the write at offset {offset} was not committed within {waited_ms} ms")]
    Timeout { offset: i64, waited_ms: u64 },
    #[error("{0}")]
    Corrupt(String),
    #[error("cannot listen for peers on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A metadata change that does not apply to the current image.
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
}

/// One partition's replica and log.
#[derive(Debug)]
struct Partition {
    key: PartitionKey,
    log: PartitionLog,
    replica: RefCell<Replica>,
    /// One step at a time (see the module doc).
    step: Semaphore,
    /// The epoch cache as last saved.
    saved_epochs: RefCell<EpochCache>,
    /// Set after an engine failure: the replica no longer matches its log, so it stops.
    failed: Cell<bool>,
    /// The log start last seen, and the base of the batch holding it: looked up again
    /// only when the log start moves.
    start_batch: Cell<Option<(Offset, Offset)>>,
    /// The highest log start a leader has answered this replica with. Its high watermark
    /// may still be below it (just started over, say); it is applied once that allows,
    /// even if this replica leads by then, so records the cluster deleted never
    /// resurface after a failover.
    leader_log_start: Cell<Offset>,
}

/// A shard's replication driver. Cheap to clone; lives on its shard.
#[derive(Clone, Debug)]
pub struct Replicator(Rc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    config: DriverConfig,
    start: Instant,
    partitions: RefCell<BTreeMap<PartitionKey, Rc<Partition>>>,
    outbox: RefCell<Outbox>,
    links: Links,
    stopped: Cell<bool>,
    /// Every task the driver started that holds a socket, by number: `stop` cancels
    /// them, so the sockets close as a killed process's would. None of them steps a
    /// replica (a cancelled step would leave the log half changed). A task removes
    /// itself when it ends.
    tasks: RefCell<BTreeMap<u64, glommio::task::JoinHandle<()>>>,
    next_task: Cell<u64>,
}

/// A replica's state, for tools and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub epoch: i32,
    pub leader: Option<ReplicaId>,
    pub commit: Offset,
    pub log_end: Offset,
}

impl Replicator {
    /// Listens for peers and starts the tick loop and the outbound connections.
    pub fn start(config: DriverConfig) -> Result<Replicator, DriverError> {
        let listener = spate_engine::shard::listen::listen(config.listen).map_err(|e| {
            DriverError::Listen {
                addr: config.listen,
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let shared = Rc::new(Shared {
            outbox: RefCell::new(Outbox::new(config.broker)),
            links: Links::new(config.broker, config.listen),
            config,
            start: Instant::now(),
            partitions: RefCell::new(BTreeMap::new()),
            stopped: Cell::new(false),
            tasks: RefCell::new(BTreeMap::new()),
            next_task: Cell::new(0),
        });
        for (&peer, &addr) in &shared.config.peers {
            shared.links.connect(&shared, peer, addr, true);
        }
        shared.spawn(link::accept_loop(listener, shared.clone()));
        glommio::spawn_local(step::tick_loop(shared.clone())).detach();
        Ok(Replicator(shared))
    }

    /// Where to reach `peer`'s replication listener for this shard, as the metadata
    /// image says: starts a link to it, or moves one learned earlier. A configured
    /// peer's address stays as configured. Returns whether the link is now to `addr`.
    pub fn set_peer(&self, peer: ReplicaId, addr: SocketAddr) -> bool {
        peer == self.0.config.broker || self.0.links.connect(&self.0, peer, addr, false)
    }

    /// Stops the replicas and closes every connection and the listener (the tasks
    /// holding sockets are cancelled; they never run a step). Steps under way finish,
    /// and the tick and durable loops end at their next turn. The partition logs stay
    /// open.
    pub fn stop(&self) {
        self.0.stopped.set(true);
        for (_, task) in std::mem::take(&mut *self.0.tasks.borrow_mut()) {
            task.cancel();
        }
    }

    /// Runs a replica for `log`, whose replica set is `membership`, recovering its vote
    /// and epoch cache from the partition's directory. With `observers`, brokers outside
    /// the set follow the log too (`replica::Config::observers`).
    pub async fn add(
        &self,
        key: PartitionKey,
        log: PartitionLog,
        membership: Membership,
        observers: bool,
    ) -> Result<(), DriverError> {
        let shared = &self.0;
        let recovered = store::recover(&log).await?;
        log.set_replicated();
        let timing = shared.config.timing;
        // Election timeouts must differ between brokers and runs, not repeat.
        let seed = {
            use std::hash::BuildHasher;
            let random = std::collections::hash_map::RandomState::new();
            random.hash_one((&key.topic, key.partition, shared.config.broker.0))
        };
        let config = Config {
            id: shared.config.broker,
            membership,
            election_timeout_ms: timing.election_timeout_ms,
            fetch_timeout_ms: timing.fetch_timeout_ms,
            fetch_wait_ms: timing.fetch_wait_ms,
            check_quorum_ms: timing.check_quorum_ms,
            fetch_records_max: FETCH_RECORDS_MAX,
            preferred_leader_check_ms: timing.preferred_leader_check_ms,
            observers,
            seed,
        };
        let saved_epochs = recovered.epochs.clone();
        let replica = Replica::new(config, recovered, shared.now());
        let partition = Rc::new(Partition {
            key: key.clone(),
            log,
            replica: RefCell::new(replica),
            step: Semaphore::new(1),
            saved_epochs: RefCell::new(saved_epochs),
            failed: Cell::new(false),
            start_batch: Cell::new(None),
            leader_log_start: Cell::new(Offset(0)),
        });
        shared
            .partitions
            .borrow_mut()
            .insert(key, partition.clone());
        glommio::spawn_local(step::durable_loop(shared.clone(), partition)).detach();
        Ok(())
    }

    /// Stops replicating `key` and hands back its log (the caller closes or deletes
    /// it); `None` if it is not here. A step under way finishes first; later writes to
    /// it get `UnknownPartition`.
    pub async fn remove(&self, key: &PartitionKey) -> Option<PartitionLog> {
        let partition = self.0.partitions.borrow_mut().remove(key)?;
        // Waits out a step under way; the permit is never given back, so no step follows.
        let _step = partition.step.acquire_permit(1).await;
        partition.failed.set(true);
        partition.step.close();
        Some(partition.log.clone())
    }

    /// The keys of the partitions replicated here.
    pub fn keys(&self) -> Vec<PartitionKey> {
        self.0.partitions.borrow().keys().cloned().collect()
    }

    /// OffsetForLeaderEpoch from a replica's epoch cache: the largest epoch at most
    /// `epoch` and where it ends; `Ok(None)` when every epoch here is newer.
    pub fn epoch_end(
        &self,
        key: &PartitionKey,
        epoch: LeaderEpoch,
    ) -> Result<Option<(LeaderEpoch, Offset)>, DriverError> {
        let partition = self.0.partition(key)?;
        let replica = partition.replica.borrow();
        Ok(replica.epochs().end_of(epoch, replica.log_end()))
    }

    /// The leader epoch of the record at `offset` in `key`'s replica (ListOffsets).
    pub fn epoch_at(
        &self,
        key: &PartitionKey,
        offset: Offset,
    ) -> Result<Option<LeaderEpoch>, DriverError> {
        let partition = self.0.partition(key)?;
        let replica = partition.replica.borrow();
        Ok(replica.epochs().epoch_at(offset))
    }

    /// This broker's id.
    pub fn broker(&self) -> ReplicaId {
        self.0.config.broker
    }

    /// Whether `stop` was called.
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.get()
    }

    /// A replica's state.
    pub fn status(&self, key: &PartitionKey) -> Option<Status> {
        let partition = self.0.partitions.borrow().get(key).cloned()?;
        let replica = partition.replica.borrow();
        Some(Status {
            epoch: replica.epoch().0,
            leader: replica.leader(),
            commit: replica.commit_index(),
            log_end: replica.log_end(),
        })
    }

    /// The in-sync replicas of a partition this broker leads (Kafka's ISR); `None` when
    /// it does not lead it.
    pub fn in_sync(&self, key: &PartitionKey) -> Option<Vec<ReplicaId>> {
        let partition = self.0.partitions.borrow().get(key).cloned()?;
        let lag = self.0.config.timing.replica_lag_ms;
        let isr = partition.replica.borrow().in_sync(self.0.now(), lag);
        isr
    }

    /// A client write to the leader: appends the batch in the leader's epoch and
    /// answers per `acks`, waiting at most `timeout` for the commit index.
    pub async fn write(
        &self,
        key: &PartitionKey,
        batch: BytesMut,
        acks: Acks,
        timeout: Duration,
    ) -> Result<AppendInfo, DriverError> {
        self.write_in(key, batch, acks, timeout, None).await
    }

    /// `write`, refused as `NotLeader` unless the replica leads in `epoch` (when given):
    /// for a writer whose state belongs to one leadership, so that it never appends in
    /// a later one (a broker that lost and regained leadership meanwhile).
    pub async fn write_in(
        &self,
        key: &PartitionKey,
        batch: BytesMut,
        acks: Acks,
        timeout: Duration,
        epoch: Option<LeaderEpoch>,
    ) -> Result<AppendInfo, DriverError> {
        let shared = &self.0;
        let partition = shared.partition(key)?;
        let (info, epoch) = {
            let _step = partition
                .step
                .acquire_permit(1)
                .await
                .map_err(|_| not_leader(&partition.key, None))?;
            let epoch = {
                let replica = partition.replica.borrow();
                let stopped = shared.stopped.get() || partition.failed.get();
                let other_epoch = epoch.is_some_and(|e| e != replica.epoch());
                if stopped || !replica.is_leader() || replica.transferring() || other_epoch {
                    return Err(not_leader(&partition.key, replica.leader()));
                }
                if let Acks::Quorum { min_insync } = acks {
                    let lag = shared.config.timing.replica_lag_ms;
                    let in_sync = replica.in_sync(shared.now(), lag).map_or(0, |r| r.len());
                    if in_sync < min_insync {
                        return Err(DriverError::NotEnoughReplicas {
                            in_sync,
                            required: min_insync,
                        });
                    }
                }
                replica.epoch()
            };
            let info = partition
                .log
                .append(batch, epoch, AckPolicy::Appended)
                .await?;
            let fresh = info.base_offset == partition.replica.borrow().log_end();
            if fresh {
                let records = (info.last_offset.0 - info.base_offset.0 + 1) as u32;
                let (base, actions) = partition
                    .replica
                    .borrow_mut()
                    .write(shared.now(), records)
                    .expect("the replica leads: nothing stepped it since the check");
                assert_eq!(
                    base, info.base_offset,
                    "the log and its replica agree on offsets"
                );
                // The engine appended the batch already.
                let actions = actions
                    .into_iter()
                    .filter(|a| !matches!(a, Action::Append { .. }))
                    .collect();
                shared.execute(&partition, actions, None).await;
            }
            (info, epoch)
        };
        if matches!(acks, Acks::Quorum { .. }) {
            shared
                .await_commit(&partition, info.last_offset, epoch, timeout)
                .await?;
        }
        Ok(info)
    }
}

fn not_leader(key: &PartitionKey, leader: Option<ReplicaId>) -> DriverError {
    DriverError::NotLeader {
        partition: format!("{}-{}", key.topic, key.partition),
        leader,
    }
}

impl Shared {
    /// Starts a socket task that `stop` cancels.
    fn spawn(self: &Rc<Self>, task: impl std::future::Future<Output = ()> + 'static) {
        let id = self.next_task.get();
        self.next_task.set(id + 1);
        let shared = Rc::downgrade(self);
        let handle = glommio::spawn_local(async move {
            task.await;
            if let Some(shared) = shared.upgrade() {
                shared.tasks.borrow_mut().remove(&id);
            }
        })
        .detach();
        if !self.stopped.get() {
            self.tasks.borrow_mut().insert(id, handle);
        } else {
            handle.cancel();
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn partition(&self, key: &PartitionKey) -> Result<Rc<Partition>, DriverError> {
        self.partitions.borrow().get(key).cloned().ok_or_else(|| {
            DriverError::UnknownPartition(format!("{}-{}", key.topic, key.partition))
        })
    }

    /// Waits until the commit index passes `last`, while the replica still leads in
    /// `epoch` (a new leader may or may not keep the write: the client must retry).
    async fn await_commit(
        &self,
        partition: &Partition,
        last: Offset,
        epoch: LeaderEpoch,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            if partition.log.offsets().high_watermark > last {
                return Ok(());
            }
            {
                let replica = partition.replica.borrow();
                let gone = partition.log.failure().is_some() || partition.log.is_closing();
                if gone
                    || partition.failed.get()
                    || !replica.is_leader()
                    || replica.epoch() != epoch
                {
                    return Err(not_leader(&partition.key, replica.leader()));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DriverError::Timeout {
                    offset: last.0,
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            let slice = COMMIT_CHECK_INTERVAL.min(deadline - now);
            partition.log.wait_for_data(last, slice).await;
        }
    }
}
