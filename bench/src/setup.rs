//! Before the load: what the broker is, which topics to use, where their partitions
//! lead, and which request versions to speak. Blocking, on the main thread, through
//! `spate_net::client`; the tasks that generate load get the answers as plain data.
//!
//! Missing topics are created with the workload's partitions and replication factor.
//! An existing topic with another partition count is an error, not silently used: it
//! would be a different workload.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use spate_net::client::errors::failure;
use spate_net::client::lookup::{metadata_of, name_of, offsets_at, topic_name};
use spate_net::client::Client;

use crate::error::{BenchError, Result};
use crate::limits::SETUP_TIMEOUT;
use crate::workload::Workload;

/// A partition and where to send its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLayout {
    pub topic: String,
    pub partition: i32,
    /// `host:port` of its leader.
    pub leader: String,
}

/// The request versions the load generator speaks to this broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub produce: i16,
    pub fetch: i16,
    pub init_producer_id: Option<i16>,
    /// For finding partitions' new leaders during a run (absent from older results).
    #[serde(default)]
    pub metadata: Option<i16>,
}

/// What the broker told about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub bootstrap: String,
    pub cluster_id: Option<String>,
    pub brokers: usize,
    /// Every API it offers: `[key, min, max]`. Kafka has no version string on the wire;
    /// these ranges are how a client tells brokers (and their releases) apart.
    pub api_versions: Vec<(i16, i16, i16)>,
    pub versions: Versions,
}

/// Everything the load tasks need to know.
#[derive(Clone, Debug)]
pub struct Layout {
    pub partitions: Vec<PartitionLayout>,
    pub broker: BrokerInfo,
}

pub fn connect(bootstrap: &str) -> Result<Client> {
    Ok(Client::connect(bootstrap, "spate-bench", SETUP_TIMEOUT)?)
}

/// Learns the broker and makes sure the workload's topics exist.
pub fn prepare(bootstrap: &str, workload: &Workload) -> Result<Layout> {
    let mut client = connect(bootstrap)?;
    let versions = Versions {
        produce: client.version(ApiKey::Produce, (3, 9))?,
        fetch: client.version(ApiKey::Fetch, (4, 12))?,
        init_producer_id: client.version(ApiKey::InitProducerId, (0, 4)).ok(),
        metadata: client.version(ApiKey::Metadata, (4, 12)).ok(),
    };
    if workload.idempotent && versions.init_producer_id.is_none() {
        return Err(BenchError::Broker(format!(
            "{bootstrap} does not offer InitProducerId: no idempotent producers"
        )));
    }
    let topics = workload.topic_names();
    let missing = missing_topics(&mut client, workload, &topics)?;
    if !missing.is_empty() {
        create_topics_at_controller(&mut client, workload, &missing)?;
    }
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        match leaders(&mut client, workload, &topics)? {
            Some((partitions, cluster_id, brokers)) => {
                return Ok(Layout {
                    partitions,
                    broker: BrokerInfo {
                        bootstrap: bootstrap.to_string(),
                        cluster_id,
                        brokers,
                        api_versions: client.api_versions(),
                        versions,
                    },
                })
            }
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => {
                return Err(BenchError::Broker(format!(
                    "the topics of the workload have no leaders after {}s",
                    SETUP_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

fn missing_topics(
    client: &mut Client,
    workload: &Workload,
    topics: &[String],
) -> Result<Vec<String>> {
    let metadata = metadata_of(client, topics).map_err(BenchError::Broker)?;
    let mut missing = Vec::new();
    for topic in &metadata.topics {
        let name = name_of(topic);
        if topic.error_code == ResponseError::UnknownTopicOrPartition.code() {
            missing.push(name);
        } else if topic.error_code == 0 && topic.partitions.len() != workload.partitions as usize {
            return Err(BenchError::Usage(format!(
                "topic \"{name}\" has {} partitions where the workload asks for {}: \
                 choose another --topic-prefix or delete the topic",
                topic.partitions.len(),
                workload.partitions
            )));
        }
    }
    Ok(missing)
}

/// Creates topics through the controller Metadata names (in a cluster, other brokers
/// answer NOT_CONTROLLER); the broker at hand if it names none.
fn create_topics_at_controller(
    client: &mut Client,
    workload: &Workload,
    names: &[String],
) -> Result<()> {
    let metadata = metadata_of(client, &[]).map_err(BenchError::Broker)?;
    let addresses = spate_net::client::lookup::broker_addresses(&metadata);
    match addresses
        .get(&metadata.controller_id.0)
        .filter(|a| a.as_str() != client.address())
    {
        Some(address) => create_topics(&mut client.connect_like(address)?, workload, names),
        None => create_topics(client, workload, names),
    }
}

fn create_topics(client: &mut Client, workload: &Workload, names: &[String]) -> Result<()> {
    let version = client.version(ApiKey::CreateTopics, (2, 7))?;
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(SETUP_TIMEOUT.as_millis() as i32)
        .with_topics(
            names
                .iter()
                .map(|name| {
                    CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(workload.partitions)
                        .with_replication_factor(workload.replication_factor)
                })
                .collect(),
        );
    let answered = client.send(version, &request)?;
    for topic in &answered.topics {
        if topic.error_code != 0 && topic.error_code != ResponseError::TopicAlreadyExists.code() {
            let detail = topic
                .error_message
                .as_ref()
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default();
            return Err(BenchError::Broker(failure(
                &format!("cannot create topic \"{}\"{detail}", topic.name.as_str()),
                topic.error_code,
            )));
        }
    }
    Ok(())
}

type Leaders = (Vec<PartitionLayout>, Option<String>, usize);

/// Every partition with its leader's address, or `None` while some have no leader yet.
fn leaders(client: &mut Client, workload: &Workload, topics: &[String]) -> Result<Option<Leaders>> {
    let metadata = metadata_of(client, topics).map_err(BenchError::Broker)?;
    let addresses = spate_net::client::lookup::broker_addresses(&metadata);
    let mut partitions = Vec::new();
    for topic in &metadata.topics {
        let name = name_of(topic);
        if topic.error_code != 0 || topic.partitions.len() != workload.partitions as usize {
            return Ok(None);
        }
        for p in &topic.partitions {
            let Some(leader) = addresses.get(&p.leader_id.0) else {
                return Ok(None);
            };
            partitions.push(PartitionLayout {
                topic: name.clone(),
                partition: p.partition_index,
                leader: leader.clone(),
            });
        }
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let cluster_id = metadata.cluster_id.as_ref().map(|c| c.to_string());
    Ok(Some((partitions, cluster_id, addresses.len())))
}

/// The offset of every partition of `layout` at `timestamp` (`lookup::EARLIEST` or
/// `lookup::LATEST`).
pub fn offsets(
    bootstrap: &str,
    layout: &Layout,
    timestamp: i64,
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut client = connect(bootstrap)?;
    let wanted: BTreeSet<(String, i32)> = layout
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    offsets_at(&mut client, &wanted, timestamp).map_err(BenchError::Broker)
}
