//! `c2i compare`: several runs' reports side by side, with the speedup of c2i over
//! LASER per task (see `c2i_stages::export::compare` for what each column counts).

use super::Output;
use anyhow::Result;
use c2i_stages::export::compare::{comparison, summarize};
use c2i_stages::export::schema::Report;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output directories of runs (each holding report.json), or report.json files.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let mut runs = Vec::with_capacity(args.runs.len());
    for p in &args.runs {
        let report = Report::read(p)?;
        runs.push(summarize(&p.display().to_string(), &report));
    }
    let json = serde_json::json!({
        "runs": runs.iter().map(|s| {
            serde_json::json!({
                "run": s.label, "task": s.task, "mode": s.mode,
                "selection_metric": s.selection_metric, "winner": s.winner,
                "candidates": s.candidates, "search_seconds": s.search_seconds,
                "search_cached": s.search_cached, "heldout_seconds": s.heldout_seconds,
                "seconds": s.total_seconds,
                "heldout_accuracy": s.best_heldout.as_ref().map(|f| f.accuracy),
                "baseline_heldout_accuracy": s.baseline_heldout.as_ref().map(|f| f.accuracy),
            })
        }).collect::<Vec<_>>()
    });
    out.result(comparison(&runs).trim_end(), &json);
    Ok(())
}
