//! OffsetFetch (key 9), versions 1–9: committed offsets from the coordinator's memory,
//! which holds only durable commits. One group (v1–7) or a batch of groups (v8+); no
//! topic list (v2+) means every partition the group has committed. A partition with no
//! commit answers offset -1.

use std::rc::Rc;

use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::group::coordinator::route;
use crate::group::state::Committed;
use crate::group::valid_group_id;
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

/// One topic's partitions and their commits (if any).
type TopicCommits = (String, Vec<(i32, Option<Committed>)>);

/// One group's answer: a group-level error, or each partition's commit, by topic.
type Fetched = Result<Vec<TopicCommits>, ResponseError>;

async fn fetch(node: &Rc<Node>, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> Fetched {
    if !valid_group_id(group) {
        return Err(ResponseError::InvalidGroupId);
    }
    let partitions = topics.map(|topics| {
        topics
            .into_iter()
            .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
            .collect()
    });
    let found = match route(node, group, GroupCall::Fetch(partitions)).await {
        GroupAnswer::Fetch(found) => found?,
        GroupAnswer::Error(error) => return Err(error.unwrap_or(ResponseError::UnknownServerError)),
        other => unreachable!("a fetch answers with offsets, not {other:?}"),
    };
    let mut by_topic: Vec<TopicCommits> = Vec::new();
    for (topic, partition, committed) in found {
        match by_topic.last_mut() {
            Some((t, ps)) if *t == topic => ps.push((partition, committed)),
            _ => by_topic.push((topic, vec![(partition, committed)])),
        }
    }
    Ok(by_topic)
}

/// (offset, leader epoch, metadata) of a partition's commit, or of none.
fn fields(committed: Option<Committed>) -> (i64, i32, StrBytes) {
    match committed {
        Some(c) => (c.offset, c.leader_epoch, StrBytes::from_string(c.metadata)),
        None => (-1, -1, StrBytes::default()),
    }
}

pub async fn handle(
    node: &Rc<Node>,
    body: &OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(body.groups.len());
        for g in &body.groups {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let answer = fetch(node, &g.group_id, topics).await;
            let (code, topics) = match answer {
                Err(e) => (e.code(), Vec::new()),
                Ok(topics) => (0, topics),
            };
            let topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let partitions = partitions
                        .into_iter()
                        .map(|(p, committed)| {
                            let (offset, epoch, metadata) = fields(committed);
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(epoch)
                                .with_metadata(Some(metadata))
                        })
                        .collect();
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(StrBytes::from_string(name)))
                        .with_partitions(partitions)
                })
                .collect();
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics)
                    .with_error_code(code),
            );
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let requested: Option<Vec<(String, Vec<i32>)>> = body.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let answer = fetch(node, &body.group_id, requested.clone()).await;
    // v1 has no top-level error: a group-level error goes on every partition asked for.
    let (top, topics): (_, Vec<(TopicCommits, Option<ResponseError>)>) = match answer {
        Ok(topics) => (None, topics.into_iter().map(|t| (t, None)).collect()),
        Err(e) if version >= 2 => (Some(e), Vec::new()),
        Err(e) => (
            None,
            requested
                .unwrap_or_default()
                .into_iter()
                .map(|(t, ps)| ((t, ps.into_iter().map(|p| (p, None)).collect()), Some(e)))
                .collect(),
        ),
    };
    let topics = topics
        .into_iter()
        .map(
            |((name, partitions), error): (TopicCommits, Option<ResponseError>)| {
                let partitions = partitions
                    .into_iter()
                    .map(|(p, committed)| {
                        let (offset, epoch, metadata) = fields(committed);
                        OffsetFetchResponsePartition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(if version >= 5 { epoch } else { -1 })
                            .with_metadata(Some(metadata))
                            .with_error_code(error.map_or(0, |e| e.code()))
                    })
                    .collect();
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(partitions)
            },
        )
        .collect();
    let response = OffsetFetchResponse::default().with_topics(topics);
    if version >= 2 {
        response.with_error_code(top.map_or(0, |e| e.code()))
    } else {
        response
    }
}
