//! Side by side: the same workload against two brokers, alternating which goes first
//! each round (so drift of a shared machine falls on both), with each figure's median
//! over the rounds and the ratio B/A.

use serde::{Deserialize, Serialize};

use crate::results::RunResult;

/// One compared figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    /// Whether more is better (throughput) or worse (latency).
    pub higher_is_better: bool,
    pub a: f64,
    pub b: f64,
    /// b / a.
    pub ratio: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub rounds: usize,
    pub figures: Vec<Figure>,
    pub runs_a: Vec<RunResult>,
    pub runs_b: Vec<RunResult>,
}

type Pick = fn(&RunResult) -> Option<f64>;

const FIGURES: &[(&str, bool, Pick)] = &[
    ("produce records/s", true, |r| {
        r.produce.as_ref().map(|p| p.records_per_s)
    }),
    ("produce MB/s", true, |r| {
        r.produce.as_ref().map(|p| p.mb_per_s)
    }),
    ("ack p50 ms", false, |r| ack(r, |p| p.p50_us)),
    ("ack p99 ms", false, |r| ack(r, |p| p.p99_us)),
    ("ack p99.9 ms", false, |r| ack(r, |p| p.p999_us)),
    ("ack max ms", false, |r| ack(r, |p| p.max_us)),
    ("produce failed", false, |r| {
        r.produce.as_ref().map(|p| p.failed as f64)
    }),
    ("consume records/s", true, |r| {
        r.consume.as_ref().map(|c| c.records_per_s)
    }),
    ("consume MB/s", true, |r| {
        r.consume.as_ref().map(|c| c.mb_per_s)
    }),
    ("end-to-end p50 ms", false, |r| e2e(r, |p| p.p50_us)),
    ("end-to-end p99 ms", false, |r| e2e(r, |p| p.p99_us)),
    ("end-to-end p99.9 ms", false, |r| e2e(r, |p| p.p999_us)),
    ("end-to-end max ms", false, |r| e2e(r, |p| p.max_us)),
];

fn ack(r: &RunResult, f: fn(&crate::latency::Percentiles) -> u64) -> Option<f64> {
    let p = &r.produce.as_ref()?.ack_latency;
    (p.count > 0).then(|| f(p) as f64 / 1000.0)
}

fn e2e(r: &RunResult, f: fn(&crate::latency::Percentiles) -> u64) -> Option<f64> {
    r.consume
        .as_ref()?
        .e2e_latency
        .as_ref()
        .map(|p| f(p) as f64 / 1000.0)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Each figure present in both sets of runs: medians and ratio.
pub fn figures(runs_a: &[RunResult], runs_b: &[RunResult]) -> Vec<Figure> {
    let mut out = Vec::new();
    for &(name, higher_is_better, pick) in FIGURES {
        let mut a: Vec<f64> = runs_a.iter().filter_map(pick).collect();
        let mut b: Vec<f64> = runs_b.iter().filter_map(pick).collect();
        let (Some(a), Some(b)) = (median(&mut a), median(&mut b)) else {
            continue;
        };
        out.push(Figure {
            name: name.to_string(),
            higher_is_better,
            a,
            b,
            ratio: (a != 0.0).then(|| b / a),
        });
    }
    out
}

/// The comparison as a table.
pub fn table(c: &Comparison) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "medians of {} rounds; A = {}, B = {}",
        c.rounds, c.a, c.b
    );
    let _ = writeln!(
        out,
        "{:<22} {:>14} {:>14} {:>9}  better",
        "figure", "A", "B", "B/A"
    );
    for f in &c.figures {
        // Within 1% is a tie: no run-to-run figure is that steady.
        let better = match f.ratio {
            Some(r) if (r - 1.0).abs() <= 0.01 => "=",
            Some(r) if (r > 1.0) == f.higher_is_better => "B",
            Some(_) => "A",
            None => "=",
        };
        let ratio = f.ratio.map_or("-".to_string(), |r| format!("{r:.3}"));
        let _ = writeln!(
            out,
            "{:<22} {:>14.2} {:>14.2} {ratio:>9}  {better}",
            f.name, f.a, f.b
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
