//! c2i's build engine: the pipeline spec, stages as actions keyed by content, the
//! executors that compute them, the runner that walks the DAG, run records, lock files
//! and `status --why`.
//!
//! - [`spec`]: TOML pipeline -> typed, validated [`spec::Pipeline`], `--set` overrides.
//! - [`action`]: an action, the self-contained description of a stage instance, and
//!   its key (built from its inputs' content digests).
//! - [`stages`]: one module per stage (its action, its body, readers of its outputs),
//!   registered by name.
//! - [`ctx`]: the store and remote, trust, loaded resources, lookups, computation, the
//!   stage log.
//! - [`exec`]: where actions are computed: in process, a pool of local worker
//!   processes, or Slurm job arrays; [`worker`]: the worker side.
//! - [`runner`]: runs a pipeline in waves of actions and writes `run.json`.
//! - [`lock`]: `PIPELINE.lock` and `--frozen`.
//! - [`export`]: the adapted model, dense (HF layout) and factored.
//! - [`status`]: what is cached, what would run, and why.
//! - [`study`]: `c2i study`: the score rules against every candidate evaluated.

pub mod action;
pub mod ctx;
pub mod exec;
pub mod export;
pub mod loaded;
pub mod lock;
pub mod runner;
pub mod spec;
pub mod stages;
pub mod status;
pub mod study;
pub mod worker;

use std::path::PathBuf;

/// Everything that can stop the engine, each naming what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Cache(#[from] c2i_cache::CacheError),
    #[error(transparent)]
    Model(#[from] c2i_stages::model::ModelError),
    #[error(transparent)]
    Data(#[from] c2i_stages::data::DataError),
    #[error(transparent)]
    Assets(#[from] c2i_stages::assets::AssetError),
    #[error(transparent)]
    Factor(#[from] c2i_stages::factor::FactorError),
    #[error(transparent)]
    Score(#[from] c2i_stages::score::ScoreError),
    #[error(transparent)]
    Compress(#[from] c2i_stages::compress::CompressError),
    #[error(transparent)]
    Eval(#[from] c2i_stages::eval::evaluator::EvalError),
    #[error(transparent)]
    Metrics(#[from] c2i_stages::eval::metrics::MetricsError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("a cached entry is unusable: {0} (run `c2i cache verify --repair`)")]
    Corrupt(String),
    /// An output blob of a cached entry failed its size or hash check when read; the
    /// damaged file was removed so that the stage that made it recomputes it.
    #[error("cached output `{output}` of {stage} entry {key} is damaged ({detail}); it was removed and will be recomputed")]
    DamagedOutput {
        stage: String,
        key: String,
        output: String,
        detail: String,
    },
    #[error("row {0} is outside the data file")]
    Row(usize),
    /// A stage's body failed (a malformed input, a non-finite number...): computing it
    /// again would fail the same way.
    #[error("{stage} {instance} (key {key}): {source}")]
    Action {
        stage: String,
        instance: String,
        key: String,
        #[source]
        source: Box<EngineError>,
    },
    /// A worker will not compute an action (another environment, ...).
    #[error("{0}")]
    Refused(String),
    #[error("no description of action {key} in the cache{}: a worker can only compute an action the coordinator described", remote.as_ref().map(|r| format!(" nor on the remote {r}")).unwrap_or_default())]
    NoDescription { key: String, remote: Option<String> },
    #[error("action {key} is of stage `{stage}`, which this c2i does not have")]
    UnknownStage { stage: String, key: String },
    /// An executor could not get an action computed.
    #[error("{0}")]
    Executor(String),
    #[error("{0}")]
    Interrupted(String),
    /// `--frozen`: the run does not match the lock file.
    #[error("--frozen: {0}")]
    Frozen(String),
    #[error("internal lock poisoned by an earlier panic")]
    Poisoned,
}
