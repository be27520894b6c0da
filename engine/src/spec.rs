//! The pipeline file: TOML -> a typed, validated [`Spec`].
//!
//! Unknown keys and wrong types are errors that name the file, the line and the field.
//! `--set a.b=value` overrides any key; the value uses TOML syntax (`3`, `[1, 2]`,
//! `"mlp"`), and a bare word that is not valid TOML is taken as a string.
//! Relative paths in the file are resolved against the file's directory.

use c2i_stages::data::split::{SampleSize, SampleSpec};
use c2i_stages::data::{DataError, Task};
use c2i_stages::eval::metrics::SelectionMetric;
use c2i_stages::eval::race::Racing;
use c2i_stages::model::weights::SaveDType;
use c2i_stages::model::MatrixKind;
use c2i_stages::score::ScoreRule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What can be wrong with a pipeline file or an override.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: field `{field}`: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
    #[error("{path}: --set {assignment}: {message}")]
    Override {
        path: PathBuf,
        assignment: String,
        message: String,
    },
    #[error("{path}: field `{field}`: expected {expected}")]
    Invalid {
        path: PathBuf,
        field: String,
        expected: String,
    },
    /// The task named by `data.task` (a built-in name or a task file) is unusable.
    #[error("{path}: field `data.task`: {source}")]
    Task {
        path: PathBuf,
        #[source]
        source: DataError,
    },
}

/// Which model file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A `.gguf` file, a Hugging Face directory, or a model c2i fetches: `smollm2`,
    /// `qwen2.5-0.5b`, `gemma3-270m`, `qwen2.5-1.5b`.
    pub path: String,
}

/// Which data and which samples of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A built-in task (`epistemic_reasoning`, `qa_wikidata`, `fever`, `truthfulqa`,
    /// `hotpotqa`, `bbh_<task>` for 24 BIG-Bench-Hard tasks) or the path of a task file,
    /// relative to the pipeline file.
    pub task: String,
    /// The rows (JSONL, CSV, Parquet, a BigBench task.json or a BIG-Bench-Hard file).
    /// When left out, the task file's own `path`; for a built-in task, its rows as
    /// shipped with c2i; for another `format = "bigbench"` task, its `task.json` in the
    /// BIG-bench checkout `$C2I_BIGBENCH_DIR` names.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_calibration")]
    pub calibration: SampleSpec,
    #[serde(default = "default_evaluation")]
    pub evaluation: SampleSpec,
    /// Held-out rows (the last 80%) on which the baseline and the winner are reported.
    #[serde(default = "default_heldout")]
    pub heldout: SampleSpec,
}

// The defaults below are chosen from `c2i study` (README "What the score predicts":
// epistemic reasoning and qa_wikidata on SmolLM2-135M, 270 measured (matrix, keep)
// each; logical_deduction as a check); each says what it rests on.

/// 100 calibration rows: the rankings are not stable with fewer. On qa_wikidata,
/// `first-order`'s matrix ranking from 25 rows has Kendall tau 0.83 against 400 rows
/// and shares 1 of its top 3; from 100 rows 0.92 and 2 of 3 (epistemic reasoning: 0.96
/// already at 25). The gradient pass is the cheap part (5.6 s on qa_wikidata and 30 s
/// on epistemic reasoning for 100 rows, of a 5-6 minute search).
fn default_calibration() -> SampleSpec {
    SampleSpec::new(SampleSize::N(100), 0)
}
/// 100 evaluation rows: the candidates' gains are a few rows (accuracy moves by 0.01
/// per row); on epistemic reasoning the same winner is picked from 25 to 200 rows but
/// its selection accuracy falls from 0.80 to 0.625 as the rows grow (the winner's
/// curse of small samples), so fewer rows only make the reported selection gain less
/// true; racing already skips the rows that cannot change the winner.
fn default_evaluation() -> SampleSpec {
    SampleSpec::new(SampleSize::N(100), 1)
}
fn default_heldout() -> SampleSpec {
    SampleSpec::new(SampleSize::N(200), 2)
}

/// How candidates are found (report.json names it too).
pub use c2i_stages::export::schema::SearchMode;

