//! What every shard's server shares: the engine shard, the settings, the topic catalog
//! snapshot, and the control mesh to the controller.
//!
//! Shard 0 is the broker's *controller*: it alone changes the topic catalog. Any shard
//! forwards topic administration to it over the control mesh (bounded channels,
//! `CONTROL_CHANNEL_CAPACITY`); the controller creates the partitions on their owning
//! shards through the engine, saves the catalog, and sends the new immutable snapshot
//! to every shard, answering only once all of them hold it, so a client that created a
//! topic sees it on any connection afterwards. Requests on every shard read their own
//! snapshot with no locks.
//!
//! The same mesh carries consumer-group requests to the shard that coordinates the
//! group (`ControlMessage::Group`, see `group`); each runs there as its own task, at most
//! `SHARD_GROUP_CALLS_INFLIGHT_MAX` at once, since a join waits for a whole rebalance.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::sync::Semaphore;
use spate_engine::catalog::Catalog;
use spate_engine::shard::channels::Senders;
use spate_engine::shard::reply::{self, ReplySender};
use spate_engine::{Shard, TopicPartition};
use spate_replication::metadata::{BrokerInfo, MetadataImage};

use crate::cluster::replicated::{Failure, ReplicaAnswer, ReplicaCall};
use crate::cluster::{Cluster, ClusterConfig, Views};
use crate::controller::{self, TopicOutcome, TopicResult, TopicSpec};
use crate::group::{Coordinator, GroupAnswer, GroupCall, GroupConfig};
use crate::topic_config::ConfigChange;

/// Every topic failing because the broker is stopping.
fn stopping(count: usize) -> Vec<TopicResult> {
    let error = (
        kafka_protocol::ResponseError::NotController,
        "the broker is shutting down".to_string(),
    );
    vec![Err(error); count]
}

/// Settings every shard's server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// What Metadata tells clients to connect to.
    pub advertise: SocketAddr,
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// Partitions of an auto-created topic (`num.partitions`).
    pub default_partitions: i32,
    /// Create unknown topics asked for by Metadata (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Consumer group coordination.
    pub groups: GroupConfig,
    /// Cluster mode (`--voters`); `None` runs a single broker without replication.
    pub cluster: Option<ClusterConfig>,
}

/// Messages on the control mesh.
#[derive(Debug)]
pub enum ControlMessage {
    /// To the controller: create these topics.
    CreateTopics {
        topics: Vec<TopicSpec>,
        validate_only: bool,
        reply: ReplySender<Option<Vec<TopicOutcome>>>,
    },
    /// To the controller: delete these topics.
    DeleteTopics {
        names: Vec<String>,
        reply: ReplySender<Option<Vec<TopicOutcome>>>,
    },
    /// To the controller: grow topics to these partition counts.
    AddPartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
        reply: ReplySender<Option<Vec<TopicResult>>>,
    },
    /// To the controller: change these topics' config overrides.
    AlterConfigs {
        changes: Vec<(String, ConfigChange)>,
        validate_only: bool,
        reply: ReplySender<Option<Vec<TopicResult>>>,
    },
    /// To the controller: allocate an idempotent producer id.
    AllocateProducerId { reply: ReplySender<Option<i64>> },
    /// To a group's coordinator: run this call for `group`.
    Group {
        group: String,
        call: GroupCall,
        reply: ReplySender<GroupAnswer>,
    },
    /// From the controller: the new catalog (in cluster mode, with the metadata image
    /// it comes from); acknowledge once installed.
    Catalog {
        catalog: Arc<Catalog>,
        image: Option<Arc<MetadataImage>>,
        installed: ReplySender<()>,
    },
    /// Cluster mode, from shard `from`: the leadership of its partitions.
    Leaders { from: usize, views: Views },
    /// Cluster mode, to a partition's owning shard.
    Replica {
        tp: TopicPartition,
        call: ReplicaCall,
        reply: ReplySender<ReplicaAnswer>,
    },
    /// Cluster mode, to shard 0: register a broker through the controller.
    RegisterBroker {
        id: u32,
        info: BrokerInfo,
        reply: ReplySender<Result<(), Failure>>,
    },
    /// Cluster mode, to shard 0: a block of producer ids from the controller,
    /// `(start, length)`.
    ProducerIdBlock {
        reply: ReplySender<Result<(i64, i32), Failure>>,
    },
    /// Cluster mode, to shard 0: record the leadership `broker` reports (AlterPartition);
    /// an error, or none, per report.
    RecordLeaders {
        broker: u32,
        reports: Vec<crate::cluster::admin::LeaderReport>,
        reply: ReplySender<Result<Vec<Option<kafka_protocol::ResponseError>>, Failure>>,
    },
}

