//! One shard's group coordinator: the groups whose `__consumer_offsets` partition this
//! shard owns, their committed offsets, and the log behind them.
//!
//! Every group request is a `GroupCall`, run here by `call` on the coordinating shard
//! (`route` sends it there). Before a partition's groups are first used, its log is
//! replayed into memory (`ensure_loaded`); commits are appended and acknowledged only
//! once durable, and only then applied in memory, so OffsetFetch never answers an
//! offset that a crash could lose. A timer task (`run_timers`) expires sessions,
//! completes overdue rebalances and drops offsets past retention.
//!
//! Group metadata (generation, leader, members and their assignments) is appended after
//! a generation becomes Stable, when a static member is replaced, and when a group
//! empties. The replay restores a Stable group with its members, whose sessions start
//! anew, so they carry on after a restart or failover without a rebalance. The sync
//! answers do not wait for the append: if it is lost, the members find an older
//! generation recorded, get ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID, and join again.
//!
//! In cluster mode a partition's groups live with its leader, as in Kafka: appends go
//! through the partition's replica and are acknowledged at the quorum commit index, a
//! broker answers for the groups of the partitions it leads only (NOT_COORDINATOR
//! elsewhere), and a partition's groups are loaded per leader epoch. A new leader first
//! waits until the records of earlier epochs are committed (its epoch marker is), so
//! the replay sees every acknowledged commit; a broker that stops leading drops the
//! partition's groups and answers their waiting members NOT_COORDINATOR.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use glommio::sync::Semaphore;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use spate_engine::{
    AckPolicy, BatchError, EngineError, LeaderEpoch, Offset, Timestamp, TopicPartition,
};
use spate_replication::driver::Acks;
use spate_replication::replica::ReplicaId;

use super::consumer_protocol;
use super::records::{self, Entry};
use super::state::SyncOutcome;
use super::state::{Committed, Group, GroupState, JoinOutcome, JoinRequest};
use super::{partition_for, GroupConfig, OFFSETS_TOPIC};
use crate::controller::TopicSpec;
use crate::limits::{OFFSET_METADATA_BYTES_MAX, SHARD_GROUPS_MAX, SHARD_GROUP_CALLS_INFLIGHT_MAX};
use crate::node::Node;
use crate::topic_config::TopicSettings;

/// How often the timer task runs. Session and rebalance timeouts are honoured to
/// within this.
const GROUP_TICK: Duration = Duration::from_millis(100);

/// Bytes read per step when replaying a partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// In cluster mode, how long an append waits for the quorum commit index (Kafka's
/// `offsets.commit.timeout.ms`).
const OFFSETS_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new leader waits for its earlier epochs to commit before answering
/// COORDINATOR_LOAD_IN_PROGRESS (clients retry that).
const LOAD_COMMIT_WAIT: Duration = Duration::from_secs(2);
/// Between two looks at the commit index while waiting for it.
const LOAD_COMMIT_POLL: Duration = Duration::from_millis(10);

/// A SyncGroup.
#[derive(Debug)]
pub struct SyncCall {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// An OffsetCommit.
#[derive(Debug)]
pub struct CommitCall {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub offsets: Vec<(String, i32, Committed)>,
}

/// A request for one group, run on its coordinator.
#[derive(Debug)]
pub enum GroupCall {
    Join(JoinRequest),
    Sync(SyncCall),
    Heartbeat {
        member_id: String,
        instance_id: Option<String>,
        generation: i32,
    },
    /// Members leaving: (member id, instance id).
    Leave(Vec<(String, Option<String>)>),
    Commit(CommitCall),
    /// Committed offsets of these partitions, or of all (`None`).
    Fetch(Option<Vec<(String, i32)>>),
    Describe,
    Delete,
    /// Every group this shard coordinates (the group name is ignored).
    List,
    /// Drop the committed offsets of these partitions.
    OffsetDelete(Vec<(String, i32)>),
}

/// A described group.
#[derive(Clone, Debug, Default)]
pub struct Described {
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment).
    pub members: Vec<(String, Option<String>, String, String, Bytes, Bytes)>,
}

/// A listed group: (group id, protocol type, state).
pub type Listed = (String, String, &'static str);

/// What a `GroupCall` answers.
#[derive(Debug)]
pub enum GroupAnswer {
    Join(JoinOutcome),
    Sync(SyncOutcome),
    /// One error (or none) for the whole call.
    Error(Option<ResponseError>),
    /// One error (or none) per member or partition, in request order.
    Each(Vec<Option<ResponseError>>),
    /// A group-level error, or the committed offset (if any) of each partition.
    Fetch(Result<Vec<(String, i32, Option<Committed>)>, ResponseError>),
    Describe(Described),
    List(Vec<Listed>),
}

/// One shard's coordinator.
#[derive(Debug)]
pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    /// `__consumer_offsets` partitions replayed into `groups`, and the leader epoch
    /// they were replayed in (0 outside cluster mode).
    loaded: RefCell<HashMap<i32, i32>>,
    loading: Semaphore,
    /// Bounds calls from other shards running here (`SHARD_GROUP_CALLS_INFLIGHT_MAX`).
    pub remote_calls: Rc<Semaphore>,
    /// Timeouts and delays (the offsets settings are read from the node's config).
    settings: GroupConfig,
    /// Set at shutdown: waiting requests were answered, new ones are refused.
    closed: Cell<bool>,
}