/// What `top_k` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// The k best (matrix, K, rho) entries are evaluated.
    Entries,
    /// The k best matrices (by their best entry), each evaluated at every (K, rho).
    Matrices,
}

/// Which matrices are searched: a group name or a list of kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatrixSelection {
    Group(String),
    Kinds(Vec<String>),
}

/// Which layers are searched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelection {
    /// `all` or `last_third`.
    Named(String),
    List(Vec<usize>),
}

/// The search space and rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    #[serde(default = "default_mode")]
    pub mode: SearchMode,
    #[serde(default = "default_matrices")]
    pub matrices: MatrixSelection,
    #[serde(default = "default_layers")]
    pub layers: LayerSelection,
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Whether `top_k` counts entries or matrices.
    #[serde(default = "default_select")]
    pub select: Select,
    /// K: number of row blocks (1 = plain LASER).
    #[serde(default = "default_blocks")]
    pub blocks: Vec<usize>,
    /// rho: fraction of each block's rank kept, in (0, 1].
    #[serde(default)]
    pub keep: Option<Vec<f64>>,
    /// LASER's convention instead of `keep`: rho = 1 - 0.1 * rate, rate in [0, 10).
    #[serde(default)]
    pub rate: Option<Vec<f64>>,
    /// `negative-sv-grad` (the paper's rule), `first-order` or `first-order-slope`
    /// (`c2i study` measures how well each predicts real gains).
    #[serde(default = "default_score")]
    pub score: ScoreRule,
    /// `accuracy` (LASER's rule) or `balanced_accuracy`; ties go to lower log-loss.
    #[serde(default = "default_selection")]
    pub selection_metric: SelectionMetric,
    /// A candidate whose predictions put more than this share on one answer is flagged.
    #[serde(default = "default_collapse")]
    pub collapse_threshold: f64,
    /// How candidates race over the selection rows: `exact` (stop one only when it
    /// provably cannot win), `halving` (successive halving) or `off`.
    #[serde(default)]
    pub racing: Racing,
}

/// rho when neither `keep` nor `rate` is given.
pub const DEFAULT_KEEP: [f64; 3] = [0.02, 0.1, 0.4];

fn default_mode() -> SearchMode {
    SearchMode::Gradient
}
fn default_matrices() -> MatrixSelection {
    MatrixSelection::Group("mlp".into())
}
fn default_layers() -> LayerSelection {
    LayerSelection::Named("all".into())
}
/// 5 matrices: no rule's top 3 holds a gain a random pick would not find, but
/// `first-order`'s top 5 holds +0.13 selection accuracy on qa_wikidata (random 5
/// matrices: +0.044 expected; the oracle's best, +0.15, is its 7th matrix), and on
/// epistemic reasoning +0.10 (random: +0.10). Each matrix more costs |K| x |keep|
/// candidates.
fn default_top_k() -> usize {
    5
}
/// Every keep of each chosen matrix: `first-order` names the measured best keep of a
/// matrix for 0.46-0.51 of the matrices (a random keep: 0.33), so the evaluation, not
/// the rule, should pick the keep.
fn default_select() -> Select {
    Select::Matrices
}
/// `first-order` (-sum g_i sigma_i): on both tasks it orders the measured log-loss
/// changes the right way round (Spearman +0.56 and +0.49 over 270 entries) and the
/// accuracy changes weakly (+0.26, +0.25), where the paper's `negative-sv-grad` orders
/// them backwards (-0.55 and -0.50; accuracy +0.02 and -0.36); logical_deduction, the
/// check, agrees (+0.51 against -0.47). `first-order-slope` is as good within noise
/// (+0.56 / +0.50 / +0.52); `first-order` is the plain estimate, in nats.
fn default_score() -> ScoreRule {
    ScoreRule::FirstOrder
}
fn default_blocks() -> Vec<usize> {
    vec![1]
}
fn default_selection() -> SelectionMetric {
    SelectionMetric::Accuracy
}
fn default_collapse() -> f64 {
    0.95
}

