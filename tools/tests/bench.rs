//! `spate bench` end to end against `spate serve`: an end-to-end run whose counts must
//! add up (sent = acknowledged + failed, consumed = acknowledged with acks=all), with
//! its JSON, interval logs and charts; a catch-up consume that reads back exactly what
//! was produced; Ctrl-C in the middle of a run still writing partial results; overlaid
//! plots; consumers in a group and idempotent producers; and clear refusals of bad
//! input and unreachable brokers.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{free_port, serve_command, spawn_serving, Guard};

fn start(data: &Path, port: u16) -> Guard {
    spawn_serving(serve_command(data, port).stderr(Stdio::null()), port)
}

fn bench(port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spate"))
        .arg("bench")
        .args(args)
        .args(["-b", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap()
}

fn ok(port: u16, args: &[&str]) -> String {
    let out = bench(port, args);
    assert!(
        out.status.success(),
        "spate bench {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn results(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

fn svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains("<svg") && text.contains("</svg>"),
        "{}",
        path.display()
    );
    assert!(
        text.contains("<polyline") || text.contains("<path"),
        "{} draws no line",
        path.display()
    );
}

#[test]
fn end_to_end_counts_add_up_and_every_output_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = start(&dir.path().join("data"), port);
    let out = dir.path().join("e2e");
    let common = [
        "--topic-prefix",
        "e2e",
        "--partitions",
        "3",
        "--record-size",
        "64..512",
        "--keys",
        "zipf:100:1.1",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--cores",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ];
    let mut args = vec![
        "e2e",
        "--rate",
        "3000",
        "--compression",
        "lz4",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(common);
    let summary = ok(port, &args);
    assert!(summary.contains("end-to-end latency"), "{summary}");
    let r = results(&out);
    let (sent, acked, failed) = (
        u(&r, "/produce/sent"),
        u(&r, "/produce/acknowledged"),
        u(&r, "/produce/failed"),
    );
    assert_eq!(sent, acked + failed);
    assert_eq!(failed, 0, "{r}");
    // 3000 records/s for 2.5 s, give or take the last few due at the end.
    assert!((7_000..=7_600).contains(&sent), "{sent}");
    assert_eq!(
        u(&r, "/consume/consumed"),
        acked,
        "acks=all: every acknowledged record is read"
    );
    assert_eq!(u(&r, "/consume/unstamped"), 0);
    // Latency is recorded for the measured records only (after the warm-up).
    let e2e = u(&r, "/consume/e2e_latency/count");
    assert!(e2e > 5_000 && e2e < acked, "{e2e} of {acked}");
    assert!(u(&r, "/produce/ack_latency/p99_us") >= u(&r, "/produce/ack_latency/p50_us"));
    assert_eq!(r["workload"]["compression"], "lz4");
    assert_eq!(r["workload"]["keys"], "zipf:100:1.1");
    assert!(r["broker"]["api_versions"].as_array().unwrap().len() > 10);
    assert!(r["environment"]["cores"].as_u64().unwrap() >= 1);
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 2, "{timeline:?}");
    for name in ["ack.hlog", "e2e.hlog"] {
        let log = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(
            log.contains("#[StartTime:")
                && log.lines().filter(|l| l.starts_with("Tag=")).count() >= 2,
            "{log}"
        );
    }
    for chart in [
        "latency-spectrum.svg",
        "latency-over-time.svg",
        "throughput-over-time.svg",
    ] {
        svg(&out.join(chart));
    }

    // A catch-up read of the same topics finds exactly what was acknowledged.
    let back = dir.path().join("back");
    let mut args = vec![
        "consume",
        "--from",
        "earliest",
        "--out",
        back.to_str().unwrap(),
    ];
    args.extend(common);
    ok(port, &args);
    let c = results(&back);
    assert_eq!(u(&c, "/consume/consumed"), acked);
    assert!(c["produce"].is_null());

    // Overlaid charts of both runs.
    let plots = dir.path().join("plots");
    let e2e_json = out.join("results.json");
    let back_json = back.join("results.json");
    let status = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["bench", "plot"])
        .args([&e2e_json, &back_json])
        .arg("--out")
        .arg(&plots)
        .status()
        .unwrap();
    assert!(status.success());
    svg(&plots.join("throughput-over-time.svg"));
}

#[test]
fn group_consumers_and_idempotent_producers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = spawn_serving(
        serve_command(&dir.path().join("data"), port)
            .args(["--group-initial-rebalance-delay-ms", "0"])
            .stderr(Stdio::null()),
        port,
    );
    let out = dir.path().join("group");
    ok(
        port,
        &[
            "e2e",
            "--rate",
            "2000",
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--partitions",
            "4",
            "--consumers",
            "3",
            "--group",
            "true",
            "--idempotent",
            "true",
            "--producers",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let r = results(&out);
    let acked = u(&r, "/produce/acknowledged");
    assert_eq!(u(&r, "/produce/failed"), 0, "{r}");
    assert_eq!(u(&r, "/produce/sent"), acked);
    assert_eq!(
        u(&r, "/consume/consumed"),
        acked,
        "every partition read once: {r}"
    );
    assert!(r["consumer_group"]
        .as_str()
        .unwrap()
        .starts_with("spate-bench-"));
}

#[test]
fn ctrl_c_stops_the_run_and_still_writes_partial_results() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = start(&dir.path().join("data"), port);
    let out = dir.path().join("cut");
    let child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "bench",
            "produce",
            "--rate",
            "2000",
            "--duration",
            "60",
            "--warmup",
            "0",
            "--partitions",
            "2",
            "--acks",
            "1",
        ])
        .args(["-b", &format!("127.0.0.1:{port}")])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Guard(Some(child));
    // Wait until records are flowing, then interrupt.
    let started = Instant::now();
    while !std::fs::read_dir(dir.path().join("data"))
        .map(|d| d.count() > 1)
        .unwrap_or(false)
    {
        assert!(started.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let interrupted_at = Instant::now();
    let output = guard.signal_and_wait(libc::SIGINT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(interrupted_at.elapsed() < Duration::from_secs(10));
    let r = results(&out);
    assert_eq!(r["interrupted"], true);
    let (sent, acked, failed) = (
        u(&r, "/produce/sent"),
        u(&r, "/produce/acknowledged"),
        u(&r, "/produce/failed"),
    );
    assert!(sent > 1_000, "{sent}");
    assert_eq!(sent, acked + failed);
    assert!(String::from_utf8_lossy(&output.stdout).contains("INTERRUPTED"));
}

#[test]
fn bad_input_and_unreachable_brokers_get_one_clear_error() {
    let port = free_port();
    let refused = |args: &[&str], expected: &str| {
        let out = bench(port, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    refused(&["produce", "--acks", "2"], "--acks");
    refused(&["produce", "--record-size", "4"], "record size");
    refused(&["e2e", "--keys", "zipf:0:1"], "key distribution");
    refused(
        &["produce", "--idempotent", "true", "--acks", "1"],
        "--idempotent",
    );
    refused(&["produce", "--duration", "1"], "cannot reach a broker");
    refused(&["compare", "--duration", "1"], "two --brokers");
}
