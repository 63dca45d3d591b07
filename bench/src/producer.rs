//! One producer task: makes records on schedule, batches them per partition, and keeps
//! up to `max_in_flight` produce requests outstanding per leader.
//!
//! Records are made when due (open loop) or as fast as the in-flight window allows
//! (flat out). Unkeyed records fill one partition's batch at a time per topic (Kafka's
//! sticky partitioner); keyed ones go where murmur2 of the key says. A batch is sent
//! when it reaches `batch_bytes` or has waited `linger_ms`; all batches ready for one
//! leader travel in one request. When the window is full the producer waits, making no
//! records, so a slow broker shows as latency (measured from the due time) and as due
//! records left unmade, never as unbounded memory. At the end it sends what it holds
//! and waits up to `DRAIN_TIMEOUT` for answers; a request still unanswered then is
//! counted as failed, so sent = acknowledged + failed holds.
//!
//! Against a cluster, leaders move (a broker dies, the preferred leader takes back its
//! partitions). A batch refused with NOT_LEADER_OR_FOLLOWER (or lost with its
//! connection) counts as failed, as a benchmark does not retry, and marks its partition
//! stale; at most every `LEADER_REFRESH_INTERVAL` the producer asks for the stale
//! partitions' leaders and sends their next batches there. An idempotent producer then
//! takes a new producer id, since the refused batches left gaps in its sequences.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use glommio::sync::Semaphore;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ProduceResponse, ProducerId};
use kafka_protocol::ResponseError;
use spate_engine::batch::{BatchBuilder, ProducerFields};
use spate_net::client::errors::{error_of, kafka_name};
use spate_net::client::lookup::{broker_addresses, metadata_request, name_of, topic_name};
use spate_net::client::partitioner::keyed_partition;

use crate::conn::Conn;
use crate::limits::{DRAIN_TIMEOUT, LEADER_REFRESH_INTERVAL, PRODUCE_TIMEOUT_MS, SETUP_TIMEOUT};
use crate::payload::RecordMaker;
use crate::schedule::{Clock, Schedule};
use crate::setup::{PartitionLayout, Versions};
use crate::tally::{Live, ProduceTally};
use crate::workload::Workload;

/// Bytes a record adds to a batch beyond its value: attributes, varint lengths and
/// deltas, and the longest key this harness makes (`key-` and 20 digits).
const RECORD_OVERHEAD_MAX: usize = 24 + 24;

/// Records made per turn before the task lets others run.
const RECORDS_PER_TURN: u64 = 4096;

/// What one producer is told.
#[derive(Clone, Debug)]
pub struct ProducerSpec {
    pub index: u32,
    pub workload: Workload,
    pub partitions: Vec<PartitionLayout>,
    pub versions: Versions,
    pub clock: Clock,
    pub start_ns: u64,
    pub measure_from_ns: u64,
    pub end_ns: u64,
    pub live: Arc<Live>,
}

/// A batch being filled for one partition.
struct Open {
    builder: BatchBuilder,
    /// Due time of each record in it.
    due: Vec<u64>,
    /// Key and value bytes in it.
    bytes: u64,
    opened_ns: u64,
}

struct Partition {
    layout: PartitionLayout,
    leader: usize,
    open: Open,
    next_sequence: i32,
}

struct Leader {
    address: String,
    conn: Option<Rc<Conn>>,
    window: Rc<Semaphore>,
}

/// A sent batch awaiting its answer.
struct Sent {
    topic: String,
    partition: i32,
    due: Vec<u64>,
    bytes: u64,
}

struct Producer {
    spec: Rc<ProducerSpec>,
    partitions: Vec<Partition>,
    /// Partition indices of each topic, and the sticky partition of each.
    topics: Vec<Vec<usize>>,
    sticky: Vec<usize>,
    leaders: Vec<Leader>,
    producer: Option<(i64, i16)>,
    tally: Rc<RefCell<ProduceTally>>,
    /// Partitions whose leader refused a batch or could not be reached.
    stale: Rc<RefCell<Stale>>,
    /// When leaders were last asked for.
    refreshed_ns: u64,
}

/// Partitions (topic, partition) whose leader must be looked up again.
type Stale = std::collections::BTreeSet<(String, i32)>;

pub async fn run(spec: ProducerSpec) -> ProduceTally {
    let tally = Rc::new(RefCell::new(ProduceTally::new(spec.measure_from_ns)));
    let mut producer = Producer::new(spec, tally.clone());
    producer.produce().await;
    producer.drain().await;
    let result = tally.borrow().clone();
    result
}