/// Where stage instances run (`[run] executor`, `c2i run --executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// In this process (the default).
    #[default]
    Local,
    /// `run.jobs` worker processes on this machine, sharing the cache.
    Pool,
    /// Slurm job arrays of `c2i worker run`, through a shared cache (`[cache] remote`).
    Slurm,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(ExecutorKind::Local),
            "pool" => Ok(ExecutorKind::Pool),
            "slurm" => Ok(ExecutorKind::Slurm),
            other => Err(format!(
                "unknown executor `{other}`: expected local, pool or slurm"
            )),
        }
    }
}

impl ExecutorKind {
    /// The name used in files and records.
    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::Pool => "pool",
            ExecutorKind::Slurm => "slurm",
        }
    }
}

/// How the `slurm` executor submits work (`[run.slurm]`). Every stage instance that
/// must be computed becomes one task of a job array running `c2i worker run KEY`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSpec {
    /// `sbatch --partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `sbatch --time` (e.g. `"01:00:00"`).
    #[serde(default)]
    pub time: Option<String>,
    /// `sbatch --mem` (e.g. `"8G"`).
    #[serde(default)]
    pub mem: Option<String>,
    /// `sbatch --cpus-per-task`; a worker uses that many threads.
    #[serde(default)]
    pub cpus_per_task: Option<u32>,
    /// `sbatch --gres` (e.g. `"gpu:1"`).
    #[serde(default)]
    pub gres: Option<String>,
    /// At most this many tasks of an array run at once (`--array=0-N%M`).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Actions computed one after the other by each array task (default 1): more
    /// amortizes a worker's start (loading the model) over short actions.
    #[serde(default = "default_actions_per_task")]
    pub actions_per_task: u32,
    /// More `sbatch` arguments, as given (e.g. `["--account=ml", "--qos=short"]`).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Seconds between two looks at the queue (`squeue`).
    #[serde(default = "default_poll_secs")]
    pub poll_secs: f64,
    /// Where job scripts, logs and exit files go (default `OUTPUT_DIR/slurm`); must be
    /// on a file system the compute nodes share with this machine.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// The command that starts c2i on a compute node (default: this very binary, by
    /// its absolute path).
    #[serde(default)]
    pub worker_command: Option<String>,
    /// The local cache directory of the workers (default: the coordinator's own, which
    /// is right when it is on a shared file system; a node-local scratch directory
    /// otherwise, results then travel through `[cache] remote`).
    #[serde(default)]
    pub worker_cache: Option<PathBuf>,
}

fn default_poll_secs() -> f64 {
    5.0
}
fn default_actions_per_task() -> u32 {
    1
}

impl Default for SlurmSpec {
    fn default() -> Self {
        SlurmSpec {
            partition: None,
            time: None,
            mem: None,
            cpus_per_task: None,
            gres: None,
            max_parallel: None,
            actions_per_task: default_actions_per_task(),
            extra_args: Vec::new(),
            poll_secs: default_poll_secs(),
            log_dir: None,
            worker_command: None,
            worker_cache: None,
        }
    }
}

/// Knobs that change how work runs, not what it means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Samples per forward/backward in the gradient pass.
    #[serde(default = "default_micro_batch")]
    pub micro_batch: usize,
    /// Samples per forward in evaluations.
    #[serde(default = "default_eval_batch")]
    pub eval_batch: usize,
    /// Where stage instances run.
    #[serde(default)]
    pub executor: ExecutorKind,
    /// Worker processes of the `pool` executor.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// How often a stage instance whose worker died or was cancelled is tried again
    /// (an instance that fails by itself, e.g. on a malformed input, is not).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub slurm: SlurmSpec,
    /// Where the gradient pass, the block SVDs and the evaluations run: `cpu` (the
    /// default), `cuda` or `cuda:N` (a c2i built with `--features cuda`).
    #[serde(default = "default_device")]
    pub device: String,
    /// The weights' dtype on that device: `f32` (the default) or `bf16` (CUDA only;
    /// gradients are still accumulated in f32).
    #[serde(default = "default_dtype_name")]
    pub dtype: String,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype_name() -> String {
    "f32".into()
}

