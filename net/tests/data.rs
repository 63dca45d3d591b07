//! Produce, Fetch and ListOffsets against a live broker. Fetch responses are framed by
//! hand for zero-copy; decoding them here with the kafka-protocol codec at every version
//! checks that framing against the reference encoding.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{create, name, produce, Client, TestBroker};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::ResponseError;
use spate_engine::batch;

fn fetch(
    c: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    offset: i64,
    wait_ms: i32,
    min_bytes: i32,
) -> FetchResponse {
    let request = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    c.send(version, &request)
}

fn list_offset(c: &mut Client, version: i16, topic: &str, timestamp: i64) -> (i16, i64) {
    let r = c.send(
        version,
        &ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(timestamp)])]),
    );
    (
        r.topics[0].partitions[0].error_code,
        r.topics[0].partitions[0].offset,
    )
}

#[test]
fn produced_batches_fetch_back_byte_for_byte_at_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "events", 3);
    let mut sent = Vec::new();
    for (i, acks) in [(0, -1i16), (1, 1), (2, -1), (3, 1)] {
        let records = batch::encode_test_batch(3, 100 + i, 1000 * (i as i64 + 1));
        let r = produce(&mut c, 9, acks, "events", 1, Bytes::from(records.clone()));
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, 3 * i as i64));
        sent.push(records);
    }
    // acks=0: no response; the next request's answer shows the batch landed.
    let mut quiet =
        ProduceRequest::default()
            .with_acks(0)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(name("events"))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(1)
                    .with_records(Some(Bytes::from(batch::encode_test_batch(
                        1, 10, 0,
                    ))))])]);
    quiet.timeout_ms = 1000;
    send_without_response(&mut c, 9, &quiet);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fetch(&mut c, 12, "events", 1, 0, 0, 0).responses[0].partitions[0].high_watermark < 13 {
        assert!(
            Instant::now() < deadline,
            "acks=0 batch never became visible"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for version in 4..=12 {
        let r = fetch(&mut c, version, "events", 1, 0, 0, 0);
        let p = &r.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (0, 13), "v{version}");
        let records = p.records.as_ref().unwrap();
        let mut at = 0;
        for (i, original) in sent.iter().enumerate() {
            let mut expected = original.clone();
            batch::patch(
                &mut expected,
                spate_engine::Offset(3 * i as i64),
                spate_engine::LeaderEpoch(0),
            );
            assert_eq!(
                &records[at..at + expected.len()],
                &expected[..],
                "v{version} batch {i}"
            );
            at += expected.len();
        }
    }
    // From the middle: starts with the batch containing the offset.
    let r = fetch(&mut c, 12, "events", 1, 7, 0, 0);
    let first =
        batch::BatchHeader::parse(r.responses[0].partitions[0].records.as_ref().unwrap()).unwrap();
    assert_eq!(first.base_offset.0, 6);
}

/// Writes a request for which no response comes (acks=0).
fn send_without_response(c: &mut Client, version: i16, request: &ProduceRequest) {
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::Encodable;
    use std::io::Write;
    let mut body = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(version)
        .with_correlation_id(999)
        .encode(
            &mut body,
            kafka_protocol::messages::ApiKey::Produce.request_header_version(version),
        )
        .unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    c.stream.write_all(&frame).unwrap();
}

