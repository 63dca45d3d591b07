//! DeleteTopics (key 20), versions 1–6: by name, or (v6) by topic id.

use std::rc::Rc;

use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::node::Node;

pub async fn handle(
    node: &Rc<Node>,
    request: &DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let catalog = node.catalog();
    // (position, name) of each topic to delete; unknown ids are answered directly.
    let mut results: Vec<Option<DeletableTopicResult>> = Vec::new();
    let mut names = Vec::new();
    let wanted: Vec<(Option<String>, Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.0.as_str().to_string()),
                    t.topic_id,
                )
            })
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.0.as_str().to_string()), Uuid::nil()))
            .collect()
    };
    for (name, id) in wanted {
        let name = name.or_else(|| {
            catalog
                .topics
                .values()
                .find(|r| Uuid::from_bytes(r.id) == id)
                .map(|r| r.name.clone())
        });
        match name {
            Some(name) => {
                names.push(name);
                results.push(None);
            }
            None => results.push(Some(
                DeletableTopicResult::default()
                    .with_topic_id(id)
                    .with_error_code(ResponseError::UnknownTopicId.code()),
            )),
        }
    }
    let mut outcomes = node.delete_topics(names).await.into_iter();
    let responses = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                let o = outcomes.next().expect("one outcome per name");
                let (code, message) = o.error.map_or((0, None), |(e, m)| (e.code(), Some(m)));
                let mut result = DeletableTopicResult::default()
                    .with_name(Some(TopicName(StrBytes::from_string(o.name))))
                    .with_error_code(code);
                if version >= 5 {
                    result = result.with_error_message(message.map(StrBytes::from_string));
                }
                if version >= 6 {
                    result = result.with_topic_id(Uuid::from_bytes(o.id));
                }
                result
            })
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
