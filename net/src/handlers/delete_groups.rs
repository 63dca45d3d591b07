//! DeleteGroups (key 42), versions 0–2: deletes groups with no members, with their
//! committed offsets.

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::ResponseError;

use crate::group::coordinator::route;
use crate::group::valid_group_id;
use crate::group::{GroupAnswer, GroupCall};
use crate::node::Node;

pub async fn handle(node: &Rc<Node>, body: &DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(body.groups_names.len());
    for id in &body.groups_names {
        let error = if !valid_group_id(id) {
            Some(ResponseError::InvalidGroupId)
        } else {
            match route(node, id, GroupCall::Delete).await {
                GroupAnswer::Error(e) => e,
                other => unreachable!("a delete answers with an error code, not {other:?}"),
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id.clone())
                .with_error_code(error.map_or(0, |e| e.code())),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
