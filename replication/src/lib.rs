//! # spate-replication
//!
//! Replication of partitions between brokers, as `docs/REPLICATION.md` specifies:
//! followers pull from their leader, and the leader advances the commit index (Kafka's
//! high watermark) to what a majority of voters hold durably, counting only once an
//! entry of its own epoch is committed. Everything but `driver` is I/O-free: it owns
//! no sockets, files or clocks, so a deterministic simulator can drive it through faults.
//!
//! Built (issue 7): the epoch cache that answers where each leader
//! epoch ends and where a follower's log diverges from its leader's (KIP-101/KIP-320),
//! with its rkyv checkpoint; the quorum commit rule; the replica state machine
//! (`replica`: fetch with long poll, pre-vote elections, check quorum, replica-set
//! changes with learners, leadership transfer, preferred-leader rebalance), driven
//! through faults by a seeded simulator (`sim`, run by `tests/simulate.rs`); and the
//! inter-broker frame (`wire`: an rkyv header validated with bytecheck, then raw record
//! bytes) with batching per broker pair (`outbox`: one frame per kind per peer per
//! flush, and the mapping between frames and messages); and the glommio driver
//! (`driver`), the one module that does I/O: it steps a shard's replicas against the
//! engine's partition logs and talks to peer brokers over TCP, sending record bytes with
//! `sendfile`.

pub mod commit;
pub mod driver;
pub mod epochs;
pub mod limits;
pub mod metadata;
pub mod outbox;
pub mod replica;
mod rng;
pub mod sim;
pub mod wire;

pub use commit::quorum_commit;
pub use epochs::{Diverging, EpochCache};
