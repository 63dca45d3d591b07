//! Writes seed corpora: for `request_decode`, every API and version Spate accepts with a
//! default body, so the fuzzer starts from well-formed headers of each message; for
//! `record_batch`, a few valid batches. `cargo run --example seeds -- corpus` (in fuzz/).

use bytes::BytesMut;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

fn body(key: ApiKey) -> Option<RequestKind> {
    Some(match key {
        ApiKey::Produce => RequestKind::Produce(Default::default()),
        ApiKey::Fetch => RequestKind::Fetch(Default::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::Metadata => RequestKind::Metadata(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(Default::default()),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(Default::default()),
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(Default::default()),
        ApiKey::DeleteRecords => RequestKind::DeleteRecords(Default::default()),
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(Default::default()),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(Default::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(Default::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(Default::default()),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(Default::default()),
        ApiKey::BrokerRegistration => RequestKind::BrokerRegistration(Default::default()),
        ApiKey::AllocateProducerIds => RequestKind::AllocateProducerIds(Default::default()),
        ApiKey::AlterPartition => RequestKind::AlterPartition(Default::default()),
        _ => return None,
    })
}

fn main() {
    let root = std::path::PathBuf::from(std::env::args().nth(1).expect("corpus directory"));
    let batches = root.join("record_batch");
    std::fs::create_dir_all(&batches).unwrap();
    for (i, (count, size)) in [(1, 0), (3, 10), (20, 50)].into_iter().enumerate() {
        let batch = spate_engine::batch::encode_test_batch(count, size, 1_000 * i as i64);
        std::fs::write(batches.join(format!("batch-{i}")), batch).unwrap();
    }
    let dir = root.join("request_decode");
    std::fs::create_dir_all(&dir).unwrap();
    let mut written = 0;
    for &(key, min, max) in spate_net::handlers::SUPPORTED {
        let Some(kind) = body(key) else {
            panic!("no seed body for {key:?}: add it here");
        };
        for version in min..=max {
            let mut frame = BytesMut::new();
            RequestHeader::default()
                .with_request_api_key(key as i16)
                .with_request_api_version(version)
                .with_correlation_id(7)
                .with_client_id(Some(StrBytes::from_static_str("seed")))
                .encode(&mut frame, key.request_header_version(version))
                .unwrap();
            if kind.encode(&mut frame, version).is_err() {
                continue;
            }
            std::fs::write(dir.join(format!("{key:?}-v{version}")), &frame).unwrap();
            written += 1;
        }
    }
    println!("wrote {written} seeds to {}", dir.display());
}
