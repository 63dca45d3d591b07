//! The leader: client appends, answering fetches (with long poll), the commit index,
//! replica-set changes and leadership transfer.
//!
//! The leader serves the members of the set in force (voters and learners) and counts
//! only voters toward the commit index and check quorum (R10). A change starts only
//! once the previous one and an entry of the leader's own epoch are committed. During
//! a transfer the leader takes no appends, so that the target can reach its log end;
//! the transfer is abandoned after one election timeout.

use spate_engine::{LeaderEpoch, Offset};

use super::{
    Action, BatchKind, BatchMeta, Change, ChangeError, FetchBody, FollowerLog, Leadership,
    Membership, Message, NotLeader, Parked, Replica, ReplicaId, Role, Transfer,
};
use crate::commit::quorum_commit;

impl Leadership {
    /// Holds `fetch` until there is something to answer. A fetch sent again from the
    /// same offset keeps the deadline of the one it replaces: a follower whose fetch
    /// timeout is shorter than the wait must still get its answer.
    pub(super) fn park(&mut self, from: ReplicaId, mut fetch: Parked) {
        if let Some(old) = self.parked.get(&from) {
            if old.fetch_offset == fetch.fetch_offset {
                fetch.deadline = fetch.deadline.min(old.deadline);
            }
        }
        self.parked.insert(from, fetch);
    }
}

impl Replica {
    fn leadership(&self) -> Option<&Leadership> {
        match &self.role {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }

    pub(super) fn leadership_mut(&mut self) -> Option<&mut Leadership> {
        match &mut self.role {
            Role::Leader(l) => Some(l),
            _ => None,
        }
    }

    /// A client appends `records` records; returns the offset of the first.
    pub fn write(&mut self, now: u64, records: u32) -> Result<(Offset, Vec<Action>), NotLeader> {
        if !self.is_leader() || self.transferring() {
            return Err(NotLeader);
        }
        assert!(records > 0);
        let mut out = Vec::new();
        let base = self.append_own(now, records, None, &mut out);
        self.answer_parked(now, true, &mut out);
        Ok((base, out))
    }

    /// Appends a batch of the leader's own epoch: client records, its epoch marker, or
    /// a replica set (in force from now on).
    pub(super) fn append_own(
        &mut self,
        now: u64,
        records: u32,
        membership: Option<Membership>,
        out: &mut Vec<Action>,
    ) -> Offset {
        let base = self.log_end;
        let batch = BatchMeta {
            epoch: self.epoch,
            offsets: records,
            kind: membership.map_or(BatchKind::Data, BatchKind::Membership),
        };
        let changes_members = matches!(batch.kind, BatchKind::Membership(_));
        self.note_appended(base, std::slice::from_ref(&batch));
        out.push(Action::Append {
            base,
            batches: vec![batch],
        });
        if changes_members {
            self.sync_progress(now, out);
        }
        base
    }

    /// Starts one replica-set change: appends the new set, in force at once.
    pub fn change(&mut self, now: u64, change: Change) -> Result<Vec<Action>, ChangeError> {
        let me = self.config.id;
        let Some(leadership) = self.leadership() else {
            return Err(ChangeError::NotLeader);
        };
        if leadership.transfer.is_some() {
            return Err(ChangeError::Busy("a leadership transfer is in progress"));
        }
        let epoch_start = match self.epochs.latest() {
            Some((epoch, start)) if epoch == self.epoch => start,
            _ => unreachable!("a leader's log ends in its own epoch (its marker)"),
        };
        if self.commit <= epoch_start {
            return Err(ChangeError::Busy("no entry of this epoch is committed yet"));
        }
        if self
            .memberships
            .latest_offset()
            .is_some_and(|o| o >= self.commit)
        {
            return Err(ChangeError::Busy(
                "the previous change is not committed yet",
            ));
        }
        let next = self.membership().apply(change, me)?;
        if let Change::Promote(id) = change {
            let caught_up = leadership
                .progress
                .get(&id)
                .is_some_and(|p| p.durable_end >= self.commit);
            if !caught_up {
                return Err(ChangeError::Lagging(id));
            }
        }
        let mut out = Vec::new();
        self.append_own(now, 1, Some(next), &mut out);
        self.answer_parked(now, true, &mut out);
        Ok(out)
    }

    /// Hands leadership to voter `to`: appends stop until it leads, or until one
    /// election timeout has passed and this leader carries on.
    pub fn transfer(&mut self, now: u64, to: ReplicaId) -> Result<Vec<Action>, ChangeError> {
        let Some(leadership) = self.leadership() else {
            return Err(ChangeError::NotLeader);
        };
        if to == self.config.id || !self.membership().is_voter(to) {
            return Err(ChangeError::Invalid(format!(
                "{to:?} is not another voter of this partition"
            )));
        }
        if leadership.transfer.is_some() {
            return Err(ChangeError::Busy("a leadership transfer is in progress"));
        }
        let deadline = now + self.config.election_timeout_ms;
        self.leadership_mut().expect("leader").transfer = Some(Transfer {
            to,
            deadline,
            sent_ms: None,
        });
        let mut out = Vec::new();
        self.advance_transfer(now, &mut out);
        Ok(out)
    }

    /// Tells the transfer's target to campaign once it holds our whole log durably.
    fn advance_transfer(&mut self, now: u64, out: &mut Vec<Action>) {
        let (epoch, log_end, resend) = (self.epoch, self.log_end, self.config.fetch_timeout_ms);
        let Some(leadership) = self.leadership_mut() else {
            return;
        };
        let Some(transfer) = leadership.transfer.as_mut() else {
            return;
        };
        let caught_up = leadership
            .progress
            .get(&transfer.to)
            .is_some_and(|p| p.durable_end >= log_end);
        let due = transfer.sent_ms.is_none_or(|at| at + resend <= now);
        if caught_up && due {
            transfer.sent_ms = Some(now);
            let to = transfer.to;
            self.send(to, Message::EndEpoch { epoch }, out);
        }
    }

    pub(super) fn leader_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        let leadership = self.leadership().expect("leader");
        let membership = self.membership();
        let heard = leadership
            .progress
            .iter()
            .filter(|(r, p)| {
                membership.is_voter(**r) && p.last_fetch_ms + self.config.check_quorum_ms >= now
            })
            .count()
            + 1;
        if heard < membership.majority() && now >= leadership.since + self.config.check_quorum_ms {
            return self.resign(now, out);
        }
        let leadership = self.leadership_mut().expect("leader");
        if leadership.transfer.is_some_and(|t| now >= t.deadline) {
            leadership.transfer = None;
        }
        self.advance_transfer(now, out);
        self.forget_observers(now);
        self.check_preferred_leader(now, out);
        self.announce(now, out);
        self.answer_parked(now, false, out);
    }

