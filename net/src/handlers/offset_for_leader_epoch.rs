//! OffsetForLeaderEpoch (key 23), versions 2–4: the end offset of a leader epoch, which
//! clients use to detect log truncation. On a single node there is one epoch, 0, whose
//! end is the log end; a later epoch is unknown (-1, -1), as Kafka answers. In cluster
//! mode the leader answers from its replica's epoch cache: the largest epoch at most the
//! one asked, and where it ends.

use std::rc::Rc;

use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use spate_engine::TopicPartition;

use super::errors::kafka_error;
use crate::cluster::{leader_check, replicated};
use crate::node::Node;

const SINGLE_NODE_EPOCH: i32 = 0;

pub async fn handle(
    node: &Rc<Node>,
    request: &OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.as_str(), p.partition);
            let result = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let result = match leader_check(node, &tp, p.current_leader_epoch) {
                Some(error) => result.with_error_code(error.code()),
                None if node.cluster().is_some() => {
                    match replicated::epoch_end(node, tp, p.leader_epoch).await {
                        Ok(Some((epoch, end))) => {
                            result.with_leader_epoch(epoch).with_end_offset(end)
                        }
                        Ok(None) => result,
                        Err((error, _)) => result.with_error_code(error.code()),
                    }
                }
                None => match node.shard.offsets(tp).await {
                    Ok(offsets) if p.leader_epoch <= SINGLE_NODE_EPOCH => result
                        .with_leader_epoch(SINGLE_NODE_EPOCH)
                        .with_end_offset(offsets.log_end.0),
                    Ok(_) => result,
                    Err(e) => result.with_error_code(kafka_error(&e).code()),
                },
            };
            partitions.push(result);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
