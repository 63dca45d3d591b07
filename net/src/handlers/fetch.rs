//! Fetch (key 1), versions 4–12, answered zero-copy.
//!
//! The response is framed by hand (`FrameWriter`) rather than by the codec, so that each
//! partition's records can be a range of a segment file sent with `sendfile` (or tail
//! batches from the engine's cache), never copied through user space.
//!
//! Semantics: whole batches from the one containing the fetch offset; `partition_max_bytes`
//! per partition and `max_bytes` per response, except that the first batch of the first
//! partition with data is always whole (KIP-74). OFFSET_OUT_OF_RANGE below the log start
//! or past the log end. Sessionless (session id 0). Long poll: when fewer than
//! `min_bytes` are ready, the fetch waits up to `max_wait_ms`, woken by appends on any of
//! its partitions (the engine's `wait_for_data`), not by a polling timer.
//!
//! In cluster mode only a partition's leader answers (else NOT_LEADER_OR_FOLLOWER), the
//! client's leader epoch is checked (FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH), and
//! records are read up to the quorum commit index, which is the high watermark.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::ResponseError;
use spate_engine::{Offset, ReadChunk, TopicPartition};

use super::errors::kafka_error;
use crate::cluster::leader_check;
use crate::limits::FETCH_REFUSED_WAIT_PAUSE;
use crate::node::Node;

/// One piece of an outgoing frame.
#[derive(Debug)]
pub enum Part {
    Bytes(Bytes),
    /// Sent with `sendfile`: `len` bytes of `file` from `position`.
    File {
        file: Arc<std::fs::File>,
        position: u64,
        len: u64,
    },
}

impl Part {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> u64 {
        match self {
            Part::Bytes(b) => b.len() as u64,
            Part::File { len, .. } => *len,
        }
    }
}

/// What one partition contributes.
struct PartitionData {
    index: i32,
    error: Option<ResponseError>,
    high_watermark: i64,
    log_start: i64,
    chunks: Vec<ReadChunk>,
}

impl PartitionData {
    fn bytes(&self) -> u64 {
        self.chunks.iter().map(ReadChunk::len).sum()
    }
}

/// Builds a frame of fixed fields and zero-copy records, in either the classic or the
/// flexible (v12) encoding.
struct FrameWriter {
    flexible: bool,
    head: BytesMut,
    parts: Vec<Part>,
}

impl FrameWriter {
    fn new(version: i16, correlation_id: i32) -> FrameWriter {
        let flexible = version >= 12;
        let mut w = FrameWriter {
            flexible,
            head: BytesMut::with_capacity(512),
            parts: Vec::new(),
        };
        w.head.put_i32(correlation_id);
        w.tags(); // response header v1 has tagged fields
        w
    }

    fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.head.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.head.put_u8(v as u8);
    }

    fn tags(&mut self) {
        if self.flexible {
            self.uvarint(0);
        }
    }

    fn array_len(&mut self, n: usize) {
        if self.flexible {
            self.uvarint(n as u64 + 1);
        } else {
            self.head.put_i32(n as i32);
        }
    }

    fn null_array(&mut self) {
        if self.flexible {
            self.uvarint(0);
        } else {
            self.head.put_i32(-1);
        }
    }

    fn string(&mut self, s: &str) {
        if self.flexible {
            self.uvarint(s.len() as u64 + 1);
        } else {
            self.head.put_i16(s.len() as i16);
        }
        self.head.put_slice(s.as_bytes());
    }

    fn records(&mut self, chunks: Vec<ReadChunk>) {
        let total: u64 = chunks.iter().map(ReadChunk::len).sum();
        if self.flexible {
            self.uvarint(total + 1);
        } else {
            self.head.put_i32(total as i32);
        }
        self.flush_head();
        for chunk in chunks {
            self.parts.push(match chunk {
                ReadChunk::Cached(bytes) => Part::Bytes(bytes),
                ReadChunk::File {
                    file,
                    position,
                    len,
                } => Part::File {
                    file,
                    position,
                    len,
                },
            });
        }
    }

    fn flush_head(&mut self) {
        if !self.head.is_empty() {
            self.parts.push(Part::Bytes(self.head.split().freeze()));
        }
    }

    /// The frame: length prefix, then every part.
    fn finish(mut self) -> Vec<Part> {
        self.flush_head();
        let length: u64 = self.parts.iter().map(Part::len).sum();
        let mut frame = Vec::with_capacity(self.parts.len() + 1);
        frame.push(Part::Bytes(Bytes::copy_from_slice(
            &(length as i32).to_be_bytes(),
        )));
        frame.extend(self.parts);
        frame
    }
}

