//! The cluster metadata log's contents (issue 8, in progress): the records the
//! controller appends, the image every broker builds by applying them in order, and the
//! snapshot that bounds replay.
//!
//! The metadata log is a partition (`__cluster_metadata-0`) replicated among the voters
//! by the same algorithm as data partitions; its leader is the controller. Each of its
//! Kafka record batches holds records whose values are `MetadataRecord`s, rkyv archives
//! in the engine's checksummed envelope (kind 7). Every broker applies committed records
//! in offset order with `MetadataImage::apply`, which is deterministic: the same records
//! give the same image everywhere. The controller checks a change against its image
//! before appending it, so a committed record that does not apply means a bug or a
//! damaged log: `apply` returns an error, changes nothing, and the broker must stop
//! applying rather than skip it.
//!
//! Not wired into `spate serve` yet: the controller, the appliers and the Kafka handlers
//! that read the image are the rest of issue 8.

pub mod placement;
mod quorum;

pub use quorum::{MetadataQuorum, SNAPSHOT_FILE};

use std::collections::BTreeMap;

use spate_engine::batch::{self, BatchHeader, SimpleRecord};
use spate_engine::catalog::{Catalog, TopicRecord};
use spate_engine::meta::{self, FileKind};
use spate_engine::Offset;

/// The metadata partition's topic name, as KRaft names it.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Why a metadata record or change is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("replication factor {asked} is not within 1..={brokers} (the registered brokers)")]
    InvalidReplicationFactor { asked: u32, brokers: u32 },
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("invalid assignment for {topic}: {reason}")]
    InvalidAssignment { topic: String, reason: String },
    #[error("record at offset {offset} is not a valid metadata record: {reason}")]
    Undecodable { offset: i64, reason: String },
    #[error("producer id block [{start}, {next}) does not start at the next free id {expected}")]
    StaleProducerIds {
        start: i64,
        next: i64,
        expected: i64,
    },
    #[error("record at offset {offset} comes after offset {applied} was applied")]
    OutOfOrder { offset: i64, applied: i64 },
    #[error("{topic}-{partition}: leader {leader} in epoch {epoch} is stale: broker {recorded_leader} leads in epoch {recorded_epoch}")]
    StaleLeader {
        topic: String,
        partition: i32,
        leader: u32,
        epoch: i32,
        recorded_leader: u32,
        recorded_epoch: i32,
    },
    #[error("{topic}-{partition}: broker {leader} is not one of its replicas")]
    NotAReplica {
        topic: String,
        partition: i32,
        leader: u32,
    },
}

/// One change to the cluster's metadata.
///
/// Variants are only ever added at the end, and no larger than the largest: records
/// already in a log must decode as they were written (the archived size is checked by a
/// test).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum MetadataRecord {
    /// A broker and where clients reach it.
    RegisterBroker {
        id: u32,
        host: String,
        port: u16,
    },
    /// A topic with its replicas: `assignments[p]` lists partition p's replica brokers,
    /// preferred leader first.
    CreateTopic {
        name: String,
        id: [u8; 16],
        configs: Vec<(String, String)>,
        assignments: Vec<Vec<u32>>,
    },
    DeleteTopic {
        name: String,
    },
    /// More partitions for a topic, numbered after its existing ones.
    AddPartitions {
        name: String,
        assignments: Vec<Vec<u32>>,
    },
    /// The topic's config overrides, replaced whole.
    SetConfigs {
        name: String,
        configs: Vec<(String, String)>,
    },
    /// Producer ids `[start, next)` are handed out to one broker (brokers take blocks).
    /// `start` must be the image's next id, so a block is never given twice.
    ProducerIds {
        start: i64,
        next: i64,
    },
    /// A partition's leader and its leader epoch, as the leader reported it. The
    /// partition's replicas elect their leaders themselves; this record lets brokers
    /// without a replica name the leader in Metadata. Epochs only go up.
    PartitionLeader {
        topic: String,
        partition: i32,
        leader: u32,
        epoch: i32,
    },
    /// A broker, where clients reach it, and where its shard 0 takes replication
    /// traffic (`IP:PORT`; shard i at the port plus i). Brokers that are not voters are
    /// reached only there.
    RegisterBrokerAt {
        id: u32,
        host: String,
        port: u16,
        peer: String,
    },
}

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BrokerInfo {
    pub host: String,
    pub port: u16,
    /// Where its shard 0 takes replication traffic, if it said (`RegisterBrokerAt`).
    pub peer: Option<String>,
}

