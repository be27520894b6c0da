//! Task files: how rows become prompts, answers and a metric.
//!
//! A task file is TOML (the table of keys is in the README, "Bring your own task"):
//!
//! ```toml
//! name = "claims"
//! format = "jsonl"            # jsonl | csv | parquet | bigbench | bbh; from the rows' extension when absent
//! kind = "choice"             # choice | generate
//! prompt = "Consider the following claim: {claim}. Is this claim true or false. The claim is"
//! answer_prefix = " "
//! choices = ["true", "false"] # or choices_field = "options" (a list per row)
//! answer_field = "label"      # an index into the choices or one of them
//! selection_share = 0.2
//! ```
//!
//! A [`Task`] is the parsed, validated file (cheap to clone). Its [`Task::digest`] is
//! BLAKE3 over the canonical JSON of what it means ([`Task::canonical`]): every key
//! but `path` and `description`, so comments, key order and where the rows live do
//! not change it, and any change of meaning (a prompt, a choice) does. Stages that
//! read the task put the digest in their keys.
//!
//! The built-in tasks (LASER's five data sets and 24 BIG-Bench-Hard tasks) are task
//! files under `tasks/` compiled in with their data ([`Task::builtin`],
//! [`super::bundled`]); `[data] task` takes one of their names or a path.

use super::bundled::Bundled;
use super::error::DataError;
use super::template::Template;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a data file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object a line.
    Jsonl,
    /// A header row, then one record a line (RFC 4180 quoting).
    Csv,
    /// Apache Parquet; each column a field.
    Parquet,
    /// A BIG-bench `task.json` (rows in LASER's order), or that rebuild written as
    /// JSON lines (`{"inputs", "target", "split"}`).
    Bigbench,
    /// A BIG-Bench-Hard file: `{"examples": [{"input", "target"}]}` in file order, each
    /// row with the options its input lists ([`super::rows::read_bbh`]).
    Bbh,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Jsonl,
        Format::Csv,
        Format::Parquet,
        Format::Bigbench,
        Format::Bbh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Bigbench => "bigbench",
            Format::Bbh => "bbh",
        }
    }

    fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The format a file's extension implies: `.jsonl`/`.ndjson`, `.csv`, `.parquet`,
    /// `.json` (a BIG-bench `task.json`).
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            "parquet" | "pq" => Some(Format::Parquet),
            "json" => Some(Format::Bigbench),
            _ => None,
        }
    }
}

/// How answers are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The argmax of each choice's summed answer log-probability.
    Choice,
    /// Greedy decoding, then a match of the target in the continuation.
    Generate,
}

/// How a generated continuation is compared with the target (continuation only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// LASER's rule: the stripped, lower-cased target occurs in the continuation.
    #[default]
    Substring,
    /// SQuAD's exact match of the normalized strings.
    Exact,
    /// SQuAD's token F1 (the row's score is the F1, not 0/1).
    TokenF1,
    /// The continuation equals the target as text: both stripped and every run of
    /// whitespace made one space, case and punctuation kept (BIG-Bench-Hard's exact
    /// match, for answers such as `) ]` or `-35` that SQuAD's normalization erases).
    Text,
}

impl Match {
    pub fn name(self) -> &'static str {
        match self {
            Match::Substring => "substring",
            Match::Exact => "exact",
            Match::TokenF1 => "token_f1",
            Match::Text => "text",
        }
    }
}

/// What a BigBench generation row with several targets becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultipleTargets {
    /// Dropped (LASER's rule for WikidataQA); `c2i task check` counts them.
    #[default]
    Skip,
    /// The first target is the answer.
    First,
    /// An error naming the example.
    Error,
}

/// Where a choice task's answers come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Choices {
    /// The same answers for every row: classes, scored with balanced accuracy and the
    /// majority-class rate.
    Fixed(Vec<String>),
    /// A list of answers per row in this field (multiple choice): accuracy and chance.
    Field(String),
    /// BigBench's default: each example's `target_scores` keys; fixed classes (sorted)
    /// when every row has the same set, per-row multiple choice otherwise.
    TargetScores,
}

/// The generation settings of a `kind = "generate"` task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Generation {
    pub max_new_tokens: usize,
    /// The continuation is cut at the first of these strings before it is scored.
    pub stop: Vec<String>,
    #[serde(rename = "match")]
    pub match_: Match,
}

