//! `spate bench` and its subcommands: argument parsing, Ctrl-C, and where results go.
//!
//! Ctrl-C (or SIGTERM) once stops the load, drains, and still writes the partial
//! results (marked interrupted); a second one exits at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};

use crate::baseline::{self, Baseline};
use crate::compare::{self, Comparison};
use crate::error::{BenchError, Result};
use crate::report;
use crate::results::{Mode, RunResult};
use crate::run::{self, Finished, Plan, StartAt};
use crate::sweep::{self, Limits, Sweep};
use crate::tally::Live;
use crate::workload::{Workload, WorkloadArgs};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Producers only: throughput flat out, or latency at a target --rate.
    Produce(RunArgs),
    /// Consumers only, on topics written before: catch-up from the beginning, or tail.
    Consume {
        #[command(flatten)]
        run: RunArgs,
        /// Where to start reading.
        #[arg(long, value_enum, default_value_t = StartAt::Earliest)]
        from: StartAt,
    },
    /// Producers at --rate and consumers at the tail: end-to-end latency.
    E2e(RunArgs),
    /// Raise the rate step by step until latency or errors break a limit.
    Sweep(SweepArgs),
    /// The same workload against two brokers, alternating, with ratios.
    Compare(CompareArgs),
    /// This machine's ceilings: disk write/read bandwidth, fsync latency, loopback TCP.
    Baseline {
        /// A directory on the disk to measure (a probe file is written and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Also write the figures as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Draw the charts of one or more results files, overlaid.
    Plot {
        /// results.json files written by earlier runs.
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Directory for the SVG files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// The storage engine alone: durable append throughput against raw O_DIRECT writes.
    EngineAppend(EngineAppendArgs),
    /// The storage engine alone: durable append latency at a fixed rate against the same
    /// disk written directly.
    EngineLatency(EngineLatencyArgs),
}

/// What every load-generating subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Bootstrap broker, host:port.
    #[arg(
        short = 'b',
        long,
        env = "SPATE_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Directory for results.json, the interval logs and the charts
    /// [default: spate-bench-results/MODE-UNIXTIME].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of this run in tables and legends [default: the broker address].
    #[arg(long)]
    pub label: Option<String>,
    /// Measure the machine's ceilings first, with this directory on the broker's disk,
    /// and quote the results against them.
    #[arg(long)]
    pub baseline_dir: Option<PathBuf>,
    /// Seconds per baseline measurement.
    #[arg(long, default_value_t = 3.0)]
    pub baseline_seconds: f64,
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Measure end-to-end latency (consumers at the tail) rather than acknowledgements.
    #[arg(long)]
    pub e2e: bool,
    /// First target rate, records/s over all producers.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Steps at most.
    #[arg(long, default_value_t = 12)]
    pub steps: u32,
    /// A step holds if its p99 is at most this many milliseconds…
    #[arg(long, default_value_t = 10.0)]
    pub max_p99_ms: f64,
    /// …and it achieved at least this share of its target rate, with no failed record.
    #[arg(long, default_value_t = 0.95)]
    pub min_achieved: f64,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The two brokers, A then B: `--brokers A --brokers B`.
    #[arg(short = 'b', long, num_args = 1, required = true)]
    pub brokers: Vec<String>,
    /// Names of A and B in the table, `A,B` [default: their addresses].
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// What to run against each.
    #[arg(long, value_enum, default_value_t = Mode::E2e)]
    pub mode: Mode,
    /// Rounds; each runs A and B once, the first going first in odd rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Directory for compare.json, each run's results and the overlaid charts.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct EngineAppendArgs {
    /// Directory on the disk to measure (files are removed afterwards).
    #[arg(long, default_value = "target/bench-data")]
    pub dir: PathBuf,
    /// Seconds per configuration.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Batch sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [1_048_576usize, 16_384])]
    pub batch_bytes: Vec<usize>,
    /// Partition counts on the one shard.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    pub partitions: Vec<usize>,
    /// Bytes in flight per partition (divided by the batch size to get appenders).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub inflight_bytes: usize,
    /// Block size of the raw O_DIRECT baseline.
    #[arg(long, default_value_t = 1_048_576)]
    pub raw_block_bytes: usize,
    /// Rounds; each measures the baselines and the engine back to back, and the
    /// report gives medians of the per-round ratios.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// How the logs start out: `fresh` (new logs, default config), `steady` (retention
    /// deleting a segment per segment rolled, files recycled, as a full broker runs) and
    /// `steady-unrecycled` (the same without recycling).
    #[arg(long, value_delimiter = ',', default_values_t = [crate::engine_append::Mode::Fresh, crate::engine_append::Mode::Steady { recycle: true }, crate::engine_append::Mode::Steady { recycle: false }])]
    pub modes: Vec<crate::engine_append::Mode>,
}

