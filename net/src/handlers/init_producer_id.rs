//! InitProducerId (key 22), versions 0–5, for idempotent producers: a new producer id
//! with epoch 0, or (v3+, KIP-360) the same id with the next epoch when the producer asks
//! to re-initialise its own. Transactional ids are not supported yet.

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
    // KIP-360: the producer re-initialises its own id; when its epochs are exhausted it
    // gets a fresh id instead.
    if request.producer_id.0 >= 0 && (0..i16::MAX).contains(&request.producer_epoch) {
        return InitProducerIdResponse::default()
            .with_producer_id(request.producer_id)
            .with_producer_epoch(request.producer_epoch + 1);
    }
    match node.allocate_producer_id().await {
        Some(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        None => refused(ResponseError::CoordinatorNotAvailable),
    }
}