/// A parsed, validated task file.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDef {
    pub name: String,
    pub description: Option<String>,
    /// `None`: from the data file's extension.
    pub format: Option<Format>,
    pub kind: Kind,
    /// `None`: the format's default (`{inputs}` for BigBench).
    pub prompt: Option<Template>,
    pub answer_prefix: String,
    /// `None` for generation tasks.
    pub choices: Option<Choices>,
    /// `None`: the format's default (`target` for BigBench).
    pub answer_field: Option<String>,
    pub generation: Option<Generation>,
    pub selection_share: f64,
    pub chat: bool,
    pub subtask: Option<String>,
    pub multiple_targets: MultipleTargets,
    /// The rows, resolved against the task file's directory.
    pub path: Option<PathBuf>,
    /// Where the definition came from: a file, or `builtin:NAME`.
    pub origin: PathBuf,
}

/// A task: a shared, immutable [`TaskDef`] and its content digest.
#[derive(Debug, Clone)]
pub struct Task {
    def: Arc<TaskDef>,
    digest: Arc<str>,
}

impl PartialEq for Task {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.def.path == other.def.path
    }
}
impl Eq for Task {}
impl std::hash::Hash for Task {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl std::ops::Deref for Task {
    type Target = TaskDef;
    fn deref(&self) -> &TaskDef {
        &self.def
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.def.name)
    }
}

/// Choice or generation, as the evaluator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Argmax over the log-probabilities of answer continuations.
    Classification,
    /// Greedy generation, then a match of the target in the continuation.
    Generation,
}

/// A built-in task: a task file under `tasks/` compiled in, and the shipped data file
/// it reads when the pipeline names no other, compiled in too.
#[derive(Debug)]
pub struct Builtin {
    /// The name `[data] task` gives, which is also the task file's `name`.
    pub name: &'static str,
    /// The task file's text.
    pub text: &'static str,
    /// Its rows: a file under `data/`.
    pub data: Bundled,
}

/// A built-in task from `tasks/<task_file>` and `data/<data>`.
macro_rules! builtin {
    ($name:expr, $task_file:expr, $data:expr) => {
        Builtin {
            name: $name,
            text: include_str!(concat!("../../../tasks/", $task_file)),
            data: Bundled {
                name: $data,
                bytes: include_bytes!(concat!("../../../data/", $data)),
            },
        }
    };
}

/// BIG-Bench-Hard tasks: `bbh_<task>`, `tasks/bbh/<task>.toml`, `data/bbh/<task>.json`.
macro_rules! bbh {
    ($($task:literal),* $(,)?) => {
        [$(builtin!(
            concat!("bbh_", $task),
            concat!("bbh/", $task, ".toml"),
            concat!("bbh/", $task, ".json")
        )),*]
    };
}

/// The five LASER data sets that can be had.
const LASER_BUILTIN: [Builtin; 5] = [
    builtin!(
        "epistemic_reasoning",
        "epistemic_reasoning.toml",
        "bigbench/epistemic_reasoning/task.json"
    ),
    builtin!(
        "qa_wikidata",
        "qa_wikidata.toml",
        "bigbench/qa_wikidata/task.json"
    ),
    builtin!("fever", "fever.toml", "fever/laser_fever.jsonl"),
    builtin!(
        "truthfulqa",
        "truthfulqa.toml",
        "truthfulqa/laser_truthfulqa_pointwise.jsonl"
    ),
    builtin!(
        "hotpotqa",
        "hotpotqa.toml",
        "hotpotqa/laser_hotpot_unfiltered.jsonl"
    ),
];

/// BIG-Bench-Hard (`tasks/bbh/*.toml`, named `bbh_<task>`).
const BBH_BUILTIN: [Builtin; 24] = bbh!(
    "boolean_expressions",
    "disambiguation_qa",
    "dyck_languages",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
);

/// Every built-in task.
pub fn builtins() -> impl Iterator<Item = &'static Builtin> {
    LASER_BUILTIN.iter().chain(BBH_BUILTIN.iter())
}

