//! Tasks and their data: task files, row formats, prompt templates, LASER's splits and
//! seeded samples.
//!
//! A task is data, not code: a task file ([`task`]) says how rows become prompts,
//! answers and a metric. [`load`] reads a data file in the task's format ([`rows`]:
//! JSONL, CSV, Parquet or a BIG-bench `task.json` in LASER's order, [`bigbench`]),
//! renders each row's prompt ([`template`]) and resolves its answer into an
//! [`Example`]; every problem is an error naming the file, the row and the field
//! ([`DataError`]). [`chat`] wraps prompts in a model's chat template. [`split`] has
//! LASER's selection / held-out split and the seeded, disjoint calibration and
//! evaluation samples.
//!
//! The five data sets of the LASER paper that can be obtained here, and 24
//! BIG-Bench-Hard tasks, are built-in task files (`tasks/*.toml`, `tasks/bbh/*.toml`,
//! [`Task::builtin`]) whose rows ship with c2i ([`bundled`]); the LASER tasks' prompts
//! are LASER's, byte for byte (pratyushasharma/laser @ d391375,
//! `src/dataset_utils/*.py` and `src/intervention_*.py`), written with template filters.
//!
//! # Answers
//!
//! - **choice**: the scored continuations are `answer_prefix + choice`; the gold
//!   answer (`answer_field`) is an integer index into the choices, or a string equal
//!   to one of them (else, when it is all digits, an index). With `choices` (the
//!   same for every row) the choices are classes; with `choices_field` each row has
//!   its own list (multiple choice), which must be non-empty and without repeats.
//! - **generate**: the target is the field's text, stripped (Python's `strip`, as
//!   LASER does); an empty target is an error (it would match every generation).

pub mod bigbench;
pub mod bundled;
pub mod chat;
pub mod error;
pub mod pyjson;
pub mod pyrandom;
pub mod pystr;
mod record;
pub mod rows;
pub mod split;
pub mod task;
pub mod template;

pub use error::{DataError, FieldError, Loc};
pub use rows::{Row, Skipped};
pub use split::{
    sample, sample_from, sample_with, selection_len, selection_len_with, selection_samples,
    selection_samples_with, SampleSize, SampleSpec, SelectionSamples, Split,
};
pub use task::{Choices, Format, Kind, Match, Task, TaskKind};

use pystr::python_strip;
use record::type_name;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use template::Template;

/// What the model must produce for one example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// Choice: the continuations to score (`answer_prefix` included) and the index of
    /// the gold one.
    Choice { choices: Vec<String>, gold: usize },
    /// Generation: greedy decoding of at most `max_new_tokens` tokens; correct when
    /// `target` matches the continuation. `prefix + target` is the gold continuation
    /// whose log-probability gives the log-loss.
    Generate {
        target: String,
        max_new_tokens: usize,
        #[serde(default = "space")]
        prefix: String,
    },
}

fn space() -> String {
    " ".into()
}

impl Answer {
    /// A choice answer.
    pub fn choice(choices: &[&str], gold: usize) -> Answer {
        Answer::Choice {
            choices: choices.iter().map(|c| (*c).to_owned()).collect(),
            gold,
        }
    }

    /// A generation answer with LASER's `" "` prefix.
    pub fn generate(target: &str, max_new_tokens: usize) -> Answer {
        Answer::Generate {
            target: target.to_owned(),
            max_new_tokens,
            prefix: space(),
        }
    }

    /// The continuation whose log-probability after the prompt is the gold answer's
    /// log-probability (for the log-loss and the gradient pass): the gold choice, or
    /// `prefix + target` (LASER scores `prompt + " " + answer`).
    pub fn gold_continuation(&self) -> String {
        match self {
            Answer::Choice { choices, gold } => choices[*gold].clone(),
            Answer::Generate { target, prefix, .. } => format!("{prefix}{target}"),
        }
    }

    /// The gold index of a choice answer.
    pub fn gold(&self) -> Option<usize> {
        match self {
            Answer::Choice { gold, .. } => Some(*gold),
            Answer::Generate { .. } => None,
        }
    }

    /// The target string of a generation answer.
    pub fn target(&self) -> Option<&str> {
        match self {
            Answer::Choice { .. } => None,
            Answer::Generate { target, .. } => Some(target),
        }
    }
}

