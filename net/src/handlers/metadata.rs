//! Metadata (key 3), versions 0–12: brokers, cluster id, controller, and per topic its
//! id and partitions with leader, leader epoch, replicas and ISR (all this node on a
//! single broker; in cluster mode, from the metadata image and the replicas' leadership).
//! Unknown topics are created with `num.partitions` when the request
//! and the broker allow it, and answered LEADER_NOT_AVAILABLE meanwhile, as Kafka does.

use std::rc::Rc;

use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_engine::catalog::TopicRecord;
use uuid::Uuid;

use spate_engine::TopicPartition;

use crate::cluster::{Cluster, LeaderView};
use crate::controller::TopicSpec;
use crate::node::Node;

/// The leader epoch of every partition on a single node: leadership never changes.
const SINGLE_NODE_LEADER_EPOCH: i32 = 0;

/// Fields are set only where `version` has them: the codec refuses to encode a field
/// a version lacks.
fn topic_entry(node: &Node, record: &TopicRecord, version: i16) -> MetadataResponseTopic {
    let me = BrokerId(node.config.node_id);
    let partitions = (0..record.partitions)
        .map(|p| match node.cluster() {
            Some(cluster) => cluster_partition(node, cluster, &record.name, p),
            None => MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(me)
                .with_leader_epoch(SINGLE_NODE_LEADER_EPOCH)
                .with_replica_nodes(vec![me])
                .with_isr_nodes(vec![me]),
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(record.name.clone()))))
        .with_topic_id(if version >= 10 {
            Uuid::from_bytes(record.id)
        } else {
            Uuid::nil()
        })
        .with_is_internal(record.name.starts_with("__"))
        .with_partitions(partitions)
}

/// A partition in cluster mode: replicas from the metadata image; leader, epoch and ISR
/// from the replica on this broker. A broker without a replica names the leader and
/// epoch the image records (as the leader reported them, `cluster::leaders`), with the
/// replicas as the ISR; before any is recorded, the preferred leader with epoch -1 (a
/// client it sends astray gets NOT_LEADER_OR_FOLLOWER and asks again).
fn cluster_partition(
    node: &Node,
    cluster: &Cluster,
    topic: &str,
    p: i32,
) -> MetadataResponsePartition {
    let ids = |v: &[u32]| v.iter().map(|id| BrokerId(*id as i32)).collect::<Vec<_>>();
    let image = cluster.image();
    let replicas = image
        .topics
        .get(topic)
        .and_then(|t| t.assignments.get(p as usize).cloned())
        .unwrap_or_default();
    let tp = TopicPartition::new(topic, p);
    let view = cluster.view(node.shard.owner(&tp).index(), &tp);
    let partition = MetadataResponsePartition::default()
        .with_partition_index(p)
        .with_replica_nodes(ids(&replicas));
    match view {
        Some(LeaderView {
            leader: Some(leader),
            epoch,
            isr,
        }) => partition
            .with_leader_id(BrokerId(leader as i32))
            .with_leader_epoch(epoch)
            .with_isr_nodes(ids(isr.as_deref().unwrap_or(&replicas))),
        Some(_) => partition
            .with_error_code(ResponseError::LeaderNotAvailable.code())
            .with_leader_id(BrokerId(-1))
            .with_leader_epoch(-1),
        None => {
            let (leader, epoch) = image
                .recorded_leader(topic, p)
                .map_or((replicas.first().copied(), -1), |(l, e)| (Some(l), e));
            partition
                .with_leader_id(BrokerId(leader.map_or(-1, |id| id as i32)))
                .with_leader_epoch(epoch)
                .with_isr_nodes(ids(&replicas))
        }
    }
}

fn error_entry(name: Option<String>, id: Uuid, error: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_error_code(error.code())
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
        .with_topic_id(id)
}

pub async fn handle(node: &Rc<Node>, request: &MetadataRequest, version: i16) -> MetadataResponse {
    let catalog = node.catalog();
    // v0: an empty list means every topic; v1+: null means every topic, empty means none.
    let everything = match &request.topics {
        None => true,
        Some(list) => list.is_empty() && version == 0,
    };
    let mut topics = Vec::new();
    if everything {
        topics.extend(
            catalog
                .topics
                .values()
                .map(|r| topic_entry(node, r, version)),
        );
    } else {
        let auto_create =
            node.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
        let mut to_create = Vec::new();
        for wanted in request.topics.iter().flatten() {
            let record = match &wanted.name {
                Some(name) => catalog.topics.get(name.0.as_str()),
                None => catalog
                    .topics
                    .values()
                    .find(|r| Uuid::from_bytes(r.id) == wanted.topic_id),
            };
            match (record, &wanted.name) {
                (Some(record), _) => topics.push(topic_entry(node, record, version)),
                (None, None) => topics.push(error_entry(
                    None,
                    wanted.topic_id,
                    ResponseError::UnknownTopicId,
                )),
                (None, Some(name)) => {
                    let name = name.0.as_str().to_string();
                    if spate_engine::types::validate_topic_name(&name).is_err() {
                        topics.push(error_entry(
                            Some(name),
                            Uuid::nil(),
                            ResponseError::InvalidTopicException,
                        ));
                    } else if auto_create && !name.starts_with("__") {
                        to_create.push(TopicSpec {
                            name: name.clone(),
                            partitions: node.config.default_partitions,
                            replication_factor: None,
                            config: Default::default(),
                            overrides: Vec::new(),
                        });
                        topics.push(error_entry(
                            Some(name),
                            Uuid::nil(),
                            ResponseError::LeaderNotAvailable,
                        ));
                    } else {
                        topics.push(error_entry(
                            Some(name),
                            Uuid::nil(),
                            ResponseError::UnknownTopicOrPartition,
                        ));
                    }
                }
            }
        }
        if !to_create.is_empty() {
            for outcome in node.create_topics_for_broker(to_create).await {
                if let Some((error, message)) = outcome
                    .error
                    .filter(|(e, _)| *e != ResponseError::TopicAlreadyExists)
                {
                    tracing::warn!(topic = %outcome.name, ?error, %message, "auto-creating a topic failed");
                }
            }
        }
    }
    let (brokers, controller) = brokers_and_controller(node);
    let brokers = brokers
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id((version >= 2).then(|| StrBytes::from_string(catalog.cluster_id.clone())))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics)
}

/// The brokers clients can reach, `(id, host, port)`, and the controller's id (-1 while
/// none is known). On a single broker: this one.
pub fn brokers_and_controller(node: &Node) -> (Vec<(i32, String, u16)>, i32) {
    let Some(cluster) = node.cluster() else {
        let advertise = node.config.advertise;
        let me = (
            node.config.node_id,
            advertise.ip().to_string(),
            advertise.port(),
        );
        return (vec![me], node.config.node_id);
    };
    let brokers = cluster
        .image()
        .brokers
        .iter()
        .map(|(id, b)| (*id as i32, b.host.clone(), b.port))
        .collect();
    (brokers, cluster.controller().map_or(-1, |id| id as i32))
}
