//! Produce (key 0), versions 3–11 (0–2 are advertised, because librdkafka up to 2.10
//! enables compression only when it sees Produce v0 listed, and answered with
//! UNSUPPORTED_VERSION: they carry the old message formats).
//!
//! acks=0 sends no response; acks=1 answers once the batch is in the log; acks=-1 once
//! it is durable (fsync on a single node), or with REQUEST_TIMED_OUT after the request's
//! `timeout_ms` (the batch may still become durable, as in Kafka). Each partition's
//! records must be exactly one v2 RecordBatch; the partitions of a request are appended
//! concurrently on their owning shards. A rejected batch leaves nothing visible. Topics with
//! `message.timestamp.type=LogAppendTime` get their batches stamped with the broker's
//! clock (the one change to a batch's CRC-covered bytes, resealed before it is stored).

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::{join_all, Either};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_engine::batch::BatchHeader;
use spate_engine::{AckPolicy, EngineError, LeaderEpoch, Timestamp, TopicPartition};

use super::errors::kafka_error;
use crate::node::Node;
use crate::topic_config::TopicSettings;
use spate_replication::driver::Acks;

/// The leader epoch stamped into batches on a single node.
const SINGLE_NODE_LEADER_EPOCH: LeaderEpoch = LeaderEpoch(0);

fn failure(index: i32, error: ResponseError, message: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error.code())
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(message.map(StrBytes::from_string))
}

async fn append(
    node: &Rc<Node>,
    tp: TopicPartition,
    records: Option<&bytes::Bytes>,
    policy: AckPolicy,
    durable_timeout: Option<Duration>,
    version: i16,
) -> PartitionProduceResponse {
    let index = tp.partition.0;
    let message = |m: String| (version >= 8).then_some(m);
    if version < 3 {
        return failure(
            index,
            ResponseError::UnsupportedVersion,
            message("Produce v0-v2 are not supported; use v3 or later".into()),
        );
    }
    let Some(records) = records.filter(|r| !r.is_empty()) else {
        return failure(
            index,
            ResponseError::CorruptMessage,
            message("no records".into()),
        );
    };
    // Exactly one batch: the length field of the first must cover all the bytes.
    match BatchHeader::parse(records) {
        Ok(h) if h.size == records.len() => {
            if h.is_transactional() {
                let text = "transactional batches are not supported yet";
                return failure(index, ResponseError::InvalidRecord, message(text.into()));
            }
        }
        Ok(h) if h.size < records.len() => {
            return failure(
                index,
                ResponseError::InvalidRecord,
                message("more than one record batch for a partition".into()),
            );
        }
        _ => {
            return failure(
                index,
                ResponseError::CorruptMessage,
                message("records are not one whole v2 record batch".into()),
            )
        }
    }
    let mut batch = BytesMut::from(&records[..]);
    let log_append_time = match stamp_if_log_append_time(node, &tp, &mut batch) {
        Ok(time) => time,
        Err(e) => return failure(index, kafka_error(&e), message(e.to_string())),
    };
    if node.cluster().is_some() {
        let written = replicated_append(node, tp, batch, policy, durable_timeout).await;
        return match written {
            Ok(info) => PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(info.base_offset.0)
                .with_log_append_time_ms(log_append_time.0)
                .with_log_start_offset(if version >= 5 { info.log_start.0 } else { -1 }),
            Err((error, text)) => failure(index, error, message(text)),
        };
    }
    // The append runs as its own task, so a produce that times out leaves it to finish
    // (Kafka's "maybe written"), never half done.
    let shard = node.shard.clone();
    let task = glommio::spawn_local(async move {
        shard
            .append(tp, batch, SINGLE_NODE_LEADER_EPOCH, policy)
            .await
    });
    let appended = match durable_timeout {
        None => task.await,
        Some(limit) => {
            let expiry = glommio::timer::sleep(limit);
            match futures::future::select(task, Box::pin(expiry)).await {
                Either::Left((appended, _)) => appended,
                Either::Right((_, task)) => {
                    task.detach();
                    let text = format!("not durable within the request's timeout of {limit:?}");
                    return failure(index, ResponseError::RequestTimedOut, message(text));
                }
            }
        }
    };
    match appended {
        Ok(info) => PartitionProduceResponse::default()
            .with_index(index)
            .with_base_offset(info.base_offset.0)
            .with_log_append_time_ms(log_append_time.0)
            .with_log_start_offset(if version >= 5 { info.log_start.0 } else { -1 }),
        Err(e) => failure(index, kafka_error(&e), message(e.to_string())),
    }
}

