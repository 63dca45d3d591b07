//! Per-partition storage configuration: the topic configs the engine acts on, with
//! Kafka's names, defaults and range checks. A bad value is a recoverable
//! `InvalidConfig` error naming the key and the reason; nothing is changed.

use crate::error::{EngineError, Result};
use crate::limits::{BATCH_BYTES_MAX, INDEX_INTERVAL_BYTES, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// When an append resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckPolicy {
    /// After the flush cycle holding the batch has written it and `fdatasync` returned.
    Durable,
    /// As soon as the batch is in the log (offsets assigned, staged for the next flush),
    /// as Kafka's acks=1 answers once the write is in the page cache. Readers still see
    /// the batch only once it is durable (the high watermark is the durable end).
    Appended,
}

/// Storage settings of one partition.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionConfig {
    /// `segment.bytes`: roll the active segment when a batch would take it past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once its first batch is this old.
    pub segment_ms: i64,
    /// `retention.ms`: delete closed segments whose newest record is older; -1 keeps all.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest closed segments while the log exceeds this; -1 keeps all.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: u32,
    /// `index.interval.bytes`: log bytes between sparse index entries.
    pub index_interval_bytes: u32,
    /// `cleanup.policy` holds `delete`: retention deletes old segments.
    pub cleanup_delete: bool,
    /// `cleanup.policy` holds `compact`: the cleaner keeps each key's latest record.
    pub cleanup_compact: bool,
    /// `delete.retention.ms`: how long a tombstone outlives the cleaning of its segment.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are not cleaned.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a segment is cleaned once its newest record is this old,
    /// whatever the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`, in parts per million: the share of the cleanable
    /// bytes not cleaned yet at which a pass runs.
    pub min_cleanable_dirty_ppm: u32,
}

/// The configs of format version 1 of `partition.meta`, before compaction existed;
/// read as the same settings with the cleanup ones at their defaults.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PartitionConfigV1 {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: u32,
    pub index_interval_bytes: u32,
}

impl From<PartitionConfigV1> for PartitionConfig {
    fn from(v1: PartitionConfigV1) -> PartitionConfig {
        PartitionConfig {
            segment_bytes: v1.segment_bytes,
            segment_ms: v1.segment_ms,
            retention_ms: v1.retention_ms,
            retention_bytes: v1.retention_bytes,
            max_message_bytes: v1.max_message_bytes,
            index_interval_bytes: v1.index_interval_bytes,
            ..PartitionConfig::default()
        }
    }
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            index_interval_bytes: INDEX_INTERVAL_BYTES,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: DAY_MS,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ppm: 500_000,
        }
    }
}

