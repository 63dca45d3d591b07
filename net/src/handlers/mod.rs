//! Kafka API handlers, one file per API. `SUPPORTED` is the single list of what this
//! broker advertises in ApiVersions and accepts; a request for anything else closes
//! the connection.

pub mod api_versions;
pub mod create_topics;
pub mod metadata;

use std::rc::Rc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};

use crate::codec::Request;
use crate::error::{NetError, Result};
use crate::node::Node;

/// APIs this broker implements, with the versions it accepts (inclusive).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
];

/// The accepted version range of `api_key`, if it is implemented.
pub fn supported(api_key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(key, _, _)| *key == api_key)
        .map(|(_, min, max)| (*min, *max))
}

/// Handles a decoded request; `Ok(None)` means no response is sent (acks=0 produce).
pub async fn handle(node: &Rc<Node>, request: &Request) -> Result<Option<ResponseKind>> {
    let response = match &request.body {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions::response()),
        RequestKind::Metadata(body) => {
            ResponseKind::Metadata(metadata::handle(node, body, request.version).await)
        }
        RequestKind::CreateTopics(body) => {
            ResponseKind::CreateTopics(create_topics::handle(node, body, request.version).await)
        }
        // `decode` lets through only APIs in SUPPORTED; one listed there without a
        // handler here closes the connection rather than the shard.
        _ => return Err(NetError::UnknownApi(request.api_key as i16)),
    };
    Ok(Some(response))
}
