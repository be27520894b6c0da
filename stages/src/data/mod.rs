//! Data sets, prompt templates, LASER's splits, and seeded sampling.
//!
//! Five tasks of the LASER paper can be obtained here ([`Task`]); each has a module
//! with its prompt template, reproduced byte for byte from LASER's code
//! (pratyushasharma/laser @ d391375, `src/dataset_utils/*.py` and
//! `src/intervention_*.py`), and the parser of its `laser_*.jsonl` file:
//!
//! | task | module | answer |
//! |---|---|---|
//! | `epistemic_reasoning` | [`epistemic_reasoning`] | choice ` entailment` / ` non-entailment` |
//! | `qa_wikidata` | [`qa_wikidata`] | generate 10 tokens, target substring |
//! | `fever` | [`fever`] | choice ` false` / ` true` |
//! | `truthfulqa` | [`truthfulqa`] | choice ` false` / ` true` |
//! | `hotpotqa` | [`hotpotqa`] | generate 15 tokens, target substring |
//!
//! [`load`] reads a file into [`Example`]s in file order; every malformed line is an
//! error naming the file, the 1-based line and the field ([`DataError`]).
//! [`split`] has LASER's 20 % / 80 % selection / held-out split and the seeded,
//! disjoint calibration and evaluation samples. [`bigbench`] rebuilds the two BIG-bench
//! files from the `bigbench` package's `task.json`, in LASER's exact order.

pub mod bigbench;
pub mod epistemic_reasoning;
pub mod error;
pub mod fever;
pub mod hotpotqa;
pub mod pyjson;
pub mod pyrandom;
pub mod pystr;
pub mod qa_wikidata;
mod record;
pub mod split;
pub mod truthfulqa;

pub use error::DataError;
pub use split::{
    sample, sample_from, selection_len, selection_samples, SampleSize, SampleSpec,
    SelectionSamples, Split,
};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// One of the five data sets c2i can evaluate on. The pipeline names are
/// `epistemic_reasoning`, `qa_wikidata`, `fever`, `truthfulqa`, `hotpotqa`
/// ([`Task::name`], [`FromStr`], [`fmt::Display`], serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Task {
    #[serde(rename = "epistemic_reasoning")]
    EpistemicReasoning,
    #[serde(rename = "qa_wikidata")]
    QaWikidata,
    #[serde(rename = "fever")]
    Fever,
    #[serde(rename = "truthfulqa")]
    TruthfulQa,
    #[serde(rename = "hotpotqa")]
    HotpotQa,
}

/// How a task is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Argmax over the log-probabilities of fixed answer continuations.
    Classification,
    /// Greedy generation, then a match of the target in the continuation.
    Generation,
}

impl Task {
    /// All five, in a fixed order.
    pub const ALL: [Task; 5] = [
        Task::EpistemicReasoning,
        Task::QaWikidata,
        Task::Fever,
        Task::TruthfulQa,
        Task::HotpotQa,
    ];

    /// The pipeline name.
    pub fn name(self) -> &'static str {
        match self {
            Task::EpistemicReasoning => "epistemic_reasoning",
            Task::QaWikidata => "qa_wikidata",
            Task::Fever => "fever",
            Task::TruthfulQa => "truthfulqa",
            Task::HotpotQa => "hotpotqa",
        }
    }

    /// Classification or generation.
    pub fn kind(self) -> TaskKind {
        match self {
            Task::QaWikidata | Task::HotpotQa => TaskKind::Generation,
            _ => TaskKind::Classification,
        }
    }

    /// The scored answer continuations of a classification task, index = class index.
    pub fn choices(self) -> Option<&'static [&'static str]> {
        match self {
            Task::EpistemicReasoning => Some(&epistemic_reasoning::CHOICES),
            Task::Fever => Some(&fever::CHOICES),
            Task::TruthfulQa => Some(&truthfulqa::CHOICES),
            Task::QaWikidata | Task::HotpotQa => None,
        }
    }

    /// The greedy generation length of a generation task.
    pub fn max_new_tokens(self) -> Option<usize> {
        match self {
            Task::QaWikidata => Some(qa_wikidata::MAX_NEW_TOKENS),
            Task::HotpotQa => Some(hotpotqa::MAX_NEW_TOKENS),
            _ => None,
        }
    }

    /// Where the task's LASER-ordered file lies under a `datasets/` directory laid out
    /// like `../shared/datasets/`.
    pub fn laser_file(self) -> &'static str {
        match self {
            Task::EpistemicReasoning => {
                "bigbench_epistemic_reasoning/laser_epistemic_reasoning.jsonl"
            }
            Task::QaWikidata => "bigbench_qa_wikidata/laser_qa_wikidata.jsonl",
            Task::Fever => "fever/laser_fever.jsonl",
            Task::TruthfulQa => "truthfulqa/laser_truthfulqa_pointwise.jsonl",
            Task::HotpotQa => "hotpotqa/laser_hotpot_unfiltered.jsonl",
        }
    }

    /// Whether the `bigbench` package's `task.json` can rebuild this task's file
    /// ([`bigbench::rebuild`]).
    pub fn is_bigbench(self) -> bool {
        matches!(self, Task::EpistemicReasoning | Task::QaWikidata)
    }

    /// Parse one record of the task's data file into (prompt, answer).
    pub fn parse_record(
        self,
        rec: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(String, Answer), error::FieldError> {
        match self {
            Task::EpistemicReasoning => epistemic_reasoning::parse(rec),
            Task::QaWikidata => qa_wikidata::parse(rec),
            Task::Fever => fever::parse(rec),
            Task::TruthfulQa => truthfulqa::parse(rec),
            Task::HotpotQa => hotpotqa::parse(rec),
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| DataError::UnknownTask(s.to_owned()))
    }
}

