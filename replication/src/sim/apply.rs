//! Carrying out a replica's actions against the simulated disk and network, and
//! checking on the way what each action must respect (R2, R3, R6, R8, R9).

use spate_engine::Offset;

use super::{Sim, Violation};
use crate::replica::{Action, FetchBody, Message, ReplicaId};

impl Sim {
    /// Carries out `actions` of node `i`, in order; `payload` holds the record ids of
    /// the message that caused them.
    pub(super) fn apply(
        &mut self,
        i: usize,
        actions: Vec<Action>,
        payload: &[u64],
    ) -> Result<(), Violation> {
        if std::env::var_os("SPATE_SIM_TRACE").is_some() && !actions.is_empty() {
            self.trace(i, &actions);
        }
        for action in actions {
            self.apply_one(i, action, payload)?;
        }
        Ok(())
    }

    fn trace(&self, i: usize, actions: &[Action]) {
        let node = &self.nodes[i];
        let state = node.replica.as_ref().map(|r| {
            let m = r.membership();
            (r.epoch(), r.leader(), r.commit_index(), m.voters().to_vec())
        });
        eprintln!(
            "{} {i} {state:?} len={} durable={}: {actions:?}",
            self.now,
            node.storage.log.len(),
            node.storage.durable
        );
    }

    fn apply_one(&mut self, i: usize, action: Action, payload: &[u64]) -> Result<(), Violation> {
        let me = ReplicaId(i as u32);
        match action {
            Action::Persist(persisted) => {
                let old = self.nodes[i].storage.persisted;
                if persisted.epoch < old.epoch {
                    let what = format!(
                        "R2: {me:?} persisted epoch {:?} after {:?}",
                        persisted.epoch, old.epoch
                    );
                    return Err(self.violation(what));
                }
                if persisted.epoch == old.epoch
                    && old.voted_for.is_some()
                    && persisted.voted_for != old.voted_for
                {
                    let what = format!("R3: {me:?} voted twice in {:?}", old.epoch);
                    return Err(self.violation(what));
                }
                self.nodes[i].storage.persisted = persisted;
            }
            Action::Send { to, message } => self.send(me, to, message, Vec::new()),
            Action::SendRecords {
                to,
                request,
                epoch,
                commit,
                from,
                until,
            } => {
                let storage = &self.nodes[i].storage;
                let (batches, ids) = storage.read(from.0 as usize, until.0 as usize);
                let body = FetchBody::Records {
                    base: from,
                    batches,
                };
                let message = Message::FetchAnswer {
                    request,
                    epoch,
                    commit,
                    body,
                };
                self.send(me, to, message, ids);
            }
            Action::Append { base, batches } => {
                let len = self.nodes[i].storage.log.len();
                if base.0 as usize != len {
                    let what = format!("R9: {me:?} appends at {base:?} to a log of {len}");
                    return Err(self.violation(what));
                }
                let records: u32 = batches.iter().map(|b| b.offsets).sum();
                let ids: Vec<u64> = if payload.len() == records as usize {
                    payload.to_vec()
                } else {
                    // A leader's own append: a client write, its epoch marker, or a
                    // replica set.
                    let first = self.next_record;
                    self.next_record += u64::from(records);
                    (first..first + u64::from(records)).collect()
                };
                self.nodes[i].storage.append(&batches, &ids);
                // Now and then the disk is slow, so crashes find unsynced tails.
                let delay = if self.chance(0.1) {
                    5 + self.below(45)
                } else {
                    1 + self.below(4)
                };
                let node = &mut self.nodes[i];
                node.syncing
                    .push((self.now + delay, node.storage.log.len()));
            }
            Action::Truncate { to } => {
                let node = &mut self.nodes[i];
                let to = to.0 as usize;
                if to < node.commit_seen.0 as usize {
                    let what = format!(
                        "R9: {me:?} truncates to {to}, below its commit index {:?}",
                        node.commit_seen
                    );
                    return Err(self.violation(what));
                }
                node.storage.truncate(to);
                self.lower_agreed(i, to);
                self.report.truncations += 1;
            }
            Action::Commit { index } => self.committed(i, index)?,
            // Simulated logs never move their start (no retention, no DeleteRecords), so
            // no leader has a reason to send `StartAt`.
            Action::Restart { at } => {
                let what = format!("{me:?} restarts its log at {at:?} with no log start moved");
                return Err(self.violation(what));
            }
            Action::Resigned => self.nodes[i].writes.clear(),
            // Correct replicas never provoke a refusal: in the simulator it is a bug.
            Action::Refused { from, reason } => {
                let what = format!("{me:?} refused a message of {from:?}: {reason}");
                return Err(self.violation(what));
            }
        }
        Ok(())
    }

    /// Node `i`'s commit index moved to `index`: it never goes back (R6); on a leader,
    /// a majority of the voters it counts hold the records durably (R8, R10), and the
    /// writes it took below `index` are acknowledged.
    fn committed(&mut self, i: usize, index: Offset) -> Result<(), Violation> {
        let me = ReplicaId(i as u32);
        let seen = self.nodes[i].commit_seen;
        if index < seen {
            let what = format!("R6: {me:?} commit index went from {seen:?} to {index:?}");
            return Err(self.violation(what));
        }
        self.nodes[i].commit_seen = index;
        let replica = self.nodes[i].replica.as_ref().expect("a running replica");
        if !replica.is_leader() && index.0 as usize > self.nodes[i].storage.durable {
            // A leader that steps down keeps its index, which may pass its own durable
            // end; a follower never raises its index past its own.
            let what = format!("R6: follower {me:?} commits {index:?} past its durable end");
            return Err(self.violation(what));
        }
        if replica.is_leader() && index > Offset::ZERO {
            let upto = index.0 as usize;
            let mine = &self.nodes[i].storage.log[..upto];
            let voters = replica.membership().voters().to_vec();
            let holding = voters
                .iter()
                .filter(|v| {
                    let s = &self.nodes[v.0 as usize].storage;
                    s.durable >= upto && s.log[..upto] == *mine
                })
                .count();
            if holding < voters.len() / 2 + 1 {
                let what = format!(
                    "R8: leader {me:?} committed {index:?} held durably by {holding} of voters {voters:?}"
                );
                return Err(self.violation(what));
            }
        }
        let node = &mut self.nodes[i];
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut node.writes)
            .into_iter()
            .partition(|(_, base, ids)| base.0 + ids.len() as i64 <= index.0);
        node.writes = pending;
        for (_, base, ids) in done {
            for (k, id) in ids.into_iter().enumerate() {
                self.acknowledged.insert(id, base.plus(k as i64));
            }
        }
        Ok(())
    }
}
