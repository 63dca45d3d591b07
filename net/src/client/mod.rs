//! A small blocking Kafka client, for the `spate` command line and the benchmarks, and
//! the pieces any client needs: request framing, error names, lookups, the partitioner.
//!
//! One connection, one request at a time: administration does not need more. On connect
//! it asks the broker which API versions it supports (ApiVersions v0, which every broker
//! answers), and `send` refuses a version the broker did not offer, so a caller gets a
//! clear error instead of a closed connection. Frames larger than
//! `RESPONSE_FRAME_BYTES_MAX` are refused before anything is allocated for them.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use crate::error::{NetError, Result};
use crate::limits::RESPONSE_FRAME_BYTES_MAX;

pub mod errors;
pub mod lookup;
pub mod member;
pub mod partitioner;
pub mod route;

/// A connection to one broker.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    address: String,
    client_id: String,
    timeout: Duration,
    correlation_id: i32,
    /// API key → (min, max) version the broker accepts.
    versions: HashMap<i16, (i16, i16)>,
}

impl Client {
    /// Connects to `address` (`host:port`) and learns the broker's API versions. Every
    /// read and write on the connection gives up after `timeout`.
    pub fn connect(address: &str, client_id: &str, timeout: Duration) -> Result<Client> {
        let unreachable = |reason: String| NetError::Unreachable {
            address: address.to_string(),
            reason,
        };
        let resolved = address
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("the name resolves to no address".into()))?;
        let stream = TcpStream::connect_timeout(&resolved, timeout)
            .map_err(|e| unreachable(e.to_string()))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            address: address.to_string(),
            client_id: client_id.to_string(),
            timeout,
            correlation_id: 0,
            versions: HashMap::from([(ApiKey::ApiVersions as i16, (0, 0))]),
        };
        let offered = client.send(0, &ApiVersionsRequest::default())?;
        if offered.error_code != 0 {
            return Err(NetError::Malformed(format!(
                "{address} answered ApiVersions with error {}",
                offered.error_code
            )));
        }
        client.versions = offered
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(client)
    }

    /// A new connection to `address` with this client's id and timeout.
    pub fn connect_like(&self, address: &str) -> Result<Client> {
        Client::connect(address, &self.client_id, self.timeout)
    }

    /// The address this client connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The client id this client sends.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How long a read or write on this connection waits.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Every API the broker offers: (key, min version, max version), by key.
    pub fn api_versions(&self) -> Vec<(i16, i16, i16)> {
        let mut all: Vec<_> = self
            .versions
            .iter()
            .map(|(k, (lo, hi))| (*k, *lo, *hi))
            .collect();
        all.sort_unstable();
        all
    }

    /// The versions of `key` the broker accepts, if any.
    pub fn supported(&self, key: ApiKey) -> Option<(i16, i16)> {
        self.versions.get(&(key as i16)).copied()
    }

    /// The highest version of `key` that both the broker and `wanted` (inclusive
    /// range) allow.
    pub fn version(&self, key: ApiKey, wanted: (i16, i16)) -> Result<i16> {
        let (min, max) = self.supported(key).ok_or(NetError::UnsupportedVersion {
            api: key as i16,
            version: wanted.1,
        })?;
        let version = max.min(wanted.1);
        if version < min.max(wanted.0) {
            return Err(NetError::UnsupportedVersion {
                api: key as i16,
                version: wanted.1,
            });
        }
        Ok(version)
    }

    /// Sends `request` at `version` and waits for its response.
    pub fn send<R: Request>(&mut self, version: i16, request: &R) -> Result<R::Response> {
        let key = self.write(version, request)?;
        self.read::<R>(key, version)
    }

    /// Sends a request that gets no response (a Produce with acks=0).
    pub fn send_without_response<R: Request>(&mut self, version: i16, request: &R) -> Result<()> {
        self.write(version, request).map(drop)
    }

    fn write<R: Request>(&mut self, version: i16, request: &R) -> Result<ApiKey> {
        match self.versions.get(&R::KEY) {
            Some((min, max)) if (*min..=*max).contains(&version) => {}
            _ => {
                return Err(NetError::UnsupportedVersion {
                    api: R::KEY,
                    version,
                })
            }
        }
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut frame = BytesMut::new();
        let key = encode_request(
            &mut frame,
            version,
            self.correlation_id,
            &self.client_id,
            request,
        )?;
        self.stream.write_all(&frame)?;
        Ok(key)
    }

    fn read<R: Request>(&mut self, key: ApiKey, version: i16) -> Result<R::Response> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let size = frame_size(length)?;
        let mut body = vec![0u8; size];
        self.stream.read_exact(&mut body)?;
        let (correlation_id, response) =
            decode_response::<R>(bytes::Bytes::from(body), key, version)?;
        if correlation_id != self.correlation_id {
            return Err(NetError::Malformed(format!(
                "response for request {correlation_id} while waiting for {}",
                self.correlation_id
            )));
        }
        Ok(response)
    }
}

/// Appends to `frame` one whole request frame (length prefix, header, body) and returns
/// the request's API key. Shared by this client and the benchmark's asynchronous one.
pub fn encode_request<R: Request>(
    frame: &mut BytesMut,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    request: &R,
) -> Result<ApiKey> {
    let key = ApiKey::try_from(R::KEY).map_err(|()| NetError::UnknownApi(R::KEY))?;
    let start = frame.len();
    frame.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())))
        .encode(frame, key.request_header_version(version))
        .map_err(|e| NetError::Encode(e.to_string()))?;
    request
        .encode(frame, version)
        .map_err(|e| NetError::Encode(e.to_string()))?;
    let length = (frame.len() - start - 4) as i32;
    frame[start..start + 4].copy_from_slice(&length.to_be_bytes());
    Ok(key)
}

/// The size of a response frame from its 4-byte length prefix, refusing sizes past
/// `RESPONSE_FRAME_BYTES_MAX` before anything is allocated for them.
pub fn frame_size(prefix: [u8; 4]) -> Result<usize> {
    let length = i32::from_be_bytes(prefix);
    usize::try_from(length)
        .ok()
        .filter(|&n| n <= RESPONSE_FRAME_BYTES_MAX)
        .ok_or(NetError::FrameTooLarge {
            size: i64::from(length),
            max: RESPONSE_FRAME_BYTES_MAX,
        })
}

/// Decodes a response frame's body (after the length prefix) to a request of `key` at
/// `version`: its correlation id and the response, which must use every byte.
pub fn decode_response<R: Request>(
    mut body: bytes::Bytes,
    key: ApiKey,
    version: i16,
) -> Result<(i32, R::Response)> {
    // ApiVersions answers with header v0 whatever the request version (KIP-511).
    let header_version = if key == ApiKey::ApiVersions {
        0
    } else {
        key.response_header_version(version)
    };
    let malformed = |e: anyhow::Error| {
        NetError::Malformed(format!("undecodable {key:?} v{version} response: {e}"))
    };
    let header = ResponseHeader::decode(&mut body, header_version).map_err(malformed)?;
    let response = R::Response::decode(&mut body, version).map_err(malformed)?;
    if body.has_remaining() {
        return Err(NetError::Malformed(format!(
            "{} bytes left after a {key:?} v{version} response",
            body.remaining()
        )));
    }
    Ok((header.correlation_id, response))
}
