//! Engine errors as the Kafka error codes clients act on.

use kafka_protocol::ResponseError;
use spate_engine::{BatchError, EngineError};

/// The Kafka error for an engine error on a partition request.
pub fn kafka_error(error: &EngineError) -> ResponseError {
    if !error.is_recoverable() {
        // A storage failure must be visible to the operator, not only to the client.
        tracing::warn!(%error, "storage error answered to a client");
    }
    match error {
        EngineError::InvalidBatch(BatchError::TooLarge { .. }) => ResponseError::MessageTooLarge,
        EngineError::InvalidBatch(BatchError::UnsupportedMagic { .. }) => {
            ResponseError::UnsupportedForMessageFormat
        }
        EngineError::InvalidBatch(_) => ResponseError::CorruptMessage,
        EngineError::UnknownPartition(_) => ResponseError::UnknownTopicOrPartition,
        EngineError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        EngineError::InvalidConfig { .. } => ResponseError::InvalidConfig,
        // The client retries after refreshing metadata; the broker is going away.
        // The client retries after refreshing metadata; the broker is going away, or its
        // replica is following another leader's log.
        EngineError::ShuttingDown | EngineError::ReplicaDiverged { .. } => {
            ResponseError::NotLeaderOrFollower
        }
        EngineError::PartitionExists(_) => ResponseError::TopicAlreadyExists,
        EngineError::LimitReached(_) => ResponseError::PolicyViolation,
        EngineError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        EngineError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        EngineError::UnknownProducerId { .. } => ResponseError::UnknownProducerId,
        EngineError::CorruptSegment { .. }
        | EngineError::Io { .. }
        | EngineError::PartitionOffline { .. } => ResponseError::KafkaStorageError,
    }
}
