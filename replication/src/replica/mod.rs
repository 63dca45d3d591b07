//! One replica of one partition, as an I/O-free state machine (`docs/REPLICATION.md`).
//!
//! The driver feeds it events — `tick` (time passed), `receive` (a message from a
//! peer), `durable` (its log is fsynced up to an offset), `write` (a client append on
//! the leader), `change` (a replica-set change), `transfer` (hand leadership over) —
//! and carries out the actions it returns, **in order**: `Persist` must be durable
//! before any later action, since a vote or an epoch sent to a peer must survive a
//! crash. The replica owns no sockets, files or clocks; its randomness (the election
//! timeout) comes from a seeded generator, so a simulator replays it exactly. `now`
//! is a monotonic clock in milliseconds and never goes back.
//!
//! It keeps its own view of its log (end, durable end, epoch cache, replica sets) from
//! the actions it asked for. The code is split by role: `follower` (the fetch loop),
//! `leader` (answering fetches, the commit index, changes and transfers) and
//! `election` (pre-vote, vote, taking office, stepping down).

mod election;
mod follower;
mod leader;
mod membership;
mod message;
mod observer;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use spate_engine::{LeaderEpoch, Offset};

use crate::epochs::EpochCache;
use crate::rng::SplitMix;

pub use membership::{Change, ChangeError, Membership, Memberships};
pub use message::{Action, BatchKind, BatchMeta, FetchBody, Message, Persisted};

/// A replica's broker id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u32);

#[derive(Clone, Debug)]
pub struct Config {
    pub id: ReplicaId,
    /// The replica set the partition was created with; membership batches in the log
    /// override it.
    pub membership: Membership,
    /// A follower that hears nothing from its leader for this long (times a random
    /// factor in [1, 2)) starts an election. Also how long a transfer may take.
    pub election_timeout_ms: u64,
    /// A follower resends a fetch unanswered for this long.
    pub fetch_timeout_ms: u64,
    /// The leader holds a fetch that finds nothing new for at most this long.
    pub fetch_wait_ms: u64,
    /// A leader that has not heard from a majority for this long resigns.
    pub check_quorum_ms: u64,
    /// Most records one fetch answer carries.
    pub fetch_records_max: u64,
    /// How often a leader that is not the preferred replica (the first voter) checks
    /// whether it can hand leadership back to it; `None` never does (Kafka's
    /// `auto.leader.rebalance.enable=false`).
    pub preferred_leader_check_ms: Option<u64>,
    /// Whether brokers outside the replica set may follow the log (KRaft's observers;
    /// set for the metadata log, whose voters are a few of the brokers): a leader then
    /// serves their fetches without counting them anywhere, and a replica outside the
    /// set finds the leader by asking the voters in turn (`observer`).
    pub observers: bool,
    pub seed: u64,
}

/// What a replica finds on disk when it starts: its vote state, and a log ending at
/// `log_end` (all of it durable) described by its epoch cache and the replica sets it
/// states.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub persisted: Persisted,
    pub log_start: Offset,
    pub log_end: Offset,
    pub epochs: EpochCache,
    pub memberships: Vec<(Offset, Membership)>,
}

impl Recovered {
    /// A replica created on this broker just now: no log, no vote.
    pub fn empty() -> Recovered {
        Recovered {
            persisted: Persisted {
                epoch: LeaderEpoch(0),
                voted_for: None,
            },
            log_start: Offset::ZERO,
            log_end: Offset::ZERO,
            epochs: EpochCache::new(),
            memberships: Vec::new(),
        }
    }
}

/// Client writes go to the leader only, and not while it hands leadership over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotLeader;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    /// No known leader in the current epoch.
    Unattached,
    Follower {
        leader: ReplicaId,
    },
    PreCandidate {
        granted: BTreeSet<ReplicaId>,
    },
    Candidate {
        granted: BTreeSet<ReplicaId>,
    },
    Leader(Box<Leadership>),
}

