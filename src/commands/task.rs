//! `c2i task check TASK.toml [--data FILE]`: validate a task file and its rows
//! without a model, and show what the model would see.

use super::Output;
use anyhow::Result;
use c2i_stages::data::{self, Answer, ChoiceMode, Dataset, Split, Task};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Read a task file and its rows: every bad key or row is an error naming the
    /// file, the line (or row) and the field; prints the number of rows, the class
    /// balance (or, for per-row choices, chance and where the gold answer is listed)
    /// and the first rendered prompt.
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// A task file (.toml), or a built-in task's name (`epistemic_reasoning`,
    /// `bbh_navigate`, ...).
    pub task: String,
    /// The rows; default: the task file's `path`, a built-in task's shipped rows, or
    /// for another `format = "bigbench"` task its task.json under $C2I_BIGBENCH_DIR.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Also wrap the first prompt in this model's chat template (for `chat = true`):
    /// a .gguf file, a Hugging Face directory, or `smollm2`. Reads the file's metadata
    /// only.
    #[arg(long)]
    pub model: Option<String>,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    match args.command {
        Cmd::Check(a) => check(a, out),
    }
}

fn pct(n: usize, total: usize) -> String {
    format!("{:.1}%", 100.0 * n as f64 / total.max(1) as f64)
}

/// What `check` reports, as text and as JSON.
fn summary(ds: &Dataset) -> (Vec<String>, serde_json::Value) {
    let n = ds.len();
    let task = &ds.task;
    let sel = Split::Selection.rows_with(n, task.selection_share).len();
    let mut lines = vec![
        format!(
            "rows: {n} from {} ({}){}",
            ds.path.display(),
            ds.format.name(),
            if ds.skipped.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} rows skipped (the first: {}: {})",
                    ds.skipped.len(),
                    ds.skipped[0].loc.to_string().trim(),
                    ds.skipped[0].reason
                )
            }
        ),
        format!(
            "split: the first {sel} rows select (selection_share {}), the other {} are held out",
            task.selection_share,
            n - sel
        ),
    ];
    let mut json = serde_json::json!({
        "task": task.name(),
        "digest": task.digest(),
        "file": task.origin,
        "data": ds.path,
        "format": ds.format,
        "rows": n,
        "skipped": ds.skipped,
        "selection_rows": sel,
        "heldout_rows": n - sel,
    });
    match &ds.choices {
        Some(ChoiceMode::Classes { classes }) => {
            let mut counts = vec![0usize; classes.len()];
            for e in &ds.examples {
                if let Some(g) = e.answer.gold() {
                    counts[g] += 1;
                }
            }
            let max = counts.iter().copied().max().unwrap_or(0);
            let balance: Vec<String> = classes
                .iter()
                .zip(&counts)
                .map(|(c, k)| format!("{c:?} {k} ({})", pct(*k, n)))
                .collect();
            lines.push(format!(
                "choice, {} classes; class balance: {}; majority-class rate {:.4}",
                classes.len(),
                balance.join(", "),
                max as f64 / n as f64
            ));
            json["classes"] = serde_json::json!(classes);
            json["class_counts"] = serde_json::json!(counts);
            json["majority_class_rate"] = serde_json::json!(max as f64 / n as f64);
        }
        Some(ChoiceMode::PerRow) => {
            let mut sizes = BTreeMap::new();
            let (mut first, mut chance) = (0usize, 0.0f64);
            for e in &ds.examples {
                if let Answer::Choice { choices, gold } = &e.answer {
                    *sizes.entry(choices.len()).or_insert(0usize) += 1;
                    first += usize::from(*gold == 0);
                    chance += 1.0 / choices.len() as f64;
                }
            }
            chance /= n as f64;
            let sizes_text: Vec<String> = sizes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            lines.push(format!(
                "choice, per-row choices (multiple choice); rows by number of choices: {}; \
                 chance (mean of 1/choices) {chance:.4}",
                sizes_text.join(", ")
            ));
            lines.push(format!(
                "the gold answer is listed first in {} of the rows (c2i breaks ties without \
                 regard to position and reports chance, not a majority-class rate)",
                pct(first, n)
            ));
            json["choices_per_row"] = serde_json::json!(sizes);
            json["chance"] = serde_json::json!(chance);
            json["gold_listed_first"] = serde_json::json!(first as f64 / n as f64);
        }
        None => {
            let g = task.generation.clone().unwrap_or_else(|| unreachable!());
            let lens: Vec<usize> = ds
                .examples
                .iter()
                .filter_map(|e| e.answer.target().map(|t| t.chars().count()))
                .collect();
            let mean = lens.iter().sum::<usize>() as f64 / n as f64;
            lines.push(format!(
                "generate, up to {} new tokens, match {}{}; targets {:.1} characters on average",
                g.max_new_tokens,
                g.match_.name(),
                if g.stop.is_empty() {
                    String::new()
                } else {
                    format!(", stop at {:?}", g.stop)
                },
                mean
            ));
            json["generation"] = serde_json::json!(g);
            json["mean_target_chars"] = serde_json::json!(mean);
        }
    }
    (lines, json)
}

fn check(a: CheckArgs, out: &Output) -> Result<()> {
    let task = Task::resolve(&a.task, Path::new(""))?;
    let path = c2i_engine::runner::resolve_task_data(
        &task,
        a.data.as_deref(),
        Path::new("the command line"),
        "--data",
    )?;
    let ds = data::load(&task, &path)?;
    let (mut lines, mut json) = summary(&ds);
    let first = &ds.examples[0];
    let mut prompt = first.prompt.clone();
    let mut chat_note = None;
    if task.chat {
        match &a.model {
            Some(m) => {
                let model = c2i_engine::runner::resolve_model(m)?;
                let template = c2i_stages::model::chat::chat_template(&model)?;
                let seen = ds.for_model(template.as_deref(), &model.display().to_string())?;
                prompt = seen.examples[0].prompt.clone();
            }
            None => {
                chat_note = Some(
                    "chat = true: at run time the prompt is wrapped in the model's chat \
                     template (pass --model to see it)",
                )
            }
        }
    }
    let answer = match &first.answer {
        Answer::Choice { choices, gold } => {
            format!("choices {:?}, gold {gold} ({:?})", choices, choices[*gold])
        }
        Answer::Generate { .. } => format!("target {:?}", first.answer.gold_continuation()),
    };
    lines.insert(
        0,
        format!(
            "task {} ({}, digest {})",
            task.name(),
            task.origin.display(),
            &task.digest()[..16]
        ),
    );
    if let Some(n) = chat_note {
        lines.push(n.to_string());
    }
    lines.push(format!(
        "first prompt (row 0, {}):\n{prompt}\n-> {answer}",
        match first.loc {
            data::Loc::Line(l) => format!("line {l}"),
            data::Loc::Row(r) => format!("row {r} of the file"),
            data::Loc::Example(i) => format!("examples[{i}]"),
        }
    ));
    json["first_prompt"] = serde_json::json!(prompt);
    json["first_answer"] = serde_json::json!(first.answer);
    out.result(&lines.join("\n"), &json);
    Ok(())
}
