//! The subcommands of the `c2i` binary.

pub mod cache;
pub mod compare;
pub mod export_grads;
pub mod fetch;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod pipeline;
pub mod study;
pub mod task;
pub mod worker;

use indicatif::{ProgressBar, ProgressStyle};

/// How a command reports: human text, JSON, or nothing but errors.
pub struct Output {
    pub quiet: bool,
    pub json: bool,
}

impl Output {
    /// A progress bar on stderr, hidden with --quiet or --json.
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet || self.json {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>14} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }

    /// Prints a result: `json` as one line with --json, else `text` unless --quiet.
    pub fn result(&self, text: &str, json: &serde_json::Value) {
        if self.json {
            println!("{json}");
        } else if !self.quiet {
            println!("{text}");
        }
    }
}
