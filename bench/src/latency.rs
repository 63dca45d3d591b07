//! Latency recording: HdrHistograms of microseconds, corrected for coordinated omission.
//!
//! A `Recorder` takes, for each record, the time it was due, the time it was sent and
//! the time it was done (acknowledged, or read by a consumer). The reported latency is
//! done − due; done − sent is kept beside it so a reader can see how much the correction
//! adds. Records due before the end of the warm-up are not recorded. Besides the whole
//! run's histograms it keeps one per second of the run (by completion time), for the
//! latency-over-time chart and the HdrHistogram interval log. Recorders of different
//! tasks and threads merge exactly (histogram addition).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::limits::{LATENCY_DIGITS, LATENCY_US_MAX, TIMELINE_SECONDS_MAX};

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_DIGITS).expect("valid bounds")
}

/// Latencies of one kind (acknowledgement, or end to end) over a run.
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Records due before this time (ns on the run clock) are warm-up.
    measure_from_ns: u64,
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    /// Corrected latencies by second of completion since `measure_from_ns`.
    per_second: Vec<Histogram<u64>>,
}

impl Recorder {
    pub fn new(measure_from_ns: u64) -> Recorder {
        Recorder {
            measure_from_ns,
            corrected: histogram(),
            uncorrected: histogram(),
            per_second: Vec::new(),
        }
    }

    /// Records one record due at `due_ns`, sent at `sent_ns`, done at `done_ns`.
    pub fn record(&mut self, due_ns: u64, sent_ns: u64, done_ns: u64) {
        if due_ns < self.measure_from_ns {
            return;
        }
        debug_assert!(due_ns <= sent_ns.max(due_ns) && sent_ns <= done_ns.max(sent_ns));
        let micros = |from: u64| (done_ns.saturating_sub(from) / 1_000).max(1);
        self.corrected.saturating_record(micros(due_ns));
        self.uncorrected.saturating_record(micros(sent_ns));
        let second = ((done_ns.saturating_sub(self.measure_from_ns)) / 1_000_000_000) as usize;
        if second < TIMELINE_SECONDS_MAX {
            if self.per_second.len() <= second {
                self.per_second.resize_with(second + 1, histogram);
            }
            self.per_second[second].saturating_record(micros(due_ns));
        }
    }

    /// Adds `other`'s records to these.
    pub fn merge(&mut self, other: &Recorder) {
        assert_eq!(
            self.measure_from_ns, other.measure_from_ns,
            "recorders of one run"
        );
        self.corrected.add(&other.corrected).expect("same bounds");
        self.uncorrected
            .add(&other.uncorrected)
            .expect("same bounds");
        if self.per_second.len() < other.per_second.len() {
            self.per_second
                .resize_with(other.per_second.len(), histogram);
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(&other.per_second) {
            mine.add(theirs).expect("same bounds");
        }
    }

    pub fn count(&self) -> u64 {
        self.corrected.len()
    }

    pub fn corrected(&self) -> Percentiles {
        Percentiles::of(&self.corrected)
    }

    pub fn uncorrected(&self) -> Percentiles {
        Percentiles::of(&self.uncorrected)
    }

    /// The corrected histogram of each second of the run.
    pub fn seconds(&self) -> &[Histogram<u64>] {
        &self.per_second
    }

    /// The latency at a ladder of percentiles, finer towards the tail: what the
    /// percentile-spectrum chart draws.
    pub fn spectrum(&self) -> Vec<SpectrumPoint> {
        if self.corrected.is_empty() {
            return Vec::new();
        }
        let mut points = Vec::new();
        // 0, 10, …, 90, then 91 … 99, 99.1 … 99.9, and so on for six decades.
        let mut tail = 1.0;
        for decade in 0..6 {
            let first_step = if decade == 0 { 0 } else { 1 };
            for step in first_step..10 {
                let exact = 100.0 * (1.0 - tail * (1.0 - f64::from(step) / 10.0));
                // Rounded so the JSON reads 99.93, not 99.92999999999999.
                let percentile = (exact * 1e6).round() / 1e6;
                points.push(SpectrumPoint {
                    percentile,
                    micros: self.corrected.value_at_quantile(percentile / 100.0),
                });
            }
            tail /= 10.0;
        }
        points.push(SpectrumPoint {
            percentile: 100.0,
            micros: self.corrected.max(),
        });
        points
    }
}

/// The summary figures of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }
}