/// The raw keys of a task file, as TOML gives them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    format: Option<String>,
    kind: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    answer_prefix: Option<String>,
    #[serde(default)]
    choices: Option<Vec<String>>,
    #[serde(default)]
    choices_field: Option<String>,
    #[serde(default)]
    answer_field: Option<String>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
    #[serde(default)]
    stop: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    match_: Option<String>,
    #[serde(default)]
    selection_share: Option<f64>,
    #[serde(default)]
    chat: Option<bool>,
    #[serde(default)]
    subtask: Option<String>,
    #[serde(default)]
    multiple_targets: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
}

/// The 1-based line of a top-level `key = ...` in a task file's text.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .or_else(|| l.strip_prefix(&format!("'{key}'")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key on the line of `offset` (best effort, for TOML syntax errors).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[start..end];
    match line.split_once('=') {
        Some((k, _)) => k.trim().trim_matches('"').to_string(),
        None => "(top level)".to_string(),
    }
}

impl Task {
    /// Parses a task file's `text`; `origin` names it in errors and anchors `path`.
    pub fn parse(text: &str, origin: &Path) -> Result<Task, DataError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: RawTask = toml::from_str(text).map_err(|e| {
            let (line, field) = match e.span() {
                Some(s) => (Some(line_of_offset(text, s.start)), key_at(text, s.start)),
                None => (None, "(document)".to_string()),
            };
            DataError::TaskFile {
                path: origin.to_owned(),
                line,
                field,
                problem: e.message().trim().to_string(),
            }
        })?;
        let bad = |field: &str, problem: String| DataError::TaskFile {
            path: origin.to_owned(),
            line: key_line(text, field),
            field: field.to_string(),
            problem,
        };
        if raw.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        let format = match &raw.format {
            None => None,
            Some(f) => Some(Format::parse(f).ok_or_else(|| {
                bad(
                    "format",
                    format!("unknown format `{f}`: expected jsonl, csv, parquet, bigbench or bbh"),
                )
            })?),
        };
        let kind = match raw.kind.as_str() {
            "choice" => Kind::Choice,
            "generate" => Kind::Generate,
            k => {
                return Err(bad(
                    "kind",
                    format!("unknown kind `{k}`: expected choice or generate"),
                ))
            }
        };
        let bigbench = format == Some(Format::Bigbench);
        let prompt = match &raw.prompt {
            Some(p) => {
                Some(Template::parse(p).map_err(|e| bad("prompt", format!("bad template: {e}")))?)
            }
            None if bigbench => None,
            None => {
                return Err(bad(
                    "prompt",
                    "missing: a template over the row's fields, e.g. \"Q: {question} A:\" \
                     (only format = \"bigbench\" has a default)"
                        .into(),
                ))
            }
        };
        let gen_only = |field: &str, given: bool| -> Result<(), DataError> {
            if given && kind != Kind::Generate {
                return Err(bad(field, "only a generate task has this key".into()));
            }
            Ok(())
        };
        gen_only("max_new_tokens", raw.max_new_tokens.is_some())?;
        gen_only("stop", raw.stop.is_some())?;
        gen_only("match", raw.match_.is_some())?;
        let choices = match kind {
            Kind::Generate => {
                if raw.choices.is_some() {
                    return Err(bad("choices", "a generate task has no choices".into()));
                }
                if raw.choices_field.is_some() {
                    return Err(bad(
                        "choices_field",
                        "a generate task has no choices".into(),
                    ));
                }
                None
            }
            Kind::Choice => match (&raw.choices, &raw.choices_field) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "choices_field",
                        "give either `choices` (the same for every row) or `choices_field` \
                         (a list per row), not both"
                            .into(),
                    ))
                }
                (Some(c), None) => {
                    if c.len() < 2 {
                        return Err(bad("choices", "at least two answers".into()));
                    }
                    if let Some(i) = c.iter().position(|x| x.is_empty()) {
                        return Err(bad("choices", format!("answer {i} is empty")));
                    }
                    for (i, x) in c.iter().enumerate() {
                        if c[..i].contains(x) {
                            return Err(bad("choices", format!("{x:?} is listed twice")));
                        }
                    }
                    Some(Choices::Fixed(c.clone()))
                }
                (None, Some(f)) => Some(Choices::Field(f.clone())),
                (None, None) if bigbench => Some(Choices::TargetScores),
                (None, None) => {
                    return Err(bad(
                        "choices",
                        "missing: a choice task needs `choices = [...]` or `choices_field`".into(),
                    ))
                }
            },
        };
        if raw.answer_field.is_none() && !bigbench {
            return Err(bad(
                "answer_field",
                "missing: the field holding each row's gold answer".into(),
            ));
        }
        let generation = match kind {
            Kind::Choice => None,
            Kind::Generate => {
                let max_new_tokens = raw.max_new_tokens.unwrap_or(10);
                if max_new_tokens == 0 {
                    return Err(bad("max_new_tokens", "at least 1".into()));
                }
                let stop = raw.stop.clone().unwrap_or_default();
                if stop.iter().any(String::is_empty) {
                    return Err(bad("stop", "an empty stop string".into()));
                }
                let match_ = match raw.match_.as_deref() {
                    None | Some("substring") => Match::Substring,
                    Some("exact") => Match::Exact,
                    Some("token_f1") => Match::TokenF1,
                    Some("text") => Match::Text,
                    Some(m) => {
                        return Err(bad(
                            "match",
                            format!(
                                "unknown match `{m}`: expected substring, exact, token_f1 or text"
                            ),
                        ))
                    }
                };
                Some(Generation {
                    max_new_tokens,
                    stop,
                    match_,
                })
            }
        };
        let selection_share = raw.selection_share.unwrap_or(0.2);
        if !(selection_share > 0.0 && selection_share < 1.0) {
            return Err(bad(
                "selection_share",
                format!("{selection_share} is not a share in (0, 1)"),
            ));
        }
        if raw.subtask.is_some() && !bigbench {
            return Err(bad(
                "subtask",
                "only format = \"bigbench\" has subtasks".into(),
            ));
        }
        let multiple_targets = match raw.multiple_targets.as_deref() {
            None | Some("skip") => MultipleTargets::Skip,
            Some("first") => MultipleTargets::First,
            Some("error") => MultipleTargets::Error,
            Some(m) => {
                return Err(bad(
                    "multiple_targets",
                    format!("unknown value `{m}`: expected skip, first or error"),
                ))
            }
        };
        if raw.multiple_targets.is_some() && !(bigbench && kind == Kind::Generate) {
            return Err(bad(
                "multiple_targets",
                "only a generate task of format = \"bigbench\" has this key".into(),
            ));
        }
        let chat = raw.chat.unwrap_or(false);
        let answer_prefix =
            raw.answer_prefix
                .clone()
                .unwrap_or_else(|| if chat { String::new() } else { " ".into() });
        let base = origin.parent().unwrap_or(Path::new("."));
        let path = raw.path.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        });
        let def = TaskDef {
            name: raw.name.clone(),
            description: raw.description.clone(),
            format,
            kind,
            prompt,
            answer_prefix,
            choices,
            answer_field: raw.answer_field.clone(),
            generation,
            selection_share,
            chat,
            subtask: raw.subtask.clone(),
            multiple_targets,
            path,
            origin: origin.to_owned(),
        };
        Ok(Task::from_def(def))
    }

    fn from_def(def: TaskDef) -> Task {
        let canonical = canonical(&def);
        let digest = blake3::hash(canonical.to_string().as_bytes())
            .to_hex()
            .to_string();
        Task {
            def: Arc::new(def),
            digest: digest.into(),
        }
    }

    /// Reads and parses a task file.
    pub fn load(path: &Path) -> Result<Task, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| DataError::TaskFile {
            path: path.to_owned(),
            line: None,
            field: "(document)".into(),
            problem: format!("not UTF-8: {e}"),
        })?;
        Task::parse(&text, path)
    }

    /// A built-in task by name. Its rows are the shipped file ([`Task::bundled`]): the
    /// `path` its file under `tasks/` names (the same bytes in the repository) is dropped.
    pub fn builtin(name: &str) -> Option<Task> {
        builtins().find(|b| b.name == name).map(|b| {
            let t = Task::parse(b.text, &PathBuf::from(format!("builtin:{}", b.name)))
                .unwrap_or_else(|e| unreachable!("built-in task {} is invalid: {e}", b.name));
            let mut def = TaskDef::clone(&t.def);
            def.path = None;
            Task::from_def(def)
        })
    }

    /// The names of the built-in tasks.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        builtins().map(|b| b.name)
    }

    /// For a built-in task: the shipped data file it reads.
    pub fn bundled(&self) -> Option<&'static Bundled> {
        let name = self.def.origin.to_str()?.strip_prefix("builtin:")?;
        builtins()
            .find(|b| b.name == name && b.name == self.def.name)
            .map(|b| &b.data)
    }

    /// The built-in task whose shipped file `path` is: a path ending in that file's
    /// place under `data/` (`.../bigbench/qa_wikidata/task.json`), a file name only one
    /// built-in task's file has (`laser_fever.jsonl`), or its LASER-ordered rebuild's
    /// name (`laser_qa_wikidata.jsonl`).
    pub fn builtin_for_file(path: &Path) -> Option<Task> {
        let by_suffix = builtins().find(|b| path.ends_with(b.data.name));
        let by_name = || {
            let name = path.file_name()?;
            let mut same = builtins().filter(|b| {
                Path::new(b.data.name).file_name() == Some(name)
                    || name.to_str() == Some(&format!("laser_{}.jsonl", b.name))
            });
            match (same.next(), same.next()) {
                (Some(b), None) => Some(b),
                _ => None,
            }
        };
        by_suffix
            .or_else(by_name)
            .and_then(|b| Task::builtin(b.name))
    }

    /// `[data] task`: a built-in name, or a task file's path (relative to `base`).
    pub fn resolve(spec: &str, base: &Path) -> Result<Task, DataError> {
        let looks_like_path = spec.ends_with(".toml") || spec.contains('/') || spec.contains('\\');
        if !looks_like_path {
            return Task::builtin(spec).ok_or_else(|| DataError::UnknownTask(spec.to_owned()));
        }
        let p = Path::new(spec);
        let path = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        Task::load(&path)
    }

    /// BLAKE3 (hex) of [`Task::canonical`]: what the stages that read the task key on.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the task means, as JSON with every default filled in (no `path`,
    /// `description` or origin).
    pub fn canonical(&self) -> serde_json::Value {
        canonical(&self.def)
    }

    /// Rebuilds a task from [`Task::canonical`] (what an action stores), checking that
    /// it has the digest `digest`. `origin` names it in errors. The rows' `path` is not
    /// part of the canonical form: the caller gives the rows' file separately.
    pub fn from_canonical(
        v: &serde_json::Value,
        digest: &str,
        origin: &Path,
    ) -> Result<Task, DataError> {
        let bad = |problem: String| DataError::TaskFile {
            path: origin.to_owned(),
            line: None,
            field: "(canonical task)".into(),
            problem,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let mut t = toml::Table::new();
        let to_toml = |x: &serde_json::Value| -> Result<toml::Value, DataError> {
            toml::Value::try_from(x).map_err(|e| bad(e.to_string()))
        };
        for key in [
            "name",
            "format",
            "kind",
            "prompt",
            "answer_prefix",
            "answer_field",
            "selection_share",
            "chat",
            "subtask",
            "multiple_targets",
        ] {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => {}
                // The default, which only some tasks may state.
                Some(serde_json::Value::String(x)) if key == "multiple_targets" && x == "skip" => {}
                Some(x) => {
                    t.insert(key.into(), to_toml(x)?);
                }
            }
        }
        match obj.get("choices") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s == "target_scores" => {}
            Some(serde_json::Value::Object(c)) => {
                if let Some(f) = c.get("fixed") {
                    t.insert("choices".into(), to_toml(f)?);
                } else if let Some(f) = c.get("field") {
                    t.insert("choices_field".into(), to_toml(f)?);
                } else {
                    return Err(bad(format!("unknown choices {c:?}")));
                }
            }
            Some(other) => return Err(bad(format!("unknown choices {other}"))),
        }
        if let Some(serde_json::Value::Object(g)) = obj.get("generation") {
            for (k, x) in g {
                t.insert(k.clone(), to_toml(x)?);
            }
        }
        let text = toml::to_string(&t).map_err(|e| bad(e.to_string()))?;
        let task = Task::parse(&text, origin)?;
        if task.digest() != digest {
            return Err(bad(format!(
                "rebuilds to digest {}, not {digest}",
                task.digest()
            )));
        }
        Ok(task)
    }

    /// The shared definition.
    pub fn def(&self) -> &TaskDef {
        &self.def
    }

    /// Choice or generation.
    pub fn kind(&self) -> TaskKind {
        match self.def.kind {
            Kind::Choice => TaskKind::Classification,
            Kind::Generate => TaskKind::Generation,
        }
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }
}