fn now_ms() -> i64 {
    Timestamp::now().0
}

impl Coordinator {
    pub fn new(config: GroupConfig) -> Coordinator {
        Coordinator {
            groups: RefCell::new(HashMap::new()),
            loaded: RefCell::new(HashMap::new()),
            loading: Semaphore::new(1),
            remote_calls: Rc::new(Semaphore::new(SHARD_GROUP_CALLS_INFLIGHT_MAX as u64)),
            settings: config,
            closed: Cell::new(false),
        }
    }

    /// At shutdown: answers every waiting join and sync (NOT_COORDINATOR, so clients
    /// look for the coordinator again) and refuses further calls.
    pub fn close(&self) {
        self.closed.set(true);
        for group in self.groups.borrow_mut().values_mut() {
            group.abandon_waiters(ResponseError::NotCoordinator);
        }
    }
}

/// The leader epoch partition `partition`'s groups were loaded in, if they are loaded.
fn loaded_epoch(coordinator: &Coordinator, partition: i32) -> Option<i32> {
    coordinator.loaded.borrow().get(&partition).copied()
}

/// The partition count of `__consumer_offsets`: the topic's if it exists, else the
/// count it will be created with.
pub fn offsets_partitions(node: &Node) -> i32 {
    node.catalog()
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(node.config.groups.offsets_partitions, |t| t.partitions)
}

/// The topic configs `__consumer_offsets` is created with, whoever asks: compacted, in
/// segments of `segment_bytes`.
pub fn offsets_topic_configs(segment_bytes: u64) -> Vec<(String, String)> {
    vec![
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
    ]
}

/// Creates `__consumer_offsets` if it does not exist yet, as Kafka does on the first
/// FindCoordinator. In cluster mode it gets `offsets.topic.replication.factor`
/// replicas, at most one per voter, and the controller creates it wherever asked.
pub async fn ensure_offsets_topic(node: &Rc<Node>) -> Result<(), ResponseError> {
    if node.catalog().topics.contains_key(OFFSETS_TOPIC) {
        return Ok(());
    }
    let overrides = offsets_topic_configs(node.config.groups.offsets_segment_bytes);
    let config = crate::topic_config::partition_config(&overrides)
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    let spec = TopicSpec {
        name: OFFSETS_TOPIC.to_string(),
        partitions: node.config.groups.offsets_partitions,
        replication_factor: node.cluster().map(|c| {
            let brokers = u32::try_from(c.broker_count()).unwrap_or(u32::MAX);
            node.config.groups.offsets_replication_factor.min(brokers)
        }),
        config,
        overrides,
    };
    let outcome = node.create_topics_for_broker(vec![spec]).await;
    match outcome.first().and_then(|o| o.error.as_ref()) {
        None | Some((ResponseError::TopicAlreadyExists, _)) => Ok(()),
        Some((error, message)) => {
            tracing::warn!(%message, "could not create {OFFSETS_TOPIC}");
            Err(if *error == ResponseError::NotController {
                ResponseError::CoordinatorNotAvailable
            } else {
                *error
            })
        }
    }
}

/// Runs `call` for `group` on its coordinating shard.
pub async fn route(node: &Rc<Node>, group: &str, call: GroupCall) -> GroupAnswer {
    let partition = partition_for(group, offsets_partitions(node));
    let owner = node
        .shard
        .owner(&TopicPartition::new(OFFSETS_TOPIC, partition))
        .index();
    call_on(node, owner, group.to_string(), call).await
}

/// Runs `call` on shard `shard`'s coordinator.
pub async fn call_on(node: &Rc<Node>, shard: usize, group: String, call: GroupCall) -> GroupAnswer {
    if shard == node.shard.id().index() {
        return call_here(node, group, call).await;
    }
    node.group_call_on(shard, group, call)
        .await
        .unwrap_or(GroupAnswer::Error(Some(
            ResponseError::CoordinatorNotAvailable,
        )))
}

/// The answer for every call when the coordinator cannot serve it.
fn refused(call: &GroupCall, error: ResponseError) -> GroupAnswer {
    match call {
        GroupCall::Join(request) => GroupAnswer::Join(JoinOutcome {
            error: Some(error),
            generation: -1,
            member_id: request.member_id.clone(),
            ..JoinOutcome::default()
        }),
        GroupCall::Sync(_) => GroupAnswer::Sync(SyncOutcome {
            error: Some(error),
            ..SyncOutcome::default()
        }),
        GroupCall::Fetch(_) => GroupAnswer::Fetch(Err(error)),
        GroupCall::Leave(members) => GroupAnswer::Each(vec![Some(error); members.len()]),
        GroupCall::Commit(commit) => GroupAnswer::Each(vec![Some(error); commit.offsets.len()]),
        GroupCall::OffsetDelete(partitions) => {
            GroupAnswer::Each(vec![Some(error); partitions.len()])
        }
        GroupCall::List => GroupAnswer::List(Vec::new()),
        GroupCall::Heartbeat { .. } | GroupCall::Describe | GroupCall::Delete => {
            GroupAnswer::Error(Some(error))
        }
    }
}

