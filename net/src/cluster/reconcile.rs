//! Keeping each shard in line with the metadata image: shard 0 publishes every newly
//! applied image; every shard then creates, adds and removes its replicas to match it,
//! applies changed topic configs, and reports its partitions' leadership to the other
//! shards when it changes.
//!
//! Each replicated partition records its topic's id, and an offset of the metadata log
//! whose image named the topic with that id (`partition.meta`). Images only move
//! forward, so a partition is deleted when:
//! - an image drops a partition this shard added from an earlier image in this run;
//! - its recorded id is not its topic's in the image: it belongs to a topic of the same
//!   name that was deleted and created again, while this broker was down or between two
//!   passes. It is created again empty, so its records never pass for the new topic's;
//! - it is on disk, unreplicated, and an image applied to its recorded offset or later
//!   names no topic with its id: the topic was deleted while this broker was down.
//!
//! Any other partition on disk that the image does not name is left alone (and served
//! by nobody): after a restart the image may still be catching up, and deleting it then
//! would lose data. A partition written before ids and offsets were recorded takes the
//! image's when it is next added.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_engine::{EngineError, TopicPartition};
use spate_replication::metadata::MetadataImage;
use spate_replication::replica::{Membership, ReplicaId};

use super::{key_of, Cluster, LeaderView, Views};
use crate::node::{ControlMessage, Node};
use crate::topic_config;

/// How often a shard looks for a new image and for leadership changes.
const MAINTAIN_INTERVAL: Duration = Duration::from_millis(20);
/// How soon a pass that failed (a partition that could not be created, say) is tried
/// again, when no new image comes first.
const RECONCILE_RETRY: Duration = Duration::from_secs(1);

/// On shard 0: publishes each image the metadata quorum applies.
pub async fn publish_loop(node: Rc<Node>) {
    let Some(cluster) = node.cluster().cloned() else {
        return;
    };
    let Some(quorum) = cluster.quorum.clone() else {
        return;
    };
    let mut published = i64::MIN;
    while !cluster.replicator.is_stopped() {
        let applied = quorum.applied();
        if applied != published {
            super::admin::publish(&node, &quorum).await;
            published = applied;
        }
        glommio::timer::sleep(MAINTAIN_INTERVAL).await;
    }
}

/// On every shard: reconciles replicas with new images and reports leadership.
pub async fn maintain_loop(node: Rc<Node>) {
    let Some(cluster) = node.cluster().cloned() else {
        return;
    };
    let mut state = Reconciled {
        applied: i64::MIN,
        tried: Instant::now(),
        complete: false,
        configs: BTreeMap::new(),
    };
    let mut reported: Option<Views> = None;
    while !cluster.replicator.is_stopped() {
        let image = cluster.image();
        let retry_due = !state.complete && state.tried.elapsed() >= RECONCILE_RETRY;
        if image.applied != state.applied || retry_due {
            state.complete = reconcile(&node, &cluster, &image, &mut state).await;
            state.applied = image.applied;
            state.tried = Instant::now();
        }
        let views = Arc::new(views(&cluster));
        if reported.as_ref() != Some(&views) {
            broadcast(&node, &cluster, views.clone()).await;
            reported = Some(views);
        }
        glommio::timer::sleep(MAINTAIN_INTERVAL).await;
    }
}

/// What a shard has made of the images so far.
struct Reconciled {
    applied: i64,
    /// When the last pass ran: a failed one is retried after `RECONCILE_RETRY`.
    tried: Instant,
    /// False when something failed and the next turn must try again.
    complete: bool,
    /// The topic configs applied to each local replica.
    configs: BTreeMap<TopicPartition, Configs>,
}

/// A topic's config overrides, as named by clients.
type Configs = Vec<(String, String)>;

/// The partitions of `image` this shard should replicate, with their replica sets and
/// topic configs.
fn wanted(node: &Node, me: u32, image: &MetadataImage) -> BTreeMap<TopicPartition, Wanted> {
    let here = node.shard.id();
    image
        .replicas_on(me)
        .into_iter()
        .map(|(topic, p, replicas)| (TopicPartition::new(&topic, p), replicas))
        .filter(|(tp, _)| node.shard.owner(tp) == here)
        .filter_map(|(tp, replicas)| {
            let topic = image.topics.get(&*tp.topic)?;
            let wanted = Wanted {
                replicas,
                configs: topic.configs.clone(),
                topic_id: topic.id,
            };
            Some((tp, wanted))
        })
        .collect()
}

/// What the image asks of one partition on this shard.
struct Wanted {
    replicas: Vec<u32>,
    configs: Configs,
    topic_id: [u8; 16],
}

