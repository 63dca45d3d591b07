//! The metadata quorum on one broker: the `__cluster_metadata-0` replica (run by the
//! shard's `Replicator` like any partition), the task that applies its committed
//! records to the broker's `MetadataImage`, snapshots, and proposals by the leader (the
//! controller).
//!
//! - **Applying.** Only records below the high watermark (committed) are applied, in
//!   offset order. A committed record that does not apply stops the applier with an
//!   error logged: the image stays at the last good record rather than skip one.
//! - **Proposing.** One proposal at a time. The leader first waits until everything in
//!   its log is committed and applied (a new leader may hold its predecessor's last
//!   records), then checks the records against a copy of the image, so a record it
//!   appends always applies; then it appends them with acks=all and answers once its
//!   own image has applied them.
//! - **Snapshots.** After every `snapshot_every` applied records the image is written to
//!   `metadata.snapshot` beside the log; a restart loads it and replays only what
//!   follows. Committed records are never truncated, so a snapshot never gets ahead of
//!   the log. (Deleting the log below a snapshot needs followers that can install one;
//!   not built.)

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use glommio::sync::Semaphore;
use spate_engine::batch::BatchHeader;
use spate_engine::{file, Offset, PartitionConfig, PartitionLog, ShardResources, TopicPartition};

use super::{decode_batch, encode_batch, MetadataImage, MetadataRecord, METADATA_TOPIC};
use crate::driver::{Acks, DriverError, Replicator};
use crate::limits::APPLY_READ_BYTES;
use crate::replica::Membership;
use crate::wire::PartitionKey;

pub const SNAPSHOT_FILE: &str = "metadata.snapshot";
/// How long the applier waits for the high watermark before looking again.
const APPLY_WAIT: Duration = Duration::from_millis(100);
/// How long a proposal waits for its records to commit.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker's view of the metadata quorum. Lives on the shard that runs its replica.
#[derive(Clone, Debug)]
pub struct MetadataQuorum(Rc<Inner>);

#[derive(Debug)]
struct Inner {
    driver: Replicator,
    log: PartitionLog,
    key: PartitionKey,
    image: RefCell<MetadataImage>,
    snapshot_every: u64,
    since_snapshot: Cell<u64>,
    /// One proposal at a time.
    proposing: Semaphore,
    /// Set when a committed record did not apply: the image is frozen.
    stuck: RefCell<Option<String>>,
    /// The next offset the applier reads (past control batches too).
    next_to_apply: Cell<Offset>,
}

fn key() -> PartitionKey {
    PartitionKey {
        topic: METADATA_TOPIC.into(),
        partition: 0,
    }
}

impl MetadataQuorum {
    /// Opens (or creates) the metadata log under `root`, loads the snapshot, joins the
    /// quorum of `voters` through `driver`, and starts applying.
    pub async fn start(
        driver: &Replicator,
        root: &Path,
        shard: Rc<ShardResources>,
        voters: Membership,
        cluster_id: &str,
        snapshot_every: u64,
    ) -> Result<MetadataQuorum, DriverError> {
        let tp = TopicPartition::new(METADATA_TOPIC, 0);
        let dir: PathBuf = root.join(tp.dir_name());
        let log = if dir.exists() {
            PartitionLog::open(dir.clone(), shard).await?
        } else {
            PartitionLog::create(root, tp, PartitionConfig::default(), shard).await?
        };
        let image = file::read_small(&dir.join(SNAPSHOT_FILE))
            .await?
            .and_then(|bytes| MetadataImage::decode_snapshot(&bytes))
            .filter(|image| image.cluster_id == cluster_id)
            .unwrap_or_else(|| MetadataImage::new(cluster_id));
        driver.add(key(), log.clone(), voters, true).await?;
        let next = Offset(image.applied + 1);
        let quorum = MetadataQuorum(Rc::new(Inner {
            driver: driver.clone(),
            log,
            key: key(),
            image: RefCell::new(image),
            snapshot_every: snapshot_every.max(1),
            since_snapshot: Cell::new(0),
            proposing: Semaphore::new(1),
            stuck: RefCell::new(None),
            next_to_apply: Cell::new(next),
        }));
        glommio::spawn_local(apply_loop(quorum.0.clone())).detach();
        Ok(quorum)
    }

    /// The offset of the last record applied to the image (-1 before any).
    pub fn applied(&self) -> i64 {
        self.0.image.borrow().applied
    }

    /// The image as applied so far.
    pub fn image(&self) -> MetadataImage {
        self.0.image.borrow().clone()
    }

    /// Whether this broker's replica leads the quorum (is the controller).
    pub fn is_leader(&self) -> bool {
        let me = self.0.driver.broker();
        self.0
            .driver
            .status(&self.0.key)
            .is_some_and(|s| s.leader == Some(me))
    }