#[test]
fn produce_errors_use_kafka_codes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "t", 1);
    let good = batch::encode_test_batch(2, 10, 0);
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let two = [good.clone(), good.clone()].concat();
    let cases: Vec<(&str, i16, Vec<u8>, i16)> = vec![
        ("t", 9, bad_crc, ResponseError::CorruptMessage.code()),
        (
            "t",
            9,
            good[..good.len() - 1].to_vec(),
            ResponseError::CorruptMessage.code(),
        ),
        ("t", 9, two, ResponseError::InvalidRecord.code()),
        (
            "t",
            2,
            good.clone(),
            ResponseError::UnsupportedVersion.code(),
        ),
        (
            "missing",
            9,
            good.clone(),
            ResponseError::UnknownTopicOrPartition.code(),
        ),
        (
            "t",
            9,
            batch::encode_test_batch(1, 2_000_000, 0),
            ResponseError::MessageTooLarge.code(),
        ),
    ];
    for (topic, version, records, code) in cases {
        let r = produce(&mut c, version, -1, topic, 0, Bytes::from(records));
        assert_eq!(
            r.responses[0].partition_responses[0].error_code, code,
            "{topic} v{version}"
        );
    }
    let r = produce(&mut c, 9, 3, "t", 0, Bytes::from(good.clone()));
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        ResponseError::InvalidRequiredAcks.code()
    );
    assert_eq!(
        list_offset(&mut c, 7, "t", -1),
        (0, 0),
        "nothing became visible"
    );
    let f = fetch(&mut c, 12, "t", 0, 5, 0, 0);
    assert_eq!(
        f.responses[0].partitions[0].error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    let f = fetch(&mut c, 12, "nope", 0, 0, 0, 0);
    assert_eq!(
        f.responses[0].partitions[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
}

#[test]
fn list_offsets_by_kind_and_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 1);
    let mut c = broker.client();
    create(&mut c, "clock", 1);
    for i in 0..5 {
        // Batch i holds 4 records stamped 10_000*i .. 10_000*i + 3.
        produce(
            &mut c,
            9,
            -1,
            "clock",
            0,
            Bytes::from(batch::encode_test_batch(4, 20, 10_000 * i)),
        );
    }
    for version in 1..=7 {
        assert_eq!(
            list_offset(&mut c, version, "clock", -2),
            (0, 0),
            "v{version} earliest"
        );
        assert_eq!(
            list_offset(&mut c, version, "clock", -1),
            (0, 20),
            "v{version} latest"
        );
        assert_eq!(
            list_offset(&mut c, version, "clock", 20_002),
            (0, 10),
            "v{version} by time"
        );
        assert_eq!(
            list_offset(&mut c, version, "clock", 99_999),
            (0, -1),
            "v{version} past the end"
        );
    }
    assert_eq!(
        list_offset(&mut c, 7, "clock", -3),
        (0, 19),
        "max timestamp"
    );
}

#[test]
fn a_long_poll_is_woken_by_an_append_not_by_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "tail", 1);
    let addr = broker.addr;
    let waiter = std::thread::spawn(move || {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut client = common::Client::from_stream(stream);
        let start = Instant::now();
        let r = fetch(&mut client, 12, "tail", 0, 0, 20_000, 1);
        (start.elapsed(), r.responses[0].partitions[0].high_watermark)
    });
    std::thread::sleep(Duration::from_millis(300));
    produce(
        &mut c,
        9,
        -1,
        "tail",
        0,
        Bytes::from(batch::encode_test_batch(1, 10, 0)),
    );
    let (waited, high_watermark) = waiter.join().unwrap();
    assert_eq!(high_watermark, 1);
    assert!(
        waited < Duration::from_secs(10),
        "woken by the append, not the 20 s timeout: {waited:?}"
    );
    // With no data the fetch returns at its max_wait_ms.
    let start = Instant::now();
    let r = fetch(&mut c, 12, "tail", 0, 1, 200, 1);
    assert!(start.elapsed() >= Duration::from_millis(190));
    assert!(r.responses[0].partitions[0]
        .records
        .as_ref()
        .is_none_or(|r| r.is_empty()));
}

/// This process's CPU time so far (user + system, every thread: the broker's shards).
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A fetch with some data but less than its `min_bytes` waits for more data, not on a
/// loop of reads: it used to ask for data past its fetch offset, which was there, so it
/// read again at once until its deadline (a consumer with `fetch.min.bytes` 1 MB on a
/// slow topic kept 1.4 cores busy). The CPU bound is an order of magnitude from both the
/// spin (a core or more) and the fetch's real cost (microseconds).
#[test]
fn a_fetch_short_of_min_bytes_waits_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "slow", 1);
    let one = Bytes::from(batch::encode_test_batch(1, 10, 0));
    produce(&mut c, 9, -1, "slow", 0, one);
    let (cpu, start) = (process_cpu(), Instant::now());
    let r = fetch(&mut c, 12, "slow", 0, 0, 1_000, 1 << 20);
    let (cpu, waited) = (process_cpu() - cpu, start.elapsed());
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.high_watermark, 1);
    assert!(
        p.records.as_ref().is_some_and(|r| !r.is_empty()),
        "the data there"
    );
    assert!(
        waited >= Duration::from_millis(990),
        "it waited for more: {waited:?}"
    );
    assert!(
        cpu < waited / 4,
        "the wait took {cpu:?} of CPU in {waited:?}: a busy loop"
    );
}

