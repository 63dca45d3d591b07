//! ListGroups (key 16), versions 0–5: every group of every shard's coordinator, filtered
//! by state (v4+) and type (v5+; all groups here are "classic").

use std::rc::Rc;

use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;

use crate::group::coordinator::call_on;
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

pub async fn handle(node: &Rc<Node>, body: &ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let states: Vec<String> = body
        .states_filter
        .iter()
        .map(|s| s.to_lowercase())
        .collect();
    let types: Vec<String> = body.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let mut error = None;
    let mut groups = Vec::new();
    for shard in 0..node.shard.shard_count() {
        match call_on(node, shard, String::new(), GroupCall::List).await {
            GroupAnswer::List(listed) => groups.extend(listed),
            GroupAnswer::Error(e) => error = error.or(e),
            other => unreachable!("a list answers with groups, not {other:?}"),
        }
    }
    groups.sort();
    let listed = groups
        .into_iter()
        .filter(|(_, _, state)| states.is_empty() || states.contains(&state.to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, protocol_type, state)| {
            let group = ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(id)))
                .with_protocol_type(StrBytes::from_string(protocol_type));
            let group = if version >= 4 {
                group.with_group_state(StrBytes::from_static_str(state))
            } else {
                group
            };
            if version >= 5 {
                group.with_group_type(StrBytes::from_static_str("classic"))
            } else {
                group
            }
        })
        .collect();
    ListGroupsResponse::default()
        .with_error_code(error.map_or(0, |e| e.code()))
        .with_groups(listed)
}
