//! What a replica keeps on disk beside its partition log: `quorum-state` (its epoch
//! and vote, which must survive a crash before any message that depends on them goes
//! out) and `leader-epoch-checkpoint` (its epoch cache). Both are rkyv archives in the
//! engine's checksummed envelope, replaced atomically (write, fsync, rename, fsync the
//! directory).
//!
//! Ordering rules that make a crash at any point safe:
//! - the epoch checkpoint is written *before* an append that starts a new epoch, so
//!   after a crash it may name epochs past the log end, never miss one inside it; on
//!   recovery it is cut back to the log end;
//! - after a truncation it is written *after* the log is cut, for the same reason;
//! - a missing or damaged checkpoint is rebuilt from the log's batch headers, and so is
//!   one that has no epoch for the log's last record (a crash while a follower started
//!   over at its leader's log start: the emptied cache was saved, the log not yet
//!   restarted).

use std::path::{Path, PathBuf};

use spate_engine::meta::{self, FileKind};
use spate_engine::{file, LeaderEpoch, Offset, PartitionLog};

use super::DriverError;
use crate::epochs::EpochCache;
use crate::limits::REBUILD_READ_BYTES;
use crate::replica::{Persisted, Recovered, ReplicaId};

pub const QUORUM_STATE_FILE: &str = "quorum-state";
pub const EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct QuorumState {
    epoch: i32,
    voted_for: Option<u32>,
}

pub async fn save_vote(dir: &Path, persisted: Persisted) -> Result<(), DriverError> {
    let state = QuorumState {
        epoch: persisted.epoch.0,
        voted_for: persisted.voted_for.map(|r| r.0),
    };
    let bytes = meta::encode(FileKind::QuorumState, &state);
    Ok(file::write_atomic(dir, QUORUM_STATE_FILE, &bytes).await?)
}

pub async fn save_epochs(dir: &Path, epochs: &EpochCache) -> Result<(), DriverError> {
    Ok(file::write_atomic(dir, EPOCH_CHECKPOINT_FILE, &epochs.encode()).await?)
}

/// What the replica finds on disk for `log`: its vote state, and its epoch cache cut
/// back to the log end (or rebuilt from the log).
pub async fn recover(log: &PartitionLog) -> Result<Recovered, DriverError> {
    let dir: PathBuf = log.dir().to_path_buf();
    let offsets = log.offsets();
    // Where the log starts for replication: the base of the batch holding its start.
    let start = log.log_start_batch().await?;
    let stored = file::read_small(&dir.join(EPOCH_CHECKPOINT_FILE))
        .await?
        .and_then(|bytes| EpochCache::decode(&bytes));
    let covers_log = |epochs: &EpochCache| {
        offsets.log_end == offsets.log_start
            || epochs.epoch_at(Offset(offsets.log_end.0 - 1)).is_some()
    };
    let epochs = match stored.filter(covers_log) {
        Some(mut epochs) => {
            epochs.truncate_to(offsets.log_end);
            epochs
        }
        None => {
            if offsets.log_end > offsets.log_start {
                tracing::warn!(partition = %log.topic_partition(), "no valid leader-epoch-checkpoint: rebuilding it from the log");
            }
            let rebuilt = rebuild_epochs(log, start).await?;
            save_epochs(&dir, &rebuilt).await?;
            rebuilt
        }
    };
    let vote = file::read_small(&dir.join(QUORUM_STATE_FILE))
        .await?
        .and_then(|bytes| meta::decode::<QuorumState>(FileKind::QuorumState, &bytes));
    let latest = epochs.latest().map_or(LeaderEpoch(0), |(e, _)| e);
    let persisted = match vote {
        Some(v) if v.epoch >= latest.0 => Persisted {
            epoch: LeaderEpoch(v.epoch),
            voted_for: v.voted_for.map(ReplicaId),
        },
        // No vote recorded (a new replica), or one older than the log (never written
        // after its log grew, which the write order rules out, but be safe): start at
        // the log's epoch without a vote.
        _ => Persisted {
            epoch: latest,
            voted_for: None,
        },
    };
    Ok(Recovered {
        persisted,
        log_start: start,
        log_end: offsets.log_end,
        epochs,
        memberships: Vec::new(),
    })
}

/// The epoch cache from the batch headers of the whole log, read from `start`.
async fn rebuild_epochs(log: &PartitionLog, start: Offset) -> Result<EpochCache, DriverError> {
    let mut epochs = EpochCache::new();
    let offsets = log.offsets();
    let mut at = start;
    while at < offsets.log_end {
        let read = log
            .read_replicated(at, offsets.log_end, REBUILD_READ_BYTES)
            .await?;
        if read.end == at {
            break;
        }
        for (epoch, records) in read.batches {
            let latest = epochs.latest().map_or(-1, |(e, _)| e.0);
            if epoch < latest {
                return Err(DriverError::Corrupt(format!(
                    "{}: the batch at offset {} has epoch {epoch}, after epoch {latest}",
                    log.topic_partition(),
                    at.0
                )));
            }
            if epoch >= 0 {
                epochs.assign(LeaderEpoch(epoch), at);
            }
            at = at.plus(i64::from(records));
        }
    }
    Ok(epochs)
}
