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

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::sync::Semaphore;
use spate_engine::catalog::Catalog;
use spate_engine::Shard;

use crate::controller::{self, TopicOutcome, TopicSpec};

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
}

/// Messages on the control mesh.
#[derive(Debug)]
pub enum ControlMessage {
    /// To the controller: create these topics.
    CreateTopics {
        topics: Vec<TopicSpec>,
        validate_only: bool,
        reply: oneshot::Sender<Vec<TopicOutcome>>,
    },
    /// To the controller: delete these topics.
    DeleteTopics {
        names: Vec<String>,
        reply: oneshot::Sender<Vec<TopicOutcome>>,
    },
    /// To the controller: allocate an idempotent producer id.
    AllocateProducerId { reply: oneshot::Sender<Option<i64>> },
    /// From the controller: the new catalog; acknowledge once installed.
    Catalog {
        catalog: Arc<Catalog>,
        installed: oneshot::Sender<()>,
    },
}

/// One shard's server context. Lives on its shard only.
#[derive(Debug)]
pub struct Node {
    pub shard: Shard,
    pub config: ServerConfig,
    catalog: RefCell<Arc<Catalog>>,
    control: Senders<ControlMessage>,
    /// Serialises catalog changes on the controller.
    admin: Semaphore,
    /// Request bytes read but not yet answered on this shard (`SHARD_INFLIGHT_BYTES_MAX`).
    pub inflight_bytes: Rc<Semaphore>,
    /// Fetch record bytes sent with sendfile, and from memory (the tail cache).
    zero_copy_bytes: Cell<u64>,
    copied_bytes: Cell<u64>,
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
        Rc::new(Node {
            shard,
            config,
            catalog: RefCell::new(catalog),
            control,
            admin: Semaphore::new(1),
            inflight_bytes: Rc::new(Semaphore::new(
                crate::limits::SHARD_INFLIGHT_BYTES_MAX as u64,
            )),
            zero_copy_bytes: Cell::new(0),
            copied_bytes: Cell::new(0),
        })
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

    fn is_controller(&self) -> bool {
        self.shard.id().index() == CONTROLLER
    }

    /// Creates topics through the controller.
    pub async fn create_topics(
        self: &Rc<Self>,
        topics: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        if self.is_controller() {
            return self.controller_create(topics, validate_only).await;
        }
        let (reply, rx) = oneshot::channel();
        let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
        let sent = self
            .control
            .send_to(
                CONTROLLER,
                ControlMessage::CreateTopics {
                    topics,
                    validate_only,
                    reply,
                },
            )
            .await
            .is_ok();
        match (sent, rx.await) {
            (true, Ok(outcomes)) => outcomes,
            _ => names.into_iter().map(TopicOutcome::shutting_down).collect(),
        }
    }

    /// Deletes topics through the controller.
    pub async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicOutcome> {
        if self.is_controller() {
            return self.controller_delete(names).await;
        }
        let (reply, rx) = oneshot::channel();
        let message = ControlMessage::DeleteTopics {
            names: names.clone(),
            reply,
        };
        let sent = self.control.send_to(CONTROLLER, message).await.is_ok();
        match (sent, rx.await) {
            (true, Ok(outcomes)) => outcomes,
            _ => names.into_iter().map(TopicOutcome::shutting_down).collect(),
        }
    }

    async fn controller_delete(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicOutcome> {
        let Ok(_serial) = self.admin.acquire_permit(1).await else {
            return names.into_iter().map(TopicOutcome::shutting_down).collect();
        };
        let (outcomes, changed) = controller::delete_topics(self, names).await;
        if let Some(catalog) = changed {
            self.publish(catalog).await;
        }
        outcomes
    }

    /// A new idempotent producer id, never handed out before; `None` if it could not be
    /// made durable (or the broker is stopping).
    pub async fn allocate_producer_id(self: &Rc<Self>) -> Option<i64> {
        if self.is_controller() {
            return self.controller_allocate().await;
        }
        let (reply, rx) = oneshot::channel();
        self.control
            .send_to(CONTROLLER, ControlMessage::AllocateProducerId { reply })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

    async fn controller_allocate(self: &Rc<Self>) -> Option<i64> {
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

    async fn controller_create(
        self: &Rc<Self>,
        topics: Vec<TopicSpec>,
        validate_only: bool,
    ) -> Vec<TopicOutcome> {
        let Ok(_serial) = self.admin.acquire_permit(1).await else {
            return topics
                .into_iter()
                .map(|t| TopicOutcome::shutting_down(t.name))
                .collect();
        };
        let (outcomes, changed) = controller::create_topics(self, topics, validate_only).await;
        if let Some(catalog) = changed {
            self.publish(catalog).await;
        }
        outcomes
    }

    /// Installs `catalog` here and on every shard, returning once all hold it.
    async fn publish(&self, catalog: Arc<Catalog>) {
        *self.catalog.borrow_mut() = catalog.clone();
        let mut acks = Vec::new();
        for peer in 0..self.shard.shard_count() {
            if peer == self.shard.id().index() {
                continue;
            }
            let (installed, ack) = oneshot::channel();
            let message = ControlMessage::Catalog {
                catalog: catalog.clone(),
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

    /// Serves one peer's control channel.
    pub async fn serve_control(self: Rc<Self>, receiver: ConnectedReceiver<ControlMessage>) {
        while let Some(message) = receiver.recv().await {
            match message {
                ControlMessage::Catalog { catalog, installed } => {
                    *self.catalog.borrow_mut() = catalog;
                    let _ = installed.send(());
                }
                ControlMessage::DeleteTopics { names, reply } => {
                    let _ = reply.send(self.controller_delete(names).await);
                }
                ControlMessage::AllocateProducerId { reply } => {
                    let _ = reply.send(self.controller_allocate().await);
                }
                ControlMessage::CreateTopics {
                    topics,
                    validate_only,
                    reply,
                } => {
                    // Inline, so a peer's channel bounds its pending requests. Creations
                    // are serialised anyway, and snapshots go out on other channels (from
                    // the controller to each peer), so this cannot deadlock.
                    let _ = reply.send(self.controller_create(topics, validate_only).await);
                }
            }
        }
    }
}
