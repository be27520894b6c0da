//! `c2i compare`: several runs' reports side by side, with the speedup of c2i over
//! LASER per task (see `c2i_stages::export::compare` for what each column counts).

use super::Output;
use anyhow::{bail, Context, Result};
use c2i_stages::export::compare::{comparison, summarize};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Output directories of runs (each holding report.json), or report.json files.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
}

fn report_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("report.json")
    } else {
        p.to_path_buf()
    }
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let mut runs = Vec::with_capacity(args.runs.len());
    for p in &args.runs {
        let file = report_path(p);
        let bytes = std::fs::read(&file).with_context(|| {
            format!(
                "reading {}: expected a run's output directory or its report.json",
                file.display()
            )
        })?;
        let report: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not valid JSON", file.display()))?;
        if !report.is_object() || report.get("task").is_none() {
            bail!(
                "{}: not a c2i report: expected a JSON object with a `task` field",
                file.display()
            );
        }
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
                "heldout_accuracy": s.best_heldout.as_ref().and_then(|f| f.accuracy),
                "baseline_heldout_accuracy": s.baseline_heldout.as_ref().and_then(|f| f.accuracy),
            })
        }).collect::<Vec<_>>()
    });
    out.result(comparison(&runs).trim_end(), &json);
    Ok(())
}
