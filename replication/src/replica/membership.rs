//! Replica sets and how they change: one replica at a time, so that any majority of
//! the old voters and any majority of the new ones share a replica.
//!
//! A replica set is in force from the offset of the control batch that states it,
//! whether or not that batch is committed yet. `Memberships` keeps every such batch
//! in a replica's log, so that a truncation reverts to the set before it. A leader
//! starts a change only once the previous one is committed and it has committed an
//! entry of its own epoch: with two changes in flight, old and new majorities could
//! be disjoint (the single-server-change bug Ongaro described in 2015).

use spate_engine::Offset;

use super::ReplicaId;

/// Who holds a partition: voters elect leaders and count toward commits; learners
/// fetch like followers but do neither (R10). The first voter is the preferred leader,
/// as the first replica of a Kafka assignment is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Membership {
    voters: Vec<ReplicaId>,
    learners: Vec<ReplicaId>,
}

/// One step of a replica-set change, asked of the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new replica starts fetching, without a vote.
    AddLearner(ReplicaId),
    /// A learner that has caught up to the commit index becomes a voter.
    Promote(ReplicaId),
    /// A learner or a voter other than the leader leaves.
    Remove(ReplicaId),
}

/// Why a leader did not start a change; every case leaves the replica set as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("not the leader")]
    NotLeader,
    /// Recoverable: try again once the earlier change (or the leader's epoch marker)
    /// has committed, or the transfer has ended.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// Recoverable: the learner has not caught up to the commit index yet.
    #[error("replica {0:?} has not caught up to the commit index")]
    Lagging(ReplicaId),
    #[error("{0}")]
    Invalid(String),
}

impl Membership {
    /// A replica set: at least one voter, no replica twice.
    pub fn new(voters: Vec<ReplicaId>, learners: Vec<ReplicaId>) -> Result<Membership, String> {
        if voters.is_empty() {
            return Err("a replica set needs a voter".into());
        }
        let mut all: Vec<ReplicaId> = voters.iter().chain(&learners).copied().collect();
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!(
                "a replica appears twice in voters {voters:?}, learners {learners:?}"
            ));
        }
        Ok(Membership { voters, learners })
    }

    pub fn voters(&self) -> &[ReplicaId] {
        &self.voters
    }

    pub fn learners(&self) -> &[ReplicaId] {
        &self.learners
    }

    pub fn is_voter(&self, id: ReplicaId) -> bool {
        self.voters.contains(&id)
    }

    pub fn is_member(&self, id: ReplicaId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Voters and learners.
    pub fn members(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }

    pub fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    pub fn preferred_leader(&self) -> ReplicaId {
        self.voters[0]
    }

    /// The set after `change`, asked of `leader`; the caller checks timing (one change
    /// at a time) and catch-up.
    pub fn apply(&self, change: Change, leader: ReplicaId) -> Result<Membership, ChangeError> {
        let mut next = self.clone();
        match change {
            Change::AddLearner(id) => {
                if self.is_member(id) {
                    return Err(ChangeError::Invalid(format!("{id:?} is already a replica")));
                }
                next.learners.push(id);
            }
            Change::Promote(id) => {
                if !self.learners.contains(&id) {
                    return Err(ChangeError::Invalid(format!("{id:?} is not a learner")));
                }
                next.learners.retain(|l| *l != id);
                next.voters.push(id);
            }
            Change::Remove(id) if id == leader => {
                return Err(ChangeError::Invalid(
                    "the leader cannot remove itself: transfer leadership first".into(),
                ));
            }
            Change::Remove(id) => {
                if !self.is_member(id) {
                    return Err(ChangeError::Invalid(format!("{id:?} is not a replica")));
                }
                next.voters.retain(|v| *v != id);
                next.learners.retain(|l| *l != id);
            }
        }
        debug_assert!(Membership::new(next.voters.clone(), next.learners.clone()).is_ok());
        Ok(next)
    }
}

/// The replica sets stated in one replica's log, latest last, over the set the
/// partition was created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memberships {
    initial: Membership,
    entries: Vec<(Offset, Membership)>,
}

impl Memberships {
    pub fn new(initial: Membership) -> Memberships {
        Memberships {
            initial,
            entries: Vec::new(),
        }
    }

    /// The set in force: the latest in the log.
    pub fn current(&self) -> &Membership {
        self.entries.last().map_or(&self.initial, |(_, m)| m)
    }

    /// Where the latest change sits in the log, if any.
    pub fn latest_offset(&self) -> Option<Offset> {
        self.entries.last().map(|(o, _)| *o)
    }

    /// A membership batch was appended at `offset`, past every earlier one.
    pub fn assign(&mut self, offset: Offset, membership: Membership) {
        assert!(
            self.latest_offset().is_none_or(|o| o < offset),
            "membership batches are appended in offset order"
        );
        self.entries.push((offset, membership));
    }

    /// The log now ends at `log_end`: changes at or past it are gone.
    pub fn truncate_to(&mut self, log_end: Offset) {
        self.entries.retain(|(o, _)| *o < log_end);
    }

    pub fn entries(&self) -> &[(Offset, Membership)] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ids: &[u32]) -> Vec<ReplicaId> {
        ids.iter().map(|i| ReplicaId(*i)).collect()
    }

    #[test]
    fn sets_change_one_replica_at_a_time_and_refuse_nonsense() {
        assert!(Membership::new(vec![], r(&[1])).is_err());
        assert!(Membership::new(r(&[0, 1]), r(&[1])).is_err());
        let m = Membership::new(r(&[0, 1, 2]), vec![]).unwrap();
        let leader = ReplicaId(0);
        let m = m.apply(Change::AddLearner(ReplicaId(3)), leader).unwrap();
        assert_eq!(
            (m.voters(), m.learners()),
            (&r(&[0, 1, 2])[..], &r(&[3])[..])
        );
        assert!(!m.is_voter(ReplicaId(3)) && m.is_member(ReplicaId(3)));
        assert!(m.apply(Change::AddLearner(ReplicaId(3)), leader).is_err());
        assert!(m.apply(Change::Promote(ReplicaId(1)), leader).is_err());
        let m = m.apply(Change::Promote(ReplicaId(3)), leader).unwrap();
        assert_eq!(m.majority(), 3);
        assert!(matches!(
            m.apply(Change::Remove(leader), leader),
            Err(ChangeError::Invalid(_))
        ));
        let m = m.apply(Change::Remove(ReplicaId(1)), leader).unwrap();
        assert_eq!(m.voters(), &r(&[0, 2, 3])[..]);
        assert_eq!(m.preferred_leader(), leader);
    }

    #[test]
    fn a_truncation_reverts_to_the_earlier_set() {
        let first = Membership::new(r(&[0, 1, 2]), vec![]).unwrap();
        let second = first
            .apply(Change::AddLearner(ReplicaId(3)), ReplicaId(0))
            .unwrap();
        let third = second
            .apply(Change::Promote(ReplicaId(3)), ReplicaId(0))
            .unwrap();
        let mut log = Memberships::new(first.clone());
        log.assign(Offset(10), second.clone());
        log.assign(Offset(20), third.clone());
        assert_eq!(log.current(), &third);
        log.truncate_to(Offset(21));
        assert_eq!(log.current(), &third);
        log.truncate_to(Offset(20));
        assert_eq!(log.current(), &second);
        log.truncate_to(Offset(0));
        assert_eq!(log.current(), &first);
        assert_eq!(log.latest_offset(), None);
    }
}
