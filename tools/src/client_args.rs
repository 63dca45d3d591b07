//! What every client subcommand shares: which broker to talk to, how to print, and how
//! Kafka's errors read to a person.

use std::time::Duration;

use clap::{Args, ValueEnum};
pub use spate_net::client::errors::failure;
use spate_net::client::Client;

/// How long a request may take before the command gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Text,
    /// One JSON document, for scripts; its fields are listed in each command's help.
    Json,
}

/// Connection and output options of every client subcommand.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Broker to talk to, `host:port`; of a comma-separated list, the first is used.
    #[arg(
        short = 'b',
        long,
        env = "SPATE_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

impl ClientArgs {
    /// A connection to the first broker listed.
    pub fn connect(&self) -> Result<Client, String> {
        let first = self.brokers.split(',').next().unwrap_or_default().trim();
        connect_to(first)
    }

    /// A connection to the cluster's controller, which topic administration needs in
    /// a cluster (a single broker is its own controller): the first broker listed is
    /// asked where the controller is.
    pub fn connect_controller(&self) -> Result<Client, String> {
        let mut client = self.connect()?;
        let metadata = spate_net::client::lookup::metadata_of(&mut client, &[])?;
        let addresses = spate_net::client::lookup::broker_addresses(&metadata);
        match addresses.get(&metadata.controller_id.0) {
            Some(address) => {
                if address == client.address() {
                    Ok(client)
                } else {
                    client.connect_like(address).map_err(|e| e.to_string())
                }
            }
            // No controller known (an election under way): the broker answers
            // NOT_CONTROLLER, which says so.
            None => Ok(client),
        }
    }
}

/// A connection to `address`.
pub fn connect_to(address: &str) -> Result<Client, String> {
    Client::connect(address, "spate-cli", REQUEST_TIMEOUT).map_err(|e| e.to_string())
}

/// Splits `key=value`; `what` names it in the error (config, header).
pub fn key_value(text: &str, what: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid {what} \"{text}\": expected key=value")),
    }
}

/// Prints one line on stdout. A closed stdout (`spate … | head`) ends the command
/// quietly, as it does for other Unix tools, instead of a panic.
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Reports one outcome per named thing (`kind`: topic, group), `(name, error)`, and
/// fails if any failed: with its error when there is one thing, else with a count (each
/// error printed first). JSON: `[{kind: name, "error": message or null}]`.
pub fn report(
    format: Format,
    done: &str,
    kind: &str,
    outcomes: &[(String, Option<String>)],
) -> Result<(), String> {
    let single = outcomes.len() == 1;
    match format {
        Format::Json => print_json(&serde_json::json!(outcomes
            .iter()
            .map(|(name, error)| serde_json::json!({kind: name, "error": error}))
            .collect::<Vec<_>>())),
        Format::Text => {
            for (name, error) in outcomes {
                match error {
                    None => say(format!("{done} {name}")),
                    Some(e) if !single => eprintln!("error: {e}"),
                    Some(_) => {}
                }
            }
        }
    }
    let failed: Vec<&String> = outcomes.iter().filter_map(|(_, e)| e.as_ref()).collect();
    match failed.as_slice() {
        [] => Ok(()),
        [only] if single => Err((*only).clone()),
        _ => Err(format!(
            "{} of {} {kind}s failed",
            failed.len(),
            outcomes.len()
        )),
    }
}

/// Prints rows as columns aligned under `header`.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say(padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints a JSON document on one line.
pub fn print_json(value: &serde_json::Value) {
    say(value);
}