/// One example of a data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// 0-based row among the examples, in file order (LASER's order for BigBench).
    /// Splits and samples refer to rows.
    pub row: usize,
    /// Where the row is in its file.
    pub loc: Loc,
    /// The exact prompt fed to the model (before any chat template).
    pub prompt: String,
    pub answer: Answer,
}

/// How the answers of a choice data set are scored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChoiceMode {
    /// The same choices (these, without the prefix) for every row: classes.
    Classes { classes: Vec<String> },
    /// Each row has its own choices: multiple choice.
    PerRow,
}

/// A data file read for a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub task: Task,
    pub path: PathBuf,
    pub format: Format,
    pub examples: Vec<Example>,
    /// Rows left out (BigBench generation rows with several targets).
    pub skipped: Vec<Skipped>,
    /// `None` for a generation task.
    pub choices: Option<ChoiceMode>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Whether each row has its own choices.
    pub fn per_row_choices(&self) -> bool {
        self.choices == Some(ChoiceMode::PerRow)
    }

    /// What a model sees: for a `chat = true` task, every prompt wrapped in the
    /// model's chat template (`template`, from the model file named `model`); the
    /// data set as it is otherwise.
    pub fn for_model(
        &self,
        template: Option<&str>,
        model: &str,
    ) -> Result<std::borrow::Cow<'_, Dataset>, DataError> {
        if !self.task.chat {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        let source = template.ok_or_else(|| DataError::Chat {
            model: model.to_owned(),
            message: format!(
                "task `{}` has chat = true, but the model file carries no chat template",
                self.task.name()
            ),
        })?;
        let chat = chat::ChatTemplate::new(source, model)?;
        let mut out = self.clone();
        for e in &mut out.examples {
            e.prompt = chat.render(&e.prompt)?;
        }
        Ok(std::borrow::Cow::Owned(out))
    }
}

/// The format a task reads `path` in: the task's `format`, else the extension's.
pub fn format_of(task: &Task, path: &Path) -> Result<Format, DataError> {
    task.format
        .or_else(|| Format::from_extension(path))
        .ok_or_else(|| DataError::TaskFile {
            path: task.origin.clone(),
            line: None,
            field: "format".into(),
            problem: format!(
                "missing, and the data file {} has no extension that tells it \
                 (.jsonl, .csv, .parquet, .json)",
                path.display()
            ),
        })
}

fn is_jsonl_path(path: &Path) -> bool {
    matches!(Format::from_extension(path), Some(Format::Jsonl))
}

/// The environment variable naming a BIG-bench checkout (the folder holding
/// `bigbench/benchmark_tasks/`, or that `benchmark_tasks/` folder itself).
pub const BIGBENCH_DIR_VAR: &str = "C2I_BIGBENCH_DIR";

/// Where a task's rows come from when neither the pipeline nor the task file names
/// them: a built-in task's shipped file ([`bundled`], written to `$C2I_HOME/data` on
/// first use), or for any other `format = "bigbench"` task its `task.json` in the
/// BIG-bench checkout `$C2I_BIGBENCH_DIR` names ([`bigbench_task_json`]). `None`: the
/// task has no default rows.
pub fn default_rows(task: &Task) -> Result<Option<PathBuf>, DataError> {
    if let Some(b) = task.bundled() {
        return b.materialize().map(Some);
    }
    if has_default_rows(task) {
        let dir = std::env::var_os(BIGBENCH_DIR_VAR).filter(|v| !v.is_empty());
        return bigbench_task_json(task, dir.as_deref().map(Path::new)).map(Some);
    }
    Ok(None)
}

/// Whether [`default_rows`] has rows for `task` (without writing or looking for them).
pub fn has_default_rows(task: &Task) -> bool {
    task.bundled().is_some() || task.format == Some(Format::Bigbench)
}