/// A leader's volatile state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Leadership {
    since: u64,
    /// One entry per other member (voters and learners) of the set in force.
    progress: BTreeMap<ReplicaId, Progress>,
    /// Held fetches: at most one per member and per observer.
    parked: BTreeMap<ReplicaId, Parked>,
    /// The observers served (`Config::observers`), at most `OBSERVERS_MAX`: those that
    /// stop fetching are forgotten after a check-quorum interval.
    observers: BTreeMap<ReplicaId, Observed>,
    transfer: Option<Transfer>,
    preferred_checked_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    durable_end: Offset,
    last_fetch_ms: u64,
    /// The commit index in the last answer to this replica: a fetch finding no new
    /// records is held only once the replica knows the current commit index.
    commit_sent: Offset,
    /// When the leader last announced itself to this replica.
    last_begin_ms: u64,
    /// When this replica last fetched from at least the leader's log end as of its
    /// previous fetch (Kafka's `lastCaughtUpTimeMs`): under steady appends a follower
    /// that keeps up meets this on every fetch, one that falls behind stops meeting it.
    caught_up_ms: u64,
    /// The leader's log end when this replica last fetched.
    end_at_last_fetch: Offset,
}

/// What a leader keeps of an observer: enough to hold its fetches like a member's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Observed {
    commit_sent: Offset,
    last_fetch_ms: u64,
}

/// A fetch the leader holds until there is something to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parked {
    request: u64,
    fetch_offset: Offset,
    deadline: u64,
}

/// What a fetch says of the follower's log besides where it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FollowerLog {
    last_fetched_epoch: LeaderEpoch,
    durable_end: Offset,
    log_start: Offset,
}

/// A leadership hand-over in progress: no appends until it succeeds or `deadline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Transfer {
    to: ReplicaId,
    deadline: u64,
    /// When `EndEpoch` went to the target, once it had caught up.
    sent_ms: Option<u64>,
}

#[derive(Debug)]
pub struct Replica {
    config: Config,
    rng: SplitMix,
    epoch: LeaderEpoch,
    voted_for: Option<ReplicaId>,
    role: Role,
    /// The log's start as the driver last reported it (`set_log_start`): a leader sends
    /// a follower fetching below it `StartAt`.
    log_start: Offset,
    log_end: Offset,
    durable_end: Offset,
    epochs: EpochCache,
    memberships: Memberships,
    commit: Offset,
    /// The leader's commit index in its last answer (followers).
    leader_commit: Offset,
    election_deadline: u64,
    last_leader_contact: Option<u64>,
    /// Whether the leader followed has answered a fetch since it was adopted. A voter
    /// can name a leader that has died; an observer told of one gives up on it sooner.
    leader_answered: bool,
    /// When the outstanding fetch was sent (followers), and its number.
    fetch_sent_at: Option<u64>,
    fetch_request: u64,
    /// Which voter an observer asks next for the leader (an index into the voters).
    probe: usize,
}

impl Replica {
    pub fn new(config: Config, recovered: Recovered, now: u64) -> Replica {
        assert!(config.election_timeout_ms > 0 && config.fetch_records_max > 0);
        let rng = SplitMix::new(config.seed ^ (u64::from(config.id.0) << 32));
        let mut memberships = Memberships::new(config.membership.clone());
        for (offset, membership) in recovered.memberships {
            assert!(offset < recovered.log_end, "replica sets come from the log");
            memberships.assign(offset, membership);
        }
        let mut replica = Replica {
            config,
            rng,
            epoch: recovered.persisted.epoch,
            voted_for: recovered.persisted.voted_for,
            role: Role::Unattached,
            log_start: recovered.log_start,
            log_end: recovered.log_end,
            durable_end: recovered.log_end,
            epochs: recovered.epochs,
            memberships,
            commit: Offset::ZERO,
            leader_commit: Offset::ZERO,
            election_deadline: 0,
            last_leader_contact: None,
            leader_answered: false,
            fetch_sent_at: None,
            fetch_request: 0,
            probe: 0,
        };
        replica.reset_election(now);
        replica
    }

