//! A three-broker cluster of real `spate serve` processes under process faults, driven
//! by stock librdkafka (confluent-kafka from the test command's virtualenv, `.venv` or
//! `SPATE_TEST_PYTHON`). The partition leader killed with SIGKILL three times, the
//! leader frozen with SIGSTOP, and every broker killed at once: each time another leader
//! is named within 10 s, the idempotent producer carries on, and afterwards every
//! acks=all acknowledgement is in the log at the offset it gave, in the order it was
//! sent, and no value is written twice. A consumer group whose coordinator is killed
//! twice keeps consuming, and never resumes below an acknowledged commit. A compacted
//! topic is cleaned by every replica, a follower catches up from its leader's cleaned
//! log, and a new leader serves the same table. DeleteRecords is refused by followers,
//! and the log start it sets at the leader holds after a failover. A broker down while
//! one topic is deleted and another deleted and created again deletes the first's
//! partition and serves none of the second's old records. `spate produce` and
//! `spate consume` route each partition to its leader, and carry on, writing and
//! printing every line once, when the leader they were both given is killed; `spate
//! consume --group` carries on across that kill and the kill of its coordinator. With
//! two replicas per partition on three brokers, every broker names each partition's
//! leader and epoch as its replicas do, before and after an election. The
//! scenarios and the checker are `python/cluster.py`.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

mod support;

/// The scenarios run one at a time: each runs three brokers and a client, and together on
/// a small machine they would stretch elections past the 10 s the checker allows.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs one scenario of `cluster.py` in a fresh directory; on failure, shows its output
/// (which ends with the tails of the brokers' logs).
fn run(scenario: &str) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/cluster.py");
    let output = Command::new(support::python())
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_spate"))
        .arg(dir.path())
        .arg(scenario)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cluster.py {scenario} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_killed_leader_is_replaced_and_no_acknowledged_record_is_lost() {
    run("kill-leader");
}

#[test]
fn a_stopped_leader_is_replaced_and_its_unacknowledged_suffix_never_surfaces() {
    run("pause-leader");
}

#[test]
fn every_acknowledged_record_survives_killing_every_broker_at_once() {
    run("kill-all");
}

#[test]
fn a_consumer_group_keeps_consuming_and_its_commits_across_coordinator_failovers() {
    run("group-failover");
}

#[test]
fn delete_records_is_for_the_leader_and_a_replica_below_its_log_start_starts_over_there() {
    run("delete-records");
}

#[test]
fn every_replica_of_a_compacted_topic_cleans_and_a_new_leader_serves_the_same_table() {
    run("compaction");
}

#[test]
fn a_broker_away_while_topics_were_deleted_or_recreated_keeps_none_of_their_records() {
    run("recreated-topic");
}

#[test]
fn spate_produce_and_consume_route_each_partition_to_its_leader() {
    run("cli-tools");
}

#[test]
fn spate_produce_and_consume_follow_leaders_and_coordinators_when_their_brokers_are_killed() {
    run("cli-failover");
}

#[test]
fn every_broker_names_each_partitions_leader_and_epoch_without_a_replica_too() {
    run("leaders-everywhere");
}

#[test]
fn a_broker_that_is_not_a_voter_replicates_follows_the_controller_and_forwards_to_it() {
    run("non-voter");
}