/// One pass; `true` if everything the image asks of this shard is done.
async fn reconcile(
    node: &Node,
    cluster: &Cluster,
    image: &MetadataImage,
    state: &mut Reconciled,
) -> bool {
    let wanted = wanted(node, cluster.me(), image);
    let metadata = key_of(&super::metadata_partition());
    let present: BTreeSet<TopicPartition> = cluster
        .replicator
        .keys()
        .into_iter()
        .filter(|k| *k != metadata)
        .map(|k| TopicPartition::new(&k.topic, k.partition))
        .collect();
    let mut complete = true;
    state.configs.retain(|tp, _| wanted.contains_key(tp));
    for tp in present.iter().filter(|tp| !wanted.contains_key(*tp)) {
        if let Err(e) = remove(node, cluster, tp).await {
            tracing::warn!(partition = %tp, error = %e, "could not remove a deleted partition's replica");
            complete = false;
        }
    }
    for tp in node
        .shard
        .local_partitions()
        .iter()
        .filter(|tp| !wanted.contains_key(*tp) && !present.contains(*tp))
        .filter(|tp| topic_deleted(node, image, tp))
    {
        tracing::warn!(partition = %tp, "deleting the partition of a topic deleted while this broker was down");
        if let Err(e) = remove(node, cluster, tp).await {
            tracing::warn!(partition = %tp, error = %e, "could not delete a deleted topic's partition");
            complete = false;
        }
    }
    for (tp, want) in &wanted {
        let stale = node
            .shard
            .local(tp)
            .ok()
            .and_then(|log| log.topic_id())
            .is_some_and(|id| id != want.topic_id);
        let outcome = if stale {
            // Deleted and created again, while this broker was down or between two
            // passes: the partition here, replicated or only on disk, is the old topic's.
            tracing::warn!(partition = %tp, "replacing the partition of a deleted topic of the same name");
            match remove(node, cluster, tp).await {
                Ok(()) => add(node, cluster, tp, want, image.applied).await,
                Err(e) => Err(e),
            }
        } else if present.contains(tp) {
            update_configs(node, tp, &want.configs, state).await
        } else {
            add(node, cluster, tp, want, image.applied).await
        };
        match outcome {
            Ok(()) => {
                state.configs.insert(tp.clone(), want.configs.clone());
            }
            Err(e) => {
                tracing::warn!(partition = %tp, error = %e, "could not bring a replica in line with the metadata");
                complete = false;
            }
        }
    }
    complete
}

/// Whether `tp`, on disk here, belongs to a topic that `image` shows deleted: it
/// recorded its topic's id and a metadata offset where that topic was seen, and the
/// image, applied to that offset or later, has no topic of its name with that id.
fn topic_deleted(node: &Node, image: &MetadataImage, tp: &TopicPartition) -> bool {
    let Ok(log) = node.shard.local(tp) else {
        return false;
    };
    let (Some(id), Some(seen_at)) = (log.topic_id(), log.topic_seen_at()) else {
        return false;
    };
    image.applied >= seen_at && image.topics.get(&*tp.topic).is_none_or(|t| t.id != id)
}

/// Opens (creating if needed) and replicates a partition this shard owns; `applied` is
/// the offset of the image that names it.
async fn add(
    node: &Node,
    cluster: &Cluster,
    tp: &TopicPartition,
    want: &Wanted,
    applied: i64,
) -> Result<(), String> {
    let log = match node.shard.local(tp) {
        Ok(log) => log,
        Err(EngineError::UnknownPartition(_)) => {
            let config = topic_config::partition_config(&want.configs).map_err(|(_, m)| m)?;
            node.shard
                .create_partition(tp.clone(), config)
                .await
                .map_err(|e| e.to_string())?;
            node.shard.local(tp).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    if log.topic_id().is_none() || log.topic_seen_at().is_none() {
        log.set_topic(want.topic_id, applied)
            .await
            .map_err(|e| e.to_string())?;
    }
    let voters = want.replicas.iter().map(|id| ReplicaId(*id)).collect();
    let membership = Membership::new(voters, Vec::new())?;
    cluster
        .replicator
        .add(key_of(tp), log, membership, false)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(partition = %tp, replicas = ?want.replicas, "replicating partition");
    Ok(())
}

async fn remove(node: &Node, cluster: &Cluster, tp: &TopicPartition) -> Result<(), String> {
    cluster.replicator.remove(&key_of(tp)).await;
    match node.shard.delete_partition(tp.clone()).await {
        Ok(()) | Err(EngineError::UnknownPartition(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Applies a topic's changed configs to a local replica.
async fn update_configs(
    node: &Node,
    tp: &TopicPartition,
    configs: &[(String, String)],
    state: &Reconciled,
) -> Result<(), String> {
    if state.configs.get(tp).map(Vec::as_slice) == Some(configs) {
        return Ok(());
    }
    let config = topic_config::partition_config(configs).map_err(|(_, m)| m)?;
    node.shard
        .update_config(tp.clone(), config)
        .await
        .map_err(|e| e.to_string())
}

/// The leadership of this shard's partitions.
fn views(cluster: &Cluster) -> BTreeMap<TopicPartition, LeaderView> {
    let mut out = BTreeMap::new();
    for key in cluster.replicator.keys() {
        let Some(status) = cluster.replicator.status(&key) else {
            continue;
        };
        let isr = cluster
            .replicator
            .in_sync(&key)
            .map(|ids| ids.into_iter().map(|r| r.0).collect());
        let view = LeaderView {
            leader: status.leader.map(|r| r.0),
            epoch: status.epoch,
            isr,
        };
        out.insert(TopicPartition::new(&key.topic, key.partition), view);
    }
    out
}

/// Installs this shard's views here and sends them to every other shard.
async fn broadcast(node: &Node, cluster: &Cluster, views: Views) {
    let me = node.shard.id().index();
    cluster.set_views(me, views.clone());
    for peer in 0..node.shard.shard_count() {
        if peer != me {
            let message = ControlMessage::Leaders {
                from: me,
                views: views.clone(),
            };
            node.send_control(peer, message).await;
        }
    }
}
