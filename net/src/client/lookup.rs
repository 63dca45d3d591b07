//! Lookups the command line and the benchmark harness share: a topic's partitions,
//! offsets by time, a group's coordinator, committing offsets.

use std::collections::{BTreeMap, BTreeSet};

use super::errors::failure;
use super::route::leaders_in;
use super::Client;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, GroupId, TopicName};
use kafka_protocol::messages::{ListOffsetsResponse, MetadataResponse, OffsetCommitResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

/// ListOffsets' special timestamps.
pub const LATEST: i64 = -1;
pub const EARLIEST: i64 = -2;

pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// The offset of each partition at `timestamp`; every partition asked for is in the
/// answer, or this is an error. (LATEST, EARLIEST or a time in ms). Each partition is
/// asked of its leader, as brokers of a cluster answer only for what they lead; for a
/// session that must follow leaders as they move, `route::Router::offsets_at`.
pub fn offsets_at(
    client: &mut Client,
    partitions: &BTreeSet<(String, i32)>,
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let topics: BTreeSet<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
    let metadata = metadata_of(client, &topics.into_iter().collect::<Vec<_>>())?;
    let leaders = leaders_in(&metadata, &broker_addresses(&metadata));
    let mut by_leader: BTreeMap<String, BTreeSet<(String, i32)>> = BTreeMap::new();
    for key in partitions {
        // No leader known (or no such partition): the broker at hand says why.
        let leader = leaders
            .get(key)
            .map_or_else(|| client.address().to_string(), String::clone);
        by_leader.entry(leader).or_default().insert(key.clone());
    }
    let version = client
        .version(ApiKey::ListOffsets, (1, 7))
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (leader, asked) in &by_leader {
        let request = offsets_request(asked, timestamp);
        let answer = if leader == client.address() {
            client.send(version, &request)
        } else {
            let mut other = client.connect_like(leader).map_err(|e| e.to_string())?;
            other.send(version, &request)
        };
        let (found, _) = read_offsets(&answer.map_err(|e| e.to_string())?, |_| false)?;
        out.extend(found);
    }
    // Callers index the answer by every partition they asked for.
    if let Some((topic, p)) = partitions.iter().find(|tp| !out.contains_key(*tp)) {
        return Err(format!(
            "the broker did not answer the offsets of {topic}-{p}"
        ));
    }
    Ok(out)
}

/// Each broker of a Metadata answer by id, as `host:port`.
pub fn broker_addresses(metadata: &MetadataResponse) -> BTreeMap<i32, String> {
    metadata
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect()
}

/// A ListOffsets request (a consumer's) for `partitions` at `timestamp`.
pub fn offsets_request(partitions: &BTreeSet<(String, i32)>, timestamp: i64) -> ListOffsetsRequest {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, p) in partitions {
        by_topic.entry(topic).or_default().push(*p);
    }
    let topics = by_topic
        .iter()
        .map(|(topic, ps)| {
            ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    ps.iter()
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(*p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )
        })
        .collect();
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(topics)
}

/// The offsets a ListOffsets answer gives, and the partitions refused with an error
/// `retry` accepts (a leader that moved); any other error is this one.
pub fn read_offsets(
    answered: &ListOffsetsResponse,
    retry: impl Fn(i16) -> bool,
) -> Result<OffsetsRead, String> {
    let (mut found, mut refused) = (BTreeMap::new(), BTreeSet::new());
    for topic in &answered.topics {
        for p in &topic.partitions {
            let key = (topic.name.to_string(), p.partition_index);
            match p.error_code {
                0 => {
                    found.insert(key, p.offset);
                }
                code if retry(code) => {
                    refused.insert(key);
                }
                code => {
                    return Err(failure(
                        &format!(
                            "could not read the offsets of {}-{}",
                            topic.name.as_str(),
                            p.partition_index
                        ),
                        code,
                    ))
                }
            }
        }
    }
    Ok((found, refused))
}

/// Offsets found, and partitions to ask again.
pub type OffsetsRead = (BTreeMap<(String, i32), i64>, BTreeSet<(String, i32)>);

/// The broker's Metadata answer for `topics`, asked so that it creates none of them.
pub fn metadata_of(client: &mut Client, topics: &[String]) -> Result<MetadataResponse, String> {
    ask_metadata(client, topics).map_err(|e| e.to_string())
}

