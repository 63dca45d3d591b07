//! `spate produce TOPIC`: one record per line of stdin (or `--file`), as
//! `kafka-console-producer.sh` does.
//!
//! With `--key-separator`, each line is `key<SEP>value`. Keyed records go to the
//! partition Kafka's Java client would pick (murmur2 of the key), unkeyed ones fill a
//! batch per partition in turn; `--partition` overrides both. Records are sent in
//! batches of up to `BATCH_RECORDS_MAX` records or `BATCH_BYTES_MAX` bytes per partition,
//! one request per partition leader at a time (in a cluster each broker takes only the
//! partitions it leads). What is read is sent as soon as the input has no more lines
//! ready, so lines typed or piped in slowly go out one by one.
//!
//! A batch refused because its leader moved, or whose leader's broker cannot be reached,
//! goes again to the leader the metadata names next, for up to `route::FOLLOW_LEADERS`.
//! With acks=all the producer is idempotent (as Kafka's is by default): it takes a
//! producer id and numbers its batches, so a batch sent again after its leader died,
//! which that leader may have written already, is written once. With acks=1 or 0, or
//! `--no-idempotence`, such a batch may be written twice.
//!
//! A summary (records, bytes, rate) goes to stderr at the end, or with `--format json`
//! to stdout as `{"topic", "records", "bytes", "seconds"}`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use spate_bench::workload::Codec;
use spate_net::client::route::{leader_moved, Partition, Router, FOLLOW_LEADERS};

use crate::client_args::{failure, key_value, print_json, ClientArgs, Format};
use spate_net::client::lookup::{partitions_of, topic_name};

/// Most records in one batch.
const BATCH_RECORDS_MAX: usize = 1000;
/// Most key and value bytes in one batch (well under Kafka's default `max.message.bytes`).
const BATCH_BYTES_MAX: usize = 512 * 1024;
/// Bytes of input read at a time; the input is known to have nothing more ready when
/// this buffer is empty.
const INPUT_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    topic: String,
    /// Read records from this file instead of stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Acknowledgements: all (-1), 1 or 0.
    #[arg(long, default_value = "all", value_parser = ["all", "-1", "1", "0"])]
    acks: String,
    #[arg(long, value_enum, default_value_t = Codec::None)]
    compression: Codec,
    /// Do not number batches (idempotence needs acks=all, and is on by default with it).
    #[arg(long)]
    no_idempotence: bool,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// A header added to every record, `key=value` (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE")]
    headers: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Records waiting to be sent, by partition.
struct Pending {
    batches: Vec<Vec<Record>>,
    bytes: Vec<usize>,
}

struct Sender<'a> {
    router: Router,
    version: i16,
    topic: &'a str,
    acks: i16,
    compression: Compression,
    /// The producer id and epoch, and each partition's next sequence number, if
    /// idempotent.
    idempotent: Option<(i64, i16, Vec<i32>)>,
    sent_records: u64,
    sent_bytes: u64,
}

