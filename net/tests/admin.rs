//! Metadata and CreateTopics against a live broker: creation across shards, errors with
//! Kafka's codes, auto-creation, visibility on every connection, and survival of topics,
//! ids and the cluster id across a restart.

mod common;

use common::TestBroker;
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::MetadataResponse;
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

fn topic(
    name: &str,
    partitions: i32,
    replication: i16,
    configs: &[(&str, &str)],
) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.into())))
        .with_num_partitions(partitions)
        .with_replication_factor(replication)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string((*k).into()))
                        .with_value(Some(StrBytes::from_string((*v).into())))
                })
                .collect(),
        )
}

fn metadata(
    client: &mut common::Client,
    version: i16,
    topics: Option<&[&str]>,
    auto_create: bool,
) -> MetadataResponse {
    let topics = topics.map(|names| {
        names
            .iter()
            .map(|n| {
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_string((*n).into()))))
            })
            .collect()
    });
    // allow_auto_topic_creation exists from v4; older versions always allow it.
    let request = MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(auto_create || version < 4);
    client.send(version, &request)
}

#[test]
fn topics_are_created_whole_and_reported_with_kafka_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            topic(
                "orders",
                6,
                1,
                &[("retention.ms", "3600000"), ("cleanup.policy", "delete")],
            ),
            topic("bad/name", 1, 1, &[]),
            topic("replicated", 1, 3, &[]),
            topic("badconfig", 1, -1, &[("segment.bytes", "12")]),
            topic("unknownconfig", 1, -1, &[("no.such.config", "1")]),
            topic("nopartitions", 0, 1, &[]),
            topic("defaults", -1, -1, &[]),
        ]);
    let response = c.send(7, &request);
    let codes: Vec<(String, i16)> = response
        .topics
        .iter()
        .map(|t| (t.name.0.as_str().to_string(), t.error_code))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("orders".into(), 0),
            (
                "bad/name".into(),
                ResponseError::InvalidTopicException.code()
            ),
            (
                "replicated".into(),
                ResponseError::InvalidReplicationFactor.code()
            ),
            ("badconfig".into(), ResponseError::InvalidConfig.code()),
            ("unknownconfig".into(), ResponseError::InvalidConfig.code()),
            (
                "nopartitions".into(),
                ResponseError::InvalidPartitions.code()
            ),
            ("defaults".into(), 0),
        ]
    );
    assert!(response.topics[3]
        .error_message
        .as_ref()
        .unwrap()
        .contains("segment.bytes"));
    assert_eq!(
        response.topics[6].num_partitions, 2,
        "num.partitions default"
    );
    for version in 2..=7 {
        let name = format!("v{version}");
        let r = c.send(
            version,
            &CreateTopicsRequest::default().with_topics(vec![topic(&name, 1, 1, &[])]),
        );
        assert_eq!(
            (r.topics[0].name.0.as_str(), r.topics[0].error_code),
            (name.as_str(), 0),
            "v{version}"
        );
    }
    let again = c.send(
        7,
        &CreateTopicsRequest::default().with_topics(vec![topic("orders", 1, 1, &[])]),
    );
    assert_eq!(
        again.topics[0].error_code,
        ResponseError::TopicAlreadyExists.code()
    );
    let dry = c.send(
        7,
        &CreateTopicsRequest::default()
            .with_validate_only(true)
            .with_topics(vec![topic("dry", 1, 1, &[])]),
    );
    assert_eq!(dry.topics[0].error_code, 0);

    // Visible at once on other connections, whichever shard they landed on.
    for _ in 0..8 {
        let mut other = broker.client();
        let md = metadata(&mut other, 12, Some(&["orders", "dry"]), false);
        assert_eq!(md.topics[0].error_code, 0);
        assert_eq!(md.topics[0].partitions.len(), 6);
        for (i, p) in md.topics[0].partitions.iter().enumerate() {
            assert_eq!(p.partition_index, i as i32);
            assert_eq!((p.leader_id, p.leader_epoch), (BrokerId(1), 0));
            assert_eq!(
                (p.replica_nodes.clone(), p.isr_nodes.clone()),
                (vec![BrokerId(1)], vec![BrokerId(1)])
            );
        }
        assert_eq!(
            md.topics[1].error_code,
            ResponseError::UnknownTopicOrPartition.code(),
            "validate_only created nothing"
        );
    }
    // The partitions exist in the engine, spread over both shards' directories.
    for p in 0..6 {
        assert!(dir.path().join(format!("orders-{p}")).is_dir());
    }
    assert!(!dir.path().join("dry-0").exists() && !dir.path().join("replicated-0").exists());
}

