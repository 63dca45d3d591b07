//! The classic group protocol on the wire: the two-step join, a rebalance that fences
//! the old generation, commits and fetches at old and new versions, describe, list,
//! offset delete and group delete, and committed offsets surviving a restart.

mod common;

use bytes::Bytes;
use common::{Client, TestBroker};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::join_group_response::JoinGroupResponse;
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequest, OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

fn group(name: &str) -> GroupId {
    GroupId(StrBytes::from_string(name.into()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn join_request(g: &str, member: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(group(g))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(s(member))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(b"meta"))])
}

/// Joins with the v4+ two-step: the first join hands out the member id.
fn join(client: &mut Client, g: &str) -> JoinGroupResponse {
    let first = client.send(5, &join_request(g, ""));
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    assert!(!first.member_id.is_empty());
    client.send(5, &join_request(g, &first.member_id))
}

fn sync(
    client: &mut Client,
    g: &str,
    generation: i32,
    member: &str,
    assign: &[(&str, &[u8])],
) -> (i16, Bytes) {
    let assignments = assign
        .iter()
        .map(|(m, a)| {
            SyncGroupRequestAssignment::default()
                .with_member_id(s(m))
                .with_assignment(Bytes::copy_from_slice(a))
        })
        .collect();
    let response = client.send(
        3,
        &SyncGroupRequest::default()
            .with_group_id(group(g))
            .with_generation_id(generation)
            .with_member_id(s(member))
            .with_assignments(assignments),
    );
    (response.error_code, response.assignment)
}

fn heartbeat(client: &mut Client, g: &str, generation: i32, member: &str) -> i16 {
    client
        .send(
            3,
            &HeartbeatRequest::default()
                .with_group_id(group(g))
                .with_generation_id(generation)
                .with_member_id(s(member)),
        )
        .error_code
}

fn commit(
    client: &mut Client,
    version: i16,
    g: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Vec<i16> {
    let partitions = offsets
        .iter()
        .map(|(p, o)| {
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
                .with_committed_metadata(Some(s("m")))
        })
        .collect();
    let response = client.send(
        version,
        &OffsetCommitRequest::default()
            .with_group_id(group(g))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(common::name(topic))
                .with_partitions(partitions)]),
    );
    response.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect()
}

/// Committed offsets of `topic`'s partitions 0..n through OffsetFetch v5.
fn fetch_v5(client: &mut Client, g: &str, topic: &str, n: i32) -> Vec<i64> {
    let response = client.send(
        5,
        &OffsetFetchRequest::default()
            .with_group_id(group(g))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(common::name(topic))
                .with_partition_indexes((0..n).collect())])),
    );
    assert_eq!(response.error_code, 0);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect()
}

