//! Starting a broker: the topic catalog, the control mesh and every shard's server.
//! A broker with a dead shard thread stops, as failed: it is no longer whole.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spate_engine::catalog::Catalog;
use spate_engine::shard::channels::Mesh;
use spate_engine::{EngineConfig, Shard, ShardSet, TopicPartition};

use crate::cluster::{leaders, reconcile, register, Cluster};
use crate::controller;
use crate::limits::CONTROL_CHANNEL_CAPACITY;
use crate::node::{ControlMessage, Node, ServerConfig};

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    shards: ShardSet,
    failed: Arc<AtomicBool>,
    /// Whether every shard was listening when `start` returned.
    listening: bool,
}

/// Partitions present on disk, from their directory names.
fn partitions_on_disk(root: &Path) -> Result<Vec<TopicPartition>, String> {
    let entries =
        std::fs::read_dir(root).map_err(|e| format!("cannot list {}: {e}", root.display()))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            if let Some(tp) = entry
                .file_name()
                .to_str()
                .and_then(TopicPartition::from_dir_name)
            {
                found.push(tp);
            }
        }
    }
    Ok(found)
}

/// Loads the catalog, completing it from the partitions on disk.
fn load_catalog(root: &Path) -> Result<Catalog, String> {
    let mut catalog = Catalog::load(root)?.unwrap_or_default();
    let mut changed = catalog.reconcile(&partitions_on_disk(root)?, controller::new_topic_id);
    if catalog.cluster_id.is_empty() {
        catalog.cluster_id = controller::new_cluster_id();
        changed = true;
    }
    if changed {
        catalog
            .save_blocking(root)
            .map_err(|e| format!("cannot write the topic catalog in {}: {e}", root.display()))?;
    }
    Ok(catalog)
}

impl Broker {
    /// Starts every shard's server. Runs until `stop` is set.
    pub fn start(
        engine: EngineConfig,
        server: ServerConfig,
        stop: Arc<AtomicBool>,
    ) -> Result<Broker, String> {
        // In cluster mode the topics come from the metadata log, not the local catalog.
        let catalog = match &server.cluster {
            None => load_catalog(&engine.data_dir)?,
            Some(cluster) => Catalog {
                cluster_id: cluster.cluster_id.clone(),
                ..Catalog::default()
            },
        };
        let catalog = Arc::new(catalog);
        // Shared by the shard threads, each claiming its own ends from it once.
        let mesh = Arc::new(Mesh::<ControlMessage>::full(
            engine.shard_count,
            CONTROL_CHANNEL_CAPACITY,
        ));
        let failed = Arc::new(AtomicBool::new(false));
        let failure = failed.clone();
        let shard_count = engine.shard_count;
        // Each shard says when it listens; one that fails first drops its sender.
        let (listens, listening) = std::sync::mpsc::channel::<()>();
        let shards = ShardSet::start(engine, move |shard| {
            let (server, stop, catalog, mesh, failure) =
                (server.clone(), stop.clone(), catalog.clone(), mesh.clone(), failure.clone());
            let listens = listens.clone();
            async move {
                let id = shard.id();
                let Some(ends) = mesh.claim(id.index()) else {
                    tracing::error!(shard = id.0, "control mesh ends already claimed");
                    failure.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    return;
                };
                drop(mesh);
                let (senders, receivers) = ends.connect().await;
                glommio::spawn_local(stop_if_a_shard_dies(shard.clone(), stop.clone(), failure.clone()))
                    .detach();
                let node = Node::new(shard, server, catalog, senders);
                for (_, receiver) in receivers {
                    glommio::spawn_local(node.clone().serve_control(receiver)).detach();
                }
                glommio::spawn_local(crate::group::coordinator::run_timers(node.clone())).detach();
                if let Some(config) = node.config.cluster.clone() {
                    match Cluster::start(&node, config).await {
                        Ok(cluster) => node.set_cluster(cluster),
                        Err(e) => {
                            tracing::error!(shard = id.0, error = %e, "cannot start cluster mode; stopping the broker");
                            failure.store(true, Ordering::Relaxed);
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                    glommio::spawn_local(reconcile::maintain_loop(node.clone())).detach();
                    if id.index() == 0 {
                        glommio::spawn_local(reconcile::publish_loop(node.clone())).detach();
                        glommio::spawn_local(register::registration_loop(node.clone())).detach();
                        glommio::spawn_local(leaders::report_loop(node.clone())).detach();
                    }
                } else {
                    apply_topic_configs(&node).await;
                }
                let listens = move || {
                    let _ = listens.send(());
                };
                let served = crate::server::serve(node.clone(), stop.clone(), listens).await;
                if let Some(cluster) = node.cluster() {
                    // Closes the peer connections: a stopped broker leaves the quorum.
                    cluster.replicator.stop();
                }
                if let Err(e) = served {
                    tracing::error!(shard = id.0, error = %e, "shard server failed; stopping the broker");
                    failure.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| e.to_string())?;
        let listening = (0..shard_count).all(|_| listening.recv().is_ok());
        Ok(Broker {
            shards,
            failed,
            listening,
        })
    }

    /// Whether every shard was listening when `start` returned; if not, one failed and
    /// the broker is stopping (`join` says why).
    pub fn is_serving(&self) -> bool {
        self.listening
    }

    /// Waits for the broker to stop; `Err` if any shard failed.
    pub fn join(self) -> Result<(), String> {
        self.shards.join().map_err(|e| e.to_string())?;
        if self.failed.load(Ordering::Relaxed) {
            return Err(
                "a shard's server failed (see the log); partitions were closed cleanly".into(),
            );
        }
        Ok(())
    }
}

/// How often a shard checks that every other shard is alive.
const SHARD_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Stops the broker, as failed, when another shard's thread has died (a panic): the
/// partitions it owned are out of reach, so the broker is no longer whole.
async fn stop_if_a_shard_dies(shard: Shard, stop: Arc<AtomicBool>, failure: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if shard.a_peer_died() {
            tracing::error!(
                shard = shard.id().0,
                "another shard's thread died; stopping the broker"
            );
            failure.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
            return;
        }
        glommio::timer::sleep(SHARD_WATCH_INTERVAL).await;
    }
}

/// On a single broker at start: brings each local partition's stored config in line
/// with its topic's overrides in the catalog. They agree unless the partition was
/// written by an older version (whose `partition.meta` lacked configs the engine acts
/// on now, such as `cleanup.policy`). Cluster mode does the same in its first reconcile.
async fn apply_topic_configs(node: &Node) {
    let catalog = node.catalog();
    let me = node.shard.id();
    for topic in catalog.topics.values() {
        let Ok(config) = crate::topic_config::partition_config(&topic.configs) else {
            continue;
        };
        for p in 0..topic.partitions {
            let tp = spate_engine::TopicPartition::new(&topic.name, p);
            if node.shard.owner(&tp) != me {
                continue;
            }
            let Ok(log) = node.shard.local(&tp) else {
                continue;
            };
            if log.config() == config {
                continue;
            }
            match log.update_config(config.clone()).await {
                Ok(()) => {
                    tracing::info!(partition = %tp, "applied the topic's configs to the partition")
                }
                Err(e) => {
                    tracing::warn!(partition = %tp, error = %e, "could not apply the topic's configs")
                }
            }
        }
    }
}
