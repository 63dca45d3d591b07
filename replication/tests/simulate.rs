//! The replication simulator over many seeds: 3- and 5-replica groups (plus a spare
//! broker) under message loss, duplication, reordering, one-way and symmetric
//! partitions, crashes that lose unsynced writes (or keep a torn part of them), clock
//! jumps, stalls, replica-set changes and leadership transfers. Any broken invariant fails with its seed and a command that
//! reproduces it. `SPATE_SIM_SEED=N` runs one seed; `SPATE_SIM_SEEDS=N` runs N seeds
//! per group size (default 2,000: 4,000 runs, about 30 s; the test profile builds this
//! crate optimized, with its assertions on).

use spate_replication::sim::{Sim, SimConfig};

/// Seeds that once failed, kept as regression tests: (seed, replicas).
/// - 58/3: a duplicated divergence answer, arriving after the follower had truncated
///   and caught up, cut it below its commit index (fixed: answers echo the fetch's
///   number and only the latest fetch's answer is taken).
/// - 14: with two voters, one with the higher epoch and the other with the longer log
///   refused each other's pre-votes forever (fixed: a pre-vote answer carries the
///   answerer's epoch, and a pre-candidate behind it adopts it, as KIP-996 says).
/// - 167: a follower whose append became durable while it was not following waited
///   for that append forever (fixed: "waiting for the disk" is now derived from the
///   durable end, not a flag cleared on one path).
///
/// A seed replays the same faults only while the simulator draws its randomness the
/// same way; the later ones are from the simulator with replica-set changes.
const REGRESSIONS: &[(u64, u32)] = &[(58, 3), (14, 3), (14, 5), (167, 3), (167, 5)];

fn run(seed: u64, replicas: u32) -> spate_replication::sim::Report {
    let outcome = std::panic::catch_unwind(|| Sim::new(SimConfig::standard(seed, replicas)).run());
    match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(violation)) => panic!("{violation}"),
        // An assertion inside a replica: still name the seed.
        Err(_) => panic!(
            "seed {seed}, {replicas} replicas: a replica's assertion failed (above)\n\
             reproduce: SPATE_SIM_SEED={seed} cargo test -p spate-replication --test simulate"
        ),
    }
}

#[test]
fn every_invariant_holds_under_faults() {
    if let Ok(seed) = std::env::var("SPATE_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SPATE_SIM_SEED is a number");
        for replicas in [3, 5] {
            let report = run(seed, replicas);
            eprintln!("seed {seed}, {replicas} replicas: {report:?}");
        }
        return;
    }
    let seeds: usize = std::env::var("SPATE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut totals = spate_replication::sim::Report::default();
    for &(seed, replicas) in REGRESSIONS {
        run(seed, replicas);
    }
    for replicas in [3, 5] {
        for seed in 0..seeds as u64 {
            totals.add(&run(seed, replicas));
        }
    }
    eprintln!("{seeds} seeds × 3 and 5 replicas: {totals:?}");
    // The runs must have exercised what they claim to.
    assert!(
        totals.crashes > seeds / 2 && totals.partitions > seeds && totals.elections > seeds * 2
    );
    assert!(totals.torn_tails > seeds / 8 && totals.stalls > seeds);
    assert!(totals.clock_jumps > seeds / 2 && totals.transfers > seeds / 2);
    assert!(totals.changes > seeds * 4);
    assert!(totals.acknowledged > 100 * seeds);
}
