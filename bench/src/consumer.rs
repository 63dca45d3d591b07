//! One consumer task: fetches its partitions from their leaders, one fetch in flight
//! per leader (as Kafka's consumers do), counting records and, when the records were
//! written by this run's producers, the end-to-end latency from each record's due time
//! (stamped in its value) to its arrival.
//!
//! Positions advance past every batch received, control batches included. A consumer
//! stops at the offsets it was given (catch-up), at the end of the run (tail), or, end
//! to end, once the producers are done and every acknowledged record has been read
//! (or `DRAIN_TIMEOUT` has passed). Fetch errors are counted by name and retried after
//! a pause; a broken connection is made anew.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::FetchResponse;
use spate_engine::batch::{for_each_record, BatchHeader, Compression, HEADER_BYTES};
use spate_engine::limits::DECOMPRESSED_BATCH_BYTES_MAX;
use spate_net::client::errors::{error_of, kafka_name};
use spate_net::client::lookup::fetch_request as fetch_request_for;

use crate::conn::Conn;
use crate::limits::{
    DRAIN_TIMEOUT, FETCH_BYTES_MAX, FETCH_PARTITION_BYTES_MAX, FETCH_WAIT_MS, SETUP_TIMEOUT,
};
use crate::membership::Membership;
use crate::payload::stamp_of;
use crate::schedule::Clock;
use crate::setup::{PartitionLayout, Versions};
use crate::tally::{ConsumeTally, Live};

/// Pause after a failed fetch.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// When a consumer is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Every partition has reached its end offset (or the run's end has come).
    Offsets,
    /// The run's end has come.
    Time,
    /// The producers are done and all they had acknowledged has been read.
    AllAcknowledged,
}

/// A partition to read from `start`, up to `end` if given.
#[derive(Clone, Debug)]
pub struct Assigned {
    pub layout: PartitionLayout,
    pub start: i64,
    pub end: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub index: u32,
    pub assigned: Vec<Assigned>,
    pub versions: Versions,
    pub clock: Clock,
    pub measure_from_ns: u64,
    pub end_ns: u64,
    pub until: Until,
    /// Read each record's due time for end-to-end latency.
    pub stamped: bool,
    /// In a consumer group, the member that says which of `assigned` to read.
    pub membership: Option<Arc<Membership>>,
    pub live: Arc<Live>,
}

struct Position {
    topic: String,
    partition: i32,
    next: i64,
    end: Option<i64>,
    /// Whether this consumer reads it now (always, without a group).
    assigned: bool,
}

impl Position {
    fn wanted(&self) -> bool {
        self.assigned && self.end.is_none_or(|end| self.next < end)
    }
}

pub async fn run(spec: ConsumerSpec) -> ConsumeTally {
    let tally = Rc::new(RefCell::new(ConsumeTally::new(spec.measure_from_ns)));
    let mut by_leader: BTreeMap<String, Vec<Position>> = BTreeMap::new();
    for a in &spec.assigned {
        by_leader
            .entry(a.layout.leader.clone())
            .or_default()
            .push(Position {
                topic: a.layout.topic.clone(),
                partition: a.layout.partition,
                next: a.start,
                end: a.end,
                assigned: spec.membership.is_none(),
            });
    }
    let spec = Rc::new(spec);
    let loops = by_leader
        .into_iter()
        .map(|(leader, positions)| fetch_loop(spec.clone(), leader, positions, tally.clone()));
    futures::future::join_all(loops).await;
    if let Some(membership) = &spec.membership {
        membership.finish();
    }
    let result = tally.borrow().clone();
    result
}

