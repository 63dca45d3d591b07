//! `spate consume TOPIC…`: print records, as `kafka-console-consumer.sh` does.
//!
//! Without `--group` it reads the chosen partitions (all, or `--partition`) from the
//! chosen start (`--from-beginning`, `--offset`, `--from-time`; the log end by default).
//! With `--group` it joins the consumer group (classic protocol, range assignor), starts
//! from the group's committed offsets (or the chosen start where there are none),
//! heartbeats between fetches, commits every `COMMIT_INTERVAL` and on exit, and rejoins
//! when the group rebalances. It follows the log until Ctrl-C (or SIGTERM), `-n COUNT`
//! records, or with `--exit-at-end` the end of every partition; then it commits and
//! leaves the group. Each partition is fetched from its leader (in a cluster each broker
//! serves only the partitions it leads); one whose leader moved is read from the next.
//!
//! Output: `--format` is a template with `{key}`, `{value}`, `{partition}`, `{offset}`,
//! `{timestamp}`, `{headers}` and `{topic}` (default, and `text`: `{value}`), or `json` for one JSON
//! object per record: `{"topic", "partition", "offset", "timestamp", "key", "value",
//! "headers"}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::records::RecordBatchDecoder;
use serde_json::json;
use spate_engine::batch::BatchHeader;
use spate_net::client::member::{must_rejoin, Member};
use spate_net::client::route::{leader_moved, Partition, Router, FOLLOW_LEADERS};

use crate::client_args::{connect_to, failure, say};
use spate_net::client::lookup::{partitions_of, EARLIEST, LATEST};

/// Bytes asked for per partition and per fetch.
const FETCH_PARTITION_BYTES: i32 = 1 << 20;
const FETCH_BYTES: i32 = 8 << 20;
/// How long a fetch waits for data; also bounds how late a heartbeat or Ctrl-C is seen.
const FETCH_WAIT_MS: i32 = 500;
/// Pause before asking for the leaders again after a partition's leader moved.
const LEADER_REFRESH_PAUSE: Duration = Duration::from_millis(200);
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[arg(required = true)]
    topics: Vec<String>,
    /// Start at the log start (where a group has no committed offset).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset, `earliest` or `latest`.
    #[arg(long, value_name = "N|earliest|latest", conflicts_with = "from_time")]
    offset: Option<String>,
    /// Start at the first record at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    from_time: Option<String>,
    /// Read only this partition (not with --group).
    #[arg(long, conflicts_with = "group")]
    partition: Option<i32>,
    /// Join this consumer group and commit its offsets.
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many records.
    #[arg(short = 'n', long = "count")]
    count: Option<u64>,
    /// Stop at the end of every partition instead of following.
    #[arg(short = 'e', long)]
    exit_at_end: bool,
    /// `json`, or a template of {key} {value} {partition} {offset} {timestamp} {headers} {topic}.
    #[arg(long, default_value = "{value}")]
    format: String,
    /// Broker to talk to, `host:port`; of a comma-separated list, the first is used.
    #[arg(
        short = 'b',
        long,
        env = "SPATE_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C and SIGTERM ask the loop to stop, commit and leave.
fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Where each partition starts when nothing was committed.
fn starts(
    router: &mut Router,
    args: &ConsumeArgs,
    partitions: &BTreeSet<(String, i32)>,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    if partitions.is_empty() {
        return Ok(BTreeMap::new());
    }
    if let Some(time) = &args.from_time {
        let ms = crate::group::parse_rfc3339(time).ok_or_else(|| {
            format!("invalid time \"{time}\": expected RFC 3339, e.g. 2026-01-02T03:04:05Z")
        })?;
        let at = router.offsets_at(partitions, ms, FOLLOW_LEADERS)?;
        let ends = router.offsets_at(partitions, LATEST, FOLLOW_LEADERS)?;
        return Ok(at
            .into_iter()
            .map(|(tp, o)| {
                let end = ends[&tp];
                (tp, if o < 0 { end } else { o })
            })
            .collect());
    }
    match (args.offset.as_deref(), args.from_beginning) {
        (Some("earliest"), _) | (None, true) => {
            router.offsets_at(partitions, EARLIEST, FOLLOW_LEADERS)
        }
        (Some("latest"), _) | (None, false) => {
            router.offsets_at(partitions, LATEST, FOLLOW_LEADERS)
        }
        (Some(n), _) => {
            let n: i64 = n.parse().map_err(|_| {
                format!("invalid offset \"{n}\": expected a number, earliest or latest")
            })?;
            let first = router.offsets_at(partitions, EARLIEST, FOLLOW_LEADERS)?;
            let last = router.offsets_at(partitions, LATEST, FOLLOW_LEADERS)?;
            Ok(partitions
                .iter()
                .map(|tp| (tp.clone(), n.clamp(first[tp], last[tp])))
                .collect())
        }
    }
}

/// Prints records and counts them.
struct Printer {
    template: Option<String>,
    printed: u64,
    limit: Option<u64>,
    /// Progress towards `limit`, on a terminal's stderr.
    progress: indicatif::ProgressBar,
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.progress.finish_and_clear();
    }
}