#[test]
fn a_rebalance_fences_the_old_generation_and_commits_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut a = broker.client();
    common::create(&mut a, "orders", 4);

    // FindCoordinator, old and batched forms: this broker, once the offsets topic exists.
    let found = a.send(2, &FindCoordinatorRequest::default().with_key(s("g1")));
    assert_eq!(found.error_code, 0);
    assert_eq!(found.port, i32::from(broker.addr.port()));
    let found = a.send(
        4,
        &FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g1"), s("g2")]),
    );
    assert_eq!(found.coordinators.len(), 2);
    assert!(found
        .coordinators
        .iter()
        .all(|c| c.error_code == 0 && c.node_id.0 == 1));

    // A alone: generation 1, A leads and assigns itself everything.
    let joined = join(&mut a, "g1");
    assert_eq!(joined.error_code, 0);
    let (gen1, member_a) = (joined.generation_id, joined.member_id.to_string());
    assert_eq!(joined.leader.as_str(), member_a);
    assert_eq!(joined.members.len(), 1);
    let (error, assignment) = sync(&mut a, "g1", gen1, &member_a, &[(&member_a, b"all")]);
    assert_eq!((error, assignment.as_ref()), (0, &b"all"[..]));
    assert_eq!(heartbeat(&mut a, "g1", gen1, &member_a), 0);
    assert_eq!(
        commit(
            &mut a,
            8,
            "g1",
            gen1,
            &member_a,
            "orders",
            &[(0, 10), (1, 11)]
        ),
        vec![0, 0]
    );

    // B joins: A learns of the rebalance by heartbeat and rejoins; both get generation 2.
    let addr = broker.addr;
    let b_thread = std::thread::spawn(move || {
        let mut b = Client::from_stream(std::net::TcpStream::connect(addr).unwrap());
        let joined = join(&mut b, "g1");
        (b, joined)
    });
    let mut rebalancing = false;
    for _ in 0..100 {
        let error = heartbeat(&mut a, "g1", gen1, &member_a);
        if error == ResponseError::RebalanceInProgress.code() {
            rebalancing = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(rebalancing, "A is told to rejoin");
    // Commits from the current generation are still taken while preparing.
    assert_eq!(
        commit(&mut a, 8, "g1", gen1, &member_a, "orders", &[(0, 12)]),
        vec![0]
    );
    let rejoined = a.send(5, &join_request("g1", &member_a));
    let (mut b, b_joined) = b_thread.join().unwrap();
    assert_eq!(rejoined.error_code, 0);
    assert_eq!(b_joined.error_code, 0);
    let gen2 = rejoined.generation_id;
    assert_eq!(gen2, gen1 + 1);
    assert_eq!(b_joined.generation_id, gen2);
    let member_b = b_joined.member_id.to_string();
    // Only the leader (A, kept from generation 1) sees the members.
    assert_eq!(rejoined.members.len(), 2);
    assert!(b_joined.members.is_empty());

    // Until the leader syncs, commits wait for the new assignment.
    assert_eq!(
        commit(&mut a, 8, "g1", gen2, &member_a, "orders", &[(0, 99)]),
        vec![ResponseError::RebalanceInProgress.code()]
    );

    // B syncs first and waits for the leader's assignment.
    let b_sync = std::thread::spawn(move || {
        let result = sync(&mut b, "g1", gen2, &member_b, &[]);
        (b, member_b, result)
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    let b_id = {
        let described = a.send(
            3,
            &DescribeGroupsRequest::default().with_groups(vec![group("g1")]),
        );
        assert_eq!(
            described.groups[0].group_state.as_str(),
            "CompletingRebalance"
        );
        described.groups[0]
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .find(|m| *m != member_a)
            .unwrap()
    };
    let (error, mine) = sync(
        &mut a,
        "g1",
        gen2,
        &member_a,
        &[(&member_a, b"p0p1"), (&b_id, b"p2p3")],
    );
    assert_eq!((error, mine.as_ref()), (0, &b"p0p1"[..]));
    let (mut b, member_b, (error, theirs)) = b_sync.join().unwrap();
    assert_eq!((error, theirs.as_ref()), (0, &b"p2p3"[..]));
    assert_eq!(
        commit(
            &mut b,
            7,
            "g1",
            gen2,
            &member_b,
            "orders",
            &[(2, 22), (9, 1)]
        ),
        vec![0, ResponseError::UnknownTopicOrPartition.code()]
    );
    assert_eq!(fetch_v5(&mut a, "g1", "orders", 4), vec![12, 11, 22, -1]);

    // The old generation is fenced everywhere, and strangers are unknown.
    assert_eq!(
        commit(&mut a, 8, "g1", gen1, &member_a, "orders", &[(0, 99)]),
        vec![ResponseError::IllegalGeneration.code()]
    );
    assert_eq!(
        heartbeat(&mut a, "g1", gen1, &member_a),
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        commit(&mut a, 8, "g1", gen2, "nobody", "orders", &[(0, 99)]),
        vec![ResponseError::UnknownMemberId.code()]
    );

    // Describe and list see a Stable consumer group with both members.
    let described = a.send(
        5,
        &DescribeGroupsRequest::default().with_groups(vec![group("g1"), group("none")]),
    );
    assert_eq!(described.groups[0].group_state.as_str(), "Stable");
    assert_eq!(described.groups[0].protocol_data.as_str(), "range");
    assert_eq!(described.groups[0].members.len(), 2);
    assert_eq!(described.groups[1].group_state.as_str(), "Dead");
    let listed = a.send(4, &ListGroupsRequest::default());
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(listed.groups[0].group_state.as_str(), "Stable");

    // A group with members cannot be deleted, nor can offsets of a topic it consumes.
    let deleted = a.send(
        2,
        &DeleteGroupsRequest::default().with_groups_names(vec![group("g1")]),
    );
    assert_eq!(
        deleted.results[0].error_code,
        ResponseError::NonEmptyGroup.code()
    );

    // Both leave (v3 batch, by member id); the group empties.
    let left = a.send(
        3,
        &LeaveGroupRequest::default()
            .with_group_id(group("g1"))
            .with_members(vec![
                MemberIdentity::default().with_member_id(s(&member_a)),
                MemberIdentity::default().with_member_id(s(&member_b)),
            ]),
    );
    assert_eq!(left.error_code, 0);
    assert!(left.members.iter().all(|m| m.error_code == 0));
    let described = a.send(
        0,
        &DescribeGroupsRequest::default().with_groups(vec![group("g1")]),
    );
    assert_eq!(described.groups[0].group_state.as_str(), "Empty");

    // Offsets are deleted per partition once nobody consumes them.
    let offset_deleted = a.send(
        0,
        &OffsetDeleteRequest::default()
            .with_group_id(group("g1"))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(common::name("orders"))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(1)
                ])]),
    );
    assert_eq!(offset_deleted.error_code, 0);
    assert_eq!(offset_deleted.topics[0].partitions[0].error_code, 0);
    assert_eq!(fetch_v5(&mut a, "g1", "orders", 4), vec![12, -1, 22, -1]);

    // A client managing its own partitions commits with generation -1 to another group.
    assert_eq!(
        commit(&mut a, 2, "manual", -1, "", "orders", &[(3, 7)]),
        vec![0]
    );
    drop((a, b));
    broker.stop();

    // After a restart the coordinators replay __consumer_offsets.
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    assert_eq!(fetch_v5(&mut c, "g1", "orders", 4), vec![12, -1, 22, -1]);
    let batched = c.send(
        8,
        &OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(group("manual"))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(common::name("orders"))
                    .with_partition_indexes(vec![3])])),
            OffsetFetchRequestGroup::default()
                .with_group_id(group("g1"))
                .with_topics(None),
        ]),
    );
    assert_eq!(
        batched.groups[0].topics[0].partitions[0].committed_offset,
        7
    );
    let all: Vec<(i32, i64)> = batched.groups[1].topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect();
    assert_eq!(all, vec![(0, 12), (2, 22)]);
    // The group's generation came back too: a new member starts after it.
    let joined = join(&mut c, "g1");
    assert!(
        joined.generation_id > gen2,
        "generation {} after {gen2}",
        joined.generation_id
    );

    // Deleting an empty group drops its offsets, durably.
    let left = c.send(
        1,
        &LeaveGroupRequest::default()
            .with_group_id(group("g1"))
            .with_member_id(joined.member_id.clone()),
    );
    assert_eq!(left.error_code, 0);
    let deleted = c.send(
        1,
        &DeleteGroupsRequest::default().with_groups_names(vec![group("g1"), group("never")]),
    );
    assert_eq!(deleted.results[0].error_code, 0);
    assert_eq!(
        deleted.results[1].error_code,
        ResponseError::GroupIdNotFound.code()
    );
    drop(c);
    broker.stop();
    let broker = TestBroker::start(dir.path(), 2);
    let mut d = broker.client();
    assert_eq!(fetch_v5(&mut d, "g1", "orders", 4), vec![-1, -1, -1, -1]);
    assert_eq!(fetch_v5(&mut d, "manual", "orders", 4), vec![-1, -1, -1, 7]);
}