    /// Hands leadership back to the preferred replica (the first voter) once it is
    /// alive and caught up to the commit index, as Kafka's preferred-leader election.
    fn check_preferred_leader(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(every) = self.config.preferred_leader_check_ms else {
            return;
        };
        let preferred = self.membership().preferred_leader();
        let (commit, quiet, me) = (self.commit, self.config.fetch_timeout_ms, self.config.id);
        let leadership = self.leadership_mut().expect("leader");
        if now < leadership.preferred_checked_ms + every || leadership.transfer.is_some() {
            return;
        }
        leadership.preferred_checked_ms = now;
        let ready = leadership
            .progress
            .get(&preferred)
            .is_some_and(|p| p.last_fetch_ms + quiet > now && p.durable_end >= commit);
        if preferred != me && ready {
            let started = self.transfer(now, preferred);
            out.extend(started.expect("the preferred replica is another voter"));
        }
    }

    pub(super) fn on_fetch(
        &mut self,
        now: u64,
        from: ReplicaId,
        epoch: LeaderEpoch,
        fetch: Parked,
        follower: FollowerLog,
        out: &mut Vec<Action>,
    ) {
        if epoch > self.epoch {
            self.adopt(now, epoch, None, out);
        }
        if epoch == self.epoch && self.is_leader() {
            // Replicas outside the set (removed, or not added yet) are served only
            // where observers are.
            if self.membership().is_member(from) {
                self.answer_fetch(now, from, fetch, follower, out);
            } else if self.config.observers {
                self.answer_observer(now, from, fetch, follower, out);
            }
        } else {
            let answer = Message::FetchAnswer {
                request: fetch.request,
                epoch: self.epoch,
                commit: self.commit,
                body: FetchBody::Fenced {
                    leader: self.leader(),
                },
            };
            self.send(from, answer, out);
        }
    }

    fn answer_fetch(
        &mut self,
        now: u64,
        from: ReplicaId,
        fetch: Parked,
        follower: FollowerLog,
        out: &mut Vec<Action>,
    ) {
        if self.answer_log_mismatch(now, from, fetch, follower, out) {
            return;
        }
        let (fetch_offset, durable_end) = (fetch.fetch_offset, follower.durable_end);
        let log_end = self.log_end;
        let leadership = self.leadership_mut().expect("leader");
        // The follower's log agrees with ours up to `fetch_offset`, so its durable
        // prefix up to there counts toward the commit index.
        let progress = leadership
            .progress
            .get_mut(&from)
            .expect("members have progress");
        progress.durable_end = progress.durable_end.max(durable_end.min(fetch_offset));
        progress.last_fetch_ms = now;
        if fetch_offset >= progress.end_at_last_fetch.min(log_end) {
            progress.caught_up_ms = now;
        }
        progress.end_at_last_fetch = log_end;
        leadership.park(from, fetch);
        // Answers every held fetch if the commit index moves, this one included.
        self.update_leader_commit(now, out);
        self.advance_transfer(now, out);
        let commit = self.commit;
        let leadership = self.leadership_mut().expect("leader");
        let stale = leadership.progress[&from].commit_sent < commit;
        if leadership.parked.contains_key(&from) && (fetch_offset < log_end || stale) {
            leadership.parked.remove(&from);
            self.send_records(from, fetch, out);
        }
    }

