//! A broker's own requests to the controller: its registration (where clients reach
//! it), blocks of producer ids, and the topics it creates itself (auto-created topics,
//! `__consumer_offsets`). The controller may be another broker; it is asked in the
//! Kafka protocol on its client listener (BrokerRegistration, AllocateProducerIds,
//! CreateTopics, AlterPartition, as KRaft brokers ask theirs), with the blocking client on a
//! short-lived thread, so the shard's executor never blocks. These are rare: once per
//! start, once per `PRODUCER_ID_BLOCK` producers, once per topic.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::alter_partition_request::{PartitionData, TopicData};
use kafka_protocol::messages::broker_registration_request::Listener;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::{
    AllocateProducerIdsRequest, AlterPartitionRequest, ApiKey, BrokerId, BrokerRegistrationRequest,
    CreateTopicsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use spate_replication::metadata::BrokerInfo;

use super::replicated::Failure;
use crate::client::errors::failure;
use crate::client::Client;
use crate::controller::{TopicOutcome, TopicSpec};
use crate::node::Node;

/// The client id of a broker's requests to another: `spate-broker-<node id>`. The
/// controller lets such a request create internal (`__`) topics.
pub const BROKER_CLIENT_ID_PREFIX: &str = "spate-broker-";

/// How long one request to the controller may take.
const CONTROLLER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Between registration attempts.
const REGISTER_RETRY: Duration = Duration::from_millis(250);

/// Runs blocking `work` on its own thread and waits for it without blocking the
/// executor; `None` if the thread could not start or panicked.
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let slot = Arc::new(Mutex::new(None));
    let filled = slot.clone();
    let thread = std::thread::Builder::new()
        .name("spate-controller-client".into())
        .spawn(move || {
            let value = work();
            if let Ok(mut slot) = filled.lock() {
                *slot = Some(value);
            }
        })
        .ok()?;
    while !thread.is_finished() {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    thread.join().ok()?;
    let value = slot.lock().ok()?.take();
    value
}

/// The controller's client address, if it is known and registered.
fn controller_address(node: &Node) -> Option<String> {
    let cluster = node.cluster()?;
    let controller = cluster.controller()?;
    let image = cluster.image();
    let broker = image.brokers.get(&controller)?;
    Some(format!("{}:{}", broker.host, broker.port))
}

fn connect(address: &str, me: u32) -> Result<Client, String> {
    Client::connect(
        address,
        &format!("{BROKER_CLIENT_ID_PREFIX}{me}"),
        CONTROLLER_REQUEST_TIMEOUT,
    )
    .map_err(|e| e.to_string())
}

/// The name of the listener a broker's registration gives its replication address
/// under (BrokerRegistration's listeners are Kafka's; this one is Spate's).
pub const REPLICATION_LISTENER: &str = "REPLICATION";

fn listener(name: &'static str, host: String, port: u16) -> Listener {
    Listener::default()
        .with_name(StrBytes::from_static_str(name))
        .with_host(StrBytes::from_string(host))
        .with_port(port)
}

fn send_registration(
    address: String,
    me: u32,
    cluster_id: String,
    info: BrokerInfo,
) -> Result<(), String> {
    let mut client = connect(&address, me)?;
    let version = client
        .version(ApiKey::BrokerRegistration, (0, 0))
        .map_err(|e| e.to_string())?;
    let request = BrokerRegistrationRequest::default()
        .with_broker_id(BrokerId(me as i32))
        .with_cluster_id(StrBytes::from_string(cluster_id))
        .with_incarnation_id(uuid::Uuid::from_bytes(rand::random()))
        .with_listeners(listeners(info));
    let response = client.send(version, &request).map_err(|e| e.to_string())?;
    match response.error_code {
        0 => Ok(()),
        code => Err(failure("BrokerRegistration", code)),
    }
}

/// The client listener, then the replication one.
fn listeners(info: BrokerInfo) -> Vec<Listener> {
    let mut out = vec![listener("PLAINTEXT", info.host, info.port)];
    if let Some(peer) = info
        .peer
        .and_then(|p| p.parse::<std::net::SocketAddr>().ok())
    {
        out.push(listener(
            REPLICATION_LISTENER,
            peer.ip().to_string(),
            peer.port(),
        ));
    }
    out
}

fn send_allocate(address: String, me: u32) -> Result<(i64, i32), String> {
    let mut client = connect(&address, me)?;
    let version = client
        .version(ApiKey::AllocateProducerIds, (0, 0))
        .map_err(|e| e.to_string())?;
    let request = AllocateProducerIdsRequest::default().with_broker_id(BrokerId(me as i32));
    let response = client.send(version, &request).map_err(|e| e.to_string())?;
    match response.error_code {
        0 if response.producer_id_len > 0 => {
            Ok((response.producer_id_start.0, response.producer_id_len))
        }
        0 => Err("the controller answered an empty producer id block".into()),
        code => Err(failure("AllocateProducerIds", code)),
    }
}

/// On shard 0: registers this broker with the controller until the image lists it at
/// its advertised address.
pub async fn registration_loop(node: Rc<Node>) {
    let Some(cluster) = node.cluster().cloned() else {
        return;
    };
    let me = cluster.me();
    let info = BrokerInfo {
        host: node.config.advertise.ip().to_string(),
        port: node.config.advertise.port(),
        peer: Some(cluster.peer_address().to_string()),
    };
    while !cluster.replicator.is_stopped() {
        if cluster.image().brokers.get(&me) == Some(&info) {
            return;
        }
        let leads = cluster.quorum.as_ref().is_some_and(|q| q.is_leader());
        let outcome = if leads {
            super::admin::register(&node, me, info.clone())
                .await
                .map_err(|(_, m)| m)
        } else if let Some(address) = controller_address(&node) {
            let (cluster_id, info) = (cluster.config.cluster_id.clone(), info.clone());
            run_blocking(move || send_registration(address, me, cluster_id, info))
                .await
                .unwrap_or_else(|| Err("the registration thread failed".into()))
        } else {
            Err("no controller known yet".into())
        };
        if let Err(reason) = outcome {
            tracing::debug!(%reason, "registration with the controller not done yet");
        }
        glommio::timer::sleep(REGISTER_RETRY).await;
    }
}

/// A block of producer ids from a controller on another broker.
pub async fn remote_producer_ids(node: &Node) -> Result<(i64, i32), Failure> {
    let unavailable = |m: String| (ResponseError::CoordinatorNotAvailable, m);
    let address =
        controller_address(node).ok_or_else(|| unavailable("no controller known yet".into()))?;
    let me = node.cluster().map_or(0, |c| c.me());
    run_blocking(move || send_allocate(address, me))
        .await
        .unwrap_or_else(|| Err("the controller request thread failed".into()))
        .map_err(unavailable)
}

fn send_alter_partition(
    address: String,
    me: u32,
    reports: Vec<super::admin::LeaderReport>,
) -> Result<Vec<i16>, String> {
    let mut client = connect(&address, me)?;
    let version = client
        .version(ApiKey::AlterPartition, (2, 2))
        .map_err(|e| e.to_string())?;
    let mut by_topic: BTreeMap<[u8; 16], Vec<PartitionData>> = BTreeMap::new();
    for (id, partition, epoch) in &reports {
        by_topic.entry(*id).or_default().push(
            PartitionData::default()
                .with_partition_index(*partition)
                .with_leader_epoch(*epoch),
        );
    }
    let topics = by_topic
        .into_iter()
        .map(|(id, partitions)| {
            TopicData::default()
                .with_topic_id(Uuid::from_bytes(id))
                .with_partitions(partitions)
        })
        .collect();
    let request = AlterPartitionRequest::default()
        .with_broker_id(BrokerId(me as i32))
        .with_topics(topics);
    let response = client.send(version, &request).map_err(|e| e.to_string())?;
    if response.error_code != 0 {
        return Err(failure("AlterPartition", response.error_code));
    }
    Ok(response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect())
}

/// Reports leaderships to a controller on another broker: the error code each report
/// got (0 if recorded, or already).
pub async fn remote_record_leaders(
    node: &Node,
    reports: Vec<super::admin::LeaderReport>,
) -> Result<BTreeMap<super::admin::LeaderReport, i16>, String> {
    let address = controller_address(node).ok_or("no controller known yet")?;
    let me = node.cluster().map_or(0, |c| c.me());
    // The answer lists the partitions as the request did: by topic, in id order.
    let mut sent = reports;
    sent.sort_unstable();
    let asked = sent.clone();
    let codes = run_blocking(move || send_alter_partition(address, me, asked))
        .await
        .unwrap_or_else(|| Err("the controller request thread failed".into()))?;
    if codes.len() != sent.len() {
        return Err(format!(
            "AlterPartition answered {} partitions of {}",
            codes.len(),
            sent.len()
        ));
    }
    Ok(sent.into_iter().zip(codes).collect())
}

/// A topic to create and what became of it: (name, error code, message).
type Created = (String, i16, Option<String>);

fn send_create_topics(
    address: String,
    me: u32,
    topics: Vec<CreatableTopic>,
) -> Result<Vec<Created>, String> {
    let mut client = connect(&address, me)?;
    let version = client
        .version(ApiKey::CreateTopics, (2, 7))
        .map_err(|e| e.to_string())?;
    let timeout_ms = i32::try_from(CONTROLLER_REQUEST_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(timeout_ms);
    let response = client.send(version, &request).map_err(|e| e.to_string())?;
    Ok(response
        .topics
        .into_iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.error_code,
                t.error_message.map(|m| m.to_string()),
            )
        })
        .collect())
}

