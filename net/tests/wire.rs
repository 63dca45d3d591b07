//! The connection layer against a live two-shard server: ApiVersions at every version,
//! the KIP-511 fallback, pipelining in order, and hostile frames closing only their own
//! connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

#[global_allocator]
static ALLOCATOR: spate_net::alloc::ReservingAllocator = spate_net::alloc::ReservingAllocator;

mod common;

struct Broker {
    inner: common::TestBroker,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        Broker {
            inner: common::TestBroker::start(dir.path(), 2),
            _dir: dir,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.inner.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

fn api_versions_frame(version: i16, correlation_id: i32) -> Vec<u8> {
    let mut body = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("wire-test")));
    header
        .encode(
            &mut body,
            ApiKey::ApiVersions.request_header_version(version),
        )
        .unwrap();
    let request = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("wire-test"))
        .with_client_software_version(StrBytes::from_static_str("1"));
    request.encode(&mut body, version.min(4)).unwrap();
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn read_response(stream: &mut TcpStream, version: i16) -> (i32, ApiVersionsResponse) {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).unwrap();
    let mut buf = bytes::Bytes::from(body);
    let header = ResponseHeader::decode(&mut buf, 0).unwrap();
    let response = ApiVersionsResponse::decode(&mut buf, version).unwrap();
    assert!(!buf.has_remaining());
    (header.correlation_id, response)
}

/// The broker closed the connection: end of stream or a reset, within two seconds.
/// A read timeout is not a close.
fn is_closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn api_versions_at_every_version_and_the_kip511_fallback() {
    let broker = Broker::start();
    let mut s = broker.connect();
    for version in 0..=4 {
        s.write_all(&api_versions_frame(version, 100 + i32::from(version)))
            .unwrap();
        let (correlation, response) = read_response(&mut s, version);
        assert_eq!(correlation, 100 + i32::from(version));
        assert_eq!(response.error_code, 0);
        let own = response
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::ApiVersions as i16)
            .unwrap();
        assert_eq!((own.min_version, own.max_version), (0, 4));
    }
    // A newer client: v0 response with UNSUPPORTED_VERSION and our list.
    s.write_all(&api_versions_frame(9, 7)).unwrap();
    let (correlation, response) = read_response(&mut s, 0);
    assert_eq!(correlation, 7);
    assert_eq!(response.error_code, 35);
    assert!(!response.api_keys.is_empty());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let broker = Broker::start();
    let mut s = broker.connect();
    let mut all = Vec::new();
    for i in 0..50 {
        all.extend(api_versions_frame((i % 5) as i16, i));
    }
    s.write_all(&all).unwrap();
    for i in 0..50 {
        let (correlation, response) = read_response(&mut s, (i % 5) as i16);
        assert_eq!(correlation, i);
        assert_eq!(response.error_code, 0);
    }
}

#[test]
fn hostile_frames_close_only_their_own_connection() {
    let broker = Broker::start();
    let mut healthy = broker.connect();
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized length",
            (200 * 1024 * 1024i32).to_be_bytes().to_vec(),
        ),
        ("negative length", (-5i32).to_be_bytes().to_vec()),
        (
            "unknown api key",
            [
                &12i32.to_be_bytes()[..],
                &[0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0, 0],
            ]
            .concat(),
        ),
        ("too short", [&3i32.to_be_bytes()[..], &[0, 18, 0]].concat()),
        (
            "garbage body",
            [
                &12i32.to_be_bytes()[..],
                &[0, 18, 0, 3, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff],
            ]
            .concat(),
        ),
        (
            "unsupported version of a known api",
            [&8i32.to_be_bytes()[..], &[0, 3, 0, 99, 0, 0, 0, 1]].concat(),
        ),
    ];
    for (what, bytes) in attacks {
        let mut s = broker.connect();
        s.write_all(&bytes).unwrap();
        assert!(is_closed(&mut s), "{what}: connection closed");
        healthy.write_all(&api_versions_frame(3, 1)).unwrap();
        assert_eq!(
            read_response(&mut healthy, 3).1.error_code,
            0,
            "{what}: others unaffected"
        );
    }
    // Random bytes on many connections at once.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        let mut s = broker.connect();
        let junk: Vec<u8> = (0..64)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect();
        let _ = s.write_all(&junk);
    }
    healthy.write_all(&api_versions_frame(4, 2)).unwrap();
    assert_eq!(read_response(&mut healthy, 4).0, 2);
}
