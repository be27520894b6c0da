//! Baseline accuracy of the unmodified SmolLM2-135M-Instruct on the five LASER tasks.
//!
//! `cargo run --release -p c2i-stages --example baseline [-- OPTIONS]`
//!
//! For each task it evaluates the model on the 100-row evaluation sample of the
//! selection split (`selection_samples(n, eval = (100, seed 1), calibration = (100,
//! seed 0)).evaluation`, the pipeline's default) and, with `--heldout all|N`, on the
//! held-out split (all of it, or N rows drawn with seed 1), and prints a markdown
//! table: task, part, samples, accuracy, balanced accuracy and majority-class rate
//! (classification), log-loss (mean summed gold log-prob), seconds, and notes
//! (predicted-class histogram; exact match, token F1, empty and prompt-copy rates for
//! generation). Rows are printed as each evaluation finishes.
//!
//! Options:
//! - `--heldout all|N`: also evaluate the held-out split;
//! - `--no-selection`: skip the 100-row selection sample;
//! - `--tasks a,b,...`: only these tasks (`epistemic_reasoning`, `qa_wikidata`,
//!   `fever`, `truthfulqa`, `hotpotqa`; `classification` / `generation` select a kind);
//! - `--micro-batch N`: samples per forward (default 16).
//!
//! Data: the repository's `data/` (the built-in tasks' shipped files).
//! Model: `$C2I_SMOLLM2_GGUF`, else the fetched asset.

use c2i_stages::data::{
    load, sample, selection_samples, SampleSize, SampleSpec, Split, Task, TaskKind,
};
use c2i_stages::eval::{evaluate, EvalOptions, EvalResult, EvalSet, TaskMetrics};
use c2i_stages::model::{Decoder, Weights};
use std::error::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error>>;

struct Args {
    heldout: Option<SampleSize>,
    selection: bool,
    tasks: Vec<Task>,
    micro_batch: usize,
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        heldout: None,
        selection: true,
        tasks: builtins(),
        micro_batch: EvalOptions::default().micro_batch,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--heldout" => args.heldout = Some(value("--heldout")?.parse()?),
            "--no-selection" => args.selection = false,
            "--micro-batch" => args.micro_batch = value("--micro-batch")?.parse()?,
            "--tasks" => {
                let mut tasks = Vec::new();
                for t in value("--tasks")?.split(',') {
                    match t.trim() {
                        "classification" => tasks.extend(
                            builtins()
                                .into_iter()
                                .filter(|t| t.kind() == TaskKind::Classification),
                        ),
                        "generation" => tasks.extend(
                            builtins()
                                .into_iter()
                                .filter(|t| t.kind() == TaskKind::Generation),
                        ),
                        name => tasks.push(
                            Task::builtin(name)
                                .ok_or_else(|| format!("unknown built-in task `{name}`"))?,
                        ),
                    }
                }
                args.tasks = tasks;
            }
            "-h" | "--help" => {
                println!(
                    "baseline [--heldout all|N] [--no-selection] [--tasks a,b] [--micro-batch N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)").into()),
        }
    }
    Ok(args)
}

fn builtins() -> Vec<Task> {
    Task::builtin_names().filter_map(Task::builtin).collect()
}

/// The data sets shipped in the repository (`data/`).
fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn model_path() -> Res<PathBuf> {
    match std::env::var_os("C2I_SMOLLM2_GGUF") {
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(c2i_stages::assets::smollm2_gguf()?),
    }
}

fn row(task: &Task, part: &str, r: &EvalResult, secs: f64) -> String {
    match &r.metrics {
        TaskMetrics::Classification(m) => format!(
            "| {task} | {part} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {secs:.1} | predicted {:?}, gold {:?}{} |",
            r.samples,
            m.accuracy,
            m.balanced_accuracy,
            m.majority_class_rate,
            r.log_loss,
            m.predicted_histogram,
            m.gold_histogram,
            if m.collapsed { ", collapsed" } else { "" },
        ),
        TaskMetrics::MultipleChoice(m) => format!(
            "| {task} | {part} | {} | {:.4} | – | chance {:.4} | {:.4} | {secs:.1} | {}-{} choices |",
            r.samples,
            m.accuracy,
            m.chance,
            r.log_loss,
            m.min_choices,
            m.max_choices,
        ),
        TaskMetrics::Generation(m) => format!(
            "| {task} | {part} | {} | {:.4} | – | – | {:.4} | {secs:.1} | EM {:.3}, F1 {:.3}, empty {:.3}, copies prompt {:.3} |",
            r.samples,
            m.accuracy,
            r.log_loss,
            m.exact_match,
            m.token_f1,
            m.empty_rate,
            m.prompt_copy_rate,
        ),
    }
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let path = model_path()?;
    let loaded = Weights::load_gguf(&path)?;
    let eos = loaded.special.stop();
    let model = Decoder::new(&loaded.weights)?.inference();
    let opts = EvalOptions {
        micro_batch: args.micro_batch,
        ..EvalOptions::default()
    };
    let root = data_dir();
    println!(
        "model: {} (eos {eos:?}); data: {}",
        path.display(),
        root.display()
    );
    println!();
    println!("| task | part | samples | accuracy | balanced acc. | majority rate | log-loss | seconds | notes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    std::io::stdout().flush()?;
    let mut total = 0f64;
    for task in &args.tasks {
        let file = root.join(task.bundled().ok_or("not a built-in task")?.name);
        let all = load(task, &file)?;
        let mut parts: Vec<(String, Vec<usize>)> = Vec::new();
        if args.selection {
            let s = selection_samples(
                all.len(),
                SampleSpec::new(SampleSize::N(100), 1),
                SampleSpec::new(SampleSize::N(100), 0),
            )?;
            parts.push(("selection (eval sample)".into(), s.evaluation));
        }
        if let Some(size) = args.heldout {
            parts.push((
                format!("held-out ({size})"),
                sample(Split::HeldOut, all.len(), size, 1)?,
            ));
        }
        for (part, rows) in parts {
            let set = EvalSet::from_rows(&all, &rows, &loaded.tokenizer, eos)?;
            let t = Instant::now();
            let mut last = Instant::now();
            let r = evaluate(&model, &set, None, 0, &opts, &mut |done, n| {
                if last.elapsed().as_secs() >= 30 || done == n {
                    eprintln!(
                        "{task} {part}: {done}/{n} ({:.0} s)",
                        t.elapsed().as_secs_f64()
                    );
                    last = Instant::now();
                }
            })?;
            let secs = t.elapsed().as_secs_f64();
            total += secs;
            println!("{}", row(task, &part, &r, secs));
            std::io::stdout().flush()?;
        }
    }
    println!();
    println!("total evaluation time: {total:.1} s");
    Ok(())
}
