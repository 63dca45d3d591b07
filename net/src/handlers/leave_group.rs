//! LeaveGroup (key 13), versions 0–5: one member (v0–2) or a batch of members, static
//! ones possibly named by instance id only (v3+).

use std::rc::Rc;

use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::group::coordinator::route;
use crate::group::valid_group_id;
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

/// Errors about the coordinator rather than a member: they go in the top-level code.
fn is_coordinator_error(error: ResponseError) -> bool {
    matches!(
        error,
        ResponseError::CoordinatorNotAvailable
            | ResponseError::NotCoordinator
            | ResponseError::CoordinatorLoadInProgress
            | ResponseError::InvalidGroupId
    )
}

pub async fn handle(node: &Rc<Node>, body: &LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        body.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(body.member_id.to_string(), None)]
    };
    let group = body.group_id.to_string();
    let errors = if !valid_group_id(&group) {
        vec![Some(ResponseError::InvalidGroupId); members.len()]
    } else {
        match route(node, &group, GroupCall::Leave(members.clone())).await {
            GroupAnswer::Each(errors) => errors,
            GroupAnswer::Error(error) => vec![error; members.len()],
            other => unreachable!("a leave answers per member, not {other:?}"),
        }
    };
    if version < 3 {
        let error = errors.first().copied().flatten();
        return LeaveGroupResponse::default().with_error_code(error.map_or(0, |e| e.code()));
    }
    let top = errors
        .first()
        .copied()
        .flatten()
        .filter(|e| is_coordinator_error(*e) && errors.iter().all(|x| *x == Some(*e)));
    let responses = if top.is_some() {
        Vec::new()
    } else {
        members
            .iter()
            .zip(&errors)
            .map(|((id, instance), error)| {
                MemberResponse::default()
                    .with_member_id(StrBytes::from_string(id.clone()))
                    .with_group_instance_id(instance.clone().map(StrBytes::from_string))
                    .with_error_code(error.map_or(0, |e| e.code()))
            })
            .collect()
    };
    LeaveGroupResponse::default()
        .with_error_code(top.map_or(0, |e| e.code()))
        .with_members(responses)
}
