//! The checks after every simulated millisecond: R1 (one leader per epoch), R5 (a new
//! leader holds every acknowledged record), R7 (committed prefixes agree) and R10
//! (leaders are voters).

use super::{Sim, Violation};

impl Sim {
    pub(super) fn check(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            let Some(replica) = self.nodes[i].replica.as_ref() else {
                continue;
            };
            let me = replica.id();
            if !replica.is_leader() {
                continue;
            }
            if !replica.membership().is_voter(me) {
                let what = format!("R10: {me:?} leads but is not a voter");
                return Err(self.violation(what));
            }
            let epoch = replica.epoch();
            match self.leaders.get(&epoch) {
                Some(other) if *other != me => {
                    let what = format!("R1: {other:?} and {me:?} both lead {epoch:?}");
                    return Err(self.violation(what));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(epoch, me);
                    self.report.elections += 1;
                    let log = &self.nodes[i].storage.log;
                    for (id, offset) in &self.acknowledged {
                        if log.get(offset.0 as usize).map(|(_, r)| r) != Some(id) {
                            let what = format!(
                                "R5: new leader {me:?} of {epoch:?} lacks acknowledged record {id} at {offset:?}"
                            );
                            return Err(self.violation(what));
                        }
                    }
                }
            }
        }
        self.check_agreement()
    }

    /// R7: below the lower of two replicas' commit indexes, their logs are equal.
    fn check_agreement(&mut self) -> Result<(), Violation> {
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (na, nb) = (&self.nodes[a], &self.nodes[b]);
                let upto = na.commit_seen.min(nb.commit_seen).0 as usize;
                let upto = upto.min(na.storage.log.len()).min(nb.storage.log.len());
                let from = self.agreed.get(&(a, b)).copied().unwrap_or(0).min(upto);
                if na.storage.log[from..upto] != nb.storage.log[from..upto] {
                    let what = format!("R7: replicas {a} and {b} disagree below {upto}");
                    return Err(self.violation(what));
                }
                self.agreed.insert((a, b), upto);
            }
        }
        Ok(())
    }

    /// Node `i`'s log is now `len` long: agreement found above that no longer holds.
    pub(super) fn lower_agreed(&mut self, i: usize, len: usize) {
        for ((a, b), agreed) in self.agreed.iter_mut() {
            if *a == i || *b == i {
                *agreed = (*agreed).min(len);
            }
        }
    }
}
