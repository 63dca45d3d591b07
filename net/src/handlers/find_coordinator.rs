//! FindCoordinator (key 10), versions 0–6. A group's coordinator is the leader of its
//! `__consumer_offsets` partition: this broker outside cluster mode, the partition's
//! leader in it. The first request creates `__consumer_offsets`, as Kafka does (in
//! cluster mode through the controller). Transactional ids (key type 1) get
//! COORDINATOR_NOT_AVAILABLE: transactions are not implemented yet.

use std::rc::Rc;

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_engine::TopicPartition;

use crate::group::coordinator::{ensure_offsets_topic, offsets_partitions};
use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::node::Node;

/// Kafka's key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// A coordinator: node id, host, port.
type Found = (i32, String, i32);
/// Why there is none: an error and its message.
type NotFound = (ResponseError, String);

/// The coordinator of `key`.
async fn find(node: &Rc<Node>, key_type: i8, key: &str) -> Result<Found, NotFound> {
    match key_type {
        KEY_TYPE_GROUP => {
            ensure_offsets_topic(node)
                .await
                .map_err(|e| (e, "the consumer offsets topic is not available".into()))?;
            group_coordinator(node, key)
        }
        KEY_TYPE_TRANSACTION => Err((
            ResponseError::CoordinatorNotAvailable,
            "transactions are not supported by this broker yet".into(),
        )),
        _ => Err((
            ResponseError::InvalidRequest,
            "unknown coordinator key type".into(),
        )),
    }
}

/// The leader of `group`'s offsets partition, and where clients reach it.
fn group_coordinator(node: &Node, group: &str) -> Result<Found, NotFound> {
    let Some(cluster) = node.cluster() else {
        let advertise = node.config.advertise;
        return Ok((
            node.config.node_id,
            advertise.ip().to_string(),
            i32::from(advertise.port()),
        ));
    };
    let partition = partition_for(group, offsets_partitions(node));
    let tp = TopicPartition::new(OFFSETS_TOPIC, partition);
    let image = cluster.image();
    let unavailable = |why: String| (ResponseError::CoordinatorNotAvailable, why);
    let leader = match cluster.leader_of(node.shard.owner(&tp).index(), &tp) {
        Some((leader, _)) => leader,
        None => {
            let replicas = image
                .topics
                .get(OFFSETS_TOPIC)
                .and_then(|t| t.assignments.get(partition as usize))
                .cloned()
                .unwrap_or_default();
            // A replica not added yet (the broker is starting) knows nothing; one that is
            // not a replica names the leader the image records, else the preferred one,
            // as Metadata does (a client sent astray is answered NOT_COORDINATOR there
            // and asks again).
            if replicas.contains(&cluster.me()) {
                return Err(unavailable(format!("{tp} is not replicated here yet")));
            }
            image
                .recorded_leader(OFFSETS_TOPIC, partition)
                .map(|(leader, _)| leader)
                .or_else(|| replicas.first().copied())
        }
    };
    let leader = leader.ok_or_else(|| unavailable(format!("{tp} has no leader yet")))?;
    let broker = image.brokers.get(&leader).ok_or_else(|| {
        unavailable(format!(
            "broker {leader}, the leader of {tp}, is not registered"
        ))
    })?;
    Ok((leader as i32, broker.host.clone(), i32::from(broker.port)))
}

pub async fn handle(
    node: &Rc<Node>,
    body: &FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let key_type = if version >= 1 {
        body.key_type
    } else {
        KEY_TYPE_GROUP
    };
    if version >= 4 {
        let mut coordinators = Vec::with_capacity(body.coordinator_keys.len());
        for key in &body.coordinator_keys {
            let found = find(node, key_type, key.as_str()).await;
            let (node_id, host, port, code, message) = fields(found);
            coordinators.push(
                Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(node_id)
                    .with_host(host)
                    .with_port(port)
                    .with_error_code(code)
                    .with_error_message(message),
            );
        }
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let found = find(node, key_type, body.key.as_str()).await;
    let (node_id, host, port, code, message) = fields(found);
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_error_message((version >= 1).then(|| message.unwrap_or_default()))
        .with_node_id(node_id)
        .with_host(host)
        .with_port(port)
}

/// The response fields for one key: node id, host, port, error code and message.
fn fields(found: Result<Found, NotFound>) -> (BrokerId, StrBytes, i32, i16, Option<StrBytes>) {
    match found {
        Ok((id, host, port)) => (BrokerId(id), StrBytes::from_string(host), port, 0, None),
        Err((error, message)) => (
            BrokerId(-1),
            StrBytes::default(),
            -1,
            error.code(),
            Some(StrBytes::from_string(message)),
        ),
    }
}
