//! Consumer-group membership for the benchmark's consumers (`--group true`).
//!
//! Each member runs on a plain thread with the blocking group client
//! (`spate_net::client::member`, Kafka's classic protocol and range assignor, the same
//! code as `spate consume --group`): it joins, heartbeats every `HEARTBEAT_INTERVAL`,
//! rejoins when the group rebalances, and leaves when its consumer is done. It
//! publishes each generation's partitions; the consumer task reads them between fetches.
//! Membership is bookkeeping beside the load, so it stays off the glommio executors.
//! Offsets are not committed: a benchmark's positions live in its consumers, and the run
//! starts only once the group has settled (`settle`), so each partition has one reader.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_net::client::errors::failure;
use spate_net::client::member::{must_rejoin, Member};

use crate::setup;

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// One member's state, shared between its thread and its consumer task.
#[derive(Debug, Default)]
pub struct Membership {
    /// 0 until the first assignment; then one more for each.
    generation: AtomicU64,
    /// The group's own generation id of the current partitions.
    group_generation: AtomicI64,
    partitions: Mutex<BTreeSet<(String, i32)>>,
    failure: Mutex<Option<String>>,
    done: AtomicBool,
}

impl Membership {
    /// Starts a member of `group` subscribed to `topics`.
    pub fn start(bootstrap: String, group: String, topics: Vec<String>) -> Arc<Membership> {
        let membership = Arc::new(Membership::default());
        let shared = membership.clone();
        std::thread::spawn(move || {
            if let Err(why) = shared.serve(&bootstrap, &group, &topics) {
                *shared.failure.lock().expect("not poisoned") = Some(why);
            }
        });
        membership
    }

    /// The generation of the partitions `partitions` returns; 0 before the first.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn partitions(&self) -> BTreeSet<(String, i32)> {
        self.partitions.lock().expect("not poisoned").clone()
    }

    /// Why the member could not join or lost its membership, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("not poisoned").clone()
    }

    /// The consumer is done: leave the group.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    fn publish(&self, group_generation: i32, partitions: BTreeSet<(String, i32)>) {
        *self.partitions.lock().expect("not poisoned") = partitions;
        self.group_generation
            .store(i64::from(group_generation), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Waits until every member has joined and all hold the same group generation, so
    /// the load starts on a settled assignment: members that join one after another
    /// each cause a rebalance, and a partition moving between members mid-run would be
    /// read again from the run's start offsets (no offsets are committed).
    pub fn settle(members: &[Arc<Membership>], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(why) = members.iter().find_map(|m| m.failure()) {
                return Err(why);
            }
            let first = members
                .first()
                .map(|m| m.group_generation.load(Ordering::Acquire));
            let joined = members.iter().all(|m| m.generation() > 0);
            if joined
                && members
                    .iter()
                    .all(|m| Some(m.group_generation.load(Ordering::Acquire)) == first)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the consumer group did not settle within {}s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn serve(&self, bootstrap: &str, group: &str, topics: &[String]) -> Result<(), String> {
        let client = setup::connect(bootstrap).map_err(|e| e.to_string())?;
        let (mut member, partitions) = Member::join(client, group, topics)?;
        self.publish(member.generation(), partitions);
        let mut beat = Instant::now();
        while !self.done.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
            if beat.elapsed() < HEARTBEAT_INTERVAL {
                continue;
            }
            beat = Instant::now();
            match member.heartbeat()? {
                0 => {}
                code if must_rejoin(code) => {
                    let partitions = member.rejoin()?;
                    self.publish(member.generation(), partitions);
                }
                code => {
                    return Err(failure(
                        &format!("lost the membership of group \"{group}\""),
                        code,
                    ))
                }
            }
        }
        member.leave();
        Ok(())
    }
}
