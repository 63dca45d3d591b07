//! A consumer group member over the blocking client: Kafka's classic protocol with the
//! range assignor. It joins (answering MEMBER_ID_REQUIRED), assigns as leader, syncs,
//! heartbeats, reads and commits offsets, and leaves. `spate consume --group` and the
//! benchmark's group consumers use it; the caller decides when to heartbeat and reacts
//! to the errors `must_rejoin` names by calling `rejoin`.
//!
//! The coordinator may move (its broker died, or its `__consumer_offsets` partition got
//! another leader): a connection that breaks, or NOT_COORDINATOR or
//! COORDINATOR_NOT_AVAILABLE, sends the member to ask FindCoordinator of every broker
//! it knows (the first given and those its metadata named) until one names a
//! coordinator that answers, for up to `route::FOLLOW_LEADERS`; then it joins again.
//! A new coordinator that does not know the member (the group's last record predates
//! it) answers UNKNOWN_MEMBER_ID, and the member joins as a new one, as Kafka's
//! consumers do.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::{ApiKey, GroupId};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;

use super::errors::failure;
use super::lookup::{
    ask_metadata, broker_addresses, commit_request, first_commit_error, partitions_of, topic_name,
};
use super::route::FOLLOW_LEADERS;
use super::Client;
use crate::group::consumer_protocol;

/// The session timeout a member asks for, and how long a rebalance may take it.
pub const SESSION_TIMEOUT_MS: i32 = 10_000;
pub const REBALANCE_TIMEOUT_MS: i32 = 30_000;

/// A consumer group member: its coordinator connection, id, generation and topics.
#[derive(Debug)]
pub struct Member {
    coordinator: Client,
    /// Set when the coordinator stopped answering as one: `rejoin` finds it first.
    coordinator_lost: bool,
    /// Every broker address known, to find the coordinator again; bounded by the
    /// brokers the metadata named at join, plus the first given.
    brokers: Vec<String>,
    group: String,
    topics: Vec<String>,
    id: String,
    generation: i32,
}

/// Whether a group error means the coordinator moved (or is still loading the group):
/// it is to be found again, after a pause.
fn coordinator_moved(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
        )
    )
}

