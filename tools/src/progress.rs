//! Progress bars for long runs: drawn on stderr when it is a terminal, absent when it is
//! not (piped or redirected output stays clean).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting to `total` in `unit`s (`bytes` shows sizes), hidden off a terminal.
pub fn bar(total: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if unit == "bytes" {
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}".to_string()
    } else {
        format!("{{bar:40}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}")
    };
    let style =
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(total).with_style(style)
}