fn canonical(d: &TaskDef) -> serde_json::Value {
    serde_json::json!({
        "name": d.name,
        "format": d.format.map(Format::name),
        "kind": d.kind,
        "prompt": d.prompt.as_ref().map(|t| t.source()),
        "answer_prefix": d.answer_prefix,
        "choices": d.choices,
        "answer_field": d.answer_field,
        "generation": d.generation,
        "selection_share": d.selection_share,
        "chat": d.chat,
        "subtask": d.subtask,
        "multiple_targets": d.multiple_targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Task, DataError> {
        Task::parse(text, Path::new("/t/task.toml"))
    }

    #[test]
    fn canonical_form_rebuilds_the_same_task() {
        let mut tasks: Vec<Task> = Task::builtin_names()
            .map(|n| Task::builtin(n).unwrap())
            .collect();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tasks");
        for sub in [".", "examples", "bbh"] {
            let mut files: Vec<_> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            for f in files {
                tasks.push(Task::load(&f).unwrap());
            }
        }
        assert!(tasks.len() >= 60, "{}", tasks.len());
        for t in &tasks {
            let back = Task::from_canonical(&t.canonical(), t.digest(), Path::new("x")).unwrap();
            assert_eq!(back.digest(), t.digest(), "{}", t.name());
            assert_eq!(back.canonical(), t.canonical());
        }
        let e = Task::from_canonical(&tasks[0].canonical(), "00", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not 00"), "{e}");
    }

    const CLAIMS: &str = r#"
name = "claims"
format = "jsonl"
kind = "choice"
prompt = "Consider the following claim: {claim}. The claim is"
choices = ["true", "false"]
answer_field = "label"
"#;

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let t = parse(CLAIMS).unwrap();
        assert_eq!(t.name(), "claims");
        assert_eq!(t.answer_prefix, " ");
        assert_eq!(t.selection_share, 0.2);
        assert_eq!(t.kind(), TaskKind::Classification);
        assert_eq!(
            t.choices,
            Some(Choices::Fixed(vec!["true".into(), "false".into()]))
        );
        assert!(!t.chat);
        let g =
            parse("name = \"g\"\nkind = \"generate\"\nprompt = \"{q}\"\nanswer_field = \"a\"\n")
                .unwrap();
        let gen = g.generation.clone().unwrap();
        assert_eq!((gen.max_new_tokens, gen.match_), (10, Match::Substring));
        // chat = true drops the default answer prefix.
        let c = parse(&format!("{CLAIMS}chat = true\n")).unwrap();
        assert_eq!(c.answer_prefix, "");
    }

    #[test]
    fn the_digest_follows_meaning_not_text() {
        let a = parse(CLAIMS).unwrap();
        let b = parse(&format!(
            "# a comment\n{}\npath = \"rows.jsonl\"\ndescription = \"x\"\n",
            CLAIMS
                .replace("kind = \"choice\"\n", "")
                .replace("name = \"claims\"", "name = \"claims\"\nkind = \"choice\"")
        ))
        .unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(b.path, Some(PathBuf::from("/t/rows.jsonl")));
        let c = parse(&CLAIMS.replace("The claim is", "It is")).unwrap();
        assert_ne!(a.digest(), c.digest());
        let d = parse(&CLAIMS.replace("[\"true\", \"false\"]", "[\"false\", \"true\"]")).unwrap();
        assert_ne!(a.digest(), d.digest());
    }

    #[test]
    fn bad_keys_name_file_line_and_field() {
        for (text, field, line, want) in [
            (CLAIMS.replace("jsonl", "xml"), "format", 3, "unknown format `xml`"),
            (CLAIMS.replace("\"choice\"", "\"rank\""), "kind", 4, "unknown kind `rank`"),
            (format!("{CLAIMS}colour = 1\n"), "colour", 8, "unknown field"),
            (CLAIMS.replace("{claim}", "{claim"), "prompt", 5, "not closed"),
            (CLAIMS.replace("{claim}", "{claim|frob}"), "prompt", 5, "unknown filter"),
            (CLAIMS.replace("[\"true\", \"false\"]", "[\"a\", \"a\"]"), "choices", 6, "listed twice"),
            (CLAIMS.replace("[\"true\", \"false\"]", "[\"a\"]"), "choices", 6, "at least two"),
            (format!("{CLAIMS}choices_field = \"o\"\n"), "choices_field", 8, "not both"),
            (CLAIMS.replace("answer_field = \"label\"\n", ""), "answer_field", 0, "missing"),
            (format!("{CLAIMS}max_new_tokens = 5\n"), "max_new_tokens", 8, "only a generate"),
            (format!("{CLAIMS}selection_share = 1.0\n"), "selection_share", 8, "(0, 1)"),
            (format!("{CLAIMS}subtask = \"x\"\n"), "subtask", 8, "bigbench"),
            (CLAIMS.replace("choices = [\"true\", \"false\"]\n", ""), "choices", 0, "missing"),
            (
                "name = \"g\"\nkind = \"generate\"\nprompt = \"{q}\"\nanswer_field = \"a\"\nmatch = \"fuzzy\"\n".into(),
                "match",
                5,
                "unknown match `fuzzy`",
            ),
            (
                "name = \"g\"\nkind = \"generate\"\nprompt = \"{q}\"\nanswer_field = \"a\"\nmax_new_tokens = -1\n".into(),
                "max_new_tokens",
                5,
                "",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            let msg = e.to_string();
            let loc = if line > 0 {
                format!("/t/task.toml:{line}: field `{field}`")
            } else {
                format!("/t/task.toml: field `{field}`")
            };
            assert!(msg.starts_with(&loc), "{msg} (wanted {loc})");
            assert!(msg.contains(want), "{msg}");
        }
    }

    #[test]
    fn builtins_parse_and_resolve() {
        for n in Task::builtin_names() {
            let t = Task::builtin(n).unwrap();
            assert_eq!(t.name(), n);
            assert_eq!(Task::resolve(n, Path::new("/x")).unwrap(), t);
        }
        assert_eq!(Task::builtin_names().count(), 29);
        // Each built-in task is its file under tasks/ (same digest), reading the shipped
        // copy of the file that task file names by path.
        let tasks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tasks");
        for b in builtins() {
            let t = Task::builtin(b.name).unwrap();
            assert!(t.path.is_none(), "{}", b.name);
            assert_eq!(t.bundled().map(|d| d.name), Some(b.data.name));
            let file = match b.name.strip_prefix("bbh_") {
                Some(rest) => tasks.join("bbh").join(format!("{rest}.toml")),
                None => tasks.join(format!("{}.toml", b.name)),
            };
            let from_file = Task::load(&file).unwrap();
            assert_eq!(from_file.digest(), t.digest(), "{}", b.name);
            assert!(from_file.bundled().is_none());
            let path = from_file.path.clone().unwrap();
            assert!(
                path.ends_with(b.data.name),
                "{}: {}",
                b.name,
                path.display()
            );
            assert_eq!(std::fs::read(&path).unwrap(), b.data.bytes);
            assert_eq!(Task::builtin_for_file(&path).unwrap(), t);
        }
        for (file, name) in [
            ("/d/laser_fever.jsonl", Some("fever")),
            ("/d/laser_qa_wikidata.jsonl", Some("qa_wikidata")),
            (
                "/x/bigbench/epistemic_reasoning/task.json",
                Some("epistemic_reasoning"),
            ),
            ("/x/task.json", None),
            ("/x/navigate.json", Some("bbh_navigate")),
            ("/x/mine.jsonl", None),
        ] {
            assert_eq!(
                Task::builtin_for_file(Path::new(file)).map(|t| t.name().to_string()),
                name.map(str::to_string),
                "{file}"
            );
        }
        let e = Task::resolve("truthful_qa", Path::new("/x")).unwrap_err();
        assert!(e.to_string().contains("unknown task `truthful_qa`"), "{e}");
        let e = Task::resolve("my/task.toml", Path::new("/nonexistent")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/my/task.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn format_from_extension() {
        for (p, f) in [
            ("a.jsonl", Some(Format::Jsonl)),
            ("a.CSV", Some(Format::Csv)),
            ("a.parquet", Some(Format::Parquet)),
            ("task.json", Some(Format::Bigbench)),
            ("a.txt", None),
        ] {
            assert_eq!(Format::from_extension(Path::new(p)), f, "{p}");
        }
    }
}
