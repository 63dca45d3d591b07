//! # spate
//!
//! The one command-line tool of Spate. `spate serve` runs a broker; `topic`, `group` and
//! `cluster` talk to any Kafka-compatible broker through `spate_net::client`; `log`
//! reads a data directory offline; `produce` and `consume` are the console producer and
//! consumer. `bench` is the benchmark harness of `spate_bench`.

mod client_args;
mod cluster;
mod consume;
mod group;
mod log;
mod produce;
mod progress;
mod serve;
mod topic;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: spate_net::alloc::ReservingAllocator = spate_net::alloc::ReservingAllocator;

#[derive(Parser, Debug)]
#[command(
    name = "spate",
    version,
    about = "Spate: a Kafka-compatible streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker.
    Serve(serve::ServeArgs),
    /// Topics: create, list, describe, delete, alter configs, add partitions.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Print records of topics, alone or as a member of a consumer group.
    Consume(consume::ConsumeArgs),
    /// Produce one record per line of stdin or a file.
    Produce(produce::ProduceArgs),
    /// Offline inspection: decode segment files, verify a data directory.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Consumer groups: list, describe with lag, delete, reset offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// The cluster: its id, brokers, controller and supported API versions.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Benchmarks: load against any Kafka broker, machine ceilings, comparisons, charts.
    #[command(subcommand)]
    Bench(spate_bench::BenchCommand),
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Cluster id, brokers, controller, and the API versions the broker accepts.
    Info(client_args::ClientArgs),
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Group(command) => group::run(command),
        Command::Topic(command) => topic::run(command),
        Command::Log(command) => log::run(command),
        Command::Produce(args) => produce::run(&args),
        Command::Consume(args) => consume::run(&args),
        Command::Cluster(ClusterCommand::Info(args)) => cluster::info(&args),
        Command::Bench(command) => spate_bench::cli::run(command).map_err(|e| e.to_string()),
    };
    if let Err(message) = outcome {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