#[derive(Args, Debug, Clone)]
pub struct EngineLatencyArgs {
    /// Directory on the disk to measure (files are removed afterwards).
    #[arg(long, default_value = "target/bench-data")]
    pub dir: PathBuf,
    /// Seconds per side and round.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Bytes of each batch.
    #[arg(long, default_value_t = 16_384)]
    pub batch_bytes: usize,
    /// Megabytes (10^6 bytes) a second written.
    #[arg(long, default_value_t = 20.0)]
    pub mb_per_s: f64,
    /// Rounds; each runs the raw side, then the engine.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

/// Runs a `spate bench` subcommand.
pub fn run(command: BenchCommand) -> Result<()> {
    let stop = ctrl_c()?;
    match command {
        BenchCommand::Produce(args) => single(&args, Mode::Produce, StartAt::Latest, &stop),
        BenchCommand::Consume { run, from } => single(&run, Mode::Consume, from, &stop),
        BenchCommand::E2e(args) => single(&args, Mode::E2e, StartAt::Latest, &stop),
        BenchCommand::Sweep(args) => sweep(&args, &stop),
        BenchCommand::Compare(args) => compare(&args, &stop),
        BenchCommand::Baseline { dir, seconds, out } => {
            check_seconds(seconds)?;
            let b = baseline::measure(&dir, seconds)?;
            println!(
                "disk write {:.0} MB/s, disk read {:.0} MB/s (O_DIRECT, 1 MiB blocks)\n\
                 4 KiB O_DIRECT write + fdatasync: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms ({} writes)\n\
                 loopback TCP, one stream: {:.0} MB/s",
                b.disk_write_mb_per_s,
                b.disk_read_mb_per_s,
                b.fsync.p50_us as f64 / 1000.0,
                b.fsync.p99_us as f64 / 1000.0,
                b.fsync.p999_us as f64 / 1000.0,
                b.fsync.count,
                b.loopback_mb_per_s
            );
            if let Some(out) = out {
                write_json(&out, "baseline.json", &b)?;
            }
            Ok(())
        }
        BenchCommand::Plot { results, out } => {
            let results = results
                .iter()
                .map(|p| RunResult::read(p))
                .collect::<Result<Vec<_>>>()?;
            std::fs::create_dir_all(&out)
                .map_err(BenchError::io(format!("cannot create {}", out.display())))?;
            crate::plot::charts(&results, &out)?;
            println!("charts written to {}", out.display());
            Ok(())
        }
        BenchCommand::EngineAppend(args) => engine_append(args),
        BenchCommand::EngineLatency(args) => engine_latency(args),
    }
}

/// Ctrl-C and SIGTERM set the returned flag; a second one exits at once.
fn ctrl_c() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        flag::register_conditional_shutdown(signal, 130, stop.clone())
            .and_then(|_| flag::register(signal, stop.clone()))
            .map_err(BenchError::io("cannot handle Ctrl-C"))?;
    }
    Ok(stop)
}

fn check_seconds(seconds: f64) -> Result<()> {
    if seconds.is_finite() && (0.1..=3600.0).contains(&seconds) {
        Ok(())
    } else {
        Err(BenchError::Usage("seconds must be 0.1..=3600".into()))
    }
}

fn default_out(what: &str) -> PathBuf {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("spate-bench-results").join(format!("{what}-{now}"))
}