    pub fn id(&self) -> ReplicaId {
        self.config.id
    }

    pub fn epoch(&self) -> LeaderEpoch {
        self.epoch
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this replica follows, if it knows one.
    pub fn leader(&self) -> Option<ReplicaId> {
        match self.role {
            Role::Follower { leader } => Some(leader),
            Role::Leader(_) => Some(self.config.id),
            _ => None,
        }
    }

    pub fn commit_index(&self) -> Offset {
        self.commit
    }

    pub fn log_start(&self) -> Offset {
        self.log_start
    }

    /// The log's start moved (retention, DeleteRecords, following the leader's). It only
    /// moves up, and never past the log end.
    pub fn set_log_start(&mut self, start: Offset) {
        debug_assert!(
            start <= self.log_end,
            "{start:?} past the log end {:?}",
            self.log_end
        );
        self.log_start = self.log_start.max(start.min(self.log_end));
    }

    pub fn log_end(&self) -> Offset {
        self.log_end
    }

    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }

    /// Where each epoch starts in this replica's log, as it has asked for it.
    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// The replica set in force: the latest in this replica's log.
    pub fn membership(&self) -> &Membership {
        self.memberships.current()
    }

    /// The in-sync replicas (Kafka's ISR) of a leader: itself, and the members that
    /// caught up with its log within the last `lag_ms` (`replica.lag.time.max.ms`).
    /// `None` if this replica does not lead.
    pub fn in_sync(&self, now: u64, lag_ms: u64) -> Option<Vec<ReplicaId>> {
        let Role::Leader(leadership) = &self.role else {
            return None;
        };
        let mut isr = vec![self.config.id];
        for (id, progress) in &leadership.progress {
            if progress.caught_up_ms + lag_ms >= now {
                isr.push(*id);
            }
        }
        isr.sort();
        Some(isr)
    }

