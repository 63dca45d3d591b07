//! Messages between shards, and the task that serves one peer's channel.
//!
//! A request carries its own reply channel (`reply`, which never hands a waker to another
//! thread; see there for why). The serving task runs each request as its own task
//! on the latency queue, holding one of `SHARD_PEER_REQUESTS_INFLIGHT_MAX` permits; when
//! they are all taken it stops reading the channel, the channel fills, and the peer's
//! senders wait. That is the mesh's backpressure: bounded in both queue and tasks.

use std::rc::Rc;

use bytes::BytesMut;
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::sync::Semaphore;

use super::reply::ReplySender;
use super::Shard;
use crate::config::{AckPolicy, PartitionConfig};
use crate::error::Result;
use crate::limits::{SHARD_PEER_REQUESTS_INFLIGHT_MAX, SHARD_PEER_WAITS_INFLIGHT_MAX};
use crate::log::{AppendInfo, LogOffsets, ReadResult, RetentionOutcome};
use crate::types::{LeaderEpoch, Offset, Timestamp, TopicPartition};

/// What travels on the mesh.
#[derive(Debug)]
pub enum Message {
    Request(Request),
    /// The sending shard's body has returned; it will send no more requests.
    Done,
}

/// A request for the owning shard, with the channel its answer goes back on.
#[derive(Debug)]
pub enum Request {
    Create {
        tp: TopicPartition,
        config: PartitionConfig,
        reply: ReplySender<Result<()>>,
    },
    Delete {
        tp: TopicPartition,
        reply: ReplySender<Result<()>>,
    },
    Append {
        tp: TopicPartition,
        batch: BytesMut,
        leader_epoch: LeaderEpoch,
        policy: AckPolicy,
        reply: ReplySender<Result<AppendInfo>>,
    },
    /// A read; with a nonzero `wait`, a long poll that waits for data first when there
    /// is none (`PartitionLog::read_or_wait`).
    Read {
        tp: TopicPartition,
        offset: Offset,
        max_bytes: usize,
        wait: std::time::Duration,
        reply: ReplySender<Result<ReadResult>>,
    },
    Offsets {
        tp: TopicPartition,
        reply: ReplySender<Result<LogOffsets>>,
    },
    ForTimestamp {
        tp: TopicPartition,
        timestamp: Timestamp,
        reply: ReplySender<Result<Option<(Offset, Timestamp)>>>,
    },
    Retention {
        tp: TopicPartition,
        now: Timestamp,
        reply: ReplySender<Result<RetentionOutcome>>,
    },
    /// A long poll: answered when data arrives past `offset` or after `timeout`.
    WaitForData {
        tp: TopicPartition,
        offset: Offset,
        timeout: std::time::Duration,
        reply: ReplySender<Result<bool>>,
    },
    MaxTimestamp {
        tp: TopicPartition,
        reply: ReplySender<Result<Option<(Offset, Timestamp)>>>,
    },
    DeleteRecords {
        tp: TopicPartition,
        offset: Offset,
        reply: ReplySender<Result<Offset>>,
    },
    UpdateConfig {
        tp: TopicPartition,
        config: PartitionConfig,
        reply: ReplySender<Result<()>>,
    },
}

impl Request {
    /// Whether the request may wait for data (a long poll), counted against
    /// `SHARD_PEER_WAITS_INFLIGHT_MAX` rather than the request permits.
    fn waits(&self) -> bool {
        match self {
            Request::WaitForData { .. } => true,
            Request::Read { wait, .. } => !wait.is_zero(),
            _ => false,
        }
    }
}

