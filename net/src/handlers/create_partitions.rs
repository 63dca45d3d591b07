//! CreatePartitions (key 37), versions 0–3: grows topics to a larger partition count.
//! New partitions get the topic's current config; a topic grows whole or not at all.
//! Manual replica assignments are refused (a single node has nowhere else to put them).

use std::collections::HashSet;
use std::rc::Rc;

use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::ResponseError;

use super::alter_configs::error_of;
use crate::controller::TopicResult;
use crate::node::Node;

pub async fn handle(
    node: &Rc<Node>,
    request: &CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results: Vec<Option<TopicResult>> = Vec::with_capacity(request.topics.len());
    let mut growths = Vec::new();
    let mut seen = HashSet::new();
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let refusal = if !seen.insert(name.clone()) {
            (
                ResponseError::InvalidRequest,
                format!("topic '{name}' is named twice in one request"),
            )
        } else if topic.assignments.is_some() {
            (
                ResponseError::InvalidReplicaAssignment,
                "manual replica assignment is not supported".into(),
            )
        } else {
            growths.push((name, topic.count));
            results.push(None);
            continue;
        };
        results.push(Some(Err(refusal)));
    }
    let mut grown = node
        .add_partitions(growths, request.validate_only)
        .await
        .into_iter();
    let results = request
        .topics
        .iter()
        .zip(results)
        .map(|(topic, result)| {
            let result = result
                .or_else(|| grown.next())
                .expect("one result per topic");
            let (code, message) = error_of(result);
            CreatePartitionsTopicResult::default()
                .with_name(topic.name.clone())
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