/// One shard's server context. Lives on its shard only.
#[derive(Debug)]
pub struct Node {
    pub shard: Shard,
    pub config: ServerConfig,
    catalog: RefCell<Arc<Catalog>>,
    control: Senders<ControlMessage>,
    /// The consumer groups this shard coordinates.
    pub groups: Coordinator,
    /// Serialises catalog changes on the controller.
    admin: Semaphore,
    /// Request bytes read but not yet answered on this shard (`SHARD_INFLIGHT_BYTES_MAX`).
    pub inflight_bytes: Rc<Semaphore>,
    /// Fetch record bytes sent with sendfile, and from memory (the tail cache).
    zero_copy_bytes: Cell<u64>,
    copied_bytes: Cell<u64>,
    /// Cluster mode's state on this shard, set before the shard serves clients.
    cluster: std::cell::OnceCell<Rc<Cluster>>,
}

/// The controller's shard.
pub const CONTROLLER: usize = 0;

impl Node {
    pub fn new(
        shard: Shard,
        config: ServerConfig,
        catalog: Arc<Catalog>,
        control: Senders<ControlMessage>,
    ) -> Rc<Node> {
        let groups = config.groups;
        Rc::new(Node {
            shard,
            config,
            catalog: RefCell::new(catalog),
            groups: Coordinator::new(groups),
            control,
            admin: Semaphore::new(1),
            inflight_bytes: Rc::new(Semaphore::new(
                crate::limits::SHARD_INFLIGHT_BYTES_MAX as u64,
            )),
            zero_copy_bytes: Cell::new(0),
            copied_bytes: Cell::new(0),
            cluster: std::cell::OnceCell::new(),
        })
    }

    /// Cluster mode's state; `None` on a single broker.
    pub fn cluster(&self) -> Option<&Rc<Cluster>> {
        self.cluster.get()
    }

    pub fn set_cluster(&self, cluster: Rc<Cluster>) {
        assert!(
            self.cluster.set(cluster).is_ok(),
            "cluster mode starts once"
        );
    }

    /// Counts a fetch frame's record bytes: file ranges go zero-copy, the rest (the
    /// frame's fixed fields aside) from memory.
    pub fn note_fetch_parts(&self, parts: &[crate::handlers::fetch::Part]) {
        for part in parts {
            match part {
                crate::handlers::fetch::Part::File { len, .. } => {
                    self.zero_copy_bytes.set(self.zero_copy_bytes.get() + len)
                }
                crate::handlers::fetch::Part::Bytes(b) => self
                    .copied_bytes
                    .set(self.copied_bytes.get() + b.len() as u64),
            }
        }
    }

    /// Fetch bytes sent so far: (zero-copy, from memory, framing included).
    pub fn fetch_bytes(&self) -> (u64, u64) {
        (self.zero_copy_bytes.get(), self.copied_bytes.get())
    }

