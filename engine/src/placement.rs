//! Which shard owns which partition.
//!
//! A new partition goes to `default_shard`, a deterministic function of topic and
//! partition (CRC-32C of the name mixed with the partition number, modulo the shard
//! count), and that shard is recorded in the partition's `partition.meta`. On restart the
//! recorded shard is kept, so partitions do not move between runs; a partition recorded
//! on a shard that no longer exists (the process now runs fewer shards) falls back to the
//! default function and its meta is rewritten by the new owner. The table is built once,
//! before the shards start, and is then shared read-only by all of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::log::open::META_FILE;
use crate::meta;
use crate::types::{ShardId, TopicPartition};

/// The shard a new partition is placed on.
pub fn default_shard(tp: &TopicPartition, shard_count: usize) -> ShardId {
    assert!(shard_count > 0);
    let hash = crc32c::crc32c_append(
        crc32c::crc32c(tp.topic.as_bytes()),
        &tp.partition.0.to_be_bytes(),
    );
    ShardId((hash as usize % shard_count) as u16)
}

/// A partition found on disk at startup.
#[derive(Debug, Clone)]
pub struct ExistingPartition {
    pub tp: TopicPartition,
    pub dir: PathBuf,
    pub shard: ShardId,
}

/// The placement table: recorded shards of existing partitions.
#[derive(Debug, Clone)]
pub struct Placement {
    shard_count: usize,
    recorded: HashMap<TopicPartition, ShardId>,
}

impl Placement {
    /// Scans `root` for partition directories and reads their recorded shards. A directory
    /// whose meta is unreadable is still listed (on its default shard), so that opening
    /// it reports the problem instead of silently ignoring data.
    pub fn load(root: &Path, shard_count: usize) -> Result<(Placement, Vec<ExistingPartition>)> {
        let mut recorded = HashMap::new();
        let mut existing = Vec::new();
        let entries =
            std::fs::read_dir(root).map_err(|e| EngineError::io("list data directory", root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| EngineError::io("list data directory", root, e))?;
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(tp) = TopicPartition::from_dir_name(name) else {
                continue;
            };
            let meta = std::fs::read(dir.join(META_FILE))
                .ok()
                .and_then(|bytes| meta::decode_partition_meta(&bytes));
            let shard = match meta {
                Some(m) if m.shard.index() < shard_count => m.shard,
                _ => default_shard(&tp, shard_count),
            };
            recorded.insert(tp.clone(), shard);
            existing.push(ExistingPartition { tp, dir, shard });
        }
        existing.sort_by(|a, b| a.tp.cmp(&b.tp));
        Ok((
            Placement {
                shard_count,
                recorded,
            },
            existing,
        ))
    }

    /// The shard owning `tp` (existing or to be created).
    pub fn owner(&self, tp: &TopicPartition) -> ShardId {
        self.recorded
            .get(tp)
            .copied()
            .unwrap_or_else(|| default_shard(tp, self.shard_count))
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_placement_is_deterministic_and_spreads() {
        let mut counts = [0usize; 4];
        for p in 0..400 {
            let tp = TopicPartition::new("orders", p);
            let s = default_shard(&tp, 4);
            assert_eq!(s, default_shard(&tp, 4));
            counts[s.index()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    }
}
