use super::*;
use proptest::prelude::*;

fn topic(name: &str, assignments: Vec<Vec<u32>>) -> MetadataRecord {
    MetadataRecord::CreateTopic {
        name: name.into(),
        id: [name.len() as u8; 16],
        configs: vec![("retention.ms".into(), "1000".into())],
        assignments,
    }
}

#[test]
fn records_apply_in_order_and_a_record_that_does_not_apply_changes_nothing() {
    let mut image = MetadataImage::new("cluster");
    image
        .apply(
            Offset(0),
            &MetadataRecord::RegisterBroker {
                id: 1,
                host: "h1".into(),
                port: 9092,
            },
        )
        .unwrap();
    image
        .apply(Offset(1), &topic("a", vec![vec![1], vec![1]]))
        .unwrap();
    let before = image.clone();
    assert_eq!(
        image.apply(Offset(2), &topic("a", vec![vec![1]])),
        Err(MetadataError::TopicExists("a".into()))
    );
    assert_eq!(
        image.apply(
            Offset(2),
            &MetadataRecord::AddPartitions {
                name: "a".into(),
                assignments: vec![vec![1, 2]]
            }
        ),
        Err(MetadataError::InvalidAssignment {
            topic: "a".into(),
            reason: "partition 0 has replicas [1, 2], not 1 distinct brokers".into()
        })
    );
    assert!(
        image
            .apply(Offset(2), &topic("b", vec![vec![1, 1]]))
            .is_err(),
        "replicas must be distinct"
    );
    assert!(
        image.apply(Offset(2), &topic("b", vec![])).is_err(),
        "a topic has partitions"
    );
    assert!(image
        .apply(
            Offset(2),
            &MetadataRecord::DeleteTopic { name: "zz".into() }
        )
        .is_err());
    assert_eq!(image, before);
    assert!(matches!(
        image.apply(
            Offset(1),
            &MetadataRecord::ProducerIds { start: 0, next: 5 }
        ),
        Err(MetadataError::OutOfOrder { .. })
    ));
    image
        .apply(
            Offset(7),
            &MetadataRecord::AddPartitions {
                name: "a".into(),
                assignments: vec![vec![1]],
            },
        )
        .unwrap();
    let catalog = image.catalog();
    assert_eq!(catalog.topics["a"].partitions, 3);
    assert_eq!(catalog.cluster_id, "cluster");
    assert_eq!(image.replicas_on(1).len(), 3);
    assert_eq!(image.applied, 7);
}

fn record() -> impl Strategy<Value = MetadataRecord> {
    let name = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
    let assignment =
        prop::collection::vec(prop::collection::btree_set(1u32..5, 2), 1..4).prop_map(|ps| {
            ps.into_iter()
                .map(|s| s.into_iter().collect())
                .collect::<Vec<Vec<u32>>>()
        });
    prop_oneof![
        (1u32..5, 1u16..100).prop_map(|(id, port)| MetadataRecord::RegisterBroker {
            id,
            host: format!("h{id}"),
            port
        }),
        (1u32..5, 1u16..100).prop_map(|(id, port)| MetadataRecord::RegisterBrokerAt {
            id,
            host: format!("h{id}"),
            port,
            peer: format!("127.0.0.{id}:{}", port + 1000),
        }),
        (name.clone(), assignment.clone()).prop_map(|(n, a)| topic(&n, a)),
        name.clone()
            .prop_map(|name| MetadataRecord::DeleteTopic { name }),
        (name.clone(), assignment)
            .prop_map(|(name, assignments)| MetadataRecord::AddPartitions { name, assignments }),
        (name.clone(), "[0-9]{1,3}").prop_map(|(name, v)| MetadataRecord::SetConfigs {
            name,
            configs: vec![("retention.ms".into(), v)]
        }),
        (0i64..1000).prop_map(|next| MetadataRecord::ProducerIds { start: 0, next }),
        (name.clone(), 0i32..3, 1u32..5, 0i32..4).prop_map(|(topic, partition, leader, epoch)| {
            MetadataRecord::PartitionLeader {
                topic,
                partition,
                leader,
                epoch,
            }
        }),
    ]
}

