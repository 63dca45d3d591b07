//! The deterministic simulator: replicas of one partition on a virtual clock and a
//! seeded network, with faults, and a checker of `docs/REPLICATION.md`'s invariants
//! after every step.
//!
//! Each replica's storage is a model: a log of `(epoch, record id)`, how much of it is
//! durable (fsync completes after a random delay), and its persisted vote state. The
//! network delivers messages after random delays (so they reorder), and drops,
//! duplicates and partitions them as the seed decides. Crashes lose everything not yet
//! durable; a restart rebuilds the replica from what survived. Clients write to
//! whichever replica says it leads; a write is acknowledged when that leader's commit
//! index passes it while it still leads.
//!
//! Everything — fault schedule, delays, election timeouts — follows from the seed, so a
//! failure reproduces from its seed alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use spate_engine::{LeaderEpoch, Offset};

use crate::epochs::EpochCache;
use crate::replica::{
    Action, BatchMeta, Config, FetchBody, Message, Persisted, Replica, ReplicaId,
};
use crate::rng::SplitMix;

/// What a run injects.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability that a message is lost, and that it is delivered twice.
    pub loss: f64,
    pub duplicate: f64,
    /// Messages take 1..=`delay_max_ms`.
    pub delay_max_ms: u64,
    /// Per millisecond: the chance a partition starts, and that a replica crashes.
    pub partition_rate: f64,
    pub crash_rate: f64,
    /// How long partitions and crashes last at most.
    pub outage_max_ms: u64,
    /// Faults stop at this time; the run then checks that the group recovers.
    pub heal_at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub replicas: u32,
    pub faults: Faults,
    /// A client write is attempted every this many ms.
    pub write_every_ms: u64,
    /// After healing, a leader must commit a new write within this long.
    pub recovery_bound_ms: u64,
}

impl SimConfig {
    /// A run with moderate faults of every kind.
    pub fn standard(seed: u64, replicas: u32) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            faults: Faults {
                loss: 0.05,
                duplicate: 0.03,
                delay_max_ms: 8,
                partition_rate: 0.002,
                crash_rate: 0.0005,
                outage_max_ms: 600,
                heal_at_ms: 3_000,
            },
            write_every_ms: 5,
            recovery_bound_ms: 3_000,
        }
    }
}

/// A broken invariant, with the seed that shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} at {} ms: {}\nreproduce: SPATE_SIM_SEED={} cargo test -p spate-replication --test simulate",
            self.seed, self.at_ms, self.what, self.seed
        )
    }
}

/// What a run did, for the tests to judge that faults really happened.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub acknowledged: usize,
    pub elections: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub truncations: usize,
}

#[derive(Debug)]
struct Storage {
    log: Vec<(LeaderEpoch, u64)>,
    durable: usize,
    persisted: Persisted,
}

#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    storage: Storage,
    /// fsyncs in progress: (done at, durable up to).
    syncing: Vec<(u64, usize)>,
    down_until: u64,
    /// The commit index seen in this incarnation.
    commit_seen: Offset,
    /// Writes this node accepted as leader: (epoch, first offset, record ids).
    writes: Vec<(LeaderEpoch, Offset, Vec<u64>)>,
}

#[derive(Debug)]
struct InFlight {
    from: ReplicaId,
    to: ReplicaId,
    message: Message,
    /// Record ids for a `Records` answer.
    payload: Vec<u64>,
}

#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    rng: SplitMix,
    now: u64,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, InFlight>,
    sequence: u64,
    /// Directed links that drop everything, until a time.
    cut: BTreeMap<(u32, u32), u64>,
    next_record: u64,
    /// Acknowledged record id → its offset.
    acknowledged: BTreeMap<u64, Offset>,
    leaders: BTreeMap<LeaderEpoch, ReplicaId>,
    /// For each pair of replicas, how far their logs were found equal (R7), so each
    /// check compares only what was committed since; a log cut below it lowers it.
    agreed: BTreeMap<(usize, usize), usize>,
    report: Report,
}

fn replica_config(seed: u64, id: u32, replicas: u32) -> Config {
    Config {
        id: ReplicaId(id),
        voters: (0..replicas).map(ReplicaId).collect(),
        election_timeout_ms: 150,
        fetch_timeout_ms: 50,
        fetch_wait_ms: 100,
        check_quorum_ms: 300,
        fetch_records_max: 64,
        seed,
    }
}