/// One point of a percentile spectrum.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    pub percentile: f64,
    pub micros: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Pace, Schedule};

    const MS: u64 = 1_000_000;

    /// A sender that takes 1 ms per record, except one 1 s stall at record 2000, driven
    /// by the open-loop schedule at 500 records a second: it sends each record at its
    /// due time or, when behind, as soon as the previous one is done.
    fn stalled_run() -> Recorder {
        let schedule = Schedule::new(0, Pace::Rate(500.0));
        let mut recorder = Recorder::new(0);
        let mut free_at = 0;
        for n in 0..10_000u64 {
            let due = schedule.due_time(n, 0);
            let sent = due.max(free_at);
            let service = if n == 2_000 { 1_000 * MS } else { MS };
            let done = sent + service;
            recorder.record(due, sent, done);
            free_at = done;
        }
        recorder
    }

    #[test]
    fn a_stall_counts_against_every_record_it_delayed() {
        let r = stalled_run();
        let corrected = r.corrected();
        let uncorrected = r.uncorrected();
        assert_eq!(corrected.count, 10_000);
        // Measured from the send, only the stalled record is slow: the p99 hides it.
        assert!(uncorrected.p99_us <= 1_100, "{uncorrected:?}");
        assert!(uncorrected.max_us >= 999_000);
        // Measured from the due time, the ~500 records due during the stall (and the
        // backlog drained after it) wait too: about 5% of the run is slower than 100 ms.
        assert!(corrected.p99_us >= 500_000, "{corrected:?}");
        assert!(corrected.p90_us <= 1_100, "{corrected:?}");
        assert!(corrected.max_us >= 999_000);
    }

    #[test]
    fn warm_up_is_not_recorded() {
        let mut r = Recorder::new(10 * MS);
        r.record(5 * MS, 5 * MS, 6 * MS);
        r.record(10 * MS, 10 * MS, 12 * MS);
        assert_eq!(r.count(), 1);
        assert_eq!(r.corrected().max_us, 2_000);
    }

    #[test]
    fn merging_gives_the_histogram_of_all_records() {
        let mut a = Recorder::new(0);
        let mut b = Recorder::new(0);
        let mut all = Recorder::new(0);
        for i in 0..1_000u64 {
            let (due, done) = (i * MS, i * MS + (i % 97 + 1) * 1_000);
            let target = if i % 3 == 0 { &mut a } else { &mut b };
            target.record(due, due, done);
            all.record(due, due, done);
        }
        b.record(5_000 * MS, 5_000 * MS, 5_000 * MS + 7 * MS);
        all.record(5_000 * MS, 5_000 * MS, 5_000 * MS + 7 * MS);
        a.merge(&b);
        assert_eq!(a.corrected(), all.corrected());
        assert_eq!(a.uncorrected(), all.uncorrected());
        assert_eq!(a.seconds().len(), 6);
        let per_second: u64 = a.seconds().iter().map(|h| h.len()).sum();
        assert_eq!(per_second, 1_001);
        assert_eq!(a.seconds()[5].len(), 1);
    }

    #[test]
    fn the_spectrum_climbs_to_the_maximum() {
        let r = stalled_run();
        let points = r.spectrum();
        assert!(points
            .windows(2)
            .all(|w| w[0].percentile <= w[1].percentile));
        assert!(points.windows(2).all(|w| w[0].micros <= w[1].micros));
        assert_eq!(points.last().unwrap().micros, r.corrected().max_us);
        assert!(points.iter().any(|p| (p.percentile - 99.9).abs() < 1e-9));
    }
}