proptest! {
    /// A snapshot taken anywhere, then the records after it, gives the image a full
    /// replay gives; batches round-trip through the Kafka record format.
    #[test]
    fn snapshot_plus_suffix_equals_full_replay(records in prop::collection::vec(record(), 1..40), cut in 0usize..40) {
        let bytes = encode_batch(&records, 1_000);
        let mut stored = bytes.clone();
        batch::patch(&mut stored, Offset(100), spate_engine::LeaderEpoch(3));
        let decoded = decode_batch(&stored).unwrap();
        prop_assert_eq!(decoded.len(), records.len());
        let mut full = MetadataImage::new("c");
        let mut snapshot = None;
        for (i, (offset, record)) in decoded.iter().enumerate() {
            prop_assert_eq!(record, &records[i]);
            prop_assert_eq!(*offset, Offset(100 + i as i64));
            let _ = full.apply(*offset, record);
            if i + 1 == cut.min(records.len()) {
                snapshot = Some(full.encode_snapshot());
            }
        }
        let mut restored = match snapshot {
            Some(bytes) => MetadataImage::decode_snapshot(&bytes).unwrap(),
            None => MetadataImage::new("c"),
        };
        let resume = restored.applied;
        for (offset, record) in decoded.iter().filter(|(o, _)| o.0 > resume) {
            let _ = restored.apply(*offset, record);
        }
        // Records refused by both replays leave `applied` behind identically.
        prop_assert_eq!(restored.topics, full.topics);
        prop_assert_eq!(restored.brokers, full.brokers);
        prop_assert_eq!(restored.next_producer_id, full.next_producer_id);
    }
}

#[test]
fn damaged_records_and_snapshots_are_refused_not_skipped() {
    let mut bytes = encode_batch(&[MetadataRecord::ProducerIds { start: 0, next: 3 }], 0);
    // Flip a byte inside the record's value and reseal the CRC: the batch is valid
    // Kafka, the value is not a metadata record.
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    batch::set_producer(&mut bytes, -1, -1, -1);
    assert!(matches!(
        decode_batch(&bytes),
        Err(MetadataError::Undecodable { .. })
    ));
    let mut snap = MetadataImage::new("c").encode_snapshot();
    let last = snap.len() - 1;
    snap[last] ^= 1;
    assert_eq!(MetadataImage::decode_snapshot(&snap), None);
    let marker = batch::encode_leader_marker(0);
    assert_eq!(decode_batch(&marker).unwrap(), vec![]);
}

#[test]
fn records_keep_their_archived_size_so_old_logs_decode() {
    // A new variant larger than the largest would change every record's layout.
    assert_eq!(std::mem::size_of::<super::ArchivedMetadataRecord>(), 48);
}

#[test]
fn a_partitions_leader_is_recorded_for_newer_epochs_only_and_goes_with_its_topic() {
    let mut image = MetadataImage::new("cluster");
    image
        .apply(Offset(0), &topic("t", vec![vec![1, 2], vec![2, 3]]))
        .unwrap();
    let leader = |partition, leader, epoch| MetadataRecord::PartitionLeader {
        topic: "t".into(),
        partition,
        leader,
        epoch,
    };
    image.apply(Offset(1), &leader(0, 2, 3)).unwrap();
    assert_eq!(image.recorded_leader("t", 0), Some((2, 3)));
    assert_eq!(image.recorded_leader("t", 1), None);
    // The same report again applies; an older epoch, or another leader in the same
    // epoch, does not; nor does a broker that is not a replica, or a partition not there.
    image.apply(Offset(2), &leader(0, 2, 3)).unwrap();
    assert!(matches!(
        image.apply(Offset(3), &leader(0, 1, 2)),
        Err(MetadataError::StaleLeader {
            recorded_epoch: 3,
            ..
        })
    ));
    assert!(image.apply(Offset(3), &leader(0, 1, 3)).is_err());
    assert!(matches!(
        image.apply(Offset(3), &leader(0, 3, 9)),
        Err(MetadataError::NotAReplica { .. })
    ));
    assert!(image.apply(Offset(3), &leader(5, 1, 9)).is_err());
    image.apply(Offset(3), &leader(0, 1, 4)).unwrap();
    assert_eq!(image.recorded_leader("t", 0), Some((1, 4)));
    let snapshot = MetadataImage::decode_snapshot(&image.encode_snapshot()).unwrap();
    assert_eq!(snapshot.recorded_leader("t", 0), Some((1, 4)));
    // A topic deleted and created again starts with no leader recorded.
    image
        .apply(Offset(4), &MetadataRecord::DeleteTopic { name: "t".into() })
        .unwrap();
    image
        .apply(Offset(5), &topic("t", vec![vec![1, 2]]))
        .unwrap();
    assert_eq!(image.recorded_leader("t", 0), None);
}
