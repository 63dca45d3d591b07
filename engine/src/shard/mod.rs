//! Shards: one pinned glommio executor per core, each exclusively owning its partitions.
//!
//! `ShardSet::start` reads the placement table, locks the data directory, and starts one
//! thread per shard. Each shard joins a full mesh of bounded channels
//! (`SHARD_CHANNEL_CAPACITY` each), opens the partitions it owns, and runs the caller's
//! body (the server, a test, a benchmark) with a [`Shard`] handle. Calls on a `Shard` for
//! a partition owned elsewhere travel the mesh as a request with a reply channel
//! ([`reply`]: replies come back over a second mesh, so no task's waker is ever touched
//! by another thread); the owner runs it on its latency queue. Nothing is shared between
//! shards but the immutable placement table.
//!
//! Two task queues per shard: *latency* (appends, reads, mesh requests) and *background*
//! (flushers, sealing, retention, checkpoints), so background I/O submission never
//! delays a request for long.
//!
//! Shutdown: when a shard's body returns it tells every peer, keeps serving their
//! requests until all peers have said the same, then closes its partitions cleanly.

pub mod channels;
pub mod cores;
pub mod listen;
mod mesh;
pub mod reply;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::channel::oneshot;
use glommio::{Latency, LocalExecutorBuilder, Shares, TaskQueueHandle};

use crate::config::{AckPolicy, PartitionConfig};
use crate::error::{EngineError, Result};
use crate::limits::{SHARDS_MAX, SHARD_CHANNEL_CAPACITY, SHARD_PARTITIONS_MAX};
use crate::log::{
    AppendInfo, LogOffsets, PartitionLog, ReadResult, RetentionOutcome, ShardResources,
};
use crate::placement::{ExistingPartition, Placement};
use crate::types::{LeaderEpoch, Offset, ShardId, Timestamp, TopicPartition};
use channels::{Mesh, MeshEnds, Senders};
pub use cores::CoreSet;
pub use mesh::Message;
use mesh::Request;

/// How to run the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory holding one sub-directory per partition. Must exist.
    pub data_dir: PathBuf,
    /// Number of shards (cores); 1 to `SHARDS_MAX`.
    pub shard_count: usize,
    /// The cores the shards are pinned to (production: shard i on core i); tests leave
    /// them unpinned to share cores freely.
    pub cores: CoreSet,
    /// How often each shard applies retention (Kafka's `log.retention.check.interval.ms`).
    pub retention_check_interval: Duration,
    /// How often each shard writes recovery checkpoints.
    pub checkpoint_interval: Duration,
    /// How often each shard looks for compacted partitions due a cleaning pass (Kafka's
    /// `log.cleaner.backoff.ms`).
    pub cleaner_interval: Duration,
    /// Bytes a second each shard's cleaning passes may read and write (Kafka's
    /// `log.cleaner.io.max.bytes.per.second`); unlimited if `None`.
    pub cleaner_io_bytes_per_sec: Option<u64>,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>, shard_count: usize) -> EngineConfig {
        EngineConfig {
            data_dir: data_dir.into(),
            shard_count,
            cores: CoreSet::All,
            retention_check_interval: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(60),
            cleaner_interval: Duration::from_secs(15),
            cleaner_io_bytes_per_sec: None,
        }
    }
}

/// The running shards. `join` waits for them all.
#[derive(Debug)]
pub struct ShardSet {
    threads: Vec<glommio::ExecutorJoinHandle<Result<()>>>,
    _lock: std::fs::File,
}