fn text(b: Option<&Bytes>) -> String {
    b.map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

impl Printer {
    fn done(&self) -> bool {
        self.limit.is_some_and(|n| self.printed >= n)
    }

    fn print(&mut self, topic: &str, partition: i32, record: &kafka_protocol::records::Record) {
        let headers: Vec<(String, String)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), text(v.as_ref())))
            .collect();
        let line = match &self.template {
            None => json!({
                "topic": topic, "partition": partition, "offset": record.offset, "timestamp": record.timestamp,
                "key": record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": record.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                "headers": headers.iter().map(|(k, v)| json!({k: v})).collect::<Vec<_>>(),
            })
            .to_string(),
            Some(t) => t
                .replace("{key}", &text(record.key.as_ref()))
                .replace("{value}", &text(record.value.as_ref()))
                .replace("{partition}", &partition.to_string())
                .replace("{offset}", &record.offset.to_string())
                .replace("{timestamp}", &record.timestamp.to_string())
                .replace("{topic}", topic)
                .replace("{headers}", &headers.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
        };
        self.progress.suspend(|| say(line));
        self.progress.inc(1);
        self.printed += 1;
    }
}

/// The complete batches at the start of a fetched record set (a fetch may end mid-batch).
fn complete_batches(mut records: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while records.len() >= 12 {
        let len = i32::from_be_bytes(records[8..12].try_into().expect("4 bytes"));
        let Some(size) = usize::try_from(len)
            .ok()
            .map(|l| l + 12)
            .filter(|s| *s <= records.len())
        else {
            break;
        };
        out.push(records.split_to(size));
    }
    out
}

/// Fetches once from every partition at its position, from each partition's leader;
/// prints and advances. Returns whether every partition is at its end.
fn fetch_once(
    router: &mut Router,
    version: i16,
    positions: &mut BTreeMap<Partition, i64>,
    printer: &mut Printer,
) -> Result<bool, String> {
    let groups: Vec<(String, Vec<(Partition, i64)>)> = router
        .by_leader(positions.iter())
        .into_iter()
        .map(|(leader, group)| {
            (
                leader,
                group.into_iter().map(|(k, o)| (k.clone(), *o)).collect(),
            )
        })
        .collect();
    // Each leader waits its share, so that a pass over idle partitions takes
    // FETCH_WAIT_MS whatever the number of leaders.
    let wait = FETCH_WAIT_MS / groups.len().max(1) as i32;
    let (mut at_end, mut moved) = (true, false);
    for (leader, asked) in groups {
        let request = spate_net::client::lookup::fetch_request(
            asked.iter().map(|((t, p), o)| (t.as_str(), *p, *o)),
            wait,
            FETCH_BYTES,
            FETCH_PARTITION_BYTES,
        );
        let Some(answered) = router.send(&leader, version, &request)? else {
            // The leader's broker is gone: ask where the partitions went.
            moved = true;
            continue;
        };
        if answered.error_code != 0 {
            return Err(failure("fetch failed", answered.error_code));
        }
        match take_answer(&answered, positions, printer)? {
            Taken::Done => return Ok(true),
            Taken::Read { end, leader_moved } => {
                at_end &= end;
                moved |= leader_moved;
            }
        }
    }
    if moved {
        // Leaders are being chosen: ask again shortly, not in a busy loop.
        std::thread::sleep(LEADER_REFRESH_PAUSE);
        router.refresh()?;
    }
    Ok(at_end && !moved)
}

/// What one leader's fetch answer gave.
enum Taken {
    /// The record count asked for is printed.
    Done,
    /// `end`: every partition answered is at its end.
    Read { end: bool, leader_moved: bool },
}

/// Prints the records of one fetch answer and advances the positions.
fn take_answer(
    answered: &kafka_protocol::messages::FetchResponse,
    positions: &mut BTreeMap<Partition, i64>,
    printer: &mut Printer,
) -> Result<Taken, String> {
    let (mut at_end, mut moved) = (true, false);
    for topic in &answered.responses {
        let name = topic.topic.to_string();
        for p in &topic.partitions {
            let key = (name.clone(), p.partition_index);
            if leader_moved(p.error_code) {
                moved = true;
                continue;
            }
            if p.error_code != 0 {
                return Err(failure(
                    &format!("cannot read {name}-{}", p.partition_index),
                    p.error_code,
                ));
            }
            let Some(position) = positions.get_mut(&key) else {
                continue;
            };
            for mut batch in complete_batches(p.records.clone().unwrap_or_default()) {
                let undecodable =
                    |e: String| format!("undecodable batch from {name}-{}: {e}", p.partition_index);
                let header = BatchHeader::parse(&batch).map_err(|e| undecodable(e.to_string()))?;
                let set = RecordBatchDecoder::decode(&mut batch)
                    .map_err(|e| undecodable(e.to_string()))?;
                let from = *position;
                for record in set.records.iter().filter(|r| r.offset >= from) {
                    if printer.done() {
                        return Ok(Taken::Done);
                    }
                    *position = record.offset + 1;
                    if !record.control {
                        printer.print(&name, p.partition_index, record);
                    }
                }
                // Past the whole batch: compaction may have removed its last records (an
                // empty filler batch has none), and a fetch inside it returns it again.
                *position = (*position).max(header.last_offset().0.saturating_add(1));
            }
            if *position < p.high_watermark {
                at_end = false;
            }
        }
    }
    Ok(Taken::Read {
        end: at_end,
        leader_moved: moved,
    })
}

