//! # spate-bench
//!
//! Spate's benchmark harness. Today it measures the storage engine
//! (`engine-append`); the Kafka-protocol load generator joins it with the broker.
//! Every report compares against a baseline measured in the same run on the same
//! machine (raw disk, loopback), because absolute numbers on a shared machine mean
//! little while ratios carry over.

mod engine_append;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "spate-bench", about = "Spate's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Durable append throughput of the engine vs raw O_DIRECT bandwidth, same run.
    EngineAppend {
        /// Directory on the disk to measure (files are removed afterwards).
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// Seconds per configuration.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Batch sizes in bytes.
        #[arg(long, value_delimiter = ',', default_values_t = [1_048_576usize, 16_384])]
        batch_bytes: Vec<usize>,
        /// Partition counts on the one shard.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
        partitions: Vec<usize>,
        /// Bytes in flight per partition (divided by the batch size to get appenders).
        #[arg(long, default_value_t = 8 * 1024 * 1024)]
        inflight_bytes: usize,
        /// Block size of the raw O_DIRECT baseline.
        #[arg(long, default_value_t = 1_048_576)]
        raw_block_bytes: usize,
        /// Rounds; each measures the baselines and the engine back to back, and the
        /// report gives medians of the per-round ratios (the disk drifts between rounds).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::EngineAppend {
            dir,
            seconds,
            batch_bytes,
            partitions,
            inflight_bytes,
            raw_block_bytes,
            rounds,
        } => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: cannot create {}: {e}", dir.display());
                std::process::exit(2);
            }
            if batch_bytes
                .iter()
                .any(|b| !(1024..=16 * 1024 * 1024).contains(b))
            {
                eprintln!("error: --batch-bytes must be between 1024 and 16777216");
                std::process::exit(2);
            }
            let duration = Duration::from_secs(seconds.max(1));
            let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
                .name("bench")
                .make()
                .expect("executor");
            let plan = engine_append::Plan {
                dir,
                duration,
                batch_bytes,
                partitions,
                inflight_bytes,
                raw_block_bytes,
                rounds,
            };
            let report = executor.run(async move { engine_append::run(plan).await });
            print!("{report}");
        }
    }
}
