//! Stock Python clients (confluent-kafka, kafka-python) against `spate serve`, the
//! durability promise of acks=all under `kill -9`, a compacted topic cleaned while
//! it is read, and a compacted `__consumer_offsets` read back after a restart. The clients come from the virtualenv
//! the test command creates (`.venv`, or `SPATE_TEST_PYTHON`); without it this fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::{free_port, python, serve_command, spawn_serving, Guard};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/clients.py")
}

/// Starts `spate serve` on `data`, logging to `broker.log` beside it; if it fails to
/// start, the log is part of the failure.
fn start(data: &Path, port: u16) -> Guard {
    start_with(data, port, &[])
}

/// `start` with more flags.
fn start_with(data: &Path, port: u16, flags: &[&str]) -> Guard {
    let log_path = data
        .parent()
        .expect("data dir has a parent")
        .join("broker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let started = std::panic::catch_unwind(|| {
        spawn_serving(
            serve_command(data, port)
                // Compacted topics are cleaned within a test's patience.
                .args(
                    Some(["--log-cleaner-backoff-ms", "200"])
                        .filter(|_| !flags.contains(&"--log-cleaner-backoff-ms"))
                        .into_iter()
                        .flatten(),
                )
                .args(flags)
                .stderr(log)
                .stdout(Stdio::null()),
            port,
        )
    });
    started.unwrap_or_else(|panic| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        eprintln!("broker log:\n{log}");
        std::panic::resume_unwind(panic)
    })
}

/// Runs one command of `clients.py` against the broker whose data directory is `data`;
/// on failure, shows its output and the broker's log.
fn run_script(data: &Path, args: &[&str]) {
    let output = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    let log = data
        .parent()
        .expect("data dir has a parent")
        .join("broker.log");
    assert!(
        output.status.success(),
        "clients.py {args:?} failed:\n{}\n{}\nbroker log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn confluent_kafka_and_kafka_python_round_trip_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let broker = start(&data, port);
    run_script(&data, &["roundtrip", &port.to_string()]);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn topic_configs_partitions_and_log_append_time_through_admin_clients() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    run_script(&data, &["configs", &port.to_string()]);
    // Configs and partition counts survive a restart.
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
    let broker = start(&data, port);
    run_script(&data, &["configs-after-restart", &port.to_string()]);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn every_acks_all_acknowledgement_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let acked = dir.path().join("acked.txt");
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    let mut producer = Command::new(python())
        .arg(script())
        .args([
            "produce-acked",
            &port.to_string(),
            "crash",
            acked.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    broker.signal_and_wait(libc::SIGKILL);
    assert!(producer.wait().unwrap().success());
    let broker = start(&data, port);
    run_script(
        &data,
        &[
            "verify",
            &port.to_string(),
            "crash",
            acked.to_str().unwrap(),
        ],
    );
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn a_compacted_topic_shrinks_and_reads_back_each_keys_latest_value() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    run_script(&data, &["compaction", &port.to_string()]);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn consumer_offsets_is_compacted_and_a_restart_reads_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let flags = [
        "--offsets-partitions",
        "1",
        "--offsets-segment-bytes",
        "16384",
    ];
    let broker = start_with(&data, port, &flags);
    run_script(
        &data,
        &[
            "offsets-compaction",
            &port.to_string(),
            data.to_str().unwrap(),
        ],
    );
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
    // Every commit of the first segments is shadowed by a later one, so the cleaner left
    // segments that end in an empty filler batch: offsets that hold no record. The
    // restart keeps the cleaner idle, so the coordinator's replay and a reader meet them
    // as they are (replays that moved on by records re-read such a batch for ever; CI saw
    // it as a commit lookup timing out).
    let partition = data.join("__consumer_offsets-0");
    assert!(
        sealed_segment_ends_in_a_filler(&partition),
        "no sealed segment of {} ends in an empty batch",
        partition.display()
    );
    let idle = [&flags[..], &["--log-cleaner-backoff-ms", "86400000"]].concat();
    let broker = start_with(&data, port, &idle);
    run_script(&data, &["offsets-committed", &port.to_string()]);
    let consumed = support::output_within(
        Command::new(env!("CARGO_BIN_EXE_spate")).args([
            "consume",
            "__consumer_offsets",
            "--from-beginning",
            "-e",
            "--format",
            "{offset}",
            "-b",
            &format!("127.0.0.1:{port}"),
        ]),
        Duration::from_secs(60),
    );
    assert!(consumed.status.success(), "{consumed:?}");
    let offsets = String::from_utf8(consumed.stdout).unwrap();
    let last: i64 = offsets.lines().last().unwrap_or("").parse().unwrap();
    assert!(last >= 1_499, "spate consume -e ended at offset {last}");
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

/// Whether a sealed segment of the partition in `dir` ends with a batch of no records.
fn sealed_segment_ends_in_a_filler(dir: &Path) -> bool {
    use spate_engine::batch::BatchHeader;
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.pop(); // the active segment
    logs.iter().any(|log| {
        let bytes = std::fs::read(log).unwrap();
        let mut last = None;
        let mut at = 0;
        while let Some(Ok(header)) = bytes.get(at..).map(BatchHeader::parse) {
            last = Some(header);
            at += header.size;
        }
        last.is_some_and(|h| h.record_count == 0)
    })
}