#[test]
fn bad_joins_get_kafkas_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    let short = join_request("g", "").with_session_timeout_ms(10);
    assert_eq!(
        c.send(5, &short).error_code,
        ResponseError::InvalidSessionTimeout.code()
    );
    let unknown = join_request("g", "ghost");
    assert_eq!(
        c.send(5, &unknown).error_code,
        ResponseError::UnknownMemberId.code()
    );
    assert_eq!(
        c.send(5, &join_request("", "")).error_code,
        ResponseError::InvalidGroupId.code()
    );
    let joined = join(&mut c, "g");
    assert_eq!(joined.error_code, 0);
    // Another protocol type, or no protocol in common, cannot join.
    let other = join_request("g", "").with_protocol_type(s("connect"));
    assert_eq!(
        c.send(3, &other).error_code,
        ResponseError::InconsistentGroupProtocol.code()
    );
    // Before v4 there is no MEMBER_ID_REQUIRED step; the stale generation is refused.
    assert_eq!(
        sync(
            &mut c,
            "g",
            joined.generation_id + 5,
            &joined.member_id,
            &[]
        )
        .0,
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        heartbeat(&mut c, "nope", 1, "x"),
        ResponseError::UnknownMemberId.code()
    );
}

#[test]
fn offsets_of_empty_groups_expire_and_stay_expired() {
    let dir = tempfile::tempdir().unwrap();
    let groups = spate_net::group::GroupConfig {
        offsets_partitions: 4,
        initial_rebalance_delay: std::time::Duration::ZERO,
        offsets_retention: std::time::Duration::from_millis(600),
        offsets_retention_check: std::time::Duration::from_millis(100),
        ..Default::default()
    };
    let broker = TestBroker::start_with(dir.path(), 2, groups);
    let mut c = broker.client();
    common::create(&mut c, "t", 2);
    assert_eq!(commit(&mut c, 8, "idle", -1, "", "t", &[(0, 5)]), vec![0]);
    // A group with a member keeps its offsets however old they are.
    let joined = join(&mut c, "busy");
    let (error, _) = sync(&mut c, "busy", joined.generation_id, &joined.member_id, &[]);
    assert_eq!(error, 0);
    assert_eq!(
        commit(
            &mut c,
            8,
            "busy",
            joined.generation_id,
            &joined.member_id,
            "t",
            &[(1, 9)]
        ),
        vec![0]
    );
    assert_eq!(fetch_v5(&mut c, "idle", "t", 2), vec![5, -1]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fetch_v5(&mut c, "idle", "t", 2) != vec![-1, -1] {
        assert!(
            std::time::Instant::now() < deadline,
            "offsets never expired"
        );
        assert_eq!(
            heartbeat(&mut c, "busy", joined.generation_id, &joined.member_id),
            0
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(fetch_v5(&mut c, "busy", "t", 2), vec![-1, 9]);
    let listed = c.send(4, &ListGroupsRequest::default());
    let names: Vec<&str> = listed.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(names, vec!["busy"], "the expired group is gone");
    drop(c);
    broker.stop();
    let broker = TestBroker::start_with(dir.path(), 2, groups);
    let mut c = broker.client();
    // The expiry was written down: the old commit does not come back.
    assert_eq!(fetch_v5(&mut c, "idle", "t", 2), vec![-1, -1]);
}

#[test]
fn names_too_long_for_the_offsets_log_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    common::create(&mut c, "t", 1);
    // Flexible versions carry strings longer than the log's i16-prefixed schemas hold.
    let long = "g".repeat(40_000);
    assert_eq!(
        c.send(6, &join_request(&long, "")).error_code,
        ResponseError::InvalidGroupId.code()
    );
    assert_eq!(
        commit(&mut c, 8, &long, -1, "", "t", &[(0, 1)]),
        vec![ResponseError::InvalidGroupId.code()]
    );
    let mut request = join_request("g", "");
    request.group_instance_id = Some(s(&long));
    assert_eq!(
        c.send(6, &request).error_code,
        ResponseError::InvalidRequest.code()
    );
    let request = join_request("g", "").with_protocol_type(s(&long));
    assert_eq!(
        c.send(6, &request).error_code,
        ResponseError::InvalidRequest.code()
    );
    // The broker is still serving.
    assert_eq!(commit(&mut c, 8, "g", -1, "", "t", &[(0, 1)]), vec![0]);
}