/// Runs `call` on this shard, which must coordinate `group` (or `call` is List).
pub async fn call_here(node: &Rc<Node>, group: String, call: GroupCall) -> GroupAnswer {
    let coordinator = &node.groups;
    if coordinator.closed.get() {
        return refused(&call, ResponseError::CoordinatorNotAvailable);
    }
    if let GroupCall::List = call {
        if let Err(error) = ensure_all_loaded(node).await {
            return refused(&call, error);
        }
        return GroupAnswer::List(list(coordinator));
    }
    let partition = partition_for(&group, offsets_partitions(node));
    if let Err(error) = ensure_loaded(node, partition).await {
        return refused(&call, error);
    }
    let answer = match call {
        GroupCall::Join(request) => join(node, &group, request).await,
        GroupCall::Sync(sync) => self::sync(node, &group, sync).await,
        GroupCall::Heartbeat {
            member_id,
            instance_id,
            generation,
        } => {
            let mut groups = coordinator.groups.borrow_mut();
            GroupAnswer::Error(match groups.get_mut(&group) {
                None => Some(ResponseError::UnknownMemberId),
                Some(g) => g.heartbeat(
                    &member_id,
                    instance_id.as_deref(),
                    generation,
                    Instant::now(),
                ),
            })
        }
        GroupCall::Leave(members) => {
            let mut groups = coordinator.groups.borrow_mut();
            let now = Instant::now();
            GroupAnswer::Each(match groups.get_mut(&group) {
                None => vec![Some(ResponseError::UnknownMemberId); members.len()],
                Some(g) => members
                    .iter()
                    .map(|(id, instance)| {
                        g.leave(id, instance.as_deref(), now, &coordinator.settings)
                    })
                    .collect(),
            })
        }
        GroupCall::Commit(commit) => self::commit(node, &group, partition, commit).await,
        GroupCall::Fetch(partitions) => {
            GroupAnswer::Fetch(Ok(fetch(coordinator, &group, partitions)))
        }
        GroupCall::Describe => GroupAnswer::Describe(describe(coordinator, &group)),
        GroupCall::Delete => GroupAnswer::Error(delete(node, &group, partition).await),
        GroupCall::OffsetDelete(partitions) => {
            offset_delete(node, &group, partition, partitions).await
        }
        GroupCall::List => unreachable!("handled above"),
    };
    persist_changes(node, Some(&group)).await;
    answer
}

/// Whether one more group fits on this shard.
fn room_for_group(groups: &HashMap<String, Group>, group: &str) -> bool {
    groups.contains_key(group) || groups.len() < SHARD_GROUPS_MAX
}

async fn join(node: &Rc<Node>, group: &str, request: JoinRequest) -> GroupAnswer {
    let coordinator = &node.groups;
    let member_id = request.member_id.clone();
    let (reply, answer) = oneshot::channel();
    {
        let mut groups = coordinator.groups.borrow_mut();
        if !room_for_group(&groups, group) {
            return GroupAnswer::Join(JoinOutcome {
                error: Some(ResponseError::CoordinatorNotAvailable),
                generation: -1,
                member_id,
                ..JoinOutcome::default()
            });
        }
        let entry = groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group.to_string()));
        entry.join(request, reply, Instant::now(), &coordinator.settings);
    }
    persist_changes(node, Some(group)).await;
    GroupAnswer::Join(answer.await.unwrap_or_else(|_| JoinOutcome {
        error: Some(ResponseError::CoordinatorNotAvailable),
        generation: -1,
        member_id,
        ..JoinOutcome::default()
    }))
}

async fn sync(node: &Rc<Node>, group: &str, sync: SyncCall) -> GroupAnswer {
    let coordinator = &node.groups;
    let (reply, answer) = oneshot::channel();
    {
        let mut groups = coordinator.groups.borrow_mut();
        let Some(entry) = groups.get_mut(group) else {
            return GroupAnswer::Sync(SyncOutcome {
                error: Some(ResponseError::UnknownMemberId),
                ..SyncOutcome::default()
            });
        };
        entry.sync(
            &sync.member_id,
            sync.instance_id.as_deref(),
            sync.generation,
            sync.protocol_type.as_deref(),
            sync.protocol.as_deref(),
            sync.assignments,
            reply,
            Instant::now(),
        );
    }
    persist_changes(node, Some(group)).await;
    GroupAnswer::Sync(answer.await.unwrap_or_else(|_| SyncOutcome {
        error: Some(ResponseError::CoordinatorNotAvailable),
        ..SyncOutcome::default()
    }))
}

