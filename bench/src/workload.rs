//! A workload: every parameter of a run, resolved from flags over a preset over the
//! defaults, checked once, and written whole into the results so a run can be repeated.
//!
//! Presets reproduce published workloads so results can be set beside published numbers:
//! - `omb-1k`: OpenMessaging Benchmark's `1-topic-16-partitions-1kb` with its Kafka
//!   driver's producer settings: 1 topic, 16 partitions, 1 KiB records, one producer
//!   at 50,000 records/s, one consumer, acks=all, linger 1 ms, batch up to 1 MiB.
//! - `linkedin-2014`: the single-producer test of LinkedIn's "Benchmarking Apache Kafka:
//!   2 Million Writes Per Second (On Three Cheap Machines)" (2014): one producer thread,
//!   100-byte records, 6 partitions, acks=1, batch.size 8196, as fast as it goes.

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::limits::{BATCH_BYTES_MAX, CLIENTS_MAX, IN_FLIGHT_MAX, PARTITIONS_MAX, TOPICS_MAX};
use crate::payload::{Filler, KeyDist, SizeDist};
use crate::schedule::Pace;

/// Record compression, as the producer applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    pub fn engine(self) -> spate_engine::batch::Compression {
        use spate_engine::batch::Compression;
        match self {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

/// Named workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// OpenMessaging Benchmark 1 topic / 16 partitions / 1 KiB at 50k records/s.
    #[value(name = "omb-1k")]
    Omb1k,
    /// LinkedIn 2014: one producer, 100-byte records, 6 partitions, acks=1, flat out.
    #[value(name = "linkedin-2014")]
    Linkedin2014,
}

/// The workload flags; each overrides the preset, which overrides the defaults.
#[derive(Args, Debug, Clone, Default)]
pub struct WorkloadArgs {
    /// Start from a published workload (flags given override its values).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Topics to use, named PREFIX-0, PREFIX-1, …; created if missing [default: 1].
    #[arg(long)]
    pub topics: Option<u32>,
    /// Name prefix of the topics [default: spate-bench].
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Partitions per topic [default: 16].
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Replication factor of created topics [default: 1].
    #[arg(long)]
    pub replication_factor: Option<i16>,
    /// Record value bytes: N, or MIN..MAX for uniform sizes [default: 1024].
    #[arg(long)]
    pub record_size: Option<SizeDist>,
    /// Keys: none, uniform:N or zipf:N:EXPONENT [default: none].
    #[arg(long)]
    pub keys: Option<KeyDist>,
    /// Value filler: random (incompressible) or text [default: random].
    #[arg(long, value_enum)]
    pub payload: Option<Filler>,
    /// Batch size in bytes before compression (Kafka's batch.size) [default: 16384].
    #[arg(long)]
    pub batch_bytes: Option<usize>,
    /// Milliseconds a batch may wait to fill (linger.ms) [default: 1].
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Compression [default: none].
    #[arg(long, value_enum)]
    pub compression: Option<Codec>,
    /// Acknowledgements: 0, 1 or -1 (all) [default: -1].
    #[arg(long, allow_hyphen_values = true)]
    pub acks: Option<i16>,
    /// Idempotent producers (producer id, epoch and sequence numbers).
    #[arg(long)]
    pub idempotent: Option<bool>,
    /// Produce requests in flight per connection [default: 5].
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Producer tasks [default: 1].
    #[arg(long)]
    pub producers: Option<u32>,
    /// Consumer tasks (consume and e2e modes) [default: 1].
    #[arg(long)]
    pub consumers: Option<u32>,
    /// Consumers join one consumer group and take the partitions its range assignor
    /// gives them, instead of splitting them among themselves [default: false].
    #[arg(long)]
    pub group: Option<bool>,
    /// Total records per second over all producers; 0 runs flat out [default: 0, or the
    /// preset's rate].
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of measurement [default: 30].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of warm-up before measuring, excluded from the results [default: 5].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Cores of this machine the load generator runs on [default: all].
    #[arg(long)]
    pub cores: Option<usize>,
}

/// A resolved, checked workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub preset: Option<Preset>,
    pub topics: u32,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub record_size: SizeDist,
    pub keys: KeyDist,
    pub payload: Filler,
    pub batch_bytes: usize,
    pub linger_ms: u64,
    pub compression: Codec,
    pub acks: i16,
    pub idempotent: bool,
    pub max_in_flight: usize,
    pub producers: u32,
    pub consumers: u32,
    /// Consumers as members of one group (else direct assignment).
    pub group: bool,
    /// Records per second over all producers; `None` is flat out.
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub cores: usize,
}

