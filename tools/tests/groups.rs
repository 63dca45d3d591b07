//! Consumer groups with stock clients (confluent-kafka, kafka-python) against
//! `spate serve`: members share a topic with no partition owned twice and every record
//! consumed once, a killed member's partitions move after its session timeout, mixed
//! clients interoperate, a static member restarts without a rebalance, and committed
//! offsets survive a broker restart. The clients
//! come from the test command's virtualenv (`.venv`, or `SPATE_TEST_PYTHON`).

use std::path::Path;
use std::process::{Command, Stdio};

mod support;
use support::{free_port, python, serve_command, spawn_serving, Guard};

/// A broker with a small offsets topic and no initial rebalance delay, logging next
/// to `data`.
fn start(data: &Path, port: u16) -> Guard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    spawn_serving(
        serve_command(data, port)
            .args(["--offsets-partitions", "4"])
            .args(["--group-initial-rebalance-delay-ms", "0"])
            .stderr(log)
            .stdout(Stdio::null()),
        port,
    )
}

/// Runs one command of `groups.py`; on failure, shows its output and the broker's log.
fn run(command: &str, port: u16, data: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/groups.py");
    let output = Command::new(python())
        .arg(script)
        .args([command, &port.to_string()])
        .output()
        .unwrap();
    if !output.status.success() {
        let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
        panic!(
            "groups.py {command} failed:\n{}\n{}\nbroker log:\n{log}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn members_split_topics_and_clients_interoperate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    run("split", port, &data);
    run("interop", port, &data);
    run("static", port, &data);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn a_killed_members_partitions_move_after_its_session_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    run("kill", port, &data);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}

#[test]
fn a_new_member_resumes_at_the_committed_offsets_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    run("commit", port, &data);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
    let broker = start(&data, port);
    run("resume", port, &data);
    assert!(broker.signal_and_wait(libc::SIGTERM).status.success());
}
