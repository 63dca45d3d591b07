//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs and CreatePartitions against a
//! live broker, at every supported version: values and sources, replace versus edit
//! semantics, refusals that change nothing, the engine acting on a changed config, and
//! survival across a restart.

mod common;

use bytes::Bytes;
use common::{create, name, produce, Client, TestBroker};
use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsRequest, AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_configs_response::DescribeConfigsResult;
use kafka_protocol::messages::incremental_alter_configs_request as incremental;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::BrokerId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use spate_engine::batch;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn describe(c: &mut Client, version: i16, kind: i8, resource: &str) -> DescribeConfigsResult {
    let request = DescribeConfigsRequest::default()
        .with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(s(resource))
            .with_configuration_keys(None)])
        .with_include_synonyms(true)
        .with_include_documentation(version >= 3);
    c.send(version, &request).results.remove(0)
}

/// (value, source) of one config of a topic.
fn config(c: &mut Client, topic: &str, key: &str) -> (String, i8) {
    let result = describe(c, 4, TOPIC, topic);
    assert_eq!(result.error_code, 0, "{:?}", result.error_message);
    let entry = result
        .configs
        .iter()
        .find(|e| e.name.as_str() == key)
        .unwrap_or_else(|| panic!("{key} described"));
    (
        entry.value.as_ref().unwrap().to_string(),
        entry.config_source,
    )
}

fn alter(c: &mut Client, version: i16, topic: &str, pairs: &[(&str, &str)], only: bool) -> i16 {
    let configs = pairs
        .iter()
        .map(|(k, v)| {
            AlterableConfig::default()
                .with_name(s(k))
                .with_value(Some(s(v)))
        })
        .collect();
    let request = AlterConfigsRequest::default()
        .with_validate_only(only)
        .with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(s(topic))
            .with_configs(configs)]);
    c.send(version, &request).responses[0].error_code
}

fn edit(c: &mut Client, version: i16, topic: &str, edits: &[(&str, i8, Option<&str>)]) -> i16 {
    let configs = edits
        .iter()
        .map(|(k, op, v)| {
            incremental::AlterableConfig::default()
                .with_name(s(k))
                .with_config_operation(*op)
                .with_value(v.map(s))
        })
        .collect();
    let request = incremental::IncrementalAlterConfigsRequest::default().with_resources(vec![
        incremental::AlterConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(s(topic))
            .with_configs(configs),
    ]);
    c.send(version, &request).responses[0].error_code
}

fn grow(c: &mut Client, version: i16, topic: &str, count: i32, only: bool) -> i16 {
    let request = CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_validate_only(only)
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(name(topic))
            .with_count(count)
            .with_assignments(None)]);
    c.send(version, &request).results[0].error_code
}

fn partition_count(c: &mut Client, topic: &str) -> usize {
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(name(topic))),
    ]));
    c.send(12, &request).topics[0].partitions.len()
}

#[test]
fn describe_configs_shows_values_sources_and_types_at_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "t", 2);
    assert_eq!(
        edit(&mut c, 1, "t", &[("retention.ms", 0, Some("5000"))]),
        0
    );
    for version in 1..=4 {
        let result = describe(&mut c, version, TOPIC, "t");
        assert_eq!(result.error_code, 0);
        let get = |key: &str| {
            result
                .configs
                .iter()
                .find(|e| e.name.as_str() == key)
                .unwrap()
                .clone()
        };
        let retention = get("retention.ms");
        assert_eq!(retention.value.as_deref(), Some("5000"));
        assert_eq!(retention.config_source, SOURCE_TOPIC);
        assert_eq!(
            retention.synonyms.len(),
            2,
            "the override, then the default"
        );
        assert_eq!(retention.synonyms[1].name.as_str(), "log.retention.ms");
        let segment = get("segment.bytes");
        assert_eq!(segment.value.as_deref(), Some("1073741824"));
        assert_eq!(segment.config_source, SOURCE_DEFAULT);
        if version >= 3 {
            assert_eq!(retention.config_type, 5, "LONG");
            assert_eq!(get("cleanup.policy").config_type, 7, "LIST");
            assert!(!retention.documentation.unwrap().is_empty());
        }
    }
    // Only the keys asked for; unknown ones are left out.
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(s("t"))
            .with_configuration_keys(Some(vec![s("segment.ms"), s("no.such.key")]))]);
    let result = c.send(4, &request).results.remove(0);
    assert_eq!(result.configs.len(), 1);
    assert_eq!(result.configs[0].name.as_str(), "segment.ms");
    // Errors: an unknown topic, another broker, an unsupported resource type.
    let code = |r: DescribeConfigsResult| r.error_code;
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    assert_eq!(code(describe(&mut c, 4, TOPIC, "nope")), unknown);
    let invalid = ResponseError::InvalidRequest.code();
    assert_eq!(code(describe(&mut c, 4, BROKER, "7")), invalid);
    assert_eq!(code(describe(&mut c, 4, 99, "x")), invalid);
    // The broker: read-only settings.
    let result = describe(&mut c, 4, BROKER, "1");
    assert_eq!(result.error_code, 0);
    let partitions = result
        .configs
        .iter()
        .find(|e| e.name.as_str() == "num.partitions")
        .unwrap();
    assert_eq!(partitions.value.as_deref(), Some("2"));
    assert!(partitions.read_only);
}