impl Workload {
    pub fn resolve(args: &WorkloadArgs) -> Result<Workload> {
        let base = match args.preset {
            Some(preset) => Workload::preset(preset),
            None => Workload::default_for(None),
        };
        let rate = match args.rate {
            Some(0.0) => None,
            Some(r) => Some(r),
            None => base.rate,
        };
        let workload = Workload {
            preset: args.preset,
            topics: args.topics.unwrap_or(base.topics),
            topic_prefix: args.topic_prefix.clone().unwrap_or(base.topic_prefix),
            partitions: args.partitions.unwrap_or(base.partitions),
            replication_factor: args.replication_factor.unwrap_or(base.replication_factor),
            record_size: args.record_size.unwrap_or(base.record_size),
            keys: args.keys.unwrap_or(base.keys),
            payload: args.payload.unwrap_or(base.payload),
            batch_bytes: args.batch_bytes.unwrap_or(base.batch_bytes),
            linger_ms: args.linger_ms.unwrap_or(base.linger_ms),
            compression: args.compression.unwrap_or(base.compression),
            acks: args.acks.unwrap_or(base.acks),
            idempotent: args.idempotent.unwrap_or(base.idempotent),
            max_in_flight: args.max_in_flight.unwrap_or(base.max_in_flight),
            producers: args.producers.unwrap_or(base.producers),
            consumers: args.consumers.unwrap_or(base.consumers),
            group: args.group.unwrap_or(base.group),
            rate,
            duration_s: args.duration.unwrap_or(base.duration_s),
            warmup_s: args.warmup.unwrap_or(base.warmup_s),
            cores: args.cores.unwrap_or(base.cores),
        };
        workload.check()?;
        Ok(workload)
    }

