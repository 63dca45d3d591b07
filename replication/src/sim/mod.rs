//! The deterministic simulator: replicas of one partition on a virtual clock and a
//! seeded network, with faults, and a checker of `docs/REPLICATION.md`'s invariants
//! after every step.
//!
//! Each replica's storage is a model (`storage`): a log of `(epoch, record id)` plus
//! the replica sets it states, how much of it is durable (fsync completes after a
//! random delay), and its persisted vote state. The network delivers messages after
//! random delays (so they reorder), and drops, duplicates and partitions them as the
//! seed decides. A crash loses what was not durable, except that a random part of the
//! unsynced tail may survive, as pages the kernel wrote on its own do (recovery cuts a
//! torn last batch, so what survives is a prefix). A restart rebuilds the replica from
//! what survived. Replicas' clocks jump forward, and replicas stall (a long GC or VM
//! pause) and wake to a pile of old messages. The leader is asked to change the
//! replica set (add a learner, promote it, remove a replica) and to hand leadership
//! over. Clients write to whichever replica says it leads; a write is acknowledged
//! when that leader's commit index passes it while it still leads.
//!
//! Everything — fault schedule, delays, election timeouts — follows from the seed, so a
//! failure reproduces from its seed alone.

mod apply;
mod check;
mod storage;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use spate_engine::{LeaderEpoch, Offset};

use crate::replica::{Change, Config, Membership, Message, Replica, ReplicaId};
use crate::rng::SplitMix;
use storage::Storage;

/// What a run injects.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability that a message is lost, and that it is delivered twice.
    pub loss: f64,
    pub duplicate: f64,
    /// Messages take 1..=`delay_max_ms`.
    pub delay_max_ms: u64,
    /// Per millisecond: the chance a partition starts, that a replica crashes, that a
    /// replica stalls, and that a replica's clock jumps forward.
    pub partition_rate: f64,
    pub crash_rate: f64,
    pub stall_rate: f64,
    pub clock_jump_rate: f64,
    /// How long partitions, crashes and stalls last at most.
    pub outage_max_ms: u64,
    /// Per millisecond: the chance the leader is asked for a replica-set change, and
    /// for a leadership transfer.
    pub change_rate: f64,
    pub transfer_rate: f64,
    /// Faults stop at this time; the run then checks that the group recovers.
    pub heal_at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Voters the partition starts with.
    pub replicas: u32,
    /// Further brokers, outside the replica set until a change adds them.
    pub spares: u32,
    pub faults: Faults,
    /// A client write is attempted every this many ms.
    pub write_every_ms: u64,
    /// After healing, a leader must commit a new write within this long.
    pub recovery_bound_ms: u64,
    /// Whether leaders hand leadership back to the preferred replica.
    pub preferred_leader_check_ms: Option<u64>,
    /// Whether spares follow the log as observers before they are added
    /// (`replica::Config::observers`).
    pub observers: bool,
}