fn default_micro_batch() -> usize {
    8
}
fn default_eval_batch() -> usize {
    16
}
fn default_jobs() -> usize {
    2
}
fn default_retries() -> u32 {
    2
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            micro_batch: default_micro_batch(),
            eval_batch: default_eval_batch(),
            executor: ExecutorKind::Local,
            jobs: default_jobs(),
            retries: default_retries(),
            slurm: SlurmSpec::default(),
            device: default_device(),
            dtype: default_dtype_name(),
        }
    }
}

/// What to write besides the reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub dir: PathBuf,
    /// Export the adapted model densely (safetensors, HF layout).
    #[serde(default = "default_true")]
    pub dense: bool,
    /// Also export the factored form (U·S and V per block) of the replaced matrix.
    #[serde(default)]
    pub factored: bool,
    /// The dtype of the exported model's tensors: `f32` (default), `bf16` or `f16`.
    #[serde(default = "default_dtype")]
    pub dtype: SaveDType,
}

fn default_dtype() -> SaveDType {
    SaveDType::F32
}

fn default_true() -> bool {
    true
}

/// Where the cache lives, and what of a shared one to trust.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Default `$C2I_HOME/cache`; `--cache DIR` overrides.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A shared cache read on a local miss and written with what the run computed:
    /// `s3://bucket/prefix`, `file:///abs/path` or an absolute path. The environment
    /// variable `C2I_CACHE_REMOTE` wins over this (empty: no remote), and
    /// `c2i run --remote` wins over both.
    #[serde(default)]
    pub remote: Option<String>,
    /// S3 endpoint (`http://127.0.0.1:9000` for a local server); `AWS_ENDPOINT_URL`
    /// wins over it.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Longest time one remote request may take, in seconds (default 300).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Whether `endpoint` may be plain `http://`: requests signed with your
    /// credentials would travel unencrypted.
    #[serde(default)]
    pub allow_http: bool,
    /// Write what the run computed to the remote (false: a reader that never writes;
    /// `c2i run --no-push`).
    #[serde(default = "default_true")]
    pub push: bool,
    /// A private key (PKCS#8 PEM from `c2i cache keygen`) that signs every entry the
    /// run writes; `C2I_SIGNING_KEY` wins over it.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Public keys (`ed25519:BASE64`): when set, a remote entry is used only if one of
    /// them signed it. `C2I_TRUSTED_KEYS` (comma-separated) wins over it.
    #[serde(default)]
    pub trusted_keys: Option<Vec<String>>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            dir: None,
            remote: None,
            endpoint: None,
            timeout_secs: None,
            allow_http: false,
            push: true,
            signing_key: None,
            trusted_keys: None,
        }
    }
}

/// A whole pipeline, as written in the file (after overrides and defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub model: ModelSpec,
    pub data: DataSpec,
    #[serde(default = "default_search")]
    pub search: SearchSpec,
    #[serde(default)]
    pub run: RunSpec,
    pub output: OutputSpec,
    #[serde(default)]
    pub cache: CacheSpec,
}

fn default_search() -> SearchSpec {
    toml::from_str("").unwrap_or_else(|_| unreachable!("every search field has a default"))
}

/// A pipeline file read, overridden, validated, with paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub file: PathBuf,
    pub spec: Spec,
    /// The task `data.task` names, parsed and validated.
    pub task: Task,
    /// Where the stages compute (`run.device`, `run.dtype`), checked.
    pub device: crate::action::DeviceSpec,
    /// The matrix kinds searched.
    pub kinds: Vec<MatrixKind>,
    /// rho values (from `keep`, or from `rate`).
    pub keep: Vec<f64>,
}