#[test]
fn metadata_answers_every_version_and_auto_creates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    c.send(
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![topic("a", 1, 1, &[]), topic("b", 3, 1, &[])]),
    );
    for version in 0..=12 {
        let all = if version == 0 {
            metadata(&mut c, 0, Some(&[]), false)
        } else {
            metadata(&mut c, version, None, false)
        };
        let mut names: Vec<&str> = all
            .topics
            .iter()
            .map(|t| t.name.as_ref().unwrap().0.as_str())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"], "v{version}");
        assert_eq!(all.brokers.len(), 1);
        assert_eq!(all.brokers[0].port, i32::from(broker.addr.port()));
        assert_eq!(all.brokers[0].host.as_str(), "127.0.0.1");
        if version >= 1 {
            assert!(
                metadata(&mut c, version, Some(&[]), false)
                    .topics
                    .is_empty(),
                "v{version}: empty list is none"
            );
        }
    }
    let md = metadata(&mut c, 12, Some(&["fresh"]), false);
    assert_eq!(
        md.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    let md = metadata(&mut c, 12, Some(&["fresh"]), true);
    assert_eq!(
        md.topics[0].error_code,
        ResponseError::LeaderNotAvailable.code()
    );
    let md = metadata(&mut c, 12, Some(&["fresh"]), true);
    assert_eq!(md.topics[0].error_code, 0);
    assert_eq!(md.topics[0].partitions.len(), 2);
    let md = metadata(&mut c, 12, Some(&["not/valid"]), true);
    assert_eq!(
        md.topics[0].error_code,
        ResponseError::InvalidTopicException.code()
    );
}

#[test]
fn topics_ids_and_cluster_id_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let broker = TestBroker::start(dir.path(), 2);
        let mut c = broker.client();
        c.send(
            7,
            &CreateTopicsRequest::default().with_topics(vec![topic("kept", 4, 1, &[])]),
        );
        let md = metadata(&mut c, 12, None, false);
        broker.stop();
        md
    };
    // Lose the catalog: the partitions on disk bring the topic back.
    let lost = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let target = lost.path().join(path.file_name().unwrap());
            std::process::Command::new("cp")
                .arg("-r")
                .arg(&path)
                .arg(&target)
                .status()
                .unwrap();
        }
    }
    let broker = TestBroker::start(dir.path(), 1);
    let after = metadata(&mut broker.client(), 12, None, false);
    assert_eq!(after.cluster_id, before.cluster_id);
    assert_eq!(after.topics[0].topic_id, before.topics[0].topic_id);
    assert_eq!(after.topics[0].partitions.len(), 4);
    broker.stop();
    let broker = TestBroker::start(lost.path(), 2);
    let rebuilt = metadata(&mut broker.client(), 12, None, false);
    assert_eq!(rebuilt.topics.len(), 1);
    assert_eq!(rebuilt.topics[0].partitions.len(), 4);
}

#[test]
fn topics_are_deleted_by_name_or_id_and_can_be_created_again() {
    use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
    use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    let names: Vec<String> = (1..=6).map(|v| format!("gone-v{v}")).collect();
    let topics = names
        .iter()
        .map(|n| topic(n, 3, 1, &[]))
        .chain([topic("by-id", 2, 1, &[])])
        .collect();
    c.send(7, &CreateTopicsRequest::default().with_topics(topics));
    for (version, name) in (1..=5).zip(&names) {
        let r = c.send(
            version,
            &DeleteTopicsRequest::default()
                .with_topic_names(vec![TopicName(StrBytes::from_string(name.clone()))])
                .with_timeout_ms(5000),
        );
        assert_eq!(r.responses[0].error_code, 0, "v{version}");
    }
    let id = metadata(&mut c, 12, Some(&["by-id"]), false).topics[0].topic_id;
    let r = c.send(
        6,
        &DeleteTopicsRequest::default().with_topics(vec![
            DeleteTopicState::default().with_topic_id(id),
            DeleteTopicState::default()
                .with_name(Some(TopicName(StrBytes::from_string("gone-v6".into())))),
            DeleteTopicState::default()
                .with_name(Some(TopicName(StrBytes::from_string("never".into())))),
        ]),
    );
    let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, [0, 0, ResponseError::UnknownTopicOrPartition.code()]);
    assert_eq!(r.responses[0].name.as_ref().unwrap().0.as_str(), "by-id");
    assert!(metadata(&mut c, 12, None, false).topics.is_empty());
    for p in 0..3 {
        assert!(
            !dir.path().join(format!("gone-v1-{p}")).exists(),
            "partition directories removed"
        );
    }
    let again = c.send(
        7,
        &CreateTopicsRequest::default().with_topics(vec![topic("gone-v1", 1, 1, &[])]),
    );
    assert_eq!(again.topics[0].error_code, 0);
    assert_eq!(
        metadata(&mut c, 12, Some(&["gone-v1"]), false).topics[0]
            .partitions
            .len(),
        1
    );
    for version in 0..=1 {
        let d = c.send(version, &DescribeClusterRequest::default());
        assert_eq!(d.brokers.len(), 1);
        assert_eq!(d.controller_id, BrokerId(1));
        assert!(!d.cluster_id.is_empty());
    }
}
