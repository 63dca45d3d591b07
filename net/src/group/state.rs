//! One consumer group's state machine, as Kafka's classic group protocol defines it.
//!
//! States: Empty → PreparingRebalance → CompletingRebalance → Stable, and back to
//! PreparingRebalance whenever membership or subscriptions change; Dead once deleted.
//! A rebalance completes when every known member has rejoined (or at the rebalance
//! deadline, dropping those that did not): the generation is bumped, one protocol common
//! to all members is chosen, and the leader alone receives the members' metadata. The
//! leader's SyncGroup carries everyone's assignment and makes the group Stable. A member
//! whose session would end while it waits in a JoinGroup or SyncGroup is kept, as Kafka
//! keeps it, and its session starts again when it is answered.
//!
//! This file does no I/O and reads no clock: callers pass `now`, and waiting requests
//! are answered through oneshot channels held here. Invariants, asserted in `check`:
//! every member has at most one pending join and one pending sync; the leader, if any,
//! is a member; join waiters exist only while PreparingRebalance; sync waiters only
//! while CompletingRebalance; static instance ids map one-to-one onto members.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;

use super::records::GroupRecord;
use super::GroupConfig;
use crate::limits::{GROUP_MEMBERS_MAX, MEMBER_ID_CLIENT_PREFIX_BYTES_MAX};

/// Where a group is in its rebalance cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a JoinGroup gets back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JoinOutcome {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// The members' metadata for the chosen protocol: for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// The leader already has the assignment (a static leader rejoining a Stable group).
    pub skip_assignment: bool,
}

impl JoinOutcome {
    fn failed(error: ResponseError, member_id: &str) -> JoinOutcome {
        JoinOutcome {
            error: Some(error),
            generation: -1,
            member_id: member_id.to_string(),
            ..JoinOutcome::default()
        }
    }
}

/// What a SyncGroup gets back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncOutcome {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    fn failed(error: ResponseError) -> SyncOutcome {
        SyncOutcome {
            error: Some(error),
            ..SyncOutcome::default()
        }
    }
}

/// A JoinGroup, as the state machine needs it.
#[derive(Debug)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: an unknown member first gets MEMBER_ID_REQUIRED and its new id.
    pub require_known_member_id: bool,
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    /// Milliseconds since the epoch, when the commit was made.
    pub commit_timestamp: i64,
}

/// One member of a group.
#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join: Option<oneshot::Sender<JoinOutcome>>,
    sync: Option<oneshot::Sender<SyncOutcome>>,
    /// When the member's session expires unless it heartbeats, commits or rejoins.
    expires: Instant,
}

impl Member {
    /// The member's metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// One consumer group, with its committed offsets.
#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined, and when they lapse.
    pending: HashMap<String, Instant>,
    /// Static members: `group.instance.id` → member id.
    statics: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    /// The first rebalance of an empty group waits at least until then for more members.
    join_not_before: Option<Instant>,
    /// Bounds how far new members may push `join_not_before`.
    initial_deadline: Option<Instant>,
    /// Committed offsets by (topic, partition).
    pub offsets: BTreeMap<(String, i32), Committed>,
    /// Set when the group reached Stable or Empty: its metadata should be persisted.
    changed: bool,
}