    /// The current catalog snapshot.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    pub(crate) fn is_controller(&self) -> bool {
        self.shard.id().index() == CONTROLLER
    }

    /// Sends a request to the controller and waits for its answer; `None` if the
    /// broker is stopping.
    async fn ask_controller<T: Send + 'static>(
        &self,
        message: impl FnOnce(ReplySender<T>) -> ControlMessage,
    ) -> Option<T> {
        let (reply, rx) = reply::channel();
        self.control
            .send_to(CONTROLLER, message(reply))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Runs a group call on shard `shard`'s coordinator; `None` if the broker is
    /// stopping.
    pub async fn group_call_on(
        &self,
        shard: usize,
        group: String,
        call: GroupCall,
    ) -> Option<GroupAnswer> {
        let (reply, rx) = reply::channel();
        let message = ControlMessage::Group { group, call, reply };
        self.control.send_to(shard, message).await.ok()?;
        rx.await.ok()
    }

    /// Runs a catalog change on the controller, one at a time, and publishes the new
    /// catalog if there is one; `None` if the broker is stopping.
    pub(crate) async fn serially<T>(
        &self,
        change: impl std::future::Future<Output = (T, Option<Arc<Catalog>>)>,
    ) -> Option<T> {
        assert!(
            self.is_controller(),
            "only the controller changes the catalog"
        );
        let _serial = self.admin.acquire_permit(1).await.ok()?;
        let (answer, changed) = change.await;
        if let Some(catalog) = changed {
            self.publish(catalog).await;
        }
        Some(answer)
    }

    /// Creates topics through the controller.
    pub async fn create_topics(
        self: &Rc<Self>,
        topics: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        let outcomes = if self.is_controller() {
            self.controller_create(topics, validate_only).await
        } else {
            self.ask_controller(|reply| ControlMessage::CreateTopics {
                topics,
                validate_only,
                reply,
            })
            .await
            .flatten()
        };
        outcomes.unwrap_or_else(|| names.into_iter().map(TopicOutcome::shutting_down).collect())
    }

    /// Creates topics the broker needs itself (auto-created topics, `__consumer_offsets`).
    /// In cluster mode, a broker that is not the controller asks the controller in the
    /// Kafka protocol, as a client would; it never forwards a client's CreateTopics, so a
    /// request cannot travel in circles between brokers that disagree on the controller.
    pub async fn create_topics_for_broker(
        self: &Rc<Self>,
        topics: Vec<TopicSpec>,
    ) -> Vec<TopicOutcome> {
        if let Some(cluster) = self.cluster() {
            if cluster.controller().is_some_and(|id| id != cluster.me()) {
                return crate::cluster::register::forward_create_topics(self, topics).await;
            }
        }
        self.create_topics(topics, false).await
    }

    async fn controller_create(
        &self,
        topics: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Option<Vec<TopicOutcome>> {
        if self.cluster().is_some() {
            let change = crate::cluster::admin::create_topics(self, topics, validate_only);
            return self.serially(async { (change.await, None) }).await;
        }
        self.serially(controller::create_topics(self, topics, validate_only))
            .await
    }

    /// Deletes topics through the controller.
    pub async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicOutcome> {
        let outcomes = if self.is_controller() {
            self.controller_delete(names.clone()).await
        } else {
            let names = names.clone();
            self.ask_controller(|reply| ControlMessage::DeleteTopics { names, reply })
                .await
                .flatten()
        };
        outcomes.unwrap_or_else(|| names.into_iter().map(TopicOutcome::shutting_down).collect())
    }

    async fn controller_delete(&self, names: Vec<String>) -> Option<Vec<TopicOutcome>> {
        if self.cluster().is_some() {
            let change = crate::cluster::admin::delete_topics(self, names);
            return self.serially(async { (change.await, None) }).await;
        }
        self.serially(controller::delete_topics(self, names)).await
    }

    /// Grows topics to new partition counts through the controller.
    pub async fn add_partitions(
        self: &Rc<Self>,
        topics: Vec<(String, i32)>,
        validate_only: bool,
    ) -> Vec<TopicResult> {
        let count = topics.len();
        let results = if self.is_controller() {
            self.controller_add_partitions(topics, validate_only).await
        } else {
            self.ask_controller(|reply| ControlMessage::AddPartitions {
                topics,
                validate_only,
                reply,
            })
            .await
            .flatten()
        };
        results.unwrap_or_else(|| stopping(count))
    }

    async fn controller_add_partitions(
        &self,
        topics: Vec<(String, i32)>,
        validate_only: bool,
    ) -> Option<Vec<TopicResult>> {
        if self.cluster().is_some() {
            let change = crate::cluster::admin::add_partitions(self, topics, validate_only);
            return self.serially(async { (change.await, None) }).await;
        }
        self.serially(controller::add_partitions(self, topics, validate_only))
            .await
    }

    /// Changes topic configs through the controller.
    pub async fn alter_configs(
        self: &Rc<Self>,
        changes: Vec<(String, ConfigChange)>,
        validate_only: bool,
    ) -> Vec<TopicResult> {
        let count = changes.len();
        let results = if self.is_controller() {
            self.controller_alter_configs(changes, validate_only).await
        } else {
            self.ask_controller(|reply| ControlMessage::AlterConfigs {
                changes,
                validate_only,
                reply,
            })
            .await
            .flatten()
        };
        results.unwrap_or_else(|| stopping(count))
    }

    async fn controller_alter_configs(
        &self,
        changes: Vec<(String, ConfigChange)>,
        validate_only: bool,
    ) -> Option<Vec<TopicResult>> {
        if self.cluster().is_some() {
            let change = crate::cluster::admin::alter_configs(self, changes, validate_only);
            return self.serially(async { (change.await, None) }).await;
        }
        self.serially(controller::alter_configs(self, changes, validate_only))
            .await
    }

    /// A new idempotent producer id, never handed out before; `None` if it could not be
    /// made durable (or the broker is stopping).
    pub async fn allocate_producer_id(self: &Rc<Self>) -> Option<i64> {
        if self.is_controller() {
            return self.controller_allocate().await;
        }
        self.ask_controller(|reply| ControlMessage::AllocateProducerId { reply })
            .await
            .flatten()
    }

    async fn controller_allocate(&self) -> Option<i64> {
        if self.cluster().is_some() {
            return crate::cluster::admin::next_producer_id(self).await;
        }
        let _serial = self.admin.acquire_permit(1).await.ok()?;
        let mut catalog = (*self.catalog()).clone();
        let id = catalog.next_producer_id;
        catalog.next_producer_id += 1;
        if let Err(e) = catalog.save(&self.config.data_dir).await {
            tracing::error!(error = %e, "could not persist the producer id counter");
            return None;
        }
        // Only the controller reads the counter; other shards get it with the next
        // topic change.
        *self.catalog.borrow_mut() = Arc::new(catalog);
        Some(id)
    }

    /// Installs `catalog` here and on every shard, returning once all hold it.
    async fn publish(&self, catalog: Arc<Catalog>) {
        self.publish_with(catalog, None).await
    }

    /// Installs `catalog` (and in cluster mode the `image` it comes from) here and on
    /// every shard, returning once all hold it. An image older than the one a shard
    /// holds is ignored there: the publisher and an admin call may race.
    pub(crate) async fn publish_with(
        &self,
        catalog: Arc<Catalog>,
        image: Option<Arc<MetadataImage>>,
    ) {
        self.install(catalog.clone(), image.clone());
        let mut acks = Vec::new();
        for peer in 0..self.shard.shard_count() {
            if peer == self.shard.id().index() {
                continue;
            }
            let (installed, ack) = reply::channel();
            let message = ControlMessage::Catalog {
                catalog: catalog.clone(),
                image: image.clone(),
                installed,
            };
            if self.control.send_to(peer, message).await.is_ok() {
                acks.push(ack);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
    }

    /// Installs a catalog and image on this shard, unless the image is older than the
    /// one held.
    fn install(&self, catalog: Arc<Catalog>, image: Option<Arc<MetadataImage>>) {
        if let (Some(image), Some(cluster)) = (image, self.cluster()) {
            if image.applied < cluster.image().applied {
                return;
            }
            cluster.set_image(image);
        }
        *self.catalog.borrow_mut() = catalog;
    }

    /// Sends `message` to shard `peer`; dropped if the broker is stopping.
    pub(crate) async fn send_control(&self, peer: usize, message: ControlMessage) {
        let _ = self.control.send_to(peer, message).await;
    }

    /// Runs `call` on the shard owning `tp`; `None` if the broker is stopping.
    pub async fn replica_call(
        self: &Rc<Self>,
        tp: TopicPartition,
        call: ReplicaCall,
    ) -> Option<ReplicaAnswer> {
        let owner = self.shard.owner(&tp).index();
        if owner == self.shard.id().index() {
            // Its own task, so a client that goes away never cancels a write halfway.
            let node = self.clone();
            let task = glommio::spawn_local(async move {
                crate::cluster::replicated::run_here(&node, &tp, call).await
            });
            return Some(task.await);
        }
        let (reply, rx) = reply::channel();
        let message = ControlMessage::Replica { tp, call, reply };
        self.control.send_to(owner, message).await.ok()?;
        rx.await.ok()
    }

    /// Registers broker `id` through the controller (cluster mode).
    pub async fn register_broker(&self, id: u32, info: BrokerInfo) -> Result<(), Failure> {
        if self.is_controller() {
            return crate::cluster::admin::register(self, id, info).await;
        }
        self.ask_controller(|reply| ControlMessage::RegisterBroker { id, info, reply })
            .await
            .unwrap_or_else(|| Err(crate::cluster::admin::stopping()))
    }

    /// A block of producer ids from the controller (cluster mode): `(start, length)`.
    pub async fn producer_id_block(&self) -> Result<(i64, i32), Failure> {
        if self.is_controller() {
            return crate::cluster::admin::producer_id_block(self).await;
        }
        self.ask_controller(|reply| ControlMessage::ProducerIdBlock { reply })
            .await
            .unwrap_or_else(|| Err(crate::cluster::admin::stopping()))
    }

    /// Records the leadership `broker` reports through the controller (cluster mode).
    pub async fn record_leaders(
        &self,
        broker: u32,
        reports: Vec<crate::cluster::admin::LeaderReport>,
    ) -> Result<Vec<Option<kafka_protocol::ResponseError>>, Failure> {
        if self.is_controller() {
            return crate::cluster::admin::record_leaders(self, broker, reports).await;
        }
        self.ask_controller(|reply| ControlMessage::RecordLeaders {
            broker,
            reports,
            reply,
        })
        .await
        .unwrap_or_else(|| Err(crate::cluster::admin::stopping()))
    }

    /// Serves one peer's control channel.
    pub async fn serve_control(self: Rc<Self>, receiver: ConnectedReceiver<ControlMessage>) {
        while let Some(message) = receiver.recv().await {
            match message {
                ControlMessage::Group { group, call, reply } => {
                    // Joins wait for whole rebalances: each call runs as its own task,
                    // and the permits bound how many.
                    let Ok(permit) = self.groups.remote_calls.acquire_static_permit(1).await else {
                        continue;
                    };
                    let node = self.clone();
                    glommio::spawn_local(async move {
                        reply.send(crate::group::coordinator::call_here(&node, group, call).await);
                        drop(permit);
                    })
                    .detach();
                }
                ControlMessage::Catalog {
                    catalog,
                    image,
                    installed,
                } => {
                    self.install(catalog, image);
                    installed.send(());
                }
                ControlMessage::Leaders { from, views } => {
                    if let Some(cluster) = self.cluster() {
                        cluster.set_views(from, views);
                    }
                }
                ControlMessage::Replica { tp, call, reply } => {
                    // A write waits for the quorum: it must not hold up the channel. The
                    // tasks are bounded by the sending shard, which holds the request's
                    // bytes (SHARD_INFLIGHT_BYTES_MAX) until the answer comes back.
                    let node = self.clone();
                    glommio::spawn_local(async move {
                        reply.send(crate::cluster::replicated::run_here(&node, &tp, call).await);
                    })
                    .detach();
                }
                ControlMessage::RegisterBroker { id, info, reply } => {
                    reply.send(crate::cluster::admin::register(&self, id, info).await);
                }
                ControlMessage::ProducerIdBlock { reply } => {
                    reply.send(crate::cluster::admin::producer_id_block(&self).await);
                }
                ControlMessage::RecordLeaders {
                    broker,
                    reports,
                    reply,
                } => {
                    reply.send(crate::cluster::admin::record_leaders(&self, broker, reports).await);
                }
                // Inline, so a peer's channel bounds its pending requests. Changes are
                // serialised anyway, and snapshots go out on other channels (from the
                // controller to each peer), so this cannot deadlock.
                ControlMessage::DeleteTopics { names, reply } => {
                    reply.send(self.controller_delete(names).await);
                }
                ControlMessage::AllocateProducerId { reply } => {
                    reply.send(self.controller_allocate().await);
                }
                ControlMessage::CreateTopics {
                    topics,
                    validate_only,
                    reply,
                } => {
                    reply.send(self.controller_create(topics, validate_only).await);
                }
                ControlMessage::AddPartitions {
                    topics,
                    validate_only,
                    reply,
                } => {
                    let answer = self.controller_add_partitions(topics, validate_only);
                    reply.send(answer.await);
                }
                ControlMessage::AlterConfigs {
                    changes,
                    validate_only,
                    reply,
                } => {
                    let answer = self.controller_alter_configs(changes, validate_only);
                    reply.send(answer.await);
                }
            }
        }
    }
}