/// `cleanup.policy`: `delete`, `compact`, or both comma-separated in either order, as
/// (delete, compact).
fn parse_cleanup_policy(key: &str, value: &str) -> Result<(bool, bool)> {
    let items: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    let known = items.iter().all(|i| *i == "delete" || *i == "compact");
    let distinct = items.len() < 2 || items[0] != items[1];
    if items.is_empty() || items.len() > 2 || !known || !distinct {
        return Err(invalid(
            key,
            value,
            "must be delete, compact, or compact,delete",
        ));
    }
    Ok((items.contains(&"delete"), items.contains(&"compact")))
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidConfig {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

fn parse_in<T>(key: &str, value: &str, min: T, max: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let parsed: T = value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "not a number"))?;
    if parsed < min || parsed > max {
        return Err(invalid(
            key,
            value,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(parsed)
}

impl PartitionConfig {
    /// The config keys this struct understands.
    pub const KEYS: [&'static str; 11] = [
        "segment.bytes",
        "segment.ms",
        "retention.ms",
        "retention.bytes",
        "max.message.bytes",
        "index.interval.bytes",
        "cleanup.policy",
        "delete.retention.ms",
        "min.compaction.lag.ms",
        "max.compaction.lag.ms",
        "min.cleanable.dirty.ratio",
    ];

    /// Sets one config from its Kafka name and string value, checking its range.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "segment.bytes" => {
                self.segment_bytes = parse_in(key, value, SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX)?
            }
            "segment.ms" => self.segment_ms = parse_in(key, value, 1, i64::MAX)?,
            "retention.ms" => self.retention_ms = parse_in(key, value, -1, i64::MAX)?,
            "retention.bytes" => self.retention_bytes = parse_in(key, value, -1, i64::MAX)?,
            "max.message.bytes" => {
                self.max_message_bytes = parse_in(key, value, 0, BATCH_BYTES_MAX as u32)?
            }
            "index.interval.bytes" => self.index_interval_bytes = parse_in(key, value, 1, 1 << 30)?,
            "cleanup.policy" => {
                (self.cleanup_delete, self.cleanup_compact) = parse_cleanup_policy(key, value)?
            }
            "delete.retention.ms" => self.delete_retention_ms = parse_in(key, value, 0, i64::MAX)?,
            "min.compaction.lag.ms" => {
                self.min_compaction_lag_ms = parse_in(key, value, 0, i64::MAX)?
            }
            "max.compaction.lag.ms" => {
                self.max_compaction_lag_ms = parse_in(key, value, 1, i64::MAX)?
            }
            "min.cleanable.dirty.ratio" => {
                let ratio: f64 = parse_in(key, value, 0.0, 1.0)?;
                if ratio.is_nan() {
                    return Err(invalid(key, value, "not a number"));
                }
                self.min_cleanable_dirty_ppm = (ratio * 1e6).round() as u32;
            }
            _ => return Err(invalid(key, value, "unknown config key")),
        }
        Ok(())
    }

    /// The value of one config, as Kafka renders it; `None` for a key not in `KEYS`.
    pub fn get(&self, key: &str) -> Option<String> {
        Some(match key {
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "cleanup.policy" => match (self.cleanup_delete, self.cleanup_compact) {
                (true, true) => "compact,delete",
                (false, true) => "compact",
                _ => "delete",
            }
            .to_string(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "min.cleanable.dirty.ratio" => {
                (f64::from(self.min_cleanable_dirty_ppm) / 1e6).to_string()
            }
            _ => return None,
        })
    }

    /// Builds a config from defaults and `key=value` overrides.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut config = PartitionConfig::default();
        for (key, value) in pairs {
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Largest batch accepted: `max.message.bytes`, never above the engine's hard cap.
    pub fn batch_bytes_max(&self) -> usize {
        (self.max_message_bytes as usize).min(BATCH_BYTES_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_policies_parse_in_any_order() {
        let mut c = PartitionConfig::default();
        for (value, delete, compact) in [
            ("compact", false, true),
            ("delete, compact", true, true),
            ("compact,delete", true, true),
            ("delete", true, false),
        ] {
            c.set("cleanup.policy", value).unwrap();
            assert_eq!(
                (c.cleanup_delete, c.cleanup_compact),
                (delete, compact),
                "{value}"
            );
        }
        c.set("min.cleanable.dirty.ratio", "0.25").unwrap();
        assert_eq!(c.get("min.cleanable.dirty.ratio").as_deref(), Some("0.25"));
    }

    #[test]
    fn defaults_are_kafkas() {
        let c = PartitionConfig::default();
        assert_eq!(c.segment_bytes, 1 << 30);
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.retention_bytes, -1);
    }

    #[test]
    fn bad_values_name_the_key_and_change_nothing() {
        let mut c = PartitionConfig::default();
        for (k, v) in [
            ("segment.bytes", "abc"),
            ("segment.bytes", "5"),
            ("segment.bytes", "99999999999"),
            ("retention.ms", "-2"),
            ("cleanup.policy", "shred"),
            ("cleanup.policy", "compact,compact"),
            ("cleanup.policy", ""),
            ("min.cleanable.dirty.ratio", "NaN"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("delete.retention.ms", "-1"),
            ("no.such.key", "1"),
        ] {
            let e = c.set(k, v).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
            assert_eq!(c, PartitionConfig::default());
        }
        for key in PartitionConfig::KEYS {
            let value = c.get(key).expect("every key renders");
            c.set(key, &value).expect("a rendered value parses back");
        }
        assert_eq!(c, PartitionConfig::default());
        c.set("segment.bytes", "1048576").unwrap();
        assert_eq!(c.segment_bytes, 1 << 20);
    }
}