/// What the model must produce for one example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// Classification: the continuations to score (with their leading space) and the
    /// index of the gold one.
    Choice { choices: Vec<String>, gold: usize },
    /// Generation: greedy decoding of at most `max_new_tokens` tokens; correct when
    /// `target` occurs in the continuation.
    Generate {
        target: String,
        max_new_tokens: usize,
    },
}

impl Answer {
    /// A classification answer.
    pub fn choice(choices: &[&str], gold: usize) -> Answer {
        Answer::Choice {
            choices: choices.iter().map(|c| (*c).to_owned()).collect(),
            gold,
        }
    }

    /// A generation answer.
    pub fn generate(target: &str, max_new_tokens: usize) -> Answer {
        Answer::Generate {
            target: target.to_owned(),
            max_new_tokens,
        }
    }

    /// The continuation whose log-probability after the prompt is the gold answer's
    /// log-probability (for the log-loss): the gold choice, or `" " + target` (LASER
    /// scores `prompt + " " + answer`).
    pub fn gold_continuation(&self) -> String {
        match self {
            Answer::Choice { choices, gold } => choices[*gold].clone(),
            Answer::Generate { target, .. } => format!(" {target}"),
        }
    }

    /// The gold class index of a classification answer.
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
    /// 0-based row in the file (the index among its non-blank lines; equal to
    /// `line - 1` when the file has no blank lines). Splits and samples refer to rows.
    pub row: usize,
    /// The exact prompt fed to the model.
    pub prompt: String,
    pub answer: Answer,
}

/// Read a task's `laser_*.jsonl` file into examples, in file order.
///
/// Blank (whitespace-only) lines are skipped; every other line must be a JSON object
/// with the task's fields. An empty file is an error.
pub fn load(task: Task, path: &Path) -> Result<Vec<Example>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_jsonl(task, &text, path)
}

