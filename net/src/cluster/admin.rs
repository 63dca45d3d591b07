//! Topic administration, broker registration and producer-id blocks in cluster mode:
//! each is a proposal to the metadata quorum, made on shard 0 of the controller (the
//! quorum's leader) under the node's admin permit, one at a time.
//!
//! A change is answered once the controller has applied it and every shard of the
//! controller holds the new image; the other brokers apply it as their replicas of the
//! metadata log commit it, a few fetch round trips later. Another broker answers
//! NOT_CONTROLLER, and clients retry at the controller Metadata names.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use spate_replication::driver::DriverError;
use spate_replication::metadata::{
    placement, BrokerInfo, MetadataError, MetadataImage, MetadataQuorum, MetadataRecord, TopicImage,
};

use super::replicated::Failure;
use crate::controller::{new_topic_id, TopicOutcome, TopicResult, TopicSpec};
use crate::limits::{PRODUCER_ID_BLOCK, TOPIC_PARTITIONS_MAX};
use crate::node::Node;
use crate::topic_config::{self, ConfigChange};

pub fn stopping() -> Failure {
    (
        ResponseError::NotController,
        "the broker is shutting down".into(),
    )
}

/// The metadata quorum, if this shard runs it and leads it.
fn leading(node: &Node) -> Result<&MetadataQuorum, Failure> {
    let cluster = node
        .cluster()
        .ok_or_else(|| (ResponseError::NotController, "not in cluster mode".into()))?;
    let quorum = cluster
        .quorum
        .as_ref()
        .filter(|q| q.is_leader())
        .ok_or_else(|| {
            let controller = cluster
                .controller()
                .map_or("not known yet".to_string(), |id| format!("broker {id}"));
            (
                ResponseError::NotController,
                format!(
                    "broker {} is not the controller; the controller is {controller}",
                    cluster.me()
                ),
            )
        })?;
    if let Some(reason) = quorum.stuck() {
        return Err((
            ResponseError::KafkaStorageError,
            format!("the metadata log does not apply: {reason}"),
        ));
    }
    Ok(quorum)
}

fn proposal_failure(error: DriverError) -> Failure {
    match error {
        DriverError::NotLeader { .. } => (ResponseError::NotController, error.to_string()),
        DriverError::Timeout { .. } => (ResponseError::RequestTimedOut, error.to_string()),
        DriverError::Metadata(_) => (ResponseError::InvalidRequest, error.to_string()),
        _ => (ResponseError::KafkaStorageError, error.to_string()),
    }
}

/// Proposes `records`, then installs the image on every shard of this broker.
async fn propose(
    node: &Node,
    quorum: &MetadataQuorum,
    records: Vec<MetadataRecord>,
) -> TopicResult {
    quorum.propose(records).await.map_err(proposal_failure)?;
    publish(node, quorum).await;
    Ok(())
}

/// Installs the quorum's current image, and the catalog made from it, on every shard.
pub async fn publish(node: &Node, quorum: &MetadataQuorum) {
    let image = quorum.image();
    let catalog = Arc::new(image.catalog());
    node.publish_with(catalog, Some(Arc::new(image))).await;
}

fn known_topic<'a>(image: &'a MetadataImage, name: &str) -> Result<&'a TopicImage, Failure> {
    image.topics.get(name).ok_or_else(|| {
        (
            ResponseError::UnknownTopicOrPartition,
            format!("no topic '{name}'"),
        )
    })
}

/// Replica placement for `count` partitions numbered from `first`.
fn place(
    image: &MetadataImage,
    first: u32,
    count: u32,
    replication_factor: u32,
) -> Result<Vec<Vec<u32>>, Failure> {
    let brokers: Vec<u32> = image.brokers.keys().copied().collect();
    // Starting where the last placement stopped keeps leaders balanced across topics.
    let placed: usize = image.topics.values().map(|t| t.assignments.len()).sum();
    let start = (placed % brokers.len().max(1)) as u32;
    placement::assign(&brokers, first, count, replication_factor, start)
        .map_err(|e| (ResponseError::InvalidReplicationFactor, e.to_string()))
}

pub async fn create_topics(
    node: &Node,
    specs: Vec<TopicSpec>,
    validate_only: bool,
) -> Vec<TopicOutcome> {
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.name.clone();
        let outcome = create_topic(node, spec, validate_only).await;
        outcomes.push(outcome.unwrap_or_else(|(e, m)| TopicOutcome::failed(name, e, m)));
    }
    outcomes
}

