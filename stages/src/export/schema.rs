//! report.json's schema: one set of types that the engine fills and serializes, and
//! that the Markdown report, the plots and `c2i compare` deserialize and read, so a
//! field is named, typed and documented in one place.
//!
//! Fields added after the first reports were written (racing, the data and task
//! records) have defaults, so a report written by an older binary still reads; a
//! report that lacks a field every version wrote is refused by [`Report::read`] with an
//! error that names the file and the field.

use crate::data::Format;
use crate::eval::evaluator::TaskMetrics;
use crate::eval::metrics::SelectionScore;
use crate::eval::race::Racing;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A report that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("reading {path}: {reason} (expected a run's output directory or its report.json)")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}: not a c2i report: {reason}")]
    Format {
        path: PathBuf,
        reason: serde_json::Error,
    },
}

/// How candidates are found (`search.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Compress to Impress: score every matrix from one gradient pass, evaluate the top-k.
    Gradient,
    /// LASER's exhaustive search: evaluate every (layer, matrix, rank) in the grid.
    Laser,
}

impl SearchMode {
    pub fn name(self) -> &'static str {
        match self {
            SearchMode::Gradient => "gradient",
            SearchMode::Laser => "laser",
        }
    }
}

/// How one stage instance was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Found in the on-disk cache.
    Hit,
    /// Computed (and stored).
    Computed,
    /// Reused from this process's memory (an earlier variant of a sweep).
    Memo,
    /// Missing locally, fetched from the remote cache (every blob rehashed).
    Pulled,
    /// The remote had it, but a blob failed its hash or size (or the entry its
    /// checks): rejected, and computed here instead.
    #[serde(rename = "remote-rejected")]
    RemoteRejected,
    /// The remote had it, but not signed by a trusted key: not used, computed instead.
    #[serde(rename = "remote-untrusted")]
    RemoteUntrusted,
}

impl Outcome {
    /// The name used in run.json and on the console.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Computed => "computed",
            Outcome::Memo => "memo",
            Outcome::Pulled => "pulled",
            Outcome::RemoteRejected => "remote-rejected",
            Outcome::RemoteUntrusted => "remote-untrusted",
        }
    }

    /// Work this run did for the instance (computed here, or fetched).
    pub fn did_work(self) -> bool {
        !matches!(self, Outcome::Hit | Outcome::Memo)
    }
}

/// One stage instance of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    /// What the instance is about (matrix, K, candidate...).
    pub instance: String,
    pub key: String,
    pub outcome: Outcome,
    pub seconds: f64,
    /// Why a cached or remote copy was not used, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where it was computed: `local`, `pool` or `slurm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The machine that computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The Slurm job (`JOBID_TASK`) or pool worker (`pid N`) that computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// How many times it was started (more than 1 after a worker died or was cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl StageRecord {
    /// An evaluation of the held-out rows (its instance ends in `, heldout`): it
    /// reports, it does not search.
    pub fn is_heldout(&self) -> bool {
        self.stage == "evaluate"
            && self
                .instance
                .rsplit(',')
                .next()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("heldout"))
    }
}

/// Which family of metrics an evaluation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsKind {
    Classification,
    /// Per-row choices: accuracy against chance.
    MultipleChoice,
    Generation,
}

/// One evaluation's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub samples: usize,
    pub accuracy: f64,
    pub log_loss: f64,
    pub metrics: TaskMetrics,
    pub selection: SelectionScore,
}

impl Figures {
    /// The figures with the collapse flag set from the stored prediction histogram and
    /// `collapse_threshold` (so a changed threshold changes the report without
    /// recomputing anything).
    pub fn new(
        samples: usize,
        mut metrics: TaskMetrics,
        log_loss: f64,
        selection: SelectionScore,
        collapse_threshold: f64,
    ) -> Figures {
        if let TaskMetrics::Classification(m) = &mut metrics {
            m.collapse_threshold = collapse_threshold;
            m.collapsed = m.max_predicted_share > collapse_threshold;
        }
        Figures {
            samples,
            accuracy: selection.accuracy,
            log_loss,
            metrics,
            selection,
        }
    }

    pub fn kind(&self) -> MetricsKind {
        match self.metrics {
            TaskMetrics::Classification(_) => MetricsKind::Classification,
            TaskMetrics::MultipleChoice(_) => MetricsKind::MultipleChoice,
            TaskMetrics::Generation(_) => MetricsKind::Generation,
        }
    }

