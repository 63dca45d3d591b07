//! DescribeGroups (key 15), versions 0–5: state, protocol and members of each group. An
//! unknown group is described as Dead, as Kafka does.

use std::rc::Rc;

use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::group::coordinator::route;
use crate::group::valid_group_id;
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

pub async fn handle(
    node: &Rc<Node>,
    body: &DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(body.groups.len());
    for id in &body.groups {
        let described = if !valid_group_id(id) {
            Err(ResponseError::InvalidGroupId)
        } else {
            match route(node, id, GroupCall::Describe).await {
                GroupAnswer::Describe(d) => Ok(d),
                GroupAnswer::Error(e) => Err(e.unwrap_or(ResponseError::UnknownServerError)),
                other => unreachable!("a describe answers with a group, not {other:?}"),
            }
        };
        let group = DescribedGroup::default().with_group_id(id.clone());
        let group = match described {
            Err(e) => group
                .with_error_code(e.code())
                .with_group_state(StrBytes::from_static_str("Dead")),
            Ok(d) => {
                let members = d
                    .members
                    .into_iter()
                    .map(|(member, instance, client, host, metadata, assignment)| {
                        DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(member))
                            .with_group_instance_id(
                                instance.filter(|_| version >= 4).map(StrBytes::from_string),
                            )
                            .with_client_id(StrBytes::from_string(client))
                            .with_client_host(StrBytes::from_string(host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment)
                    })
                    .collect();
                group
                    .with_group_state(StrBytes::from_string(d.state))
                    .with_protocol_type(StrBytes::from_string(d.protocol_type))
                    .with_protocol_data(StrBytes::from_string(d.protocol))
                    .with_members(members)
            }
        };
        groups.push(group);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}
