//! Topic configs: which keys a topic may override, their broker defaults and types, the
//! checks a value must pass, and how a set of overrides changes (AlterConfigs replaces
//! it whole, IncrementalAlterConfigs edits it).
//!
//! A topic's overrides live in the catalog as `(key, value)` pairs, every one valid:
//! nothing reaches the catalog without passing `check`. The engine's keys (segments,
//! retention, sizes, cleanup policy and compaction) are checked and applied by
//! `PartitionConfig`; the others are acted on by the broker itself (`TopicSettings`).

use kafka_protocol::ResponseError;
use spate_engine::catalog::TopicRecord;
use spate_engine::PartitionConfig;

/// Kafka's config types, as DescribeConfigs v3+ reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

/// One topic config a client may set.
#[derive(Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    /// The broker setting that supplies the default (DescribeConfigs synonyms).
    pub broker_name: &'static str,
    pub kind: ConfigType,
    pub doc: &'static str,
}

/// Every topic config, sorted by name.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        name: "cleanup.policy",
        broker_name: "log.cleanup.policy",
        kind: ConfigType::List,
        doc: "delete: old segments are removed by retention; compact: only the latest record per key is kept.",
    },
    TopicConfigDef {
        name: "delete.retention.ms",
        broker_name: "log.cleaner.delete.retention.ms",
        kind: ConfigType::Long,
        doc: "How long a tombstone outlives the cleaning of its segment, so consumers behind still see the delete.",
    },
    TopicConfigDef {
        name: "index.interval.bytes",
        broker_name: "log.index.interval.bytes",
        kind: ConfigType::Int,
        doc: "Log bytes between entries of the sparse offset and time indexes.",
    },
    TopicConfigDef {
        name: "max.compaction.lag.ms",
        broker_name: "log.cleaner.max.compaction.lag.ms",
        kind: ConfigType::Long,
        doc: "A compacted segment is cleaned once its newest record is this old, whatever the dirty ratio.",
    },
    TopicConfigDef {
        name: "max.message.bytes",
        broker_name: "message.max.bytes",
        kind: ConfigType::Int,
        doc: "The largest record batch the topic accepts.",
    },
    TopicConfigDef {
        name: "message.timestamp.type",
        broker_name: "log.message.timestamp.type",
        kind: ConfigType::String,
        doc: "CreateTime keeps the producer's timestamps; LogAppendTime stamps each batch with the broker's clock.",
    },
    TopicConfigDef {
        name: "min.cleanable.dirty.ratio",
        broker_name: "log.cleaner.min.cleanable.ratio",
        kind: ConfigType::String,
        doc: "The share of a compacted log not cleaned yet at which the cleaner cleans it.",
    },
    TopicConfigDef {
        name: "min.compaction.lag.ms",
        broker_name: "log.cleaner.min.compaction.lag.ms",
        kind: ConfigType::Long,
        doc: "Records younger than this are not cleaned.",
    },
    TopicConfigDef {
        name: "min.insync.replicas",
        broker_name: "min.insync.replicas",
        kind: ConfigType::Int,
        doc: "Replicas that must hold a batch before an acks=all produce succeeds.",
    },
    TopicConfigDef {
        name: "retention.bytes",
        broker_name: "log.retention.bytes",
        kind: ConfigType::Long,
        doc: "Largest size of a partition before its oldest segments are deleted; -1 for no limit.",
    },
    TopicConfigDef {
        name: "retention.ms",
        broker_name: "log.retention.ms",
        kind: ConfigType::Long,
        doc: "Age after which a closed segment is deleted; -1 keeps data forever.",
    },
    TopicConfigDef {
        name: "segment.bytes",
        broker_name: "log.segment.bytes",
        kind: ConfigType::Int,
        doc: "Size at which the active segment is rolled.",
    },
    TopicConfigDef {
        name: "segment.ms",
        broker_name: "log.roll.ms",
        kind: ConfigType::Long,
        doc: "Age of the active segment's first batch at which it is rolled.",
    },
];

/// The definition of `key`, if it is a topic config.
pub fn definition(key: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == key)
}

/// The broker default of a topic config.
pub fn default_value(key: &str) -> Option<String> {
    if let Some(value) = PartitionConfig::default().get(key) {
        return Some(value);
    }
    Some(
        match key {
            "min.insync.replicas" => "1",
            "message.timestamp.type" => "CreateTime",
            _ => return None,
        }
        .to_string(),
    )
}

fn invalid(key: &str, value: &str, reason: impl std::fmt::Display) -> (ResponseError, String) {
    (
        ResponseError::InvalidConfig,
        format!("invalid config {key}={value}: {reason}"),
    )
}

