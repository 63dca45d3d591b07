//! Kafka API handlers, one file per API. `SUPPORTED` is the single list of what this
//! broker advertises in ApiVersions and accepts; a request for anything else closes
//! the connection.

pub mod allocate_producer_ids;
pub mod alter_configs;
pub mod alter_partition;
pub mod api_versions;
pub mod broker_registration;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod errors;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use crate::codec::Request;
use crate::error::{NetError, Result};
use crate::node::Node;

/// APIs this broker implements, with the versions it accepts (inclusive).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // Between the brokers of a cluster (see `cluster::register`).
    (ApiKey::BrokerRegistration, 0, 0),
    (ApiKey::AllocateProducerIds, 0, 0),
    (ApiKey::AlterPartition, 2, 2),
];

/// The accepted version range of `api_key`, if it is implemented.
pub fn supported(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|(_, min, max)| (*min, *max))
}

/// What a handler answers with.
#[derive(Debug)]
pub enum Reply {
    /// A response the codec encodes (boxed: response structs are large).
    Message(Box<ResponseKind>),
    /// A response framed by hand (Fetch, for zero-copy records).
    Frame(Vec<fetch::Part>),
    /// No response at all (acks=0 produce).
    Nothing,
}

/// Handles a decoded request from the client at `peer` (its address, for DescribeGroups).
pub async fn handle(node: &Rc<Node>, request: &Request, peer: &str) -> Result<Reply> {
    let version = request.version;
    let response = match &request.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::response()),
        RequestKind::Metadata(body) => {
            ResponseKind::Metadata(metadata::handle(node, body, version).await)
        }
        RequestKind::CreateTopics(body) => {
            let client_id = request.header.client_id.as_deref().unwrap_or("");
            ResponseKind::CreateTopics(create_topics::handle(node, body, version, client_id).await)
        }
        RequestKind::ListOffsets(body) => {
            ResponseKind::ListOffsets(list_offsets::handle(node, body, version).await)
        }
        RequestKind::Produce(body) => match produce::handle(node, body, version).await {
            Some(response) => ResponseKind::Produce(response),
            None => return Ok(Reply::Nothing),
        },
        RequestKind::DeleteTopics(body) => {
            ResponseKind::DeleteTopics(delete_topics::handle(node, body, version).await)
        }
        RequestKind::DeleteRecords(body) => {
            ResponseKind::DeleteRecords(delete_records::handle(node, body).await)
        }
        RequestKind::OffsetForLeaderEpoch(body) => {
            ResponseKind::OffsetForLeaderEpoch(offset_for_leader_epoch::handle(node, body).await)
        }
        RequestKind::InitProducerId(body) => {
            ResponseKind::InitProducerId(init_producer_id::handle(node, body).await)
        }
        RequestKind::CreatePartitions(body) => {
            ResponseKind::CreatePartitions(create_partitions::handle(node, body).await)
        }
        RequestKind::DescribeConfigs(body) => {
            ResponseKind::DescribeConfigs(describe_configs::handle(node, body, version))
        }
        RequestKind::AlterConfigs(body) => {
            ResponseKind::AlterConfigs(alter_configs::handle(node, body).await)
        }
        RequestKind::IncrementalAlterConfigs(body) => ResponseKind::IncrementalAlterConfigs(
            incremental_alter_configs::handle(node, body).await,
        ),
        RequestKind::FindCoordinator(body) => {
            ResponseKind::FindCoordinator(find_coordinator::handle(node, body, version).await)
        }
        RequestKind::JoinGroup(body) => {
            let client_id = request.header.client_id.as_deref().unwrap_or("");
            let host = format!("/{peer}");
            ResponseKind::JoinGroup(join_group::handle(node, body, version, client_id, &host).await)
        }
        RequestKind::SyncGroup(body) => {
            ResponseKind::SyncGroup(sync_group::handle(node, body, version).await)
        }
        RequestKind::Heartbeat(body) => {
            ResponseKind::Heartbeat(heartbeat::handle(node, body, version).await)
        }
        RequestKind::LeaveGroup(body) => {
            ResponseKind::LeaveGroup(leave_group::handle(node, body, version).await)
        }
        RequestKind::OffsetCommit(body) => {
            ResponseKind::OffsetCommit(offset_commit::handle(node, body, version).await)
        }
        RequestKind::OffsetFetch(body) => {
            ResponseKind::OffsetFetch(offset_fetch::handle(node, body, version).await)
        }
        RequestKind::ListGroups(body) => {
            ResponseKind::ListGroups(list_groups::handle(node, body, version).await)
        }
        RequestKind::DescribeGroups(body) => {
            ResponseKind::DescribeGroups(describe_groups::handle(node, body, version).await)
        }
        RequestKind::DeleteGroups(body) => {
            ResponseKind::DeleteGroups(delete_groups::handle(node, body).await)
        }
        RequestKind::OffsetDelete(body) => {
            ResponseKind::OffsetDelete(offset_delete::handle(node, body).await)
        }
        RequestKind::BrokerRegistration(body) => {
            ResponseKind::BrokerRegistration(broker_registration::handle(node, body).await)
        }
        RequestKind::AllocateProducerIds(body) => {
            ResponseKind::AllocateProducerIds(allocate_producer_ids::handle(node, body).await)
        }
        RequestKind::AlterPartition(body) => {
            ResponseKind::AlterPartition(alter_partition::handle(node, body).await)
        }
        RequestKind::DescribeCluster(_) => {
            ResponseKind::DescribeCluster(describe_cluster::handle(node))
        }
        RequestKind::Fetch(body) => {
            return Ok(Reply::Frame(
                fetch::handle(node, body, version, request.header.correlation_id).await,
            ));
        }
        // `decode` lets through only APIs in SUPPORTED; one listed there without a
        // handler here closes the connection rather than the shard.
        _ => return Err(NetError::UnknownApi(request.api_key as i16)),
    };
    Ok(Reply::Message(Box::new(response)))
}