    /// Answers a fetch whose follower log does not continue ours: one from below our
    /// log start (start over there) or one that diverges (truncate first). Returns
    /// whether it answered.
    pub(super) fn answer_log_mismatch(
        &mut self,
        now: u64,
        from: ReplicaId,
        fetch: Parked,
        follower: FollowerLog,
        out: &mut Vec<Action>,
    ) -> bool {
        if fetch.fetch_offset < self.log_start {
            self.start_over(now, from, fetch, out);
            return true;
        }
        let Some(diverging) = self.epochs.diverging(
            (follower.last_fetched_epoch, fetch.fetch_offset),
            follower.log_start,
            self.log_end,
        ) else {
            return false;
        };
        let answer = Message::FetchAnswer {
            request: fetch.request,
            epoch: self.epoch,
            commit: self.commit,
            body: FetchBody::Diverging(diverging),
        };
        self.send(from, answer, out);
        true
    }

    /// Answers a fetch below this log's start: the follower lacks only records deleted
    /// here, so it starts over at our log start. It is alive, though not caught up.
    fn start_over(&mut self, now: u64, from: ReplicaId, fetch: Parked, out: &mut Vec<Action>) {
        let (epoch, commit, log_start) = (self.epoch, self.commit, self.log_start);
        let leadership = self.leadership_mut().expect("leader");
        if let Some(progress) = leadership.progress.get_mut(&from) {
            progress.last_fetch_ms = now;
        }
        let answer = Message::FetchAnswer {
            request: fetch.request,
            epoch,
            commit,
            body: FetchBody::StartAt { log_start },
        };
        self.send(from, answer, out);
    }

    /// Serves exactly the other members of the set in force: new ones are announced
    /// to, removed ones forgotten.
    pub(super) fn sync_progress(&mut self, now: u64, out: &mut Vec<Action>) {
        let members = self.other_members();
        let epoch = self.epoch;
        let leadership = self.leadership_mut().expect("leader");
        leadership.progress.retain(|r, _| members.contains(r));
        // An observer added to the set is served as a member from now on.
        leadership.observers.retain(|r, _| !members.contains(r));
        let observers = &leadership.observers;
        leadership
            .parked
            .retain(|r, _| members.contains(r) || observers.contains_key(r));
        for to in members {
            if let std::collections::btree_map::Entry::Vacant(entry) = leadership.progress.entry(to)
            {
                entry.insert(Replica::new_progress(now));
                out.push(Action::Send {
                    to,
                    message: Message::BeginEpoch { epoch },
                });
            }
        }
        if leadership
            .transfer
            .is_some_and(|t| !leadership.progress.contains_key(&t.to))
        {
            leadership.transfer = None;
        }
    }

    /// Announces the leader again to members that have not fetched for a fetch
    /// timeout: a lost BeginEpoch must not leave a replica unattached for good.
    fn announce(&mut self, now: u64, out: &mut Vec<Action>) {
        let quiet = self.config.fetch_timeout_ms;
        let epoch = self.epoch;
        let leadership = self.leadership_mut().expect("leader");
        for (to, p) in leadership.progress.iter_mut() {
            if p.last_fetch_ms + quiet <= now && p.last_begin_ms + quiet <= now {
                p.last_begin_ms = now;
                out.push(Action::Send {
                    to: *to,
                    message: Message::BeginEpoch { epoch },
                });
            }
        }
    }

    pub(super) fn send_records(&mut self, to: ReplicaId, fetch: Parked, out: &mut Vec<Action>) {
        let from = fetch.fetch_offset;
        let until = self
            .log_end
            .min(from.plus(self.config.fetch_records_max as i64));
        let commit = self.commit;
        let leadership = self.leadership_mut().expect("leader");
        if let Some(p) = leadership.progress.get_mut(&to) {
            p.commit_sent = commit;
        } else if let Some(o) = leadership.observers.get_mut(&to) {
            o.commit_sent = commit;
        }
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
    pub(super) fn answer_parked(&mut self, now: u64, all: bool, out: &mut Vec<Action>) {
        let Some(leadership) = self.leadership_mut() else {
            return;
        };
        let due: Vec<(ReplicaId, Parked)> = leadership
            .parked
            .iter()
            .filter(|(_, p)| all || p.deadline <= now)
            .map(|(r, p)| (*r, *p))
            .collect();
        for (r, _) in &due {
            leadership.parked.remove(r);
        }
        for (to, p) in due {
            self.send_records(to, p, out);
        }
    }

    pub(super) fn update_leader_commit(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(leadership) = self.leadership() else {
            return;
        };
        let membership = self.membership();
        assert!(self.is_voter(), "a leader is a voter of the set in force");
        let mut matches: Vec<Offset> = leadership
            .progress
            .iter()
            .filter(|(r, _)| membership.is_voter(**r))
            .map(|(_, p)| p.durable_end)
            .collect();
        matches.push(self.durable_end);
        assert_eq!(matches.len(), membership.voters().len());
        let index = quorum_commit(self.commit, &matches, self.epoch, &self.epochs);
        if index > self.commit {
            self.commit = index;
            out.push(Action::Commit { index });
            self.answer_parked(now, true, out);
        }
    }
}
