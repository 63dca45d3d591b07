//! The results of a run as one JSON document: every parameter, the environment, the
//! broker, the counts, the latency percentiles and spectra, and the per-second
//! timeline. `spate bench plot` and `compare` read these documents back, so everything
//! a chart needs is in them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::baseline::Baseline;
use crate::latency::{Percentiles, Recorder, SpectrumPoint};
use crate::setup::BrokerInfo;
use crate::tally::{ConsumeTally, ProduceTally};
use crate::workload::Workload;

/// What a run exercised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Producers only.
    Produce,
    /// Consumers only, on topics already written.
    Consume,
    /// Producers at a rate and consumers at the tail; end-to-end latency.
    E2e,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub tool: String,
    pub mode: Mode,
    /// A name for legends and tables (the broker address unless given).
    pub label: String,
    /// The consumer group of the run's consumers, when they ran in one.
    pub consumer_group: Option<String>,
    pub started_at_unix_ms: u64,
    /// Ctrl-C ended the run early; the figures cover what ran.
    pub interrupted: bool,
    pub workload: Workload,
    pub broker: BrokerInfo,
    pub environment: Environment,
    /// The seconds the throughput figures divide by, and the warm-up before them (none
    /// for a catch-up read, which is measured whole).
    pub measured_seconds: f64,
    pub warmup_seconds: f64,
    pub produce: Option<ProduceResult>,
    pub consume: Option<ConsumeResult>,
    pub timeline: Vec<Second>,
    pub ack_spectrum: Vec<SpectrumPoint>,
    pub e2e_spectrum: Vec<SpectrumPoint>,
    pub baseline: Option<Baseline>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProduceResult {
    /// Records due by the end of the load (open loop); made, flat out.
    pub due: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub fatal: Vec<String>,
    /// Acknowledged records and record-batch bytes per second over the measured time.
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// From the due time (coordinated omission corrected when open loop).
    pub ack_latency: Percentiles,
    /// From the time the request was written, for comparison.
    pub ack_latency_from_send: Percentiles,
    pub open_loop: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumeResult {
    pub consumed: u64,
    /// Record-batch bytes fetched.
    pub bytes: u64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub errors: BTreeMap<String, u64>,
    /// Records without this harness's due-time stamp (end to end only).
    pub unstamped: u64,
    pub e2e_latency: Option<Percentiles>,
}

/// One second of the run after the warm-up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub second: u32,
    pub acknowledged: u64,
    pub acknowledged_bytes: u64,
    pub produce_errors: u64,
    pub consumed: u64,
    pub consumed_bytes: u64,
    pub ack_p50_us: Option<u64>,
    pub ack_p99_us: Option<u64>,
    pub ack_max_us: Option<u64>,
    pub e2e_p50_us: Option<u64>,
    pub e2e_p99_us: Option<u64>,
    pub e2e_max_us: Option<u64>,
}

/// The machine the load generator ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub hostname: String,
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub load_generator_cores: usize,
}

impl Environment {
    pub fn here(load_generator_cores: usize) -> Environment {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Environment {
            hostname: read("/proc/sys/kernel/hostname"),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease"),
            load_generator_cores,
        }
    }
}

/// The tallies of a run, merged, and what it needs to be summarised.
#[derive(Debug)]
pub struct Tallies {
    pub produce: Option<ProduceTally>,
    pub consume: Option<ConsumeTally>,
}

/// The figures of a run from its tallies.
#[derive(Debug)]
pub struct Summary<'a> {
    pub tallies: &'a Tallies,
    pub measured_seconds: f64,
}

impl Summary<'_> {
    pub fn produce(&self) -> Option<ProduceResult> {
        let t = self.tallies.produce.as_ref()?;
        let measured = t.timeline.total_within(self.measured_seconds);
        Some(ProduceResult {
            due: t.due,
            sent: t.sent,
            acknowledged: t.acknowledged,
            failed: t.failed,
            errors: t.errors.clone(),
            fatal: t.fatal.clone(),
            records_per_s: per_second(measured.records as f64, self.measured_seconds),
            mb_per_s: per_second(measured.bytes as f64 / 1e6, self.measured_seconds),
            ack_latency: t.ack.corrected(),
            ack_latency_from_send: t.ack.uncorrected(),
            open_loop: false,
        })
    }

    pub fn consume(&self) -> Option<ConsumeResult> {
        let t = self.tallies.consume.as_ref()?;
        let measured = t.timeline.total_within(self.measured_seconds);
        Some(ConsumeResult {
            consumed: t.consumed,
            bytes: t.bytes,
            records_per_s: per_second(measured.records as f64, self.measured_seconds),
            mb_per_s: per_second(measured.bytes as f64 / 1e6, self.measured_seconds),
            errors: t.errors.clone(),
            unstamped: t.unstamped,
            e2e_latency: (t.e2e.count() > 0).then(|| t.e2e.corrected()),
        })
    }

    pub fn timeline(&self) -> Vec<Second> {
        let empty_p = Vec::new();
        let empty_c = Vec::new();
        let (p_secs, ack) = match &self.tallies.produce {
            Some(t) => (&t.timeline.seconds, Some(&t.ack)),
            None => (&empty_p, None),
        };
        let (c_secs, e2e) = match &self.tallies.consume {
            Some(t) => (&t.timeline.seconds, Some(&t.e2e)),
            None => (&empty_c, None),
        };
        let seconds =
            (self.measured_seconds.ceil() as usize).min(p_secs.len().max(c_secs.len()).max(1));
        let at = |r: Option<&Recorder>, s: usize, q: f64| {
            r.and_then(|r| r.seconds().get(s))
                .filter(|h| !h.is_empty())
                .map(|h| {
                    if q >= 1.0 {
                        h.max()
                    } else {
                        h.value_at_quantile(q)
                    }
                })
        };
        (0..seconds)
            .map(|s| {
                let p = p_secs.get(s).copied().unwrap_or_default();
                let c = c_secs.get(s).copied().unwrap_or_default();
                Second {
                    second: s as u32,
                    acknowledged: p.records,
                    acknowledged_bytes: p.bytes,
                    produce_errors: p.errors,
                    consumed: c.records,
                    consumed_bytes: c.bytes,
                    ack_p50_us: at(ack, s, 0.5),
                    ack_p99_us: at(ack, s, 0.99),
                    ack_max_us: at(ack, s, 1.0),
                    e2e_p50_us: at(e2e, s, 0.5),
                    e2e_p99_us: at(e2e, s, 0.99),
                    e2e_max_us: at(e2e, s, 1.0),
                }
            })
            .collect()
    }
}

fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        (amount / seconds * 100.0).round() / 100.0
    } else {
        0.0
    }
}

impl RunResult {
    pub fn read(path: &std::path::Path) -> crate::error::Result<RunResult> {
        let text = std::fs::read_to_string(path).map_err(crate::error::BenchError::io(format!(
            "cannot read {}",
            path.display()
        )))?;
        serde_json::from_str(&text).map_err(|e| {
            crate::error::BenchError::Usage(format!(
                "{} is not a spate bench result: {e}",
                path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::Versions;
    use crate::workload::WorkloadArgs;

    fn sample() -> RunResult {
        let mut produce = ProduceTally::new(0);
        let mut consume = ConsumeTally::new(0);
        for i in 0..5_000u64 {
            let due = i * 1_000_000;
            let done = due + 300_000 + (i % 89) * 10_000;
            produce.sent += 1;
            produce.acknowledged += 1;
            produce.ack.record(due, due + 1_000, done);
            produce.timeline.add(0, done, 1, 1_100, 0);
            consume.consumed += 1;
            consume.e2e.record(due, due, done + 500_000);
            consume.timeline.add(0, done + 500_000, 1, 1_100, 0);
        }
        produce.fail(3, "NOT_LEADER_OR_FOLLOWER", 0, 2_000_000_000);
        produce.sent += 3;
        let tallies = Tallies {
            produce: Some(produce),
            consume: Some(consume),
        };
        let summary = Summary {
            tallies: &tallies,
            measured_seconds: 5.0,
        };
        RunResult {
            tool: "spate-bench test".into(),
            mode: Mode::E2e,
            label: "a broker".into(),
            consumer_group: Some("g".into()),
            started_at_unix_ms: 1_790_000_000_000,
            interrupted: false,
            workload: Workload::resolve(&WorkloadArgs {
                keys: Some("zipf:10:1.5".parse().unwrap()),
                record_size: Some("100..200".parse().unwrap()),
                rate: Some(1234.5),
                ..WorkloadArgs::default()
            })
            .unwrap(),
            broker: BrokerInfo {
                bootstrap: "127.0.0.1:9092".into(),
                cluster_id: None,
                brokers: 1,
                api_versions: vec![(0, 0, 11), (1, 4, 12)],
                versions: Versions {
                    metadata: Some(9),
                    produce: 9,
                    fetch: 12,
                    init_producer_id: Some(4),
                },
            },
            environment: Environment::here(2),
            measured_seconds: 5.0,
            warmup_seconds: 0.0,
            produce: summary.produce(),
            consume: summary.consume(),
            timeline: summary.timeline(),
            ack_spectrum: tallies.produce.as_ref().unwrap().ack.spectrum(),
            e2e_spectrum: tallies.consume.as_ref().unwrap().e2e.spectrum(),
            baseline: None,
        }
    }

    #[test]
    fn results_survive_a_json_round_trip() {
        let result = sample();
        let text = serde_json::to_string_pretty(&result).unwrap();
        let back: RunResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back, result);
        // The figures come from the tallies.
        let produce = back.produce.unwrap();
        assert_eq!(
            (produce.sent, produce.acknowledged, produce.failed),
            (5_003, 5_000, 3)
        );
        assert_eq!(produce.errors["NOT_LEADER_OR_FOLLOWER"], 3);
        assert!(
            (produce.records_per_s - 1_000.0).abs() < 1.0,
            "{}",
            produce.records_per_s
        );
        assert_eq!(back.timeline.len(), 5);
        assert_eq!(back.timeline[2].produce_errors, 3);
        assert!(back.consume.unwrap().e2e_latency.unwrap().p50_us >= 800);
    }

    #[test]
    fn a_document_that_is_not_a_result_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, "{\"mode\": 3}").unwrap();
        let e = RunResult::read(&path).unwrap_err().to_string();
        assert!(e.contains("is not a spate bench result"), "{e}");
        assert!(RunResult::read(&dir.path().join("missing.json")).is_err());
    }
}