impl Sender<'_> {
    fn send(&mut self, pending: &mut Pending) -> Result<(), String> {
        let mut batches = BTreeMap::new();
        for (p, records) in pending.batches.iter_mut().enumerate() {
            if records.is_empty() {
                continue;
            }
            if let Some((id, epoch, sequences)) = &mut self.idempotent {
                number(records, *id, *epoch, &mut sequences[p]);
            }
            let mut buf = BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression: self.compression,
            };
            RecordBatchEncoder::encode(&mut buf, records.iter(), &options)
                .map_err(|e| format!("cannot encode a batch: {e}"))?;
            self.sent_records += records.len() as u64;
            self.sent_bytes += pending.bytes[p] as u64;
            records.clear();
            pending.bytes[p] = 0;
            batches.insert((self.topic.to_string(), p as i32), buf.freeze());
        }
        let patience = FOLLOW_LEADERS;
        for attempt in 0..=patience.retries {
            if batches.is_empty() {
                return Ok(());
            }
            if attempt > 0 {
                std::thread::sleep(patience.backoff);
                self.router.refresh()?;
            }
            batches = self.send_to_leaders(&batches)?;
        }
        let stuck: Vec<String> = batches.keys().map(|(t, p)| format!("{t}-{p}")).collect();
        Err(format!(
            "could not produce to {}: no leader took it ({} tries)",
            stuck.join(", "),
            patience.retries + 1
        ))
    }

    /// Sends each batch to its partition's leader; returns those refused because the
    /// leader moved or whose leader could not be reached.
    fn send_to_leaders(
        &mut self,
        batches: &BTreeMap<Partition, Bytes>,
    ) -> Result<BTreeMap<Partition, Bytes>, String> {
        let mut moved = BTreeMap::new();
        for (leader, group) in self.router.by_leader(batches) {
            let partition_data = group
                .iter()
                .map(|((_, p), bytes)| {
                    PartitionProduceData::default()
                        .with_index(*p)
                        .with_records(Some(Bytes::clone(bytes)))
                })
                .collect();
            let request = ProduceRequest::default()
                .with_transactional_id(None)
                .with_acks(self.acks)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(topic_name(self.topic))
                    .with_partition_data(partition_data)]);
            let unreached = |moved: &mut BTreeMap<Partition, Bytes>| {
                moved.extend(group.iter().map(|(k, b)| ((*k).clone(), Bytes::clone(b))));
            };
            if self.acks == 0 {
                if self
                    .router
                    .send_without_response(&leader, self.version, &request)?
                    .is_none()
                {
                    unreached(&mut moved);
                }
                continue;
            }
            let Some(answered) = self.router.send(&leader, self.version, &request)? else {
                unreached(&mut moved);
                continue;
            };
            for p in answered
                .responses
                .iter()
                .flat_map(|t| &t.partition_responses)
            {
                let key = (self.topic.to_string(), p.index);
                match (p.error_code, batches.get(&key)) {
                    (0, _) => {}
                    (code, Some(batch)) if leader_moved(code) => {
                        moved.insert(key, batch.clone());
                    }
                    (code, _) => {
                        let detail = p
                            .error_message
                            .as_ref()
                            .map(|m| format!(": {}", m.as_str()))
                            .unwrap_or_default();
                        return Err(failure(
                            &format!("could not produce to {}-{}{detail}", self.topic, p.index),
                            code,
                        ));
                    }
                }
            }
        }
        Ok(moved)
    }
}

/// Gives `records` (one batch) producer id `id`, `epoch` and the sequence numbers from
/// `next` on, and advances `next` past them (wrapping, as Kafka's sequences do).
fn number(records: &mut [Record], id: i64, epoch: i16, next: &mut i32) {
    for record in records.iter_mut() {
        record.producer_id = id;
        record.producer_epoch = epoch;
        record.sequence = next.wrapping_add(record.offset as i32);
    }
    *next = next.wrapping_add(records.len() as i32);
}

/// A producer id and epoch from the broker, for an idempotent producer.
fn producer_id(router: &mut Router) -> Result<(i64, i16), String> {
    let version = router.version(ApiKey::InitProducerId, (0, 4))?;
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(i32::MAX);
    for attempt in 0..=FOLLOW_LEADERS.retries {
        if attempt > 0 {
            std::thread::sleep(FOLLOW_LEADERS.backoff);
            router.refresh()?;
        }
        let Some(answer) = router.send(&router.any_broker(), version, &request)? else {
            continue;
        };
        match answer.error_code {
            0 => return Ok((answer.producer_id.0, answer.producer_epoch)),
            // Producer-id blocks come from the controller, which may be being chosen.
            code if code == ResponseError::CoordinatorNotAvailable.code() => continue,
            code => return Err(failure("could not get a producer id", code)),
        }
    }
    Err(format!(
        "could not get a producer id: no broker had one to give ({} tries)",
        FOLLOW_LEADERS.retries + 1
    ))
}