async fn create_topic(
    node: &Node,
    spec: TopicSpec,
    validate_only: bool,
) -> Result<TopicOutcome, Failure> {
    let quorum = leading(node)?;
    let image = quorum.image();
    if image.topics.contains_key(&spec.name) {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("topic '{}' already exists", spec.name),
        ));
    }
    let rf = spec.replication_factor.unwrap_or_else(|| {
        let default = node
            .cluster()
            .map_or(1, |c| c.config.default_replication_factor);
        default.min(image.brokers.len().max(1) as u32)
    });
    let assignments = place(&image, 0, spec.partitions as u32, rf)?;
    let id = new_topic_id();
    if !validate_only {
        let record = MetadataRecord::CreateTopic {
            name: spec.name.clone(),
            id,
            configs: spec.overrides,
            assignments,
        };
        propose(node, quorum, vec![record]).await?;
        tracing::info!(topic = %spec.name, partitions = spec.partitions, replication_factor = rf, "created topic");
    }
    Ok(TopicOutcome {
        name: spec.name,
        id: if validate_only { [0; 16] } else { id },
        partitions: spec.partitions,
        replication_factor: rf as i16,
        error: None,
    })
}

pub async fn delete_topics(node: &Node, names: Vec<String>) -> Vec<TopicOutcome> {
    let mut outcomes = Vec::with_capacity(names.len());
    for name in names {
        let outcome = async {
            let quorum = leading(node)?;
            let image = quorum.image();
            let topic = known_topic(&image, &name)?;
            let outcome = TopicOutcome {
                name: name.clone(),
                id: topic.id,
                partitions: topic.assignments.len() as i32,
                replication_factor: topic.assignments.first().map_or(-1, |r| r.len() as i16),
                error: None,
            };
            let record = MetadataRecord::DeleteTopic { name: name.clone() };
            propose(node, quorum, vec![record]).await?;
            tracing::info!(topic = %name, "deleted topic");
            Ok(outcome)
        }
        .await;
        outcomes.push(outcome.unwrap_or_else(|(e, m)| TopicOutcome::failed(name, e, m)));
    }
    outcomes
}

/// Grows topics to `(name, new total count)` partitions.
pub async fn add_partitions(
    node: &Node,
    topics: Vec<(String, i32)>,
    validate_only: bool,
) -> Vec<TopicResult> {
    let mut results = Vec::with_capacity(topics.len());
    for (name, count) in topics {
        let result = async {
            let quorum = leading(node)?;
            let image = quorum.image();
            let topic = known_topic(&image, &name)?;
            let have = topic.assignments.len() as i32;
            if count <= have || count > TOPIC_PARTITIONS_MAX {
                return Err((
                    ResponseError::InvalidPartitions,
                    format!("topic '{name}' has {have} partitions; the new count must be larger and at most {TOPIC_PARTITIONS_MAX}, not {count}"),
                ));
            }
            let rf = topic.assignments.first().map_or(1, Vec::len) as u32;
            let assignments = place(&image, have as u32, (count - have) as u32, rf)?;
            if validate_only {
                return Ok(());
            }
            let record = MetadataRecord::AddPartitions {
                name: name.clone(),
                assignments,
            };
            propose(node, quorum, vec![record]).await?;
            tracing::info!(topic = %name, from = have, to = count, "added partitions");
            Ok(())
        }
        .await;
        results.push(result);
    }
    results
}

/// Changes topics' config overrides; each broker applies them to its replicas.
pub async fn alter_configs(
    node: &Node,
    changes: Vec<(String, ConfigChange)>,
    validate_only: bool,
) -> Vec<TopicResult> {
    let mut results = Vec::with_capacity(changes.len());
    for (name, change) in changes {
        let result = async {
            let quorum = leading(node)?;
            let image = quorum.image();
            let topic = known_topic(&image, &name)?;
            let configs = topic_config::apply(&topic.configs, &change)?;
            topic_config::partition_config(&configs)?;
            if validate_only {
                return Ok(());
            }
            let record = MetadataRecord::SetConfigs {
                name: name.clone(),
                configs,
            };
            propose(node, quorum, vec![record]).await
        }
        .await;
        results.push(result);
    }
    results
}