/// Checks one value of a topic config.
pub fn check(key: &str, value: &str) -> Result<(), (ResponseError, String)> {
    if PartitionConfig::KEYS.contains(&key) {
        return PartitionConfig::default()
            .set(key, value)
            .map_err(|e| (ResponseError::InvalidConfig, e.to_string()));
    }
    let bad = |reason: &str| Err(invalid(key, value, reason));
    match key {
        "min.insync.replicas" => match value.trim().parse::<i32>() {
            Ok(n) if n >= 1 => Ok(()),
            _ => bad("must be a whole number of at least 1"),
        },
        "message.timestamp.type" => match value {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => bad("must be CreateTime or LogAppendTime"),
        },
        _ => bad("unknown topic config"),
    }
}

fn list_items(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect()
}

/// The engine's part of a topic's overrides. Overrides in the catalog were checked
/// before they got there, so this fails only for a catalog written by a broker with
/// other rules.
pub fn partition_config(
    overrides: &[(String, String)],
) -> Result<PartitionConfig, (ResponseError, String)> {
    let engine_keys = overrides
        .iter()
        .filter(|(k, _)| PartitionConfig::KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()));
    PartitionConfig::from_pairs(engine_keys)
        .map_err(|e| (ResponseError::InvalidConfig, e.to_string()))
}

/// What the broker (not the engine) does differently for a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// `message.timestamp.type=LogAppendTime`: batches are stamped with the broker's clock.
    pub log_append_time: bool,
    /// `min.insync.replicas`: acks=all needs this many in-sync replicas.
    pub min_insync_replicas: usize,
}

impl TopicSettings {
    pub fn of(topic: &TopicRecord) -> TopicSettings {
        let value = |key: &str| {
            topic
                .configs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        TopicSettings {
            log_append_time: value("message.timestamp.type") == Some("LogAppendTime"),
            // Validated when set; a value that does not parse falls back to Kafka's 1.
            min_insync_replicas: value("min.insync.replicas")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1),
        }
    }
}

/// One edit of IncrementalAlterConfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Set(String, String),
    /// Back to the broker default.
    Delete(String),
    /// Add items to a list config (those not already in it).
    Append(String, String),
    /// Remove items from a list config.
    Subtract(String, String),
}

impl Edit {
    /// From the wire: operation 0 set, 1 delete, 2 append, 3 subtract.
    pub fn from_wire(
        key: &str,
        operation: i8,
        value: Option<&str>,
    ) -> Result<Edit, (ResponseError, String)> {
        let key = key.to_string();
        let needs_value = |key: String| {
            value.map(|v| (key.clone(), v.to_string())).ok_or_else(|| {
                (
                    ResponseError::InvalidRequest,
                    format!("config {key}: this operation needs a value"),
                )
            })
        };
        Ok(match operation {
            0 => needs_value(key).map(|(k, v)| Edit::Set(k, v))?,
            1 => Edit::Delete(key),
            2 => needs_value(key).map(|(k, v)| Edit::Append(k, v))?,
            3 => needs_value(key).map(|(k, v)| Edit::Subtract(k, v))?,
            other => {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("config {key}: unknown operation {other}"),
                ))
            }
        })
    }

    fn key(&self) -> &str {
        match self {
            Edit::Set(k, _) | Edit::Delete(k) | Edit::Append(k, _) | Edit::Subtract(k, _) => k,
        }
    }
}

/// A change to one topic's overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// AlterConfigs: these become the overrides; every other key returns to its default.
    Replace(Vec<(String, String)>),
    /// IncrementalAlterConfigs: edits to the current overrides.
    Edit(Vec<Edit>),
}

fn duplicate_key<'a>(mut keys: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    keys.find(|k| !seen.insert(*k))
}

/// The overrides after `change`, every value checked; the current ones are untouched.
pub fn apply(
    current: &[(String, String)],
    change: &ConfigChange,
) -> Result<Vec<(String, String)>, (ResponseError, String)> {
    let keys: Vec<&str> = match change {
        ConfigChange::Replace(pairs) => pairs.iter().map(|(k, _)| k.as_str()).collect(),
        ConfigChange::Edit(edits) => edits.iter().map(Edit::key).collect(),
    };
    if let Some(key) = duplicate_key(keys.iter().copied()) {
        return Err((
            ResponseError::InvalidRequest,
            format!("config {key} is named twice"),
        ));
    }
    for key in &keys {
        if definition(key).is_none() {
            return Err(invalid(key, "", "unknown topic config"));
        }
    }
    let mut next: Vec<(String, String)> = match change {
        ConfigChange::Replace(pairs) => pairs.clone(),
        ConfigChange::Edit(edits) => {
            let mut next = current.to_vec();
            for edit in edits {
                apply_edit(&mut next, edit)?;
            }
            next
        }
    };
    for (key, value) in &next {
        check(key, value)?;
    }
    next.sort();
    Ok(next)
}