/// A BIG-bench task's `task.json` (`benchmark_tasks/<name>[/<subtask>]/task.json`) in
/// the checkout `dir`; the error says where c2i looked and how to get the file.
pub fn bigbench_task_json(task: &Task, dir: Option<&Path>) -> Result<PathBuf, DataError> {
    let mut rel = PathBuf::from("benchmark_tasks").join(task.name());
    if let Some(s) = &task.subtask {
        rel.push(s);
    }
    rel.push("task.json");
    let tried: Vec<PathBuf> = dir
        .map(|d| vec![d.join("bigbench").join(&rel), d.join(&rel)])
        .unwrap_or_default();
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked = match dir {
        Some(_) => format!(
            "looked in {} (from ${BIGBENCH_DIR_VAR})",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        None => format!("${BIGBENCH_DIR_VAR} is not set, so c2i had nowhere to look"),
    };
    Err(DataError::File {
        path: task.origin.clone(),
        message: format!(
            "task `{}`{}: no BIG-bench task.json: {looked}. c2i ships the data of its \
             built-in tasks (BIG-bench's epistemic_reasoning and qa_wikidata, and 24 \
             BIG-Bench-Hard tasks as bbh_<task>), but not the rest of BIG-bench, \
             whose `bigbench==1.0.0` package the package registry no longer serves. Clone \
             the BIG-bench repository (google/BIG-bench) and set {BIGBENCH_DIR_VAR} to the \
             clone, or give the file's path as `data.path` (or `path` in the task file)",
            task.name(),
            task.subtask
                .as_ref()
                .map(|s| format!(" (subtask `{s}`)"))
                .unwrap_or_default(),
        ),
    })
}

/// Reads the rows of `path` for `task`, in file order.
pub fn read_rows(task: &Task, path: &Path) -> Result<(Format, Vec<Row>, Vec<Skipped>), DataError> {
    let format = format_of(task, path)?;
    let (rows, skipped) = match format {
        Format::Jsonl => (rows::read_jsonl(path)?, Vec::new()),
        Format::Csv => (rows::read_csv(path)?, Vec::new()),
        Format::Parquet => {
            let mut cols: Vec<&str> = Vec::new();
            if let Some(t) = &task.prompt {
                cols.extend(t.fields());
            }
            if let Some(f) = &task.answer_field {
                cols.push(f);
            }
            if let Some(Choices::Field(f)) = &task.choices {
                cols.push(f);
            }
            (rows::read_parquet(path, &cols)?, Vec::new())
        }
        // The LASER-order rebuild written as JSON lines reads as JSON lines.
        Format::Bigbench if is_jsonl_path(path) => (rows::read_jsonl(path)?, Vec::new()),
        Format::Bigbench => rows::read_bigbench(path, task.kind, task.multiple_targets)?,
        Format::Bbh => rows::read_bbh(path)?,
    };
    Ok((format, rows, skipped))
}

/// Reads `path` for `task` into examples (see the module docs).
pub fn load(task: &Task, path: &Path) -> Result<Dataset, DataError> {
    let (format, rows, skipped) = read_rows(task, path)?;
    build(task, path, format, rows, skipped)
}

/// The examples of rows already read.
pub fn build(
    task: &Task,
    path: &Path,
    format: Format,
    rows: Vec<Row>,
    skipped: Vec<Skipped>,
) -> Result<Dataset, DataError> {
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    let default_prompt;
    let prompt: &Template = match &task.prompt {
        Some(t) => t,
        None => {
            default_prompt = Template::parse("{inputs}")
                .unwrap_or_else(|e| unreachable!("the default prompt parses: {e}"));
            &default_prompt
        }
    };
    let answer_field = task.answer_field.as_deref().unwrap_or("target");
    let mut examples = Vec::with_capacity(rows.len());
    for row in &rows {
        let at = |e: FieldError| e.at(path, row.loc);
        let text = prompt.render(&row.fields).map_err(at)?;
        let answer = match (&task.choices, &task.generation) {
            (Some(choices), _) => {
                let list: Vec<String> = match choices {
                    Choices::Fixed(c) => c.clone(),
                    Choices::Field(f) => row_choices(&row.fields, f, format).map_err(at)?,
                    Choices::TargetScores => {
                        row_choices(&row.fields, "choices", format).map_err(|e| {
                            at(FieldError::new(
                                e.field,
                                format!(
                                    "{} (the choices of a BigBench row are its target_scores \
                                     keys; a JSON-lines rebuild has none: give `choices` in the \
                                     task file)",
                                    e.problem
                                ),
                            ))
                        })?
                    }
                };
                let gold = gold_index(&row.fields, answer_field, &list).map_err(at)?;
                Answer::Choice {
                    choices: list
                        .iter()
                        .map(|c| format!("{}{c}", task.answer_prefix))
                        .collect(),
                    gold,
                }
            }
            (None, Some(g)) => {
                let raw = template::field_text(&row.fields, answer_field).map_err(at)?;
                let target = python_strip(&raw);
                if target.is_empty() {
                    return Err(at(FieldError::new(
                        answer_field,
                        "empty target (it would match every generation)",
                    )));
                }
                Answer::Generate {
                    target: target.to_owned(),
                    max_new_tokens: g.max_new_tokens,
                    prefix: task.answer_prefix.clone(),
                }
            }
            (None, None) => unreachable!("a task is either choice or generate"),
        };
        examples.push(Example {
            row: examples.len(),
            loc: row.loc,
            prompt: text,
            answer,
        });
    }
    let choices = match &task.choices {
        None => None,
        Some(Choices::Fixed(c)) => Some(ChoiceMode::Classes { classes: c.clone() }),
        Some(Choices::Field(_)) => Some(ChoiceMode::PerRow),
        Some(Choices::TargetScores) => Some(classes_if_uniform(&mut examples, task)),
    };
    Ok(Dataset {
        task: task.clone(),
        path: path.to_owned(),
        format,
        examples,
        skipped,
        choices,
    })
}

/// BigBench's default choices: classes (sorted) when every row has the same set of
/// `target_scores` keys, each row's order rewritten to the sorted one; per-row
/// multiple choice otherwise.
fn classes_if_uniform(examples: &mut [Example], task: &Task) -> ChoiceMode {
    let sorted = |e: &Example| -> Vec<String> {
        let mut c = match &e.answer {
            Answer::Choice { choices, .. } => choices.clone(),
            Answer::Generate { .. } => Vec::new(),
        };
        c.sort();
        c
    };
    let first = match examples.first() {
        Some(e) => sorted(e),
        None => return ChoiceMode::PerRow,
    };
    if examples.iter().any(|e| sorted(e) != first) {
        return ChoiceMode::PerRow;
    }
    for e in examples.iter_mut() {
        if let Answer::Choice { choices, gold } = &mut e.answer {
            let g = &choices[*gold];
            *gold = first.iter().position(|c| c == g).unwrap_or(*gold);
            *choices = first.clone();
        }
    }
    let classes = first
        .iter()
        .map(|c| c.strip_prefix(&task.answer_prefix).unwrap_or(c).to_owned())
        .collect();
    ChoiceMode::Classes { classes }
}

/// A row's own list of choices in `field`: a list of texts (in CSV, a JSON array in
/// the cell), non-empty, no repeats, no empty answer.
fn row_choices(
    row: &Map<String, Value>,
    field: &str,
    format: Format,
) -> Result<Vec<String>, FieldError> {
    let bad = |p: String| FieldError::new(field, p);
    let v = row.get(field).ok_or_else(|| bad("missing".into()))?;
    let parsed;
    let list = match v {
        Value::Array(xs) => xs,
        Value::String(s) if format == Format::Csv && s.trim_start().starts_with('[') => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|e| bad(format!("not a JSON array of answers: {e}")))?;
            match &parsed {
                Value::Array(xs) => xs,
                _ => return Err(bad("not a JSON array of answers".into())),
            }
        }
        other => {
            return Err(bad(format!(
                "expected a list of answers, found {}{}",
                type_name(other),
                if format == Format::Csv {
                    " (in CSV, write the list as a JSON array: [\"a\", \"b\"])"
                } else {
                    ""
                }
            )))
        }
    };
    if list.is_empty() {
        return Err(bad("an empty list of choices".into()));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, x) in list.iter().enumerate() {
        let s = match x {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(bad(format!(
                    "choice {i} is {}, expected text",
                    type_name(other)
                )))
            }
        };
        if s.is_empty() {
            return Err(bad(format!("choice {i} is empty")));
        }
        if let Some(j) = out.iter().position(|c| *c == s) {
            return Err(bad(format!(
                "choice {s:?} is repeated (positions {j} and {i})"
            )));
        }
        out.push(s);
    }
    Ok(out)
}