/// [`load`] on text already read; `path` is used in error messages only.
pub fn parse_jsonl(task: Task, text: &str, path: &Path) -> Result<Vec<Example>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let rec: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| DataError::Json {
                path: path.to_owned(),
                line: line_no,
                message: e.to_string(),
            })?;
        let (prompt, answer) = task.parse_record(&rec).map_err(|e| DataError::Field {
            path: path.to_owned(),
            line: line_no,
            field: e.field.to_owned(),
            problem: e.problem,
        })?;
        examples.push(Example {
            row: examples.len(),
            prompt,
            answer,
        });
    }
    if examples.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn task_names_round_trip() {
        for t in Task::ALL {
            assert_eq!(t.name().parse::<Task>().unwrap(), t);
            assert_eq!(t.to_string(), t.name());
            let j = serde_json::to_string(&t).unwrap();
            assert_eq!(j, format!("\"{}\"", t.name()));
            assert_eq!(serde_json::from_str::<Task>(&j).unwrap(), t);
            assert_eq!(t.choices().is_some(), t.kind() == TaskKind::Classification);
            assert_eq!(
                t.max_new_tokens().is_some(),
                t.kind() == TaskKind::Generation
            );
        }
        let e = "truthful_qa".parse::<Task>().unwrap_err();
        assert!(e.to_string().contains("unknown task `truthful_qa`"), "{e}");
    }

    #[test]
    fn generation_lengths_and_choices() {
        assert_eq!(Task::QaWikidata.max_new_tokens(), Some(10));
        assert_eq!(Task::HotpotQa.max_new_tokens(), Some(15));
        assert_eq!(
            Task::EpistemicReasoning.choices().unwrap(),
            &[" entailment", " non-entailment"]
        );
        assert_eq!(Task::Fever.choices().unwrap(), &[" false", " true"]);
        assert_eq!(Task::TruthfulQa.choices().unwrap(), &[" false", " true"]);
    }

    #[test]
    fn parse_jsonl_rows_and_blank_lines() {
        let text =
            "{\"question\": \"A.\", \"answer\": 1}\n\n{\"question\": \"B\", \"answer\": 0}\r\n";
        let ex = parse_jsonl(Task::Fever, text, &PathBuf::from("f.jsonl")).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1].row, 1);
        assert_eq!(
            ex[1].prompt,
            "Consider the following claim: B. Is this claim true or false. The claim is"
        );
        assert_eq!(ex[1].answer.gold(), Some(0));
    }

    /// Write `text` to a file in a fresh temp dir and load it.
    fn load_text(
        task: Task,
        text: &str,
    ) -> (tempfile::TempDir, PathBuf, Result<Vec<Example>, DataError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, text).unwrap();
        let r = load(task, &path);
        (dir, path, r)
    }

    #[test]
    fn load_errors_name_file_line_and_field() {
        let good = "{\"inputs\": \"x\\nRelation:\", \"target\": \"entailment\", \"split\": \"validation\"}\n";
        let cases: [(Task, String, usize, Option<&str>, &str); 8] = [
            (
                Task::EpistemicReasoning,
                format!("{good}{good}not json\n"),
                3,
                None,
                "not a valid JSON object",
            ),
            (
                Task::EpistemicReasoning,
                format!("{good}[1, 2]\n"),
                2,
                None,
                "not a valid JSON object",
            ),
            (
                Task::EpistemicReasoning,
                format!("{good}{{\"inputs\": \"x\"}}\n"),
                2,
                Some("target"),
                "missing",
            ),
            (
                Task::EpistemicReasoning,
                format!("{good}{{\"inputs\": \"x\", \"target\": \"maybe\"}}\n"),
                2,
                Some("target"),
                "unknown label \"maybe\"",
            ),
            (
                Task::Fever,
                "{\"question\": \"A\", \"answer\": 1}\n{\"question\": 5, \"answer\": 1}\n".into(),
                2,
                Some("question"),
                "expected a string, found a number",
            ),
            (
                Task::Fever,
                "\n{\"question\": \"A\", \"answer\": 3}\n".into(),
                2,
                Some("answer"),
                "unknown label 3",
            ),
            (
                Task::TruthfulQa,
                "{\"prompt\": \"p\", \"label\": true}\n".into(),
                1,
                Some("label"),
                "found a boolean",
            ),
            (
                Task::HotpotQa,
                "{\"question\": \"q\", \"answer\": \"\"}\n".into(),
                1,
                Some("answer"),
                "empty answer",
            ),
        ];
        for (task, text, line, field, problem) in cases {
            let (_dir, path, r) = load_text(task, &text);
            let e = r.unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("{}:{line}: ", path.display())),
                "{msg}"
            );
            if let Some(f) = field {
                assert!(msg.contains(&format!("field `{f}`")), "{msg}");
                assert!(
                    matches!(&e, DataError::Field { line: l, field: ff, .. } if *l == line && ff == f)
                );
            } else {
                assert!(matches!(&e, DataError::Json { line: l, .. } if *l == line));
            }
            assert!(msg.contains(problem), "{msg}");
        }
        let (_dir, path, r) = load_text(Task::QaWikidata, "\n  \n");
        let msg = r.unwrap_err().to_string();
        assert_eq!(msg, format!("{}: no examples", path.display()));
        let missing = PathBuf::from("/nonexistent/c2i/laser_fever.jsonl");
        let msg = load(Task::Fever, &missing).unwrap_err().to_string();
        assert!(
            msg.starts_with("/nonexistent/c2i/laser_fever.jsonl: cannot read"),
            "{msg}"
        );
    }

    #[test]
    fn answer_serde_round_trip() {
        let a = Answer::generate("Delhi", 15);
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(
            j,
            r#"{"kind":"generate","target":"Delhi","max_new_tokens":15}"#
        );
        assert_eq!(serde_json::from_str::<Answer>(&j).unwrap(), a);
    }
}