/// Reads every requested partition once, within the byte limits. With `wait` (only
/// for a single partition), a partition with nothing to read yet is waited for up to that
/// long and read again, in one call to its shard.
async fn read_all(
    node: &Node,
    request: &FetchRequest,
    wait: Duration,
) -> Vec<(String, Vec<PartitionData>)> {
    let mut remaining = request.max_bytes.max(0) as u64;
    let mut any_data = false;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.topic.0.as_str().to_string();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let tp = TopicPartition::new(&name, p.partition);
            let mut data = PartitionData {
                index: p.partition,
                error: None,
                high_watermark: -1,
                log_start: -1,
                chunks: Vec::new(),
            };
            if let Some(error) = leader_check(node, &tp, p.current_leader_epoch) {
                data.error = Some(error);
                partitions.push(data);
                continue;
            }
            let limit = (p.partition_max_bytes.max(0) as u64).min(remaining);
            match node
                .shard
                .read_or_wait(tp, Offset(p.fetch_offset), limit.max(1) as usize, wait)
                .await
            {
                Ok(result) => {
                    data.high_watermark = result.high_watermark.0;
                    data.log_start = result.log_start.0;
                    let bytes = result.bytes();
                    // KIP-74: the first partition with data gets its first batch whole even
                    // past the limits; later ones only what fits.
                    if bytes > 0 && (!any_data || bytes <= limit) {
                        data.chunks = result.chunks;
                        remaining = remaining.saturating_sub(bytes);
                        any_data = true;
                    }
                }
                Err(e) => data.error = Some(kafka_error(&e)),
            }
            partitions.push(data);
        }
        topics.push((name, partitions));
    }
    topics
}

/// Waits until any partition has data past what the last read of it saw (`seen`: past
/// its high watermark then, or past the fetch offset if that is further), or the
/// deadline passes. Waiting past the fetch offset alone would return at once whenever
/// some data is there but less than `min_bytes`, and the fetch would spin on reads until
/// its deadline. Returns false if the wait ended without data: at the deadline, or at
/// once when a partition's shard refused to wait.
async fn wait_for_any(
    node: &Node,
    request: &FetchRequest,
    seen: &[(String, Vec<PartitionData>)],
    deadline: Instant,
) -> bool {
    let timeout = deadline.saturating_duration_since(Instant::now());
    let waits: Vec<_> = request
        .topics
        .iter()
        .zip(seen)
        .flat_map(|(t, (_, read))| {
            let name = t.topic.0.as_str();
            t.partitions.iter().zip(read).map(move |(p, data)| {
                let past = Offset(p.fetch_offset.max(data.high_watermark));
                let tp = TopicPartition::new(name, p.partition);
                Box::pin(node.shard.wait_for_data(tp, past, timeout))
            })
        })
        .collect();
    if waits.is_empty() {
        glommio::timer::sleep(timeout).await;
        return true;
    }
    matches!(futures::future::select_all(waits).await.0, Ok(true))
}

/// Builds the whole response frame.
pub async fn handle(
    node: &Rc<Node>,
    request: &FetchRequest,
    version: i16,
    correlation_id: i32,
) -> Vec<Part> {
    let deadline = Instant::now() + Duration::from_millis(request.max_wait_ms.max(0) as u64);
    // A long poll of one partition for any data (min_bytes 1, what librdkafka and the
    // Java client send by default) waits inside its read: one round trip to the
    // partition's shard. Otherwise reads and waits alternate below.
    let partitions: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    let waits_in_read = partitions == 1 && request.min_bytes == 1;
    let topics = loop {
        let wait = match waits_in_read {
            true => deadline.saturating_duration_since(Instant::now()),
            false => Duration::ZERO,
        };
        let topics = read_all(node, request, wait).await;
        let ready: u64 = topics
            .iter()
            .flat_map(|(_, ps)| ps.iter())
            .map(PartitionData::bytes)
            .sum();
        let errors = topics
            .iter()
            .flat_map(|(_, ps)| ps.iter())
            .any(|p| p.error.is_some());
        if ready >= request.min_bytes.max(0) as u64 || errors || Instant::now() >= deadline {
            break topics;
        }
        // With the wait inside the read, an empty answer before the deadline means the
        // partition's shard refused to wait.
        let waited = !waits_in_read && wait_for_any(node, request, &topics, deadline).await;
        drop(topics);
        let left = deadline.saturating_duration_since(Instant::now());
        if !waited && !left.is_zero() {
            glommio::timer::sleep(FETCH_REFUSED_WAIT_PAUSE.min(left)).await;
        }
    };
    let mut w = FrameWriter::new(version, correlation_id);
    w.head.put_i32(0); // throttle_time_ms
    if version >= 7 {
        w.head.put_i16(0); // error_code
        w.head.put_i32(0); // session_id: sessionless
    }
    w.array_len(topics.len());
    let read_committed = request.isolation_level == 1;
    for (name, partitions) in topics {
        w.string(&name);
        w.array_len(partitions.len());
        for p in partitions {
            w.head.put_i32(p.index);
            w.head.put_i16(p.error.map_or(0, |e| e.code()));
            w.head.put_i64(p.high_watermark);
            w.head.put_i64(p.high_watermark); // last_stable_offset: no open transactions
            if version >= 5 {
                w.head.put_i64(p.log_start);
            }
            if read_committed {
                w.array_len(0);
            } else {
                w.null_array();
            }
            if version >= 11 {
                w.head.put_i32(-1); // preferred_read_replica
            }
            w.records(p.chunks);
            w.tags();
        }
        w.tags();
    }
    w.tags();
    w.finish()
}
