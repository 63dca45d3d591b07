//! Domain integers as distinct types, so a leader epoch can never be passed where an
//! offset is expected, and each offset field names which offset it is (`log_end`,
//! `high_watermark`, `durable_end`, `log_start`).

use std::fmt;
use std::sync::Arc;

/// A position in a partition's log, counted in records. Offsets are dense within a
/// partition and never reused.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    /// The offset `n` records after this one.
    #[must_use]
    pub fn plus(self, n: i64) -> Offset {
        debug_assert!(n >= 0);
        Offset(self.0.checked_add(n).expect("offset overflow"))
    }

    /// The offset just after this one.
    #[must_use]
    pub fn next(self) -> Offset {
        self.plus(1)
    }
}

impl fmt::Debug for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The epoch of a partition's leader. Stamped into every batch's partitionLeaderEpoch
/// field; replication makes it increase on every leader change. -1 means "none".
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct LeaderEpoch(pub i32);

/// Index of a shard: one per core, 0-based.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Index of a partition within its topic.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PartitionId(pub i32);

/// Milliseconds since the Unix epoch, as Kafka timestamps are. -1 means "none".
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Debug,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const NONE: Timestamp = Timestamp(-1);

    /// The wall clock now. Used only at the edges (appends, retention); the log itself
    /// takes times as arguments so tests can drive them.
    pub fn now() -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A topic and one of its partitions. Cheap to clone: the name is shared.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: PartitionId,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from(topic),
            partition: PartitionId(partition),
        }
    }

    /// Name of the partition's directory: `<topic>-<partition>`, as Kafka lays it out.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition.0)
    }

    /// Parses a directory name made by `dir_name`. Topic names may contain '-', so the
    /// partition is whatever follows the last one.
    pub fn from_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        let partition: i32 = partition.parse().ok()?;
        if topic.is_empty() || partition < 0 || validate_topic_name(topic).is_err() {
            return None;
        }
        Some(TopicPartition::new(topic, partition))
    }
}

impl fmt::Debug for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition.0)
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Kafka's rule for topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not "." or "..".
/// Checked here because the name becomes a directory name.
pub fn validate_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("topic name is empty");
    }
    if name.len() > crate::limits::TOPIC_NAME_BYTES_MAX {
        return Err("topic name is longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return Err("topic name cannot be '.' or '..'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("topic name may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_round_trip_even_with_dashes() {
        let tp = TopicPartition::new("my-topic-2", 17);
        assert_eq!(tp.dir_name(), "my-topic-2-17");
        assert_eq!(TopicPartition::from_dir_name("my-topic-2-17"), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("nodash"), None);
        assert_eq!(
            TopicPartition::from_dir_name("t--1"),
            Some(TopicPartition::new("t-", 1))
        );
        assert_eq!(TopicPartition::from_dir_name("t-x"), None);
        assert_eq!(TopicPartition::from_dir_name("a/b-1"), None);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
