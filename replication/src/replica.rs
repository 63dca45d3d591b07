//! One replica of one partition, as an I/O-free state machine (`docs/REPLICATION.md`).
//!
//! The driver feeds it events — `tick` (time passed), `receive` (a message from a
//! peer), `durable` (its log is fsynced up to an offset), `write` (a client append on
//! the leader) — and carries out the actions it returns, **in order**: `Persist` must be
//! durable before any later action, since a vote or an epoch sent to a peer must
//! survive a crash. The replica owns no sockets, files or clocks; its randomness (the
//! election timeout) comes from a seeded generator, so a simulator replays it exactly.
//!
//! It keeps its own view of its log (end, durable end, epoch cache) from the actions it
//! asked for. Followers fetch from the leader one fetch at a time, and fetch again once
//! what they appended is durable, so the durable end they report is what the leader
//! counts. The leader holds a fetch that finds nothing new until data arrives, the
//! commit index moves, or `fetch_wait_ms` passes. Elections run a pre-vote first, and a
//! leader that has not heard from a majority within `check_quorum_ms` resigns.
//!
//! Not yet built: membership changes (learners), leadership transfer.

use std::collections::{BTreeMap, BTreeSet};

use spate_engine::{LeaderEpoch, Offset};

use crate::commit::quorum_commit;
use crate::epochs::{Diverging, EpochCache};
use crate::rng::SplitMix;

/// A replica's broker id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u32);

/// A run of records of one epoch, as a fetch answer or an append describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub epoch: LeaderEpoch,
    pub records: u32,
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

#[derive(Clone, Debug)]
pub struct Config {
    pub id: ReplicaId,
    pub voters: Vec<ReplicaId>,
    /// A follower that hears nothing from its leader for this long (times a random
    /// factor in [1, 2)) starts an election.
    pub election_timeout_ms: u64,
    /// A follower resends a fetch unanswered for this long.
    pub fetch_timeout_ms: u64,
    /// The leader holds a fetch that finds nothing new for at most this long.
    pub fetch_wait_ms: u64,
    /// A leader that has not heard from a majority for this long resigns.
    pub check_quorum_ms: u64,
    /// Most records one fetch answer carries.
    pub fetch_records_max: u64,
    pub seed: u64,
}

/// Client writes go to the leader only.
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
    Leader {
        since: u64,
        progress: BTreeMap<ReplicaId, Progress>,
        parked: BTreeMap<ReplicaId, Parked>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    durable_end: Offset,
    last_fetch_ms: u64,
    /// When the leader last announced itself to this replica.
    last_begin_ms: u64,
}

/// A fetch the leader holds until there is something to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parked {
    request: u64,
    fetch_offset: Offset,
    deadline: u64,
}

#[derive(Debug)]
pub struct Replica {
    config: Config,
    rng: SplitMix,
    epoch: LeaderEpoch,
    voted_for: Option<ReplicaId>,
    role: Role,
    log_end: Offset,
    durable_end: Offset,
    epochs: EpochCache,
    commit: Offset,
    /// The leader's commit index in its last answer (followers).
    leader_commit: Offset,
    election_deadline: u64,
    last_leader_contact: Option<u64>,
    /// When the outstanding fetch was sent (followers), and its number.
    fetch_sent_at: Option<u64>,
    fetch_request: u64,
    /// A follower fetches again once its log is durable up to here.
    awaiting_durable: Option<Offset>,
}

impl Replica {
    /// A replica starting (or restarting) with its persisted vote state and a log that
    /// ends at `log_end`, all of it durable, with `epochs` describing it.
    pub fn new(
        config: Config,
        persisted: Persisted,
        log_end: Offset,
        epochs: EpochCache,
        now: u64,
    ) -> Replica {
        assert!(
            config.voters.contains(&config.id),
            "learners are not built yet"
        );
        assert!(config.election_timeout_ms > 0 && config.fetch_records_max > 0);
        let rng = SplitMix::new(config.seed ^ (u64::from(config.id.0) << 32));
        let mut replica = Replica {
            config,
            rng,
            epoch: persisted.epoch,
            voted_for: persisted.voted_for,
            role: Role::Unattached,
            log_end,
            durable_end: log_end,
            epochs,
            commit: Offset::ZERO,
            leader_commit: Offset::ZERO,
            election_deadline: 0,
            last_leader_contact: None,
            fetch_sent_at: None,
            fetch_request: 0,
            awaiting_durable: None,
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
        matches!(self.role, Role::Leader { .. })
    }

    /// The leader this replica follows, if it knows one.
    pub fn leader(&self) -> Option<ReplicaId> {
        match self.role {
            Role::Follower { leader } => Some(leader),
            Role::Leader { .. } => Some(self.config.id),
            _ => None,
        }
    }

    pub fn commit_index(&self) -> Offset {
        self.commit
    }

    pub fn log_end(&self) -> Offset {
        self.log_end
    }

    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }

