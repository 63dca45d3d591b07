//! InitProducerId (key 22), versions 0–5, for idempotent producers: always a new producer
//! id (never handed out before, even across restarts) with epoch 0. Transactional ids are
//! not supported yet.

use std::rc::Rc;

use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::ResponseError;

use crate::node::Node;

pub async fn handle(node: &Rc<Node>, request: &InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = |error: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(error.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        return refused(ResponseError::UnsupportedVersion);
    }
    // A re-initialising producer (v3+, KIP-360: its id and epoch in the request) gets a
    // fresh id too, as Kafka answers producers without a transactional id: a new id
    // starts new sequences just as a bumped epoch would, and an id named by a client is
    // never handed out on its word.
    match node.allocate_producer_id().await {
        Some(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        None => refused(ResponseError::CoordinatorNotAvailable),
    }
}
