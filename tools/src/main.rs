//! # spate
//!
//! The one command-line tool of Spate. `spate serve` runs a broker; the client
//! subcommands (topic, produce, consume, group, log, cluster, bench) join it as the
//! broker gains the APIs they need.

mod serve;

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
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    if let Err(message) = outcome {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
