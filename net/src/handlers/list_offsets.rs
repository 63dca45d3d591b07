//! ListOffsets (key 2), versions 1–7: earliest (-2), latest (-1, the high watermark),
//! max timestamp (-3, v7), or the first offset at or after a timestamp. Answered by the
//! partition's leader only (see `cluster::leader_check`). From v4 the answer carries a
//! leader epoch, which clients keep with their position and later check with
//! OffsetForLeaderEpoch: on a single node always 0; in a cluster, as Kafka answers, the
//! current leader epoch for the latest offset and the epoch of the record at the offset
//! otherwise.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::ResponseError;
use spate_engine::{Timestamp, TopicPartition};

use super::errors::kafka_error;
use crate::cluster::leader_check;
use crate::node::Node;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

async fn lookup(
    node: &Rc<Node>,
    tp: TopicPartition,
    (timestamp, current_leader_epoch): (i64, i32),
    version: i16,
) -> ListOffsetsPartitionResponse {
    let response = ListOffsetsPartitionResponse::default().with_partition_index(tp.partition.0);
    if let Some(error) = leader_check(node, &tp, current_leader_epoch) {
        return response
            .with_error_code(error.code())
            .with_offset(-1)
            .with_timestamp(-1);
    }
    let found = match timestamp {
        LATEST | EARLIEST => node.shard.offsets(tp.clone()).await.map(|o| {
            let offset = if timestamp == LATEST {
                o.high_watermark
            } else {
                o.log_start
            };
            Some((offset.0, -1))
        }),
        MAX_TIMESTAMP if version >= 7 => node
            .shard
            .offset_of_max_timestamp(tp.clone())
            .await
            .map(|hit| hit.map(|(o, t)| (o.0, t.0))),
        t if t < 0 => return response.with_error_code(ResponseError::InvalidRequest.code()),
        t => node
            .shard
            .offset_for_timestamp(tp.clone(), Timestamp(t))
            .await
            .map(|hit| hit.map(|(o, t)| (o.0, t.0))),
    };
    match found {
        Ok(Some((offset, found_at))) => {
            let r = response.with_offset(offset).with_timestamp(found_at);
            if version < 4 {
                return r;
            }
            match epoch_of(node, &tp, timestamp, offset).await {
                Ok(epoch) => r.with_leader_epoch(epoch),
                Err((error, _)) => r.with_error_code(error.code()),
            }
        }
        // No record at or after the timestamp: Kafka's "unknown offset".
        Ok(None) => response.with_offset(-1).with_timestamp(-1),
        Err(e) => response
            .with_error_code(kafka_error(&e).code())
            .with_offset(-1)
            .with_timestamp(-1),
    }
}

/// The leader epoch to answer with `offset`, found for `timestamp`.
async fn epoch_of(
    node: &Rc<Node>,
    tp: &TopicPartition,
    timestamp: i64,
    offset: i64,
) -> Result<i32, crate::cluster::replicated::Failure> {
    let Some(cluster) = node.cluster() else {
        return Ok(0);
    };
    if timestamp == LATEST {
        let owner = node.shard.owner(tp).index();
        return Ok(cluster.leader_of(owner, tp).map_or(-1, |(_, epoch)| epoch));
    }
    let epoch = crate::cluster::replicated::epoch_at(node, tp.clone(), offset).await?;
    Ok(epoch.unwrap_or(-1))
}

pub async fn handle(
    node: &Rc<Node>,
    request: &ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.as_str();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            partitions.push(
                lookup(
                    node,
                    TopicPartition::new(name, p.partition_index),
                    (p.timestamp, p.current_leader_epoch),
                    version,
                )
                .await,
            );
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
