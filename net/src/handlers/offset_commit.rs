//! OffsetCommit (key 8), versions 2–9: commits are appended to `__consumer_offsets` and
//! answered once durable. Generation -1 with no member id is a client managing its own
//! assignment, allowed while the group has no members.

use std::rc::Rc;

use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::ResponseError;
use spate_engine::Timestamp;

use crate::group::coordinator::{route, CommitCall};
use crate::group::state::Committed;
use crate::group::{field_since, valid_group_id};
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

pub async fn handle(
    node: &Rc<Node>,
    body: &OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let now = Timestamp::now().0;
    let offsets: Vec<(String, i32, Committed)> = body
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                let committed = Committed {
                    offset: p.committed_offset,
                    leader_epoch: if version >= 6 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    commit_timestamp: now,
                };
                (t.name.to_string(), p.partition_index, committed)
            })
        })
        .collect();
    let count = offsets.len();
    let group = body.group_id.to_string();
    let errors = if !valid_group_id(&group) {
        vec![Some(ResponseError::InvalidGroupId); count]
    } else {
        let call = GroupCall::Commit(CommitCall {
            member_id: body.member_id.to_string(),
            instance_id: field_since(&body.group_instance_id, 7, version),
            generation: body.generation_id_or_member_epoch,
            offsets,
        });
        match route(node, &group, call).await {
            GroupAnswer::Each(errors) => errors,
            GroupAnswer::Error(error) => vec![error; count],
            other => unreachable!("a commit answers per partition, not {other:?}"),
        }
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
                    let error = errors.next().flatten();
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
