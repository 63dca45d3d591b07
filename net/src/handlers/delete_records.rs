//! DeleteRecords (key 21), versions 0–2: move partitions' log start forward; offset -1
//! means the high watermark. Segments wholly below the new start are deleted by the next
//! retention pass.
//!
//! In cluster mode only the partition's leader answers (others: NOT_LEADER_OR_FOLLOWER,
//! so the client asks the leader); followers move their own log start to the leader's
//! as its fetch answers tell them (`spate_replication`). The answer's low watermark is
//! the leader's; Kafka instead waits until every in-sync replica has moved.

use std::rc::Rc;

use kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use kafka_protocol::ResponseError;
use spate_engine::{Offset, TopicPartition};

use super::errors::kafka_error;
use crate::node::Node;

async fn delete(node: &Node, tp: TopicPartition, offset: i64) -> DeleteRecordsPartitionResult {
    let result = DeleteRecordsPartitionResult::default()
        .with_partition_index(tp.partition.0)
        .with_low_watermark(-1);
    if let Some(error) = crate::cluster::leader_check(node, &tp, -1) {
        return result.with_error_code(error.code());
    }
    let target = if offset == -1 {
        match node.shard.offsets(tp.clone()).await {
            Ok(o) => o.high_watermark,
            Err(e) => return result.with_error_code(kafka_error(&e).code()),
        }
    } else if offset < 0 {
        return result.with_error_code(ResponseError::OffsetOutOfRange.code());
    } else {
        Offset(offset)
    };
    match node.shard.delete_records(tp, target).await {
        Ok(low) => result.with_low_watermark(low.0),
        Err(e) => result.with_error_code(kafka_error(&e).code()),
    }
}

pub async fn handle(node: &Rc<Node>, request: &DeleteRecordsRequest) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            partitions.push(
                delete(
                    node,
                    TopicPartition::new(topic.name.0.as_str(), p.partition_index),
                    p.offset,
                )
                .await,
            );
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
