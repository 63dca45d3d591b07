//! One simulated replica's disk: a log of `(epoch, record id)`, the replica sets its
//! membership records state, how much of the log is durable, and the vote state.

use std::collections::BTreeMap;

use spate_engine::{LeaderEpoch, Offset};

use crate::epochs::EpochCache;
use crate::replica::{BatchKind, BatchMeta, Membership, Persisted, Recovered};

#[derive(Debug)]
pub(super) struct Storage {
    pub log: Vec<(LeaderEpoch, u64)>,
    /// Offset of each membership record → the replica set it states.
    pub memberships: BTreeMap<usize, Membership>,
    pub durable: usize,
    pub persisted: Persisted,
}

impl Storage {
    pub fn new() -> Storage {
        Storage {
            log: Vec::new(),
            memberships: BTreeMap::new(),
            durable: 0,
            persisted: Persisted {
                epoch: LeaderEpoch(0),
                voted_for: None,
            },
        }
    }

    pub fn truncate(&mut self, len: usize) {
        self.log.truncate(len);
        self.memberships.retain(|at, _| *at < len);
        self.durable = self.durable.min(len);
    }

    /// Appends `batches` at the log end, with one id per record.
    pub fn append(&mut self, batches: &[BatchMeta], ids: &[u64]) {
        let mut ids = ids.iter();
        for batch in batches {
            if let BatchKind::Membership(m) = &batch.kind {
                self.memberships.insert(self.log.len(), m.clone());
            }
            for _ in 0..batch.offsets {
                let id = *ids.next().expect("an id per record");
                self.log.push((batch.epoch, id));
            }
        }
        assert!(ids.next().is_none(), "an id per record, no more");
    }

    /// The records `[from, until)` as batches (runs of one epoch; a membership record
    /// alone), with their ids.
    pub fn read(&self, from: usize, until: usize) -> (Vec<BatchMeta>, Vec<u64>) {
        let mut batches: Vec<BatchMeta> = Vec::new();
        for (at, (epoch, _)) in self.log[from..until].iter().enumerate() {
            let at = from + at;
            if let Some(m) = self.memberships.get(&at) {
                let kind = BatchKind::Membership(m.clone());
                batches.push(BatchMeta {
                    epoch: *epoch,
                    offsets: 1,
                    kind,
                });
                continue;
            }
            match batches.last_mut() {
                Some(b) if b.epoch == *epoch && b.kind == BatchKind::Data => b.offsets += 1,
                _ => batches.push(BatchMeta::data(*epoch, 1)),
            }
        }
        let ids = self.log[from..until].iter().map(|(_, id)| *id).collect();
        (batches, ids)
    }

    /// What a restarting replica finds: everything that survived counts as durable.
    pub fn recovered(&self) -> Recovered {
        let mut epochs = EpochCache::new();
        for (i, (epoch, _)) in self.log.iter().enumerate() {
            epochs.assign(*epoch, Offset(i as i64));
        }
        let memberships = self
            .memberships
            .iter()
            .map(|(at, m)| (Offset(*at as i64), m.clone()))
            .collect();
        Recovered {
            persisted: self.persisted,
            log_start: Offset::ZERO,
            log_end: Offset(self.log.len() as i64),
            epochs,
            memberships,
        }
    }
}
