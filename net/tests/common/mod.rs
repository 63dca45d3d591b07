//! A broker in the test process and a minimal blocking Kafka client for driving it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use spate_engine::EngineConfig;
use spate_net::{Broker, ServerConfig};

pub struct TestBroker {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    broker: Option<Broker>,
}

impl TestBroker {
    pub fn start(data: &Path, shards: usize) -> TestBroker {
        let groups = spate_net::group::GroupConfig {
            offsets_partitions: 4,
            initial_rebalance_delay: Duration::ZERO,
            ..Default::default()
        };
        TestBroker::start_with(data, shards, groups)
    }

    /// A broker with these group settings.
    pub fn start_with(
        data: &Path,
        shards: usize,
        groups: spate_net::group::GroupConfig,
    ) -> TestBroker {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut engine = EngineConfig::new(data, shards);
        engine.cores = spate_engine::shard::CoreSet::Unpinned;
        let server = ServerConfig {
            listen: addr,
            advertise: addr,
            node_id: 1,
            data_dir: data.to_path_buf(),
            default_partitions: 2,
            auto_create_topics: true,
            groups,
            cluster: None,
        };
        let broker = Broker::start(engine, server, stop.clone()).unwrap();
        for _ in 0..200 {
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        TestBroker {
            addr,
            stop,
            broker: Some(broker),
        }
    }

    pub fn client(&self) -> Client {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            stream,
            correlation_id: 0,
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(broker) = self.broker.take() {
            broker.join().expect("clean shutdown");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub struct Client {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends a request at `version` and returns the decoded response.
    pub fn send<R: Request>(&mut self, version: i16, request: &R) -> R::Response {
        self.correlation_id += 1;
        let key = ApiKey::try_from(R::KEY).unwrap();
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("spate-test")))
            .encode(&mut body, key.request_header_version(version))
            .unwrap();
        request.encode(&mut body, version).unwrap();
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).unwrap();
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length).unwrap();
        let mut response = vec![0u8; i32::from_be_bytes(length) as usize];
        self.stream.read_exact(&mut response).unwrap();
        let mut buf = bytes::Bytes::from(response);
        let header_version = if key == ApiKey::ApiVersions {
            0
        } else {
            key.response_header_version(version)
        };
        let header = ResponseHeader::decode(&mut buf, header_version).unwrap();
        assert_eq!(header.correlation_id, self.correlation_id);
        let decoded = R::Response::decode(&mut buf, version).unwrap();
        assert!(!buf.has_remaining(), "response fully decoded");
        decoded
    }
}

pub fn name(n: &str) -> TopicName {
    TopicName(StrBytes::from_string(n.into()))
}

/// Creates a topic, asserting success.
pub fn create(c: &mut Client, topic: &str, partitions: i32) {
    let r = c.send(
        7,
        &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]),
    );
    assert_eq!(r.topics[0].error_code, 0);
}

pub fn produce(
    c: &mut Client,
    version: i16,
    acks: i16,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> ProduceResponse {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    c.send(version, &request)
}