    /// Classification only.
    pub fn balanced_accuracy(&self) -> Option<f64> {
        self.metrics.balanced_accuracy()
    }

    fn classification(&self) -> Option<&crate::eval::metrics::ClassificationMetrics> {
        match &self.metrics {
            TaskMetrics::Classification(m) => Some(m),
            _ => None,
        }
    }

    fn generation(&self) -> Option<&crate::eval::metrics::GenerationMetrics> {
        match &self.metrics {
            TaskMetrics::Generation(m) => Some(m),
            _ => None,
        }
    }

    pub fn macro_f1(&self) -> Option<f64> {
        self.classification().map(|m| m.macro_f1)
    }

    /// The share of the most frequent gold class (classification only).
    pub fn majority_class_rate(&self) -> Option<f64> {
        self.classification().map(|m| m.majority_class_rate)
    }

    /// Per-row multiple choice: the mean of 1/choices.
    pub fn chance(&self) -> Option<f64> {
        match &self.metrics {
            TaskMetrics::MultipleChoice(m) => Some(m.chance),
            _ => None,
        }
    }

    pub fn predicted_histogram(&self) -> Option<&[usize]> {
        self.classification()
            .map(|m| m.predicted_histogram.as_slice())
    }

    pub fn gold_histogram(&self) -> Option<&[usize]> {
        self.classification().map(|m| m.gold_histogram.as_slice())
    }

    pub fn max_predicted_share(&self) -> Option<f64> {
        self.classification().map(|m| m.max_predicted_share)
    }

    /// Whether one answer takes more than the collapse threshold of the predictions
    /// (classification only).
    pub fn collapsed(&self) -> Option<bool> {
        self.classification().map(|m| m.collapsed)
    }

    pub fn is_collapsed(&self) -> bool {
        self.collapsed() == Some(true)
    }

    pub fn exact_match(&self) -> Option<f64> {
        self.generation().map(|m| m.exact_match)
    }

    pub fn token_f1(&self) -> Option<f64> {
        self.generation().map(|m| m.token_f1)
    }

    pub fn empty_rate(&self) -> Option<f64> {
        self.generation().map(|m| m.empty_rate)
    }

    pub fn prompt_copy_rate(&self) -> Option<f64> {
        self.generation().map(|m| m.prompt_copy_rate)
    }
}

/// One scored (matrix, K, rho).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub matrix: String,
    pub layer: usize,
    /// `q`, `k`, `v`, `o`, `gate`, `up` or `down`.
    pub kind: String,
    pub blocks: usize,
    pub keep: f64,
    pub score: f64,
}

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluated {
    pub matrix: String,
    pub layer: usize,
    pub blocks: usize,
    pub keep: f64,
    /// The gradient score (none in LASER mode).
    pub score: Option<f64>,
    /// Its figures on the rows it was evaluated on: all the selection rows, or, for a
    /// candidate a race stopped early, the rows up to that round (`partial`).
    pub selection: Figures,
    /// Selection rows it was evaluated on (absent from reports written before racing,
    /// which evaluated every candidate on every row: see [`Evaluated::rows`]).
    #[serde(default)]
    pub rows_evaluated: usize,
    /// The race stopped it after this round (1-based): its figures are partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_after_round: Option<usize>,
}

impl Evaluated {
    /// Selection rows it was evaluated on.
    pub fn rows(&self) -> usize {
        if self.rows_evaluated == 0 {
            self.selection.samples
        } else {
            self.rows_evaluated
        }
    }
}

/// What racing did (`search.racing`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaceSummary {
    pub racing: Racing,
    /// Where each round ends, in selection rows.
    pub round_ends: Vec<usize>,
    /// Candidates still in the race after each round.
    pub alive_after_round: Vec<usize>,
    /// Candidate-rows evaluated, and what evaluating every candidate on every row
    /// would have been.
    pub candidate_rows: usize,
    pub candidate_rows_full: usize,
    /// 1 - candidate_rows / candidate_rows_full.
    pub saved_share: f64,
    /// `exact`: the winner is the one a full evaluation picks; `halving`: statistical.
    pub guarantee: String,
}

/// The best candidate with its held-out figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub matrix: String,
    pub blocks: usize,
    pub keep: f64,
    pub selection: Figures,
    pub heldout: Figures,
}

