//! `c2i study PIPELINE`: do the score rules predict the gains that evaluating every
//! candidate measures? Runs the study's variants of the pipeline in this process (see
//! `c2i_engine::study`) and writes study.json, study.md and one scatter per rule.

use super::pipeline::{context, executor};
use super::Output;
use crate::resources::{mib, peak_rss_bytes};
use anyhow::Result;
use c2i_engine::spec::{ExecutorKind, Pipeline};
use c2i_engine::study::{
    default_out, rerender, run as run_study, StudyOptions, DEFAULT_CALIBRATION, DEFAULT_EVALUATION,
    DEFAULT_ORACLE_KEEP,
};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file (TOML); its search.mode must be "gradient".
    pub pipeline: PathBuf,
    /// The oracle's fractions of rank kept (K = 1), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "RHO,...", default_values_t = DEFAULT_ORACLE_KEEP.to_vec())]
    pub oracle_keep: Vec<f64>,
    /// Calibration (gradient pass) sample sizes, comma-separated; capped at what the
    /// selection split leaves beside the evaluation sample.
    #[arg(long, value_delimiter = ',', value_name = "N,...", default_values_t = DEFAULT_CALIBRATION.to_vec())]
    pub calibration: Vec<usize>,
    /// Evaluation (selection) sample sizes, comma-separated; capped likewise.
    #[arg(long, value_delimiter = ',', value_name = "N,...", default_values_t = DEFAULT_EVALUATION.to_vec())]
    pub evaluation: Vec<usize>,
    /// The layers the oracle evaluates and the rules score: `all`, `last_third` or a
    /// TOML list such as `[28, 29]`.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Output directory (default out/study/STEM, STEM the pipeline file's name).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cache directory (default: [cache] dir of the pipeline, else $C2I_HOME/cache).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Override a key of every variant, TOML syntax (as `c2i run --set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where stage instances are computed (default [run] executor).
    #[arg(long)]
    pub executor: Option<ExecutorKind>,
    /// Worker processes of the pool executor.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Evaluate nothing: re-analyse the study.json already in the output directory
    /// (written by an earlier c2i) with this c2i's analysis and rewrite study.md,
    /// study.json and the scatters. The measured figures stay those of that run.
    #[arg(long)]
    pub rerender: bool,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let opts = StudyOptions {
        out: args
            .out
            .clone()
            .unwrap_or_else(|| default_out(&args.pipeline)),
        pipeline: args.pipeline.clone(),
        set: args.set.clone(),
        oracle_keep: args.oracle_keep.clone(),
        layers: args.layers.clone(),
        calibration: args.calibration.clone(),
        evaluation: args.evaluation.clone(),
    };
    // Bad flags fail before the pipeline is even read.
    opts.validate()?;
    let started = std::time::Instant::now();
    let done = if args.rerender {
        rerender(&opts.out)?
    } else {
        let p = Pipeline::load(&args.pipeline, &args.set)?;
        let (ctx, config) = context(&p, args.cache.as_deref(), None, false, out)?;
        let mut exec = executor(&p, args.executor, args.jobs, &ctx, config)?;
        let quiet = out.quiet || out.json;
        let mut say = |line: &str| {
            if !quiet {
                eprintln!("{line}");
            }
        };
        run_study(&ctx, exec.as_mut(), &opts, &mut say)?
    };
    let s = &done.study;
    let mut text = format!(
        "study of {} ({}): {} oracle candidates, {} rules, {:.1} s wall",
        args.pipeline.display(),
        s.header.task,
        s.oracle.entries.len(),
        s.rules.len(),
        started.elapsed().as_secs_f64()
    );
    for r in &s.rules {
        text += &format!(
            "\n  {}: Spearman vs -Δlog-loss {}, vs Δaccuracy {}; oracle top-10 in top-3 {}, in top-10 {}; top-{} holds the oracle's best: {}",
            r.rule,
            r.spearman_entries_log_loss
                .map_or("-".into(), |x| format!("{x:+.3}")),
            r.spearman_entries_accuracy
                .map_or("-".into(), |x| format!("{x:+.3}")),
            r.recall_top10_in_top3
                .map_or("-".into(), |x| format!("{x:.2}")),
            r.recall_top10_in_top10
                .map_or("-".into(), |x| format!("{x:.2}")),
            r.top_k,
            if r.holds_best { "yes" } else { "no" }
        );
    }
    for f in &done.files {
        text += &format!("\n  wrote {}", f.display());
    }
    text += &format!(
        "\n  peak RSS {}",
        peak_rss_bytes().map(mib).unwrap_or_default()
    );
    out.result(
        &text,
        &serde_json::json!({
            "files": done.files,
            "seconds": started.elapsed().as_secs_f64(),
            "rules": s.rules.iter().map(|r| serde_json::json!({
                "rule": r.rule,
                "spearman_entries_log_loss": r.spearman_entries_log_loss,
                "spearman_entries_accuracy": r.spearman_entries_accuracy,
                "recall_top10_in_top3": r.recall_top10_in_top3,
                "recall_top10_in_top10": r.recall_top10_in_top10,
                "holds_best": r.holds_best,
            })).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}
