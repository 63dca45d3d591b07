//! # spate-kafka-bench
//!
//! Load from librdkafka (the C client behind kcat, confluent-kafka and most non-Java
//! clients) against a running Kafka-protocol broker, so the numbers are what users of
//! those clients would see. Subcommands: `create` a topic, `produce` a fixed number of
//! records as fast as the broker takes them, `consume` them back from the beginning
//! (catch-up), and `latency` at a fixed rate, produce to consume, in one process.
//! Each prints one `key=value` line that `bench/kafka.sh` collects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(
    name = "spate-kafka-bench",
    about = "librdkafka load against a Kafka broker"
)]
struct Cli {
    /// Bootstrap broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a topic.
    Create {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 2)]
        partitions: i32,
    },
    /// Produce `records` records of `size` bytes with acks=all, as fast as acknowledged.
    Produce {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        records: u64,
        #[arg(long)]
        size: usize,
    },
    /// Read a topic from the beginning until `records` records have arrived.
    Consume {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        records: u64,
        /// One reading thread per partition instead of one for all.
        #[arg(long)]
        parallel: bool,
        /// Take up to this many records per call from librdkafka
        /// (`rd_kafka_consume_batch_queue`) instead of one per `poll`; 0 for one per call.
        #[arg(long, default_value_t = 0, conflicts_with = "parallel")]
        batch: usize,
    },
    /// Produce at `mb_per_s` (acks=all) while consuming; report produce-to-consume
    /// latency percentiles over `seconds`, after one second of warm-up.
    Latency {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 20.0)]
        mb_per_s: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Producer acks: all, 1.
        #[arg(long, default_value = "all")]
        acks: String,
    },
}

/// Counts delivery outcomes; in latency runs, also times each acknowledgement from the
/// send time the record carries.
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    acks: Option<(Instant, Mutex<Histogram<u64>>)>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let sent = m.payload().and_then(sent_at);
                if let (Some((epoch, histogram)), Some(sent)) = (&self.acks, sent) {
                    let now = epoch.elapsed().as_micros() as u64;
                    if sent >= WARMUP.as_micros() as u64 {
                        let mut h = histogram.lock().unwrap();
                        h.saturating_record(now.saturating_sub(sent).max(1));
                    }
                }
                self.ok.fetch_add(1, Ordering::Relaxed)
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("delivery failed: {e}");
                }
                0
            }
        };
    }
}

/// Latency samples from records sent in the first second are dropped (connections,
/// metadata, first segment allocation).
const WARMUP: Duration = Duration::from_secs(1);

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn producer(
    brokers: &str,
    linger_ms: &str,
    acks: Option<(Instant, Mutex<Histogram<u64>>)>,
    ack_policy: &str,
) -> BaseProducer<Deliveries> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", ack_policy)
        .set("linger.ms", linger_ms)
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("compression.type", "none")
        .set("socket.nagle.disable", "true")
        .create_with_context(Deliveries {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            acks,
        })
        .expect("producer")
}

/// Sends one record, waiting for queue room.
/// The send time (µs since the run's epoch) a latency record carries in its first 8 bytes.
fn sent_at(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

fn send(producer: &BaseProducer<Deliveries>, topic: &str, payload: &[u8]) {
    let mut record = BaseRecord::<(), [u8]>::to(topic).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("produce failed: {e}"),
        }
    }
}

/// The latency run's pacing: records due within this time are sent now, and the
/// producer sleeps only when it is further ahead of its schedule, so it sends bursts of
/// about a millisecond's records (as Kafka's `kafka-producer-perf-test` throttle does).
/// Waking for each record (51 µs apart at 20 MB/s of 1 KiB records) cost the client most
/// of a core in context switches, and librdkafka's poll cannot block for less than a
/// millisecond anyway (it spun). On a 2-core machine that core is taken from the broker
/// and its disk completions, and the tail latency measured was the load generator's.
/// Each record still carries its own send time.
const PACING_SLEEP_MIN: Duration = Duration::from_millis(1);

/// Waits until every record sent is acknowledged or failed, or `timeout` passes.
/// (`BaseProducer::flush` of rdkafka 0.36 counts its polls, not time: it gives up early
/// when delivery reports keep arriving.)
fn flush(producer: &BaseProducer<Deliveries>, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let flushed = producer.flush(left);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if left.is_zero() {
            return Err(flushed
                .err()
                .unwrap_or(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)));
        }
    }
}