/// The gold index: an integer index into `choices`, or a string equal to one of them
/// (else, when it is all ASCII digits, an index).
fn gold_index(
    row: &Map<String, Value>,
    field: &str,
    choices: &[String],
) -> Result<usize, FieldError> {
    let bad = |p: String| FieldError::new(field, p);
    let out_of_range = |i: u64| {
        bad(format!(
            "gold index {i} is out of range: the row has {} choices (0 to {})",
            choices.len(),
            choices.len() - 1
        ))
    };
    match row.get(field) {
        None => Err(bad("missing".into())),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(i) if (i as usize) < choices.len() => Ok(i as usize),
            Some(i) => Err(out_of_range(i)),
            None => Err(bad(format!(
                "{n} is not a choice index: expected an integer from 0 to {} or one of the choices",
                choices.len() - 1
            ))),
        },
        Some(Value::String(s)) => {
            if let Some(i) = choices.iter().position(|c| c == s) {
                return Ok(i);
            }
            match s.parse::<u64>() {
                Ok(i) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    if (i as usize) < choices.len() {
                        Ok(i as usize)
                    } else {
                        Err(out_of_range(i))
                    }
                }
                _ => Err(bad(format!(
                    "gold answer {s:?} is not among the choices {choices:?}"
                ))),
            }
        }
        Some(other) => Err(bad(format!(
            "expected a choice index or one of the choices, found {}",
            type_name(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(text: &str) -> Task {
        Task::parse(text, Path::new("/t/task.toml")).unwrap()
    }

    fn rows_of(jsonl: &str) -> Vec<Row> {
        rows::parse_jsonl(jsonl.as_bytes(), Path::new("d.jsonl")).unwrap()
    }

    fn build_jsonl(t: &Task, jsonl: &str) -> Result<Dataset, DataError> {
        build(
            t,
            Path::new("d.jsonl"),
            Format::Jsonl,
            rows_of(jsonl),
            Vec::new(),
        )
    }

    const CLAIMS: &str = "name = \"c\"\nkind = \"choice\"\nprompt = \"{claim}. True?\"\nchoices = [\"true\", \"false\"]\nanswer_field = \"label\"\n";

    #[test]
    fn fixed_choices_gold_by_index_or_text() {
        let t = task(CLAIMS);
        let d = build_jsonl(
            &t,
            "{\"claim\": \"A\", \"label\": 1}\n{\"claim\": \"B\", \"label\": \"true\"}\n{\"claim\": 3, \"label\": \"0\"}\n",
        )
        .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.examples[0].prompt, "A. True?");
        assert_eq!(
            d.examples[0].answer,
            Answer::choice(&[" true", " false"], 1)
        );
        assert_eq!(d.examples[1].answer.gold(), Some(0));
        assert_eq!(d.examples[2].prompt, "3. True?");
        assert_eq!(d.examples[2].answer.gold(), Some(0));
        assert_eq!(
            d.choices,
            Some(ChoiceMode::Classes {
                classes: vec!["true".into(), "false".into()]
            })
        );
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let t = task(CLAIMS);
        for (jsonl, want) in [
            (
                "{\"claim\": \"A\", \"label\": 1}\n{\"label\": 1}\n",
                "d.jsonl:2: field `claim`: missing",
            ),
            (
                "{\"claim\": \"A\", \"label\": 2}\n",
                "d.jsonl:1: field `label`: gold index 2 is out of range",
            ),
            (
                "{\"claim\": \"A\", \"label\": \"maybe\"}\n",
                "d.jsonl:1: field `label`: gold answer \"maybe\" is not among",
            ),
            (
                "{\"claim\": \"A\", \"label\": 1.0}\n",
                "d.jsonl:1: field `label`: 1.0 is not a choice index",
            ),
            (
                "{\"claim\": \"A\", \"label\": -1}\n",
                "d.jsonl:1: field `label`: -1 is not a choice index",
            ),
            (
                "{\"claim\": \"A\", \"label\": true}\n",
                "d.jsonl:1: field `label`: expected a choice index",
            ),
            ("{\"claim\": \"A\"}\n", "d.jsonl:1: field `label`: missing"),
            (
                "{\"claim\": [\"A\"], \"label\": 0}\n",
                "d.jsonl:1: field `claim`: expected text or a number, found an array",
            ),
        ] {
            let e = build_jsonl(&t, jsonl).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}\nwanted {want}");
        }
        let e = build(
            &t,
            Path::new("d.jsonl"),
            Format::Jsonl,
            Vec::new(),
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "d.jsonl: no examples");
    }

    #[test]
    fn per_row_choices_and_their_errors() {
        let t = task("name = \"mc\"\nkind = \"choice\"\nprompt = \"{q}\"\nchoices_field = \"options\"\nanswer_field = \"answer\"\nanswer_prefix = \"\"\n");
        let d = build_jsonl(
            &t,
            "{\"q\": \"1+1=\", \"options\": [\"2\", \"3\", 4], \"answer\": \"2\"}\n{\"q\": \"x\", \"options\": [\"a\", \"b\"], \"answer\": 1}\n",
        )
        .unwrap();
        assert!(d.per_row_choices());
        assert_eq!(d.examples[0].answer, Answer::choice(&["2", "3", "4"], 0));
        assert_eq!(d.examples[1].answer, Answer::choice(&["a", "b"], 1));
        for (jsonl, want) in [
            (
                "{\"q\": \"x\", \"options\": [], \"answer\": 0}\n",
                "field `options`: an empty list of choices",
            ),
            (
                "{\"q\": \"x\", \"options\": [\"a\", \"b\", \"a\"], \"answer\": 0}\n",
                "field `options`: choice \"a\" is repeated (positions 0 and 2)",
            ),
            (
                "{\"q\": \"x\", \"options\": \"a\", \"answer\": 0}\n",
                "field `options`: expected a list of answers, found a string",
            ),
            (
                "{\"q\": \"x\", \"options\": [\"a\", \"\"], \"answer\": 0}\n",
                "field `options`: choice 1 is empty",
            ),
            (
                "{\"q\": \"x\", \"options\": [\"a\", \"b\"], \"answer\": 5}\n",
                "field `answer`: gold index 5 is out of range: the row has 2 choices",
            ),
        ] {
            let e = build_jsonl(&t, jsonl).unwrap_err().to_string();
            assert!(
                e.starts_with("d.jsonl:1: ") && e.contains(want),
                "{e}\nwanted {want}"
            );
        }
        // In CSV a list is a JSON array in its cell.
        let rows = rows::parse_csv(
            b"q,options,answer\nx,\"[\"\"a\"\", \"\"b\"\"]\",b\ny,a;b,a\n",
            Path::new("d.csv"),
        )
        .unwrap();
        let e = build(
            &t,
            Path::new("d.csv"),
            Format::Csv,
            rows.clone(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("d.csv:3: field `options`: expected a list"),
            "{e}"
        );
        let d = build(
            &t,
            Path::new("d.csv"),
            Format::Csv,
            rows[..1].to_vec(),
            Vec::new(),
        )
        .unwrap();
        assert_eq!(d.examples[0].answer, Answer::choice(&["a", "b"], 1));
    }

    #[test]
    fn generation_targets_are_stripped_and_non_empty() {
        let t = task("name = \"g\"\nkind = \"generate\"\nprompt = \"{q}\"\nanswer_field = \"a\"\nmax_new_tokens = 7\n");
        let d = build_jsonl(
            &t,
            "{\"q\": \"Q\", \"a\": \" Delhi \"}\n{\"q\": \"R\", \"a\": 1984}\n",
        )
        .unwrap();
        assert_eq!(d.examples[0].answer, Answer::generate("Delhi", 7));
        assert_eq!(d.examples[0].answer.gold_continuation(), " Delhi");
        assert_eq!(d.examples[1].answer.target(), Some("1984"));
        assert_eq!(d.choices, None);
        let e = build_jsonl(&t, "{\"q\": \"Q\", \"a\": \"  \"}\n").unwrap_err();
        assert!(e.to_string().contains("field `a`: empty target"), "{e}");
    }

    #[test]
    fn target_scores_become_classes_when_uniform() {
        let t = task("name = \"s\"\nformat = \"bigbench\"\nkind = \"choice\"\n");
        let row = |keys: &[&str], best: &str| Row {
            loc: Loc::Example(0),
            fields: serde_json::from_value(serde_json::json!({
                "inputs": "P", "target": best, "choices": keys,
            }))
            .unwrap(),
        };
        let rows = vec![
            row(&["plausible", "implausible"], "plausible"),
            row(&["implausible", "plausible"], "implausible"),
        ];
        let d = build(
            &t,
            Path::new("task.json"),
            Format::Bigbench,
            rows,
            Vec::new(),
        )
        .unwrap();
        assert_eq!(
            d.choices,
            Some(ChoiceMode::Classes {
                classes: vec!["implausible".into(), "plausible".into()]
            })
        );
        assert_eq!(
            d.examples[0].answer,
            Answer::choice(&[" implausible", " plausible"], 1)
        );
        assert_eq!(
            d.examples[1].answer,
            Answer::choice(&[" implausible", " plausible"], 0)
        );
        let rows = vec![row(&["a", "b"], "a"), row(&["a", "c"], "c")];
        let d = build(
            &t,
            Path::new("task.json"),
            Format::Bigbench,
            rows,
            Vec::new(),
        )
        .unwrap();
        assert!(d.per_row_choices());
        assert_eq!(d.examples[1].answer, Answer::choice(&[" a", " c"], 1));
    }
}