    fn majority(&self) -> usize {
        self.config.voters.len() / 2 + 1
    }

    fn others(&self) -> Vec<ReplicaId> {
        self.config
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.config.id)
            .collect()
    }

    /// A deterministic stream for election timeouts.
    fn random(&mut self) -> u64 {
        self.rng.next()
    }

    fn reset_election(&mut self, now: u64) {
        let timeout = self.config.election_timeout_ms;
        self.election_deadline = now + timeout + self.random() % timeout;
    }

    fn last_log(&self) -> (LeaderEpoch, Offset) {
        let last = if self.log_end > Offset::ZERO {
            self.epochs.epoch_at(Offset(self.log_end.0 - 1))
        } else {
            None
        };
        (last.unwrap_or(LeaderEpoch(-1)), self.log_end)
    }

    /// Whether a log ending with `(last_epoch, end)` is at least as up to date as ours.
    fn up_to_date(&self, last_epoch: LeaderEpoch, end: Offset) -> bool {
        (last_epoch, end) >= self.last_log()
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

    /// Time has passed.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match &self.role {
            Role::Leader {
                since, progress, ..
            } => {
                let heard = progress
                    .values()
                    .filter(|p| p.last_fetch_ms + self.config.check_quorum_ms >= now)
                    .count()
                    + 1;
                if heard < self.majority() && now >= since + self.config.check_quorum_ms {
                    self.resign(now, &mut out);
                } else {
                    self.announce(now, &mut out);
                    self.answer_parked(now, false, &mut out);
                }
            }
            Role::Follower { .. } if now >= self.election_deadline => {
                self.start_pre_vote(now, &mut out)
            }
            Role::Follower { .. } => {
                let timed_out = self
                    .fetch_sent_at
                    .is_some_and(|at| now >= at + self.config.fetch_timeout_ms);
                if timed_out || (self.fetch_sent_at.is_none() && self.awaiting_durable.is_none()) {
                    self.fetch(now, &mut out);
                }
            }
            Role::Unattached | Role::PreCandidate { .. } | Role::Candidate { .. } => {
                if now >= self.election_deadline {
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
            Role::Leader { .. } => self.update_leader_commit(now, &mut out),
            Role::Follower { .. } => {
                self.update_follower_commit(&mut out);
                if self
                    .awaiting_durable
                    .is_some_and(|at| self.durable_end >= at)
                {
                    self.awaiting_durable = None;
                    self.fetch(now, &mut out);
                }
            }
            _ => {}
        }
        out
    }

    /// A client appends `records` records; returns the offset of the first.
    pub fn write(&mut self, now: u64, records: u32) -> Result<(Offset, Vec<Action>), NotLeader> {
        if !self.is_leader() {
            return Err(NotLeader);
        }
        assert!(records > 0);
        let mut out = Vec::new();
        let base = self.append_own(records, &mut out);
        self.answer_parked(now, true, &mut out);
        Ok((base, out))
    }

    fn append_own(&mut self, records: u32, out: &mut Vec<Action>) -> Offset {
        let base = self.log_end;
        let batch = BatchMeta {
            epoch: self.epoch,
            records,
        };
        self.epochs.assign(self.epoch, base);
        self.log_end = base.plus(i64::from(records));
        out.push(Action::Append {
            base,
            batches: vec![batch],
        });
        base
    }

    /// A message from `from`.
    pub fn receive(&mut self, now: u64, from: ReplicaId, message: Message) -> Vec<Action> {
        let mut out = Vec::new();
        if from == self.config.id || !self.config.voters.contains(&from) {
            return out;
        }
        match message {
            Message::Fetch {
                request,
                epoch,
                fetch_offset,
                last_fetched_epoch,
                durable_end,
            } => {
                if epoch > self.epoch {
                    self.adopt(now, epoch, None, &mut out);
                }
                if epoch == self.epoch && self.is_leader() {
                    let fetch = Parked {
                        request,
                        fetch_offset,
                        deadline: now + self.config.fetch_wait_ms,
                    };
                    self.answer_fetch(now, from, fetch, last_fetched_epoch, durable_end, &mut out);
                } else {
                    let answer = Message::FetchAnswer {
                        request,
                        epoch: self.epoch,
                        commit: self.commit,
                        body: FetchBody::Fenced {
                            leader: self.leader(),
                        },
                    };
                    self.send(from, answer, &mut out);
                }
            }
            Message::FetchAnswer {
                request,
                epoch,
                commit,
                body,
            } => {
                if epoch < self.epoch {
                    return out;
                }
                if let FetchBody::Fenced { leader } = body {
                    // Not the leader: learn its epoch and leader, and fetch from that.
                    let known =
                        matches!(self.role, Role::Follower { leader: l } if Some(l) == leader);
                    if epoch > self.epoch || (leader.is_some() && !known && !self.is_leader()) {
                        self.adopt(
                            now,
                            epoch,
                            leader.filter(|l| *l != self.config.id),
                            &mut out,
                        );
                        self.fetch(now, &mut out);
                    } else if known {
                        self.fetch_sent_at = None;
                    }
                    return out;
                }
                if request != self.fetch_request {
                    return out;
                }
                if request != self.fetch_request {
                    // An answer to an older fetch, late or duplicated: it describes a
                    // log this replica may no longer have.
                    return out;
                }
                // Records and divergences come only from the leader of `epoch`.
                let following = matches!(self.role, Role::Follower { leader } if leader == from);
                if epoch > self.epoch || !following {
                    self.adopt(now, epoch, Some(from), &mut out);
                }
                self.take_answer(now, from, commit, body, &mut out);
            }
            Message::PreVote {
                epoch,
                last_epoch,
                end,
            } => {
                let leader_alive = match self.role {
                    Role::Leader { .. } => true,
                    Role::Follower { .. } => self
                        .last_leader_contact
                        .is_some_and(|at| now < at + self.config.election_timeout_ms),
                    _ => false,
                };
                let granted =
                    epoch > self.epoch && !leader_alive && self.up_to_date(last_epoch, end);
                self.send(from, Message::PreVoteAnswer { epoch, granted }, &mut out);
            }
            Message::PreVoteAnswer { epoch, granted } => {
                let majority = self.majority();
                if let Role::PreCandidate { granted: votes } = &mut self.role {
                    if granted && epoch.0 == self.epoch.0 + 1 {
                        votes.insert(from);
                        if votes.len() >= majority {
                            self.start_election(now, &mut out);
                        }
                    }
                }
            }
            Message::Vote {
                epoch,
                last_epoch,
                end,
            } => {
                if epoch > self.epoch {
                    self.adopt(now, epoch, None, &mut out);
                }
                let free = self.voted_for.is_none_or(|v| v == from);
                let granted = epoch == self.epoch
                    && free
                    && !self.is_leader()
                    && self.up_to_date(last_epoch, end);
                if granted && self.voted_for.is_none() {
                    self.voted_for = Some(from);
                    self.persist(&mut out);
                    self.reset_election(now);
                }
                let answer = Message::VoteAnswer {
                    epoch: self.epoch,
                    granted,
                };
                self.send(from, answer, &mut out);
            }
            Message::VoteAnswer { epoch, granted } => {
                if epoch > self.epoch {
                    self.adopt(now, epoch, None, &mut out);
                    return out;
                }
                let majority = self.majority();
                if let Role::Candidate { granted: votes } = &mut self.role {
                    if granted && epoch == self.epoch {
                        votes.insert(from);
                        if votes.len() >= majority {
                            self.become_leader(now, &mut out);
                        }
                    }
                }
            }
            Message::BeginEpoch { epoch } => {
                let following = matches!(self.role, Role::Follower { leader } if leader == from);
                if epoch > self.epoch || (epoch == self.epoch && !following && !self.is_leader()) {
                    self.adopt(now, epoch, Some(from), &mut out);
                    if self.awaiting_durable.is_none() {
                        self.fetch(now, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Moves to `epoch` (if newer) as follower of `leader`, or unattached.
    fn adopt(
        &mut self,
        now: u64,
        epoch: LeaderEpoch,
        leader: Option<ReplicaId>,
        out: &mut Vec<Action>,
    ) {
        assert!(epoch >= self.epoch, "epochs never go back");
        if self.is_leader() {
            out.push(Action::Resigned);
        }
        if epoch > self.epoch {
            self.epoch = epoch;
            self.voted_for = None;
            self.persist(out);
        }
        self.fetch_sent_at = None;
        self.reset_election(now);
        match leader {
            Some(leader) => {
                self.role = Role::Follower { leader };
                self.last_leader_contact = Some(now);
            }
            None => self.role = Role::Unattached,
        }
    }

    fn resign(&mut self, now: u64, out: &mut Vec<Action>) {
        out.push(Action::Resigned);
        self.role = Role::Unattached;
        self.reset_election(now);
    }

    fn fetch(&mut self, now: u64, out: &mut Vec<Action>) {
        let Role::Follower { leader } = self.role else {
            return;
        };
        let (last_fetched_epoch, fetch_offset) = self.last_log();
        self.fetch_request += 1;
        let message = Message::Fetch {
            request: self.fetch_request,
            epoch: self.epoch,
            fetch_offset,
            last_fetched_epoch,
            durable_end: self.durable_end,
        };
        self.fetch_sent_at = Some(now);
        self.send(leader, message, out);
    }

    fn take_answer(
        &mut self,
        now: u64,
        from: ReplicaId,
        commit: Offset,
        body: FetchBody,
        out: &mut Vec<Action>,
    ) {
        self.fetch_sent_at = None;
        self.last_leader_contact = Some(now);
        self.reset_election(now);
        match body {
            FetchBody::Fenced { .. } => unreachable!("handled by receive"),
            FetchBody::Diverging(diverging) => {
                let cut = self.epochs.truncation_point(diverging, self.log_end);
                if cut < self.commit {
                    // Committed records are never removed: the leader is wrong (or not
                    // a leader). Refuse, and let the fetch timeout ask again.
                    let reason = format!(
                        "told to truncate to {cut:?}, below the commit index {:?}",
                        self.commit
                    );
                    out.push(Action::Refused { from, reason });
                    return;
                }
                if cut < self.log_end {
                    self.epochs.truncate_to(cut);
                    self.log_end = cut;
                    self.durable_end = self.durable_end.min(cut);
                    self.awaiting_durable = None;
                    out.push(Action::Truncate { to: cut });
                }
                self.fetch(now, out);
            }
            FetchBody::Records { base, batches } => {
                if base != self.log_end {
                    // An answer to an older fetch (duplicated or delayed): ask again,
                    // unless an append is on its way to disk (its durability fetches).
                    if self.awaiting_durable.is_none() {
                        self.fetch(now, out);
                    }
                    return;
                }
                if let Err(reason) = self.check_batches(&batches) {
                    out.push(Action::Refused { from, reason });
                    return;
                }
                // The leader checked our log up to `base`: its commit index applies to
                // our durable prefix.
                self.leader_commit = self.leader_commit.max(commit);
                self.update_follower_commit(out);
                if batches.is_empty() {
                    if self.awaiting_durable.is_none() {
                        self.fetch(now, out);
                    }
                    return;
                }
                let mut at = base;
                for batch in &batches {
                    self.epochs.assign(batch.epoch, at);
                    at = at.plus(i64::from(batch.records));
                }
                self.log_end = at;
                self.awaiting_durable = Some(at);
                out.push(Action::Append { base, batches });
            }
        }
    }

    /// Batches a leader may send: each holds records, and their epochs never go back,
    /// neither from our last record's nor from one batch to the next, nor past the
    /// leader's epoch.
    fn check_batches(&self, batches: &[BatchMeta]) -> Result<(), String> {
        let mut last = self.last_log().0;
        for batch in batches {
            if batch.records == 0 {
                return Err("a batch without records".into());
            }
            if batch.epoch < last || batch.epoch > self.epoch {
                return Err(format!(
                    "a batch of epoch {:?} after epoch {last:?} (leader epoch {:?})",
                    batch.epoch, self.epoch
                ));
            }
            last = batch.epoch;
        }
        Ok(())
    }

    fn update_follower_commit(&mut self, out: &mut Vec<Action>) {
        let index = self.leader_commit.min(self.durable_end);
        if index > self.commit {
            self.commit = index;
            out.push(Action::Commit { index });
        }
    }

    fn start_pre_vote(&mut self, now: u64, out: &mut Vec<Action>) {
        self.reset_election(now);
        self.fetch_sent_at = None;
        let (last_epoch, end) = self.last_log();
        let epoch = LeaderEpoch(self.epoch.0 + 1);
        self.role = Role::PreCandidate {
            granted: BTreeSet::from([self.config.id]),
        };
        if self.majority() == 1 {
            return self.start_election(now, out);
        }
        for to in self.others() {
            self.send(
                to,
                Message::PreVote {
                    epoch,
                    last_epoch,
                    end,
                },
                out,
            );
        }
    }

    fn start_election(&mut self, now: u64, out: &mut Vec<Action>) {
        self.epoch = LeaderEpoch(self.epoch.0 + 1);
        self.voted_for = Some(self.config.id);
        self.persist(out);
        self.reset_election(now);
        self.role = Role::Candidate {
            granted: BTreeSet::from([self.config.id]),
        };
        if self.majority() == 1 {
            return self.become_leader(now, out);
        }
        let (last_epoch, end) = self.last_log();
        for to in self.others() {
            let message = Message::Vote {
                epoch: self.epoch,
                last_epoch,
                end,
            };
            self.send(to, message, out);
        }
    }

    fn become_leader(&mut self, now: u64, out: &mut Vec<Action>) {
        let progress = self
            .others()
            .into_iter()
            .map(|r| {
                let p = Progress {
                    durable_end: Offset::ZERO,
                    last_fetch_ms: now,
                    last_begin_ms: now,
                };
                (r, p)
            })
            .collect();
        self.role = Role::Leader {
            since: now,
            progress,
            parked: BTreeMap::new(),
        };
        self.fetch_sent_at = None;
        self.awaiting_durable = None;
        for to in self.others() {
            self.send(to, Message::BeginEpoch { epoch: self.epoch }, out);
        }
        // The epoch marker: the first record of this epoch, so that older epochs'
        // entries commit once it does, without waiting for a client write.
        self.append_own(1, out);
    }

    fn answer_fetch(
        &mut self,
        now: u64,
        from: ReplicaId,
        fetch: Parked,
        last_fetched_epoch: LeaderEpoch,
        durable_end: Offset,
        out: &mut Vec<Action>,
    ) {
        let fetch_offset = fetch.fetch_offset;
        if let Some(diverging) =
            self.epochs
                .diverging(last_fetched_epoch, fetch_offset, self.log_end)
        {
            let answer = Message::FetchAnswer {
                request: fetch.request,
                epoch: self.epoch,
                commit: self.commit,
                body: FetchBody::Diverging(diverging),
            };
            return self.send(from, answer, out);
        }
        let Role::Leader {
            progress, parked, ..
        } = &mut self.role
        else {
            unreachable!("answer_fetch runs on the leader");
        };
        // The follower's log agrees with ours up to `fetch_offset`, so its durable
        // prefix up to there counts toward the commit index.
        let progress = progress.get_mut(&from).expect("voters have progress");
        progress.durable_end = progress.durable_end.max(durable_end.min(fetch_offset));
        progress.last_fetch_ms = now;
        parked.remove(&from);
        self.update_leader_commit(now, out);
        if fetch_offset < self.log_end {
            self.send_records(from, fetch, out);
        } else {
            let Role::Leader { parked, .. } = &mut self.role else {
                unreachable!("still the leader");
            };
            parked.insert(from, fetch);
        }
    }

    /// Announces the leader again to replicas that have not fetched for a fetch
    /// timeout: a lost BeginEpoch must not leave a replica unattached for good.
    fn announce(&mut self, now: u64, out: &mut Vec<Action>) {
        let quiet = self.config.fetch_timeout_ms;
        let epoch = self.epoch;
        let Role::Leader { progress, .. } = &mut self.role else {
            return;
        };
        for (to, p) in progress.iter_mut() {
            if p.last_fetch_ms + quiet <= now && p.last_begin_ms + quiet <= now {
                p.last_begin_ms = now;
                out.push(Action::Send {
                    to: *to,
                    message: Message::BeginEpoch { epoch },
                });
            }
        }
    }

    fn send_records(&self, to: ReplicaId, fetch: Parked, out: &mut Vec<Action>) {
        let from = fetch.fetch_offset;
        let until = self
            .log_end
            .min(from.plus(self.config.fetch_records_max as i64));
        out.push(Action::SendRecords {
            to,
            request: fetch.request,
            epoch: self.epoch,
            commit: self.commit,
            from,
            until,
        });
    }

    /// Answers held fetches: all of them when `all` (new data or a new commit index),
    /// else those whose wait is over.
    fn answer_parked(&mut self, now: u64, all: bool, out: &mut Vec<Action>) {
        let Role::Leader { parked, .. } = &mut self.role else {
            return;
        };
        let due: Vec<(ReplicaId, Parked)> = parked
            .iter()
            .filter(|(_, p)| all || p.deadline <= now)
            .map(|(r, p)| (*r, *p))
            .collect();
        for (r, _) in &due {
            parked.remove(r);
        }
        for (to, p) in due {
            self.send_records(to, p, out);
        }
    }

    fn update_leader_commit(&mut self, now: u64, out: &mut Vec<Action>) {
        let Role::Leader { progress, .. } = &self.role else {
            return;
        };
        let mut matches: Vec<Offset> = progress.values().map(|p| p.durable_end).collect();
        matches.push(self.durable_end);
        let index = quorum_commit(self.commit, &matches, self.epoch, &self.epochs);
        if index > self.commit {
            self.commit = index;
            out.push(Action::Commit { index });
            self.answer_parked(now, true, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower() -> Replica {
        let config = Config {
            id: ReplicaId(1),
            voters: vec![ReplicaId(0), ReplicaId(1), ReplicaId(2)],
            election_timeout_ms: 150,
            fetch_timeout_ms: 50,
            fetch_wait_ms: 100,
            check_quorum_ms: 300,
            fetch_records_max: 64,
            seed: 1,
        };
        let none = Persisted {
            epoch: LeaderEpoch(0),
            voted_for: None,
        };
        let mut r = Replica::new(config, none, Offset::ZERO, EpochCache::new(), 0);
        let out = r.receive(
            1,
            ReplicaId(0),
            Message::BeginEpoch {
                epoch: LeaderEpoch(1),
            },
        );
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Fetch { .. },
                ..
            }
        )));
        r
    }

    fn answer(request: u64, commit: i64, body: FetchBody) -> Message {
        Message::FetchAnswer {
            request,
            epoch: LeaderEpoch(1),
            commit: Offset(commit),
            body,
        }
    }

    fn records(base: i64, batches: &[(i32, u32)]) -> FetchBody {
        FetchBody::Records {
            base: Offset(base),
            batches: batches
                .iter()
                .map(|&(e, n)| BatchMeta {
                    epoch: LeaderEpoch(e),
                    records: n,
                })
                .collect(),
        }
    }

    fn refused(actions: &[Action]) -> bool {
        actions.iter().any(|a| matches!(a, Action::Refused { .. }))
    }

    #[test]
    fn a_follower_refuses_what_no_leader_sends_and_keeps_its_log() {
        let mut r = follower();
        let leader = ReplicaId(0);
        assert!(refused(&r.receive(
            2,
            leader,
            answer(1, 0, records(0, &[(1, 0)]))
        )));
        assert!(refused(&r.receive(
            3,
            leader,
            answer(1, 0, records(0, &[(2, 3)]))
        )));
        assert_eq!(r.log_end(), Offset::ZERO);
        // A good answer appends; once durable, the leader's commit index applies.
        let out = r.receive(4, leader, answer(1, 0, records(0, &[(1, 5)])));
        assert!(out.contains(&Action::Append {
            base: Offset::ZERO,
            batches: vec![BatchMeta {
                epoch: LeaderEpoch(1),
                records: 5
            }]
        }));
        let out = r.durable(5, Offset(5));
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Fetch { request: 2, .. },
                ..
            }
        )));
        r.receive(6, leader, answer(2, 5, records(5, &[])));
        assert_eq!(r.commit_index(), Offset(5));
        // Told to cut below what is committed: refused, nothing truncated.
        let cut = FetchBody::Diverging(Diverging {
            epoch: LeaderEpoch(1),
            end_offset: Offset(2),
        });
        let out = r.receive(7, leader, answer(2, 5, cut.clone()));
        assert!(out.is_empty(), "not the latest fetch's answer: ignored");
        let request = r.fetch_request;
        let out = r.receive(8, leader, answer(request, 5, cut));
        assert!(refused(&out));
        assert!(!out.iter().any(|a| matches!(a, Action::Truncate { .. })));
        assert_eq!(r.log_end(), Offset(5));
    }
}