/// Serves shard `peer`'s channel until it closes.
pub(super) async fn serve_peer(shard: Shard, peer: usize, receiver: ConnectedReceiver<Message>) {
    let permits = Rc::new(Semaphore::new(SHARD_PEER_REQUESTS_INFLIGHT_MAX as u64));
    let waits = Rc::new(Semaphore::new(SHARD_PEER_WAITS_INFLIGHT_MAX as u64));
    let mut finished = false;
    while let Some(message) = receiver.recv().await {
        let mut request = match message {
            Message::Done => {
                finished = true;
                shard.note_peer_done(1);
                continue;
            }
            Message::Request(request) => request,
        };
        // Waits run to their own timeout (their requester cannot cancel them across
        // shards), so when the budget is spent a wait is answered at once ("no data yet",
        // or a read without waiting) instead of blocking this channel for the requests
        // behind it.
        let wait_permit = request
            .waits()
            .then(|| waits.try_acquire_static_permit(1).ok())
            .flatten();
        if wait_permit.is_none() {
            match request {
                Request::WaitForData { reply, .. } => {
                    reply.send(Ok(false));
                    continue;
                }
                Request::Read { ref mut wait, .. } => *wait = std::time::Duration::ZERO,
                _ => {}
            }
        }
        let permit = match wait_permit {
            Some(permit) => permit,
            None => {
                let Ok(permit) = permits.acquire_static_permit(1).await else {
                    return;
                };
                permit
            }
        };
        let queue = shard.latency_queue();
        let shard = shard.clone();
        let task = async move {
            execute(&shard, request).await;
            drop(permit);
        };
        glommio::spawn_local_into(task, queue)
            .expect("latency queue exists")
            .detach();
    }
    if !finished {
        // The peer dropped its ends without saying it was done: its thread died (a
        // panic). It will send nothing more, so it counts as done; otherwise this shard
        // would wait for it for ever when it stops.
        tracing::error!(
            shard = shard.id().0,
            peer,
            "a peer shard went away without finishing: its thread died"
        );
        shard.note_peer_died();
    }
}

/// Runs a request locally and sends the answer. A dropped reply channel means the
/// requester gave up (e.g. it shut down); the work is done regardless.
async fn execute(shard: &Shard, request: Request) {
    match request {
        Request::Create { tp, config, reply } => {
            reply.send(shard.local_create(tp, config).await);
        }
        Request::Delete { tp, reply } => {
            reply.send(shard.local_delete(tp).await);
        }
        Request::Append {
            tp,
            batch,
            leader_epoch,
            policy,
            reply,
        } => {
            let result = match shard.local(&tp) {
                Ok(log) => log.append(batch, leader_epoch, policy).await,
                Err(e) => Err(e),
            };
            reply.send(result);
        }
        Request::Read {
            tp,
            offset,
            max_bytes,
            wait,
            reply,
        } => {
            let result = match shard.local(&tp) {
                Ok(log) => log.read_or_wait(offset, max_bytes, wait).await,
                Err(e) => Err(e),
            };
            reply.send(result);
        }
        Request::Offsets { tp, reply } => {
            reply.send(shard.local(&tp).map(|log| log.offsets()));
        }
        Request::ForTimestamp {
            tp,
            timestamp,
            reply,
        } => {
            let result = match shard.local(&tp) {
                Ok(log) => log.offset_for_timestamp(timestamp).await,
                Err(e) => Err(e),
            };
            reply.send(result);
        }
        Request::Retention { tp, now, reply } => {
            let result = match shard.local(&tp) {
                Ok(log) => log.apply_retention(now).await,
                Err(e) => Err(e),
            };
            reply.send(result);
        }
        Request::WaitForData {
            tp,
            offset,
            timeout,
            reply,
        } => {
            let log = match shard.local(&tp) {
                Ok(log) => log,
                Err(e) => {
                    reply.send(Err(e));
                    return;
                }
            };
            // Waits out its own timeout even if the requester stops waiting first: the
            // wait is bounded by that timeout and by SHARD_PEER_WAITS_INFLIGHT_MAX.
            reply.send(Ok(log.wait_for_data(offset, timeout).await));
        }
        Request::MaxTimestamp { tp, reply } => {
            let result = match shard.local(&tp) {
                Ok(log) => log.offset_of_max_timestamp().await,
                Err(e) => Err(e),
            };
            reply.send(result);
        }
        Request::DeleteRecords { tp, offset, reply } => {
            let result = match shard.local(&tp) {
                Ok(log) => log.delete_records(offset).await,
                Err(e) => Err(e),
            };
            reply.send(result);
        }
        Request::UpdateConfig { tp, config, reply } => {
            let result = match shard.local(&tp) {
                Ok(log) => log.update_config(config).await,
                Err(e) => Err(e),
            };
            reply.send(result);
        }
    }
}
