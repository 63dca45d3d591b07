//! # spate-bench
//!
//! Spate's benchmark harness, reachable as `spate bench`: a load generator speaking the
//! Kafka protocol to Spate or any other Kafka-compatible broker, thread-per-core on
//! glommio, with latency measured honestly (open-loop schedules, coordinated-omission
//! correction, HdrHistograms) and results written as JSON, HdrHistogram interval logs
//! and SVG charts. `compare` runs one workload against two brokers in alternation,
//! `baseline` measures this machine's own ceilings (disk, fsync, loopback) so results can
//! be quoted as fractions of them, `sweep` finds the highest sustainable rate, and
//! `engine-append` and `engine-latency` measure the storage engine without the network.
//!
//! Invariants of every run: sent = acknowledged + failed for producers (unanswered
//! requests count as failed after the drain timeout); every bound of the generator is in
//! `limits`; nothing a user types can panic it.

pub mod baseline;
pub mod cli;
pub mod compare;
mod conn;
mod consumer;
pub mod engine_append;
pub mod engine_latency;
pub mod error;
pub mod latency;
pub mod limits;
mod membership;
pub mod payload;
pub mod plot;
mod producer;
pub mod report;
pub mod results;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod sweep;
pub mod tally;
pub mod workload;

pub use cli::BenchCommand;
pub use error::{BenchError, Result};