/// Why this partition's offset may not be committed, if it may not.
fn commit_error(
    node: &Node,
    topic: &str,
    partition: i32,
    committed: &Committed,
) -> Option<ResponseError> {
    if committed.metadata.len() > OFFSET_METADATA_BYTES_MAX {
        return Some(ResponseError::OffsetMetadataTooLarge);
    }
    let catalog = node.catalog();
    match catalog.topics.get(topic) {
        Some(t) if (0..t.partitions).contains(&partition) => None,
        _ => Some(ResponseError::UnknownTopicOrPartition),
    }
}

async fn commit(node: &Rc<Node>, group: &str, partition: i32, commit: CommitCall) -> GroupAnswer {
    let coordinator = &node.groups;
    let count = commit.offsets.len();
    {
        let mut groups = coordinator.groups.borrow_mut();
        let error = match groups.get_mut(group) {
            Some(g) => g.check_commit(
                &commit.member_id,
                commit.instance_id.as_deref(),
                commit.generation,
                Instant::now(),
            ),
            // A client managing its own assignment commits to a group that need not
            // exist; any other commit to an unknown group is from a stale generation.
            None if commit.generation < 0 => {
                if room_for_group(&groups, group) {
                    None
                } else {
                    Some(ResponseError::CoordinatorNotAvailable)
                }
            }
            None => Some(ResponseError::IllegalGeneration),
        };
        if let Some(error) = error {
            return GroupAnswer::Each(vec![Some(error); count]);
        }
    }
    let mut errors: Vec<Option<ResponseError>> = commit
        .offsets
        .iter()
        .map(|(topic, p, committed)| commit_error(node, topic, *p, committed))
        .collect();
    let accepted: Vec<&(String, i32, Committed)> = commit
        .offsets
        .iter()
        .zip(&errors)
        .filter(|(_, e)| e.is_none())
        .map(|(o, _)| o)
        .collect();
    let records: Vec<(Bytes, Option<Bytes>)> = accepted
        .iter()
        .map(|(topic, p, committed)| {
            (
                records::offset_key(group, topic, *p),
                Some(records::offset_value(committed)),
            )
        })
        .collect();
    let epoch = loaded_epoch(coordinator, partition);
    if let Err(error) = append(node, (partition, epoch), records).await {
        for e in errors.iter_mut().filter(|e| e.is_none()) {
            *e = Some(error);
        }
        return GroupAnswer::Each(errors);
    }
    // The commit is durable; if the partition's groups were dropped or reloaded
    // meanwhile, the replay that reloaded them holds it (and a broker must not keep a
    // group it no longer coordinates).
    if loaded_epoch(coordinator, partition) != epoch {
        return GroupAnswer::Each(errors);
    }
    let mut groups = coordinator.groups.borrow_mut();
    let entry = groups
        .entry(group.to_string())
        .or_insert_with(|| Group::new(group.to_string()));
    for (topic, p, committed) in accepted {
        entry.offsets.insert((topic.clone(), *p), committed.clone());
    }
    GroupAnswer::Each(errors)
}

fn fetch(
    coordinator: &Coordinator,
    group: &str,
    partitions: Option<Vec<(String, i32)>>,
) -> Vec<(String, i32, Option<Committed>)> {
    let groups = coordinator.groups.borrow();
    let offsets = groups.get(group).map(|g| &g.offsets);
    match partitions {
        Some(partitions) => partitions
            .into_iter()
            .map(|(topic, p)| {
                let committed = offsets.and_then(|o| o.get(&(topic.clone(), p)).cloned());
                (topic, p, committed)
            })
            .collect(),
        None => offsets
            .into_iter()
            .flatten()
            .map(|((topic, p), c)| (topic.clone(), *p, Some(c.clone())))
            .collect(),
    }
}

fn describe(coordinator: &Coordinator, group: &str) -> Described {
    let groups = coordinator.groups.borrow();
    let Some(g) = groups.get(group) else {
        return Described {
            state: GroupState::Dead.name().to_string(),
            ..Described::default()
        };
    };
    let protocol = g.protocol.clone().unwrap_or_default();
    Described {
        state: g.state.name().to_string(),
        protocol_type: g.protocol_type.clone().unwrap_or_default(),
        protocol: protocol.clone(),
        members: g
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    m.metadata(&protocol),
                    m.assignment.clone(),
                )
            })
            .collect(),
    }
}

fn list(coordinator: &Coordinator) -> Vec<Listed> {
    coordinator
        .groups
        .borrow()
        .values()
        .filter(|g| g.state != GroupState::Dead)
        .map(|g| {
            (
                g.id.clone(),
                g.protocol_type.clone().unwrap_or_default(),
                g.state.name(),
            )
        })
        .collect()
}