impl Group {
    pub fn new(id: String) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            rebalance_deadline: None,
            join_not_before: None,
            initial_deadline: None,
            offsets: BTreeMap::new(),
            changed: false,
        }
    }

    /// Whether the group's metadata changed since the last call (a new generation became
    /// Stable, or the group emptied); clears the flag.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let mut end = client_id.len().min(MEMBER_ID_CLIENT_PREFIX_BYTES_MAX);
        while !client_id.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}-{:032x}", &client_id[..end], rand::random::<u128>())
    }

    /// Handles a JoinGroup. The answer goes to `reply`, now or when the rebalance
    /// completes.
    pub fn join(
        &mut self,
        request: JoinRequest,
        reply: oneshot::Sender<JoinOutcome>,
        now: Instant,
        settings: &GroupConfig,
    ) {
        let error = if self.state == GroupState::Dead {
            Some(ResponseError::CoordinatorNotAvailable)
        } else if request.session_timeout < settings.min_session_timeout
            || request.session_timeout > settings.max_session_timeout
        {
            Some(ResponseError::InvalidSessionTimeout)
        } else if request.protocol_type.is_empty()
            || request.protocols.is_empty()
            || !self.supports(&request.protocol_type, &request.protocols)
        {
            Some(ResponseError::InconsistentGroupProtocol)
        } else {
            None
        };
        if let Some(error) = error {
            let _ = reply.send(JoinOutcome::failed(error, &request.member_id));
            return;
        }
        if request.member_id.is_empty() {
            self.join_new(request, reply, now, settings);
        } else {
            self.join_known(request, reply, now, settings);
        }
        self.check();
    }

    /// Whether a member with these protocols may join: the group is empty, or it has
    /// the same protocol type and a protocol in common with every member.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    fn join_new(
        &mut self,
        request: JoinRequest,
        reply: oneshot::Sender<JoinOutcome>,
        now: Instant,
        settings: &GroupConfig,
    ) {
        if let Some(instance) = &request.instance_id {
            if let Some(old) = self.statics.get(instance).cloned() {
                return self.replace_static(old, request, reply, now, settings);
            }
        }
        if self.members.len() + self.pending.len() >= GROUP_MEMBERS_MAX {
            let _ = reply.send(JoinOutcome::failed(ResponseError::GroupMaxSizeReached, ""));
            return;
        }
        let id = self.new_member_id(&request.client_id);
        if request.require_known_member_id && request.instance_id.is_none() {
            // The client rejoins at once with this id; until then it holds a place.
            self.pending
                .insert(id.clone(), now + request.session_timeout);
            let _ = reply.send(JoinOutcome::failed(ResponseError::MemberIdRequired, &id));
            return;
        }
        self.add_member(id, request, reply, now, settings);
    }

    fn join_known(
        &mut self,
        request: JoinRequest,
        reply: oneshot::Sender<JoinOutcome>,
        now: Instant,
        settings: &GroupConfig,
    ) {
        let id = request.member_id.clone();
        if self.pending.remove(&id).is_some() {
            return self.add_member(id, request, reply, now, settings);
        }
        if let Some(error) = self.identify(&id, request.instance_id.as_deref()) {
            let _ = reply.send(JoinOutcome::failed(error, &id));
            return;
        }
        let member = self.members.get_mut(&id).expect("identified");
        let unchanged = member.protocols == request.protocols;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.protocols = request.protocols;
        member.expires = now + member.session_timeout;
        if let Some(previous) = member.join.replace(reply) {
            // A newer join from the same member supersedes the one still waiting.
            let _ = previous.send(JoinOutcome::failed(ResponseError::UnknownMemberId, &id));
        }
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        match self.state {
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Stable if unchanged && !is_leader => {
                // A follower rejoining with nothing new: tell it the current generation.
                let outcome = self.join_outcome(&id, false);
                let member = self.members.get_mut(&id).expect("member");
                let _ = member.join.take().expect("just set").send(outcome);
            }
            _ => self.prepare_rebalance(now, settings),
        }
    }

    /// A known static instance rejoining with a new member id: the old id is fenced
    /// and the member keeps its place and assignment.
    fn replace_static(
        &mut self,
        old: String,
        request: JoinRequest,
        reply: oneshot::Sender<JoinOutcome>,
        now: Instant,
        settings: &GroupConfig,
    ) {
        let mut member = self
            .members
            .remove(&old)
            .expect("static members are members");
        if let Some(join) = member.join.take() {
            let _ = join.send(JoinOutcome::failed(ResponseError::FencedInstanceId, &old));
        }
        if let Some(sync) = member.sync.take() {
            let _ = sync.send(SyncOutcome::failed(ResponseError::FencedInstanceId));
        }
        let id = self.new_member_id(&request.client_id);
        let unchanged = member.protocols == request.protocols;
        member.id = id.clone();
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.protocols = request.protocols;
        member.expires = now + member.session_timeout;
        member.join = Some(reply);
        let instance = member.instance_id.clone().expect("static");
        self.members.insert(id.clone(), member);
        self.statics.insert(instance, id.clone());
        let was_leader = self.leader.as_deref() == Some(old.as_str());
        if was_leader {
            self.leader = Some(id.clone());
        }
        match self.state {
            GroupState::Stable if unchanged => {
                // The recorded members name the new id, so a coordinator that takes the
                // group over knows this incarnation.
                self.changed = true;
                let outcome = self.join_outcome(&id, was_leader);
                let member = self.members.get_mut(&id).expect("member");
                let _ = member.join.take().expect("just set").send(outcome);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            _ => self.prepare_rebalance(now, settings),
        }
    }

    fn add_member(
        &mut self,
        id: String,
        request: JoinRequest,
        reply: oneshot::Sender<JoinOutcome>,
        now: Instant,
        settings: &GroupConfig,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        if let Some(instance) = &request.instance_id {
            self.statics.insert(instance.clone(), id.clone());
        }
        let member = Member {
            id: id.clone(),
            instance_id: request.instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            protocols: request.protocols,
            assignment: Bytes::new(),
            join: Some(reply),
            sync: None,
            expires: now + request.session_timeout,
        };
        self.members.insert(id, member);
        if self.state == GroupState::PreparingRebalance {
            // New members during the initial delay push it back, within its bound.
            if let (Some(_), Some(bound)) = (self.join_not_before, self.initial_deadline) {
                self.join_not_before = Some((now + settings.initial_rebalance_delay).min(bound));
            }
            self.maybe_complete_join(now);
        } else {
            self.prepare_rebalance(now, settings);
        }
    }

    /// The error for a request naming member `id` (and `instance`), if it is not a
    /// current member or is fenced by a newer instance of itself.
    fn identify(&self, id: &str, instance: Option<&str>) -> Option<ResponseError> {
        if let Some(instance) = instance {
            match self.statics.get(instance) {
                Some(current) if current != id => return Some(ResponseError::FencedInstanceId),
                None if self.members.contains_key(id) => {
                    return Some(ResponseError::FencedInstanceId)
                }
                _ => {}
            }
        }
        if !self.members.contains_key(id) {
            return Some(ResponseError::UnknownMemberId);
        }
        None
    }

    fn prepare_rebalance(&mut self, now: Instant, settings: &GroupConfig) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(sync) = member.sync.take() {
                    let _ = sync.send(SyncOutcome::failed(ResponseError::RebalanceInProgress));
                }
            }
        }
        let initial = self.state == GroupState::Empty;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = Some(now + timeout);
        if initial {
            let delay = settings.initial_rebalance_delay.min(timeout);
            self.join_not_before = Some(now + delay);
            self.initial_deadline = Some(now + timeout);
        }
        self.maybe_complete_join(now);
    }

    /// Completes the join phase once every member has rejoined (and any initial delay
    /// has passed), or at the rebalance deadline without the stragglers.
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined = self.pending.is_empty() && self.members.values().all(|m| m.join.is_some());
        let delayed = self.join_not_before.is_some_and(|t| now < t);
        let overdue = self.rebalance_deadline.is_some_and(|d| now >= d);
        let ready = all_joined && !delayed;
        if !ready && !overdue {
            return;
        }
        let stragglers: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in stragglers {
            self.forget(&id);
        }
        self.pending.clear();
        self.rebalance_deadline = None;
        self.join_not_before = None;
        self.initial_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.changed = true;
            return;
        }
        self.protocol = Some(self.select_protocol());
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let mut outcome = self.join_outcome(&id, false);
            if !is_leader {
                outcome.members.clear();
            }
            let member = self.members.get_mut(&id).expect("member");
            member.expires = now + member.session_timeout;
            member.assignment = Bytes::new();
            let _ = member.join.take().expect("all joined").send(outcome);
        }
    }

    /// The current generation as member `id` sees it; the leader gets every member's
    /// metadata.
    fn join_outcome(&self, id: &str, skip_assignment: bool) -> JoinOutcome {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == id {
            self.members
                .values()
                .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                .collect()
        } else {
            Vec::new()
        };
        JoinOutcome {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: Some(protocol),
            leader,
            member_id: id.to_string(),
            members,
            skip_assignment,
        }
    }

    /// The protocol every member supports that most members prefer (each votes for its
    /// first supported choice), as Kafka chooses.
    fn select_protocol(&self) -> String {
        let first = self.members.values().next().expect("members");
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        assert!(
            !candidates.is_empty(),
            "joins admit only compatible members"
        );
        let mut votes: Vec<usize> = vec![0; candidates.len()];
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n))
            {
                let index = candidates
                    .iter()
                    .position(|c| *c == name)
                    .expect("candidate");
                votes[index] += 1;
            }
        }
        let best = (0..candidates.len())
            .max_by_key(|&i| (votes[i], std::cmp::Reverse(i)))
            .expect("candidates");
        candidates[best].clone()
    }

    /// Removes a member without touching the state; its waiting requests are answered.
    fn forget(&mut self, id: &str) {
        if let Some(mut member) = self.members.remove(id) {
            if let Some(join) = member.join.take() {
                let _ = join.send(JoinOutcome::failed(ResponseError::UnknownMemberId, id));
            }
            if let Some(sync) = member.sync.take() {
                let _ = sync.send(SyncOutcome::failed(ResponseError::UnknownMemberId));
            }
            if let Some(instance) = member.instance_id {
                if self.statics.get(&instance).map(String::as_str) == Some(id) {
                    self.statics.remove(&instance);
                }
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Removes a member that left or expired, and rebalances the rest.
    fn remove_member(&mut self, id: &str, now: Instant, settings: &GroupConfig) {
        self.forget(id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, settings)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Handles a SyncGroup; the answer goes to `reply`, now or once the leader syncs.
    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
        reply: oneshot::Sender<SyncOutcome>,
        now: Instant,
    ) {
        let error = if let Some(error) = self.identify(member_id, instance_id) {
            Some(error)
        } else if generation != self.generation {
            Some(ResponseError::IllegalGeneration)
        } else if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            Some(ResponseError::InconsistentGroupProtocol)
        } else {
            match self.state {
                GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
                GroupState::Empty | GroupState::Dead => Some(ResponseError::UnknownMemberId),
                GroupState::Stable | GroupState::CompletingRebalance => None,
            }
        };
        if let Some(error) = error {
            let _ = reply.send(SyncOutcome::failed(error));
            return;
        }
        match self.state {
            GroupState::Stable => {
                let member = self.members.get_mut(member_id).expect("identified");
                member.expires = now + member.session_timeout;
                let _ = reply.send(self.sync_outcome(member_id));
            }
            GroupState::CompletingRebalance => {
                let member = self.members.get_mut(member_id).expect("identified");
                member.expires = now + member.session_timeout;
                if let Some(previous) = member.sync.replace(reply) {
                    let _ = previous.send(SyncOutcome::failed(ResponseError::UnknownMemberId));
                }
                if self.leader.as_deref() == Some(member_id) {
                    self.complete_sync(assignments, now);
                }
            }
            _ => unreachable!("other states were answered above"),
        }
        self.check();
    }

    fn sync_outcome(&self, member_id: &str) -> SyncOutcome {
        SyncOutcome {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self.members[member_id].assignment.clone(),
        }
    }

    /// The leader's assignments arrived: store them, go Stable, answer every waiter, whose
    /// session starts again now.
    fn complete_sync(&mut self, assignments: Vec<(String, Bytes)>, now: Instant) {
        for member in self.members.values_mut() {
            member.assignment = Bytes::new();
        }
        for (id, assignment) in assignments {
            if let Some(member) = self.members.get_mut(&id) {
                member.assignment = assignment;
            }
        }
        self.state = GroupState::Stable;
        self.changed = true;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let outcome = self.sync_outcome(&id);
            let member = self.members.get_mut(&id).expect("member");
            if let Some(sync) = member.sync.take() {
                member.expires = now + member.session_timeout;
                let _ = sync.send(outcome);
            }
        }
    }

    /// Handles a Heartbeat: keeps the member's session alive, or says why not.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Option<ResponseError> {
        if let Some(error) = self.identify(member_id, instance_id) {
            return Some(error);
        }
        if generation != self.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        let member = self.members.get_mut(member_id).expect("identified");
        member.expires = now + member.session_timeout;
        match self.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::Empty | GroupState::Dead => Some(ResponseError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => None,
        }
    }

    /// Handles one member of a LeaveGroup. A static member may be named by its
    /// instance id alone.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        settings: &GroupConfig,
    ) -> Option<ResponseError> {
        let id = match (member_id, instance_id) {
            ("", Some(instance)) => match self.statics.get(instance) {
                Some(id) => id.clone(),
                None => return Some(ResponseError::UnknownMemberId),
            },
            (id, instance) => {
                if self.pending.remove(id).is_some() {
                    return None;
                }
                if let Some(error) = self.identify(id, instance) {
                    return Some(error);
                }
                id.to_string()
            }
        };
        self.remove_member(&id, now, settings);
        self.check();
        None
    }

    /// Whether a commit from this member (generation -1 and no member id: a client
    /// managing its own assignment) may be stored now.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Option<ResponseError> {
        if generation < 0 && member_id.is_empty() && self.members.is_empty() {
            return None;
        }
        if let Some(error) = self.identify(member_id, instance_id) {
            return Some(error);
        }
        if self.state == GroupState::CompletingRebalance {
            return Some(ResponseError::RebalanceInProgress);
        }
        if generation != self.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        let member = self.members.get_mut(member_id).expect("identified");
        member.expires = now + member.session_timeout;
        None
    }

    /// Expires sessions and pending member ids, and completes an overdue join.
    pub fn tick(&mut self, now: Instant, settings: &GroupConfig) {
        self.pending.retain(|_, expires| *expires > now);
        let expired: Vec<String> = self
            .members
            .values()
            // A member waiting in a join or a sync has done its part; Kafka does not expire
            // it either (its session starts again when it is answered).
            .filter(|m| m.join.is_none() && m.sync.is_none() && m.expires <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(&id, now, settings);
        }
        self.maybe_complete_join(now);
        self.check();
    }

    /// Answers every waiting join and sync with `error` (the coordinator is going
    /// away); the members stay.
    pub fn abandon_waiters(&mut self, error: ResponseError) {
        for member in self.members.values_mut() {
            if let Some(join) = member.join.take() {
                let _ = join.send(JoinOutcome::failed(error, &member.id));
            }
            if let Some(sync) = member.sync.take() {
                let _ = sync.send(SyncOutcome::failed(error));
            }
        }
    }

    /// Marks the group deleted, answering anything still waiting.
    pub fn kill(&mut self) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            self.forget(&id);
        }
        self.pending.clear();
        self.offsets.clear();
        self.state = GroupState::Dead;
    }

    /// Restores what the log recorded of the group at its last Stable or Empty point; a
    /// later record replaces an earlier one. A Stable group comes back Stable with its
    /// members, their assignments and its leader, each member's session starting at
    /// `now`, so that its members carry on across a coordinator failover without a
    /// rebalance, as they do with Kafka's coordinators. A record that does not hold
    /// together (a leader not among the members, no protocol, a static id twice) brings
    /// the group back Empty at its generation, and its members join again.
    pub fn restore(&mut self, record: GroupRecord, now: Instant) {
        assert!(
            self.members
                .values()
                .all(|m| m.join.is_none() && m.sync.is_none()),
            "restore happens in a replay, before any request is waiting"
        );
        let protocol_type = Some(record.protocol_type).filter(|t| !t.is_empty());
        *self = Group {
            generation: record.generation,
            protocol_type,
            offsets: std::mem::take(&mut self.offsets),
            ..Group::new(std::mem::take(&mut self.id))
        };
        let instances: Vec<&String> = record
            .members
            .iter()
            .filter_map(|m| m.instance_id.as_ref())
            .collect();
        let distinct = instances
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let leader_known = record
            .leader
            .as_ref()
            .is_some_and(|l| record.members.iter().any(|m| &m.id == l));
        let (Some(protocol), true, true) =
            (record.protocol, leader_known, distinct == instances.len())
        else {
            self.check();
            return;
        };
        for m in record.members {
            if let Some(instance) = &m.instance_id {
                self.statics.insert(instance.clone(), m.id.clone());
            }
            let member = Member {
                id: m.id.clone(),
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: m.session_timeout,
                rebalance_timeout: m.rebalance_timeout,
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                join: None,
                sync: None,
                expires: now + m.session_timeout,
            };
            self.members.insert(m.id, member);
        }
        self.protocol = Some(protocol);
        self.leader = record.leader;
        self.state = GroupState::Stable;
        self.check();
    }

    /// The state machine's invariants.
    fn check(&self) {
        if let Some(leader) = &self.leader {
            assert!(self.members.contains_key(leader), "leader is a member");
        }
        for member in self.members.values() {
            assert!(
                member.join.is_none() || self.state == GroupState::PreparingRebalance,
                "join waiters only while preparing a rebalance"
            );
            assert!(
                member.sync.is_none() || self.state == GroupState::CompletingRebalance,
                "sync waiters only while completing a rebalance"
            );
            if let Some(instance) = &member.instance_id {
                assert_eq!(self.statics.get(instance), Some(&member.id));
            }
        }
        assert!(self
            .statics
            .values()
            .all(|id| self.members.contains_key(id)));
        assert!(
            self.state != GroupState::Empty || self.members.is_empty(),
            "an empty group has no members"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const PARTITIONS: u8 = 6;

    /// A client of the group, driven step by step the way a consumer behaves.
    #[derive(Default)]
    struct Client {
        id: String,
        generation: i32,
        join: Option<oneshot::Receiver<JoinOutcome>>,
        sync: Option<oneshot::Receiver<SyncOutcome>>,
        in_group: bool,
    }

    fn join_request(id: &str) -> JoinRequest {
        JoinRequest {
            member_id: id.to_string(),
            instance_id: None,
            client_id: "sim".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(20),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: true,
        }
    }

    /// The leader's assignment: partitions dealt round-robin over the members.
    fn assign(members: &[(String, Option<String>, Bytes)]) -> Vec<(String, Bytes)> {
        members
            .iter()
            .enumerate()
            .map(|(i, (id, _, _))| {
                let mine: Vec<u8> = (0..PARTITIONS)
                    .filter(|p| usize::from(*p) % members.len() == i)
                    .collect();
                (id.clone(), Bytes::from(mine))
            })
            .collect()
    }

    /// Random joins, syncs, heartbeats, leaves and clock jumps. In every generation each
    /// partition has at most one owner, the state machine's own invariants hold after
    /// every step (`check`), and committed offsets are never touched by membership.
    #[test]
    fn random_membership_never_gives_a_partition_two_owners() {
        let mut settled = 0;
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let settings = GroupConfig {
                initial_rebalance_delay: Duration::from_millis(rng.gen_range(0..500)),
                ..GroupConfig::default()
            };
            let mut group = Group::new("g".into());
            let committed = Committed {
                offset: 5,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp: 1,
            };
            group.offsets.insert(("t".into(), 0), committed.clone());
            let mut now = Instant::now();
            let mut clients: Vec<Client> = (0..4).map(|_| Client::default()).collect();
            // generation → partition → owner
            let mut owners: HashMap<i32, HashMap<u8, String>> = HashMap::new();
            for _ in 0..400 {
                let c = &mut clients[rng.gen_range(0..4)];
                if let Some(rx) = &mut c.join {
                    if let Ok(Some(outcome)) = rx.try_recv() {
                        c.join = None;
                        match outcome.error {
                            Some(ResponseError::MemberIdRequired) => c.id = outcome.member_id,
                            Some(_) => *c = Client::default(),
                            None => {
                                c.generation = outcome.generation;
                                let (tx, rx) = oneshot::channel();
                                let assignments = if outcome.leader == c.id {
                                    assign(&outcome.members)
                                } else {
                                    Vec::new()
                                };
                                c.sync = Some(rx);
                                let id = c.id.clone();
                                group.sync(
                                    &id,
                                    None,
                                    c.generation,
                                    None,
                                    None,
                                    assignments,
                                    tx,
                                    now,
                                );
                            }
                        }
                    }
                    continue;
                }
                if let Some(rx) = &mut c.sync {
                    if let Ok(Some(outcome)) = rx.try_recv() {
                        c.sync = None;
                        if outcome.error.is_none() {
                            c.in_group = true;
                            let owned = owners.entry(c.generation).or_default();
                            for p in outcome.assignment.iter() {
                                let previous = owned.insert(*p, c.id.clone());
                                assert!(
                                    previous.is_none() || previous.as_ref() == Some(&c.id),
                                    "seed {seed}: partition {p} owned twice in generation {}",
                                    c.generation
                                );
                            }
                        } else {
                            c.in_group = false;
                        }
                    }
                    continue;
                }
                match rng.gen_range(0..10) {
                    0..=3 => {
                        let (tx, rx) = oneshot::channel();
                        c.join = Some(rx);
                        group.join(join_request(&c.id), tx, now, &settings);
                    }
                    4..=6 if c.in_group => match group.heartbeat(&c.id, None, c.generation, now) {
                        None => {}
                        Some(ResponseError::RebalanceInProgress) => {
                            let (tx, rx) = oneshot::channel();
                            c.join = Some(rx);
                            group.join(join_request(&c.id), tx, now, &settings);
                        }
                        Some(_) => {
                            *c = Client {
                                id: String::new(),
                                ..Client::default()
                            }
                        }
                    },
                    7 if c.in_group => {
                        let id = std::mem::take(&mut c.id);
                        group.leave(&id, None, now, &settings);
                        *c = Client::default();
                    }
                    _ => {
                        now += Duration::from_millis(rng.gen_range(0..3000));
                        group.tick(now, &settings);
                    }
                }
            }
            assert_eq!(
                group.offsets.get(&("t".into(), 0)),
                Some(&committed),
                "seed {seed}"
            );
            settled += owners.len();
        }
        // The runs must mostly reach assignments, or they prove nothing.
        assert!(settled > 200, "only {settled} generations were assigned");
    }

    fn recorded(members: &[(&str, Option<&str>)], leader: &str) -> GroupRecord {
        GroupRecord {
            generation: 4,
            protocol_type: "consumer".into(),
            protocol: Some("range".into()),
            leader: Some(leader.into()),
            members: members
                .iter()
                .map(|(id, instance)| super::super::records::MemberRecord {
                    id: id.to_string(),
                    instance_id: instance.map(str::to_string),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout: Duration::from_secs(20),
                    session_timeout: Duration::from_secs(10),
                    subscription: Bytes::from_static(b"s"),
                    assignment: Bytes::from(format!("a-{id}")),
                })
                .collect(),
        }
    }

    #[test]
    fn a_restored_stable_group_keeps_its_members_and_their_sessions_start_anew() {
        let settings = GroupConfig::default();
        let now = Instant::now();
        let mut group = Group::new("g".into());
        group.restore(recorded(&[("m1", None), ("m2", Some("i2"))], "m1"), now);
        assert_eq!(group.state, GroupState::Stable);
        assert_eq!(group.leader.as_deref(), Some("m1"));
        assert_eq!(group.members["m2"].assignment.as_ref(), b"a-m2");
        let later = now + Duration::from_secs(8);
        assert_eq!(group.heartbeat("m1", None, 4, later), None);
        assert_eq!(group.heartbeat("m2", Some("i2"), 4, later), None);
        assert_eq!(
            group.heartbeat("m1", None, 3, later),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            group.heartbeat("m3", None, 4, later),
            Some(ResponseError::UnknownMemberId)
        );
        // m1 goes on heartbeating, m2 stops: m2's session runs out 10 s after its last.
        group.heartbeat("m1", None, 4, now + Duration::from_secs(16));
        group.tick(now + Duration::from_secs(17), &settings);
        assert!(group.members.contains_key("m2"));
        group.tick(now + Duration::from_secs(19), &settings);
        assert!(group.members.contains_key("m1") && !group.members.contains_key("m2"));
        assert_eq!(group.state, GroupState::PreparingRebalance);
    }

    #[test]
    fn a_recorded_group_that_does_not_hold_together_comes_back_empty() {
        let now = Instant::now();
        for record in [
            recorded(&[("m1", None)], "m9"),
            recorded(&[("m1", Some("i")), ("m2", Some("i"))], "m1"),
            GroupRecord {
                protocol: None,
                ..recorded(&[("m1", None)], "m1")
            },
        ] {
            let mut group = Group::new("g".into());
            group.restore(record, now);
            assert_eq!(
                (group.state, group.generation, group.members.len()),
                (GroupState::Empty, 4, 0)
            );
        }
    }

    #[test]
    fn a_member_waiting_for_the_leaders_sync_is_not_expired_meanwhile() {
        let settings = GroupConfig {
            initial_rebalance_delay: Duration::ZERO,
            ..GroupConfig::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut group = Group::new("g".into());
        let join = |group: &mut Group, id: &str, now| {
            let mut request = join_request(id);
            request.require_known_member_id = false;
            let (tx, mut rx) = oneshot::channel();
            group.join(request, tx, now, &settings);
            rx.try_recv().unwrap()
        };
        let sync = |group: &mut Group, id: &str, generation, now| {
            let (tx, rx) = oneshot::channel();
            let assignments = vec![("a".to_string(), Bytes::from_static(b"x"))];
            group.sync(id, None, generation, None, None, assignments, tx, now);
            rx
        };
        // A alone, then B: A is asked to rejoin, and both are in generation 2, A leading.
        let a = join(&mut group, "", t0).unwrap();
        let first = sync(&mut group, &a.member_id, a.generation, t0);
        drop(first);
        assert!(
            join(&mut group, "", t0).is_none(),
            "B waits for A to rejoin"
        );
        let b_id = group
            .members
            .keys()
            .find(|id| **id != a.member_id)
            .unwrap()
            .clone();
        let a = join(&mut group, &a.member_id, t0).unwrap();
        assert_eq!((a.generation, a.leader.clone()), (2, a.member_id.clone()));
        // B syncs at once; the leader takes 11 s to assign, heartbeating meanwhile.
        let mut b_sync = sync(&mut group, &b_id, 2, at(1));
        assert_eq!(group.heartbeat(&a.member_id, None, 2, at(9)), None);
        group.tick(at(12), &settings);
        assert!(group.members.contains_key(&b_id), "B waits in its sync");
        let a_sync = sync(&mut group, &a.member_id, 2, at(12));
        drop(a_sync);
        assert!(b_sync.try_recv().unwrap().unwrap().error.is_none());
        // B's session starts again when it is answered.
        group.tick(at(20), &settings);
        assert_eq!((group.state, group.members.len()), (GroupState::Stable, 2));
    }

    #[test]
    fn a_static_member_rejoining_keeps_its_assignment_without_a_rebalance() {
        let settings = GroupConfig {
            initial_rebalance_delay: Duration::ZERO,
            ..GroupConfig::default()
        };
        let now = Instant::now();
        let mut group = Group::new("g".into());
        let mut request = join_request("");
        request.instance_id = Some("instance-1".into());
        let (tx, mut rx) = oneshot::channel();
        group.join(request, tx, now, &settings);
        let joined = rx.try_recv().unwrap().unwrap();
        assert_eq!(joined.error, None, "static members skip MEMBER_ID_REQUIRED");
        let (tx, mut rx) = oneshot::channel();
        let assignment = vec![(joined.member_id.clone(), Bytes::from_static(b"p0"))];
        group.sync(
            &joined.member_id,
            Some("instance-1"),
            joined.generation,
            None,
            None,
            assignment,
            tx,
            now,
        );
        assert_eq!(rx.try_recv().unwrap().unwrap().assignment.as_ref(), b"p0");
        assert_eq!(group.state, GroupState::Stable);

        // The same instance restarts: a new member id, the same generation and assignment.
        let mut request = join_request("");
        request.instance_id = Some("instance-1".into());
        let (tx, mut rx) = oneshot::channel();
        group.join(request, tx, now, &settings);
        let rejoined = rx.try_recv().unwrap().unwrap();
        assert_eq!(rejoined.error, None);
        assert_ne!(rejoined.member_id, joined.member_id);
        assert_eq!(rejoined.generation, joined.generation);
        assert_eq!(group.state, GroupState::Stable);
        // The old incarnation is fenced.
        assert_eq!(
            group.heartbeat(
                &joined.member_id,
                Some("instance-1"),
                joined.generation,
                now
            ),
            Some(ResponseError::FencedInstanceId)
        );
        let (tx, mut rx) = oneshot::channel();
        group.sync(
            &rejoined.member_id,
            Some("instance-1"),
            rejoined.generation,
            None,
            None,
            Vec::new(),
            tx,
            now,
        );
        assert_eq!(rx.try_recv().unwrap().unwrap().assignment.as_ref(), b"p0");
    }

    #[test]
    fn the_protocol_most_members_prefer_among_common_ones_is_chosen() {
        let settings = GroupConfig {
            initial_rebalance_delay: Duration::from_secs(1),
            ..GroupConfig::default()
        };
        let now = Instant::now();
        let mut group = Group::new("g".into());
        let prefs: [&[&str]; 3] = [
            &["cooperative-sticky", "range"],
            &["range", "cooperative-sticky"],
            &["cooperative-sticky", "range", "roundrobin"],
        ];
        let mut receivers = Vec::new();
        for protocols in prefs {
            let mut request = join_request("");
            request.require_known_member_id = false;
            request.protocols = protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::new()))
                .collect();
            let (tx, rx) = oneshot::channel();
            group.join(request, tx, now, &settings);
            receivers.push(rx);
        }
        group.tick(now + Duration::from_secs(2), &settings);
        for mut rx in receivers {
            let outcome = rx.try_recv().unwrap().unwrap();
            assert_eq!(outcome.protocol.as_deref(), Some("cooperative-sticky"));
        }
    }
}