/// Cluster mode: through the partition's replica. acks=all waits for the quorum commit
/// index, refused up front if fewer than `min.insync.replicas` replicas are in sync.
async fn replicated_append(
    node: &Rc<Node>,
    tp: TopicPartition,
    batch: BytesMut,
    policy: AckPolicy,
    timeout: Option<Duration>,
) -> Result<spate_engine::AppendInfo, crate::cluster::replicated::Failure> {
    let catalog = node.catalog();
    if !crate::cluster::has_partition(&catalog, &tp) {
        let text = format!("no partition {tp} in the cluster's metadata");
        return Err((ResponseError::UnknownTopicOrPartition, text));
    }
    let acks = match policy {
        AckPolicy::Durable => Acks::Quorum {
            min_insync: catalog
                .topics
                .get(&*tp.topic)
                .map_or(1, |t| TopicSettings::of(t).min_insync_replicas),
        },
        _ => Acks::Leader,
    };
    let timeout = timeout.unwrap_or(Duration::ZERO);
    crate::cluster::replicated::write(node, tp, batch, (acks, timeout), None).await
}

fn settings_of(node: &Node, tp: &TopicPartition) -> TopicSettings {
    node.catalog()
        .topics
        .get(&*tp.topic)
        .map(TopicSettings::of)
        .unwrap_or_default()
}

/// For a topic with `message.timestamp.type=LogAppendTime`, stamps the batch with the
/// broker's clock and returns the time; otherwise `Timestamp::NONE` (CreateTime).
fn stamp_if_log_append_time(
    node: &Node,
    tp: &TopicPartition,
    batch: &mut [u8],
) -> Result<Timestamp, EngineError> {
    if !settings_of(node, tp).log_append_time {
        return Ok(Timestamp::NONE);
    }
    let now = Timestamp::now();
    spate_engine::batch::stamp_log_append_time(batch, now)?;
    Ok(now)
}

/// `None` for acks=0: no response is sent.
pub async fn handle(
    node: &Rc<Node>,
    request: &ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let policy = match request.acks {
        0 | 1 => AckPolicy::Appended,
        -1 => AckPolicy::Durable,
        _ => {
            let responses = request
                .topic_data
                .iter()
                .map(|t| {
                    TopicProduceResponse::default()
                        .with_name(t.name.clone())
                        .with_partition_responses(
                            t.partition_data
                                .iter()
                                .map(|p| failure(p.index, ResponseError::InvalidRequiredAcks, None))
                                .collect(),
                        )
                })
                .collect();
            return Some(ProduceResponse::default().with_responses(responses));
        }
    };
    // Kafka's timeout_ms bounds the wait for acks=all acknowledgement (here: fsync).
    let durable_timeout = (policy == AckPolicy::Durable)
        .then(|| Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0)));
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for topic in &request.topic_data {
        let name = topic.name.0.as_str();
        let partitions = join_all(topic.partition_data.iter().map(|p| {
            append(
                node,
                TopicPartition::new(name, p.index),
                p.records.as_ref(),
                policy,
                durable_timeout,
                version,
            )
        }))
        .await;
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name.clone())
                .with_partition_responses(partitions),
        );
    }
    (request.acks != 0).then(|| ProduceResponse::default().with_responses(responses))
}
