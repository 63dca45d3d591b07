//! BrokerRegistration (key 62), version 0: a broker of the cluster telling the
//! controller where clients reach it (see `cluster::register`). Answered only by the
//! controller in cluster mode; NOT_CONTROLLER elsewhere, INCONSISTENT_CLUSTER_ID for a
//! broker of another cluster.

use std::rc::Rc;

use kafka_protocol::messages::broker_registration_request::BrokerRegistrationRequest;
use kafka_protocol::messages::broker_registration_response::BrokerRegistrationResponse;
use kafka_protocol::ResponseError;

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
    let (Ok(id), Some(listener)) = (
        u32::try_from(request.broker_id.0),
        request.listeners.first(),
    ) else {
        return answer(ResponseError::InvalidRequest);
    };
    if !cluster.config.voters.contains_key(&id) {
        // Brokers that are not voters are not supported yet.
        return answer(ResponseError::InconsistentVoterSet);
    }
    let host = listener.host.to_string();
    match node.register_broker(id, host, listener.port).await {
        Ok(()) => BrokerRegistrationResponse::default().with_broker_epoch(0),
        Err((error, message)) => {
            tracing::debug!(broker = id, ?error, %message, "registration refused");
            answer(error)
        }
    }
}
