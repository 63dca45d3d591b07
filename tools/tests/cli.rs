//! The client subcommands end to end against `spate serve`: `spate topic` (create, list,
//! describe, alter-config, add-partitions, delete, and their refusals), `spate cluster
//! info`, and `spate group`: describe with lag, every reset target (dry run and
//! executed), refusals on a live group (kcat holds a membership), an unknown topic and an
//! unreachable broker, and delete.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{free_port, serve_command, spawn_serving, Guard};

fn start(data: &Path, port: u16) -> Guard {
    spawn_serving(
        serve_command(data, port)
            .args([
                "--offsets-partitions",
                "4",
                "--group-initial-rebalance-delay-ms",
                "0",
            ])
            .stderr(Stdio::null()),
        port,
    )
}

fn spate(port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .args(["-b", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(port: u16, args: &[&str]) -> String {
    let out = spate(port, args);
    assert!(
        out.status.success(),
        "spate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail and returns its one-line error.
fn fails(port: u16, args: &[&str]) -> String {
    let out = spate(port, args);
    assert!(!out.status.success(), "spate {args:?} succeeded");
    assert!(out.stdout.is_empty() || args.contains(&"delete"));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn json(port: u16, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    serde_json::from_str(&ok(port, &args)).unwrap()
}

/// Resets group `g` on topic `cli` to `target`, committing.
fn reset(port: u16, target: &[&str]) {
    let mut args = vec!["group", "reset-offsets", "g", "--topic", "cli", "--execute"];
    args.extend(target);
    ok(port, &args);
}

/// (committed, log end, lag) of partition 0 of `cli` for `group`.
fn offsets(port: u16, group: &str) -> (Value, i64, Value) {
    let described = json(port, &["group", "describe", group]);
    let row = &described["offsets"][0];
    assert_eq!(row["topic"], "cli");
    (
        row["committed"].clone(),
        row["log_end"].as_i64().unwrap(),
        row["lag"].clone(),
    )
}

fn produce(port: u16, count: usize) {
    let mut kcat = Command::new("kcat")
        .args([
            "-b",
            &format!("127.0.0.1:{port}"),
            "-P",
            "-t",
            "cli",
            "-p",
            "0",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat is installed");
    let lines: String = (0..count).map(|i| format!("record-{i}\n")).collect();
    kcat.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(kcat.wait().unwrap().success());
}

/// Waits until `group`'s state is `state`.
fn wait_for_state(port: u16, group: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = json(port, &["group", "describe", group]);
        if described["state"] == state {
            return described;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} never became {state}: {described}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn groups_are_described_reset_and_deleted_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = start(&dir.path().join("data"), port);

    let info = json(port, &["cluster", "info"]);
    assert!(!info["cluster_id"].as_str().unwrap().is_empty());
    assert_eq!(info["brokers"][0]["port"], i64::from(port));
    assert!(info["apis"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["api"] == "JoinGroup"));

    produce(port, 30);
    // A dry run commits nothing.
    let plan = ok(
        port,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "cli",
            "--to-offset",
            "3",
        ],
    );
    assert!(plan.contains("dry run"), "{plan}");
    assert_eq!(json(port, &["group", "describe", "g"])["state"], "Dead");

    reset(port, &["--to-offset", "3"]);
    assert_eq!(offsets(port, "g"), (Value::from(3), 30, Value::from(27)));
    reset(port, &["--shift-by", "-2"]);
    assert_eq!(offsets(port, "g").0, 1);
    reset(port, &["--to-offset", "99"]);
    assert_eq!(
        offsets(port, "g"),
        (Value::from(30), 30, Value::from(0)),
        "clamped to the log end"
    );
    reset(port, &["--to-earliest"]);
    assert_eq!(offsets(port, "g").0, 0);
    reset(port, &["--to-datetime", "2100-01-01T00:00:00Z"]);
    assert_eq!(
        offsets(port, "g").0,
        30,
        "no record after the time: the log end"
    );
    reset(port, &["--to-datetime", "2000-01-01T00:00:00+01:00"]);
    assert_eq!(offsets(port, "g").0, 0);
    let table = ok(port, &["group", "describe", "g"]);
    assert!(
        table.contains("LOG-END-OFFSET") && table.contains("cli"),
        "{table}"
    );

    // kcat's balanced consumer is a live member: resets and deletes are refused.
    let kcat = Kill(
        Command::new("kcat")
            .args([
                "-b",
                &format!("127.0.0.1:{port}"),
                "-G",
                "live",
                "cli",
                "-q",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kcat is installed"),
    );
    let live = wait_for_state(port, "live", "Stable");
    assert_eq!(live["members"].as_array().unwrap().len(), 1);
    assert_eq!(live["members"][0]["assignment"][0]["topic"], "cli");
    let error = fails(
        port,
        &[
            "group",
            "reset-offsets",
            "live",
            "--topic",
            "cli",
            "--to-earliest",
            "--execute",
        ],
    );
    assert!(error.contains("active member"), "{error}");
    let error = fails(port, &["group", "delete", "live"]);
    assert!(error.contains("NON_EMPTY_GROUP"), "{error}");
    // SIGTERM: kcat leaves the group on its way out.
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(kcat.0.id() as i32, libc::SIGTERM) };
    wait_for_state(port, "live", "Empty");
    drop(kcat);
    ok(port, &["group", "delete", "live"]);
    let listed = json(port, &["group", "list"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["g"]);

    // Clear errors, no stack traces.
    let error = fails(
        port,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "nope",
            "--to-earliest",
        ],
    );
    assert!(error.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{error}");
    let error = fails(
        port,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "cli",
            "--to-datetime",
            "soon",
        ],
    );
    assert!(error.contains("RFC 3339"), "{error}");
    let unreachable = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["group", "list", "-b", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach a broker"));

    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn topics_are_created_described_altered_grown_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = start(&dir.path().join("data"), port);
    let created = ok(
        port,
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "3",
            "-c",
            "retention.ms=60000",
        ],
    );
    assert_eq!(created.trim(), "created topic orders");
    let error = fails(port, &["topic", "create", "orders"]);
    assert!(error.contains("TOPIC_ALREADY_EXISTS"), "{error}");
    assert_eq!(error.lines().count(), 1, "one line: {error}");
    let error = fails(port, &["topic", "create", "bad", "-c", "retention.ms"]);
    assert!(error.contains("expected key=value"), "{error}");

    let listed = json(port, &["topic", "list"]);
    assert_eq!(
        listed,
        serde_json::json!([{"topic": "orders", "partitions": 3, "internal": false}])
    );

    produce(port, 5);
    let described = json(port, &["topic", "describe", "cli"]);
    assert_eq!(described["partitions"][0]["log_end"], 5);
    assert_eq!(described["partitions"][0]["leader"], 1);
    let described = json(port, &["topic", "describe", "orders"]);
    assert_eq!(described["partitions"].as_array().unwrap().len(), 3);
    let config = |d: &Value, key: &str| {
        d["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == key)
            .map(|c| {
                (
                    c["value"].as_str().unwrap().to_string(),
                    c["source"].as_str().unwrap().to_string(),
                )
            })
            .unwrap()
    };
    assert_eq!(
        config(&described, "retention.ms"),
        ("60000".into(), "topic".into())
    );
    assert_eq!(config(&described, "segment.bytes").1, "default");

    ok(
        port,
        &[
            "topic",
            "alter-config",
            "orders",
            "--set",
            "segment.bytes=1048576",
            "--delete",
            "retention.ms",
        ],
    );
    let described = json(port, &["topic", "describe", "orders"]);
    assert_eq!(
        config(&described, "segment.bytes"),
        ("1048576".into(), "topic".into())
    );
    assert_eq!(config(&described, "retention.ms").1, "default");
    let error = fails(
        port,
        &[
            "topic",
            "alter-config",
            "orders",
            "--set",
            "retention.ms=soon",
        ],
    );
    assert!(error.contains("INVALID_CONFIG"), "{error}");

    ok(port, &["topic", "add-partitions", "orders", "--total", "5"]);
    assert_eq!(
        json(port, &["topic", "describe", "orders"])["partitions"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let error = fails(port, &["topic", "add-partitions", "orders", "--total", "2"]);
    assert!(error.contains("INVALID_PARTITIONS"), "{error}");

    let out = spate(port, &["topic", "delete", "orders", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted topic orders"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("UNKNOWN_TOPIC_OR_PARTITION") && err.contains("1 of 2 topics failed"),
        "{err}"
    );
    let error = fails(port, &["topic", "describe", "orders"]);
    assert!(error.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{error}");
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn segments_are_dumped_and_verified_offline_and_damage_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    produce(port, 10);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
    let offline = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(args)
            .output()
            .unwrap()
    };
    let log = data.join("cli-0/00000000000000000000.log");
    let log = log.to_str().unwrap();

    let out = offline(&["log", "dump", log, "--records", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped: Value = serde_json::from_slice(&out.stdout).unwrap();
    let records: Vec<&str> = dumped["batches"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|b| assert_eq!(b["crc_valid"], true))
        .flat_map(|b| b["records_detail"].as_array().unwrap())
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("record-{i}")).collect();
    assert_eq!(records, expected);
    assert_eq!(
        dumped["padding_bytes"], 0,
        "a clean shutdown trims the segment"
    );
    let text = offline(&["log", "dump", log]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("baseOffset: 0"));
    let index = offline(&[
        "log",
        "dump",
        &log.replace(".log", ".index"),
        "--format",
        "json",
    ]);
    let index: Value = serde_json::from_slice(&index.stdout).unwrap();
    assert_eq!(
        index["entries"][0],
        serde_json::json!({"offset": 0, "position": 0})
    );
    let verified = offline(&["log", "verify", data.to_str().unwrap()]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // Flip one byte inside the last batch's CRC-covered bytes.
    let mut bytes = std::fs::read(log).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(log, &bytes).unwrap();
    let verified = offline(&["log", "verify", data.to_str().unwrap()]);
    assert!(!verified.status.success());
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(report.contains("fails its CRC check"), "{report}");
    let dumped = offline(&["log", "dump", log]);
    assert!(!dumped.status.success());
    assert!(!String::from_utf8_lossy(&dumped.stderr).contains("panicked"));
    // A torn tail: the walk stops with a reason instead of reading past the end.
    std::fs::write(log, &bytes[..bytes.len() - 10]).unwrap();
    let dumped = offline(&["log", "dump", log]);
    let error = String::from_utf8_lossy(&dumped.stderr);
    assert!(
        !dumped.status.success() && error.contains("remain"),
        "{error}"
    );
}

/// Runs `spate` with `input` on stdin; returns stdout, asserting success.
fn ok_with_input(port: u16, args: &[&str], input: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .args(["-b", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "spate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// kcat's view of a topic: `partition|key|value|headers` per record.
fn kcat_read(port: u16, topic: &str) -> Vec<String> {
    let out = Command::new("kcat")
        .args([
            "-b",
            &format!("127.0.0.1:{port}"),
            "-C",
            "-t",
            topic,
            "-e",
            "-q",
        ])
        .args(["-f", "%p|%k|%s|%h\n"])
        .output()
        .expect("kcat is installed");
    assert!(out.status.success());
    sorted_lines(&String::from_utf8(out.stdout).unwrap())
}

const SAME_AS_KCAT: &str = "{partition}|{key}|{value}|{headers}";

#[test]
fn produce_and_consume_agree_with_kcat_and_groups_resume() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = start(&dir.path().join("data"), port);
    ok(port, &["topic", "create", "mine", "--partitions", "3"]);
    ok(port, &["topic", "create", "theirs", "--partitions", "3"]);

    // What spate produces, kcat reads back identically.
    let lines: String = (0..60)
        .map(|i| format!("key-{}:value-{i}\n", i % 7))
        .collect();
    ok_with_input(
        port,
        &[
            "produce",
            "mine",
            "--key-separator",
            ":",
            "--header",
            "source=spate",
            "--compression",
            "lz4",
        ],
        &lines,
    );
    let seen = kcat_read(port, "mine");
    assert_eq!(seen.len(), 60);
    assert!(
        seen.iter().all(|l| l.ends_with("|source=spate")),
        "{seen:?}"
    );
    let consumed = ok(
        port,
        &[
            "consume",
            "mine",
            "--from-beginning",
            "-e",
            "--format",
            SAME_AS_KCAT,
        ],
    );
    assert_eq!(sorted_lines(&consumed), seen);
    // A key always lands in one partition.
    let mut partition_of = std::collections::HashMap::new();
    for line in &seen {
        let mut fields = line.split('|');
        let (p, k) = (fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(
            *partition_of.entry(k.to_string()).or_insert(p.to_string()),
            p
        );
    }

    // What kcat produces, spate consume prints identically.
    let mut kcat = Command::new("kcat")
        .args([
            "-b",
            &format!("127.0.0.1:{port}"),
            "-P",
            "-t",
            "theirs",
            "-K",
            ":",
            "-H",
            "h1=v1",
            "-H",
            "h2=v2",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = (0..40).map(|i| format!("k{i}:v{i}\n")).collect();
    kcat.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(kcat.wait().unwrap().success());
    let seen = kcat_read(port, "theirs");
    assert_eq!(seen.len(), 40);
    let consumed = ok(
        port,
        &[
            "consume",
            "theirs",
            "--from-beginning",
            "-e",
            "--format",
            SAME_AS_KCAT,
        ],
    );
    assert_eq!(sorted_lines(&consumed), seen);
    let json_lines = ok(
        port,
        &[
            "consume",
            "theirs",
            "--offset",
            "earliest",
            "--partition",
            "0",
            "-n",
            "2",
            "--format",
            "json",
        ],
    );
    let first: Value = serde_json::from_str(json_lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["partition"], 0);
    assert_eq!(
        first["headers"],
        serde_json::json!([{"h1": "v1"}, {"h2": "v2"}])
    );
    assert_eq!(json_lines.lines().count(), 2);

    // As a group member: everything once, committed, then nothing new.
    let all = ok(
        port,
        &[
            "consume",
            "mine",
            "--group",
            "readers",
            "--from-beginning",
            "-e",
        ],
    );
    assert_eq!(all.lines().count(), 60);
    let described = json(port, &["group", "describe", "readers"]);
    assert!(
        described["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["lag"] == 0),
        "{described}"
    );
    assert_eq!(
        ok(
            port,
            &[
                "consume",
                "mine",
                "--group",
                "readers",
                "--from-beginning",
                "-e"
            ]
        ),
        ""
    );

    // Following until Ctrl-C: it commits what it printed and leaves the group.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "consume",
            "theirs",
            "--group",
            "followers",
            "--from-beginning",
        ])
        .args(["-b", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read until all 40 records are out, then interrupt it.
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(follower.stdout.take().unwrap()));
    for _ in 0..40 {
        lines
            .next()
            .expect("the follower printed 40 records")
            .unwrap();
    }
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    assert_eq!(lines.count(), 0, "nothing more was printed");
    assert!(follower.wait().unwrap().success());
    let described = json(port, &["group", "describe", "followers"]);
    assert_eq!(described["state"], "Empty", "it left the group");
    assert!(
        described["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["lag"] == 0),
        "{described}"
    );

    // Machine-readable summary, and the plain value format.
    ok(port, &["topic", "create", "plain"]);
    let summary = ok_with_input(port, &["produce", "plain", "--format", "json"], "a\nb\n");
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        (summary["records"].as_u64(), summary["bytes"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        ok(
            port,
            &[
                "consume",
                "plain",
                "--from-beginning",
                "-e",
                "--format",
                "text"
            ]
        ),
        "a\nb\n"
    );

    let error = fails(port, &["consume", "nope", "-e"]);
    assert!(
        error.contains("does not exist (UNKNOWN_TOPIC_OR_PARTITION)"),
        "{error}"
    );
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}