fn epochs_of(log: &[(LeaderEpoch, u64)]) -> EpochCache {
    let mut cache = EpochCache::new();
    for (i, (epoch, _)) in log.iter().enumerate() {
        cache.assign(*epoch, Offset(i as i64));
    }
    cache
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let nodes = (0..config.replicas)
            .map(|id| Node {
                replica: Some(Replica::new(
                    replica_config(config.seed, id, config.replicas),
                    Persisted {
                        epoch: LeaderEpoch(0),
                        voted_for: None,
                    },
                    Offset::ZERO,
                    EpochCache::new(),
                    0,
                )),
                storage: Storage {
                    log: Vec::new(),
                    durable: 0,
                    persisted: Persisted {
                        epoch: LeaderEpoch(0),
                        voted_for: None,
                    },
                },
                syncing: Vec::new(),
                down_until: 0,
                commit_seen: Offset::ZERO,
                writes: Vec::new(),
            })
            .collect();
        Sim {
            rng: SplitMix::new(config.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5151),
            config,
            now: 0,
            nodes,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            sequence: 0,
            cut: BTreeMap::new(),
            next_record: 1,
            acknowledged: BTreeMap::new(),
            leaders: BTreeMap::new(),
            agreed: BTreeMap::new(),
            report: Report::default(),
        }
    }

    fn random(&mut self) -> u64 {
        self.rng.next()
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.random() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.config.seed,
            at_ms: self.now,
            what,
        }
    }

    /// Runs until healed + the recovery bound; checks every invariant after every
    /// millisecond, and liveness at the end: some write made after the faults healed
    /// must be acknowledged.
    pub fn run(mut self) -> Result<Report, Violation> {
        let heal = self.config.faults.heal_at_ms;
        let end = heal + self.config.recovery_bound_ms;
        let mut first_after_heal = u64::MAX;
        while self.now < end {
            self.now += 1;
            if self.now < heal {
                self.inject_faults();
            } else if self.now == heal {
                self.cut.clear();
                for node in &mut self.nodes {
                    node.down_until = node.down_until.min(heal);
                }
                first_after_heal = self.next_record;
            }
            self.restart_due();
            self.complete_syncs()?;
            self.deliver()?;
            for i in 0..self.nodes.len() {
                if let Some(replica) = self.nodes[i].replica.as_mut() {
                    let actions = replica.tick(self.now);
                    self.apply(i, actions, &[])?;
                }
            }
            if self.now % self.config.write_every_ms == 0 {
                self.client_write()?;
            }
            self.check()?;
        }
        if self.acknowledged.range(first_after_heal..).next().is_none() {
            return Err(self.violation(format!(
                "liveness: no write made after the faults healed was committed within {} ms",
                self.config.recovery_bound_ms
            )));
        }
        self.report.acknowledged = self.acknowledged.len();
        Ok(self.report)
    }

    fn inject_faults(&mut self) {
        let faults = self.config.faults.clone();
        let n = self.config.replicas as u64;
        if self.chance(faults.partition_rate) {
            let until = self.now + 1 + self.random() % faults.outage_max_ms;
            let a = (self.random() % n) as u32;
            let one_way = self.chance(0.3);
            for b in 0..n as u32 {
                if b != a {
                    self.cut.insert((a, b), until);
                    if !one_way {
                        self.cut.insert((b, a), until);
                    }
                }
            }
            self.report.partitions += 1;
        }
        if self.chance(faults.crash_rate) {
            let i = (self.random() % n) as usize;
            if self.nodes[i].replica.is_some() {
                let until = self.now + 1 + self.random() % faults.outage_max_ms;
                self.crash(i, until);
            }
        }
        let now = self.now;
        self.cut.retain(|_, until| *until > now);
    }

    /// Loses everything not durable; pending writes of this node fail.
    fn crash(&mut self, i: usize, until: u64) {
        let node = &mut self.nodes[i];
        node.replica = None;
        node.storage.log.truncate(node.storage.durable);
        node.syncing.clear();
        node.writes.clear();
        node.down_until = until;
        let len = node.storage.log.len();
        self.lower_agreed(i, len);
        self.report.crashes += 1;
    }

    fn restart_due(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.replica.is_none() && node.down_until <= self.now {
                let config =
                    replica_config(self.config.seed ^ self.now, i as u32, self.config.replicas);
                let log_end = Offset(node.storage.log.len() as i64);
                node.replica = Some(Replica::new(
                    config,
                    node.storage.persisted,
                    log_end,
                    epochs_of(&node.storage.log),
                    self.now,
                ));
                node.commit_seen = Offset::ZERO;
            }
        }
    }

    fn complete_syncs(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            let now = self.now;
            let node = &mut self.nodes[i];
            let done: Vec<usize> = node
                .syncing
                .iter()
                .filter(|(at, _)| *at <= now)
                .map(|(_, end)| *end)
                .collect();
            node.syncing.retain(|(at, _)| *at > now);
            let Some(&end) = done.iter().max() else {
                continue;
            };
            let end = end.min(node.storage.log.len());
            node.storage.durable = node.storage.durable.max(end);
            let durable = node.storage.durable;
            if let Some(replica) = node.replica.as_mut() {
                let actions = replica.durable(now, Offset(durable as i64));
                self.apply(i, actions, &[])?;
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let m = self
                .in_flight
                .remove(&seq)
                .expect("queued messages are in flight");
            let to = m.to.0 as usize;
            if self.cut.contains_key(&(m.from.0, m.to.0)) {
                continue;
            }
            if let Some(replica) = self.nodes[to].replica.as_mut() {
                let actions = replica.receive(self.now, m.from, m.message);
                self.apply(to, actions, &m.payload)?;
            }
        }
        Ok(())
    }

    fn send(&mut self, from: ReplicaId, to: ReplicaId, message: Message, payload: Vec<u64>) {
        if self.chance(self.config.faults.loss) {
            return;
        }
        let copies = if self.chance(self.config.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + 1 + self.random() % self.config.faults.delay_max_ms;
            self.sequence += 1;
            self.queue.push(Reverse((at, self.sequence)));
            let m = InFlight {
                from,
                to,
                message: message.clone(),
                payload: payload.clone(),
            };
            self.in_flight.insert(self.sequence, m);
        }
    }

    /// Carries out `actions` of node `i`, in order; `payload` holds the record ids of
    /// the message that caused them.
    fn apply(&mut self, i: usize, actions: Vec<Action>, payload: &[u64]) -> Result<(), Violation> {
        let me = ReplicaId(i as u32);
        let (seed, at_ms) = (self.config.seed, self.now);
        if std::env::var_os("SPATE_SIM_TRACE").is_some() && !actions.is_empty() {
            let epoch = self.nodes[i]
                .replica
                .as_ref()
                .map(|r| (r.epoch(), r.leader(), r.commit_index()));
            eprintln!(
                "{at_ms} {me:?} {epoch:?} len={} durable={}: {actions:?}",
                self.nodes[i].storage.log.len(),
                self.nodes[i].storage.durable
            );
        }
        let fail = |what: String| Violation { seed, at_ms, what };
        for action in actions {
            match action {
                Action::Persist(persisted) => {
                    let old = self.nodes[i].storage.persisted;
                    if persisted.epoch < old.epoch {
                        return Err(fail(format!(
                            "R2: {me:?} persisted epoch {:?} after {:?}",
                            persisted.epoch, old.epoch
                        )));
                    }
                    if persisted.epoch == old.epoch
                        && old.voted_for.is_some()
                        && persisted.voted_for != old.voted_for
                    {
                        return Err(
                            self.violation(format!("R3: {me:?} voted twice in {:?}", old.epoch))
                        );
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
                    let log = &self.nodes[i].storage.log;
                    let records = &log[from.0 as usize..until.0 as usize];
                    let mut batches: Vec<BatchMeta> = Vec::new();
                    for (e, _) in records {
                        match batches.last_mut() {
                            Some(b) if b.epoch == *e => b.records += 1,
                            _ => batches.push(BatchMeta {
                                epoch: *e,
                                records: 1,
                            }),
                        }
                    }
                    let ids = records.iter().map(|(_, id)| *id).collect();
                    let body = FetchBody::Records {
                        base: from,
                        batches,
                    };
                    self.send(
                        me,
                        to,
                        Message::FetchAnswer {
                            request,
                            epoch,
                            commit,
                            body,
                        },
                        ids,
                    );
                }
                Action::Append { base, batches } => {
                    let node = &mut self.nodes[i];
                    if base.0 as usize != node.storage.log.len() {
                        return Err(fail(format!(
                            "R9: {me:?} appends at {base:?} to a log of {}",
                            node.storage.log.len()
                        )));
                    }
                    let records: u32 = batches.iter().map(|b| b.records).sum();
                    let ids: Vec<u64> = if payload.len() == records as usize {
                        payload.to_vec()
                    } else {
                        // A leader's own append: a client write or its epoch marker.
                        let first = self.next_record;
                        self.next_record += u64::from(records);
                        (first..first + u64::from(records)).collect()
                    };
                    let node = &mut self.nodes[i];
                    let mut ids = ids.into_iter();
                    for b in &batches {
                        for _ in 0..b.records {
                            node.storage
                                .log
                                .push((b.epoch, ids.next().expect("an id per record")));
                        }
                    }
                    let delay = 1 + self.random() % 4;
                    let node = &mut self.nodes[i];
                    node.syncing
                        .push((self.now + delay, node.storage.log.len()));
                }
                Action::Truncate { to } => {
                    let node = &mut self.nodes[i];
                    let to = to.0 as usize;
                    if to < node.commit_seen.0 as usize {
                        return Err(fail(format!(
                            "R9: {me:?} truncates to {to}, below its commit index {:?}",
                            node.commit_seen
                        )));
                    }
                    node.storage.log.truncate(to);
                    node.storage.durable = node.storage.durable.min(to);
                    self.lower_agreed(i, to);
                    self.report.truncations += 1;
                }
                Action::Commit { index } => {
                    let node = &mut self.nodes[i];
                    if index < node.commit_seen {
                        return Err(fail(format!(
                            "R6: {me:?} commit index went from {:?} to {index:?}",
                            node.commit_seen
                        )));
                    }
                    node.commit_seen = index;
                    let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut node.writes)
                        .into_iter()
                        .partition(|(_, base, ids)| base.0 + ids.len() as i64 <= index.0);
                    node.writes = pending;
                    for (_, base, ids) in done {
                        for (k, id) in ids.into_iter().enumerate() {
                            self.acknowledged.insert(id, base.plus(k as i64));
                        }
                    }
                }
                Action::Resigned => self.nodes[i].writes.clear(),
                // Correct replicas never provoke a refusal: in the simulator it is a bug.
                Action::Refused { from, reason } => {
                    return Err(fail(format!(
                        "{me:?} refused a message of {from:?}: {reason}"
                    )));
                }
            }
        }
        Ok(())
    }

    fn client_write(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        let start = (self.random() % n as u64) as usize;
        for k in 0..n {
            let i = (start + k) % n;
            let records = 1 + (self.random() % 3) as u32;
            let Some(replica) = self.nodes[i].replica.as_mut() else {
                continue;
            };
            let epoch = replica.epoch();
            if let Ok((base, actions)) = replica.write(self.now, records) {
                let first = self.next_record;
                self.apply(i, actions, &[])?;
                let ids = (first..first + u64::from(records)).collect();
                self.nodes[i].writes.push((epoch, base, ids));
                return Ok(());
            }
        }
        Ok(())
    }

    /// R1, R5, R6 (followers), R7 and R8 after a step.
    fn check(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            let Some(replica) = self.nodes[i].replica.as_ref() else {
                continue;
            };
            let me = replica.id();
            if replica.is_leader() {
                let epoch = replica.epoch();
                match self.leaders.get(&epoch) {
                    Some(other) if *other != me => {
                        return Err(
                            self.violation(format!("R1: {other:?} and {me:?} both lead {epoch:?}"))
                        );
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert(epoch, me);
                        self.report.elections += 1;
                        // R5: a new leader holds every acknowledged record.
                        let log = &self.nodes[i].storage.log;
                        for (id, offset) in &self.acknowledged {
                            if log.get(offset.0 as usize).map(|(_, r)| r) != Some(id) {
                                return Err(self.violation(format!(
                                    "R5: new leader {me:?} of {epoch:?} lacks acknowledged record {id} at {offset:?}"
                                )));
                            }
                        }
                    }
                }
            } else if replica.commit_index().0 as usize > self.nodes[i].storage.durable {
                return Err(
                    self.violation(format!("R6: follower {me:?} commits past its durable end"))
                );
            }
        }
        // R7: committed prefixes agree.
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
    fn lower_agreed(&mut self, i: usize, len: usize) {
        for ((a, b), agreed) in self.agreed.iter_mut() {
            if *a == i || *b == i {
                *agreed = (*agreed).min(len);
            }
        }
    }
}