/// A topic in the image.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicImage {
    pub id: [u8; 16],
    pub configs: Vec<(String, String)>,
    pub assignments: Vec<Vec<u32>>,
    /// Partition → (leader, leader epoch), as last reported (`PartitionLeader`).
    pub leaders: BTreeMap<i32, (u32, i32)>,
}

/// The cluster's metadata as of `applied`: what every broker serves Metadata from.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct MetadataImage {
    pub cluster_id: String,
    pub brokers: BTreeMap<u32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicImage>,
    pub next_producer_id: i64,
    /// The offset of the last record applied; -1 before any.
    pub applied: i64,
}

impl MetadataImage {
    pub fn new(cluster_id: &str) -> MetadataImage {
        MetadataImage {
            cluster_id: cluster_id.to_string(),
            applied: -1,
            ..MetadataImage::default()
        }
    }

    /// Applies the record at `offset`, which must come after every record applied.
    /// A record that does not apply changes nothing.
    pub fn apply(&mut self, offset: Offset, record: &MetadataRecord) -> Result<(), MetadataError> {
        if offset.0 <= self.applied {
            return Err(MetadataError::OutOfOrder {
                offset: offset.0,
                applied: self.applied,
            });
        }
        match record {
            MetadataRecord::RegisterBroker { id, host, port } => {
                let info = BrokerInfo {
                    host: host.clone(),
                    port: *port,
                    peer: None,
                };
                self.brokers.insert(*id, info);
            }
            MetadataRecord::RegisterBrokerAt {
                id,
                host,
                port,
                peer,
            } => {
                let info = BrokerInfo {
                    host: host.clone(),
                    port: *port,
                    peer: Some(peer.clone()),
                };
                self.brokers.insert(*id, info);
            }
            MetadataRecord::CreateTopic {
                name,
                id,
                configs,
                assignments,
            } => {
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(name.clone()));
                }
                check_assignments(name, assignments, assignments.first().map_or(0, Vec::len))?;
                self.topics.insert(
                    name.clone(),
                    TopicImage {
                        id: *id,
                        configs: configs.clone(),
                        assignments: assignments.clone(),
                        leaders: BTreeMap::new(),
                    },
                );
            }
            MetadataRecord::DeleteTopic { name } => {
                self.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
            }
            MetadataRecord::AddPartitions { name, assignments } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                let rf = topic.assignments.first().map_or(0, Vec::len);
                check_assignments(name, assignments, rf)?;
                topic.assignments.extend(assignments.iter().cloned());
            }
            MetadataRecord::SetConfigs { name, configs } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                topic.configs = configs.clone();
            }
            MetadataRecord::ProducerIds { start, next } => {
                if *start != self.next_producer_id || next <= start {
                    return Err(MetadataError::StaleProducerIds {
                        start: *start,
                        next: *next,
                        expected: self.next_producer_id,
                    });
                }
                self.next_producer_id = *next;
            }
            MetadataRecord::PartitionLeader {
                topic,
                partition,
                leader,
                epoch,
            } => {
                self.check_leader(topic, *partition, *leader, *epoch)?;
                let image = self.topics.get_mut(topic).expect("checked just above");
                image.leaders.insert(*partition, (*leader, *epoch));
            }
        }
        self.applied = offset.0;
        Ok(())
    }

    /// Whether `leader` in `epoch` may be recorded as the leader of `topic`-`partition`:
    /// it is a replica, and the epoch is newer than the one recorded (or the same, with
    /// the same leader).
    pub fn check_leader(
        &self,
        topic: &str,
        partition: i32,
        leader: u32,
        epoch: i32,
    ) -> Result<(), MetadataError> {
        let image = self
            .topics
            .get(topic)
            .ok_or_else(|| MetadataError::UnknownTopic(topic.to_string()))?;
        let replicas = usize::try_from(partition)
            .ok()
            .and_then(|p| image.assignments.get(p));
        if !replicas.is_some_and(|r| r.contains(&leader)) {
            return Err(MetadataError::NotAReplica {
                topic: topic.to_string(),
                partition,
                leader,
            });
        }
        match image.leaders.get(&partition) {
            Some(&(recorded_leader, recorded_epoch))
                if recorded_epoch > epoch
                    || (recorded_epoch == epoch && recorded_leader != leader) =>
            {
                Err(MetadataError::StaleLeader {
                    topic: topic.to_string(),
                    partition,
                    leader,
                    epoch,
                    recorded_leader,
                    recorded_epoch,
                })
            }
            _ => Ok(()),
        }
    }

    /// The leader of `topic`-`partition` and its epoch, as last recorded.
    pub fn recorded_leader(&self, topic: &str, partition: i32) -> Option<(u32, i32)> {
        self.topics.get(topic)?.leaders.get(&partition).copied()
    }

    /// The partitions `broker` holds a replica of, with their replica lists.
    pub fn replicas_on(&self, broker: u32) -> Vec<(String, i32, Vec<u32>)> {
        let mut out = Vec::new();
        for (name, topic) in &self.topics {
            for (p, replicas) in topic.assignments.iter().enumerate() {
                if replicas.contains(&broker) {
                    out.push((name.clone(), p as i32, replicas.clone()));
                }
            }
        }
        out
    }

    /// The image as the topic catalog the Kafka handlers read.
    pub fn catalog(&self) -> Catalog {
        let topics = self
            .topics
            .iter()
            .map(|(name, t)| {
                let record = TopicRecord {
                    name: name.clone(),
                    id: t.id,
                    partitions: t.assignments.len() as i32,
                    configs: t.configs.clone(),
                };
                (name.clone(), record)
            })
            .collect();
        Catalog {
            cluster_id: self.cluster_id.clone(),
            topics,
            next_producer_id: self.next_producer_id,
        }
    }

    /// The image as a snapshot file (kind 8): replay resumes after `applied`.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        meta::encode(FileKind::MetadataSnapshot, self)
    }

    /// A snapshot file's image; `None` if it is torn or corrupt (replay from the start).
    pub fn decode_snapshot(bytes: &[u8]) -> Option<MetadataImage> {
        meta::decode(FileKind::MetadataSnapshot, bytes)
    }
}

