//! c2i's build engine: the pipeline spec, content keys, the salsa database over the
//! on-disk cache, the runner that walks the DAG, run records and `status --why`.
//!
//! - [`spec`]: TOML pipeline -> typed, validated [`spec::Pipeline`], `--set` overrides.
//! - [`keys`]: what each stage's key is made of.
//! - [`ctx`]: the store, stat cache, in-memory resources and the stage log.
//! - [`db`]: salsa inputs and tracked stage functions.
//! - [`stages`]: stage bodies (key, look up or compute, store).
//! - [`runner`]: runs a pipeline and writes `run.json`.
//! - [`export`]: the adapted model, dense (HF layout) and factored.
//! - [`status`]: what is cached, what would run, and why.

pub mod ctx;
pub mod db;
pub mod export;
pub mod keys;
pub mod runner;
pub mod spec;
pub mod stages;
pub mod status;

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
    #[error("{0}")]
    Stage(String),
    #[error("internal lock poisoned by an earlier panic")]
    Poisoned,
}
