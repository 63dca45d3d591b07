//! The data path in cluster mode: client writes and leader-epoch lookups run on the
//! shard that owns the partition, where its replica lives. A request that arrives on
//! another shard travels there over the control mesh (`ControlMessage::Replica`) and
//! runs as its own task, so a write waiting for the quorum never holds the channel.

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::ResponseError;
use spate_engine::{AppendInfo, LeaderEpoch, TopicPartition};
use spate_replication::driver::{Acks, DriverError};

use super::key_of;
use crate::handlers::errors::kafka_error;
use crate::node::Node;

/// A Kafka error code and its message.
pub type Failure = (ResponseError, String);

/// What runs on a partition's owning shard.
#[derive(Debug)]
pub enum ReplicaCall {
    Write {
        batch: BytesMut,
        acks: Acks,
        timeout: Duration,
        /// Only while the replica leads in this epoch (`Replicator::write_in`).
        epoch: Option<i32>,
    },
    /// OffsetForLeaderEpoch.
    EpochEnd { epoch: i32 },
    /// ListOffsets: the epoch of the record at an offset.
    EpochAt { offset: i64 },
}

#[derive(Debug)]
pub enum ReplicaAnswer {
    Written(Result<AppendInfo, Failure>),
    /// The largest epoch at most the one asked and its end offset; `None` if every
    /// epoch of the log is newer.
    EpochEnd(Result<Option<(i32, i64)>, Failure>),
    /// The leader epoch of the record at the offset asked; `None` below every epoch.
    EpochAt(Result<Option<i32>, Failure>),
}

/// The Kafka error a client gets for a driver error.
pub fn failure(error: DriverError) -> Failure {
    let code = match &error {
        // The client refreshes metadata and retries at the leader.
        DriverError::NotLeader { .. } | DriverError::UnknownPartition(_) => {
            ResponseError::NotLeaderOrFollower
        }
        DriverError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
        DriverError::Timeout { .. } => ResponseError::RequestTimedOut,
        DriverError::Engine(e) => kafka_error(e),
        DriverError::Corrupt(_) | DriverError::Listen { .. } => ResponseError::KafkaStorageError,
        DriverError::Metadata(_) => ResponseError::InvalidRequest,
    };
    (code, error.to_string())
}

/// Runs `call` for `tp` on this shard, which owns it.
pub async fn run_here(node: &Node, tp: &TopicPartition, call: ReplicaCall) -> ReplicaAnswer {
    let Some(cluster) = node.cluster() else {
        let error = (
            ResponseError::NotLeaderOrFollower,
            "not in cluster mode".into(),
        );
        return match call {
            ReplicaCall::Write { .. } => ReplicaAnswer::Written(Err(error)),
            ReplicaCall::EpochEnd { .. } => ReplicaAnswer::EpochEnd(Err(error)),
            ReplicaCall::EpochAt { .. } => ReplicaAnswer::EpochAt(Err(error)),
        };
    };
    let key = key_of(tp);
    match call {
        ReplicaCall::Write {
            batch,
            acks,
            timeout,
            epoch,
        } => {
            let epoch = epoch.map(LeaderEpoch);
            let written = cluster
                .replicator
                .write_in(&key, batch, acks, timeout, epoch)
                .await;
            ReplicaAnswer::Written(written.map_err(failure))
        }
        ReplicaCall::EpochEnd { epoch } => {
            let end = cluster
                .replicator
                .epoch_end(&key, LeaderEpoch(epoch))
                .map(|found| found.map(|(epoch, end)| (epoch.0, end.0)));
            ReplicaAnswer::EpochEnd(end.map_err(failure))
        }
        ReplicaCall::EpochAt { offset } => {
            let epoch = cluster
                .replicator
                .epoch_at(&key, spate_engine::Offset(offset))
                .map(|found| found.map(|epoch| epoch.0));
            ReplicaAnswer::EpochAt(epoch.map_err(failure))
        }
    }
}

/// Appends a client's batch through the partition's replica, answering per `acks`;
/// with `epoch`, only if the replica leads in that epoch.
pub async fn write(
    node: &Rc<Node>,
    tp: TopicPartition,
    batch: BytesMut,
    (acks, timeout): (Acks, Duration),
    epoch: Option<i32>,
) -> Result<AppendInfo, Failure> {
    let call = ReplicaCall::Write {
        batch,
        acks,
        timeout,
        epoch,
    };
    match node.replica_call(tp, call).await {
        Some(ReplicaAnswer::Written(written)) => written,
        _ => Err(stopping()),
    }
}

/// The end of leader epoch `epoch` (or the largest before it) in `tp`'s replica.
pub async fn epoch_end(
    node: &Rc<Node>,
    tp: TopicPartition,
    epoch: i32,
) -> Result<Option<(i32, i64)>, Failure> {
    match node.replica_call(tp, ReplicaCall::EpochEnd { epoch }).await {
        Some(ReplicaAnswer::EpochEnd(end)) => end,
        _ => Err(stopping()),
    }
}

/// The leader epoch of the record at `offset` in `tp`'s replica.
pub async fn epoch_at(
    node: &Rc<Node>,
    tp: TopicPartition,
    offset: i64,
) -> Result<Option<i32>, Failure> {
    match node.replica_call(tp, ReplicaCall::EpochAt { offset }).await {
        Some(ReplicaAnswer::EpochAt(epoch)) => epoch,
        _ => Err(stopping()),
    }
}

fn stopping() -> Failure {
    (
        ResponseError::NotLeaderOrFollower,
        "the broker is shutting down".into(),
    )
}
