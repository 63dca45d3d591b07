//! The engine's one error type. Each variant says whether the caller can recover:
//! *client* errors (bad batch, unknown partition) leave the log untouched and the caller
//! answers the client; *storage* errors mean the partition is no longer usable and must
//! be taken offline (see `PartitionLog::fail`), because after a failed fsync the state of
//! the file is unknown (fsyncgate).

use std::path::PathBuf;

use crate::types::{Offset, TopicPartition};

/// Why a RecordBatch was rejected. The log is unchanged when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {present} bytes, too short for a v2 RecordBatch header (61 bytes)")]
    TooShort { present: usize },
    #[error("unsupported magic {magic}: only v2 RecordBatches (magic 2) are accepted")]
    UnsupportedMagic { magic: i8 },
    #[error("batch length field says {declared} bytes but {present} are present")]
    LengthMismatch { declared: i64, present: usize },
    #[error("CRC-32C mismatch: batch says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record count {count} does not match lastOffsetDelta {last_offset_delta}")]
    CountMismatch { count: i32, last_offset_delta: i32 },
    #[error("batch of {size} bytes is larger than the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("unknown compression codec {codec}")]
    UnknownCompression { codec: u8 },
    #[error("malformed records: {reason}")]
    MalformedRecords { reason: String },
}

impl BatchError {
    /// The Kafka error a produce of this batch should be answered with.
    pub fn is_too_large(&self) -> bool {
        matches!(self, BatchError::TooLarge { .. })
    }
}

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Recoverable: the batch was refused, nothing was written.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),

    /// Recoverable: no such partition on this broker.
    #[error("unknown topic or partition {0}")]
    UnknownPartition(TopicPartition),

    /// Recoverable: the partition exists already.
    #[error("partition {0} already exists")]
    PartitionExists(TopicPartition),

    /// Recoverable: a configuration value is out of range or malformed.
    #[error("invalid config {key}={value}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },

    /// Recoverable: the requested offset lies outside [log_start, log_end].
    #[error("offset {offset} is out of range [{log_start}, {log_end}] of {tp}")]
    OffsetOutOfRange {
        tp: TopicPartition,
        offset: Offset,
        log_start: Offset,
        log_end: Offset,
    },

    /// Recoverable: a per-shard bound was reached (too many partitions).
    #[error("limit reached: {0}")]
    LimitReached(&'static str),

    /// Not recoverable for the partition: a segment holds invalid bytes where durable
    /// data was promised. Names the file and byte position so an operator can act.
    #[error("corrupt segment {path} at byte {position}: {reason}")]
    CorruptSegment {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    /// Not recoverable for the partition: an I/O call failed. After a failed write or
    /// fsync the partition is taken offline; nothing is retried.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Not recoverable for the partition: it failed earlier and is offline.
    #[error("partition {tp} is offline after a storage failure: {reason}")]
    PartitionOffline { tp: TopicPartition, reason: String },

    /// Recoverable: an idempotent producer's batch is not the next in its sequence.
    #[error("out-of-order sequence from producer {producer_id}: expected {expected}, got {got}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        got: i32,
    },

    /// Recoverable: a batch from an older epoch of a producer (a fenced "zombie").
    #[error("producer {producer_id} epoch {got} is older than its current epoch {current}")]
    InvalidProducerEpoch {
        producer_id: i64,
        current: i16,
        got: i16,
    },

    /// Recoverable: a producer this partition has no state for sent a mid-sequence batch.
    #[error("unknown producer {producer_id} (sequence {sequence}, expected 0)")]
    UnknownProducerId { producer_id: i64, sequence: i32 },

    /// Recoverable: a replication step does not fit this log (a batch not at the log
    /// end, an offset inside a batch, a truncation below the high watermark). Nothing
    /// was changed; the replica refetches.
    #[error("replica of {tp} cannot follow: {reason}")]
    ReplicaDiverged { tp: TopicPartition, reason: String },

    /// Recoverable: the engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
}

impl EngineError {
    /// Wraps an I/O error with the operation and path it came from.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wraps a glommio error, which already carries path and operation in its message.
    pub fn glommio<T: std::fmt::Debug>(
        op: &'static str,
        path: impl Into<PathBuf>,
        error: glommio::GlommioError<T>,
    ) -> Self {
        let source: std::io::Error = error.into();
        EngineError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the caller may go on using the partition after this error.
    pub fn is_recoverable(&self) -> bool {
        !matches!(
            self,
            EngineError::CorruptSegment { .. }
                | EngineError::Io { .. }
                | EngineError::PartitionOffline { .. }
        )
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, EngineError>;
