//! CreateTopics (key 19), versions 2–7. Each topic is validated here, then created whole
//! by the controller (see `controller`), or reported with Kafka's error code and a
//! message naming the problem. Names starting with `__` are refused, except from
//! another broker of the cluster creating an internal topic through this controller.

use std::rc::Rc;

use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::controller::{spec_from_request, TopicOutcome};
use crate::node::Node;

/// Fields are set only where `version` has them: the codec refuses to encode a field
/// a version lacks.
pub async fn handle(
    node: &Rc<Node>,
    request: &CreateTopicsRequest,
    version: i16,
    client_id: &str,
) -> CreateTopicsResponse {
    let from_broker = node.cluster().is_some()
        && client_id.starts_with(crate::cluster::register::BROKER_CLIENT_ID_PREFIX);
    let mut outcomes: Vec<Option<TopicOutcome>> = Vec::with_capacity(request.topics.len());
    let mut specs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for topic in &request.topics {
        let name = topic.name.0.as_str().to_string();
        if !seen.insert(name.clone()) {
            outcomes.push(Some(TopicOutcome::failed(
                name,
                kafka_protocol::ResponseError::InvalidRequest,
                "topic named twice in one request",
            )));
            continue;
        }
        match spec_from_request(
            topic,
            node.config.default_partitions,
            node.cluster().is_some(),
            from_broker,
        ) {
            Ok(spec) => {
                specs.push(spec);
                outcomes.push(None);
            }
            Err((error, message)) => {
                outcomes.push(Some(TopicOutcome::failed(name, error, message)))
            }
        }
    }
    let mut created = node
        .create_topics(specs, request.validate_only)
        .await
        .into_iter();
    let results = outcomes
        .into_iter()
        .map(|o| o.or_else(|| created.next()).expect("one outcome per spec"))
        .map(|o| {
            let (code, message) = o.error.map_or((0, None), |(e, m)| {
                (e.code(), Some(StrBytes::from_string(m)))
            });
            let mut result = CreatableTopicResult::default()
                .with_name(TopicName(StrBytes::from_string(o.name)))
                .with_error_code(code)
                .with_error_message(message);
            if version >= 5 {
                result = result
                    .with_num_partitions(o.partitions)
                    .with_replication_factor(if code == 0 { o.replication_factor } else { -1 });
            }
            if version >= 7 {
                result = result.with_topic_id(Uuid::from_bytes(o.id));
            }
            result
        })
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}
