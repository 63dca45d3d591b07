//! The topic catalog: which topics exist, with their ids, partition counts and config
//! overrides, and the cluster id. Stored as `<data-dir>/topics.catalog`, an rkyv archive
//! in the metadata envelope (kind 3), replaced atomically on every change.
//!
//! The catalog is written by one shard only (the broker's controller, shard 0) and read
//! everywhere through immutable snapshots; the engine just stores it. Partition
//! directories remain the truth about data: on start, partitions found on disk but
//! missing from the catalog are added to it, so a catalog lost or older than the data
//! never hides data.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Result;
use crate::file;
use crate::meta::{self, FileKind};
use crate::types::TopicPartition;

pub const CATALOG_FILE: &str = "topics.catalog";

/// One topic.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TopicRecord {
    pub name: String,
    /// Kafka topic id (a UUID), stable for the topic's life.
    pub id: [u8; 16],
    pub partitions: i32,
    /// Config overrides set at creation or by alter-config, as Kafka names them.
    pub configs: Vec<(String, String)>,
}

/// All topics and the cluster id.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Catalog {
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicRecord>,
    /// The next idempotent producer id to hand out; saved before an id is answered, so
    /// no id is ever given twice.
    pub next_producer_id: i64,
}

impl Catalog {
    /// Reads the catalog at start (before the shards run; plain file I/O). `None` if
    /// there is none; an invalid file is an error naming it, not an empty catalog.
    pub fn load(root: &Path) -> std::result::Result<Option<Catalog>, String> {
        let path = root.join(CATALOG_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => meta::decode(FileKind::Catalog, &bytes)
                .map(Some)
                .ok_or_else(|| {
                    format!(
                        "{} is corrupt (envelope or archive check failed)",
                        path.display()
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Adds partitions found on disk that the catalog does not know (their topic with a
    /// fresh id from `new_id`, or a larger partition count). Returns whether it changed.
    pub fn reconcile(
        &mut self,
        on_disk: &[TopicPartition],
        mut new_id: impl FnMut() -> [u8; 16],
    ) -> bool {
        let mut changed = false;
        for tp in on_disk {
            let count = tp.partition.0 + 1;
            let record = self.topics.entry(tp.topic.to_string()).or_insert_with(|| {
                changed = true;
                TopicRecord {
                    name: tp.topic.to_string(),
                    id: new_id(),
                    partitions: 0,
                    configs: Vec::new(),
                }
            });
            if record.partitions < count {
                record.partitions = count;
                changed = true;
            }
        }
        changed
    }

    /// Writes the catalog atomically (on a shard).
    pub async fn save(&self, root: &Path) -> Result<()> {
        file::write_atomic(root, CATALOG_FILE, &meta::encode(FileKind::Catalog, self)).await
    }

    /// Writes the catalog atomically from outside any shard (at start).
    pub fn save_blocking(&self, root: &Path) -> std::io::Result<()> {
        let tmp = root.join(format!("{CATALOG_FILE}.tmp"));
        let bytes = meta::encode(FileKind::Catalog, self);
        let f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &f, &bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, root.join(CATALOG_FILE))?;
        std::fs::File::open(root)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_adds_what_is_on_disk_and_never_shrinks() {
        let mut c = Catalog::default();
        let disk = [
            TopicPartition::new("a", 0),
            TopicPartition::new("a", 2),
            TopicPartition::new("b", 0),
        ];
        let mut n = 0u8;
        assert!(c.reconcile(&disk, || {
            n += 1;
            [n; 16]
        }));
        assert_eq!(c.topics["a"].partitions, 3);
        assert_eq!(c.topics["b"].partitions, 1);
        assert!(!c.reconcile(&disk[..1], || [9; 16]), "nothing new");
        let dir = tempfile::tempdir().unwrap();
        c.save_blocking(dir.path()).unwrap();
        assert_eq!(Catalog::load(dir.path()).unwrap(), Some(c));
        std::fs::write(dir.path().join(CATALOG_FILE), b"junk").unwrap();
        assert!(Catalog::load(dir.path()).is_err());
    }
}