fn produce(brokers: &str, topic: &str, records: u64, size: usize) {
    let producer = producer(brokers, "5", None, "all");
    // Incompressible bytes, though compression is off: what is measured is the broker.
    let payload: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    let start = Instant::now();
    for i in 0..records {
        send(&producer, topic, &payload);
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    flush(&producer, Duration::from_secs(120)).expect("flush");
    let seconds = start.elapsed().as_secs_f64();
    let context = producer.context();
    let ok = context.ok.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    assert_eq!(ok + failed, records, "every record reported");
    println!(
        "produce size={size} records={records} failed={failed} seconds={seconds:.3} records_per_s={:.0} mb_per_s={:.1}",
        ok as f64 / seconds,
        (ok as f64 * size as f64) / seconds / 1e6
    );
}

/// A consumer of every partition of `topic` from `start`, and the assignment to give it.
fn unassigned_consumer(
    brokers: &str,
    topic: &str,
    start: Offset,
) -> (BaseConsumer, TopicPartitionList) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "spate-kafka-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.message.max.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .set("queued.max.messages.kbytes", "1048576")
        .set("fetch.wait.max.ms", "100")
        .set("socket.nagle.disable", "true")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} exists");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, start)
            .expect("assignment");
    }
    (consumer, assignment)
}

