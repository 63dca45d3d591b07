//! Repeated start and stop of a broker in one process.
//!
//! A regression guard for heap corruption at shutdown: glommio's `MeshBuilder` counted
//! its cross-thread clones with an `Rc`, and about one stop in fifty corrupted the heap
//! (the process aborted in glibc, often later, in an unrelated test). Each cycle here runs
//! long enough for every shard's periodic tasks to have run, serves one request on a
//! connection, and stops with the connection still open.

mod common;

use std::time::Duration;

use common::TestBroker;
use kafka_protocol::messages::ApiVersionsRequest;

/// Cycles per run: enough to have hit the old race with high probability (about 1 in
/// 50 stops) while keeping the test to a few seconds.
const CYCLES: usize = 25;

#[test]
fn brokers_start_and_stop_cleanly_many_times() {
    for cycle in 0..CYCLES {
        let dir = tempfile::tempdir().unwrap();
        let broker = TestBroker::start(dir.path(), 2);
        let mut client = broker.client();
        let versions = client.send(3, &ApiVersionsRequest::default());
        assert_eq!(versions.error_code, 0, "cycle {cycle}");
        std::thread::sleep(Duration::from_millis(120));
        broker.stop();
        drop(client);
    }
}
