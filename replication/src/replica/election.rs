//! Elections: pre-vote, vote, taking office and stepping down.
//!
//! Only voters of the set in force campaign, and a candidate counts only its voters'
//! answers (R10); but any replica answers a candidate, since the candidate may hold a
//! newer replica set than the one who answers. A vote is persisted before it is sent
//! (R3), and an epoch before anything that depends on it (R2).

use std::collections::{BTreeMap, BTreeSet};

use spate_engine::{LeaderEpoch, Offset};

use super::{Action, Leadership, Message, Progress, Replica, ReplicaId, Role};

impl Replica {
    /// Whether a log ending with `(last_epoch, end)` is at least as up to date as ours.
    fn up_to_date(&self, last: (LeaderEpoch, Offset)) -> bool {
        last >= self.last_log()
    }

    pub(super) fn on_pre_vote(
        &mut self,
        now: u64,
        from: ReplicaId,
        epoch: LeaderEpoch,
        last: (LeaderEpoch, Offset),
        out: &mut Vec<Action>,
    ) {
        let leader_alive = match self.role {
            Role::Leader(_) => true,
            Role::Follower { .. } => self
                .last_leader_contact
                .is_some_and(|at| now < at + self.config.election_timeout_ms),
            _ => false,
        };
        let granted = epoch > self.epoch && !leader_alive && self.up_to_date(last);
        let answer = Message::PreVoteAnswer {
            epoch,
            current: self.epoch,
            granted,
        };
        self.send(from, answer, out);
    }

    pub(super) fn on_pre_vote_answer(
        &mut self,
        now: u64,
        from: ReplicaId,
        (epoch, current): (LeaderEpoch, LeaderEpoch),
        granted: bool,
        out: &mut Vec<Action>,
    ) {
        let pre_candidate = matches!(self.role, Role::PreCandidate { .. });
        if pre_candidate && current > self.epoch {
            // Campaign from the answerer's epoch next time.
            return self.adopt(now, current, None, out);
        }
        let asked = epoch.0 == self.epoch.0 + 1;
        if granted && pre_candidate && asked && self.tally(from) {
            self.start_election(now, out);
        }
    }

    /// Counts a granted pre-vote or vote from `from`, if it is a voter of our set;
    /// whether a majority has granted now.
    fn tally(&mut self, from: ReplicaId) -> bool {
        let majority = self.membership().majority();
        if !self.membership().is_voter(from) {
            return false;
        }
        match &mut self.role {
            Role::PreCandidate { granted } | Role::Candidate { granted } => {
                granted.insert(from);
                granted.len() >= majority
            }
            _ => false,
        }
    }

    pub(super) fn on_vote(
        &mut self,
        now: u64,
        from: ReplicaId,
        epoch: LeaderEpoch,
        last: (LeaderEpoch, Offset),
        out: &mut Vec<Action>,
    ) {
        if epoch > self.epoch {
            self.adopt(now, epoch, None, out);
        }
        let free = self.voted_for.is_none_or(|v| v == from);
        let granted = epoch == self.epoch && free && !self.is_leader() && self.up_to_date(last);
        if granted && self.voted_for.is_none() {
            self.voted_for = Some(from);
            self.persist(out);
            self.reset_election(now);
        }
        let answer = Message::VoteAnswer {
            epoch: self.epoch,
            granted,
        };
        self.send(from, answer, out);
    }

    pub(super) fn on_vote_answer(
        &mut self,
        now: u64,
        from: ReplicaId,
        epoch: LeaderEpoch,
        granted: bool,
        out: &mut Vec<Action>,
    ) {
        if epoch > self.epoch {
            return self.adopt(now, epoch, None, out);
        }
        let candidate = matches!(self.role, Role::Candidate { .. });
        if granted && candidate && epoch == self.epoch && self.tally(from) {
            self.become_leader(now, out);
        }
    }

    pub(super) fn on_begin_epoch(
        &mut self,
        now: u64,
        from: ReplicaId,
        epoch: LeaderEpoch,
        out: &mut Vec<Action>,
    ) {
        let following = self.follows(from);
        if epoch > self.epoch || (epoch == self.epoch && !following && !self.is_leader()) {
            self.adopt(now, epoch, Some(from), out);
            if !self.waiting_for_disk() {
                self.fetch(now, out);
            }
        }
    }

