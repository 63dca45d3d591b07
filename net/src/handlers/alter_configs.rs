//! AlterConfigs (key 33), versions 0–2: each topic's overrides become exactly the
//! configs given; every other key returns to its broker default. A topic's change is
//! checked whole and applied whole, or refused with INVALID_CONFIG naming the key. Broker
//! configs are static (set by `spate serve`), so altering a broker is refused.
//! IncrementalAlterConfigs shares `alter` with this handler.

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::describe_configs::{RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::controller::TopicResult;
use crate::node::Node;
use crate::topic_config::ConfigChange;

/// One resource of an alter request: its type, name, and the change (or why the request
/// for it is already refused).
#[derive(Debug)]
pub struct Alteration {
    pub resource_type: i8,
    pub name: String,
    pub change: Result<ConfigChange, (ResponseError, String)>,
}

/// Applies alterations through the controller; one result per alteration, in order.
pub async fn alter(
    node: &Rc<Node>,
    alterations: Vec<Alteration>,
    validate_only: bool,
) -> Vec<TopicResult> {
    let mut results: Vec<Option<TopicResult>> = Vec::with_capacity(alterations.len());
    let mut changes = Vec::new();
    let mut seen = HashSet::new();
    for a in alterations {
        let refused = match (a.resource_type, a.change) {
            (_, _) if !seen.insert((a.resource_type, a.name.clone())) => Err((
                ResponseError::InvalidRequest,
                format!("resource '{}' is named twice in one request", a.name),
            )),
            (RESOURCE_TOPIC, Ok(change)) => {
                changes.push((a.name, change));
                results.push(None);
                continue;
            }
            (RESOURCE_TOPIC, Err(refusal)) => Err(refusal),
            (RESOURCE_BROKER, _) => Err((
                ResponseError::InvalidRequest,
                "broker configs are static: set them with spate serve's flags or file".into(),
            )),
            (other, _) => Err((
                ResponseError::InvalidRequest,
                format!("resource type {other} has no configs here (topics: 2)"),
            )),
        };
        results.push(Some(refused));
    }
    let mut done = node.alter_configs(changes, validate_only).await.into_iter();
    results
        .into_iter()
        .map(|r| r.or_else(|| done.next()).expect("one result per change"))
        .collect()
}

/// The error code and message of a result.
pub fn error_of(result: TopicResult) -> (i16, Option<StrBytes>) {
    match result {
        Ok(()) => (0, None),
        Err((error, message)) => (error.code(), Some(StrBytes::from_string(message))),
    }
}

pub async fn handle(node: &Rc<Node>, request: &AlterConfigsRequest) -> AlterConfigsResponse {
    let alterations = request
        .resources
        .iter()
        .map(|r| Alteration {
            resource_type: r.resource_type,
            name: r.resource_name.to_string(),
            change: Ok(ConfigChange::Replace(
                r.configs
                    .iter()
                    .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                    .collect(),
            )),
        })
        .collect();
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
    AlterConfigsResponse::default().with_responses(responses)
}