fn write_json<T: serde::Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(BenchError::io(format!("cannot create {}", dir.display())))?;
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).expect("results serialise");
    std::fs::write(&path, text + "\n")
        .map_err(BenchError::io(format!("cannot write {}", path.display())))
}

fn measure_baseline(args: &RunArgs) -> Result<Option<Baseline>> {
    match &args.baseline_dir {
        None => Ok(None),
        Some(dir) => {
            check_seconds(args.baseline_seconds)?;
            eprintln!("measuring this machine's ceilings in {} …", dir.display());
            baseline::measure(dir, args.baseline_seconds).map(Some)
        }
    }
}

fn plan(args: &RunArgs, workload: Workload, mode: Mode, start_at: StartAt) -> Plan {
    Plan {
        bootstrap: args.brokers.clone(),
        workload,
        mode,
        start_at,
        label: args.label.clone().unwrap_or_else(|| args.brokers.clone()),
    }
}

fn single(args: &RunArgs, mode: Mode, start_at: StartAt, stop: &Arc<AtomicBool>) -> Result<()> {
    let workload = Workload::resolve(&args.workload)?;
    let baseline = measure_baseline(args)?;
    let mut finished = run::execute(
        &plan(args, workload, mode, start_at),
        Live::with_stop(stop.clone()),
    )?;
    finished.result.baseline = baseline;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_out(&format!("{mode:?}").to_lowercase()));
    report::write_outputs(&finished, &out)?;
    print!("{}", report::summary(&finished.result));
    println!("  results in {}", out.display());
    Ok(())
}

fn sweep(args: &SweepArgs, stop: &Arc<AtomicBool>) -> Result<()> {
    let limits = Limits {
        p99_ms: args.max_p99_ms,
        achieved_share: args.min_achieved,
    };
    let rates_valid = args.start_rate.is_finite()
        && args.start_rate > 0.0
        && args.factor.is_finite()
        && args.factor > 1.0;
    if !rates_valid {
        return Err(BenchError::Usage(
            "--start-rate must be positive and --factor above 1".into(),
        ));
    }
    if !(limits.p99_ms > 0.0 && (0.0..=1.0).contains(&limits.achieved_share)) {
        return Err(BenchError::Usage(
            "--max-p99-ms must be positive and --min-achieved 0..=1".into(),
        ));
    }
    let out = args.run.out.clone().unwrap_or_else(|| default_out("sweep"));
    let mode = if args.e2e { Mode::E2e } else { Mode::Produce };
    let mut result = Sweep {
        limits,
        steps: Vec::new(),
        highest_sustainable_rate: None,
    };
    let mut rate = args.start_rate;
    for step in 0..args.steps {
        let mut workload_args = args.run.workload.clone();
        workload_args.rate = Some(rate);
        let workload = Workload::resolve(&workload_args)?;
        eprintln!("step {}: {rate:.0} records/s", step + 1);
        let finished = run::execute(
            &plan(&args.run, workload, mode, StartAt::Latest),
            Live::with_stop(stop.clone()),
        )?;
        report::write_outputs(&finished, &out.join(format!("step-{:02}", step + 1)))?;
        let judged = sweep::judge(rate, &finished.result, &limits);
        let held = judged.sustainable;
        if held {
            result.highest_sustainable_rate = Some(rate);
        }
        result.steps.push(judged);
        if !held || finished.result.interrupted {
            break;
        }
        rate *= args.factor;
    }
    write_json(&out, "sweep.json", &result)?;
    print!("{}", sweep::table(&result));
    println!("results in {}", out.display());
    Ok(())
}

