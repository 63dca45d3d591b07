//! Topic administration, run on the controller shard (see `node`).
//!
//! Requests are validated on the shard that received them (`spec_from_request`), so the
//! controller only sees well-formed specs. Creating a topic creates each partition on
//! its owning shard through the engine; if any partition fails, those already created
//! are deleted again, so a topic exists whole or not at all.

use std::sync::Arc;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::ResponseError;
use spate_engine::catalog::{Catalog, TopicRecord};
use spate_engine::{EngineError, PartitionConfig, TopicPartition};

use crate::limits::TOPIC_PARTITIONS_MAX;
use crate::node::Node;

/// A validated topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub config: PartitionConfig,
    /// The configs given, as named by the client, for DescribeConfigs.
    pub overrides: Vec<(String, String)>,
}

/// What became of one topic.
#[derive(Debug, Clone)]
pub struct TopicOutcome {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: i32,
    pub error: Option<(ResponseError, String)>,
}

impl TopicOutcome {
    pub fn failed(name: String, error: ResponseError, message: impl Into<String>) -> TopicOutcome {
        TopicOutcome {
            name,
            id: [0; 16],
            partitions: -1,
            error: Some((error, message.into())),
        }
    }

    pub fn shutting_down(name: String) -> TopicOutcome {
        TopicOutcome::failed(
            name,
            ResponseError::NotController,
            "the broker is shutting down",
        )
    }
}

/// Topic configs the broker knows besides the engine's, with their allowed values.
fn check_broker_config(key: &str, value: &str) -> Result<(), String> {
    match key {
        "cleanup.policy" => match value {
            "delete" | "compact" | "compact,delete" | "delete,compact" => Ok(()),
            _ => Err("must be delete, compact or compact,delete".into()),
        },
        "min.insync.replicas" => match value.parse::<i32>() {
            Ok(n) if n >= 1 => Ok(()),
            _ => Err("must be a whole number of at least 1".into()),
        },
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err("must be CreateTime or LogAppendTime".into()),
        },
        _ => Err("unknown config".into()),
    }
}

/// Validates a CreateTopics entry.
pub fn spec_from_request(
    topic: &CreatableTopic,
    default_partitions: i32,
) -> Result<TopicSpec, (ResponseError, String)> {
    let name = topic.name.0.as_str().to_string();
    spate_engine::types::validate_topic_name(&name)
        .map_err(|e| (ResponseError::InvalidTopicException, e.to_string()))?;
    if name.starts_with("__") {
        return Err((
            ResponseError::InvalidTopicException,
            "names starting with __ are reserved for internal topics".into(),
        ));
    }
    let partitions = if topic.num_partitions == -1 {
        default_partitions
    } else {
        topic.num_partitions
    };
    if !(1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
        return Err((
            ResponseError::InvalidPartitions,
            format!("partitions must be between 1 and {TOPIC_PARTITIONS_MAX}"),
        ));
    }
    if topic.replication_factor != -1 && topic.replication_factor != 1 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {} is larger than the 1 available broker",
                topic.replication_factor
            ),
        ));
    }
    if !topic.assignments.is_empty() {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            "manual replica assignment is not supported".into(),
        ));
    }
    let mut config = PartitionConfig::default();
    let mut overrides = Vec::new();
    for entry in &topic.configs {
        let key = entry.name.as_str();
        let Some(value) = entry.value.as_ref().map(|v| v.as_str()) else {
            continue;
        };
        if PartitionConfig::KEYS.contains(&key) {
            config
                .set(key, value)
                .map_err(|e| (ResponseError::InvalidConfig, e.to_string()))?;
        } else {
            check_broker_config(key, value).map_err(|reason| {
                (
                    ResponseError::InvalidConfig,
                    format!("invalid config {key}={value}: {reason}"),
                )
            })?;
        }
        overrides.push((key.to_string(), value.to_string()));
    }
    Ok(TopicSpec {
        name,
        partitions,
        config,
        overrides,
    })
}