fn consumer(brokers: &str, topic: &str, start: Offset) -> BaseConsumer {
    let (consumer, assignment) = unassigned_consumer(brokers, topic, start);
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Like `consume`, with one thread per partition (librdkafka's per-partition queues), so
/// that the client's per-record cost is spread over cores.
fn consume_parallel(brokers: &str, topic: &str, records: u64) {
    let (consumer, assignment) = unassigned_consumer(brokers, topic, Offset::Beginning);
    let consumer = Arc::new(consumer);
    let count = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let readers: Vec<_> = assignment
        .elements()
        .iter()
        .map(|e| {
            let queue = consumer
                .split_partition_queue(topic, e.partition())
                .expect("partition queue");
            let (count, bytes) = (count.clone(), bytes.clone());
            std::thread::spawn(move || {
                while count.load(Ordering::Relaxed) < records {
                    if let Some(m) = queue.poll(Duration::from_millis(100)) {
                        let m = m.expect("consume");
                        bytes.fetch_add(m.payload_len() as u64, Ordering::Relaxed);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    consumer.assign(&assignment).expect("assign");
    while count.load(Ordering::Relaxed) < records {
        // Serves the consumer's events; records arrive on the partition queues.
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            panic!("consume failed: {e}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "consume took over 300 s"
        );
    }
    for reader in readers {
        reader.join().unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    let (count, bytes) = (count.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    println!(
        "consume threads=partitions records={count} seconds={seconds:.3} records_per_s={:.0} mb_per_s={:.1}",
        count as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
}

fn consume(brokers: &str, topic: &str, records: u64) {
    let consumer = consumer(brokers, topic, Offset::Beginning);
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut start = None;
    while count < records {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                start.get_or_insert_with(Instant::now);
                count += 1;
                bytes += m.payload_len() as u64;
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => panic!("no records for 10 s after {count} of {records}"),
        }
    }
    let seconds = start.expect("records arrived").elapsed().as_secs_f64();
    println!(
        "consume records={count} seconds={seconds:.3} records_per_s={:.0} mb_per_s={:.1}",
        count as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
}

/// `consume`, taking up to `batch` records per call from the consumer's queue with
/// `rd_kafka_consume_batch_queue` (librdkafka's `rdkafka_performance -B` does the same),
/// which saves the per-record `poll` of the `rdkafka` crate's consumer.
fn consume_batches(brokers: &str, topic: &str, records: u64, batch: usize) {
    use rdkafka::bindings as rd;
    let consumer = consumer(brokers, topic, Offset::Beginning);
    // SAFETY: the consumer outlives the queue handle, destroyed below.
    let queue = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
    assert!(!queue.is_null(), "the consumer's queue");
    let mut messages: Vec<*mut rd::rd_kafka_message_t> = vec![std::ptr::null_mut(); batch];
    let (mut count, mut bytes) = (0u64, 0u64);
    let (mut first, mut idle) = (None, Instant::now());
    while count < records {
        // SAFETY: `messages` has room for `batch` pointers; each returned one is read,
        // then destroyed once.
        let wanted = (records - count).min(batch as u64) as usize;
        let n =
            unsafe { rd::rd_kafka_consume_batch_queue(queue, 100, messages.as_mut_ptr(), wanted) };
        assert!(n >= 0, "consume_batch_queue failed");
        if n == 0 {
            assert!(
                idle.elapsed() < Duration::from_secs(10),
                "no records for 10 s after {count} of {records}"
            );
            continue;
        }
        idle = Instant::now();
        first.get_or_insert(idle);
        for &m in &messages[..n as usize] {
            // SAFETY: librdkafka returned `m`; it is valid until destroyed here.
            unsafe {
                assert_eq!(
                    (*m).err,
                    rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                    "consume failed"
                );
                bytes += (*m).len as u64;
                rd::rd_kafka_message_destroy(m);
            }
        }
        count += n as u64;
    }
    let seconds = first.expect("records arrived").elapsed().as_secs_f64();
    // SAFETY: obtained above; no call uses it after this.
    unsafe { rd::rd_kafka_queue_destroy(queue) };
    println!(
        "consume batch={batch} records={count} seconds={seconds:.3} records_per_s={:.0} mb_per_s={:.1}",
        count as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
}

fn latency(brokers: &str, topic: &str, size: usize, mb_per_s: f64, seconds: u64, ack_policy: &str) {
    assert!(size >= 8, "records carry their send time in 8 bytes");
    let epoch = Instant::now();
    let run = WARMUP + Duration::from_secs(seconds);
    let done = Arc::new(AtomicU64::new(0));
    // Only records sent by this run: earlier runs' send times are from another clock.
    let consumer = consumer(brokers, topic, Offset::End);
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut histogram = histogram();
            while done.load(Ordering::Relaxed) == 0 {
                let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                // A record this run did not write (too short to carry a send time) is skipped.
                let Some(sent) = message.ok().and_then(|m| m.payload().and_then(sent_at)) else {
                    continue;
                };
                let now = epoch.elapsed().as_micros() as u64;
                if sent >= WARMUP.as_micros() as u64 {
                    histogram.saturating_record(now.saturating_sub(sent).max(1));
                }
            }
            histogram
        })
    };
    // Let the consumer's assignment settle before the clock starts.
    std::thread::sleep(Duration::from_millis(500));
    let timed = Some((epoch, Mutex::new(histogram())));
    let producer = producer(brokers, "0", timed, ack_policy);
    let interval = Duration::from_secs_f64(size as f64 / (mb_per_s * 1e6));
    let mut payload = vec![0x5a_u8; size];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < run {
        let due = interval.mul_f64(sent as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            if wait >= PACING_SLEEP_MIN {
                producer.poll(wait);
                continue;
            }
        }
        payload[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
        send(&producer, topic, &payload);
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    let sending = start.elapsed();
    if let Err(e) = flush(&producer, Duration::from_secs(30)) {
        // Reported, not fatal: the latencies measured so far still stand.
        eprintln!(
            "flush: {e}; {} records still unacknowledged",
            producer.in_flight_count()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    done.store(1, Ordering::Relaxed);
    let h = reader.join().unwrap();
    let achieved = sent as f64 * size as f64 / sending.as_secs_f64() / 1e6;
    let acks = producer
        .context()
        .acks
        .as_ref()
        .unwrap()
        .1
        .lock()
        .unwrap()
        .clone();
    println!(
        "latency acks={ack_policy} size={size} mb_per_s={achieved:.1} samples={} p50_us={} p99_us={} p999_us={} max_us={} ack_p50_us={} ack_p99_us={} ack_p999_us={}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        acks.value_at_quantile(0.5),
        acks.value_at_quantile(0.99),
        acks.value_at_quantile(0.999),
    );
}

fn create(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = futures_lite_block_on(admin.create_topics(&[new], &AdminOptions::new()))
        .expect("create topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
    println!("create topic={topic} partitions={partitions}");
}

/// Runs a future to completion on this thread (rdkafka's admin API is async; nothing
/// else here is).
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Thread(std::thread::Thread);
    impl Wake for Thread {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Thread(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Create { topic, partitions } => create(&cli.brokers, &topic, partitions),
        Command::Produce {
            topic,
            records,
            size,
        } => produce(&cli.brokers, &topic, records, size),
        Command::Consume {
            topic,
            records,
            parallel: false,
            batch: 0,
        } => consume(&cli.brokers, &topic, records),
        Command::Consume {
            topic,
            records,
            parallel: false,
            batch,
        } => consume_batches(&cli.brokers, &topic, records, batch),
        Command::Consume {
            topic,
            records,
            parallel: true,
            ..
        } => consume_parallel(&cli.brokers, &topic, records),
        Command::Latency {
            topic,
            size,
            mb_per_s,
            seconds,
            acks,
        } => latency(&cli.brokers, &topic, size, mb_per_s, seconds, &acks),
    }
}