impl ShardSet {
    /// Starts every shard running `body`. Errors here (bad config, data directory missing
    /// or locked by another process) happen before any thread starts.
    pub fn start<F, Fut>(config: EngineConfig, body: F) -> Result<ShardSet>
    where
        F: Fn(Shard) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        if config.shard_count == 0 || config.shard_count > SHARDS_MAX {
            return Err(EngineError::InvalidConfig {
                key: "shards".into(),
                value: config.shard_count.to_string(),
                reason: format!("must be between 1 and {SHARDS_MAX}"),
            });
        }
        let lock = lock_data_dir(&config.data_dir)?;
        let (placement, existing) = Placement::load(&config.data_dir, config.shard_count)?;
        let placement = Arc::new(placement);
        let mesh = Mesh::<Message>::full(config.shard_count, SHARD_CHANNEL_CAPACITY);
        let doorbells = Mesh::<reply::Doorbell>::full(config.shard_count, SHARD_CHANNEL_CAPACITY);
        let machine = cores::machine_cores();
        let mut threads = Vec::with_capacity(config.shard_count);
        for index in 0..config.shard_count {
            let id = ShardId(index as u16);
            let owned: Vec<ExistingPartition> =
                existing.iter().filter(|p| p.shard == id).cloned().collect();
            let placement_for_cpu = match config.cores.core_for(index, &machine) {
                Some(core) => glommio::Placement::Fixed(core),
                None => glommio::Placement::Unbound,
            };
            let (config, placement, body) = (config.clone(), placement.clone(), body.clone());
            let ends = (
                mesh.claim(index).expect("each shard claims its ends once"),
                doorbells
                    .claim(index)
                    .expect("each shard claims its ends once"),
            );
            let thread =
                LocalExecutorBuilder::new(placement_for_cpu)
                    .name(&format!("spate-shard-{index}"))
                    .spawn(move || async move {
                        run_shard(id, config, placement, ends, owned, body).await
                    })
                    .map_err(|e| EngineError::io("start shard thread", "", e.into()))?;
            threads.push(thread);
        }
        Ok(ShardSet {
            threads,
            _lock: lock,
        })
    }

    /// Waits for every shard to finish; the first error wins.
    pub fn join(self) -> Result<()> {
        let mut first = Ok(());
        for thread in self.threads {
            let outcome = match thread.join() {
                Ok(result) => result,
                Err(e) => Err(EngineError::io(
                    "shard thread",
                    "",
                    std::io::Error::other(e.to_string()),
                )),
            };
            if first.is_ok() {
                first = outcome;
            }
        }
        first
    }
}

/// Takes an exclusive `flock` on `<data_dir>/.lock`, so two processes never share a
/// data directory.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    if !dir.is_dir() {
        return Err(EngineError::io(
            "open data directory",
            dir,
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::io("create lock file", &path, e))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        return Err(EngineError::io(
            "lock data directory (is another broker using it?)",
            &path,
            error,
        ));
    }
    Ok(file)
}

async fn run_shard<F, Fut>(
    id: ShardId,
    config: EngineConfig,
    placement: Arc<Placement>,
    (mesh, doorbells): (MeshEnds<Message>, MeshEnds<reply::Doorbell>),
    owned: Vec<ExistingPartition>,
    body: F,
) -> Result<()>
where
    F: Fn(Shard) -> Fut,
    Fut: Future<Output = ()>,
{
    let (latency, background) = task_queues();
    reply::install(id.index(), doorbells, latency).await;
    let (senders, receivers) = mesh.connect().await;
    let resources = ShardResources::new(id, Some(background));
    let shard = Shard(Rc::new(ShardInner {
        id,
        config: config.clone(),
        placement,
        senders,
        resources,
        latency,
        partitions: RefCell::new(HashMap::new()),
        offline: RefCell::new(HashMap::new()),
        peers_done: Cell::new(0),
        all_peers_done: RefCell::new(None),
        stopping: Cell::new(false),
        peer_died: Cell::new(false),
    }));
    for existing in owned {
        shard.open_existing(existing).await;
    }
    for (peer, receiver) in receivers {
        let shard = shard.clone();
        glommio::spawn_local_into(
            async move { mesh::serve_peer(shard, peer, receiver).await },
            latency,
        )
        .expect("latency queue exists")
        .detach();
    }
    let maintenance = glommio::spawn_local_into(maintain(shard.clone()), background)
        .expect("background queue exists");
    body(shard.clone()).await;
    shard.finish().await;
    shard.0.stopping.set(true);
    maintenance.cancel().await;
    shard.close_all().await
}

/// Creates a shard's two task queues on the current executor: *latency* (appends, reads,
/// mesh requests) and *background* (flushers, sealing, retention, checkpoints). Public so
/// that benchmarks run the engine as a shard does.
pub fn task_queues() -> (TaskQueueHandle, TaskQueueHandle) {
    let executor = glommio::executor();
    let latency = executor.create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(2)),
        "latency",
    );
    let background =
        executor.create_task_queue(Shares::Static(250), Latency::NotImportant, "background");
    (latency, background)
}