/// The dotted name of the field written at `offset`: the nearest `[table]` header
/// above it and the key on its line (best effort, for error messages).
fn field_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match (table, key.is_empty() || line.starts_with('[')) {
        (Some(t), false) => format!("{t}.{key}"),
        (None, false) => key.to_string(),
        (Some(t), true) => t,
        (None, true) => "(top level)".into(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses one `a.b=value` override into the table.
fn apply_override(table: &mut toml::Table, assignment: &str, file: &Path) -> Result<(), SpecError> {
    let err = |message: String| SpecError::Override {
        path: file.to_path_buf(),
        assignment: assignment.to_string(),
        message,
    };
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| err("expected KEY=VALUE, e.g. search.top_k=3".into()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err("the key must be dotted names, e.g. search.keep".into()));
    }
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").ok_or_else(|| err("no value".into()))?,
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| err(format!("`{p}` is not a table")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl Pipeline {
    /// Reads `file`, applies `overrides` in order, validates.
    pub fn load(file: &Path, overrides: &[String]) -> Result<Pipeline, SpecError> {
        let text = std::fs::read_to_string(file).map_err(|source| SpecError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        Self::parse(&text, file, overrides)
    }

    /// As [`Pipeline::load`], on text already read (`file` names it in errors and
    /// anchors relative paths).
    pub fn parse(text: &str, file: &Path, overrides: &[String]) -> Result<Pipeline, SpecError> {
        let parse_err = |e: toml::de::Error| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            let field = e
                .span()
                .map_or_else(|| "(unknown)".to_string(), |s| field_at(text, s.start));
            SpecError::Parse {
                path: file.to_path_buf(),
                line,
                column,
                field,
                message: e.message().trim().to_string(),
            }
        };
        // The file alone first, so its errors carry its line numbers.
        let mut spec: Spec = toml::from_str(text).map_err(parse_err)?;
        if !overrides.is_empty() {
            let mut table: toml::Table = toml::from_str(text).map_err(parse_err)?;
            for o in overrides {
                apply_override(&mut table, o, file)?;
            }
            spec =
                Spec::deserialize(toml::Value::Table(table)).map_err(|e| SpecError::Override {
                    path: file.to_path_buf(),
                    assignment: overrides.join(" "),
                    message: e.message().to_string(),
                })?;
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        if let Some(p) = &spec.data.path {
            spec.data.path = Some(resolve(p));
        }
        spec.output.dir = resolve(&spec.output.dir);
        if let Some(d) = &spec.cache.dir {
            spec.cache.dir = Some(resolve(d));
        }
        if let Some(k) = &spec.cache.signing_key {
            spec.cache.signing_key = Some(resolve(k));
        }
        if let Some(d) = &spec.run.slurm.log_dir {
            spec.run.slurm.log_dir = Some(resolve(d));
        }
        if let Some(d) = &spec.run.slurm.worker_cache {
            spec.run.slurm.worker_cache = Some(resolve(d));
        }
        if !c2i_stages::assets::MODELS
            .iter()
            .any(|m| m.name == spec.model.path)
        {
            spec.model.path = resolve(Path::new(&spec.model.path)).display().to_string();
        }
        Self::validate(spec, file)
    }

    fn validate(spec: Spec, file: &Path) -> Result<Pipeline, SpecError> {
        let bad = |field: &str, expected: &str| SpecError::Invalid {
            path: file.to_path_buf(),
            field: field.to_string(),
            expected: expected.to_string(),
        };
        let device = crate::action::DeviceSpec::parse(&spec.run.device, &spec.run.dtype)
            .map_err(|(field, expected)| bad(field, &expected))?;
        let s = &spec.search;
        let kinds: Vec<MatrixKind> = match &s.matrices {
            MatrixSelection::Group(g) => match g.as_str() {
                "mlp" => MatrixKind::MLP.to_vec(),
                "attn" => MatrixKind::ATTN.to_vec(),
                "all" => MatrixKind::ALL.to_vec(),
                one => vec![MatrixKind::from_short(one).ok_or_else(|| {
                    bad(
                        "search.matrices",
                        "`mlp`, `attn`, `all`, or a list of q, k, v, o, gate, up, down",
                    )
                })?],
            },
            MatrixSelection::Kinds(list) => {
                let mut v = Vec::new();
                for k in list {
                    v.push(MatrixKind::from_short(k).ok_or_else(|| {
                        bad("search.matrices", "a list of q, k, v, o, gate, up, down")
                    })?);
                }
                v.sort();
                v.dedup();
                v
            }
        };
        if kinds.is_empty() {
            return Err(bad("search.matrices", "at least one matrix kind"));
        }
        if let LayerSelection::Named(n) = &s.layers {
            if n != "all" && n != "last_third" {
                return Err(bad(
                    "search.layers",
                    "`all`, `last_third`, or a list of layer indices",
                ));
            }
        }
        if s.blocks.is_empty() || s.blocks.contains(&0) {
            return Err(bad(
                "search.blocks",
                "a non-empty list of positive integers",
            ));
        }
        let keep = match (&s.keep, &s.rate) {
            (Some(_), Some(_)) => {
                return Err(bad("search.rate", "either `keep` or `rate`, not both"));
            }
            (Some(k), None) => k.clone(),
            (None, Some(r)) => {
                if r.iter().any(|x| !(0.0..10.0).contains(x)) {
                    return Err(bad("search.rate", "values in [0, 10) (LASER's rate)"));
                }
                r.iter().map(|x| 1.0 - 0.1 * x).collect()
            }
            // The keeps `c2i study` measured: the oracle's 10 best entries use all
            // three on both tasks, and with `select = "matrices"` each keep more is a
            // candidate more per matrix and K.
            (None, None) => DEFAULT_KEEP.to_vec(),
        };
        if keep.is_empty() || keep.iter().any(|x| !(*x > 0.0 && *x <= 1.0)) {
            return Err(bad(
                "search.keep",
                "a non-empty list of fractions in (0, 1]",
            ));
        }
        if s.top_k == 0 {
            return Err(bad("search.top_k", "a positive integer"));
        }
        if !(s.collapse_threshold > 0.0 && s.collapse_threshold <= 1.0) {
            return Err(bad("search.collapse_threshold", "a share in (0, 1]"));
        }
        if spec.run.micro_batch == 0 || spec.run.eval_batch == 0 {
            return Err(bad("run.micro_batch", "positive batch sizes"));
        }
        if let Some(r) = &spec.cache.remote {
            if let Err(e) = c2i_cache::RemoteUrl::parse(r) {
                return Err(bad(
                    "cache.remote",
                    &format!("a remote cache location: {e}"),
                ));
            }
        }
        if let Some(keys) = &spec.cache.trusted_keys {
            if let Err(e) = c2i_cache::TrustedKeys::parse(keys) {
                return Err(bad(
                    "cache.trusted_keys",
                    &format!("public keys `ed25519:BASE64`: {e}"),
                ));
            }
        }
        if let Some(e) = &spec.cache.endpoint {
            if e.starts_with("http://") && !spec.cache.allow_http {
                return Err(bad(
                    "cache.endpoint",
                    &format!(
                        "an https:// endpoint: `{e}` is plain HTTP, so requests signed with your \
                         credentials would travel unencrypted (set `allow_http = true` in [cache] \
                         to allow it)"
                    ),
                ));
            }
        }
        if spec.run.jobs == 0 {
            return Err(bad("run.jobs", "at least 1 worker process"));
        }
        let sl = &spec.run.slurm;
        if !(sl.poll_secs > 0.0 && sl.poll_secs <= 3600.0) {
            return Err(bad("run.slurm.poll_secs", "seconds in (0, 3600]"));
        }
        if sl.max_parallel == Some(0) || sl.cpus_per_task == Some(0) {
            return Err(bad("run.slurm", "positive max_parallel and cpus_per_task"));
        }
        if spec.cache.timeout_secs == Some(0) {
            return Err(bad("cache.timeout_secs", "a positive number of seconds"));
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let task = Task::resolve(&spec.data.task, base).map_err(|source| SpecError::Task {
            path: file.to_path_buf(),
            source,
        })?;
        if spec.data.path.is_none()
            && task.path.is_none()
            && !c2i_stages::data::has_default_rows(&task)
        {
            return Err(bad(
                "data.path",
                "the rows' file (JSONL, CSV, Parquet, a BigBench task.json or a BIG-Bench-Hard \
                 file): the task file names none, and it is not a built-in task, whose rows \
                 ship with c2i",
            ));
        }
        Ok(Pipeline {
            file: file.to_path_buf(),
            spec,
            task,
            device,
            kinds,
            keep,
        })
    }

    /// The layers searched, for a model with `n` layers.
    pub fn layers(&self, n: usize) -> Vec<usize> {
        match &self.spec.search.layers {
            LayerSelection::Named(s) if s == "last_third" => (n - n / 3..n).collect(),
            LayerSelection::Named(_) => (0..n).collect(),
            LayerSelection::List(v) => {
                let mut v: Vec<usize> = v.iter().copied().filter(|&l| l < n).collect();
                v.sort();
                v.dedup();
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
path = "smollm2"

[data]
task = "epistemic_reasoning"

[output]
dir = "out/x"
"#;

    fn parse(text: &str, overrides: &[&str]) -> Result<Pipeline, SpecError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Pipeline::parse(text, Path::new("/p/pipe.toml"), &o)
    }

    #[test]
    fn defaults_fill_a_minimal_file() {
        let p = parse(MINIMAL, &[]).unwrap();
        assert_eq!(p.kinds, MatrixKind::MLP.to_vec());
        assert_eq!(p.spec.search.top_k, 5);
        assert_eq!(p.spec.search.select, Select::Matrices);
        assert_eq!(p.spec.search.score, ScoreRule::FirstOrder);
        assert_eq!(p.spec.output.dir, PathBuf::from("/p/out/x"));
        assert_eq!(
            p.spec.data.calibration,
            SampleSpec::new(SampleSize::N(100), 0)
        );
        assert_eq!(p.keep, DEFAULT_KEEP.to_vec());
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let text = format!("{MINIMAL}\n[search]\ntop_kk = 3\n");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("/p/pipe.toml:12:"), "{e}");
        assert!(e.contains("top_kk"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = format!("{MINIMAL}\n[search]\ntop_k = \"three\"\n");
        let e = parse(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("/p/pipe.toml:12:"), "{e}");
        assert!(e.contains("integer") || e.contains("usize"), "{e}");
        assert!(e.contains("field `search.top_k`"), "{e}");
    }

    #[test]
    fn overrides_use_toml_values_and_bare_words() {
        let p = parse(
            MINIMAL,
            &[
                "search.top_k=3",
                "search.keep=[0.5, 0.25]",
                "search.matrices=attn",
            ],
        )
        .unwrap();
        assert_eq!(p.spec.search.top_k, 3);
        assert_eq!(p.keep, vec![0.5, 0.25]);
        assert_eq!(p.kinds, MatrixKind::ATTN.to_vec());
        let e = parse(MINIMAL, &["search.top_k=\"x\""])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set"), "{e}");
        assert!(parse(MINIMAL, &["search.top_k"]).is_err());
    }

    #[test]
    fn laser_rate_maps_to_keep() {
        let p = parse(MINIMAL, &["search.rate=[1, 9.9]"]).unwrap();
        assert!((p.keep[0] - 0.9).abs() < 1e-12 && (p.keep[1] - 0.01).abs() < 1e-9);
        assert!(parse(MINIMAL, &["search.rate=[1]", "search.keep=[0.5]"]).is_err());
        assert!(parse(MINIMAL, &["search.rate=[10]"]).is_err());
    }

    #[test]
    fn invalid_values_name_the_field() {
        for (o, field) in [
            ("search.keep=[0.0]", "search.keep"),
            ("search.blocks=[0]", "search.blocks"),
            ("search.matrices=foo", "search.matrices"),
            ("search.score=bogus", "search.score"),
            ("search.racing=fast", "search.racing"),
            ("search.layers=middle", "search.layers"),
            ("cache.remote=relative/dir", "cache.remote"),
            ("cache.remote=\"ftp://x/y\"", "cache.remote"),
            (
                "cache.trusted_keys=[\"ssh-rsa AAAA\"]",
                "cache.trusted_keys",
            ),
            ("cache.endpoint=\"http://10.0.0.1:9000\"", "cache.endpoint"),
            ("run.executor=cloud", "run.executor"),
            ("run.jobs=0", "run.jobs"),
            ("run.slurm.poll_secs=0", "run.slurm.poll_secs"),
        ] {
            let e = parse(MINIMAL, &[o]).unwrap_err().to_string();
            assert!(e.contains(field), "{o}: {e}");
        }
    }

    #[test]
    fn every_shipped_pipeline_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let p = Pipeline::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
                assert!(!p.keep.is_empty());
                n += 1;
            }
        }
        assert!(n >= 6, "only {n} pipelines in {}", dir.display());
    }

    #[test]
    fn executor_and_trust_settings() {
        let p = parse(
            MINIMAL,
            &[
                "run.executor=slurm",
                "run.slurm.partition=gpu",
                "run.slurm.extra_args=[\"--qos=short\"]",
                "cache.signing_key=keys/ci.pem",
                "cache.push=false",
                "cache.endpoint=\"http://127.0.0.1:9000\"",
                "cache.allow_http=true",
            ],
        )
        .unwrap();
        assert_eq!(p.spec.run.executor, ExecutorKind::Slurm);
        assert_eq!(p.spec.run.slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(p.spec.run.slurm.poll_secs, 5.0);
        assert_eq!(p.spec.run.retries, 2);
        assert!(!p.spec.cache.push);
        assert_eq!(
            p.spec.cache.signing_key,
            Some(PathBuf::from("/p/keys/ci.pem"))
        );
        let d = parse(MINIMAL, &[]).unwrap();
        assert!(d.spec.cache.push && d.spec.run.executor == ExecutorKind::Local);
    }

    #[test]
    fn task_files_resolve_against_the_pipeline_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tasks")).unwrap();
        std::fs::write(
            dir.path().join("tasks/mine.toml"),
            "name = \"mine\"\nkind = \"choice\"\nprompt = \"{q}\"\nchoices = [\"a\", \"b\"]\nanswer_field = \"y\"\npath = \"rows.jsonl\"\n",
        )
        .unwrap();
        let pipe = dir.path().join("p.toml");
        let text = MINIMAL.replace("\"epistemic_reasoning\"", "\"tasks/mine.toml\"");
        let p = Pipeline::parse(&text, &pipe, &[]).unwrap();
        assert_eq!(p.task.name(), "mine");
        assert_eq!(p.task.path, Some(dir.path().join("tasks/rows.jsonl")));
        // Without a path anywhere, a non-BigBench task is an error naming data.path.
        std::fs::write(
            dir.path().join("tasks/nopath.toml"),
            "name = \"n\"\nkind = \"choice\"\nprompt = \"{q}\"\nchoices = [\"a\", \"b\"]\nanswer_field = \"y\"\n",
        )
        .unwrap();
        let text = MINIMAL.replace("\"epistemic_reasoning\"", "\"tasks/nopath.toml\"");
        let e = Pipeline::parse(&text, &pipe, &[]).unwrap_err().to_string();
        assert!(e.contains("field `data.path`"), "{e}");
        // A bad task file: the pipeline, data.task, then the task file's line and key.
        std::fs::write(
            dir.path().join("tasks/bad.toml"),
            "name = \"b\"\nkind = \"rank\"\n",
        )
        .unwrap();
        let text = MINIMAL.replace("\"epistemic_reasoning\"", "\"tasks/bad.toml\"");
        let e = Pipeline::parse(&text, &pipe, &[]).unwrap_err().to_string();
        assert!(
            e.contains("field `data.task`") && e.contains("bad.toml:2: field `kind`"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("epistemic_reasoning", "epistemic"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown task `epistemic`"), "{e}");
    }

    #[test]
    fn every_score_rule_is_a_search_score() {
        for rule in ScoreRule::ALL {
            let p = parse(MINIMAL, &[&format!("search.score={}", rule.name())]).unwrap();
            assert_eq!(p.spec.search.score, rule);
        }
    }

    #[test]
    fn layer_selections() {
        let p = parse(MINIMAL, &["search.layers=last_third"]).unwrap();
        assert_eq!(p.layers(30), (20..30).collect::<Vec<_>>());
        let p = parse(MINIMAL, &["search.layers=[29, 3, 3, 40]"]).unwrap();
        assert_eq!(p.layers(30), vec![3, 29]);
    }
}