    /// Whether this leader is handing leadership over.
    pub fn transferring(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if l.transfer.is_some())
    }

    /// Whether this replica follows `leader` in the current epoch.
    fn follows(&self, leader: ReplicaId) -> bool {
        matches!(self.role, Role::Follower { leader: l } if l == leader)
    }

    fn is_voter(&self) -> bool {
        self.membership().is_voter(self.config.id)
    }

    /// Whether this replica follows the log from outside the replica set.
    fn observing(&self) -> bool {
        self.config.observers && !self.membership().is_member(self.config.id)
    }

    /// The other voters: whom a candidate asks.
    fn other_voters(&self) -> Vec<ReplicaId> {
        let me = self.config.id;
        let voters = self.membership().voters().iter().copied();
        voters.filter(|v| *v != me).collect()
    }

    /// The other members: whom a leader serves.
    fn other_members(&self) -> Vec<ReplicaId> {
        let me = self.config.id;
        let members = self.membership().members();
        members.filter(|v| *v != me).collect()
    }

    fn reset_election(&mut self, now: u64) {
        let timeout = self.config.election_timeout_ms;
        self.election_deadline = now + timeout + self.rng.next() % timeout;
    }

    /// Whether part of the log is not durable yet: a follower then fetches only once
    /// it is, so that the durable end it reports covers what it appended.
    fn waiting_for_disk(&self) -> bool {
        self.durable_end < self.log_end
    }

    fn last_log(&self) -> (LeaderEpoch, Offset) {
        let last = if self.log_end > Offset::ZERO {
            self.epochs.epoch_at(Offset(self.log_end.0 - 1))
        } else {
            None
        };
        (last.unwrap_or(LeaderEpoch(-1)), self.log_end)
    }

    fn persist(&self, out: &mut Vec<Action>) {
        out.push(Action::Persist(Persisted {
            epoch: self.epoch,
            voted_for: self.voted_for,
        }));
    }

    fn send(&self, to: ReplicaId, message: Message, out: &mut Vec<Action>) {
        out.push(Action::Send { to, message });
    }

    /// Records batches appended at `base` (the log end) in the epoch cache and the
    /// replica-set history; returns the new log end.
    fn note_appended(&mut self, base: Offset, batches: &[BatchMeta]) -> Offset {
        assert_eq!(base, self.log_end, "appends go at the log end (R9)");
        let mut at = base;
        for batch in batches {
            assert!(batch.offsets > 0, "a batch spans offsets");
            self.epochs.assign(batch.epoch, at);
            if let BatchKind::Membership(m) = &batch.kind {
                self.memberships.assign(at, m.clone());
            }
            at = at.plus(i64::from(batch.offsets));
        }
        self.log_end = at;
        at
    }

    /// Time has passed.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match &self.role {
            Role::Leader(_) => self.leader_tick(now, &mut out),
            _ if self.observing() => self.observer_tick(now, &mut out),
            Role::Follower { .. } if now >= self.election_deadline && self.is_voter() => {
                self.start_pre_vote(now, &mut out)
            }
            Role::Follower { .. } => self.follower_tick(now, &mut out),
            Role::Unattached | Role::PreCandidate { .. } | Role::Candidate { .. } => {
                // Learners and removed replicas wait to hear from a leader.
                if now >= self.election_deadline && self.is_voter() {
                    self.start_pre_vote(now, &mut out);
                }
            }
        }
        out
    }

    /// The log is durable up to `end`.
    pub fn durable(&mut self, now: u64, end: Offset) -> Vec<Action> {
        let mut out = Vec::new();
        // A report for records truncated since counts only up to the log end.
        self.durable_end = self.durable_end.max(end.min(self.log_end));
        match self.role {
            Role::Leader(_) => self.update_leader_commit(now, &mut out),
            Role::Follower { .. } => self.follower_durable(now, &mut out),
            _ => {}
        }
        out
    }

    /// A message from `from`. Messages from any replica are heard, members or not: a
    /// new leader may sit in a replica set this replica has not appended yet.
    pub fn receive(&mut self, now: u64, from: ReplicaId, message: Message) -> Vec<Action> {
        let mut out = Vec::new();
        if from == self.config.id {
            return out;
        }
        match message {
            Message::Fetch {
                request,
                epoch,
                fetch_offset,
                last_fetched_epoch,
                durable_end,
                log_start,
            } => {
                let fetch = Parked {
                    request,
                    fetch_offset,
                    deadline: now + self.config.fetch_wait_ms,
                };
                self.on_fetch(
                    now,
                    from,
                    epoch,
                    fetch,
                    FollowerLog {
                        last_fetched_epoch,
                        durable_end,
                        log_start,
                    },
                    &mut out,
                )
            }
            Message::FetchAnswer {
                request,
                epoch,
                commit,
                body,
            } => self.on_fetch_answer(now, from, request, epoch, commit, body, &mut out),
            Message::PreVote {
                epoch,
                last_epoch,
                end,
            } => self.on_pre_vote(now, from, epoch, (last_epoch, end), &mut out),
            Message::PreVoteAnswer {
                epoch,
                current,
                granted,
            } => self.on_pre_vote_answer(now, from, (epoch, current), granted, &mut out),
            Message::Vote {
                epoch,
                last_epoch,
                end,
            } => self.on_vote(now, from, epoch, (last_epoch, end), &mut out),
            Message::VoteAnswer { epoch, granted } => {
                self.on_vote_answer(now, from, epoch, granted, &mut out)
            }
            Message::BeginEpoch { epoch } => self.on_begin_epoch(now, from, epoch, &mut out),
            Message::EndEpoch { epoch } => self.on_end_epoch(now, from, epoch, &mut out),
        }
        out
    }
}