impl SimConfig {
    /// A run with moderate faults of every kind. Odd seeds rebalance leadership to the
    /// preferred replica; in half the seeds (0 and 1 mod 4) spares observe.
    pub fn standard(seed: u64, replicas: u32) -> SimConfig {
        SimConfig {
            seed,
            replicas,
            spares: 1,
            faults: Faults {
                loss: 0.05,
                duplicate: 0.03,
                delay_max_ms: 8,
                partition_rate: 0.002,
                crash_rate: 0.0005,
                stall_rate: 0.0003,
                clock_jump_rate: 0.0005,
                outage_max_ms: 600,
                change_rate: 0.004,
                transfer_rate: 0.0005,
                heal_at_ms: 3_000,
            },
            write_every_ms: 5,
            recovery_bound_ms: 3_000,
            preferred_leader_check_ms: (seed % 2 == 1).then_some(400),
            observers: seed % 4 < 2,
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
    /// Crashes after which part of the unsynced tail survived.
    pub torn_tails: usize,
    pub partitions: usize,
    pub stalls: usize,
    pub clock_jumps: usize,
    pub truncations: usize,
    /// Replica-set changes a leader accepted, and transfers it started.
    pub changes: usize,
    pub transfers: usize,
}

impl Report {
    pub fn add(&mut self, other: &Report) {
        self.acknowledged += other.acknowledged;
        self.elections += other.elections;
        self.crashes += other.crashes;
        self.torn_tails += other.torn_tails;
        self.partitions += other.partitions;
        self.stalls += other.stalls;
        self.clock_jumps += other.clock_jumps;
        self.truncations += other.truncations;
        self.changes += other.changes;
        self.transfers += other.transfers;
    }
}

#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    storage: Storage,
    /// fsyncs in progress: (done at, durable up to).
    syncing: Vec<(u64, usize)>,
    down_until: u64,
    /// A stalled replica neither ticks nor hears anything until then.
    stalled_until: u64,
    /// How far this replica's clock runs ahead of the simulator's (jumps only forward).
    clock_ahead_ms: u64,
    /// The commit index seen in this incarnation.
    commit_seen: Offset,
    /// Writes this node accepted as leader: (epoch, first offset, record ids).
    writes: Vec<(LeaderEpoch, Offset, Vec<u64>)>,
}

impl Node {
    fn clock(&self, now: u64) -> u64 {
        now + self.clock_ahead_ms
    }

    fn running(&self, now: u64) -> bool {
        self.replica.is_some() && self.stalled_until <= now
    }
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

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let nodes = (0..config.replicas + config.spares)
            .map(|_| Node {
                replica: None,
                storage: Storage::new(),
                syncing: Vec::new(),
                down_until: 0,
                stalled_until: 0,
                clock_ahead_ms: 0,
                commit_seen: Offset::ZERO,
                writes: Vec::new(),
            })
            .collect();
        let mut sim = Sim {
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
        };
        sim.restart_due();
        sim
    }