/// Every partition has `rf` distinct replicas (at least one).
fn check_assignments(name: &str, assignments: &[Vec<u32>], rf: usize) -> Result<(), MetadataError> {
    let invalid = |reason: String| MetadataError::InvalidAssignment {
        topic: name.to_string(),
        reason,
    };
    if assignments.is_empty() {
        return Err(invalid("no partitions".into()));
    }
    for (p, replicas) in assignments.iter().enumerate() {
        let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
        if replicas.is_empty() || distinct.len() != replicas.len() || replicas.len() != rf {
            return Err(invalid(format!(
                "partition {p} has replicas {replicas:?}, not {rf} distinct brokers"
            )));
        }
    }
    Ok(())
}

/// Records as one uncompressed Kafka batch for the metadata log (base offset 0; the log
/// assigns offsets).
pub fn encode_batch(records: &[MetadataRecord], timestamp: i64) -> Vec<u8> {
    let values: Vec<Vec<u8>> = records
        .iter()
        .map(|r| meta::encode(FileKind::MetadataRecord, r))
        .collect();
    let simple: Vec<SimpleRecord<'_>> = values
        .iter()
        .map(|v| SimpleRecord {
            key: None,
            value: Some(v),
        })
        .collect();
    batch::encode_uncompressed(timestamp, &simple)
}

/// The records of a stored metadata batch, with their offsets. Control batches (a
/// leader's epoch marker) hold none.
pub fn decode_batch(stored: &[u8]) -> Result<Vec<(Offset, MetadataRecord)>, MetadataError> {
    let undecodable = |offset: i64, reason: String| MetadataError::Undecodable { offset, reason };
    let header = BatchHeader::parse(stored).map_err(|e| undecodable(-1, e.to_string()))?;
    if header.is_control() {
        return Ok(Vec::new());
    }
    // The controller writes uncompressed batches, and only those have their records
    // checked on append (offset deltas 0, 1, 2, ...); anything else is not ours.
    if header.compression() != Ok(batch::Compression::None) {
        return Err(undecodable(
            header.base_offset.0,
            "a compressed metadata batch".into(),
        ));
    }
    let body = stored
        .get(batch::HEADER_BYTES..header.size)
        .ok_or_else(|| {
            undecodable(
                header.base_offset.0,
                "batch shorter than its header says".into(),
            )
        })?;
    let mut out = Vec::new();
    let mut bad = None;
    batch::for_each_record(body, header.record_count, |record| {
        let Some(offset) = header
            .base_offset
            .0
            .checked_add(record.offset_delta)
            .map(Offset)
        else {
            bad.get_or_insert(header.base_offset.0);
            return;
        };
        match record
            .value
            .and_then(|v| meta::decode::<MetadataRecord>(FileKind::MetadataRecord, v))
        {
            Some(r) => out.push((offset, r)),
            None => {
                bad.get_or_insert(offset.0);
            }
        }
    })
    .map_err(|e| undecodable(header.base_offset.0, e.to_string()))?;
    match bad {
        Some(offset) => Err(undecodable(
            offset,
            "value is not a metadata record archive".into(),
        )),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests;
