//! Consumer groups: the group coordinator and committed offsets.
//!
//! A group's coordinator is the shard owning partition `partition_for(group)` of the
//! internal topic `__consumer_offsets`, as in Kafka. That shard alone holds and changes
//! the group (`state`): requests for the group arriving on other shards travel there
//! over the control mesh, so nothing about a group is shared between threads. Commits
//! and group metadata are appended to that partition in Kafka's record schemas
//! (`records`) and acknowledged once durable; on restart a coordinator replays its
//! partitions before it answers for their groups (`coordinator`).

pub mod consumer_protocol;
pub mod coordinator;
pub mod records;
pub mod state;

use std::time::Duration;

pub use coordinator::{Coordinator, GroupAnswer, GroupCall};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Group coordination settings (Kafka's broker configs of the same names).
#[derive(Clone, Copy, Debug)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`, used when the topic is created.
    pub offsets_partitions: i32,
    /// `offsets.topic.replication.factor`, used when the topic is created in cluster
    /// mode (at most the number of voters).
    pub offsets_replication_factor: u32,
    /// `offsets.topic.segment.bytes`, used when the topic is created: small segments
    /// are cleaned sooner (compaction never touches the active one).
    pub offsets_segment_bytes: u64,
    /// `offsets.retention.minutes`: offsets of an empty group are dropped this long
    /// after their commit.
    pub offsets_retention: Duration,
    /// `offsets.retention.check.interval.ms`: how often expired offsets are looked for.
    pub offsets_retention_check: Duration,
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_partitions: 50,
            offsets_replication_factor: 3,
            offsets_segment_bytes: 100 << 20,
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            offsets_retention_check: Duration::from_secs(600),
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Whether `group` may name a group: not empty, and short enough for the log's schemas.
pub fn valid_group_id(group: &str) -> bool {
    !group.is_empty() && group.len() <= crate::limits::GROUP_STRING_BYTES_MAX
}

/// A nullable string field that exists from version `since`, as an owned string.
pub fn field_since(
    value: &Option<kafka_protocol::protocol::StrBytes>,
    since: i16,
    version: i16,
) -> Option<String> {
    value
        .as_ref()
        .filter(|_| version >= since)
        .map(|s| s.to_string())
}

/// The `__consumer_offsets` partition of `group`: Java's `String.hashCode`, made
/// non-negative as Kafka's `Utils.abs` does, modulo the partition count.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "the offsets topic has partitions");
    let hash = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_kafka() {
        // "a".hashCode() is 97 and "ab".hashCode() is 97 * 31 + 98 = 3105 in Java.
        assert_eq!(partition_for("a", 50), 97 % 50);
        assert_eq!(partition_for("ab", 50), 3105 % 50);
        assert_eq!(partition_for("", 50), 0);
        // "polygenelubricants".hashCode() is i32::MIN: Kafka maps it to 0.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for name in ["a", "group-1", "ünïcödé", "x".repeat(300).as_str()] {
            assert!((0..7).contains(&partition_for(name, 7)));
        }
    }
}