fn compare(args: &CompareArgs, stop: &Arc<AtomicBool>) -> Result<()> {
    let [a, b] = args.brokers.as_slice() else {
        return Err(BenchError::Usage(
            "compare needs exactly two --brokers".into(),
        ));
    };
    if args.rounds == 0 || args.rounds > 100 {
        return Err(BenchError::Usage("--rounds must be 1..=100".into()));
    }
    let labels = match args.labels.as_slice() {
        [] => [a.clone(), b.clone()],
        [la, lb] => [la.clone(), lb.clone()],
        _ => {
            return Err(BenchError::Usage(
                "--labels takes two names, or none".into(),
            ))
        }
    };
    let workload = Workload::resolve(&args.workload)?;
    let out = args.out.clone().unwrap_or_else(|| default_out("compare"));
    let brokers = [a, b];
    let mut runs: [Vec<Finished>; 2] = [Vec::new(), Vec::new()];
    'rounds: for round in 0..args.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            eprintln!("round {}: {}", round + 1, labels[which]);
            let plan = Plan {
                bootstrap: brokers[which].clone(),
                workload: workload.clone(),
                mode: args.mode,
                // Consume compares catch-up reads of what the topics hold.
                start_at: if args.mode == Mode::Consume {
                    StartAt::Earliest
                } else {
                    StartAt::Latest
                },
                label: labels[which].clone(),
            };
            let finished = run::execute(&plan, Live::with_stop(stop.clone()))?;
            let interrupted = finished.result.interrupted;
            report::write_outputs(
                &finished,
                &out.join(format!("{}-round-{}", ["a", "b"][which], round + 1)),
            )?;
            runs[which].push(finished);
            if interrupted {
                break 'rounds;
            }
            // Let the broker settle (flushes, page cache) before the other one runs.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let [runs_a, runs_b] = runs.map(|r| r.into_iter().map(|f| f.result).collect::<Vec<_>>());
    let comparison = Comparison {
        a: labels[0].clone(),
        b: labels[1].clone(),
        rounds: runs_a.len().min(runs_b.len()),
        figures: compare::figures(&runs_a, &runs_b),
        runs_a,
        runs_b,
    };
    write_json(&out, "compare.json", &comparison)?;
    let last: Vec<RunResult> = [comparison.runs_a.last(), comparison.runs_b.last()]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    crate::plot::charts(&last, &out)?;
    print!("{}", compare::table(&comparison));
    println!("results in {}", out.display());
    Ok(())
}

/// What both engine benchmarks need first: their directory, batch sizes they can run,
/// and an executor pinned to core 0 standing in for one shard.
fn engine_bench_setup(dir: &Path, batch_bytes: &[usize]) -> Result<glommio::LocalExecutor> {
    std::fs::create_dir_all(dir)
        .map_err(BenchError::io(format!("cannot create {}", dir.display())))?;
    if batch_bytes
        .iter()
        .any(|b| !(1024..=16 * 1024 * 1024).contains(b))
    {
        return Err(BenchError::Usage(
            "--batch-bytes must be between 1024 and 16777216".into(),
        ));
    }
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .name("bench")
        .make()
        .map_err(|e| BenchError::Runtime(e.to_string()))
}

fn engine_append(args: EngineAppendArgs) -> Result<()> {
    let executor = engine_bench_setup(&args.dir, &args.batch_bytes)?;
    let plan = crate::engine_append::Plan {
        dir: args.dir,
        duration: Duration::from_secs(args.seconds.max(1)),
        batch_bytes: args.batch_bytes,
        partitions: args.partitions,
        inflight_bytes: args.inflight_bytes,
        raw_block_bytes: args.raw_block_bytes,
        rounds: args.rounds,
        modes: args.modes,
    };
    let report = executor.run(async move { crate::engine_append::run(plan).await });
    print!("{report}");
    Ok(())
}

fn engine_latency(args: EngineLatencyArgs) -> Result<()> {
    if !(args.mb_per_s > 0.0 && args.mb_per_s <= 10_000.0) {
        return Err(BenchError::Usage("--mb-per-s must be in (0, 10000]".into()));
    }
    let executor = engine_bench_setup(&args.dir, &[args.batch_bytes])?;
    let plan = crate::engine_latency::Plan {
        dir: args.dir,
        duration: Duration::from_secs(args.seconds.max(1)),
        batch_bytes: args.batch_bytes,
        bytes_per_second: (args.mb_per_s * 1e6) as u64,
        rounds: args.rounds,
    };
    let report = executor.run(async move { crate::engine_latency::run(plan).await });
    print!("{report}");
    Ok(())
}
