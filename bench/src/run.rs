//! One run: set the broker up, start the load on a pool of pinned glommio executors (one
//! per core given), show progress, stop on time or on Ctrl-C, and gather the tallies.
//!
//! Producers and consumers are spread round-robin over the executors; each executor
//! runs its share as local tasks and returns their merged tallies. Consumers of one run
//! split the partitions between them (direct assignment, partition i to consumer
//! i mod M), or, with `--group true`, join one consumer group named after the run and
//! read what its range assignor gives them; either way every partition is read once.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use indicatif::{ProgressBar, ProgressStyle};
use spate_net::client::lookup::{EARLIEST, LATEST};

use crate::consumer::{self, Assigned, ConsumerSpec, Until};
use crate::error::{BenchError, Result};
use crate::latency::Recorder;
use crate::limits::SETUP_TIMEOUT;
use crate::membership::Membership;
use crate::producer::{self, ProducerSpec};
use crate::results::{Environment, Mode, RunResult, Summary, Tallies};
use crate::schedule::Clock;
use crate::setup::{self, Layout};
use crate::tally::{ConsumeTally, Live, ProduceTally};
use crate::workload::Workload;

/// Time the tasks get to connect before the load starts.
const START_DELAY_NS: u64 = 300_000_000;

/// Where a consume-mode run starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    /// From the beginning up to the end offsets at the start (catch-up read).
    Earliest,
    /// From the end, for the run's duration (tail read).
    Latest,
}

/// A run to make.
#[derive(Clone, Debug)]
pub struct Plan {
    pub bootstrap: String,
    pub workload: Workload,
    pub mode: Mode,
    pub start_at: StartAt,
    pub label: String,
}

/// A finished run: its results and the latency recorders behind them (for the
/// interval logs).
#[derive(Debug)]
pub struct Finished {
    pub result: RunResult,
    pub ack: Option<Recorder>,
    pub e2e: Option<Recorder>,
}