fn random_id() -> [u8; 16] {
    let mut id: [u8; 16] = rand::random();
    // A version-4 UUID, as Kafka's topic ids are.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// A new cluster id: 16 random bytes, hex.
pub fn new_cluster_id() -> String {
    random_id().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new topic id.
pub fn new_topic_id() -> [u8; 16] {
    random_id()
}

/// Creates topics; returns the outcomes and, if anything was created, the new catalog.
pub async fn create_topics(
    node: &Node,
    topics: Vec<TopicSpec>,
    validate_only: bool,
) -> (Vec<TopicOutcome>, Option<Arc<Catalog>>) {
    let mut catalog = (*node.catalog()).clone();
    let mut outcomes = Vec::with_capacity(topics.len());
    let mut changed = false;
    for spec in topics {
        if catalog.topics.contains_key(&spec.name) {
            outcomes.push(TopicOutcome::failed(
                spec.name.clone(),
                ResponseError::TopicAlreadyExists,
                format!("topic '{}' already exists", spec.name),
            ));
            continue;
        }
        if validate_only {
            outcomes.push(TopicOutcome {
                name: spec.name,
                id: [0; 16],
                partitions: spec.partitions,
                error: None,
            });
            continue;
        }
        match create_partitions(node, &spec).await {
            Ok(()) => {
                let record = TopicRecord {
                    name: spec.name.clone(),
                    id: new_topic_id(),
                    partitions: spec.partitions,
                    configs: spec.overrides,
                };
                outcomes.push(TopicOutcome {
                    name: spec.name.clone(),
                    id: record.id,
                    partitions: spec.partitions,
                    error: None,
                });
                catalog.topics.insert(spec.name, record);
                changed = true;
                tracing::info!(topic = %outcomes.last().map_or("", |o| o.name.as_str()), "created topic");
            }
            Err((error, message)) => outcomes.push(TopicOutcome::failed(spec.name, error, message)),
        }
    }
    if !changed {
        return (outcomes, None);
    }
    if let Err(e) = catalog.save(&node.config.data_dir).await {
        // The partitions exist and hold the truth; a restart rebuilds the catalog from them.
        tracing::error!(error = %e, "could not save the topic catalog");
    }
    (outcomes, Some(Arc::new(catalog)))
}

/// Creates every partition of a topic, or none.
async fn create_partitions(node: &Node, spec: &TopicSpec) -> Result<(), (ResponseError, String)> {
    let mut created = Vec::new();
    for p in 0..spec.partitions {
        let tp = TopicPartition::new(&spec.name, p);
        match node
            .shard
            .create_partition(tp.clone(), spec.config.clone())
            .await
        {
            Ok(()) => created.push(tp),
            Err(e) => {
                for tp in created {
                    if let Err(undo) = node.shard.delete_partition(tp.clone()).await {
                        tracing::error!(partition = %tp, error = %undo, "could not undo a partly created topic");
                    }
                }
                let code = match e {
                    EngineError::PartitionExists(_) => ResponseError::TopicAlreadyExists,
                    EngineError::InvalidConfig { .. } => ResponseError::InvalidConfig,
                    EngineError::LimitReached(_) => ResponseError::PolicyViolation,
                    _ => ResponseError::KafkaStorageError,
                };
                return Err((code, e.to_string()));
            }
        }
    }
    Ok(())
}

/// Deletes topics: every partition, then the catalog entry. Returns per topic its id (if
/// it existed) and an error, and the new catalog if anything was deleted.
pub async fn delete_topics(
    node: &Node,
    names: Vec<String>,
) -> (Vec<TopicOutcome>, Option<Arc<Catalog>>) {
    let mut catalog = (*node.catalog()).clone();
    let mut outcomes = Vec::with_capacity(names.len());
    let mut changed = false;
    for name in names {
        let Some(record) = catalog.topics.get(&name).cloned() else {
            outcomes.push(TopicOutcome::failed(
                name,
                ResponseError::UnknownTopicOrPartition,
                "no such topic",
            ));
            continue;
        };
        let mut failure = None;
        for p in 0..record.partitions {
            let tp = TopicPartition::new(&name, p);
            match node.shard.delete_partition(tp).await {
                Ok(()) | Err(EngineError::UnknownPartition(_)) => {}
                Err(e) => failure = Some((ResponseError::KafkaStorageError, e.to_string())),
            }
        }
        // Even a partial failure removes the topic from the catalog: its remaining
        // partitions are offline, and the catalog must not offer what cannot be served.
        catalog.topics.remove(&name);
        changed = true;
        tracing::info!(topic = %name, "deleted topic");
        outcomes.push(TopicOutcome {
            name,
            id: record.id,
            partitions: record.partitions,
            error: failure,
        });
    }
    if !changed {
        return (outcomes, None);
    }
    if let Err(e) = catalog.save(&node.config.data_dir).await {
        tracing::error!(error = %e, "could not save the topic catalog");
    }
    (outcomes, Some(Arc::new(catalog)))
}
