//! The follower's fetch loop (voters and learners alike).
//!
//! One fetch is outstanding at a time, numbered, and only the answer to the latest is
//! taken. After an append the follower fetches again once the append is durable, so
//! the durable end it reports is what the leader may count. It truncates only what
//! its leader says diverges, and never below its commit index; anything a correct
//! leader never sends is refused, not panicked on.

use spate_engine::limits::SEGMENT_BASE_LIMIT;
use spate_engine::{LeaderEpoch, Offset};

use super::{Action, BatchKind, BatchMeta, FetchBody, Message, Replica, ReplicaId, Role};
use crate::epochs::EpochCache;

impl Replica {
    pub(super) fn follower_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        let timed_out = self
            .fetch_sent_at
            .is_some_and(|at| now >= at + self.config.fetch_timeout_ms);
        if timed_out || (self.fetch_sent_at.is_none() && !self.waiting_for_disk()) {
            self.fetch(now, out);
        }
    }

    pub(super) fn follower_durable(&mut self, now: u64, out: &mut Vec<Action>) {
        self.update_follower_commit(out);
        if self.fetch_sent_at.is_none() && !self.waiting_for_disk() {
            self.fetch(now, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_fetch_answer(
        &mut self,
        now: u64,
        from: ReplicaId,
        request: u64,
        epoch: LeaderEpoch,
        commit: Offset,
        body: FetchBody,
        out: &mut Vec<Action>,
    ) {
        if epoch < self.epoch {
            return;
        }
        if let FetchBody::Fenced { leader } = body {
            // Not the leader: learn its epoch and leader, and fetch from that.
            let known = leader.is_some_and(|l| self.follows(l));
            if epoch > self.epoch || (leader.is_some() && !known && !self.is_leader()) {
                let leader = leader.filter(|l| *l != self.config.id);
                self.adopt(now, epoch, leader, out);
                self.fetch(now, out);
            } else if known {
                self.fetch_sent_at = None;
            }
            return;
        }
        if request != self.fetch_request {
            // An answer to an older fetch, late or duplicated: it describes a log this
            // replica may no longer have.
            return;
        }
        // Records and divergences come only from the leader of `epoch`.
        let following = self.follows(from);
        if epoch > self.epoch || !following {
            self.adopt(now, epoch, Some(from), out);
        }
        self.take_answer(now, from, commit, body, out);
    }

    pub(super) fn fetch(&mut self, now: u64, out: &mut Vec<Action>) {
        let Role::Follower { leader } = self.role else {
            return;
        };
        self.fetch_from(now, leader, out);
    }

    /// Sends the next fetch to `to`: the leader, or a voter an observer asks for it.
    pub(super) fn fetch_from(&mut self, now: u64, to: ReplicaId, out: &mut Vec<Action>) {
        let (last_fetched_epoch, fetch_offset) = self.last_log();
        self.fetch_request += 1;
        let message = Message::Fetch {
            request: self.fetch_request,
            epoch: self.epoch,
            fetch_offset,
            last_fetched_epoch,
            durable_end: self.durable_end,
            log_start: self.log_start,
        };
        self.fetch_sent_at = Some(now);
        self.send(to, message, out);
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
        self.leader_answered = true;
        self.reset_election(now);
        match body {
            FetchBody::Fenced { .. } => unreachable!("handled by on_fetch_answer"),
            FetchBody::Diverging(diverging) => {
                let cut = self.epochs.truncation_point(diverging, self.log_end);
                if cut < self.commit {
                    // Committed records are never removed: the leader is wrong (or not
                    // a leader). Refuse, and let the fetch timeout ask again.
                    let reason = format!(
                        "told to truncate to {cut:?}, below the commit index {:?}",
                        self.commit
                    );
                    return out.push(Action::Refused { from, reason });
                }
                if cut < self.log_end {
                    self.truncate(cut, out);
                }
                self.fetch(now, out);
            }
            FetchBody::Records { base, batches } => {
                self.take_records(now, from, commit, base, batches, out)
            }
            FetchBody::StartAt { log_start } => {
                if log_start <= self.log_end || log_start.0 >= SEGMENT_BASE_LIMIT {
                    let reason = format!(
                        "told to start over at {log_start:?}: our log ends at {:?}, and a log starts below {SEGMENT_BASE_LIMIT}",
                        self.log_end
                    );
                    return out.push(Action::Refused { from, reason });
                }
                self.restart_at(log_start, out);
                self.fetch(now, out);
            }
        }
    }

    /// Empties the log and starts it again at `at`, past its end: every offset below
    /// `at` is committed (a leader's log start never passes its commit index), so the
    /// commit index moves there with it. The replica sets the log stated stay in force:
    /// they were not undone, only their records deleted.
    fn restart_at(&mut self, at: Offset, out: &mut Vec<Action>) {
        assert!(at > self.log_end && self.commit <= self.log_end);
        self.epochs = EpochCache::new();
        self.log_start = at;
        self.log_end = at;
        self.durable_end = at;
        self.commit = at;
        self.leader_commit = self.leader_commit.max(at);
        out.push(Action::Restart { at });
    }

    fn truncate(&mut self, cut: Offset, out: &mut Vec<Action>) {
        assert!(cut >= self.commit, "committed records stay (R9)");
        self.epochs.truncate_to(cut);
        self.memberships.truncate_to(cut);
        self.log_end = cut;
        self.durable_end = self.durable_end.min(cut);
        out.push(Action::Truncate { to: cut });
    }

    fn take_records(
        &mut self,
        now: u64,
        from: ReplicaId,
        commit: Offset,
        base: Offset,
        batches: Vec<BatchMeta>,
        out: &mut Vec<Action>,
    ) {
        if base != self.log_end {
            // An answer to an older fetch (duplicated or delayed): ask again, unless an
            // append is on its way to disk (its durability fetches).
            if !self.waiting_for_disk() {
                self.fetch(now, out);
            }
            return;
        }
        if let Err(reason) = self.check_batches(&batches) {
            return out.push(Action::Refused { from, reason });
        }
        // The leader checked our log up to `base`: its commit index applies to our
        // durable prefix.
        self.leader_commit = self.leader_commit.max(commit);
        self.update_follower_commit(out);
        if batches.is_empty() {
            if !self.waiting_for_disk() {
                self.fetch(now, out);
            }
            return;
        }
        self.note_appended(base, &batches);
        out.push(Action::Append { base, batches });
    }

    /// Batches a leader may send: each spans offsets (a replica-set change exactly
    /// one), and their epochs never go back, neither from our last record's nor from
    /// one batch to the next, nor past the leader's epoch.
    fn check_batches(&self, batches: &[BatchMeta]) -> Result<(), String> {
        let mut last = self.last_log().0;
        for batch in batches {
            if batch.offsets == 0 {
                return Err("a batch spanning no offsets".into());
            }
            if matches!(batch.kind, BatchKind::Membership(_)) && batch.offsets != 1 {
                return Err("a replica-set batch spanning more than one offset".into());
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

    pub(super) fn update_follower_commit(&mut self, out: &mut Vec<Action>) {
        let index = self.leader_commit.min(self.durable_end);
        if index > self.commit {
            self.commit = index;
            out.push(Action::Commit { index });
        }
    }
}
