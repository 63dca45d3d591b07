//! The highest sustainable rate: run the workload at a rising target rate until a step
//! breaks a limit (p99 latency, any failed record, or falling short of the target by
//! more than 5%), and report the last step that held.

use serde::{Deserialize, Serialize};

use crate::results::RunResult;

/// What a step must hold to count as sustainable.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// p99 of end-to-end latency if measured, else of acknowledgement latency.
    pub p99_ms: f64,
    /// Achieved rate as a share of the target.
    pub achieved_share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub p99_ms: Option<f64>,
    pub failed: u64,
    pub sustainable: bool,
    /// Why not, when not.
    pub broke: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub limits: Limits,
    pub steps: Vec<Step>,
    pub highest_sustainable_rate: Option<f64>,
}

/// Judges one step's result against `limits`.
pub fn judge(target_rate: f64, result: &RunResult, limits: &Limits) -> Step {
    let produce = result.produce.as_ref();
    let achieved_rate = produce.map_or(0.0, |p| p.records_per_s);
    let failed = produce.map_or(0, |p| p.failed);
    let e2e = result.consume.as_ref().and_then(|c| c.e2e_latency);
    let p99_ms = e2e
        .or_else(|| produce.map(|p| p.ack_latency).filter(|p| p.count > 0))
        .map(|p| p.p99_us as f64 / 1000.0);
    let broke = if failed > 0 {
        Some(format!("{failed} records failed"))
    } else if achieved_rate < target_rate * limits.achieved_share {
        Some(format!(
            "achieved {achieved_rate:.0} of {target_rate:.0} records/s"
        ))
    } else if p99_ms.is_none_or(|p| p > limits.p99_ms) {
        Some(format!(
            "p99 {} ms above {} ms",
            p99_ms.map_or("-".into(), |p| format!("{p:.2}")),
            limits.p99_ms
        ))
    } else if result.interrupted {
        Some("interrupted".into())
    } else {
        None
    };
    Step {
        target_rate,
        achieved_rate,
        p99_ms,
        failed,
        sustainable: broke.is_none(),
        broke,
    }
}

/// The table of a sweep.
pub fn table(s: &Sweep) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>12} {:>10} {:>8}  verdict",
        "target/s", "achieved/s", "p99 ms", "failed"
    );
    for step in &s.steps {
        let p99 = step.p99_ms.map_or("-".into(), |p| format!("{p:.2}"));
        let verdict = step.broke.clone().unwrap_or_else(|| "sustained".into());
        let _ = writeln!(
            out,
            "{:>12.0} {:>12.0} {p99:>10} {:>8}  {verdict}",
            step.target_rate, step.achieved_rate, step.failed
        );
    }
    match s.highest_sustainable_rate {
        Some(rate) => {
            let _ = writeln!(out, "highest sustainable rate: {rate:.0} records/s");
        }
        None => {
            let _ = writeln!(out, "no step was sustainable");
        }
    }
    out
}
