//! Helpers shared by the tests that run the `spate` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Output};

/// A child process that is killed when dropped, so that a failing test never leaves a
/// broker running (which would also hold the test's output pipes open).
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// Sends `signal` and waits for the process to exit, for at most `STOP_DEADLINE`: a
    /// broker that does not stop is a bug to diagnose, not a test to wait on forever.
    pub fn signal_and_wait(mut self, signal: i32) -> Output {
        let child = self.0.take().expect("running");
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_within(child, STOP_DEADLINE, &format!("after signal {signal}"))
    }
}

/// Runs `command` to its end with its output captured, for at most `limit`.
pub fn output_within(command: &mut std::process::Command, limit: std::time::Duration) -> Output {
    use std::process::Stdio;
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_within(child, limit, "after it started")
}

/// Waits for `child` to exit. One still running after `limit` fails the test with its
/// threads' stacks (when gdb can attach) and its stderr, and is killed.
fn wait_within(mut child: Child, limit: std::time::Duration, since: &str) -> Output {
    use std::time::Instant;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let stacks = thread_stacks(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&joined(stderr)).into_owned();
            panic!(
                "process {} still running {limit:?} {since}\n\
                 --- its threads:\n{stacks}\n--- its stderr:\n{stderr}",
                child.id()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: joined(stdout),
        stderr: joined(stderr),
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How long a signalled broker may take to exit. Brokers in these tests stop in well
/// under a second; the margin is for a loaded machine.
pub const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads `pipe` to its end on a thread of its own, so a child never blocks on a full pipe.
fn drain<R: std::io::Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn joined(pipe: Option<std::thread::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    pipe.map(|h| h.join().unwrap_or_default())
        .unwrap_or_default()
}

/// Every thread's stack of process `pid`, from gdb; a line saying why not otherwise.
fn thread_stacks(pid: u32) -> String {
    match std::process::Command::new("gdb")
        .args([
            "-batch",
            "-p",
            &pid.to_string(),
            "-ex",
            "thread apply all bt",
        ])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(no stacks: cannot run gdb: {e})"),
    }
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns `command` (a `spate serve`) and waits until it accepts connections on `port`.
pub fn spawn_serving(command: &mut std::process::Command, port: u16) -> Guard {
    use std::time::{Duration, Instant};
    let mut guard = Guard(Some(command.spawn().expect("spawn spate serve")));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            guard.child().try_wait().unwrap().is_none(),
            "spate serve exited early"
        );
        assert!(
            Instant::now() < deadline,
            "spate serve did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// `spate serve` on `port` with two shards and `data` as its data directory.
pub fn serve_command(data: &std::path::Path, port: u16) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_spate"));
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(data);
    command
}

/// The Python of the test command's virtualenv (`.venv`), or `SPATE_TEST_PYTHON`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("SPATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run the test command (scripts/test.sh), which creates it",
        path.display()
    );
    path
}