/// Periodic background work: retention, cleaning and recovery checkpoints.
async fn maintain(shard: Shard) {
    let config = &shard.0.config;
    let tick = config
        .retention_check_interval
        .min(config.checkpoint_interval)
        .min(config.cleaner_interval);
    let (mut since_retention, mut since_checkpoint) = (Duration::ZERO, Duration::ZERO);
    let mut since_cleaner = Duration::ZERO;
    while !shard.0.stopping.get() {
        glommio::timer::sleep(tick).await;
        since_retention += tick;
        since_checkpoint += tick;
        since_cleaner += tick;
        let logs: Vec<PartitionLog> = shard.0.partitions.borrow().values().cloned().collect();
        if since_cleaner >= config.cleaner_interval {
            since_cleaner = Duration::ZERO;
            for log in &logs {
                let rate = config.cleaner_io_bytes_per_sec;
                if let Err(e) = log.clean_if_due(Timestamp::now(), rate).await {
                    tracing::warn!(partition = %log.topic_partition(), error = %e, "cleaning pass failed");
                }
            }
        }
        if since_retention >= config.retention_check_interval {
            since_retention = Duration::ZERO;
            for log in &logs {
                if let Err(e) = log.apply_retention(Timestamp::now()).await {
                    tracing::warn!(partition = %log.topic_partition(), error = %e, "retention pass failed");
                }
            }
        }
        if since_checkpoint >= config.checkpoint_interval {
            since_checkpoint = Duration::ZERO;
            for log in &logs {
                if let Err(e) = log.write_checkpoint(false).await {
                    tracing::warn!(partition = %log.topic_partition(), error = %e, "checkpoint failed");
                }
            }
        }
    }
}

/// A shard's handle to the engine, usable only on that shard. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shard(Rc<ShardInner>);

#[derive(Debug)]
struct ShardInner {
    id: ShardId,
    config: EngineConfig,
    placement: Arc<Placement>,
    senders: Senders<Message>,
    resources: Rc<ShardResources>,
    latency: TaskQueueHandle,
    partitions: RefCell<HashMap<TopicPartition, PartitionLog>>,
    /// Partitions that failed to open, with the reason; requests for them get it back.
    offline: RefCell<HashMap<TopicPartition, String>>,
    peers_done: Cell<usize>,
    all_peers_done: RefCell<Option<oneshot::Sender<()>>>,
    stopping: Cell<bool>,
    /// Set when a peer shard's thread died: the broker is no longer whole.
    peer_died: Cell<bool>,
}

/// Runs `$local` on the owning shard: directly if that is this shard, else over the mesh.
macro_rules! route {
    ($self:ident, $tp:expr, $local:expr, |$reply:ident| $request:expr) => {{
        let owner = $self.owner(&$tp);
        if owner == $self.0.id {
            $local.await
        } else {
            let ($reply, rx) = reply::channel();
            $self.send(owner, $request).await?;
            rx.await.map_err(|_| EngineError::ShuttingDown)?
        }
    }};
}

impl Shard {
    /// Whether another shard's thread has died (a panic). Its partitions are out of
    /// reach, so the broker should stop.
    pub fn a_peer_died(&self) -> bool {
        self.0.peer_died.get()
    }

    pub fn id(&self) -> ShardId {
        self.0.id
    }

    pub fn shard_count(&self) -> usize {
        self.0.placement.shard_count()
    }

    /// The shard owning `tp`.
    pub fn owner(&self, tp: &TopicPartition) -> ShardId {
        self.0.placement.owner(tp)
    }

    /// The shard's I/O resources, for logs opened outside the partition table (the
    /// cluster's metadata log).
    pub fn resources(&self) -> Rc<ShardResources> {
        self.0.resources.clone()
    }

    /// The task queue for latency-sensitive work, for callers spawning request tasks.
    pub fn latency_queue(&self) -> TaskQueueHandle {
        self.0.latency
    }

    /// A partition owned by this shard.
    pub fn local(&self, tp: &TopicPartition) -> Result<PartitionLog> {
        if let Some(log) = self.0.partitions.borrow().get(tp) {
            return Ok(log.clone());
        }
        if let Some(reason) = self.0.offline.borrow().get(tp) {
            return Err(EngineError::PartitionOffline {
                tp: tp.clone(),
                reason: reason.clone(),
            });
        }
        Err(EngineError::UnknownPartition(tp.clone()))
    }

    /// Partitions owned by this shard.
    pub fn local_partitions(&self) -> Vec<TopicPartition> {
        self.0.partitions.borrow().keys().cloned().collect()
    }

