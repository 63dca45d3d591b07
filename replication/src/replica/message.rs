//! What replicas say to each other (`Message`), what a replica asks its driver to do
//! (`Action`), and the vote state a replica must find again after a crash
//! (`Persisted`). These are the state machine's whole interface to the world; the
//! driver maps messages to and from inter-broker frames (`crate::wire`).

use spate_engine::{LeaderEpoch, Offset};

use super::membership::Membership;
use super::ReplicaId;
use crate::epochs::Diverging;

/// A batch of one epoch, as a fetch answer or an append describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub epoch: LeaderEpoch,
    /// The offsets the batch spans (its lastOffsetDelta + 1). A batch holds as many
    /// records when written; compaction may leave fewer, or none (a filler), but never
    /// changes its offsets.
    pub offsets: u32,
    pub kind: BatchKind,
}

/// What a batch holds, as far as replication cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchKind {
    /// Client records, or a leader's epoch marker.
    Data,
    /// A control batch of one record: the replica set from this offset on. It is in
    /// force as soon as it is in a log, committed or not (Raft's rule for single-server
    /// changes), and a truncation that removes it reverts it.
    Membership(Membership),
}

impl BatchMeta {
    pub fn data(epoch: LeaderEpoch, offsets: u32) -> BatchMeta {
        BatchMeta {
            epoch,
            offsets,
            kind: BatchKind::Data,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Fetch {
        /// The follower's number for this fetch, echoed in the answer: a follower
        /// takes only the answer to its latest fetch (older ones may arrive late or
        /// twice, and describe a log it no longer has).
        request: u64,
        epoch: LeaderEpoch,
        fetch_offset: Offset,
        last_fetched_epoch: LeaderEpoch,
        durable_end: Offset,
        /// The follower's log start: a follower whose log is empty (no epoch) at its
        /// start agrees with any leader there.
        log_start: Offset,
    },
    FetchAnswer {
        request: u64,
        epoch: LeaderEpoch,
        commit: Offset,
        body: FetchBody,
    },
    /// "Would you vote for me in `epoch`?", asked without raising any epoch.
    PreVote {
        epoch: LeaderEpoch,
        last_epoch: LeaderEpoch,
        end: Offset,
    },
    PreVoteAnswer {
        epoch: LeaderEpoch,
        /// The answerer's epoch: a pre-candidate behind it adopts it, or a voter with a
        /// higher epoch but a shorter log and a candidate with the longer log but a
        /// lower epoch would refuse each other forever (KIP-996).
        current: LeaderEpoch,
        granted: bool,
    },
    Vote {
        epoch: LeaderEpoch,
        last_epoch: LeaderEpoch,
        end: Offset,
    },
    VoteAnswer {
        epoch: LeaderEpoch,
        granted: bool,
    },
    /// The sender leads `epoch`.
    BeginEpoch {
        epoch: LeaderEpoch,
    },
    /// The sender, leader of `epoch`, hands leadership to the receiver, whose log it
    /// has seen reach its own end: campaign now, without waiting for a timeout or
    /// asking for pre-votes (KRaft's EndQuorumEpoch with one preferred successor).
    EndEpoch {
        epoch: LeaderEpoch,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchBody {
    /// The leader's batches from `base` (possibly none).
    Records {
        base: Offset,
        batches: Vec<BatchMeta>,
    },
    /// The follower's log diverges: truncate, then fetch again.
    Diverging(Diverging),
    /// The follower's log ends below the leader's log start: everything it lacks was
    /// deleted (retention, DeleteRecords), so it empties its log and starts it again at
    /// `log_start`.
    StartAt { log_start: Offset },
    /// The fetch reached a replica that is not the leader of the fetch's epoch; the
    /// answer's epoch is the replica's, and `leader` the leader it knows of it.
    Fenced { leader: Option<ReplicaId> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this durable before carrying out any later action.
    Persist(Persisted),
    Send {
        to: ReplicaId,
        message: Message,
    },
    /// Answer a fetch with the records `[from, until)` of this replica's log: the driver
    /// reads them and sends a `FetchAnswer` with `FetchBody::Records`.
    SendRecords {
        to: ReplicaId,
        request: u64,
        epoch: LeaderEpoch,
        commit: Offset,
        from: Offset,
        until: Offset,
    },
    /// Append these batches at `base` (the current log end), then report `durable`.
    Append {
        base: Offset,
        batches: Vec<BatchMeta>,
    },
    /// Remove every record at or past `to`.
    Truncate {
        to: Offset,
    },
    /// Remove every record and start the log again, empty, at `at` (past its end). Every
    /// offset below `at` is committed: the log's commit index and high watermark become
    /// `at`.
    Restart {
        at: Offset,
    },
    /// The commit index moved: acks=all writes below it are complete, consumers may
    /// read below it.
    Commit {
        index: Offset,
    },
    /// This replica stopped leading; writes it has not committed fail (they may still
    /// commit under another leader).
    Resigned,
    /// A peer sent something no correct replica sends (batches without records, epochs
    /// out of order, a truncation below the commit index). It was refused; the driver
    /// logs it. Never a panic: these bytes come from the network.
    Refused {
        from: ReplicaId,
        reason: String,
    },
}

/// What a replica must find again after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persisted {
    pub epoch: LeaderEpoch,
    pub voted_for: Option<ReplicaId>,
}
