//! OffsetDelete (key 47), version 0: drops committed offsets of partitions the group does
//! not consume (GROUP_SUBSCRIBED_TO_TOPIC for those it does).

use std::rc::Rc;

use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::ResponseError;

use crate::group::coordinator::route;
use crate::group::valid_group_id;
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

pub async fn handle(node: &Rc<Node>, body: &OffsetDeleteRequest) -> OffsetDeleteResponse {
    let partitions: Vec<(String, i32)> = body
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let group = body.group_id.to_string();
    let answer = if !valid_group_id(&group) {
        GroupAnswer::Error(Some(ResponseError::InvalidGroupId))
    } else {
        route(node, &group, GroupCall::OffsetDelete(partitions)).await
    };
    let errors = match answer {
        GroupAnswer::Each(errors) => errors,
        GroupAnswer::Error(error) => {
            return OffsetDeleteResponse::default().with_error_code(error.map_or(0, |e| e.code()))
        }
        other => unreachable!("an offset delete answers per partition, not {other:?}"),
    };
    let mut errors = errors.into_iter();
    let topics = body
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(errors.next().flatten().map_or(0, |e| e.code()))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
