//! `c2i export-grads`: the gradient pass on a data set, written as safetensors with
//! Hugging Face tensor names so any framework can check it.

use super::Output;
use crate::resources::{mib, peak_rss_bytes};
use anyhow::{Context, Result};
use c2i_stages::data::split::{selection_samples_with, SampleSize, SampleSpec};
use c2i_stages::data::{self, Task};
use c2i_stages::grad::{gradient_pass, GradOptions, LossSample};
use c2i_stages::model::tokenizer::{encode, encode_prompt};
use c2i_stages::model::weights::save_safetensors;
use c2i_stages::model::Weights;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
#[command(
    after_help = "DATA FORMAT: --data takes the rows of the task (--task): a built-in \
task's file as shipped in data/ (data/fever/laser_fever.jsonl, \
data/bigbench/epistemic_reasoning/task.json, data/bbh/navigate.json, ...), or the rows of \
your own task file (JSONL, CSV, Parquet, BigBench task.json, BIG-Bench-Hard JSON; see `c2i \
task check`). The calibration rows are drawn from the \
task's selection split (the first 20% of the rows unless the task sets selection_share), \
disjoint from the evaluation sample of the same --eval-samples/--eval-seed."
)]
pub struct Args {
    /// A `.gguf` file, a Hugging Face directory (config.json, tokenizer.json,
    /// *.safetensors), or a model c2i fetches: smollm2, qwen2.5-0.5b, gemma3-270m,
    /// qwen2.5-1.5b.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// The data file (see DATA FORMAT below).
    #[arg(long)]
    pub data: PathBuf,
    /// A built-in task (epistemic_reasoning, qa_wikidata, fever, truthfulqa, hotpotqa,
    /// bbh_<task>) or a task file. Inferred from a shipped file's name or place
    /// (laser_fever.jsonl, bigbench/qa_wikidata/task.json) when omitted.
    #[arg(long)]
    pub task: Option<String>,
    /// Number of calibration samples.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Seed of the calibration sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Size of the evaluation sample the calibration rows must avoid.
    #[arg(long, default_value_t = 100)]
    pub eval_samples: usize,
    /// Seed of that evaluation sample.
    #[arg(long, default_value_t = 1)]
    pub eval_seed: u64,
    /// Samples per forward/backward (bounds memory).
    #[arg(long, default_value_t = 8)]
    pub micro_batch: usize,
    /// Output file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

/// The model path: a file or directory, or a model c2i fetches (`smollm2`, ...).
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    c2i_engine::runner::resolve_model(model).map_err(|e| anyhow::anyhow!("--model {e}"))
}

/// The task named (a built-in name or a task file), or the built-in one whose LASER
/// file name `path` has.
pub fn resolve_task(task: Option<&str>, path: &Path) -> Result<Task> {
    if let Some(t) = task {
        return Ok(Task::resolve(t, Path::new(""))?);
    }
    Task::builtin_for_file(path).with_context(|| {
        format!(
            "{}: cannot tell the task from the file name; pass --task",
            path.display()
        )
    })
}

/// Prompt and gold-answer tokens of some examples.
pub fn loss_samples(
    tokenizer: &tokenizers::Tokenizer,
    examples: &[&data::Example],
) -> Result<Vec<LossSample>> {
    examples
        .iter()
        .map(|e| {
            Ok(LossSample {
                prompt: encode_prompt(tokenizer, &e.prompt)?,
                answer: encode(tokenizer, &e.answer.gold_continuation())?,
            })
        })
        .collect()
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    let started = Instant::now();
    let model_path = resolve_model(&args.model)?;
    let task = resolve_task(args.task.as_deref(), &args.data)?;
    let loaded_data = data::load(&task, &args.data)?;
    let picked = selection_samples_with(
        loaded_data.len(),
        task.selection_share,
        SampleSpec::new(SampleSize::N(args.eval_samples), args.eval_seed),
        SampleSpec::new(SampleSize::N(args.samples), args.seed),
    )
    .with_context(|| format!("sampling {}", args.data.display()))?;
    let loaded = Weights::load(&model_path)?;
    let template = c2i_stages::model::chat::chat_template(&model_path)?;
    let seen = loaded_data.for_model(template.as_deref(), &model_path.display().to_string())?;
    let examples = &seen.examples;
    let chosen: Vec<&data::Example> = picked.calibration.iter().map(|&r| &examples[r]).collect();
    let samples = loss_samples(&loaded.tokenizer, &chosen)?;
    let tokens: usize = samples
        .iter()
        .map(|s| s.prompt.len() + s.answer.len())
        .sum();
    tracing::info!(
        samples = samples.len(),
        tokens,
        model = %model_path.display(),
        "gradient pass over {task}"
    );
    let bar = out.progress(samples.len() as u64, "gradient pass");
    let pass_start = Instant::now();
    let grads = gradient_pass(
        &loaded.weights,
        &samples,
        &[],
        &GradOptions {
            micro_batch: args.micro_batch,
        },
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let pass_seconds = pass_start.elapsed().as_secs_f64();
    let meta = BTreeMap::from([
        ("loss".to_string(), format!("{}", grads.loss)),
        ("task".to_string(), task.to_string()),
        ("samples".to_string(), samples.len().to_string()),
        ("seed".to_string(), args.seed.to_string()),
        (
            "rows".to_string(),
            serde_json::to_string(&picked.calibration)?,
        ),
        ("model".to_string(), model_path.display().to_string()),
        (
            "loss_definition".to_string(),
            "mean over samples of the summed NLL of the gold answer tokens".to_string(),
        ),
    ]);
    let (count, loss, answer_tokens) = (grads.grads.len(), grads.loss, grads.answer_tokens);
    save_safetensors(grads.into_named(), &meta, &args.out)?;
    let peak = peak_rss_bytes();
    let text = format!(
        "wrote {} gradients to {}\nloss {:.6} over {} samples ({} tokens, {} answer tokens)\ngradient pass {:.1} s, total {:.1} s, peak RSS {}",
        count,
        args.out.display(),
        loss,
        samples.len(),
        tokens,
        answer_tokens,
        pass_seconds,
        started.elapsed().as_secs_f64(),
        peak.map(mib).unwrap_or_else(|| "unknown".into())
    );
    out.result(
        &text,
        &serde_json::json!({
            "out": args.out,
            "matrices": count,
            "loss": loss,
            "samples": samples.len(),
            "tokens": tokens,
            "gradient_seconds": pass_seconds,
            "total_seconds": started.elapsed().as_secs_f64(),
            "peak_rss_bytes": peak,
        }),
    );
    Ok(())
}