/// Whether a heartbeat or commit error means the member must join the group again: a
/// rebalance, a coordinator that moved, or one that no longer knows this member or its
/// generation.
pub fn must_rejoin(code: i16) -> bool {
    coordinator_moved(code)
        || matches!(
            ResponseError::try_from_code(code),
            Some(
                ResponseError::RebalanceInProgress
                    | ResponseError::UnknownMemberId
                    | ResponseError::IllegalGeneration
            )
        )
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

/// Kafka's range assignor: for each topic, consecutive ranges of partitions to the
/// members subscribed to it, in member-id order, the first ones taking one more.
pub fn range_assign(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .iter()
        .map(|(m, _)| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, count) in partitions {
        let mut subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect();
        subscribers.sort();
        if subscribers.is_empty() {
            continue;
        }
        let (each, extra) = (
            *count as usize / subscribers.len(),
            *count as usize % subscribers.len(),
        );
        let mut next = 0;
        for (i, m) in subscribers.iter().enumerate() {
            let n = each + usize::from(i < extra);
            let mine: Vec<i32> = (next..next + n).map(|p| p as i32).collect();
            next += n;
            if !mine.is_empty() {
                out.get_mut(*m).expect("member").insert(topic.clone(), mine);
            }
        }
    }
    out
}

impl Member {
    /// Joins `group` through `bootstrap`, subscribed to `topics`; returns the member and
    /// its partitions.
    pub fn join(
        mut bootstrap: Client,
        group: &str,
        topics: &[String],
    ) -> Result<(Member, BTreeSet<(String, i32)>), String> {
        let first = bootstrap.address().to_string();
        let metadata = ask_metadata(&mut bootstrap, &[]).map_err(|e| e.to_string())?;
        let mut brokers = vec![first.clone()];
        brokers.extend(
            broker_addresses(&metadata)
                .into_values()
                .filter(|a| *a != first),
        );
        // The coordinator is found by `rejoin`, which waits for one while it is being
        // chosen (the first FindCoordinator of a cluster creates `__consumer_offsets`).
        let mut member = Member {
            coordinator: bootstrap,
            coordinator_lost: true,
            brokers,
            group: group.to_string(),
            topics: topics.to_vec(),
            id: String::new(),
            generation: -1,
        };
        let assigned = member.rejoin()?;
        Ok((member, assigned))
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group generation this member last synced in.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Joins (again) and returns this member's partitions; finds the coordinator again
    /// first if it was lost, and whenever it turns out to have moved.
    pub fn rejoin(&mut self) -> Result<BTreeSet<(String, i32)>, String> {
        for attempt in 0..=FOLLOW_LEADERS.retries {
            if self.coordinator_lost {
                if attempt > 0 {
                    std::thread::sleep(FOLLOW_LEADERS.backoff);
                }
                self.relocate()?;
            }
            if let Some(assigned) = self.join_and_sync()? {
                return Ok(assigned);
            }
        }
        Err(format!(
            "could not join group \"{}\": its coordinator kept moving ({} tries)",
            self.group,
            FOLLOW_LEADERS.retries + 1
        ))
    }

    /// One join and sync; `None` if the coordinator moved meanwhile.
    fn join_and_sync(&mut self) -> Result<Option<BTreeSet<(String, i32)>>, String> {
        let metadata = consumer_protocol::encode_subscription(&self.topics);
        let joined = loop {
            let request = JoinGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_session_timeout_ms(SESSION_TIMEOUT_MS)
                .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
                .with_member_id(StrBytes::from_string(self.id.clone()))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(metadata.clone())]);
            let Some(joined) = self.call(5, &request)? else {
                return Ok(None);
            };
            if coordinator_moved(joined.error_code) {
                self.coordinator_lost = true;
                return Ok(None);
            }
            match ResponseError::try_from_code(joined.error_code) {
                Some(ResponseError::MemberIdRequired) => self.id = joined.member_id.to_string(),
                Some(ResponseError::UnknownMemberId) => self.id.clear(),
                Some(_) => {
                    return Err(failure(
                        &format!("could not join group \"{}\"", self.group),
                        joined.error_code,
                    ))
                }
                None => break joined,
            }
        };
        self.id = joined.member_id.to_string();
        self.generation = joined.generation_id;
        let assignments = if joined.leader == joined.member_id {
            let members: Vec<(String, Vec<String>)> = joined
                .members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        consumer_protocol::subscription_topics(&m.metadata).unwrap_or_default(),
                    )
                })
                .collect();
            let topics: Vec<String> = members
                .iter()
                .flat_map(|(_, ts)| ts.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let partitions = partitions_of(&mut self.coordinator, &topics)?;
            let mut counts: BTreeMap<String, i32> = BTreeMap::new();
            for (t, _) in &partitions {
                *counts.entry(t.clone()).or_default() += 1;
            }
            range_assign(&members, &counts)
                .iter()
                .map(|(m, ps)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(m.clone()))
                        .with_assignment(consumer_protocol::encode_assignment(ps))
                })
                .collect()
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.id.clone()))
            .with_assignments(assignments);
        let Some(synced) = self.call(3, &request)? else {
            return Ok(None);
        };
        if coordinator_moved(synced.error_code) {
            self.coordinator_lost = true;
            return Ok(None);
        }
        if must_rejoin(synced.error_code) {
            // A rebalance began, or this member is no longer known: join again.
            if synced.error_code == ResponseError::UnknownMemberId.code() {
                self.id.clear();
            }
            return Ok(None);
        }
        if synced.error_code != 0 {
            return Err(failure(
                &format!("could not sync with group \"{}\"", self.group),
                synced.error_code,
            ));
        }
        Ok(Some(
            consumer_protocol::assignment_partitions(&synced.assignment)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        ))
    }

    /// Sends `request` to the coordinator. `Ok(None)`: the connection broke, and the
    /// coordinator is to be found again.
    fn call<R: Request>(
        &mut self,
        version: i16,
        request: &R,
    ) -> Result<Option<R::Response>, String> {
        match self.coordinator.send(version, request) {
            Ok(answer) => Ok(Some(answer)),
            Err(e) if e.is_connection() => {
                self.coordinator_lost = true;
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// `call`, finding the coordinator again while it cannot be reached, for up to
    /// `FOLLOW_LEADERS`: for requests that need no membership.
    fn call_wherever<R: Request>(
        &mut self,
        version: i16,
        request: &R,
    ) -> Result<R::Response, String> {
        for attempt in 0..=FOLLOW_LEADERS.retries {
            if self.coordinator_lost {
                if attempt > 0 {
                    std::thread::sleep(FOLLOW_LEADERS.backoff);
                }
                self.relocate()?;
            }
            if let Some(answer) = self.call(version, request)? {
                return Ok(answer);
            }
        }
        Err(format!(
            "lost the coordinator of group \"{}\" ({} tries)",
            self.group,
            FOLLOW_LEADERS.retries + 1
        ))
    }

    /// Finds the coordinator through the brokers known and connects to it.
    fn relocate(&mut self) -> Result<(), String> {
        let request =
            FindCoordinatorRequest::default().with_key(StrBytes::from_string(self.group.clone()));
        let mut last = String::from("no broker known");
        for address in self.brokers.clone() {
            match self.coordinator_via(&address, &request) {
                Ok(coordinator) => {
                    self.coordinator = coordinator;
                    self.coordinator_lost = false;
                    return Ok(());
                }
                Err(e) => last = format!("{address}: {e}"),
            }
        }
        // Tried again by `rejoin` after a pause: the coordinator may be being chosen.
        tracing::debug!(group = %self.group, error = %last, "no coordinator found yet");
        Ok(())
    }

    /// The coordinator `address` names, connected to.
    fn coordinator_via(
        &self,
        address: &str,
        request: &FindCoordinatorRequest,
    ) -> Result<Client, String> {
        let mut asked = self
            .coordinator
            .connect_like(address)
            .map_err(|e| e.to_string())?;
        let version = asked
            .version(ApiKey::FindCoordinator, (1, 3))
            .map_err(|e| e.to_string())?;
        let found = asked.send(version, request).map_err(|e| e.to_string())?;
        if found.error_code != 0 {
            return Err(failure("no coordinator", found.error_code));
        }
        let coordinator = format!("{}:{}", found.host.as_str(), found.port);
        if coordinator == address {
            return Ok(asked);
        }
        asked.connect_like(&coordinator).map_err(|e| e.to_string())
    }

    pub fn committed(
        &mut self,
        partitions: &BTreeSet<(String, i32)>,
    ) -> Result<BTreeMap<(String, i32), i64>, String> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in partitions {
            by_topic.entry(t).or_default().push(*p);
        }
        let request = OffsetFetchRequest::default()
            .with_group_id(group_id(&self.group))
            .with_topics(Some(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(topic_name(t))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            ));
        let fetched = self.call_wherever(5, &request)?;
        if fetched.error_code != 0 {
            return Err(failure(
                "could not read the committed offsets",
                fetched.error_code,
            ));
        }
        Ok(fetched
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.committed_offset >= 0)
                    .map(move |p| ((t.name.to_string(), p.partition_index), p.committed_offset))
            })
            .collect())
    }

    /// Commits `positions`; the first error code, or 0. A coordinator lost on the way
    /// answers NOT_COORDINATOR (nothing was committed, or nothing is known to be).
    pub fn commit(&mut self, positions: &BTreeMap<(String, i32), i64>) -> Result<i16, String> {
        let Some(request) = commit_request(&self.group, self.generation, &self.id, positions)
        else {
            return Ok(0);
        };
        let version = self
            .coordinator
            .version(ApiKey::OffsetCommit, (2, 8))
            .map_err(|e| e.to_string())?;
        let code = match self.call(version, &request)? {
            Some(answer) => first_commit_error(&answer),
            None => ResponseError::NotCoordinator.code(),
        };
        self.coordinator_lost |= coordinator_moved(code);
        Ok(code)
    }

    /// Commits `positions` on the way out: where the coordinator moved, it is found
    /// again (for up to `FOLLOW_LEADERS`). A new coordinator does not know this member or
    /// its generation; the offsets then go as a commit from outside the group (generation
    /// -1), which a coordinator takes only while the group has no members, so that no
    /// other member's progress is overwritten. The first error code, or 0.
    pub fn commit_final(
        &mut self,
        positions: &BTreeMap<(String, i32), i64>,
    ) -> Result<i16, String> {
        let mut code = self.commit(positions)?;
        for _ in 0..FOLLOW_LEADERS.retries {
            if !coordinator_moved(code) {
                break;
            }
            std::thread::sleep(FOLLOW_LEADERS.backoff);
            self.relocate()?;
            code = self.commit(positions)?;
        }
        let unknown = [
            ResponseError::UnknownMemberId,
            ResponseError::IllegalGeneration,
        ];
        if unknown.iter().any(|e| e.code() == code) {
            let (id, generation) = (std::mem::take(&mut self.id), self.generation);
            self.generation = -1;
            code = self.commit(positions)?;
            (self.id, self.generation) = (id, generation);
        }
        Ok(code)
    }

    /// A heartbeat's error code, or 0. A coordinator lost on the way answers
    /// NOT_COORDINATOR.
    pub fn heartbeat(&mut self) -> Result<i16, String> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.id.clone()));
        let code = match self.call(3, &request)? {
            Some(answer) => answer.error_code,
            None => ResponseError::NotCoordinator.code(),
        };
        self.coordinator_lost |= coordinator_moved(code);
        Ok(code)
    }

    pub fn leave(&mut self) {
        let request = LeaveGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_member_id(StrBytes::from_string(self.id.clone()));
        let _ = self.coordinator.send(1, &request);
    }
}
