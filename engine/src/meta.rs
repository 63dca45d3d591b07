//! Engine metadata files: rkyv archives inside a small checksummed envelope.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SPTM"
//!      4     1  kind (1 partition meta, 2 recovery checkpoint, 3 topic catalog,
//!                  4 producer snapshot, 5 leader-epoch checkpoint)
//!      5     1  format version (1; 4 for partition meta: version 2 added compaction's
//!                  configs, version 3 the topic id, version 4 the metadata offset it
//!                  was seen at; older files are still read, with those configs at
//!                  their defaults and no topic id or offset. 2 for metadata
//!                  snapshots: version 2 added partitions' leaders; a version 1
//!                  snapshot is not read, and the image is replayed from the log)
//!      6     2  reserved, zero
//!      8     4  payload length, little-endian
//!     12     4  CRC-32C of the payload, little-endian
//!     16     …  payload: an rkyv archive of the kind's type
//! ```
//!
//! The CRC catches torn or rotted files that might still pass rkyv's structural check;
//! rkyv's `bytecheck` validation then guarantees the archive is safe to read. A file that
//! fails either check is reported as `None`, and the caller rebuilds what it held from
//! the log (a checkpoint) or refuses to guess (a partition meta: see `log::open`).
//! Files are replaced atomically: write a temporary, fsync, rename, fsync the directory.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::config::{PartitionConfig, PartitionConfigV1};
use crate::limits::METADATA_FILE_BYTES_MAX;
use crate::types::{LeaderEpoch, Offset, ShardId};

const MAGIC: &[u8; 4] = b"SPTM";
/// The format version each kind is written in.
fn version(kind: FileKind) -> u8 {
    match kind {
        FileKind::PartitionMeta => 4,
        FileKind::MetadataSnapshot => 3,
        _ => 1,
    }
}
const ENVELOPE_BYTES: usize = 16;

/// Which structure an envelope holds; a file of one kind is never read as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FileKind {
    PartitionMeta = 1,
    RecoveryCheckpoint = 2,
    Catalog = 3,
    ProducerSnapshot = 4,
    /// `leader-epoch-checkpoint`: a replica's epoch cache (`spate_replication::epochs`).
    LeaderEpochCheckpoint = 5,
    /// `quorum-state`: a replica's current epoch and vote (`spate_replication::driver`).
    QuorumState = 6,
    /// A record of the cluster metadata log (`spate_replication::metadata`).
    MetadataRecord = 7,
    /// `metadata.snapshot`: the applied cluster metadata image.
    MetadataSnapshot = 8,
}

/// Identity and configuration of a partition, in `partition.meta`. Written when the
/// partition is created and when its config or shard changes. `shard` records placement
/// so it survives restarts.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMeta {
    pub topic: String,
    pub partition: i32,
    pub shard: ShardId,
    pub config: PartitionConfig,
    /// The Kafka topic id of the topic this partition was created for, once known (in
    /// cluster mode, from the metadata image). A topic deleted and created again under
    /// the same name has a new id, so a partition left on a broker that was down
    /// meanwhile is known for what it is. `None` in files of earlier versions.
    pub topic_id: Option<[u8; 16]>,
    /// An offset of the cluster metadata log whose image named this partition's topic
    /// with `topic_id`. An image applied to this offset or later that names no such
    /// topic comes after the topic was deleted. `None` in files of earlier versions.
    pub topic_seen_at: Option<i64>,
}

/// `partition.meta` as format version 3 wrote it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMetaV3 {
    pub topic: String,
    pub partition: i32,
    pub shard: ShardId,
    pub config: PartitionConfig,
    pub topic_id: Option<[u8; 16]>,
}

/// `partition.meta` as format version 2 wrote it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMetaV2 {
    pub topic: String,
    pub partition: i32,
    pub shard: ShardId,
    pub config: PartitionConfig,
}

/// `partition.meta` as format version 1 wrote it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionMetaV1 {
    pub topic: String,
    pub partition: i32,
    pub shard: ShardId,
    pub config: PartitionConfigV1,
}

/// Reads `partition.meta` of any format version.
pub fn decode_partition_meta(bytes: &[u8]) -> Option<PartitionMeta> {
    if let Some(meta) = decode(FileKind::PartitionMeta, bytes) {
        return Some(meta);
    }
    if let Some(v3) = decode_version::<PartitionMetaV3>(FileKind::PartitionMeta, 3, bytes) {
        return Some(PartitionMeta {
            topic: v3.topic,
            partition: v3.partition,
            shard: v3.shard,
            config: v3.config,
            topic_id: v3.topic_id,
            topic_seen_at: None,
        });
    }
    if let Some(v2) = decode_version::<PartitionMetaV2>(FileKind::PartitionMeta, 2, bytes) {
        return Some(PartitionMeta {
            topic: v2.topic,
            partition: v2.partition,
            shard: v2.shard,
            config: v2.config,
            topic_id: None,
            topic_seen_at: None,
        });
    }
    let v1: PartitionMetaV1 = decode_version(FileKind::PartitionMeta, 1, bytes)?;
    Some(PartitionMeta {
        topic: v1.topic,
        partition: v1.partition,
        shard: v1.shard,
        config: v1.config.into(),
        topic_id: None,
        topic_seen_at: None,
    })
}