    /// Why applying stopped, if it did.
    pub fn stuck(&self) -> Option<String> {
        self.0.stuck.borrow().clone()
    }

    /// Appends `records` if they apply to the current image, and answers once they are
    /// committed and applied here. Only the leader may propose.
    pub async fn propose(&self, records: Vec<MetadataRecord>) -> Result<Offset, DriverError> {
        let inner = &self.0;
        let _one = inner
            .proposing
            .acquire_permit(1)
            .await
            .map_err(|_| DriverError::UnknownPartition(METADATA_TOPIC.into()))?;
        // Everything before us must be applied, so the check below sees it.
        let log_end = inner
            .driver
            .status(&inner.key)
            .ok_or_else(|| DriverError::UnknownPartition(METADATA_TOPIC.into()))?
            .log_end;
        self.applied_through(log_end, PROPOSE_TIMEOUT).await?;
        let mut scratch = inner.image.borrow().clone();
        let mut at = Offset(scratch.applied + 1).max(log_end);
        for record in &records {
            scratch.apply(at, record)?;
            at = at.next();
        }
        let batch = encode_batch(&records, spate_engine::Timestamp::now().0);
        let info = inner
            .driver
            .write(
                &inner.key,
                BytesMut::from(&batch[..]),
                Acks::Quorum { min_insync: 1 },
                PROPOSE_TIMEOUT,
            )
            .await?;
        self.applied_through(info.last_offset.next(), PROPOSE_TIMEOUT)
            .await?;
        Ok(info.last_offset)
    }

    /// Waits until every record below `end` is applied (or applying is stuck).
    async fn applied_through(&self, end: Offset, timeout: Duration) -> Result<(), DriverError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(reason) = self.stuck() {
                return Err(DriverError::Corrupt(reason));
            }
            if self.0.log.offsets().high_watermark >= end && self.applied_end() >= end {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(DriverError::Timeout {
                    offset: end.0,
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One past the last offset the applier has passed (records and control batches).
    fn applied_end(&self) -> Offset {
        self.0.next_to_apply.get()
    }
}

/// Applies committed records as the high watermark passes them.
async fn apply_loop(inner: Rc<Inner>) {
    while !inner.driver.is_stopped() && !inner.log.is_closing() {
        let next = inner.next_to_apply.get();
        let committed = inner.log.offsets().high_watermark;
        if next >= committed {
            inner.log.wait_for_data(next, APPLY_WAIT).await;
            continue;
        }
        let read = match inner.log.read(next, APPLY_READ_BYTES).await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot read the metadata log; retrying");
                glommio::timer::sleep(APPLY_WAIT).await;
                continue;
            }
        };
        let mut bytes = Vec::new();
        for chunk in &read.chunks {
            if let Err(error) = chunk.copy_to(&mut bytes) {
                tracing::warn!(%error, "cannot read the metadata log; retrying");
                bytes.clear();
                break;
            }
        }
        if let Err(reason) = apply_batches(&inner, &bytes, committed).await {
            tracing::error!(%reason, "a committed metadata record does not apply: metadata stops here");
            *inner.stuck.borrow_mut() = Some(reason);
            return;
        }
    }
}

/// Applies the whole batches in `bytes` that lie below `committed`.
async fn apply_batches(inner: &Inner, bytes: &[u8], committed: Offset) -> Result<(), String> {
    let mut pos = 0;
    while pos + spate_engine::batch::HEADER_BYTES <= bytes.len() {
        let header = BatchHeader::parse(&bytes[pos..]).map_err(|e| e.to_string())?;
        if pos + header.size > bytes.len() || header.last_offset() >= committed {
            break; // a partial batch at the end of a read, or not committed yet
        }
        let stored = &bytes[pos..pos + header.size];
        pos += header.size;
        if header.last_offset() < inner.next_to_apply.get() {
            continue;
        }
        let records = decode_batch(stored).map_err(|e| e.to_string())?;
        let applied = records.len() as u64;
        {
            let mut image = inner.image.borrow_mut();
            for (offset, record) in records {
                if offset.0 > image.applied {
                    image.apply(offset, &record).map_err(|e| e.to_string())?;
                }
            }
        }
        inner.next_to_apply.set(header.last_offset().next());
        let since = inner.since_snapshot.get() + applied;
        if since >= inner.snapshot_every {
            let snapshot = inner.image.borrow().encode_snapshot();
            if let Err(error) = file::write_atomic(inner.log.dir(), SNAPSHOT_FILE, &snapshot).await
            {
                // The log still holds every record: a missing snapshot costs replay time.
                tracing::warn!(%error, "cannot write the metadata snapshot");
            }
            inner.since_snapshot.set(0);
        } else {
            inner.since_snapshot.set(since);
        }
    }
    Ok(())
}