pub fn run(args: &ProduceArgs) -> Result<(), String> {
    let headers = args
        .headers
        .iter()
        .map(|h| key_value(h, "header"))
        .collect::<Result<Vec<_>, _>>()?;
    let (input, size): (Box<dyn Read>, Option<u64>) = match &args.file {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let size = file.metadata().map(|m| m.len()).ok();
            (Box::new(file), size)
        }
        None => (Box::new(std::io::stdin()), None),
    };
    // A file never keeps the reader waiting; stdin may, and what was read is sent first.
    let interactive = args.file.is_none();
    let mut input = BufReader::with_capacity(INPUT_BUFFER_BYTES, input);
    // Only a file has a known size to show progress against.
    let progress = size.map_or_else(indicatif::ProgressBar::hidden, |s| {
        crate::progress::bar(s, "bytes")
    });
    let mut client = args.client.connect()?;
    let partitions = partitions_of(&mut client, std::slice::from_ref(&args.topic))?.len() as i32;
    if let Some(p) = args.partition {
        if !(0..partitions).contains(&p) {
            return Err(format!(
                "topic \"{}\" has no partition {p} (it has {partitions})",
                args.topic
            ));
        }
    }
    let version = client
        .version(ApiKey::Produce, (3, 9))
        .map_err(|e| e.to_string())?;
    let acks = if args.acks == "all" {
        -1
    } else {
        args.acks.parse().expect("clap checked it")
    };
    let mut router = Router::new(client, std::slice::from_ref(&args.topic))?;
    let idempotent = if acks == -1 && !args.no_idempotence {
        let (id, epoch) = producer_id(&mut router)?;
        Some((id, epoch, vec![0; partitions as usize]))
    } else {
        None
    };
    let mut sender = Sender {
        router,
        version,
        topic: &args.topic,
        acks,
        idempotent,
        compression: match args.compression {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        },
        sent_records: 0,
        sent_bytes: 0,
    };
    let mut pending = Pending {
        batches: (0..partitions).map(|_| Vec::new()).collect(),
        bytes: vec![0; partitions as usize],
    };
    let started = Instant::now();
    let mut sticky = 0;
    let mut line = String::new();
    for number in 0u64.. {
        if interactive && input.buffer().is_empty() {
            sender.send(&mut pending)?;
        }
        line.clear();
        let read = input
            .read_line(&mut line)
            .map_err(|e| format!("cannot read line {}: {e}", number + 1))?;
        if read == 0 {
            break;
        }
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line).to_string();
        progress.inc(line.len() as u64 + 1);
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(k.to_string()), v.to_string()),
                None => {
                    return Err(format!(
                        "line {} has no key separator \"{sep}\"",
                        number + 1
                    ))
                }
            },
            None => (None, line),
        };
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => {
                spate_net::client::partitioner::keyed_partition(k.as_bytes(), partitions)
            }
            (None, None) => sticky,
        } as usize;
        let mut record = Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: pending.batches[partition].len() as i64,
            sequence: pending.batches[partition].len() as i32 - 1,
            timestamp: spate_engine::Timestamp::now().0,
            key: key.map(Bytes::from),
            value: Some(Bytes::from(value)),
            headers: Default::default(),
        };
        for (k, v) in &headers {
            record.headers.insert(
                StrBytes::from_string(k.clone()),
                Some(Bytes::from(v.clone())),
            );
        }
        pending.bytes[partition] +=
            record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len);
        pending.batches[partition].push(record);
        let full = pending.batches[partition].len() >= BATCH_RECORDS_MAX
            || pending.bytes[partition] >= BATCH_BYTES_MAX;
        if full {
            sender.send(&mut pending)?;
            sticky = (sticky + 1) % partitions;
        }
    }
    sender.send(&mut pending)?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64().max(1e-6);
    match args.client.format {
        Format::Json => print_json(&serde_json::json!({
            "topic": args.topic, "records": sender.sent_records,
            "bytes": sender.sent_bytes, "seconds": seconds,
        })),
        Format::Text => eprintln!(
            "produced {} records ({} bytes) to {} in {seconds:.2} s ({:.0} records/s)",
            sender.sent_records,
            sender.sent_bytes,
            args.topic,
            sender.sent_records as f64 / seconds
        ),
    }
    Ok(())
}