/// Deletes an empty group and its offsets (tombstones first, then memory).
async fn delete(node: &Rc<Node>, group: &str, partition: i32) -> Option<ResponseError> {
    let keys: Vec<(Bytes, Option<Bytes>)> = {
        let groups = node.groups.groups.borrow();
        let Some(g) = groups.get(group) else {
            return Some(ResponseError::GroupIdNotFound);
        };
        if g.state == GroupState::Dead {
            return Some(ResponseError::GroupIdNotFound);
        }
        if !g.members.is_empty() {
            return Some(ResponseError::NonEmptyGroup);
        }
        g.offsets
            .keys()
            .map(|(topic, p)| (records::offset_key(group, topic, *p), None))
            .chain([(records::group_key(group), None)])
            .collect()
    };
    let epoch = loaded_epoch(&node.groups, partition);
    if let Err(error) = append(node, (partition, epoch), keys).await {
        return Some(error);
    }
    if loaded_epoch(&node.groups, partition) != epoch {
        return None;
    }
    let mut groups = node.groups.groups.borrow_mut();
    if let Some(mut g) = groups.remove(group) {
        g.kill();
    }
    None
}

async fn offset_delete(
    node: &Rc<Node>,
    group: &str,
    partition: i32,
    partitions: Vec<(String, i32)>,
) -> GroupAnswer {
    let errors: Vec<Option<ResponseError>> = {
        let groups = node.groups.groups.borrow();
        let Some(g) = groups.get(group) else {
            return GroupAnswer::Error(Some(ResponseError::GroupIdNotFound));
        };
        let protocol = g.protocol.clone().unwrap_or_default();
        // Offsets of topics the group's members consume cannot be deleted; members
        // whose subscription cannot be read are taken to consume everything.
        let subscribed: Option<HashSet<String>> = g
            .members
            .values()
            .map(|m| consumer_protocol::subscription_topics(&m.metadata(&protocol)))
            .try_fold(HashSet::new(), |mut all, topics| {
                all.extend(topics?);
                Some(all)
            });
        partitions
            .iter()
            .map(|(topic, _)| {
                let busy =
                    !g.members.is_empty() && subscribed.as_ref().is_none_or(|s| s.contains(topic));
                busy.then_some(ResponseError::GroupSubscribedToTopic)
            })
            .collect()
    };
    let tombstones: Vec<(Bytes, Option<Bytes>)> = partitions
        .iter()
        .zip(&errors)
        .filter(|(_, e)| e.is_none())
        .map(|((topic, p), _)| (records::offset_key(group, topic, *p), None))
        .collect();
    let epoch = loaded_epoch(&node.groups, partition);
    if let Err(error) = append(node, (partition, epoch), tombstones).await {
        return GroupAnswer::Error(Some(error));
    }
    if loaded_epoch(&node.groups, partition) != epoch {
        return GroupAnswer::Each(errors);
    }
    let mut groups = node.groups.groups.borrow_mut();
    if let Some(g) = groups.get_mut(group) {
        for ((topic, p), _) in partitions.iter().zip(&errors).filter(|(_, e)| e.is_none()) {
            g.offsets.remove(&(topic.clone(), *p));
        }
    }
    GroupAnswer::Each(errors)
}

/// Appends records to `__consumer_offsets` partition `partition` and waits until they
/// are durable (in cluster mode, committed). `epoch` is the leader epoch the caller's
/// view of the groups was loaded in: the append is refused (NOT_COORDINATOR) unless the
/// partition is still loaded in it, so a view taken before a failover is never written
/// after one.
async fn append(
    node: &Rc<Node>,
    (partition, epoch): (i32, Option<i32>),
    entries: Vec<(Bytes, Option<Bytes>)>,
) -> Result<(), ResponseError> {
    if entries.is_empty() {
        return Ok(());
    }
    let Some(epoch) = epoch.filter(|e| loaded_epoch(&node.groups, partition) == Some(*e)) else {
        return Err(ResponseError::NotCoordinator);
    };
    ensure_offsets_topic(node).await?;
    let timestamp = now_ms();
    let batch: Vec<Record> = entries
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // Not idempotent: the batch's base sequence must be -1. The encoder starts a
            // new batch wherever offset minus sequence changes, so it must not.
            sequence: i as i32 - 1,
            timestamp,
            key: Some(key),
            value,
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &batch, &options).map_err(|e| {
        tracing::error!(error = %e, "could not encode a {OFFSETS_TOPIC} batch");
        ResponseError::UnknownServerError
    })?;
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
    if node.cluster().is_some() {
        return append_replicated(node, tp, buf, epoch).await;
    }
    node.shard
        .append(tp, buf, LeaderEpoch(0), AckPolicy::Durable)
        .await
        .map(|_| ())
        .map_err(|e| {
            tracing::warn!(partition, error = %e, "could not append to {OFFSETS_TOPIC}");
            ResponseError::CoordinatorNotAvailable
        })
}

