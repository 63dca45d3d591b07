//! JoinGroup (key 11), versions 0–9, with the MEMBER_ID_REQUIRED two-step join of v4+
//! and static membership (`group.instance.id`) from v5. The coordinator's state machine
//! is in `group::state`; this file translates.

use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::group::coordinator::route;
use crate::group::state::{JoinOutcome, JoinRequest};
use crate::group::{field_since, valid_group_id};
use crate::group::{GroupAnswer, GroupCall};
use crate::limits::GROUP_STRING_BYTES_MAX;
use crate::node::Node;

/// A timeout from the wire; negative values count as zero (and are then refused).
pub fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn request(
    body: &JoinGroupRequest,
    version: i16,
    client_id: &str,
    client_host: &str,
) -> JoinRequest {
    let session_timeout = millis(body.session_timeout_ms);
    JoinRequest {
        member_id: body.member_id.to_string(),
        instance_id: field_since(&body.group_instance_id, 5, version),
        client_id: client_id.to_string(),
        client_host: client_host.to_string(),
        session_timeout,
        rebalance_timeout: if version >= 1 {
            millis(body.rebalance_timeout_ms)
        } else {
            session_timeout
        },
        protocol_type: body.protocol_type.to_string(),
        protocols: body
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    }
}

fn response(outcome: JoinOutcome, version: i16) -> JoinGroupResponse {
    let members = outcome
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(id))
                .with_group_instance_id(
                    instance.filter(|_| version >= 5).map(StrBytes::from_string),
                )
                .with_metadata(metadata)
        })
        .collect();
    JoinGroupResponse::default()
        .with_error_code(outcome.error.map_or(0, |e| e.code()))
        .with_generation_id(outcome.generation)
        .with_protocol_type(
            outcome
                .protocol_type
                .filter(|_| version >= 7)
                .map(StrBytes::from_string),
        )
        .with_protocol_name(Some(StrBytes::from_string(
            outcome.protocol.unwrap_or_default(),
        )))
        .with_leader(StrBytes::from_string(outcome.leader))
        .with_skip_assignment(outcome.skip_assignment && version >= 9)
        .with_member_id(StrBytes::from_string(outcome.member_id))
        .with_members(members)
}

pub async fn handle(
    node: &Rc<Node>,
    body: &JoinGroupRequest,
    version: i16,
    client_id: &str,
    client_host: &str,
) -> JoinGroupResponse {
    let group = body.group_id.to_string();
    if !valid_group_id(&group) {
        let outcome = JoinOutcome {
            error: Some(ResponseError::InvalidGroupId),
            generation: -1,
            member_id: body.member_id.to_string(),
            ..JoinOutcome::default()
        };
        return response(outcome, version);
    }
    let request = request(body, version, client_id, client_host);
    let too_long = |s: &str| s.len() > GROUP_STRING_BYTES_MAX;
    if too_long(&request.member_id)
        || request.instance_id.as_deref().is_some_and(too_long)
        || too_long(&request.protocol_type)
        || request.protocols.iter().any(|(name, _)| too_long(name))
    {
        let outcome = JoinOutcome {
            error: Some(ResponseError::InvalidRequest),
            generation: -1,
            ..JoinOutcome::default()
        };
        return response(outcome, version);
    }
    let call = GroupCall::Join(request);
    match route(node, &group, call).await {
        GroupAnswer::Join(outcome) => response(outcome, version),
        GroupAnswer::Error(error) => response(
            JoinOutcome {
                error,
                generation: -1,
                member_id: body.member_id.to_string(),
                ..JoinOutcome::default()
            },
            version,
        ),
        other => unreachable!("a join answers with a join outcome, not {other:?}"),
    }
}
