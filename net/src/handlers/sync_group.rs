//! SyncGroup (key 14), versions 0–5: the leader hands out assignments; every member
//! gets its own.

use std::rc::Rc;

use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::group::coordinator::{route, SyncCall};
use crate::group::state::SyncOutcome;
use crate::group::{field_since, valid_group_id};
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

fn response(outcome: SyncOutcome, version: i16) -> SyncGroupResponse {
    let response = SyncGroupResponse::default()
        .with_error_code(outcome.error.map_or(0, |e| e.code()))
        .with_assignment(outcome.assignment);
    if version < 5 {
        return response;
    }
    response
        .with_protocol_type(outcome.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(outcome.protocol.map(StrBytes::from_string))
}

pub async fn handle(node: &Rc<Node>, body: &SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let group = body.group_id.to_string();
    if !valid_group_id(&group) {
        let outcome = SyncOutcome {
            error: Some(ResponseError::InvalidGroupId),
            ..SyncOutcome::default()
        };
        return response(outcome, version);
    }
    let call = GroupCall::Sync(SyncCall {
        member_id: body.member_id.to_string(),
        instance_id: field_since(&body.group_instance_id, 3, version),
        generation: body.generation_id,
        protocol_type: field_since(&body.protocol_type, 5, version),
        protocol: field_since(&body.protocol_name, 5, version),
        assignments: body
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    });
    match route(node, &group, call).await {
        GroupAnswer::Sync(outcome) => response(outcome, version),
        GroupAnswer::Error(error) => response(
            SyncOutcome {
                error,
                ..SyncOutcome::default()
            },
            version,
        ),
        other => unreachable!("a sync answers with a sync outcome, not {other:?}"),
    }
}
