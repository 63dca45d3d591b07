//! Helpers shared by the tests that run brokers' drivers on threads over loopback.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use spate_replication::driver::{DriverConfig, Timing};
use spate_replication::replica::{Membership, ReplicaId};

/// Timeouts short enough for a test to see several elections in seconds.
pub fn timing() -> Timing {
    Timing {
        election_timeout_ms: 300,
        fetch_timeout_ms: 600,
        fetch_wait_ms: 100,
        check_quorum_ms: 600,
        preferred_leader_check_ms: None,
        tick_ms: 10,
        replica_lag_ms: 500,
    }
}

/// A loopback address free at the time of the call.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Broker `id`'s driver settings among `addrs`, and the voter set of all of them.
pub fn driver_config(id: u32, addrs: &BTreeMap<u32, SocketAddr>) -> (DriverConfig, Membership) {
    let config = DriverConfig {
        broker: ReplicaId(id),
        listen: addrs[&id],
        peers: addrs
            .iter()
            .filter(|(p, _)| **p != id)
            .map(|(p, a)| (ReplicaId(*p), *a))
            .collect(),
        timing: timing(),
    };
    let membership =
        Membership::new(addrs.keys().map(|i| ReplicaId(*i)).collect(), vec![]).unwrap();
    (config, membership)
}

/// Polls `done` until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if std::env::var_os("SPATE_DRIVER_TRACE").is_some() {
            eprintln!("waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three brokers' data directories (kept alive by the returned guards) and loopback
/// replication addresses, by broker id 1..=3.
pub fn three_brokers() -> (
    Vec<tempfile::TempDir>,
    BTreeMap<u32, std::path::PathBuf>,
    BTreeMap<u32, SocketAddr>,
) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let roots = (1..=3)
        .map(|i| (i, dirs[i as usize - 1].path().to_path_buf()))
        .collect();
    let addrs = (1..=3).map(|i| (i, free_port())).collect();
    (dirs, roots, addrs)
}
