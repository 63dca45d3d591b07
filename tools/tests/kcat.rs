//! A stock client against `spate serve`: kcat (librdkafka) lists metadata, produces keyed
//! records with every compression codec, and reads them back identically, also after a
//! restart, when the records come from segment files by sendfile (zero-copy).
//! kcat must be installed (the test command installs it); without it this test fails.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

mod support;
use support::{free_port, serve_command, spawn_serving, Guard};

fn start(data: &Path, port: u16) -> Guard {
    spawn_serving(serve_command(data, port).stderr(Stdio::piped()), port)
}

fn stop(child: Guard) -> String {
    let output = child.signal_and_wait(libc::SIGTERM);
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{log}");
    log
}

fn kcat(port: u16, args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new("kcat")
        .arg("-b")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install kcat)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.unwrap_or("").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

fn lines(codec: &str) -> String {
    (0..200)
        .map(|i| format!("key-{i}:{codec} value {i} {}\n", "x".repeat(i % 50)))
        .collect()
}

fn consume(port: u16, topic: &str) -> String {
    kcat(
        port,
        &[
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k:%s\n",
        ],
        None,
    )
}

#[test]
fn kcat_produces_and_consumes_with_every_codec_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let broker = start(&data, port);
    let metadata = kcat(port, &["-L"], None);
    assert!(
        metadata.contains(&format!("broker 1 at 127.0.0.1:{port}")),
        "{metadata}"
    );
    for codec in CODECS {
        let topic = format!("codec-{codec}");
        kcat(
            port,
            &["-P", "-t", &topic, "-K:", "-z", codec, "-X", "acks=all"],
            Some(&lines(codec)),
        );
        assert_eq!(consume(port, &topic), lines(codec), "{codec}");
    }
    let listing = kcat(port, &["-L"], None);
    for codec in CODECS {
        assert!(
            listing.contains(&format!("topic \"codec-{codec}\" with 1 partitions")),
            "{listing}"
        );
    }
    stop(broker);

    let broker = start(&data, port);
    for codec in CODECS {
        assert_eq!(
            consume(port, &format!("codec-{codec}")),
            lines(codec),
            "{codec} after restart"
        );
    }
    let log = stop(broker);
    let zero_copy: u64 = log
        .lines()
        .filter(|l| l.contains("fetch records sent"))
        .filter_map(|l| {
            l.split("zero_copy_bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        zero_copy > 0,
        "after a restart records are sent from files zero-copy:\n{log}"
    );
}
