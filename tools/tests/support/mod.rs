//! Helpers shared by the tests that run the `spate` binary.
#![allow(dead_code)]

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