    async fn send(&self, owner: ShardId, request: Request) -> Result<()> {
        self.0
            .senders
            .send_to(owner.index(), Message::Request(request))
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    pub async fn create_partition(
        &self,
        tp: TopicPartition,
        config: PartitionConfig,
    ) -> Result<()> {
        route!(
            self,
            tp,
            self.local_create(tp.clone(), config.clone()),
            |reply| Request::Create { tp, config, reply }
        )
    }

    pub async fn delete_partition(&self, tp: TopicPartition) -> Result<()> {
        route!(self, tp, self.local_delete(tp.clone()), |reply| {
            Request::Delete { tp, reply }
        })
    }

    pub async fn append(
        &self,
        tp: TopicPartition,
        batch: BytesMut,
        leader_epoch: LeaderEpoch,
        policy: AckPolicy,
    ) -> Result<AppendInfo> {
        let owner = self.owner(&tp);
        if owner == self.0.id {
            return self.local(&tp)?.append(batch, leader_epoch, policy).await;
        }
        let (reply, rx) = reply::channel();
        self.send(
            owner,
            Request::Append {
                tp,
                batch,
                leader_epoch,
                policy,
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    pub async fn read(
        &self,
        tp: TopicPartition,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<ReadResult> {
        self.read_or_wait(tp, offset, max_bytes, std::time::Duration::ZERO)
            .await
    }

    /// A long poll in one call: reads, and if nothing is readable at `offset` yet, waits
    /// up to `wait` for data and reads again. On another shard that is one round trip
    /// where a read, a wait and a second read would be three.
    pub async fn read_or_wait(
        &self,
        tp: TopicPartition,
        offset: Offset,
        max_bytes: usize,
        wait: std::time::Duration,
    ) -> Result<ReadResult> {
        route!(
            self,
            tp,
            async { self.local(&tp)?.read_or_wait(offset, max_bytes, wait).await },
            |reply| Request::Read {
                tp,
                offset,
                max_bytes,
                wait,
                reply
            }
        )
    }

    pub async fn offsets(&self, tp: TopicPartition) -> Result<LogOffsets> {
        route!(
            self,
            tp,
            async { Ok(self.local(&tp)?.offsets()) },
            |reply| Request::Offsets { tp, reply }
        )
    }

    pub async fn offset_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: Timestamp,
    ) -> Result<Option<(Offset, Timestamp)>> {
        route!(
            self,
            tp,
            async { self.local(&tp)?.offset_for_timestamp(timestamp).await },
            |reply| {
                Request::ForTimestamp {
                    tp,
                    timestamp,
                    reply,
                }
            }
        )
    }

    pub async fn apply_retention(
        &self,
        tp: TopicPartition,
        now: Timestamp,
    ) -> Result<RetentionOutcome> {
        route!(
            self,
            tp,
            async { self.local(&tp)?.apply_retention(now).await },
            |reply| Request::Retention { tp, now, reply }
        )
    }

    /// Waits until data is readable at `offset` of `tp` or `timeout` passes (long polls).
    pub async fn wait_for_data(
        &self,
        tp: TopicPartition,
        offset: Offset,
        timeout: std::time::Duration,
    ) -> Result<bool> {
        route!(
            self,
            tp,
            async { Ok(self.local(&tp)?.wait_for_data(offset, timeout).await) },
            |reply| {
                Request::WaitForData {
                    tp,
                    offset,
                    timeout,
                    reply,
                }
            }
        )
    }

    /// The record with the largest timestamp (ListOffsets -3).
    pub async fn offset_of_max_timestamp(
        &self,
        tp: TopicPartition,
    ) -> Result<Option<(Offset, Timestamp)>> {
        route!(
            self,
            tp,
            async { self.local(&tp)?.offset_of_max_timestamp().await },
            |reply| Request::MaxTimestamp { tp, reply }
        )
    }

    /// Moves a partition's log start forward (Kafka's DeleteRecords).
    pub async fn delete_records(&self, tp: TopicPartition, offset: Offset) -> Result<Offset> {
        route!(
            self,
            tp,
            async { self.local(&tp)?.delete_records(offset).await },
            |reply| Request::DeleteRecords { tp, offset, reply }
        )
    }

    /// Replaces a partition's storage config (persisted before it applies).
    pub async fn update_config(&self, tp: TopicPartition, config: PartitionConfig) -> Result<()> {
        route!(
            self,
            tp,
            async { self.local(&tp)?.update_config(config.clone()).await },
            |reply| Request::UpdateConfig { tp, config, reply }
        )
    }

    async fn local_create(&self, tp: TopicPartition, config: PartitionConfig) -> Result<()> {
        assert_eq!(self.owner(&tp), self.0.id, "created on its owner");
        crate::types::validate_topic_name(&tp.topic).map_err(|reason| {
            EngineError::InvalidConfig {
                key: "topic".into(),
                value: tp.topic.to_string(),
                reason: reason.into(),
            }
        })?;
        if tp.partition.0 < 0 {
            return Err(EngineError::UnknownPartition(tp));
        }
        if self.0.partitions.borrow().contains_key(&tp) || self.0.offline.borrow().contains_key(&tp)
        {
            return Err(EngineError::PartitionExists(tp));
        }
        if self.0.partitions.borrow().len() >= SHARD_PARTITIONS_MAX {
            return Err(EngineError::LimitReached(
                "partitions per shard (SHARD_PARTITIONS_MAX)",
            ));
        }
        let log = PartitionLog::create(
            &self.0.config.data_dir,
            tp.clone(),
            config,
            self.0.resources.clone(),
        )
        .await?;
        // Other creates may have finished while this one awaited: check again, and undo
        // this one if it lost a race.
        let lost = {
            let mut partitions = self.0.partitions.borrow_mut();
            if partitions.contains_key(&tp) {
                Some(EngineError::PartitionExists(tp.clone()))
            } else if partitions.len() >= SHARD_PARTITIONS_MAX {
                Some(EngineError::LimitReached(
                    "partitions per shard (SHARD_PARTITIONS_MAX)",
                ))
            } else {
                partitions.insert(tp.clone(), log.clone());
                None
            }
        };
        if let Some(error) = lost {
            if !matches!(error, EngineError::PartitionExists(_)) {
                log.delete(&self.0.config.data_dir).await?;
            }
            return Err(error);
        }
        tracing::info!(partition = %tp, shard = self.0.id.0, "created partition");
        Ok(())
    }

    async fn local_delete(&self, tp: TopicPartition) -> Result<()> {
        let log = self.0.partitions.borrow_mut().remove(&tp);
        let Some(log) = log else {
            return Err(EngineError::UnknownPartition(tp));
        };
        log.delete(&self.0.config.data_dir).await?;
        tracing::info!(partition = %tp, "deleted partition");
        Ok(())
    }

    async fn open_existing(&self, existing: ExistingPartition) {
        match PartitionLog::open(existing.dir.clone(), self.0.resources.clone()).await {
            Ok(log) => {
                let offsets = log.offsets();
                tracing::info!(partition = %existing.tp, log_start = offsets.log_start.0, log_end = offsets.log_end.0, "opened partition");
                self.0.partitions.borrow_mut().insert(existing.tp, log);
            }
            Err(e) => {
                tracing::error!(partition = %existing.tp, error = %e, "partition could not be opened; it stays offline");
                self.0
                    .offline
                    .borrow_mut()
                    .insert(existing.tp, e.to_string());
            }
        }
    }

    /// Tells every peer this shard's body is done, then waits for all peers to say so.
    async fn finish(&self) {
        let peers = self.shard_count() - 1;
        let rx = {
            let (tx, rx) = oneshot::channel();
            *self.0.all_peers_done.borrow_mut() = Some(tx);
            rx
        };
        self.note_peer_done(0);
        for peer in 0..self.shard_count() {
            if peer != self.0.id.index() {
                let _ = self.0.senders.send_to(peer, Message::Done).await;
            }
        }
        if peers > 0 {
            let _ = rx.await;
        }
    }

    fn note_peer_died(&self) {
        self.0.peer_died.set(true);
        self.note_peer_done(1);
    }

    fn note_peer_done(&self, count: usize) {
        self.0.peers_done.set(self.0.peers_done.get() + count);
        if self.0.peers_done.get() >= self.shard_count() - 1 {
            if let Some(tx) = self.0.all_peers_done.borrow_mut().take() {
                let _ = tx.send(());
            }
        }
    }

    async fn close_all(&self) -> Result<()> {
        let logs: Vec<PartitionLog> = self
            .0
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, log)| log)
            .collect();
        let mut first = Ok(());
        for log in logs {
            if let Err(e) = log.close().await {
                tracing::error!(partition = %log.topic_partition(), error = %e, "close failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}
