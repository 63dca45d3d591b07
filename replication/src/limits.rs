//! Every bound of the replication crate in one place: how much a broker keeps in
//! memory for its peers, and how much it reads per step.
//!
//! Memory per shard for peer traffic, at most:
//! - inbound: `PEER_CONNECTIONS_MAX` connections × (1 frame being read +
//!   `INBOUND_FRAMES_MAX` waiting) × `FRAME_BYTES_MAX` — in practice a frame is its
//!   header plus at most `ANSWER_PARTS_MAX` × `ANSWER_BYTES_MAX` of records, and buffers
//!   grow `READ_STEP_BYTES` at a time as bytes arrive;
//! - outbound: `LINK_FRAMES_MAX` frames per peer, each a header and references to file
//!   ranges or cached batches (record bytes are not copied);
//! - the outbox holds one step's sends (see `outbox`).

pub use crate::outbox::{
    ANSWER_BYTES_MAX, ANSWER_PARTS_MAX, FRAME_PARTS_MAX, FRAME_RECORD_BYTES_MAX,
};
pub use crate::wire::{FRAME_BYTES_MAX, HEADER_BYTES_MAX, HELLO_ADDRESS_BYTES_MAX};

/// Peers one shard keeps an outbound link to: the voters, and the brokers learned
/// since (from the metadata image, or from their `Hello`).
pub const PEERS_MAX: usize = 1024;

/// Frames waiting per peer.
pub const LINK_FRAMES_MAX: usize = 256;

/// Inbound peer connections read at once on one shard: a cluster needs one per peer
/// broker (and one more while a peer reconnects).
pub const PEER_CONNECTIONS_MAX: usize = 64;

/// Frames read from one connection and waiting to be delivered.
pub const INBOUND_FRAMES_MAX: usize = 2;

/// How much a frame's buffer grows per read.
pub const READ_STEP_BYTES: usize = 1024 * 1024;

/// Most records a fetch answer describes (the byte bound, `ANSWER_BYTES_MAX`, is
/// usually reached first).
pub const FETCH_RECORDS_MAX: u64 = 1 << 20;

/// Record bytes scanned per step when rebuilding an epoch cache from the log.
pub const REBUILD_READ_BYTES: usize = 64 * 1024 * 1024;

/// Bytes the applier reads per step.
pub const APPLY_READ_BYTES: usize = 1024 * 1024;

/// Observers a leader serves at once (`replica::Config::observers`): brokers following
/// the metadata log without voting.
pub const OBSERVERS_MAX: usize = 1024;