impl Best {
    /// Whether `c` is this candidate.
    pub fn is(&self, c: &Evaluated) -> bool {
        self.matrix == c.matrix && self.blocks == c.blocks && self.keep == c.keep
    }
}

/// The unmodified model's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub selection: Figures,
    pub heldout: Figures,
}

/// A file written, and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The factored matrix file, with parameter counts against the dense matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactoredInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub params: usize,
    pub dense_params: usize,
}

/// What was exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub dense: Option<Written>,
    pub factored: Option<FactoredInfo>,
    /// BLAKE3 of every exported file, by its path relative to the output directory
    /// (what the lock file records; not in report.json).
    #[serde(skip)]
    pub digests: BTreeMap<String, String>,
}

/// The data file of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// BLAKE3 of the file.
    pub digest: String,
    pub format: Format,
    /// Examples read (after any skipped rows).
    pub rows: usize,
    /// Rows left out, with the reason (BigBench generation rows with several targets).
    pub skipped: usize,
    /// The first `selection_rows` rows are the selection split.
    pub selection_rows: usize,
    pub selection_share: f64,
}

/// The task of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    /// The content digest that enters the gradients' and evaluations' keys.
    pub digest: String,
    /// The task file, or `builtin:NAME`.
    pub file: PathBuf,
    /// Every key with its default filled in.
    pub definition: serde_json::Value,
}

/// report.json: everything a run found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub task: String,
    pub model: String,
    pub mode: SearchMode,
    /// `accuracy` or `balanced_accuracy`.
    pub selection_metric: String,
    /// Every scored (matrix, K, keep) (gradient mode).
    pub scores: Vec<Scored>,
    /// Absent when the run stopped before the evaluations.
    pub baseline: Option<Baseline>,
    /// In the order the search gave them.
    pub candidates: Vec<Evaluated>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race: Option<RaceSummary>,
    pub best: Option<Best>,
    /// The stage instances, in the order the DAG resolved them.
    pub stages: Vec<StageRecord>,
    /// Wall time of the run.
    pub seconds: f64,
    /// The pipeline as resolved for this run.
    pub resolved: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportInfo>,
    /// The data rows (0-based, in the data file's order; LASER's order for BigBench)
    /// each sample used: `calibration` by the gradient pass, `evaluation` by the
    /// baseline's and every candidate's selection evaluation, `heldout` by the
    /// baseline's and the winner's held-out evaluation.
    #[serde(default)]
    pub rows: BTreeMap<String, Vec<usize>>,
    /// The data file read.
    #[serde(default)]
    pub data: PathBuf,
    /// What reproduces the run's data: the file's digest, format and row counts
    /// (absent when a run failed before reading it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_info: Option<DataInfo>,
    /// The task: name, content digest, where it was defined and what it means
    /// (absent from reports written before task files).
    #[serde(default)]
    pub task_info: Option<TaskInfo>,
}

impl Report {
    /// Reads a report.json, or the report.json of an output directory.
    pub fn read(path: &Path) -> Result<Report, SchemaError> {
        let file = if path.is_dir() {
            path.join("report.json")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|reason| SchemaError::Io {
            path: file.clone(),
            reason,
        })?;
        serde_json::from_slice(&bytes).map_err(|reason| SchemaError::Format { path: file, reason })
    }

    /// The majority-class rate on the selection samples (it depends on the gold labels
    /// only): from the baseline, else from the first candidate that has one.
    pub fn majority_rate(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .and_then(|b| b.selection.majority_class_rate())
            .or_else(|| {
                self.candidates
                    .iter()
                    .find_map(|c| c.selection.majority_class_rate())
            })
    }

    /// The seconds of the search stages this run computed (or pulled), the number of
    /// search stage instances it found cached, and the seconds of its held-out
    /// evaluations.
    pub fn search_cost(&self) -> (f64, usize, f64) {
        let (mut search, mut cached, mut heldout) = (0.0, 0, 0.0);
        for r in &self.stages {
            let secs = if r.seconds.is_finite() {
                r.seconds
            } else {
                0.0
            };
            match (r.outcome.did_work(), r.is_heldout()) {
                (true, true) => heldout += secs,
                (true, false) => search += secs,
                (false, false) => cached += 1,
                (false, true) => {}
            }
        }
        (search, cached, heldout)
    }
}