pub fn run(args: &ConsumeArgs) -> Result<(), String> {
    catch_signals();
    let address = args
        .brokers
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut client = connect_to(&address)?;
    let template = match args.format.as_str() {
        "json" => None,
        "text" => Some("{value}".to_string()),
        template => Some(template.to_string()),
    };
    let mut printer = Printer {
        template,
        printed: 0,
        limit: args.count,
        progress: args.count.map_or_else(indicatif::ProgressBar::hidden, |n| {
            crate::progress::bar(n, "records")
        }),
    };
    let version = client
        .version(ApiKey::Fetch, (4, 12))
        .map_err(|e| e.to_string())?;
    match &args.group {
        None => {
            let mut partitions = partitions_of(&mut client, &args.topics)?;
            if let Some(p) = args.partition {
                partitions.retain(|(_, q)| *q == p);
                if partitions.is_empty() {
                    return Err(format!("no partition {p} in {}", args.topics.join(", ")));
                }
            }
            let mut router = Router::new(client, &args.topics)?;
            let mut positions = starts(&mut router, args, &partitions)?;
            while !STOP.load(Ordering::Relaxed) && !printer.done() {
                let at_end = fetch_once(&mut router, version, &mut positions, &mut printer)?;
                if at_end && args.exit_at_end {
                    break;
                }
            }
            Ok(())
        }
        Some(group) => {
            // The router first: it learns every broker, so it can carry on without the
            // one given even if that one dies while the member joins.
            let mut router = Router::new(client, &args.topics)?;
            let member = Member::join(connect_to(&router.any_broker())?, group, &args.topics)?;
            consume_in_group(member, &mut router, version, args, &mut printer)
        }
    }
}

/// What `spate consume` adds to a group member: where to start each partition.
trait Positions {
    fn positions(
        &mut self,
        router: &mut Router,
        args: &ConsumeArgs,
        assigned: &BTreeSet<(String, i32)>,
    ) -> Result<BTreeMap<(String, i32), i64>, String>;
}

impl Positions for Member {
    /// Positions of `assigned`: committed offsets, else the chosen start.
    fn positions(
        &mut self,
        router: &mut Router,
        args: &ConsumeArgs,
        assigned: &BTreeSet<(String, i32)>,
    ) -> Result<BTreeMap<(String, i32), i64>, String> {
        let committed = self.committed(assigned)?;
        let missing: BTreeSet<(String, i32)> = assigned
            .iter()
            .filter(|tp| !committed.contains_key(*tp))
            .cloned()
            .collect();
        let mut positions = starts(router, args, &missing)?;
        positions.extend(committed);
        Ok(positions)
    }
}

/// Consumes as a member of a group until told to stop; then commits and leaves.
fn consume_in_group(
    (mut member, assigned): (Member, BTreeSet<(String, i32)>),
    router: &mut Router,
    version: i16,
    args: &ConsumeArgs,
    printer: &mut Printer,
) -> Result<(), String> {
    {
        let mut positions = member.positions(router, args, &assigned)?;
        let (mut last_commit, mut last_beat) = (Instant::now(), Instant::now());
        let outcome = loop {
            if STOP.load(Ordering::Relaxed) || printer.done() {
                break Ok(());
            }
            let at_end = if positions.is_empty() {
                std::thread::sleep(Duration::from_millis(FETCH_WAIT_MS as u64));
                true
            } else {
                match fetch_once(router, version, &mut positions, printer) {
                    Ok(at_end) => at_end,
                    Err(e) => break Err(e),
                }
            };
            if at_end && args.exit_at_end {
                break Ok(());
            }
            if last_commit.elapsed() >= COMMIT_INTERVAL {
                member.commit(&positions)?;
                last_commit = Instant::now();
            }
            if last_beat.elapsed() >= HEARTBEAT_INTERVAL {
                last_beat = Instant::now();
                match member.heartbeat()? {
                    0 => {}
                    code if must_rejoin(code) => {
                        // Committed first, where the coordinator still takes it, so the
                        // partitions' next owners start where this member stopped.
                        member.commit(&positions)?;
                        let assigned = member.rejoin()?;
                        positions = member.positions(router, args, &assigned)?;
                    }
                    code => {
                        break Err(failure(
                            &format!("lost the membership of group \"{}\"", member.group()),
                            code,
                        ))
                    }
                }
            }
        };
        let committed = member.commit_final(&positions);
        member.leave();
        outcome?;
        match committed? {
            0 => Ok(()),
            code => Err(failure("could not commit the final offsets", code)),
        }
    }
}
