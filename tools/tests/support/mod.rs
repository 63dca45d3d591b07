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

    /// Sends `signal` and waits for the process to exit.
    pub fn signal_and_wait(mut self, signal: i32) -> Output {
        let child = self.0.take().expect("running");
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait_with_output().expect("wait")
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