/// `metadata_of`, telling a broken connection from other errors.
pub fn ask_metadata(
    client: &mut Client,
    topics: &[String],
) -> crate::error::Result<MetadataResponse> {
    let version = client.version(ApiKey::Metadata, (1, 9))?.max(4);
    client.send(version, &metadata_request(topics))
}

/// A Metadata request (v4 or later) for `topics`, asked so that it creates none of them
/// (the default from v4).
pub fn metadata_request<S: AsRef<str>>(topics: impl IntoIterator<Item = S>) -> MetadataRequest {
    MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(Some(
            topics
                .into_iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t.as_ref()))))
                .collect(),
        ))
}

/// A Metadata topic's name ("" if the broker left it out).
pub fn name_of(topic: &MetadataResponseTopic) -> String {
    topic
        .name
        .as_ref()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// Every partition of `topics`, from Metadata; an unknown topic is an error.
pub fn partitions_of(
    client: &mut Client,
    topics: &[String],
) -> Result<BTreeSet<(String, i32)>, String> {
    let metadata = metadata_of(client, topics)?;
    let mut out = BTreeSet::new();
    for topic in &metadata.topics {
        let name = name_of(topic);
        if topic.error_code != 0 {
            let what = if topic.error_code == ResponseError::UnknownTopicOrPartition.code() {
                format!("topic \"{name}\" does not exist")
            } else {
                format!("topic \"{name}\" is not available")
            };
            return Err(failure(&what, topic.error_code));
        }
        out.extend(
            topic
                .partitions
                .iter()
                .map(|p| (name.clone(), p.partition_index)),
        );
    }
    Ok(out)
}

/// Commits `offsets` for `group` as member `member` of `generation` (-1 and "" for a
/// client managing its own assignment). Returns the first error code, or 0.
pub fn commit_offsets(
    client: &mut Client,
    group: &str,
    generation: i32,
    member: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Result<i16, String> {
    let Some(request) = commit_request(group, generation, member, offsets) else {
        return Ok(0);
    };
    let version = client
        .version(ApiKey::OffsetCommit, (2, 8))
        .map_err(|e| e.to_string())?;
    let answered = client.send(version, &request).map_err(|e| e.to_string())?;
    Ok(first_commit_error(&answered))
}

/// The OffsetCommit request of `commit_offsets`; `None` if there is nothing to commit.
pub fn commit_request(
    group: &str,
    generation: i32,
    member: &str,
    offsets: &BTreeMap<(String, i32), i64>,
) -> Option<OffsetCommitRequest> {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((topic, p), offset) in offsets {
        by_topic.entry(topic).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*offset)
                .with_committed_metadata(Some(StrBytes::default())),
        );
    }
    if by_topic.is_empty() {
        return None;
    }
    Some(
        OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member.to_string()))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(topic_name(t))
                            .with_partitions(ps)
                    })
                    .collect(),
            ),
    )
}

/// The first error of an OffsetCommit answer, or 0.
pub fn first_commit_error(answered: &OffsetCommitResponse) -> i16 {
    answered
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.error_code)
        .find(|c| *c != 0)
        .unwrap_or(0)
}

/// A connection to `group`'s coordinator.
/// Talks to it over `client` if that is the coordinator.
pub fn coordinator_of(mut client: Client, group: &str) -> Result<Client, String> {
    let version = client
        .version(ApiKey::FindCoordinator, (1, 3))
        .map_err(|e| e.to_string())?;
    let found = client
        .send(
            version,
            &FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.into())),
        )
        .map_err(|e| e.to_string())?;
    if found.error_code != 0 {
        return Err(failure(
            &format!("no coordinator for group \"{group}\""),
            found.error_code,
        ));
    }
    let address = format!("{}:{}", found.host.as_str(), found.port);
    if address == client.address() {
        return Ok(client);
    }
    client.connect_like(&address).map_err(|e| e.to_string())
}

/// A consumer's Fetch of `positions` (topic, partition, next offset): no fetch session,
/// read-uncommitted, answered once any byte is there or after `max_wait_ms`.
pub fn fetch_request<'a>(
    positions: impl IntoIterator<Item = (&'a str, i32, i64)>,
    max_wait_ms: i32,
    max_bytes: i32,
    partition_max_bytes: i32,
) -> FetchRequest {
    let mut by_topic: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
    for (topic, partition, offset) in positions {
        by_topic.entry(topic).or_default().push(
            FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(partition_max_bytes),
        );
    }
    FetchRequest::default()
        .with_cluster_id(None)
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    FetchTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        )
}
