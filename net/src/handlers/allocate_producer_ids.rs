//! AllocateProducerIds (key 67), version 0: a broker of the cluster taking a block of
//! idempotent producer ids from the controller, which records it in the metadata log so
//! no id is handed out twice. NOT_CONTROLLER on any other broker.

use std::rc::Rc;

use kafka_protocol::messages::allocate_producer_ids_request::AllocateProducerIdsRequest;
use kafka_protocol::messages::allocate_producer_ids_response::AllocateProducerIdsResponse;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::ResponseError;

use crate::node::Node;

pub async fn handle(
    node: &Rc<Node>,
    request: &AllocateProducerIdsRequest,
) -> AllocateProducerIdsResponse {
    let refused = |error: ResponseError| {
        AllocateProducerIdsResponse::default()
            .with_error_code(error.code())
            .with_producer_id_start(ProducerId(-1))
            .with_producer_id_len(0)
    };
    let Some(cluster) = node.cluster() else {
        return refused(ResponseError::NotController);
    };
    let member = u32::try_from(request.broker_id.0).is_ok_and(|id| cluster.is_broker(id));
    if !member {
        return refused(ResponseError::BrokerIdNotRegistered);
    }
    match node.producer_id_block().await {
        Ok((start, len)) => AllocateProducerIdsResponse::default()
            .with_producer_id_start(ProducerId(start))
            .with_producer_id_len(len),
        Err((error, _)) => refused(error),
    }
}