#[test]
fn alter_configs_replaces_and_incremental_edits_and_bad_changes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "t", 2);
    for version in 0..=2 {
        let retention = format!("{}", 1000 + version);
        assert_eq!(
            alter(&mut c, version, "t", &[("retention.ms", &retention)], false),
            0
        );
        assert_eq!(
            config(&mut c, "t", "retention.ms"),
            (retention, SOURCE_TOPIC)
        );
        // Replacing drops every override not named.
        assert_eq!(
            alter(&mut c, version, "t", &[("segment.ms", "60000")], false),
            0
        );
        let (value, source) = config(&mut c, "t", "retention.ms");
        assert_eq!((value.as_str(), source), ("604800000", SOURCE_DEFAULT));
        // validate_only checks but changes nothing.
        assert_eq!(alter(&mut c, version, "t", &[("segment.ms", "5")], true), 0);
        assert_eq!(config(&mut c, "t", "segment.ms").0, "60000");
        // A bad value refuses the whole change.
        let bad = alter(
            &mut c,
            version,
            "t",
            &[("segment.ms", "7"), ("segment.bytes", "x")],
            false,
        );
        assert_eq!(bad, ResponseError::InvalidConfig.code());
        assert_eq!(config(&mut c, "t", "segment.ms").0, "60000");
    }
    for version in 0..=1 {
        assert_eq!(
            edit(
                &mut c,
                version,
                "t",
                &[("retention.bytes", 0, Some("99999"))]
            ),
            0
        );
        assert_eq!(
            config(&mut c, "t", "segment.ms").0,
            "60000",
            "edits keep the rest"
        );
        assert_eq!(
            edit(
                &mut c,
                version,
                "t",
                &[("cleanup.policy", 2, Some("compact"))]
            ),
            0
        );
        assert_eq!(config(&mut c, "t", "cleanup.policy").0, "delete,compact");
        assert_eq!(
            edit(
                &mut c,
                version,
                "t",
                &[("cleanup.policy", 3, Some("compact"))]
            ),
            0
        );
        assert_eq!(config(&mut c, "t", "cleanup.policy").0, "delete");
        assert_eq!(
            edit(&mut c, version, "t", &[("retention.bytes", 1, None)]),
            0
        );
        assert_eq!(config(&mut c, "t", "retention.bytes").1, SOURCE_DEFAULT);
        let not_a_list = edit(&mut c, version, "t", &[("segment.ms", 2, Some("5"))]);
        assert_eq!(not_a_list, ResponseError::InvalidConfig.code());
        let bad_op = edit(&mut c, version, "t", &[("segment.ms", 9, Some("5"))]);
        assert_eq!(bad_op, ResponseError::InvalidRequest.code());
    }
    // Brokers are not alterable; a resource named twice is refused.
    let request = AlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(BROKER)
            .with_resource_name(s("1")),
        AlterConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(s("t")),
        AlterConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(s("t")),
    ]);
    let codes: Vec<i16> = c
        .send(2, &request)
        .responses
        .iter()
        .map(|r| r.error_code)
        .collect();
    let invalid = ResponseError::InvalidRequest.code();
    assert_eq!(codes, [invalid, 0, invalid]);
}

#[test]
fn a_changed_segment_size_rolls_segments_and_configs_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "roll", 1);
    assert_eq!(
        edit(&mut c, 1, "roll", &[("segment.bytes", 0, Some("1024"))]),
        0
    );
    // Current timestamps: a sealed segment whose records are older than retention.ms is
    // deleted by the retention pass that follows its roll.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..8 {
        let records = Bytes::from(batch::encode_test_batch(2, 200, now + i));
        assert_eq!(
            produce(&mut c, 9, -1, "roll", 0, records).responses[0].partition_responses[0]
                .error_code,
            0
        );
    }
    let logs = std::fs::read_dir(dir.path().join("roll-0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
        .count();
    assert!(logs >= 3, "1 KiB segments roll: {logs} segment files");
    drop(c);
    broker.stop();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    assert_eq!(
        config(&mut c, "roll", "segment.bytes"),
        ("1024".into(), SOURCE_TOPIC)
    );
}

#[test]
fn create_partitions_grows_topics_whole_and_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "g", 1);
    assert_eq!(
        edit(&mut c, 1, "g", &[("max.message.bytes", 0, Some("100"))]),
        0
    );
    for version in 0..=3 {
        let count = 2 + version as i32;
        assert_eq!(
            grow(&mut c, version, "g", count + 5, true),
            0,
            "validate only"
        );
        assert_eq!(partition_count(&mut c, "g"), count as usize - 1);
        assert_eq!(grow(&mut c, version, "g", count, false), 0);
        assert_eq!(partition_count(&mut c, "g"), count as usize);
        let invalid = ResponseError::InvalidPartitions.code();
        assert_eq!(
            grow(&mut c, version, "g", count, false),
            invalid,
            "same count"
        );
        assert_eq!(grow(&mut c, version, "g", 1, false), invalid, "shrink");
        let unknown = ResponseError::UnknownTopicOrPartition.code();
        assert_eq!(grow(&mut c, version, "nope", 3, false), unknown);
    }
    // The newest partition takes the topic's config: a batch over 100 bytes is refused.
    let big = Bytes::from(batch::encode_test_batch(1, 200, 0));
    let code = produce(&mut c, 9, 1, "g", 4, big).responses[0].partition_responses[0].error_code;
    assert_eq!(code, ResponseError::MessageTooLarge.code());
    let small = Bytes::from(batch::encode_test_batch(1, 5, 0));
    let code = produce(&mut c, 9, 1, "g", 4, small).responses[0].partition_responses[0].error_code;
    assert_eq!(code, 0);
    // Manual assignments are refused.
    let request =
        CreatePartitionsRequest::default().with_topics(vec![CreatePartitionsTopic::default()
            .with_name(name("g"))
            .with_count(9)
            .with_assignments(Some(vec![
                CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1)])
            ]))]);
    let code = c.send(3, &request).results[0].error_code;
    assert_eq!(code, ResponseError::InvalidReplicaAssignment.code());
    assert_eq!(partition_count(&mut c, "g"), 5);
}