/// Records where clients and peers reach broker `id`.
pub async fn register(node: &Node, id: u32, info: BrokerInfo) -> Result<(), Failure> {
    let answer = node
        .serially(async {
            let result = async {
                let quorum = leading(node)?;
                if quorum.image().brokers.get(&id) == Some(&info) {
                    return Ok(());
                }
                let BrokerInfo { host, port, peer } = info;
                let record = match peer.clone() {
                    Some(peer) => MetadataRecord::RegisterBrokerAt {
                        id,
                        host: host.clone(),
                        port,
                        peer,
                    },
                    None => MetadataRecord::RegisterBroker {
                        id,
                        host: host.clone(),
                        port,
                    },
                };
                propose(node, quorum, vec![record]).await?;
                tracing::info!(broker = id, %host, port, ?peer, "registered broker");
                Ok(())
            }
            .await;
            (result, None)
        })
        .await;
    answer.unwrap_or_else(|| Err(stopping()))
}

/// Takes the next block of producer ids from the metadata log: `(start, length)`.
pub async fn producer_id_block(node: &Node) -> Result<(i64, i32), Failure> {
    let answer = node
        .serially(async {
            let result = async {
                let quorum = leading(node)?;
                let start = quorum.image().next_producer_id;
                let next = start + i64::from(PRODUCER_ID_BLOCK);
                let record = MetadataRecord::ProducerIds { start, next };
                // A stale `start` is refused by the quorum's check, never applied twice.
                quorum
                    .propose(vec![record])
                    .await
                    .map_err(proposal_failure)?;
                Ok((start, PRODUCER_ID_BLOCK))
            }
            .await;
            (result, None)
        })
        .await;
    answer.unwrap_or_else(|| Err(stopping()))
}

/// One partition's leadership as its leader reports it: topic id, partition, leader
/// epoch.
pub type LeaderReport = ([u8; 16], i32, i32);

/// Records the leadership `broker` reports (AlterPartition): a `PartitionLeader` record
/// for each report newer than the one recorded. Per report: none, or why it was not
/// recorded (UNKNOWN_TOPIC_ID for a topic deleted meanwhile, FENCED_LEADER_EPOCH for an
/// epoch older than the one recorded, INVALID_REQUEST for a broker that is not a
/// replica).
pub async fn record_leaders(
    node: &Node,
    broker: u32,
    reports: Vec<LeaderReport>,
) -> Result<Vec<Option<ResponseError>>, Failure> {
    let answer = node
        .serially(async {
            let result = async {
                let quorum = leading(node)?;
                let image = quorum.image();
                let by_id: BTreeMap<[u8; 16], &String> =
                    image.topics.iter().map(|(name, t)| (t.id, name)).collect();
                let mut records = Vec::new();
                let mut outcomes = Vec::with_capacity(reports.len());
                for (id, partition, epoch) in reports {
                    let Some(&topic) = by_id.get(&id) else {
                        outcomes.push(Some(ResponseError::UnknownTopicId));
                        continue;
                    };
                    outcomes.push(match image.check_leader(topic, partition, broker, epoch) {
                        Ok(()) => {
                            if image.recorded_leader(topic, partition) != Some((broker, epoch)) {
                                records.push(MetadataRecord::PartitionLeader {
                                    topic: topic.clone(),
                                    partition,
                                    leader: broker,
                                    epoch,
                                });
                            }
                            None
                        }
                        Err(MetadataError::StaleLeader { .. }) => {
                            Some(ResponseError::FencedLeaderEpoch)
                        }
                        Err(_) => Some(ResponseError::InvalidRequest),
                    });
                }
                if !records.is_empty() {
                    propose(node, quorum, records).await?;
                }
                Ok(outcomes)
            }
            .await;
            (result, None)
        })
        .await;
    answer.unwrap_or_else(|| Err(stopping()))
}

/// On shard 0: the next producer id, from this broker's block, taking a new block from
/// the controller when it runs out. `None` if no block could be had.
pub async fn next_producer_id(node: &Node) -> Option<i64> {
    let cluster = node.cluster()?;
    let take = || {
        let (next, end) = cluster.producer_ids.get();
        (next < end).then(|| {
            cluster.producer_ids.set((next + 1, end));
            next
        })
    };
    if let Some(id) = take() {
        return Some(id);
    }
    let _refill = cluster.refilling.acquire_permit(1).await.ok()?;
    // Another caller may have refilled the block while this one waited.
    if let Some(id) = take() {
        return Some(id);
    }
    let block = match producer_id_block(node).await {
        Err((ResponseError::NotController, _)) => super::register::remote_producer_ids(node).await,
        other => other,
    };
    match block {
        Ok((start, len)) => {
            cluster
                .producer_ids
                .set((start + 1, start + i64::from(len)));
            Some(start)
        }
        Err((error, message)) => {
            tracing::warn!(?error, %message, "could not get producer ids from the controller");
            None
        }
    }
}