impl Producer {
    fn new(spec: ProducerSpec, tally: Rc<RefCell<ProduceTally>>) -> Producer {
        let mut leaders: Vec<Leader> = Vec::new();
        let mut topic_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut topics: Vec<Vec<usize>> = Vec::new();
        let mut partitions = Vec::new();
        for (i, layout) in spec.partitions.iter().enumerate() {
            let leader = match leaders.iter().position(|l| l.address == layout.leader) {
                Some(l) => l,
                None => {
                    leaders.push(Leader {
                        address: layout.leader.clone(),
                        conn: None,
                        window: Rc::new(Semaphore::new(spec.workload.max_in_flight as u64)),
                    });
                    leaders.len() - 1
                }
            };
            let t = *topic_index.entry(layout.topic.clone()).or_insert_with(|| {
                topics.push(Vec::new());
                topics.len() - 1
            });
            topics[t].push(i);
            partitions.push(Partition {
                layout: layout.clone(),
                leader,
                open: Open {
                    builder: BatchBuilder::new(),
                    due: Vec::new(),
                    bytes: 0,
                    opened_ns: 0,
                },
                next_sequence: 0,
            });
        }
        // Producers start on different partitions so several do not pile onto one.
        let sticky = topics
            .iter()
            .map(|ps| spec.index as usize % ps.len())
            .collect();
        Producer {
            spec: Rc::new(spec),
            partitions,
            topics,
            sticky,
            leaders,
            producer: None,
            tally,
            stale: Rc::default(),
            refreshed_ns: 0,
        }
    }

    async fn produce(&mut self) {
        let spec = self.spec.clone();
        let clock = spec.clock;
        let workload = &spec.workload;
        let schedule = Schedule::new(spec.start_ns, workload.producer_pace());
        let mut maker = RecordMaker::new(
            0x5eed_0000 + u64::from(spec.index),
            workload.record_size,
            workload.keys,
            workload.payload,
        );
        if workload.idempotent && !self.init_producer_id().await {
            return;
        }
        sleep_until(clock, spec.start_ns).await;
        let linger_ns = workload.linger_ms * 1_000_000;
        // A batch is full once the largest record would take it past `batch_bytes`, so
        // batches stay within it (and within the broker's max.message.bytes when
        // batch_bytes is set to that), as Kafka's producer keeps them.
        let full_at = workload
            .batch_bytes
            .saturating_sub(workload.record_size.max() + RECORD_OVERHEAD_MAX);
        let mut made: u64 = 0;
        loop {
            let now = clock.now_ns();
            if now >= spec.end_ns || spec.live.stopping() {
                break;
            }
            let refresh_due = now >= self.refreshed_ns + LEADER_REFRESH_INTERVAL.as_nanos() as u64;
            if refresh_due && !self.stale.borrow().is_empty() {
                self.refresh_leaders().await;
            }
            let wall_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let until = schedule.due_count(now).min(made + RECORDS_PER_TURN);
            while made < until {
                let due_ns = schedule.due_time(made, now);
                let topic = (made % self.topics.len() as u64) as usize;
                let (key, value) = maker.next(due_ns);
                let p = match key {
                    Some(k) => {
                        let ps = &self.topics[topic];
                        ps[keyed_partition(k, ps.len() as i32) as usize]
                    }
                    None => self.topics[topic][self.sticky[topic]],
                };
                let open = &mut self.partitions[p].open;
                if open.builder.is_empty() {
                    open.opened_ns = clock.now_ns();
                }
                open.builder.push(wall_ms, key, Some(value));
                open.due.push(due_ns);
                open.bytes += (value.len() + key.map_or(0, <[u8]>::len)) as u64;
                made += 1;
                if open.builder.size_uncompressed() > full_at {
                    if key.is_none() {
                        self.sticky[topic] = (self.sticky[topic] + 1) % self.topics[topic].len();
                    }
                    self.send_ready(|o| o.builder.size_uncompressed() > full_at)
                        .await;
                }
            }
            let now = clock.now_ns();
            self.send_ready(|o| !o.builder.is_empty() && o.opened_ns + linger_ns <= now)
                .await;
            // Unkeyed records move to the next partition once a lingering batch left.
            for (t, ps) in self.topics.iter().enumerate() {
                if self.partitions[ps[self.sticky[t]]].open.builder.is_empty() {
                    self.sticky[t] = (self.sticky[t] + 1) % ps.len();
                }
            }
            let next_due = if schedule.is_open_loop() {
                schedule.due_time(made, 0)
            } else {
                now
            };
            let next_linger = self
                .partitions
                .iter()
                .filter(|p| !p.open.builder.is_empty())
                .map(|p| p.open.opened_ns + linger_ns)
                .min()
                .unwrap_or(u64::MAX);
            let wake = next_due.min(next_linger).min(spec.end_ns);
            if wake > clock.now_ns() {
                sleep_until(clock, wake).await;
            } else {
                glommio::yield_if_needed().await;
            }
        }
        let stopped_at = clock.now_ns().min(spec.end_ns);
        self.tally.borrow_mut().due = if schedule.is_open_loop() {
            schedule.due_count(stopped_at).max(made)
        } else {
            made
        };
        self.send_ready(|o| !o.builder.is_empty()).await;
    }