    /// Every broker starts with the partition's initial replica set; spares are not in
    /// it, so they wait to be added.
    fn replica_config(&self, id: u32, seed: u64) -> Config {
        let voters = (0..self.config.replicas).map(ReplicaId).collect();
        Config {
            id: ReplicaId(id),
            membership: Membership::new(voters, vec![]).expect("distinct voters"),
            election_timeout_ms: 150,
            fetch_timeout_ms: 50,
            fetch_wait_ms: 100,
            check_quorum_ms: 300,
            fetch_records_max: 64,
            preferred_leader_check_ms: self.config.preferred_leader_check_ms,
            observers: self.config.observers,
            seed,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng.next()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.random() % n
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
                self.ask_leader()?;
            } else if self.now == heal {
                self.cut.clear();
                for node in &mut self.nodes {
                    node.down_until = node.down_until.min(heal);
                    node.stalled_until = node.stalled_until.min(heal);
                }
                first_after_heal = self.next_record;
            }
            self.restart_due();
            self.complete_syncs()?;
            self.deliver()?;
            for i in 0..self.nodes.len() {
                if !self.nodes[i].running(self.now) {
                    continue;
                }
                let clock = self.nodes[i].clock(self.now);
                let actions = self.nodes[i].replica.as_mut().expect("running").tick(clock);
                self.apply(i, actions, &[])?;
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
        self.check_observers_caught_up(first_after_heal)?;
        self.report.acknowledged = self.acknowledged.len();
        Ok(self.report)
    }

    /// Liveness of observers: by the end, each one running holds the first write
    /// acknowledged after the faults healed as committed.
    fn check_observers_caught_up(&self, first_after_heal: u64) -> Result<(), Violation> {
        if !self.config.observers {
            return Ok(());
        }
        let Some((_, offset)) = self.acknowledged.range(first_after_heal..).next() else {
            return Ok(());
        };
        for node in &self.nodes {
            let Some(replica) = node.replica.as_ref() else {
                continue;
            };
            let observer = !replica.membership().is_member(replica.id());
            if observer && node.running(self.now) && node.commit_seen <= *offset {
                return Err(self.violation(format!(
                    "liveness: observer {:?} has committed only below {:?}, short of acknowledged offset {offset:?}",
                    replica.id(),
                    node.commit_seen
                )));
            }
        }
        Ok(())
    }

    fn inject_faults(&mut self) {
        let faults = self.config.faults.clone();
        let n = self.nodes.len() as u64;
        if self.chance(faults.partition_rate) {
            let until = self.now + 1 + self.below(faults.outage_max_ms);
            let a = self.below(n) as u32;
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
            let i = self.below(n) as usize;
            if self.nodes[i].replica.is_some() {
                let until = self.now + 1 + self.below(faults.outage_max_ms);
                self.crash(i, until);
            }
        }
        if self.chance(faults.stall_rate) {
            let i = self.below(n) as usize;
            let until = self.now + 1 + self.below(faults.outage_max_ms / 2);
            self.nodes[i].stalled_until = self.nodes[i].stalled_until.max(until);
            self.report.stalls += 1;
        }
        if self.chance(faults.clock_jump_rate) {
            let i = self.below(n) as usize;
            let jump = 1 + self.below(300);
            self.nodes[i].clock_ahead_ms += jump;
            self.report.clock_jumps += 1;
        }
        let now = self.now;
        self.cut.retain(|_, until| *until > now);
    }

    /// Asks the current leader, now and then, for a replica-set change or a transfer.
    /// A refusal (busy, lagging) is fine; a change that breaks safety is the checker's
    /// to find.
    fn ask_leader(&mut self) -> Result<(), Violation> {
        let faults = self.config.faults.clone();
        let change = self.chance(faults.change_rate);
        let transfer = self.chance(faults.transfer_rate);
        if !change && !transfer {
            return Ok(());
        }
        let now = self.now;
        let Some(i) = (0..self.nodes.len()).find(|i| {
            self.nodes[*i].running(now)
                && self.nodes[*i]
                    .replica
                    .as_ref()
                    .is_some_and(|r| r.is_leader())
        }) else {
            return Ok(());
        };
        let clock = self.nodes[i].clock(now);
        let membership = self.nodes[i]
            .replica
            .as_ref()
            .expect("leader")
            .membership()
            .clone();
        let me = ReplicaId(i as u32);
        let others: Vec<ReplicaId> = membership
            .voters()
            .iter()
            .copied()
            .filter(|v| *v != me)
            .collect();
        if transfer && !others.is_empty() {
            let to = others[self.below(others.len() as u64) as usize];
            let replica = self.nodes[i].replica.as_mut().expect("leader");
            if let Ok(actions) = replica.transfer(clock, to) {
                self.report.transfers += 1;
                self.apply(i, actions, &[])?;
            }
        }
        if change {
            let Some(change) = self.pick_change(&membership, me) else {
                return Ok(());
            };
            let Some(replica) = self.nodes[i].replica.as_mut().filter(|r| r.is_leader()) else {
                return Ok(());
            };
            if let Ok(actions) = replica.change(clock, change) {
                self.report.changes += 1;
                self.apply(i, actions, &[])?;
            }
        }
        Ok(())
    }

    /// A change that keeps the voters within one of the initial count: promote a
    /// learner (or drop it), add a spare as learner, or remove a voter other than the
    /// leader.
    fn pick_change(&mut self, membership: &Membership, leader: ReplicaId) -> Option<Change> {
        let replicas = self.config.replicas as usize;
        let voters = membership.voters().len();
        if let Some(&learner) = membership.learners().first() {
            return Some(if self.chance(0.8) && voters <= replicas {
                Change::Promote(learner)
            } else {
                Change::Remove(learner)
            });
        }
        let outsiders: Vec<ReplicaId> = (0..self.nodes.len() as u32)
            .map(ReplicaId)
            .filter(|r| !membership.is_member(*r))
            .collect();
        let removable: Vec<ReplicaId> = membership
            .voters()
            .iter()
            .copied()
            .filter(|v| *v != leader)
            .collect();
        let add = !outsiders.is_empty() && (voters <= replicas && self.chance(0.5));
        if add {
            let pick = self.below(outsiders.len() as u64) as usize;
            Some(Change::AddLearner(outsiders[pick]))
        } else if voters + 1 > replicas && !removable.is_empty() {
            let pick = self.below(removable.len() as u64) as usize;
            Some(Change::Remove(removable[pick]))
        } else {
            None
        }
    }

    /// Loses everything not durable, but a random prefix of the unsynced tail; pending
    /// writes of this node fail.
    fn crash(&mut self, i: usize, until: u64) {
        let unsynced = self.nodes[i].storage.log.len() - self.nodes[i].storage.durable;
        let survives = if unsynced > 0 && self.chance(0.5) {
            self.report.torn_tails += 1;
            1 + self.below(unsynced as u64) as usize
        } else {
            0
        };
        let node = &mut self.nodes[i];
        node.replica = None;
        let len = node.storage.durable + survives;
        node.storage.truncate(len);
        node.storage.durable = len;
        node.syncing.clear();
        node.writes.clear();
        node.down_until = until;
        self.lower_agreed(i, len);
        self.report.crashes += 1;
    }

    fn restart_due(&mut self) {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if node.replica.is_some() || node.down_until > self.now {
                continue;
            }
            let config = self.replica_config(i as u32, self.config.seed ^ self.now);
            let node = &mut self.nodes[i];
            let replica = Replica::new(config, node.storage.recovered(), node.clock(self.now));
            node.replica = Some(replica);
            node.commit_seen = Offset::ZERO;
        }
    }