/// Runs `plan`. `live.stop` ends it early (Ctrl-C); the results then say so.
pub fn execute(plan: &Plan, live: Arc<Live>) -> Result<Finished> {
    let workload = &plan.workload;
    let layout = setup::prepare(&plan.bootstrap, workload)?;
    let assigned = assignments(plan, &layout)?;
    let started_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let group = (workload.group && !assigned.is_empty())
        .then(|| format!("spate-bench-{started_at_unix_ms}"));
    let memberships: Vec<_> = match &group {
        Some(group) => (0..assigned.len())
            .map(|_| {
                let topics = workload.topic_names();
                Some(Membership::start(
                    plan.bootstrap.clone(),
                    group.clone(),
                    topics,
                ))
            })
            .collect(),
        None => vec![None; assigned.len()],
    };
    if group.is_some() {
        let members: Vec<_> = memberships.iter().flatten().cloned().collect();
        // The broker may hold the first join back (group.initial.rebalance.delay.ms).
        Membership::settle(&members, SETUP_TIMEOUT + Duration::from_secs(5))
            .map_err(BenchError::Broker)?;
    }
    let cores = workload
        .cores
        .min(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let producers = if plan.mode == Mode::Consume {
        0
    } else {
        workload.producers
    };
    let consumers = if plan.mode == Mode::Produce {
        0
    } else {
        workload.consumers
    };
    if producers + consumers == 0 {
        return Err(BenchError::Usage(format!(
            "a {:?} run needs at least one {}",
            plan.mode,
            if plan.mode == Mode::Produce {
                "producer"
            } else {
                "consumer"
            }
        )));
    }
    let clock = Clock::start();
    let start_ns = START_DELAY_NS;
    // A catch-up read is measured whole: there is nothing to warm up for.
    let catch_up = plan.mode == Mode::Consume && plan.start_at == StartAt::Earliest;
    let warmup_ns = if catch_up {
        0
    } else {
        (workload.warmup_s * 1e9) as u64
    };
    let measure_from_ns = start_ns + warmup_ns;
    let end_ns = measure_from_ns + (workload.duration_s * 1e9) as u64;
    live.producers_running
        .store(producers as usize, Ordering::Release);
    let template = Template {
        workload: workload.clone(),
        layout: layout.clone(),
        assigned,
        memberships,
        clock,
        start_ns,
        measure_from_ns,
        end_ns,
        producers,
        consumers,
        cores,
        until: match (plan.mode, plan.start_at) {
            (Mode::E2e, _) => Until::AllAcknowledged,
            (_, StartAt::Earliest) => Until::Offsets,
            (_, StartAt::Latest) => Until::Time,
        },
        stamped: plan.mode == Mode::E2e,
        live: live.clone(),
    };
    let (tallies, stopped_ns) = run_pool(template, &live, clock, end_ns)?;
    // Interrupted, the measured time ends at the Ctrl-C, not after the drain.
    let ended_ns = stopped_ns.unwrap_or_else(|| clock.now_ns());
    let measured_ns = if catch_up {
        tallies
            .consume
            .as_ref()
            .map_or(0, |c| c.last_ns.saturating_sub(measure_from_ns))
    } else {
        end_ns.min(ended_ns).saturating_sub(measure_from_ns)
    };
    let measured_seconds = measured_ns as f64 / 1e9;
    let summary = Summary {
        tallies: &tallies,
        measured_seconds,
    };
    let mut produce = summary.produce();
    if let Some(p) = &mut produce {
        p.open_loop = workload.rate.is_some();
    }
    let result = RunResult {
        tool: format!("spate-bench {}", env!("CARGO_PKG_VERSION")),
        mode: plan.mode,
        label: plan.label.clone(),
        consumer_group: group,
        started_at_unix_ms,
        interrupted: live.stopping(),
        workload: workload.clone(),
        broker: layout.broker,
        environment: Environment::here(cores),
        measured_seconds: (measured_seconds * 1000.0).round() / 1000.0,
        warmup_seconds: warmup_ns as f64 / 1e9,
        produce,
        consume: summary.consume(),
        timeline: summary.timeline(),
        ack_spectrum: tallies
            .produce
            .as_ref()
            .map(|t| t.ack.spectrum())
            .unwrap_or_default(),
        e2e_spectrum: tallies
            .consume
            .as_ref()
            .map(|t| t.e2e.spectrum())
            .unwrap_or_default(),
        baseline: None,
    };
    Ok(Finished {
        result,
        ack: tallies.produce.map(|t| t.ack),
        e2e: tallies.consume.map(|t| t.e2e),
    })
}

/// Each consumer's partitions with their start and end offsets.
fn assignments(plan: &Plan, layout: &Layout) -> Result<Vec<Vec<Assigned>>> {
    let consumers = plan.workload.consumers as usize;
    if plan.mode == Mode::Produce || consumers == 0 {
        return Ok(Vec::new());
    }
    let latest = setup::offsets(&plan.bootstrap, layout, LATEST)?;
    let earliest = match (plan.mode, plan.start_at) {
        (Mode::Consume, StartAt::Earliest) => {
            Some(setup::offsets(&plan.bootstrap, layout, EARLIEST)?)
        }
        _ => None,
    };
    let mut out = vec![Vec::new(); consumers];
    for (i, p) in layout.partitions.iter().enumerate() {
        let key = (p.topic.clone(), p.partition);
        let end = latest.get(&key).copied().unwrap_or(0);
        let (start, end) = match &earliest {
            Some(earliest) => (earliest.get(&key).copied().unwrap_or(0), Some(end)),
            None => (end, None),
        };
        let assigned = Assigned {
            layout: p.clone(),
            start,
            end,
        };
        // In a group every member may be given any partition; its group says which.
        if plan.workload.group {
            out.iter_mut().for_each(|c| c.push(assigned.clone()));
        } else {
            out[i % consumers].push(assigned);
        }
    }
    Ok(out)
}

/// What every executor is given; each picks its share by its index.
#[derive(Clone, Debug)]
struct Template {
    workload: Workload,
    layout: Layout,
    assigned: Vec<Vec<Assigned>>,
    memberships: Vec<Option<Arc<Membership>>>,
    clock: Clock,
    start_ns: u64,
    measure_from_ns: u64,
    end_ns: u64,
    producers: u32,
    consumers: u32,
    cores: usize,
    until: Until,
    stamped: bool,
    live: Arc<Live>,
}

async fn shard_load(t: Template, shard: usize) -> (Option<ProduceTally>, Option<ConsumeTally>) {
    let mine = |i: u32| i as usize % t.cores == shard;
    let consumers: Vec<_> = (0..t.consumers)
        .filter(|&i| mine(i))
        .map(|i| {
            glommio::spawn_local(consumer::run(ConsumerSpec {
                index: i,
                assigned: t.assigned.get(i as usize).cloned().unwrap_or_default(),
                versions: t.layout.broker.versions,
                clock: t.clock,
                measure_from_ns: t.measure_from_ns,
                end_ns: t.end_ns,
                until: t.until,
                stamped: t.stamped,
                membership: t.memberships.get(i as usize).cloned().flatten(),
                live: t.live.clone(),
            }))
        })
        .collect();
    let producers: Vec<_> = (0..t.producers)
        .filter(|&i| mine(i))
        .map(|i| {
            let spec = ProducerSpec {
                index: i,
                workload: t.workload.clone(),
                partitions: t.layout.partitions.clone(),
                versions: t.layout.broker.versions,
                clock: t.clock,
                start_ns: t.start_ns,
                measure_from_ns: t.measure_from_ns,
                end_ns: t.end_ns,
                live: t.live.clone(),
            };
            let live = t.live.clone();
            glommio::spawn_local(async move {
                let tally = producer::run(spec).await;
                live.producers_running.fetch_sub(1, Ordering::AcqRel);
                tally
            })
        })
        .collect();
    let mut produce: Option<ProduceTally> = None;
    for task in producers {
        let tally = task.await;
        match &mut produce {
            Some(all) => all.merge(&tally),
            None => produce = Some(tally),
        }
    }
    let mut consume: Option<ConsumeTally> = None;
    for task in consumers {
        let tally = task.await;
        match &mut consume {
            Some(all) => all.merge(&tally),
            None => consume = Some(tally),
        }
    }
    (produce, consume)
}

/// Runs the load on `template.cores` executors while the calling thread shows progress.
/// Also returns when Ctrl-C was seen, if it was.
fn run_pool(
    template: Template,
    live: &Arc<Live>,
    clock: Clock,
    end_ns: u64,
) -> Result<(Tallies, Option<u64>)> {
    let cores = template.cores;
    let next_shard = Arc::new(AtomicUsize::new(0));
    let handles = LocalExecutorPoolBuilder::new(PoolPlacement::MaxSpread(cores, None))
        .name("spate-bench")
        .on_all_shards(move || {
            let shard = next_shard.fetch_add(1, Ordering::Relaxed);
            let template = template.clone();
            async move { shard_load(template, shard).await }
        })
        .map_err(|e| BenchError::Runtime(e.to_string()))?;
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(handles.join_all());
    });
    let progress = Progress::new();
    let mut stopped_ns = None;
    let outcomes = loop {
        if live.stopping() && stopped_ns.is_none() {
            stopped_ns = Some(clock.now_ns());
        }
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(outcomes) => break outcomes,
            Err(mpsc::RecvTimeoutError::Timeout) => progress.show(live, clock, end_ns),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(BenchError::Runtime(
                    "the load generator's threads died".into(),
                ))
            }
        }
    };
    progress.finish();
    let mut tallies = Tallies {
        produce: None,
        consume: None,
    };
    for outcome in outcomes {
        let (produce, consume) = outcome.map_err(|e| BenchError::Runtime(e.to_string()))?;
        merge_into(&mut tallies.produce, produce, ProduceTally::merge);
        merge_into(&mut tallies.consume, consume, ConsumeTally::merge);
    }
    Ok((tallies, stopped_ns))
}

fn merge_into<T>(all: &mut Option<T>, one: Option<T>, merge: fn(&mut T, &T)) {
    match (all.as_mut(), one) {
        (Some(all), Some(one)) => merge(all, &one),
        (None, Some(one)) => *all = Some(one),
        (_, None) => {}
    }
}

/// A one-line progress display on a terminal; nothing otherwise.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new() -> Progress {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress { bar }
    }

    fn show(&self, live: &Live, clock: Clock, end_ns: u64) {
        let now = clock.now_ns();
        let left = end_ns.saturating_sub(now) as f64 / 1e9;
        let phase = if live.stopping() {
            "stopping, draining".to_string()
        } else if left > 0.0 {
            format!("{left:.0} s left")
        } else {
            "draining".to_string()
        };
        self.bar.set_message(format!(
            "sent {} acked {} failed {} consumed {} ({:.1} MB) | {phase}",
            Live::get(&live.sent),
            Live::get(&live.acknowledged),
            Live::get(&live.failed),
            Live::get(&live.consumed),
            Live::get(&live.consumed_bytes) as f64 / 1e6,
        ));
        self.bar.tick();
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