    /// Sends every batch `ready` picks, one request per leader.
    async fn send_ready(&mut self, ready: impl Fn(&Open) -> bool) {
        for leader in 0..self.leaders.len() {
            let picked: Vec<usize> = (0..self.partitions.len())
                .filter(|&p| self.partitions[p].leader == leader && ready(&self.partitions[p].open))
                .collect();
            if !picked.is_empty() {
                self.send(leader, &picked).await;
            }
        }
    }

    async fn send(&mut self, leader: usize, picked: &[usize]) {
        let spec = self.spec.clone();
        let clock = spec.clock;
        let window = self.leaders[leader].window.clone();
        let permit = window
            .acquire_static_permit(1)
            .await
            .expect("the window closes only at the drain, after the last send");
        let mut by_topic: BTreeMap<String, Vec<PartitionProduceData>> = BTreeMap::new();
        let mut sent = Vec::with_capacity(picked.len());
        let codec = spec.workload.compression.engine();
        let mut records = 0u64;
        let mut failed_to_seal = Vec::new();
        for &p in picked {
            let partition = &mut self.partitions[p];
            let count = partition.open.builder.count();
            let fields = self.producer.map(|(id, epoch)| ProducerFields {
                id,
                epoch,
                base_sequence: partition.next_sequence,
            });
            // Sealed straight into the buffer the request will carry.
            let mut sealed_bytes = Vec::with_capacity(partition.open.builder.size_uncompressed());
            let sealed = partition
                .open
                .builder
                .finish(codec, fields, &mut sealed_bytes);
            let due = std::mem::take(&mut partition.open.due);
            let bytes = std::mem::take(&mut partition.open.bytes);
            if let Err(e) = sealed {
                failed_to_seal.push((due.len() as u64, e.to_string()));
                continue;
            }
            partition.next_sequence = partition.next_sequence.wrapping_add(count) & i32::MAX;
            records += due.len() as u64;
            by_topic
                .entry(partition.layout.topic.clone())
                .or_default()
                .push(
                    PartitionProduceData::default()
                        .with_index(partition.layout.partition)
                        .with_records(Some(Bytes::from(sealed_bytes))),
                );
            sent.push(Sent {
                topic: partition.layout.topic.clone(),
                partition: partition.layout.partition,
                due,
                bytes,
            });
        }
        {
            let mut tally = self.tally.borrow_mut();
            let now = clock.now_ns();
            for (n, why) in failed_to_seal {
                tally.sent += n;
                Live::add(&spec.live.sent, n);
                tally.fail(
                    n,
                    &format!("cannot build a batch: {why}"),
                    spec.measure_from_ns,
                    now,
                );
                Live::add(&spec.live.failed, n);
            }
        }
        if sent.is_empty() {
            return;
        }
        let request = ProduceRequest::default()
            .with_transactional_id(None)
            .with_acks(spec.workload.acks)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(
                by_topic
                    .into_iter()
                    .map(|(topic, data)| {
                        TopicProduceData::default()
                            .with_name(topic_name(&topic))
                            .with_partition_data(data)
                    })
                    .collect(),
            );
        {
            let mut tally = self.tally.borrow_mut();
            tally.sent += records;
            Live::add(&spec.live.sent, records);
        }
        let sent_ns = clock.now_ns();
        let conn = match self.conn(leader).await {
            Ok(conn) => conn,
            Err(why) => return self.settle_failed(&sent, &why),
        };
        let version = spec.versions.produce;
        if spec.workload.acks == 0 {
            match conn.request_unanswered(version, &request).await {
                // Nothing will answer: a record counts as acknowledged once written.
                Ok(()) => settle(
                    (&self.tally, &self.stale),
                    &spec.live,
                    &sent,
                    Ok(None),
                    sent_ns,
                    clock.now_ns(),
                    spec.measure_from_ns,
                ),
                Err(why) => self.settle_failed(&sent, &why),
            }
            return;
        }
        match conn.request(version, &request).await {
            Ok(reply) => {
                let tally = self.tally.clone();
                let stale = self.stale.clone();
                let live = spec.live.clone();
                let from = spec.measure_from_ns;
                glommio::spawn_local(async move {
                    let answer = reply.wait().await;
                    settle(
                        (&tally, &stale),
                        &live,
                        &sent,
                        answer.map(Some),
                        sent_ns,
                        clock.now_ns(),
                        from,
                    );
                    drop(permit);
                })
                .detach();
            }
            Err(why) => self.settle_failed(&sent, &why),
        }
    }

