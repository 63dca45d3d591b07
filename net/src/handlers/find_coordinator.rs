//! FindCoordinator (key 10), versions 0–6: every group's coordinator is this broker.
//! The first request creates `__consumer_offsets`, as Kafka does. Transactional ids
//! (key type 1) get COORDINATOR_NOT_AVAILABLE: transactions are not implemented yet; so
//! do groups in cluster mode, until coordinators fail over with their partitions.

use std::rc::Rc;

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::group::coordinator::ensure_offsets_topic;
use crate::node::Node;

/// Kafka's key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// The coordinator for one key: an error and its message, or none.
async fn find(node: &Rc<Node>, key_type: i8) -> Option<(ResponseError, &'static str)> {
    match key_type {
        // Group coordinators that fail over with their `__consumer_offsets` partition
        // are not built yet; a local one would split groups between brokers.
        KEY_TYPE_GROUP if node.cluster().is_some() => Some((
            ResponseError::CoordinatorNotAvailable,
            "consumer groups are not available in cluster mode yet",
        )),
        KEY_TYPE_GROUP => ensure_offsets_topic(node)
            .await
            .err()
            .map(|e| (e, "the consumer offsets topic is not available")),
        KEY_TYPE_TRANSACTION => Some((
            ResponseError::CoordinatorNotAvailable,
            "transactions are not supported by this broker yet",
        )),
        _ => Some((
            ResponseError::InvalidRequest,
            "unknown coordinator key type",
        )),
    }
}

pub async fn handle(
    node: &Rc<Node>,
    body: &FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let advertise = node.config.advertise;
    let host = StrBytes::from_string(advertise.ip().to_string());
    let port = i32::from(advertise.port());
    let key_type = if version >= 1 {
        body.key_type
    } else {
        KEY_TYPE_GROUP
    };
    let error = find(node, key_type).await;
    let code = error.map_or(0, |(e, _)| e.code());
    let message =
        |v: i16| (v >= 1).then(|| StrBytes::from_static_str(error.map_or("", |(_, m)| m)));
    let (node_id, host, port) = match error {
        None => (BrokerId(node.config.node_id), host, port),
        Some(_) => (BrokerId(-1), StrBytes::default(), -1),
    };
    if version >= 4 {
        let coordinators = body
            .coordinator_keys
            .iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(node_id)
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(code)
                    .with_error_message(error.map(|(_, m)| StrBytes::from_static_str(m)))
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_error_message(message(version))
        .with_node_id(node_id)
        .with_host(host)
        .with_port(port)
}
