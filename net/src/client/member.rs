//! A consumer group member over the blocking client: Kafka's classic protocol with the
//! range assignor. It joins (answering MEMBER_ID_REQUIRED), assigns as leader, syncs,
//! heartbeats, reads and commits offsets, and leaves. `spate consume --group` and the
//! benchmark's group consumers use it; the caller decides when to heartbeat and reacts
//! to REBALANCE_IN_PROGRESS by calling `rejoin`.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequest, OffsetFetchRequestTopic};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::errors::failure;
use super::lookup::{commit_offsets, coordinator_of, partitions_of, topic_name};
use super::Client;
use crate::group::consumer_protocol;

/// The session timeout a member asks for, and how long a rebalance may take it.
pub const SESSION_TIMEOUT_MS: i32 = 10_000;
pub const REBALANCE_TIMEOUT_MS: i32 = 30_000;

/// A consumer group member: its coordinator connection, id, generation and topics.
#[derive(Debug)]
pub struct Member {
    coordinator: Client,
    group: String,
    topics: Vec<String>,
    id: String,
    generation: i32,
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
        bootstrap: Client,
        group: &str,
        topics: &[String],
    ) -> Result<(Member, BTreeSet<(String, i32)>), String> {
        let coordinator = coordinator_of(bootstrap, group)?;
        let mut member = Member {
            coordinator,
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

    /// Joins (again) and returns this member's partitions.
    pub fn rejoin(&mut self) -> Result<BTreeSet<(String, i32)>, String> {
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
            let joined = self
                .coordinator
                .send(5, &request)
                .map_err(|e| e.to_string())?;
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
        let synced = self
            .coordinator
            .send(
                3,
                &SyncGroupRequest::default()
                    .with_group_id(group_id(&self.group))
                    .with_generation_id(self.generation)
                    .with_member_id(StrBytes::from_string(self.id.clone()))
                    .with_assignments(assignments),
            )
            .map_err(|e| e.to_string())?;
        if synced.error_code == ResponseError::RebalanceInProgress.code() {
            return self.rejoin();
        }
        if synced.error_code != 0 {
            return Err(failure(
                &format!("could not sync with group \"{}\"", self.group),
                synced.error_code,
            ));
        }
        Ok(consumer_protocol::assignment_partitions(&synced.assignment)
            .unwrap_or_default()
            .into_iter()
            .collect())
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
        let fetched = self
            .coordinator
            .send(5, &request)
            .map_err(|e| e.to_string())?;
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

    pub fn commit(&mut self, positions: &BTreeMap<(String, i32), i64>) -> Result<i16, String> {
        commit_offsets(
            &mut self.coordinator,
            &self.group,
            self.generation,
            &self.id,
            positions,
        )
    }

    pub fn heartbeat(&mut self) -> Result<i16, String> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.id.clone()));
        Ok(self
            .coordinator
            .send(3, &request)
            .map_err(|e| e.to_string())?
            .error_code)
    }

    pub fn leave(&mut self) {
        let request = LeaveGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_member_id(StrBytes::from_string(self.id.clone()));
        let _ = self.coordinator.send(1, &request);
    }
}
