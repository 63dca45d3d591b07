//! # Spate's storage engine
//!
//! Kafka partition logs, stored thread-per-core. Each core runs one *shard*: a pinned
//! glommio executor that exclusively owns a set of partitions. A partition is an ordered
//! list of segments (`<base>.log`, `.index`, `.timeindex`, as Kafka lays them out); its
//! `.log` holds Kafka v2 RecordBatches byte for byte as producers sent them, with only the
//! broker-assigned base offset and leader epoch patched (both outside the CRC), so a fetch
//! can hand file ranges to a socket untouched.
//!
//! Writes go through O_DIRECT in aligned buffers and are made durable by *group commit*:
//! one flusher per partition issues the writes and one `fdatasync` per cycle for every
//! append staged meanwhile. Retention keeps a few deleted segment files for new segments
//! to write over, since this costs a durable write less than fresh space does. Reads
//! return zero-copy file ranges, or tail batches from a
//! bounded in-memory cache. Recovery verifies CRCs past the last checkpoint and cuts torn
//! tails; damage to acknowledged data is reported, never silently dropped.
//!
//! Shards share nothing: another shard reaches a partition only through the bounded
//! channel mesh in [`shard`]. Every limit is in [`limits`]; every error in [`error`].
//! glommio-specific code lives in [`file`], [`staging`] and [`shard`].

pub mod batch;
pub mod cache;
pub mod catalog;
pub mod compact;
pub mod compression;
pub mod config;
pub mod error;
pub mod file;
pub mod index;
pub mod limits;
pub mod log;
pub mod meta;
pub mod placement;
pub mod producers;
pub mod segment;
pub mod shard;
pub mod staging;
pub mod types;

pub use config::{AckPolicy, PartitionConfig};
pub use error::{BatchError, EngineError, Result};
pub use log::{
    AppendInfo, CompactionOutcome, CompactionSettings, LogOffsets, LogStats, PartitionLog,
    ReadChunk, ReadResult, ShardResources, SwapStep, ValidBatch,
};
pub use shard::{EngineConfig, Shard, ShardSet};
pub use types::{LeaderEpoch, Offset, PartitionId, ShardId, Timestamp, TopicPartition};