    /// Our leader hands leadership to us: campaign at once, without a pre-vote (the
    /// leader is alive, so voters would refuse one).
    pub(super) fn on_end_epoch(
        &mut self,
        now: u64,
        from: ReplicaId,
        epoch: LeaderEpoch,
        out: &mut Vec<Action>,
    ) {
        let following = self.follows(from);
        if epoch == self.epoch && following && self.is_voter() {
            self.start_election(now, out);
        }
    }

    /// Moves to `epoch` (if newer) as follower of `leader`, or unattached.
    pub(super) fn adopt(
        &mut self,
        now: u64,
        epoch: LeaderEpoch,
        leader: Option<ReplicaId>,
        out: &mut Vec<Action>,
    ) {
        assert!(epoch >= self.epoch, "epochs never go back (R2)");
        if self.is_leader() {
            out.push(Action::Resigned);
        }
        if epoch > self.epoch {
            self.epoch = epoch;
            self.voted_for = None;
            self.persist(out);
        }
        self.fetch_sent_at = None;
        self.leader_answered = false;
        self.reset_election(now);
        match leader {
            Some(leader) => {
                self.role = Role::Follower { leader };
                self.last_leader_contact = Some(now);
            }
            None => self.role = Role::Unattached,
        }
    }

    pub(super) fn resign(&mut self, now: u64, out: &mut Vec<Action>) {
        out.push(Action::Resigned);
        self.role = Role::Unattached;
        self.reset_election(now);
    }

    pub(super) fn start_pre_vote(&mut self, now: u64, out: &mut Vec<Action>) {
        assert!(self.is_voter(), "only voters campaign (R10)");
        self.reset_election(now);
        self.fetch_sent_at = None;
        let (last_epoch, end) = self.last_log();
        let epoch = LeaderEpoch(self.epoch.0 + 1);
        self.role = Role::PreCandidate {
            granted: BTreeSet::from([self.config.id]),
        };
        if self.membership().majority() == 1 {
            return self.start_election(now, out);
        }
        for to in self.other_voters() {
            let message = Message::PreVote {
                epoch,
                last_epoch,
                end,
            };
            self.send(to, message, out);
        }
    }

    fn start_election(&mut self, now: u64, out: &mut Vec<Action>) {
        assert!(self.is_voter(), "only voters campaign (R10)");
        self.epoch = LeaderEpoch(self.epoch.0 + 1);
        self.voted_for = Some(self.config.id);
        self.persist(out);
        self.reset_election(now);
        self.fetch_sent_at = None;
        self.role = Role::Candidate {
            granted: BTreeSet::from([self.config.id]),
        };
        if self.membership().majority() == 1 {
            return self.become_leader(now, out);
        }
        let (last_epoch, end) = self.last_log();
        for to in self.other_voters() {
            let message = Message::Vote {
                epoch: self.epoch,
                last_epoch,
                end,
            };
            self.send(to, message, out);
        }
    }

    fn become_leader(&mut self, now: u64, out: &mut Vec<Action>) {
        self.role = Role::Leader(Box::new(Leadership {
            since: now,
            progress: BTreeMap::new(),
            parked: BTreeMap::new(),
            observers: BTreeMap::new(),
            transfer: None,
            preferred_checked_ms: now,
        }));
        self.fetch_sent_at = None;
        self.sync_progress(now, out);
        // The epoch marker: the first record of this epoch, so that older epochs'
        // entries commit once it does, without waiting for a client write.
        self.append_own(now, 1, None, out);
    }

    /// A fresh progress entry for a member the leader starts serving.
    pub(super) fn new_progress(now: u64) -> Progress {
        Progress {
            durable_end: Offset::ZERO,
            last_fetch_ms: now,
            commit_sent: Offset::ZERO,
            last_begin_ms: now,
            // In sync until shown otherwise, as Kafka keeps the ISR across a leader
            // change: a member that does not fetch drops out after the lag time.
            caught_up_ms: now,
            end_at_last_fetch: Offset::ZERO,
        }
    }
}