/// Creates `specs` through the controller on another broker, one outcome per spec.
pub async fn forward_create_topics(node: &Node, specs: Vec<TopicSpec>) -> Vec<TopicOutcome> {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let failed = |why: String| -> Vec<TopicOutcome> {
        names
            .iter()
            .map(|n| TopicOutcome::failed(n.clone(), ResponseError::NotController, why.clone()))
            .collect()
    };
    let Some(address) = controller_address(node) else {
        return failed("no controller known yet".into());
    };
    let me = node.cluster().map_or(0, |c| c.me());
    let topics: Vec<CreatableTopic> = specs
        .into_iter()
        .map(|spec| {
            let rf = spec
                .replication_factor
                .map_or(-1, |rf| i16::try_from(rf).unwrap_or(i16::MAX));
            let configs = spec
                .overrides
                .into_iter()
                .map(|(name, value)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(name))
                        .with_value(Some(StrBytes::from_string(value)))
                })
                .collect();
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(spec.name)))
                .with_num_partitions(spec.partitions)
                .with_replication_factor(rf)
                .with_configs(configs)
        })
        .collect();
    let answered = run_blocking(move || send_create_topics(address, me, topics))
        .await
        .unwrap_or_else(|| Err("the controller request thread failed".into()));
    let created = match answered {
        Ok(created) => created,
        Err(why) => return failed(format!("asking the controller: {why}")),
    };
    names
        .iter()
        .map(|name| match created.iter().find(|(n, _, _)| n == name) {
            Some((_, 0, _)) => TopicOutcome {
                name: name.clone(),
                id: [0; 16],
                partitions: -1,
                replication_factor: -1,
                error: None,
            },
            Some((_, code, message)) => {
                let error = ResponseError::try_from_code(*code)
                    .unwrap_or(ResponseError::UnknownServerError);
                TopicOutcome::failed(name.clone(), error, message.clone().unwrap_or_default())
            }
            None => TopicOutcome::failed(
                name.clone(),
                ResponseError::UnknownServerError,
                "the controller did not answer for this topic",
            ),
        })
        .collect()
}
