//! When each record is due: the open-loop schedule.
//!
//! At a target rate, record `n` of a producer is due at `start + n / rate`, whatever
//! happened to the records before it. The producer sends late when it falls behind (a
//! full in-flight window, a stalled broker), and latency is taken from the due time, not
//! the send time: a stall then shows as the whole queue of records it delayed, the way
//! wrk2 and HdrHistogram's `record_correct` count it, instead of as one slow request
//! (coordinated omission). Without a target rate the producer runs flat out and a record
//! is due when it is made.
//!
//! Times are nanoseconds on the run's `Clock`, shared by every thread of a run, so a
//! consumer can compare a time written into a record with its own.

use std::time::Instant;

/// The run's time base: nanoseconds since the run began. `Copy`, and the same on every
/// thread of the process.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            base: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// How fast a producer makes records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as the broker acknowledges (closed loop).
    Max,
    /// This many records a second, whatever the broker does (open loop).
    Rate(f64),
}

/// The due times of one producer's records.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start_ns: u64,
    /// Nanoseconds between records; `None` when running flat out.
    interval_ns: Option<f64>,
}

impl Schedule {
    pub fn new(start_ns: u64, pace: Pace) -> Schedule {
        let interval_ns = match pace {
            Pace::Max => None,
            Pace::Rate(rate) => {
                assert!(rate > 0.0 && rate.is_finite(), "a positive rate");
                Some(1e9 / rate)
            }
        };
        Schedule {
            start_ns,
            interval_ns,
        }
    }

    pub fn is_open_loop(&self) -> bool {
        self.interval_ns.is_some()
    }

    /// When record `n` (from 0) is due; flat out, that is `now_ns`, the time it is made.
    pub fn due_time(&self, n: u64, now_ns: u64) -> u64 {
        match self.interval_ns {
            Some(interval) => self.start_ns + (n as f64 * interval) as u64,
            None => now_ns,
        }
    }

    /// How many records are due by `now_ns` (records `0..due`); unbounded flat out.
    pub fn due_count(&self, now_ns: u64) -> u64 {
        match self.interval_ns {
            Some(_) if now_ns < self.start_ns => 0,
            Some(interval) => ((now_ns - self.start_ns) as f64 / interval) as u64 + 1,
            None => u64::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_fall_due_evenly_at_the_rate() {
        let s = Schedule::new(1_000, Pace::Rate(1000.0));
        assert_eq!(s.due_count(999), 0);
        assert_eq!(s.due_count(1_000), 1);
        assert_eq!(s.due_count(1_000 + 999_999), 1);
        assert_eq!(s.due_count(1_000 + 1_000_000), 2);
        assert_eq!(s.due_count(1_000 + 1_000_000_000), 1001);
        assert_eq!(s.due_time(0, 0), 1_000);
        assert_eq!(s.due_time(500, 0), 1_000 + 500_000_000);
        // The due time does not depend on when the record is actually made.
        assert_eq!(s.due_time(500, 9_999_999_999), 1_000 + 500_000_000);
    }

    #[test]
    fn a_fractional_rate_keeps_its_average() {
        let s = Schedule::new(0, Pace::Rate(3.0));
        assert_eq!(s.due_count(10_000_000_000), 31);
        let s = Schedule::new(0, Pace::Rate(2_500_000.0));
        assert_eq!(s.due_count(1_000_000_000), 2_500_001);
    }

    #[test]
    fn flat_out_records_are_due_when_made() {
        let s = Schedule::new(0, Pace::Max);
        assert!(!s.is_open_loop());
        assert_eq!(s.due_count(5), u64::MAX);
        assert_eq!(s.due_time(1_000_000, 42), 42);
    }
}
