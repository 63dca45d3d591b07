//! What load tasks count, and how their counts add up.
//!
//! Each task owns a tally and returns it; tallies of all tasks and threads merge into
//! the run's. `Live` holds the few running totals other threads read while the run goes
//! on (the progress line, end-to-end consumers waiting for the last acknowledgement):
//! plain atomics, outside the load path's hot loops except for one add per batch.
//!
//! Invariant at the end of a run: `sent = acknowledged + failed` for every producer,
//! because a request still unanswered after the drain timeout is counted as failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::latency::Recorder;
use crate::limits::TIMELINE_SECONDS_MAX;

/// Running totals visible across threads.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acknowledged: AtomicU64,
    pub failed: AtomicU64,
    pub consumed: AtomicU64,
    pub consumed_bytes: AtomicU64,
    pub producers_running: AtomicUsize,
    /// Set by Ctrl-C: stop making load, drain, report.
    pub stop: Arc<AtomicBool>,
}

impl Live {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Fresh counters sharing `stop` (one Ctrl-C flag for all runs of a command).
    pub fn with_stop(stop: Arc<AtomicBool>) -> Arc<Live> {
        Arc::new(Live {
            stop,
            ..Live::default()
        })
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Records, bytes and errors in one second of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub records: u64,
    pub bytes: u64,
    pub errors: u64,
}

/// Counts by second since the end of the warm-up.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub seconds: Vec<Counts>,
}

impl Timeline {
    /// Adds to the second holding `at_ns`; events before `from_ns` are warm-up.
    pub fn add(&mut self, from_ns: u64, at_ns: u64, records: u64, bytes: u64, errors: u64) {
        if at_ns < from_ns {
            return;
        }
        let second = ((at_ns - from_ns) / 1_000_000_000) as usize;
        if second >= TIMELINE_SECONDS_MAX {
            return;
        }
        if self.seconds.len() <= second {
            self.seconds.resize(second + 1, Counts::default());
        }
        let c = &mut self.seconds[second];
        c.records += records;
        c.bytes += bytes;
        c.errors += errors;
    }

    pub fn merge(&mut self, other: &Timeline) {
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize(other.seconds.len(), Counts::default());
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.records += theirs.records;
            mine.bytes += theirs.bytes;
            mine.errors += theirs.errors;
        }
    }

    /// Totals over the first `seconds` seconds (a partial last second counts pro rata).
    pub fn total_within(&self, seconds: f64) -> Counts {
        let mut total = Counts::default();
        for (i, c) in self.seconds.iter().enumerate() {
            let share = (seconds - i as f64).clamp(0.0, 1.0);
            total.records += (c.records as f64 * share).round() as u64;
            total.bytes += (c.bytes as f64 * share).round() as u64;
            total.errors += (c.errors as f64 * share).round() as u64;
        }
        total
    }
}

/// One producer's (or a merge of several) counts.
#[derive(Clone, Debug)]
pub struct ProduceTally {
    /// Records whose due time had come by the end of the load (open loop).
    pub due: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Failed records by reason (Kafka error name or connection failure).
    pub errors: BTreeMap<String, u64>,
    /// Why a producer could not run at all, if it could not.
    pub fatal: Vec<String>,
    pub ack: Recorder,
    /// Acknowledged records and bytes by second of acknowledgement.
    pub timeline: Timeline,
}

impl ProduceTally {
    pub fn new(measure_from_ns: u64) -> ProduceTally {
        ProduceTally {
            due: 0,
            sent: 0,
            acknowledged: 0,
            failed: 0,
            errors: BTreeMap::new(),
            fatal: Vec::new(),
            ack: Recorder::new(measure_from_ns),
            timeline: Timeline::default(),
        }
    }

    pub fn fail(&mut self, records: u64, reason: &str, from_ns: u64, at_ns: u64) {
        self.failed += records;
        *self.errors.entry(reason.to_string()).or_default() += records;
        self.timeline.add(from_ns, at_ns, 0, 0, records);
    }

    pub fn merge(&mut self, other: &ProduceTally) {
        self.due += other.due;
        self.sent += other.sent;
        self.acknowledged += other.acknowledged;
        self.failed += other.failed;
        for (reason, n) in &other.errors {
            *self.errors.entry(reason.clone()).or_default() += n;
        }
        self.fatal.extend(other.fatal.iter().cloned());
        self.ack.merge(&other.ack);
        self.timeline.merge(&other.timeline);
    }
}

/// One consumer's (or a merge of several) counts.
#[derive(Clone, Debug)]
pub struct ConsumeTally {
    pub consumed: u64,
    pub bytes: u64,
    /// Failed fetches by reason.
    pub errors: BTreeMap<String, u64>,
    /// Records too short to carry a due time (not written by this harness).
    pub unstamped: u64,
    pub e2e: Recorder,
    pub timeline: Timeline,
    /// When the last record arrived (ns on the run clock).
    pub last_ns: u64,
}

impl ConsumeTally {
    pub fn new(measure_from_ns: u64) -> ConsumeTally {
        ConsumeTally {
            consumed: 0,
            bytes: 0,
            errors: BTreeMap::new(),
            unstamped: 0,
            e2e: Recorder::new(measure_from_ns),
            timeline: Timeline::default(),
            last_ns: 0,
        }
    }

    pub fn merge(&mut self, other: &ConsumeTally) {
        self.consumed += other.consumed;
        self.bytes += other.bytes;
        self.unstamped += other.unstamped;
        for (reason, n) in &other.errors {
            *self.errors.entry(reason.clone()).or_default() += n;
        }
        self.e2e.merge(&other.e2e);
        self.timeline.merge(&other.timeline);
        self.last_ns = self.last_ns.max(other.last_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timelines_bucket_by_second_skip_warm_up_and_merge() {
        let s = 1_000_000_000;
        let mut a = Timeline::default();
        a.add(10 * s, 9 * s, 5, 5, 0);
        a.add(10 * s, 10 * s, 1, 100, 0);
        a.add(10 * s, 12 * s + 5, 2, 200, 1);
        let mut b = Timeline::default();
        b.add(10 * s, 10 * s + s / 2, 3, 300, 0);
        a.merge(&b);
        assert_eq!(a.seconds.len(), 3);
        assert_eq!(
            a.seconds[0],
            Counts {
                records: 4,
                bytes: 400,
                errors: 0
            }
        );
        assert_eq!(
            a.seconds[2],
            Counts {
                records: 2,
                bytes: 200,
                errors: 1
            }
        );
        assert_eq!(a.total_within(3.0).records, 6);
        assert_eq!(a.total_within(2.5).records, 5);
    }
}
