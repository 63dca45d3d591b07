//! IncrementalAlterConfigs (key 44), versions 0–1: edits to a topic's overrides (set,
//! delete back to the default, append to or subtract from a list config such as
//! `cleanup.policy`), checked whole and applied whole per topic (see `alter_configs`).

use std::rc::Rc;

use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};

use super::alter_configs::{alter, error_of, Alteration};
use crate::node::Node;
use crate::topic_config::{ConfigChange, Edit};

fn alteration(resource: &AlterConfigsResource) -> Alteration {
    let edits: Result<Vec<Edit>, _> = resource
        .configs
        .iter()
        .map(|c| {
            Edit::from_wire(
                c.name.as_str(),
                c.config_operation,
                c.value.as_ref().map(|v| v.as_str()),
            )
        })
        .collect();
    Alteration {
        resource_type: resource.resource_type,
        name: resource.resource_name.to_string(),
        change: edits.map(ConfigChange::Edit),
    }
}

pub async fn handle(
    node: &Rc<Node>,
    request: &IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let alterations = request.resources.iter().map(alteration).collect();
    let results = alter(node, alterations, request.validate_only).await;
    let responses = request
        .resources
        .iter()
        .zip(results)
        .map(|(r, result)| {
            let (code, message) = error_of(result);
            AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