/// Appends `batch` through the partition's replica, acknowledged once the quorum
/// commit index passes it (and refused below `min.insync.replicas`). The errors are
/// those Kafka's coordinator answers: NOT_COORDINATOR once another broker leads.
async fn append_replicated(
    node: &Rc<Node>,
    tp: TopicPartition,
    batch: BytesMut,
    epoch: i32,
) -> Result<(), ResponseError> {
    let min_insync = node
        .catalog()
        .topics
        .get(OFFSETS_TOPIC)
        .map_or(1, |t| TopicSettings::of(t).min_insync_replicas);
    let acks = Acks::Quorum { min_insync };
    let limits = (acks, OFFSETS_COMMIT_TIMEOUT);
    let written = crate::cluster::replicated::write(node, tp.clone(), batch, limits, Some(epoch));
    written.await.map(|_| ()).map_err(|(code, message)| {
        tracing::warn!(%tp, %message, "could not append to {OFFSETS_TOPIC}");
        match code {
            ResponseError::NotLeaderOrFollower => ResponseError::NotCoordinator,
            _ => ResponseError::CoordinatorNotAvailable,
        }
    })
}

/// Appends the metadata of the groups that became Stable or Empty: `group` only (after a
/// call, which changes no other group), or all of them (after the timers ran).
async fn persist_changes(node: &Rc<Node>, group: Option<&str>) {
    let changed: Vec<((i32, Option<i32>), Bytes, Bytes)> = {
        let partitions = offsets_partitions(node);
        let mut groups = node.groups.groups.borrow_mut();
        let candidates: Vec<&mut Group> = match group {
            Some(id) => groups.get_mut(id).into_iter().collect(),
            None => groups.values_mut().collect(),
        };
        candidates
            .into_iter()
            .filter_map(|g| g.take_changed().then_some(g))
            .map(|g| {
                let partition = partition_for(&g.id, partitions);
                (
                    (partition, loaded_epoch(&node.groups, partition)),
                    records::group_key(&g.id),
                    records::group_value(g, now_ms()),
                )
            })
            .collect()
    };
    for (at, key, value) in changed {
        // A failure loses only the generation number at the next restart.
        let _ = append(node, at, vec![(key, Some(value))]).await;
    }
}

/// The leader epoch in which this broker leads partition `partition` of the offsets
/// topic: 0 outside cluster mode; NOT_COORDINATOR where it does not lead it.
fn leading_epoch(node: &Node, partition: i32) -> Result<i32, ResponseError> {
    let Some(cluster) = node.cluster() else {
        return Ok(0);
    };
    let key = crate::cluster::key_of(&TopicPartition::new(OFFSETS_TOPIC, partition));
    match cluster.replicator.status(&key) {
        Some(status) if status.leader == Some(ReplicaId(cluster.me())) => Ok(status.epoch),
        _ => Err(ResponseError::NotCoordinator),
    }
}

/// Replays partition `partition` of `__consumer_offsets` into memory, once per leader
/// epoch; fails with NOT_COORDINATOR where another broker leads it.
async fn ensure_loaded(node: &Rc<Node>, partition: i32) -> Result<(), ResponseError> {
    let coordinator = &node.groups;
    let epoch = leading_epoch(node, partition)?;
    if coordinator.loaded.borrow().get(&partition) == Some(&epoch) {
        return Ok(());
    }
    let _one_at_a_time = coordinator
        .loading
        .acquire_permit(1)
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    let epoch = leading_epoch(node, partition)?;
    if coordinator.loaded.borrow().get(&partition) == Some(&epoch) {
        return Ok(());
    }
    // Loaded in an earlier epoch: what another leader committed since is not in memory.
    unload(node, partition);
    earlier_epochs_committed(node, partition, epoch).await?;
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
    match replay(node, &tp).await {
        Ok(count) => {
            if count > 0 || node.cluster().is_some() {
                tracing::info!(%tp, records = count, epoch, "loaded consumer groups");
            }
            if leading_epoch(node, partition) != Ok(epoch) {
                unload(node, partition);
                return Err(ResponseError::NotCoordinator);
            }
            coordinator.loaded.borrow_mut().insert(partition, epoch);
            Ok(())
        }
        Err(e) => {
            unload(node, partition);
            tracing::error!(%tp, error = %e, "could not load consumer groups");
            Err(ResponseError::CoordinatorNotAvailable)
        }
    }
}