    fn default_for(preset: Option<Preset>) -> Workload {
        Workload {
            preset,
            topics: 1,
            topic_prefix: "spate-bench".into(),
            partitions: 16,
            replication_factor: 1,
            record_size: SizeDist::Fixed(1024),
            keys: KeyDist::None,
            payload: Filler::Random,
            batch_bytes: 16 * 1024,
            linger_ms: 1,
            compression: Codec::None,
            acks: -1,
            idempotent: false,
            max_in_flight: 5,
            producers: 1,
            consumers: 1,
            group: false,
            rate: None,
            duration_s: 30.0,
            warmup_s: 5.0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub fn preset(preset: Preset) -> Workload {
        let base = Workload::default_for(Some(preset));
        match preset {
            Preset::Omb1k => Workload {
                topic_prefix: "omb-1k".into(),
                partitions: 16,
                record_size: SizeDist::Fixed(1024),
                batch_bytes: 1024 * 1024,
                linger_ms: 1,
                acks: -1,
                rate: Some(50_000.0),
                ..base
            },
            Preset::Linkedin2014 => Workload {
                topic_prefix: "linkedin-2014".into(),
                partitions: 6,
                record_size: SizeDist::Fixed(100),
                batch_bytes: 8196,
                linger_ms: 0,
                acks: 1,
                consumers: 0,
                rate: None,
                ..base
            },
        }
    }

    fn check(&self) -> Result<()> {
        let usage = |m: String| Err(BenchError::Usage(m));
        if !(1..=TOPICS_MAX).contains(&self.topics) {
            return usage(format!("--topics must be 1..={TOPICS_MAX}"));
        }
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            return usage(format!("--partitions must be 1..={PARTITIONS_MAX}"));
        }
        if self.topic_prefix.is_empty()
            || self.topic_prefix.len() > 200
            || !self
                .topic_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return usage("--topic-prefix must be 1 to 200 of [a-zA-Z0-9._-]".into());
        }
        if self.replication_factor < 1 {
            return usage("--replication-factor must be at least 1".into());
        }
        if !(1024..=BATCH_BYTES_MAX).contains(&self.batch_bytes) {
            return usage(format!("--batch-bytes must be 1024..={BATCH_BYTES_MAX}"));
        }
        if self.linger_ms > 60_000 {
            return usage("--linger-ms must be at most 60000".into());
        }
        if ![0, 1, -1].contains(&self.acks) {
            return usage("--acks must be 0, 1 or -1 (all)".into());
        }
        if self.idempotent && self.acks != -1 {
            return usage("--idempotent needs --acks -1, as Kafka's producers require".into());
        }
        if !(1..=IN_FLIGHT_MAX).contains(&self.max_in_flight) {
            return usage(format!("--max-in-flight must be 1..={IN_FLIGHT_MAX}"));
        }
        if self.idempotent && self.max_in_flight > 5 {
            return usage("--idempotent allows at most 5 requests in flight".into());
        }
        if self.producers > CLIENTS_MAX || self.consumers > CLIENTS_MAX {
            return usage(format!(
                "at most {CLIENTS_MAX} producers and {CLIENTS_MAX} consumers"
            ));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return usage(
                    "--rate must be a positive number of records a second, or 0 for flat out"
                        .into(),
                );
            }
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0 && self.duration_s <= 86_400.0) {
            return usage("--duration must be more than 0 and at most 86400 seconds".into());
        }
        if !(self.warmup_s.is_finite() && (0.0..=3_600.0).contains(&self.warmup_s)) {
            return usage("--warmup must be 0..=3600 seconds".into());
        }
        if self.cores == 0 {
            return usage("--cores must be at least 1".into());
        }
        Ok(())
    }

    /// Each producer's pace: the total rate shared evenly.
    pub fn producer_pace(&self) -> Pace {
        match self.rate {
            None => Pace::Max,
            Some(rate) => Pace::Rate(rate / f64::from(self.producers.max(1))),
        }
    }

    pub fn topic_names(&self) -> Vec<String> {
        (0..self.topics)
            .map(|t| format!("{}-{t}", self.topic_prefix))
            .collect()
    }

    /// One line naming the workload, for tables and chart legends.
    pub fn describe(&self) -> String {
        let rate = match self.rate {
            None => "flat out".to_string(),
            Some(r) => format!("{r:.0} rec/s"),
        };
        format!(
            "{}×{}p, {} B, acks={}, batch {} KiB, linger {} ms, {:?}, {}p/{}c, {rate}",
            self.topics,
            self.partitions,
            self.record_size,
            self.acks,
            self.batch_bytes / 1024,
            self.linger_ms,
            self.compression,
            self.producers,
            self.consumers
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_preset_which_overrides_the_defaults() {
        let args = WorkloadArgs {
            preset: Some(Preset::Omb1k),
            partitions: Some(4),
            ..WorkloadArgs::default()
        };
        let w = Workload::resolve(&args).unwrap();
        assert_eq!(w.partitions, 4);
        assert_eq!(w.rate, Some(50_000.0));
        assert_eq!(w.batch_bytes, 1024 * 1024);
        let w = Workload::resolve(&WorkloadArgs::default()).unwrap();
        assert_eq!((w.partitions, w.rate, w.acks), (16, None, -1));
        let args = WorkloadArgs {
            preset: Some(Preset::Linkedin2014),
            rate: Some(0.0),
            ..WorkloadArgs::default()
        };
        let w = Workload::resolve(&args).unwrap();
        assert_eq!(
            (w.partitions, w.acks, w.record_size),
            (6, 1, SizeDist::Fixed(100))
        );
    }

    #[test]
    fn nonsense_is_refused_with_the_flag_named() {
        let bad = |args: WorkloadArgs, flag: &str| {
            let e = Workload::resolve(&args).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        };
        bad(
            WorkloadArgs {
                partitions: Some(0),
                ..Default::default()
            },
            "--partitions",
        );
        bad(
            WorkloadArgs {
                acks: Some(2),
                ..Default::default()
            },
            "--acks",
        );
        bad(
            WorkloadArgs {
                rate: Some(-5.0),
                ..Default::default()
            },
            "--rate",
        );
        bad(
            WorkloadArgs {
                rate: Some(f64::NAN),
                ..Default::default()
            },
            "--rate",
        );
        bad(
            WorkloadArgs {
                topic_prefix: Some("a/b".into()),
                ..Default::default()
            },
            "--topic-prefix",
        );
        bad(
            WorkloadArgs {
                idempotent: Some(true),
                acks: Some(1),
                ..Default::default()
            },
            "--idempotent",
        );
        bad(
            WorkloadArgs {
                batch_bytes: Some(10),
                ..Default::default()
            },
            "--batch-bytes",
        );
        bad(
            WorkloadArgs {
                duration: Some(0.0),
                ..Default::default()
            },
            "--duration",
        );
    }

    #[test]
    fn the_rate_is_shared_among_producers() {
        let args = WorkloadArgs {
            rate: Some(1000.0),
            producers: Some(4),
            ..Default::default()
        };
        assert_eq!(
            Workload::resolve(&args).unwrap().producer_pace(),
            Pace::Rate(250.0)
        );
    }
}