async fn fetch_loop(
    spec: Rc<ConsumerSpec>,
    leader: String,
    mut positions: Vec<Position>,
    tally: Rc<RefCell<ConsumeTally>>,
) {
    let client_id = format!("spate-bench-consumer-{}", spec.index);
    let mut conn: Option<Rc<Conn>> = None;
    let mut producers_done_at: Option<u64> = None;
    let mut generation = 0;
    while !done(&spec, &positions, &mut producers_done_at, generation) {
        if let Some(membership) = &spec.membership {
            if let Some(why) = membership.failure() {
                count_error(&tally, &why);
                return;
            }
            if membership.generation() != generation {
                generation = membership.generation();
                let mine = membership.partitions();
                for p in &mut positions {
                    p.assigned = mine.contains(&(p.topic.clone(), p.partition));
                }
            }
        }
        if !positions.iter().any(Position::wanted) {
            glommio::timer::sleep(RETRY_PAUSE).await;
            continue;
        }
        let usable = conn.as_ref().filter(|c| c.broken().is_none()).cloned();
        let c = match usable {
            Some(c) => c,
            None => match Conn::connect(&leader, &client_id).await {
                Ok(c) => {
                    conn = Some(c.clone());
                    c
                }
                Err(why) => {
                    count_error(&tally, &why);
                    glommio::timer::sleep(RETRY_PAUSE).await;
                    continue;
                }
            },
        };
        let request = fetch_request(&positions);
        let answer = async {
            let reply = c.request(spec.versions.fetch, &request).await?;
            glommio::timer::timeout(SETUP_TIMEOUT, async { Ok(reply.wait().await) })
                .await
                .map_err(|_| {
                    format!(
                        "no fetch answer from {leader} in {}s",
                        SETUP_TIMEOUT.as_secs()
                    )
                })?
        }
        .await;
        match answer {
            Ok(response) => {
                if !take(&spec, &response, &mut positions, &tally) {
                    glommio::timer::sleep(RETRY_PAUSE).await;
                }
            }
            Err(why) => {
                count_error(&tally, &why);
                conn = None;
                glommio::timer::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Whether the loop is done; `generation` is the group's (0 before the first
/// assignment, which a catch-up read must wait for).
fn done(
    spec: &ConsumerSpec,
    positions: &[Position],
    producers_done_at: &mut Option<u64>,
    generation: u64,
) -> bool {
    let now = spec.clock.now_ns();
    match spec.until {
        Until::Time => now >= spec.end_ns || spec.live.stopping(),
        Until::Offsets => {
            now >= spec.end_ns
                || spec.live.stopping()
                || ((spec.membership.is_none() || generation > 0)
                    && !positions.iter().any(Position::wanted))
        }
        Until::AllAcknowledged => {
            if spec
                .live
                .producers_running
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
            {
                return false;
            }
            let since = *producers_done_at.get_or_insert(now);
            Live::get(&spec.live.consumed) >= Live::get(&spec.live.acknowledged)
                || now >= since + DRAIN_TIMEOUT.as_nanos() as u64
        }
    }
}

fn fetch_request(positions: &[Position]) -> FetchRequest {
    let unfinished = positions
        .iter()
        .filter(|p| p.wanted())
        .map(|p| (p.topic.as_str(), p.partition, p.next));
    fetch_request_for(
        unfinished,
        FETCH_WAIT_MS,
        FETCH_BYTES_MAX,
        FETCH_PARTITION_BYTES_MAX,
    )
}

/// Counts what a fetch brought and advances positions; false if it carried an error.
fn take(
    spec: &ConsumerSpec,
    response: &FetchResponse,
    positions: &mut [Position],
    tally: &Rc<RefCell<ConsumeTally>>,
) -> bool {
    if let Some(e) = error_of(response.error_code) {
        count_error(tally, &kafka_name(e));
        return false;
    }
    let now = spec.clock.now_ns();
    let mut clean = true;
    let mut tally = tally.borrow_mut();
    for topic in &response.responses {
        for data in &topic.partitions {
            let Some(position) = positions
                .iter_mut()
                .find(|p| p.partition == data.partition_index && p.topic == topic.topic.as_str())
            else {
                continue;
            };
            if let Some(e) = error_of(data.error_code) {
                *tally.errors.entry(kafka_name(e)).or_default() += 1;
                clean = false;
                continue;
            }
            let Some(records) = &data.records else {
                continue;
            };
            if let Err(why) = take_batches(spec, records, position, now, &mut tally) {
                *tally.errors.entry(why).or_default() += 1;
                clean = false;
            }
        }
    }
    clean
}

/// Walks the batches of one partition's records; a trailing partial batch is normal (the
/// broker cuts at the byte limit) and is fetched again next time.
fn take_batches(
    spec: &ConsumerSpec,
    mut bytes: &[u8],
    position: &mut Position,
    now: u64,
    tally: &mut ConsumeTally,
) -> Result<(), String> {
    while bytes.len() >= HEADER_BYTES {
        let header = BatchHeader::parse(bytes).map_err(|e| format!("unreadable batch: {e}"))?;
        if header.size > bytes.len() {
            break;
        }
        let batch = &bytes[..header.size];
        bytes = &bytes[header.size..];
        let next = header.last_offset().0 + 1;
        if next <= position.next || header.is_control() {
            position.next = position.next.max(next);
            continue;
        }
        let count = if spec.stamped || header.base_offset.0 < position.next {
            walk(spec, &header, batch, position.next, now, tally)?
        } else {
            u64::try_from(header.record_count).unwrap_or(0)
        };
        tally.consumed += count;
        tally.bytes += header.size as u64;
        tally.last_ns = now;
        tally
            .timeline
            .add(spec.measure_from_ns, now, count, header.size as u64, 0);
        Live::add(&spec.live.consumed, count);
        Live::add(&spec.live.consumed_bytes, header.size as u64);
        position.next = next;
    }
    Ok(())
}

/// Counts the records of a batch at or after `from`, recording end-to-end latency.
fn walk(
    spec: &ConsumerSpec,
    header: &BatchHeader,
    batch: &[u8],
    from: i64,
    now: u64,
    tally: &mut ConsumeTally,
) -> Result<u64, String> {
    let codec = header.compression().map_err(|e| e.to_string())?;
    let section = &batch[HEADER_BYTES..];
    let inflated;
    let records = if codec == Compression::None {
        section
    } else {
        inflated =
            spate_engine::compression::decompress(codec, section, DECOMPRESSED_BATCH_BYTES_MAX)
                .map_err(|e| e.to_string())?;
        &inflated[..]
    };
    let mut count = 0;
    for_each_record(records, header.record_count, |record| {
        if header.base_offset.0 + record.offset_delta < from {
            return;
        }
        count += 1;
        if spec.stamped {
            match record.value.and_then(stamp_of) {
                Some(due) if due <= now => tally.e2e.record(due, due, now),
                _ => tally.unstamped += 1,
            }
        }
    })
    .map_err(|e| format!("unreadable records: {e}"))?;
    Ok(count)
}

fn count_error(tally: &Rc<RefCell<ConsumeTally>>, why: &str) {
    *tally
        .borrow_mut()
        .errors
        .entry(why.to_string())
        .or_default() += 1;
}