/// In cluster mode, waits until this leader's commit index reaches the log end it found
/// (its epoch marker included), so every record of earlier epochs is committed, and
/// until its high watermark does too: the replay reads up to the high watermark, which
/// also waits for this broker's own fsync (the followers' may complete the quorum
/// first).
async fn earlier_epochs_committed(
    node: &Node,
    partition: i32,
    epoch: i32,
) -> Result<(), ResponseError> {
    let Some(cluster) = node.cluster() else {
        return Ok(());
    };
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
    let key = crate::cluster::key_of(&tp);
    let me = Some(ReplicaId(cluster.me()));
    let started = Instant::now();
    let mut target = None;
    loop {
        let status = cluster
            .replicator
            .status(&key)
            .filter(|s| s.leader == me && s.epoch == epoch)
            .ok_or(ResponseError::NotCoordinator)?;
        let end = *target.get_or_insert(status.log_end);
        if status.commit >= end {
            let visible = node
                .shard
                .offsets(tp.clone())
                .await
                .map_err(|_| ResponseError::CoordinatorNotAvailable)?
                .high_watermark;
            if visible >= end {
                return Ok(());
            }
        }
        if started.elapsed() >= LOAD_COMMIT_WAIT {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        glommio::timer::sleep(LOAD_COMMIT_POLL).await;
    }
}

/// Forgets the groups of partition `partition` (another broker coordinates them now, or
/// they are about to be replayed): waiting members are answered NOT_COORDINATOR, so
/// they look for the coordinator again.
fn unload(node: &Node, partition: i32) {
    let coordinator = &node.groups;
    // Groups may be in memory without the partition counting as loaded (a replay that
    // failed halfway, or lost the leadership meanwhile): they go too.
    coordinator.loaded.borrow_mut().remove(&partition);
    let partitions = offsets_partitions(node);
    let mut groups = coordinator.groups.borrow_mut();
    groups.retain(|id, group| {
        let keep = partition_for(id, partitions) != partition;
        if !keep {
            group.abandon_waiters(ResponseError::NotCoordinator);
        }
        keep
    });
}

/// Drops the groups of the partitions this broker no longer leads, or leads in a newer
/// epoch than they were loaded in (they are replayed at their next use).
fn unload_moved(node: &Node) {
    let moved: Vec<i32> = node
        .groups
        .loaded
        .borrow()
        .iter()
        .filter(|(p, epoch)| leading_epoch(node, **p) != Ok(**epoch))
        .map(|(p, _)| *p)
        .collect();
    for partition in moved {
        tracing::info!(
            partition,
            "no longer coordinating the groups of {OFFSETS_TOPIC} partition"
        );
        unload(node, partition);
    }
}

async fn ensure_all_loaded(node: &Rc<Node>) -> Result<(), ResponseError> {
    let partitions = offsets_partitions(node);
    let me = node.shard.id();
    for partition in 0..partitions {
        let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
        // In cluster mode, only the partitions this broker leads; one that cannot be
        // loaded now (its leadership just moved, say) leaves its groups out of the list
        // rather than failing it.
        if node.shard.owner(&tp) == me && leading_epoch(node, partition).is_ok() {
            if let Err(error) = ensure_loaded(node, partition).await {
                tracing::debug!(%tp, ?error, "groups left out of a list");
            }
        }
    }
    Ok(())
}

/// Reads a partition from its start and applies every record; returns how many.
///
/// It moves on by batches, not records: a compacted batch may end with offsets whose
/// records the cleaner removed (an empty filler batch has none at all), and a read at
/// any of them returns that batch again.
async fn replay(node: &Rc<Node>, tp: &TopicPartition) -> Result<usize, String> {
    let mut offset = match node.shard.offsets(tp.clone()).await {
        Ok(offsets) => offsets.log_start,
        // Not created yet: nothing to load.
        Err(EngineError::UnknownPartition(_)) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let mut count = 0;
    loop {
        let read = node
            .shard
            .read(tp.clone(), offset, REPLAY_READ_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        if read.chunks.is_empty() {
            return Ok(count);
        }
        let from = offset;
        for chunk in &read.chunks {
            let mut bytes = chunk_bytes(chunk)?;
            while !bytes.is_empty() {
                let header = match spate_engine::batch::BatchHeader::parse(&bytes) {
                    Ok(header) if header.size <= bytes.len() => header,
                    // A file range may end inside a batch; the next read starts with it.
                    Ok(_) | Err(BatchError::TooShort { .. }) => break,
                    Err(e) => {
                        return Err(format!(
                            "unreadable batch header at offset {}: {e}",
                            offset.0
                        ))
                    }
                };
                let mut batch = bytes.split_to(header.size);
                let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| {
                    format!("undecodable batch at offset {}: {e}", header.base_offset.0)
                })?;
                // Control records (a leader's epoch marker) hold no group data.
                for record in set.records.iter().filter(|r| r.offset >= offset.0) {
                    if let (false, Some(key)) = (record.control, &record.key) {
                        let entry = records::decode(key, record.value.as_deref())
                            .map_err(|e| format!("record at offset {}: {e}", record.offset))?;
                        apply(&node.groups, entry);
                        count += 1;
                    }
                }
                offset = offset.max(Offset(header.last_offset().0.saturating_add(1)));
            }
        }
        if offset == from {
            return Err(format!(
                "no whole batch at offset {} within a read of {REPLAY_READ_BYTES} bytes",
                offset.0
            ));
        }
    }
}

fn chunk_bytes(chunk: &spate_engine::ReadChunk) -> Result<Bytes, String> {
    match chunk {
        spate_engine::ReadChunk::Cached(bytes) => Ok(bytes.clone()),
        spate_engine::ReadChunk::File {
            file,
            position,
            len,
        } => {
            let mut buf = vec![0; *len as usize];
            file.read_exact_at(&mut buf, *position)
                .map_err(|e| format!("reading a segment: {e}"))?;
            Ok(Bytes::from(buf))
        }
    }
}

fn apply(coordinator: &Coordinator, entry: Entry) {
    let mut groups = coordinator.groups.borrow_mut();
    match entry {
        Entry::Offset {
            group,
            topic,
            partition,
            committed,
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group));
            match committed {
                Some(c) => g.offsets.insert((topic, partition), c),
                None => g.offsets.remove(&(topic, partition)),
            };
        }
        Entry::Group {
            group,
            metadata: Some(record),
        } => {
            let g = groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group));
            g.restore(record, Instant::now());
        }
        Entry::Group {
            group,
            metadata: None,
        } => {
            groups.remove(&group);
        }
    }
}