/// Durability bookkeeping of a partition, in `recovery.checkpoint`.
///
/// `recovery_point`: every offset below it was durable when the checkpoint was written,
/// so invalid bytes found below it after a crash are corruption of acknowledged data (an
/// error naming file and position), while invalid bytes at or past it are a torn tail
/// (truncated). `clean_shutdown`: set only by a clean close, cleared on open before any
/// write; when set, recovery trusts the segments and indexes as they are.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RecoveryCheckpoint {
    pub log_start: Offset,
    pub recovery_point: Offset,
    pub leader_epoch: LeaderEpoch,
    pub clean_shutdown: bool,
}

/// Serialises `value` as an rkyv archive inside the envelope.
pub fn encode<T>(kind: FileKind, value: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let payload = rkyv::to_bytes::<rancor::Error>(value).expect("engine metadata serialises");
    assert!(payload.len() <= METADATA_FILE_BYTES_MAX - ENVELOPE_BYTES);
    let mut out = Vec::with_capacity(ENVELOPE_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.push(version(kind));
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Checks the envelope and validates the archive. `None` for anything invalid.
pub fn decode<T>(kind: FileKind, bytes: &[u8]) -> Option<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    decode_version(kind, version(kind), bytes)
}

/// `decode` of a file written in format version `version` of its kind.
fn decode_version<T>(kind: FileKind, version: u8, bytes: &[u8]) -> Option<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    if bytes.len() < ENVELOPE_BYTES || bytes.len() > METADATA_FILE_BYTES_MAX {
        return None;
    }
    if &bytes[0..4] != MAGIC || bytes[4] != kind as u8 || bytes[5] != version {
        return None;
    }
    let length = u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().ok()?);
    let payload = bytes.get(ENVELOPE_BYTES..ENVELOPE_BYTES.checked_add(length)?)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    // rkyv reads archives in place, which needs them aligned.
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> RecoveryCheckpoint {
        RecoveryCheckpoint {
            log_start: Offset(5),
            recovery_point: Offset(900),
            leader_epoch: LeaderEpoch(3),
            clean_shutdown: true,
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(FileKind::RecoveryCheckpoint, &checkpoint());
        assert_eq!(
            decode::<RecoveryCheckpoint>(FileKind::RecoveryCheckpoint, &bytes),
            Some(checkpoint())
        );
        let meta = PartitionMeta {
            topic: "t".into(),
            partition: 3,
            shard: ShardId(1),
            config: PartitionConfig::default(),
            topic_id: Some([7; 16]),
            topic_seen_at: Some(41),
        };
        let bytes = encode(FileKind::PartitionMeta, &meta);
        assert_eq!(
            decode::<PartitionMeta>(FileKind::PartitionMeta, &bytes),
            Some(meta)
        );
    }

    #[test]
    fn partition_meta_of_format_versions_1_to_3_reads_with_defaults_and_what_they_held() {
        let v1 = PartitionMetaV1 {
            topic: "t".into(),
            partition: 2,
            shard: ShardId(0),
            config: PartitionConfigV1 {
                segment_bytes: 1 << 20,
                segment_ms: 1000,
                retention_ms: -1,
                retention_bytes: 5 << 20,
                max_message_bytes: 4096,
                index_interval_bytes: 512,
            },
        };
        let mut bytes = encode(FileKind::PartitionMeta, &v1);
        bytes[5] = 1; // as version 1 wrote it; the version is outside the CRC
        assert!(decode::<PartitionMeta>(FileKind::PartitionMeta, &bytes).is_none());
        let read = decode_partition_meta(&bytes).expect("a version 1 file reads");
        assert_eq!((read.topic.as_str(), read.partition), ("t", 2));
        assert_eq!(read.config.segment_bytes, 1 << 20);
        assert_eq!(read.config.retention_bytes, 5 << 20);
        assert!(read.config.cleanup_delete && !read.config.cleanup_compact);
        assert_eq!(read.topic_id, None);
        let v2 = PartitionMetaV2 {
            topic: read.topic.clone(),
            partition: read.partition,
            shard: read.shard,
            config: PartitionConfig::default(),
        };
        let mut bytes = encode(FileKind::PartitionMeta, &v2);
        bytes[5] = 2;
        let read = decode_partition_meta(&bytes).expect("a version 2 file reads");
        assert_eq!((read.config.clone(), read.topic_id), (v2.config, None));
        let v3 = PartitionMetaV3 {
            topic: read.topic.clone(),
            partition: read.partition,
            shard: read.shard,
            config: read.config.clone(),
            topic_id: Some([1; 16]),
        };
        let mut bytes = encode(FileKind::PartitionMeta, &v3);
        bytes[5] = 3;
        let read = decode_partition_meta(&bytes).expect("a version 3 file reads");
        assert_eq!((read.topic_id, read.topic_seen_at), (Some([1; 16]), None));
        let current = PartitionMeta {
            topic_seen_at: Some(9),
            ..read
        };
        let bytes = encode(FileKind::PartitionMeta, &current);
        assert_eq!(bytes[5], 4);
        assert_eq!(decode_partition_meta(&bytes), Some(current));
    }

    #[test]
    fn wrong_kind_and_any_corruption_are_refused() {
        let bytes = encode(FileKind::RecoveryCheckpoint, &checkpoint());
        assert!(decode::<PartitionMeta>(FileKind::PartitionMeta, &bytes).is_none());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            if i == 6 || i == 7 {
                continue; // reserved bytes are not checked
            }
            assert!(
                decode::<RecoveryCheckpoint>(FileKind::RecoveryCheckpoint, &b).is_none(),
                "flip at {i}"
            );
        }
        for cut in 0..bytes.len() {
            assert!(
                decode::<RecoveryCheckpoint>(FileKind::RecoveryCheckpoint, &bytes[..cut]).is_none()
            );
        }
    }
}
