//! Request framing and decoding, response encoding.
//!
//! A Kafka frame is a 4-byte big-endian length and that many bytes. The length is checked
//! against `REQUEST_FRAME_BYTES_MAX` before anything is allocated for the frame. The body
//! is decoded with the `kafka-protocol` crate, inside `catch_unwind` so that a decoder
//! bug on hostile input closes a connection instead of a shard; allocations the decoder
//! makes from hostile counts are survived by `alloc::ReservingAllocator`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::error::{NetError, Result};
use crate::handlers;

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// What a frame decodes to.
#[derive(Debug)]
pub enum Decoded {
    Request(Box<Request>),
    /// An ApiVersions request of a version newer than ours: answered with a v0 response
    /// carrying UNSUPPORTED_VERSION and our versions, so the client can downgrade (KIP-511).
    ApiVersionsTooNew {
        correlation_id: i32,
    },
}

/// Reads one frame; `None` at a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, max: usize) -> Result<Option<Bytes>> {
    let mut length = [0u8; 4];
    let mut read = 0;
    while read < 4 {
        let n = reader.read(&mut length[read..]).await?;
        if n == 0 {
            return if read == 0 {
                Ok(None)
            } else {
                Err(NetError::Malformed(
                    "connection closed inside a frame length".into(),
                ))
            };
        }
        read += n;
    }
    let size = i32::from_be_bytes(length);
    if size < 0 || size as usize > max {
        return Err(NetError::FrameTooLarge {
            size: i64::from(size),
            max,
        });
    }
    let mut frame = BytesMut::zeroed(size as usize);
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame.freeze()))
}

/// Decodes a request frame.
pub fn decode(mut frame: Bytes) -> Result<Decoded> {
    if frame.len() < 8 {
        return Err(NetError::Malformed(format!(
            "{} bytes is too short for a request header",
            frame.len()
        )));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|()| NetError::UnknownApi(raw_key))?;
    let Some(range) = handlers::supported(api_key) else {
        return Err(NetError::UnknownApi(raw_key));
    };
    if version > range.1 && api_key == ApiKey::ApiVersions {
        return Ok(Decoded::ApiVersionsTooNew { correlation_id });
    }
    if version < range.0 || version > range.1 {
        return Err(NetError::UnsupportedVersion {
            api: raw_key,
            version,
        });
    }
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))?;
        let body = RequestKind::decode(api_key, &mut frame, version)?;
        Ok::<_, anyhow::Error>((header, body))
    }));
    let (header, body) = match decoded {
        Ok(Ok(parts)) => parts,
        Ok(Err(e)) => return Err(NetError::Malformed(e.to_string())),
        Err(_) => {
            return Err(NetError::Malformed(
                "the decoder panicked on this request".into(),
            ))
        }
    };
    if frame.has_remaining() {
        // Kafka's own broker ignores bytes after a request's last field, and some clients
        // send them (librdkafka's admin client does), so tolerate them too.
        tracing::debug!(api = ?api_key, version, bytes = frame.remaining(), "ignoring bytes after a request");
    }
    Ok(Decoded::Request(Box::new(Request {
        api_key,
        version,
        header,
        body,
    })))
}

/// Encodes a response frame: length, header, body.
pub fn encode(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    // The ApiVersions response header is always v0, whatever the request's version, so
    // that a client can read it before it knows which versions the broker speaks.
    let header_version = if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(version)
    };
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, header_version)
        .map_err(|e| NetError::Encode(e.to_string()))?;
    body.encode(&mut out, version)
        .map_err(|e| NetError::Encode(e.to_string()))?;
    let length =
        i32::try_from(out.len() - 4).map_err(|_| NetError::Encode("response over 2 GiB".into()))?;
    out[0..4].copy_from_slice(&length.to_be_bytes());
    Ok(out.freeze())
}
