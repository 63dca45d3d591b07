//! Heartbeat (key 12), versions 0–4: keeps a member's session alive and tells it when
//! to rejoin (REBALANCE_IN_PROGRESS).

use std::rc::Rc;

use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::ResponseError;

use crate::group::coordinator::route;
use crate::group::{field_since, valid_group_id};
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

pub async fn handle(node: &Rc<Node>, body: &HeartbeatRequest, version: i16) -> HeartbeatResponse {
    let group = body.group_id.to_string();
    let error = if !valid_group_id(&group) {
        Some(ResponseError::InvalidGroupId)
    } else {
        let call = GroupCall::Heartbeat {
            member_id: body.member_id.to_string(),
            instance_id: field_since(&body.group_instance_id, 3, version),
            generation: body.generation_id,
        };
        match route(node, &group, call).await {
            GroupAnswer::Error(error) => error,
            other => unreachable!("a heartbeat answers with an error code, not {other:?}"),
        }
    };
    HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
}
