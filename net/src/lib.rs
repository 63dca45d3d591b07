//! # Spate's Kafka protocol server
//!
//! Speaks the Kafka wire protocol to stock clients. Each shard of the storage engine runs
//! its own listener on the shared port (SO_REUSEPORT) and serves the connections it
//! accepts ([`server`]); requests are framed and decoded in [`codec`] with the
//! `kafka-protocol` crate and answered by one handler per API in [`handlers`]. Shard 0
//! is the controller of the topic catalog ([`node`], [`controller`]); [`broker`] starts
//! it all.
//!
//! Invariants: a frame's length is checked before any allocation for it; every queue and
//! byte budget per connection and per shard is bounded ([`limits`]); bad input closes
//! only the connection it came on, never a shard ([`error`]). Binaries install
//! [`alloc::ReservingAllocator`] so that decoders allocating from hostile counts cannot
//! abort the process.

pub mod alloc;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod controller;
pub mod error;
pub mod group;
pub mod handlers;
pub mod limits;
pub mod node;
pub mod server;
pub mod topic_config;

pub use broker::Broker;
pub use error::{NetError, Result};
pub use node::ServerConfig;