fn apply_edit(
    overrides: &mut Vec<(String, String)>,
    edit: &Edit,
) -> Result<(), (ResponseError, String)> {
    let key = edit.key();
    let current = overrides
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .or_else(|| default_value(key))
        .unwrap_or_default();
    let is_list = definition(key).is_some_and(|d| d.kind == ConfigType::List);
    let value = match edit {
        Edit::Set(_, value) => Some(value.clone()),
        Edit::Delete(_) => None,
        Edit::Append(_, _) | Edit::Subtract(_, _) if !is_list => {
            return Err(invalid(
                key,
                "",
                "append and subtract apply to list configs only",
            ))
        }
        Edit::Append(_, more) => {
            let mut items = list_items(&current);
            for item in list_items(more) {
                if !items.contains(&item) {
                    items.push(item);
                }
            }
            Some(items.join(","))
        }
        Edit::Subtract(_, less) => {
            let less = list_items(less);
            let items: Vec<&str> = list_items(&current)
                .into_iter()
                .filter(|i| !less.contains(i))
                .collect();
            Some(items.join(","))
        }
    };
    overrides.retain(|(k, _)| k != key);
    if let Some(value) = value {
        overrides.push((key.to_string(), value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_config_has_a_valid_default() {
        for def in TOPIC_CONFIGS {
            let value = default_value(def.name).expect(def.name);
            check(def.name, &value).unwrap();
        }
        let names: Vec<&str> = TOPIC_CONFIGS.iter().map(|d| d.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for key in PartitionConfig::KEYS {
            assert!(definition(key).is_some(), "{key} is described");
        }
    }

    #[test]
    fn replace_sets_exactly_the_given_overrides() {
        let current = pairs(&[("retention.ms", "1000"), ("cleanup.policy", "compact")]);
        let change = ConfigChange::Replace(pairs(&[("segment.bytes", "1048576")]));
        assert_eq!(
            apply(&current, &change).unwrap(),
            pairs(&[("segment.bytes", "1048576")])
        );
    }

    #[test]
    fn edits_set_delete_append_and_subtract() {
        let current = pairs(&[("retention.ms", "1000")]);
        let change = ConfigChange::Edit(vec![
            Edit::Delete("retention.ms".into()),
            Edit::Append("cleanup.policy".into(), "compact".into()),
            Edit::Set("message.timestamp.type".into(), "LogAppendTime".into()),
        ]);
        let next = apply(&current, &change).unwrap();
        assert_eq!(
            next,
            pairs(&[
                ("cleanup.policy", "delete,compact"),
                ("message.timestamp.type", "LogAppendTime"),
            ])
        );
        let change = ConfigChange::Edit(vec![Edit::Subtract(
            "cleanup.policy".into(),
            "delete".into(),
        )]);
        assert_eq!(
            apply(&next, &change).unwrap()[0],
            ("cleanup.policy".to_string(), "compact".to_string())
        );
    }

    #[test]
    fn bad_changes_are_refused_whole() {
        let current = pairs(&[("retention.ms", "1000")]);
        let bad = [
            ConfigChange::Edit(vec![Edit::Set("retention.ms".into(), "soon".into())]),
            ConfigChange::Edit(vec![Edit::Append("retention.ms".into(), "5".into())]),
            ConfigChange::Edit(vec![Edit::Subtract(
                "cleanup.policy".into(),
                "delete".into(),
            )]),
            ConfigChange::Edit(vec![Edit::Set("no.such.config".into(), "1".into())]),
            ConfigChange::Replace(pairs(&[("segment.ms", "1"), ("segment.ms", "2")])),
            ConfigChange::Replace(pairs(&[("cleanup.policy", "delete,delete")])),
            ConfigChange::Replace(pairs(&[("min.insync.replicas", "0")])),
        ];
        for change in bad {
            let (code, message) = apply(&current, &change).unwrap_err();
            assert!(
                code == ResponseError::InvalidConfig || code == ResponseError::InvalidRequest,
                "{change:?}: {code:?}"
            );
            assert!(!message.is_empty());
        }
        assert!(Edit::from_wire("retention.ms", 9, Some("1")).is_err());
        assert!(Edit::from_wire("retention.ms", 0, None).is_err());
    }
}