/// The coordinator's timers: sessions, overdue rebalances, offsets retention.
pub async fn run_timers(node: Rc<Node>) {
    let mut since_expiry = Duration::ZERO;
    while !node.groups.closed.get() {
        glommio::timer::sleep(GROUP_TICK).await;
        unload_moved(&node);
        {
            let now = Instant::now();
            let settings = node.groups.settings;
            for group in node.groups.groups.borrow_mut().values_mut() {
                group.tick(now, &settings);
            }
        }
        persist_changes(&node, None).await;
        since_expiry += GROUP_TICK;
        if since_expiry >= node.config.groups.offsets_retention_check {
            since_expiry = Duration::ZERO;
            expire_offsets(&node).await;
        }
    }
}

/// Drops offsets of empty groups older than `offsets.retention`, and groups left with
/// nothing.
async fn expire_offsets(node: &Rc<Node>) {
    let cutoff = now_ms() - node.config.groups.offsets_retention.as_millis() as i64;
    let partitions = offsets_partitions(node);
    let candidates: Vec<String> = node
        .groups
        .groups
        .borrow()
        .values()
        .filter(|g| g.state == GroupState::Empty)
        .map(|g| g.id.clone())
        .collect();
    for group in candidates {
        let partition = partition_for(&group, partitions);
        // Looked at just before its append (earlier appends may have waited): the
        // group's expired offsets, and whether they are all of them.
        let expired = node.groups.groups.borrow().get(&group).and_then(|g| {
            let old: Vec<(String, i32)> = g
                .offsets
                .iter()
                .filter(|(_, c)| c.commit_timestamp < cutoff)
                .map(|(k, _)| k.clone())
                .collect();
            let emptied = old.len() == g.offsets.len();
            (g.state == GroupState::Empty && !old.is_empty()).then_some((old, emptied))
        });
        let Some((old, emptied)) = expired else {
            continue;
        };
        let mut tombstones: Vec<(Bytes, Option<Bytes>)> = old
            .iter()
            .map(|(topic, p)| (records::offset_key(&group, topic, *p), None))
            .collect();
        if emptied {
            tombstones.push((records::group_key(&group), None));
        }
        let epoch = loaded_epoch(&node.groups, partition);
        if append(node, (partition, epoch), tombstones).await.is_err()
            || loaded_epoch(&node.groups, partition) != epoch
        {
            continue;
        }
        let mut groups = node.groups.groups.borrow_mut();
        if let Some(g) = groups.get_mut(&group) {
            for key in &old {
                g.offsets.remove(key);
            }
            tracing::info!(%group, offsets = old.len(), "expired committed offsets");
            if emptied && g.state == GroupState::Empty && g.offsets.is_empty() {
                groups.remove(&group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;
    use spate_engine::batch::{self, BatchBuilder, Compression};
    use spate_engine::compact::{self, Cleaned};
    use spate_engine::{LeaderEpoch, Offset};

    /// `__consumer_offsets` is compacted, so a replay reads cleaned batches (fewer
    /// records than offsets, any codec) and empty filler batches; the decoder the replay
    /// uses must read them as Kafka's consumers do.
    #[test]
    fn the_replay_decoder_reads_compacted_batches() {
        let mut builder = BatchBuilder::new();
        for i in 0..10u8 {
            builder.push(1_000, Some(&[b'k', i % 3]), Some(&[i; 8]));
        }
        let mut original = Vec::new();
        builder
            .finish(Compression::Lz4, None, &mut original)
            .unwrap();
        batch::patch(&mut original, Offset(100), LeaderEpoch(2));
        // Keep the last record of each key: offsets 107, 108, 109.
        let cleaned = compact::clean_batch(&original, 1 << 20, |r| r.offset.0 >= 107).unwrap();
        let Cleaned::Rewritten(rewritten) = cleaned else {
            panic!("records were dropped: {cleaned:?}");
        };
        let filler = compact::filler_batch(Offset(110), Offset(119), 2, 1_000);
        let mut stored = rewritten;
        stored.extend_from_slice(&filler);
        let mut bytes = Bytes::from(stored);
        let batches = RecordBatchDecoder::decode_all(&mut bytes).expect("decodes");
        let offsets: Vec<i64> = batches
            .iter()
            .flat_map(|b| &b.records)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, vec![107, 108, 109]);
    }
}
