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
use crate::topic_config::{self, ConfigChange};

/// What a controller operation answers per topic: success, or a Kafka error and message.
pub type TopicResult = Result<(), (ResponseError, String)>;

/// A validated topic to create.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Replicas per partition; `None` for the broker's default.
    pub replication_factor: Option<u32>,
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
    /// Replicas per partition, -1 when unknown.
    pub replication_factor: i16,
    pub error: Option<(ResponseError, String)>,
}

impl TopicOutcome {
    pub fn failed(name: String, error: ResponseError, message: impl Into<String>) -> TopicOutcome {
        TopicOutcome {
            name,
            id: [0; 16],
            partitions: -1,
            replication_factor: -1,
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

/// Validates a CreateTopics entry.
/// `clustered`: in cluster mode any replication factor may be asked (the controller
/// checks it against the registered brokers); a single broker has one replica.
/// `internal`: the request comes from a broker of the cluster, which may create
/// `__consumer_offsets` (with its fixed configs, whatever the request says). No other
/// `__` topic can be created.
pub fn spec_from_request(
    topic: &CreatableTopic,
    default_partitions: i32,
    clustered: bool,
    internal: bool,
) -> Result<TopicSpec, (ResponseError, String)> {
    let name = topic.name.0.as_str().to_string();
    spate_engine::types::validate_topic_name(&name)
        .map_err(|e| (ResponseError::InvalidTopicException, e.to_string()))?;
    let offsets_topic = internal && name == crate::group::OFFSETS_TOPIC;
    if name.starts_with("__") && !offsets_topic {
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
    let replication_factor = match topic.replication_factor {
        -1 => None,
        rf if rf >= 1 => Some(rf as u32),
        rf => {
            return Err((
                ResponseError::InvalidReplicationFactor,
                format!("replication factor {rf} must be at least 1"),
            ))
        }
    };
    if !clustered && topic.replication_factor != -1 && topic.replication_factor != 1 {
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
    let given: Vec<(String, String)> = topic
        .configs
        .iter()
        .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
        .collect();
    let overrides = if offsets_topic {
        // The asking broker's segment size, if it gave a valid one; the rest is fixed.
        let segment_bytes = given
            .iter()
            .find(|(k, _)| k == "segment.bytes")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .filter(|b| {
                PartitionConfig::default()
                    .set("segment.bytes", &b.to_string())
                    .is_ok()
            })
            .unwrap_or(crate::group::GroupConfig::default().offsets_segment_bytes);
        crate::group::coordinator::offsets_topic_configs(segment_bytes)
    } else {
        topic_config::apply(&[], &ConfigChange::Replace(given))?
    };
    let config = topic_config::partition_config(&overrides)?;
    Ok(TopicSpec {
        name,
        partitions,
        replication_factor,
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
                replication_factor: 1,
                error: None,
            });
            continue;
        }
        match create_partitions(node, &spec.name, 0..spec.partitions, &spec.config).await {
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
                    replication_factor: 1,
                    error: None,
                });
                catalog.topics.insert(spec.name, record);
                changed = true;
                tracing::info!(topic = %outcomes.last().map_or("", |o| o.name.as_str()), "created topic");
            }
            Err((error, message)) => outcomes.push(TopicOutcome::failed(spec.name, error, message)),
        }
    }
    (outcomes, save_if(node, catalog, changed).await)
}

/// Creates partitions `partitions` of a topic, all or none.
async fn create_partitions(
    node: &Node,
    topic: &str,
    partitions: std::ops::Range<i32>,
    config: &PartitionConfig,
) -> TopicResult {
    let mut created = Vec::new();
    for p in partitions {
        let tp = TopicPartition::new(topic, p);
        match node
            .shard
            .create_partition(tp.clone(), config.clone())
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
            replication_factor: 1,
            error: failure,
        });
    }
    (outcomes, save_if(node, catalog, changed).await)
}

/// Adds partitions to topics: `(topic, new total count)`. Each topic grows whole or not
/// at all; new partitions get the topic's current config.
pub async fn add_partitions(
    node: &Node,
    topics: Vec<(String, i32)>,
    validate_only: bool,
) -> (Vec<TopicResult>, Option<Arc<Catalog>>) {
    let mut catalog = (*node.catalog()).clone();
    let mut results = Vec::with_capacity(topics.len());
    let mut changed = false;
    for (name, count) in topics {
        let result = async {
            let record = known_topic(&mut catalog, &name)?;
            if count <= record.partitions || count > TOPIC_PARTITIONS_MAX {
                return Err((
                    ResponseError::InvalidPartitions,
                    format!(
                        "topic '{name}' has {} partitions; the new count must be larger and at most {TOPIC_PARTITIONS_MAX}, not {count}",
                        record.partitions
                    ),
                ));
            }
            if validate_only {
                return Ok(());
            }
            let config = topic_config::partition_config(&record.configs)?;
            create_partitions(node, &name, record.partitions..count, &config).await?;
            tracing::info!(topic = %name, from = record.partitions, to = count, "added partitions");
            record.partitions = count;
            changed = true;
            Ok(())
        }
        .await;
        results.push(result);
    }
    (results, save_if(node, catalog, changed).await)
}

/// Changes topics' config overrides, applying the engine's part to every partition
/// before the catalog records it.
pub async fn alter_configs(
    node: &Node,
    changes: Vec<(String, ConfigChange)>,
    validate_only: bool,
) -> (Vec<TopicResult>, Option<Arc<Catalog>>) {
    let mut catalog = (*node.catalog()).clone();
    let mut results = Vec::with_capacity(changes.len());
    let mut changed = false;
    for (name, change) in changes {
        let result = async {
            let record = known_topic(&mut catalog, &name)?;
            let next = topic_config::apply(&record.configs, &change)?;
            let config = topic_config::partition_config(&next)?;
            if validate_only {
                return Ok(());
            }
            if config != topic_config::partition_config(&record.configs)? {
                for p in 0..record.partitions {
                    let tp = TopicPartition::new(&name, p);
                    node.shard
                        .update_config(tp, config.clone())
                        .await
                        .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
                }
            }
            tracing::info!(topic = %name, configs = ?next, "changed topic configs");
            record.configs = next;
            changed = true;
            Ok(())
        }
        .await;
        results.push(result);
    }
    (results, save_if(node, catalog, changed).await)
}

fn known_topic<'a>(
    catalog: &'a mut Catalog,
    name: &str,
) -> Result<&'a mut TopicRecord, (ResponseError, String)> {
    catalog.topics.get_mut(name).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("no topic '{name}'"),
        )
    })
}

/// Saves `catalog` if it `changed`, returning it to publish.
async fn save_if(node: &Node, catalog: Catalog, changed: bool) -> Option<Arc<Catalog>> {
    if !changed {
        return None;
    }
    if let Err(e) = catalog.save(&node.config.data_dir).await {
        // Partitions (and their configs) on disk hold the truth; a restart rebuilds the
        // catalog's partition counts from them.
        tracing::error!(error = %e, "could not save the topic catalog");
    }
    Some(Arc::new(catalog))
}
