//! Observers: replicas outside the replica set that follow the log where
//! `Config::observers` allows it (the metadata log on brokers that are not voters, as
//! KRaft's observers follow theirs).
//!
//! - **Finding the leader.** Nobody announces a leader to an observer (BeginEpoch goes
//!   to members only), so an observer that has not heard from a leader for an election
//!   timeout (plus a fetch wait) forgets it and sends its fetch to the voters in turn,
//!   one per probe interval (half an election timeout, at most a fetch timeout). A
//!   voter that does not lead answers `Fenced` with the leader it knows; the leader
//!   answers the fetch. From then on the observer runs the follower's fetch loop.
//! - **Serving them.** The leader answers observers' fetches as it answers members' —
//!   held while there is nothing new, checked for divergence, started over below its log
//!   start — but counts them nowhere: not toward the commit index, the quorum check or
//!   the in-sync replicas. It keeps at most `OBSERVERS_MAX` of them; one past that is
//!   not answered (it asks another voter and again later), and one that stops fetching
//!   is forgotten after a check-quorum interval.
//!
//! An observer never votes or campaigns (it is not a voter), and takes records only
//! from a replica that answers its fetch as the leader of an epoch at least its own, as
//! any follower does.

use spate_engine::Offset;

use super::{Action, FollowerLog, Observed, Parked, Replica, ReplicaId, Role};
use crate::limits::OBSERVERS_MAX;

impl Replica {
    pub(super) fn observer_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        // A caught-up observer hears from its leader at least once per fetch wait. A
        // leader it was only told of (by a voter that may not know it died) gets one
        // probe interval to answer.
        let quiet = if self.leader_answered {
            self.config.election_timeout_ms + self.config.fetch_wait_ms
        } else {
            self.probe_interval_ms() + self.config.fetch_wait_ms
        };
        let heard = self.last_leader_contact.is_some_and(|at| now < at + quiet);
        if matches!(self.role, Role::Follower { .. }) {
            if heard {
                return self.follower_tick(now, out);
            }
            // The leader has gone quiet: ask the voters who leads now.
            self.role = Role::Unattached;
            self.fetch_sent_at = None;
        }
        let asked = self
            .fetch_sent_at
            .is_some_and(|at| now < at + self.probe_interval_ms());
        if asked || self.waiting_for_disk() {
            return;
        }
        let voters = self.membership().voters();
        let to = voters[self.probe % voters.len()];
        self.probe = self.probe.wrapping_add(1);
        self.fetch_from(now, to, out);
    }

    /// How long an observer looking for the leader waits for a voter's answer before it
    /// asks the next one. A dead voter never answers and one still electing answers
    /// `Fenced` with no leader; waiting a whole fetch timeout for each of those put up
    /// to 5 s between a new leader and its observers at KRaft's timeouts. Half an
    /// election timeout finds a new leader within about one round of the voters after
    /// it is elected. (A resent fetch keeps the leader's held deadline, so asking a
    /// leader again before its held answer is due does not starve the observer.)
    fn probe_interval_ms(&self) -> u64 {
        let half_election = (self.config.election_timeout_ms / 2).max(1);
        self.config.fetch_timeout_ms.min(half_election)
    }

    /// A fetch from a replica outside the set, on a leader that serves observers.
    pub(super) fn answer_observer(
        &mut self,
        now: u64,
        from: ReplicaId,
        fetch: Parked,
        follower: FollowerLog,
        out: &mut Vec<Action>,
    ) {
        let leadership = self.leadership_mut().expect("leader");
        let known = leadership.observers.contains_key(&from);
        if !known && leadership.observers.len() >= OBSERVERS_MAX {
            return;
        }
        let observed = leadership.observers.entry(from).or_insert(Observed {
            commit_sent: Offset::ZERO,
            last_fetch_ms: now,
        });
        observed.last_fetch_ms = now;
        let commit_sent = observed.commit_sent;
        if self.answer_log_mismatch(now, from, fetch, follower, out) {
            return;
        }
        let news = fetch.fetch_offset < self.log_end || commit_sent < self.commit;
        let leadership = self.leadership_mut().expect("leader");
        if news {
            leadership.parked.remove(&from);
            self.send_records(from, fetch, out);
        } else {
            leadership.park(from, fetch);
        }
    }

    /// Forgets observers that have not fetched for a check-quorum interval, and their
    /// held fetches.
    pub(super) fn forget_observers(&mut self, now: u64) {
        let quiet = self.config.check_quorum_ms;
        let leadership = self.leadership_mut().expect("leader");
        let gone: Vec<ReplicaId> = leadership
            .observers
            .iter()
            .filter(|(_, o)| o.last_fetch_ms + quiet <= now)
            .map(|(r, _)| *r)
            .collect();
        for r in gone {
            leadership.observers.remove(&r);
            if !leadership.progress.contains_key(&r) {
                leadership.parked.remove(&r);
            }
        }
    }
}