    fn settle_failed(&self, sent: &[Sent], why: &str) {
        let now = self.spec.clock.now_ns();
        settle(
            (&self.tally, &self.stale),
            &self.spec.live,
            sent,
            Err(why.to_string()),
            now,
            now,
            self.spec.measure_from_ns,
        );
    }

    /// The connection to `leader`, made anew if there is none or it broke.
    async fn conn(&mut self, leader: usize) -> Result<Rc<Conn>, String> {
        let slot = &mut self.leaders[leader];
        if let Some(conn) = &slot.conn {
            if conn.broken().is_none() {
                return Ok(conn.clone());
            }
        }
        let client_id = format!("spate-bench-producer-{}", self.spec.index);
        let conn = Conn::connect(&slot.address, &client_id).await?;
        slot.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Looks up the leaders of the stale partitions and moves each that has one to it.
    async fn refresh_leaders(&mut self) {
        self.refreshed_ns = self.spec.clock.now_ns();
        let Some(version) = self.spec.versions.metadata else {
            return;
        };
        let topics: std::collections::BTreeSet<String> =
            self.stale.borrow().iter().map(|(t, _)| t.clone()).collect();
        let request = metadata_request(&topics);
        // Any broker that answers will do: the old leader may be the one that is gone.
        let mut metadata = None;
        for leader in 0..self.leaders.len() {
            let asked = async {
                let conn = self.conn(leader).await?;
                conn.request(version, &request).await?.wait().await
            };
            if let Some(Ok(answer)) = within(SETUP_TIMEOUT, asked).await {
                metadata = Some(answer);
                break;
            }
        }
        let Some(metadata) = metadata else {
            return;
        };
        let addresses = broker_addresses(&metadata);
        let mut moved = false;
        for topic in &metadata.topics {
            let name = name_of(topic);
            for p in &topic.partitions {
                let key = (name.clone(), p.partition_index);
                // No leader yet: it stays stale.
                let Some(address) = addresses.get(&p.leader_id.0) else {
                    continue;
                };
                if !self.stale.borrow_mut().remove(&key) {
                    continue;
                }
                let Some(index) = self
                    .partitions
                    .iter()
                    .position(|x| x.layout.topic == key.0 && x.layout.partition == key.1)
                else {
                    continue;
                };
                let leader = self.leader_at(address);
                let partition = &mut self.partitions[index];
                if partition.leader != leader {
                    partition.leader = leader;
                    partition.layout.leader = address.clone();
                    moved = true;
                }
            }
        }
        if moved && self.producer.is_some() {
            // The refused batches left gaps in the sequences: start over as a new producer.
            // If that fails the old id stays, and its batches are refused and counted.
            if let Ok(producer) = self.ask_producer_id().await {
                self.producer = Some(producer);
                for partition in &mut self.partitions {
                    partition.next_sequence = 0;
                }
            }
        }
    }

    /// The index of the leader at `address`, added if new.
    fn leader_at(&mut self, address: &str) -> usize {
        if let Some(index) = self.leaders.iter().position(|l| l.address == address) {
            return index;
        }
        self.leaders.push(Leader {
            address: address.to_string(),
            conn: None,
            window: Rc::new(Semaphore::new(self.spec.workload.max_in_flight as u64)),
        });
        self.leaders.len() - 1
    }

    /// Asks for a producer id; on failure every due record of the run would fail, so
    /// the producer stops and says why.
    async fn init_producer_id(&mut self) -> bool {
        match self.ask_producer_id().await {
            Ok(producer) => {
                self.producer = Some(producer);
                true
            }
            Err(why) => {
                self.tally.borrow_mut().fatal.push(why);
                false
            }
        }
    }

    /// A new producer id and epoch from the first leader that answers.
    async fn ask_producer_id(&mut self) -> Result<(i64, i16), String> {
        let version = self
            .spec
            .versions
            .init_producer_id
            .ok_or("no InitProducerId")?;
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let mut last = String::from("no broker to ask");
        for leader in 0..self.leaders.len() {
            let asked = async {
                let conn = self.conn(leader).await?;
                conn.request(version, &request).await?.wait().await
            };
            match within(SETUP_TIMEOUT, asked).await {
                Some(Ok(answer)) => {
                    return match error_of(answer.error_code) {
                        Some(e) => Err(format!("InitProducerId failed: {}", kafka_name(e))),
                        None => Ok((answer.producer_id.0, answer.producer_epoch)),
                    }
                }
                Some(Err(why)) => last = why,
                None => last = "InitProducerId was not answered in time".into(),
            }
        }
        Err(last)
    }

    /// Waits for every outstanding answer, up to `DRAIN_TIMEOUT`; what is still
    /// unanswered then counts as failed.
    async fn drain(&mut self) {
        let clock = self.spec.clock;
        let deadline = clock.now_ns() + DRAIN_TIMEOUT.as_nanos() as u64;
        for leader in &self.leaders {
            let left = deadline.saturating_sub(clock.now_ns()).max(1);
            let window = leader.window.clone();
            let all = self.spec.workload.max_in_flight as u64;
            let _ = glommio::timer::timeout(Duration::from_nanos(left), async move {
                window.acquire_permit(all).await.map(drop)
            })
            .await;
        }
        let mut tally = self.tally.borrow_mut();
        let unanswered = tally.sent - tally.acknowledged - tally.failed;
        if unanswered > 0 {
            let now = clock.now_ns();
            tally.fail(
                unanswered,
                "no answer within the drain timeout",
                self.spec.measure_from_ns,
                now,
            );
            Live::add(&self.spec.live.failed, unanswered);
        }
        // Late answers must not change the counts reported.
        for leader in &mut self.leaders {
            leader.window.close();
            leader.conn = None;
        }
    }
}

/// Counts the outcome of one produce request: its answer (`None` for acks=0), or why
/// there is none.
fn settle(
    (tally, stale): (&Rc<RefCell<ProduceTally>>, &RefCell<Stale>),
    live: &Live,
    sent: &[Sent],
    answer: Result<Option<ProduceResponse>, String>,
    sent_ns: u64,
    done_ns: u64,
    measure_from_ns: u64,
) {
    let mut tally = tally.borrow_mut();
    if tally.acknowledged + tally.failed >= tally.sent && !sent.is_empty() {
        // The drain gave up on these already.
        return;
    }
    for batch in sent {
        let n = batch.due.len() as u64;
        let code = match &answer {
            Err(why) => Err(why.clone()),
            Ok(None) => Ok(0),
            Ok(Some(response)) => response
                .responses
                .iter()
                .filter(|t| t.name.as_str() == batch.topic)
                .flat_map(|t| &t.partition_responses)
                .find(|p| p.index == batch.partition)
                .map(|p| p.error_code)
                .ok_or_else(|| format!("no answer for {}-{}", batch.topic, batch.partition)),
        };
        match code {
            Ok(0) => {
                tally.acknowledged += n;
                Live::add(&live.acknowledged, n);
                tally
                    .timeline
                    .add(measure_from_ns, done_ns, n, batch.bytes, 0);
                if answer.as_ref().is_ok_and(Option::is_some) {
                    for &due in &batch.due {
                        tally.ack.record(due, sent_ns.max(due), done_ns);
                    }
                }
            }
            Ok(code) => {
                let error = error_of(code);
                let moved = matches!(
                    error,
                    Some(ResponseError::NotLeaderOrFollower | ResponseError::LeaderNotAvailable)
                );
                if moved {
                    stale
                        .borrow_mut()
                        .insert((batch.topic.clone(), batch.partition));
                }
                let name = error.map_or_else(|| code.to_string(), kafka_name);
                tally.fail(n, &name, measure_from_ns, done_ns);
                Live::add(&live.failed, n);
            }
            Err(why) => {
                // The leader may be gone with its connection.
                stale
                    .borrow_mut()
                    .insert((batch.topic.clone(), batch.partition));
                tally.fail(n, &why, measure_from_ns, done_ns);
                Live::add(&live.failed, n);
            }
        }
    }
}

/// `future`'s output, or `None` if it takes longer than `limit`.
async fn within<T>(limit: Duration, future: impl std::future::Future<Output = T>) -> Option<T> {
    let future = std::pin::pin!(future);
    let timer = std::pin::pin!(glommio::timer::sleep(limit));
    match futures::future::select(future, timer).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(_) => None,
    }
}

async fn sleep_until(clock: Clock, at_ns: u64) {
    let now = clock.now_ns();
    if at_ns > now {
        glommio::timer::sleep(Duration::from_nanos(at_ns - now)).await;
    }
}