#[test]
fn delete_records_and_offset_for_leader_epoch() {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "trim", 1);
    for i in 0..10 {
        produce(
            &mut c,
            9,
            -1,
            "trim",
            0,
            Bytes::from(batch::encode_test_batch(2, 30, i)),
        );
    }
    let delete = |c: &mut Client, version: i16, offset: i64| {
        let r = c.send(
            version,
            &DeleteRecordsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![DeleteRecordsTopic::default()
                    .with_name(name("trim"))
                    .with_partitions(vec![DeleteRecordsPartition::default()
                        .with_partition_index(0)
                        .with_offset(offset)])]),
        );
        (
            r.topics[0].partitions[0].error_code,
            r.topics[0].partitions[0].low_watermark,
        )
    };
    assert_eq!(delete(&mut c, 0, 6), (0, 6));
    assert_eq!(list_offset(&mut c, 7, "trim", -2), (0, 6));
    let f = fetch(&mut c, 12, "trim", 0, 4, 0, 0);
    assert_eq!(
        f.responses[0].partitions[0].error_code,
        ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(
        delete(&mut c, 2, 99),
        (ResponseError::OffsetOutOfRange.code(), -1)
    );
    assert_eq!(delete(&mut c, 1, -1), (0, 20), "-1 is the high watermark");
    for version in 2..=4 {
        let r = c.send(
            version,
            &OffsetForLeaderEpochRequest::default().with_topics(vec![
                OffsetForLeaderTopic::default()
                    .with_topic(name("trim"))
                    .with_partitions(vec![
                        OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(0)
                            .with_leader_epoch(0),
                        OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(-1)
                            .with_leader_epoch(3),
                    ]),
            ]),
        );
        let ps = &r.topics[0].partitions;
        assert_eq!(
            (ps[0].error_code, ps[0].leader_epoch, ps[0].end_offset),
            (0, 0, 20),
            "v{version}"
        );
        assert_eq!(
            (ps[1].leader_epoch, ps[1].end_offset),
            (-1, -1),
            "v{version}: unknown epoch"
        );
    }
}

#[test]
fn producer_ids_are_new_every_time_and_never_reused_after_a_restart() {
    use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
    use kafka_protocol::messages::ProducerId;
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for _restart in 0..2 {
        let broker = TestBroker::start(dir.path(), 2);
        let mut c = broker.client();
        for version in 0..=5 {
            let mut request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000);
            if version >= 3 {
                // A re-initialising producer naming an id gets a new one, not that id.
                request = request
                    .with_producer_id(ProducerId(1_000_000))
                    .with_producer_epoch(3);
            }
            let r = c.send(version, &request);
            assert_eq!(r.error_code, 0, "v{version}");
            assert_eq!(r.producer_epoch, 0);
            assert!(r.producer_id.0 >= 0 && r.producer_id.0 != 1_000_000);
            assert!(
                !seen.contains(&r.producer_id.0),
                "id {} reused",
                r.producer_id.0
            );
            seen.push(r.producer_id.0);
        }
        let transactional = InitProducerIdRequest::default()
            .with_transactional_id(Some(kafka_protocol::messages::TransactionalId(
                name("tx").0,
            )))
            .with_transaction_timeout_ms(60_000);
        let r = c.send(4, &transactional);
        assert_ne!(
            r.error_code, 0,
            "transactional ids are refused, not ignored"
        );
        drop(c);
        broker.stop();
    }
}

#[test]
fn acks_all_past_its_timeout_is_answered_request_timed_out_and_may_still_land() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), 2);
    let mut c = broker.client();
    create(&mut c, "slow", 1);
    // A zero timeout expires before any fsync can finish.
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(0)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name("slow"))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(batch::encode_test_batch(
                    3, 10, 0,
                ))))])]);
    let r = c.send(9, &request);
    let code = r.responses[0].partition_responses[0].error_code;
    assert_eq!(code, ResponseError::RequestTimedOut.code());
    // The append was not abandoned half way: it completes, as Kafka's "maybe" allows.
    let deadline = Instant::now() + Duration::from_secs(5);
    while list_offset(&mut c, 7, "slow", -1).1 != 3 {
        assert!(
            Instant::now() < deadline,
            "the timed-out batch never landed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // With room, the same request succeeds.
    let r = c.send(9, &request.with_timeout_ms(30_000));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
}
