//! BrokerRegistration (key 62), version 0: a broker of the cluster telling the
//! controller where clients reach it (its first listener other than `REPLICATION`)
//! and where peers reach its shard 0 (the `REPLICATION` listener; see
//! `cluster::register`). Answered only by the controller in cluster mode;
//! NOT_CONTROLLER elsewhere, INCONSISTENT_CLUSTER_ID for a broker of another cluster,
//! INCONSISTENT_VOTER_SET for a voter naming another replication address than the
//! voters were given, INVALID_REQUEST for a broker that is not a voter and names none.

use std::rc::Rc;

use kafka_protocol::messages::broker_registration_request::{BrokerRegistrationRequest, Listener};
use kafka_protocol::messages::broker_registration_response::BrokerRegistrationResponse;
use kafka_protocol::ResponseError;

use spate_replication::metadata::BrokerInfo;

use crate::cluster::register::REPLICATION_LISTENER;
use crate::node::Node;

pub async fn handle(
    node: &Rc<Node>,
    request: &BrokerRegistrationRequest,
) -> BrokerRegistrationResponse {
    let answer = |error: ResponseError| {
        BrokerRegistrationResponse::default()
            .with_error_code(error.code())
            .with_broker_epoch(-1)
    };
    let Some(cluster) = node.cluster() else {
        return answer(ResponseError::NotController);
    };
    if request.cluster_id.as_str() != cluster.config.cluster_id {
        return answer(ResponseError::InconsistentClusterId);
    }
    let Ok(id) = u32::try_from(request.broker_id.0) else {
        return answer(ResponseError::InvalidRequest);
    };
    let Some(info) = broker_info(request) else {
        return answer(ResponseError::InvalidRequest);
    };
    let voter = cluster.config.voters.get(&id);
    match (voter, info.peer.as_deref()) {
        // A voter's replication address is the one every broker was given.
        (Some(given), Some(peer)) if peer != given.to_string() => {
            return answer(ResponseError::InconsistentVoterSet)
        }
        // Any other broker is reached only where it says.
        (None, None) => return answer(ResponseError::InvalidRequest),
        _ => {}
    }
    match node.register_broker(id, info).await {
        Ok(()) => BrokerRegistrationResponse::default().with_broker_epoch(0),
        Err((error, message)) => {
            tracing::debug!(broker = id, ?error, %message, "registration refused");
            answer(error)
        }
    }
}

/// The client and replication addresses a registration names; `None` if it names no
/// client listener, or a replication address that is not an IP and port.
fn broker_info(request: &BrokerRegistrationRequest) -> Option<BrokerInfo> {
    let is_replication = |l: &&Listener| l.name.as_str() == REPLICATION_LISTENER;
    let client = request.listeners.iter().find(|l| !is_replication(l))?;
    let peer = match request.listeners.iter().find(is_replication) {
        Some(l) => {
            let ip: std::net::IpAddr = l.host.as_str().parse().ok()?;
            if ip.is_unspecified() {
                return None;
            }
            Some(std::net::SocketAddr::new(ip, l.port).to_string())
        }
        None => None,
    };
    Some(BrokerInfo {
        host: client.host.to_string(),
        port: client.port,
        peer,
    })
}