    fn complete_syncs(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            let now = self.now;
            if !self.nodes[i].running(now) {
                continue;
            }
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
            let clock = node.clock(now);
            let replica = node.replica.as_mut().expect("running");
            let actions = replica.durable(clock, Offset(durable as i64));
            self.apply(i, actions, &[])?;
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        let mut held = Vec::new();
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let to = self.in_flight[&seq].to.0 as usize;
            if self.nodes[to].replica.is_some() && !self.nodes[to].running(self.now) {
                // A stalled replica hears it when it wakes.
                held.push((self.nodes[to].stalled_until, seq));
                continue;
            }
            let m = self
                .in_flight
                .remove(&seq)
                .expect("queued messages are in flight");
            if self.cut.contains_key(&(m.from.0, m.to.0)) {
                continue;
            }
            let clock = self.nodes[to].clock(self.now);
            if let Some(replica) = self.nodes[to].replica.as_mut() {
                let actions = replica.receive(clock, m.from, m.message);
                self.apply(to, actions, &m.payload)?;
            }
        }
        for entry in held {
            self.queue.push(Reverse(entry));
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
            let at = self.now + 1 + self.below(self.config.faults.delay_max_ms);
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

    fn client_write(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        let start = self.below(n as u64) as usize;
        for k in 0..n {
            let i = (start + k) % n;
            let records = 1 + self.below(3) as u32;
            if !self.nodes[i].running(self.now) {
                continue;
            }
            let clock = self.nodes[i].clock(self.now);
            let replica = self.nodes[i].replica.as_mut().expect("running");
            let epoch = replica.epoch();
            if let Ok((base, actions)) = replica.write(clock, records) {
                let first = self.next_record;
                self.apply(i, actions, &[])?;
                let ids = (first..first + u64::from(records)).collect();
                self.nodes[i].writes.push((epoch, base, ids));
                return Ok(());
            }
        }
        Ok(())
    }
}
