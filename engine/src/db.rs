//! The salsa database: in-process incremental recomputation on top of the disk cache.
//!
//! The inputs are the resolved pipeline facts (file digests, sample rows, batch sizes);
//! each stage is a tracked function that computes its content key, looks it up on
//! disk and only computes on a miss, returning a small handle to the action-cache
//! entry, never the tensors. Within one process (a sweep) salsa skips even the disk
//! look-ups of unchanged work; across processes the disk cache does the reuse.

use crate::ctx::Ctx;
use crate::stages;
use c2i_cache::ActionEntry;
use c2i_stages::data::Task;
use c2i_stages::model::MatrixId;
use std::path::PathBuf;
use std::sync::Arc;

/// An action-cache entry handed between stages (compared by key).
#[derive(Debug, Clone)]
pub struct Out(pub Arc<ActionEntry>);

impl PartialEq for Out {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}
impl Eq for Out {}

/// A stage's result inside salsa: the entry, or the error's text.
pub type StageResult = Result<Out, String>;

#[salsa::db]
pub trait EngineDb: salsa::Database {
    fn ctx(&self) -> &Ctx;
}

/// The pipeline facts stages read. Each field is tracked on its own, so changing
/// the evaluation rows does not touch the gradients.
#[salsa::input]
pub struct Setup {
    #[returns(ref)]
    pub model_path: PathBuf,
    #[returns(copy)]
    pub model_digest: [u8; 32],
    #[returns(ref)]
    pub data_path: PathBuf,
    #[returns(copy)]
    pub data_digest: [u8; 32],
    #[returns(ref)]
    pub task: Task,
    #[returns(ref)]
    pub calibration: Vec<usize>,
    #[returns(ref)]
    pub evaluation: Vec<usize>,
    #[returns(ref)]
    pub heldout: Vec<usize>,
    #[returns(copy)]
    pub micro_batch: usize,
    #[returns(copy)]
    pub eval_batch: usize,
    /// f64 bits of the collapse threshold.
    #[returns(copy)]
    pub collapse_bits: u64,
    /// Where the stages compute (device and dtype).
    #[returns(ref)]
    pub exec: crate::keys::Exec,
}

/// One matrix of the model, with a block count (for factors and sv-grads).
#[salsa::interned]
pub struct MatrixReq<'db> {
    #[returns(copy)]
    pub setup: Setup,
    #[returns(copy)]
    pub matrix: MatrixId,
    #[returns(copy)]
    pub blocks: usize,
}

/// Which rows an evaluation runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rows {
    /// The evaluation sample of the selection split (candidates compete here).
    Selection,
    /// The held-out sample (never seen by the search).
    Heldout,
}

/// A candidate: matrix, K, and the f64 bits of rho.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Candidate {
    pub matrix: MatrixId,
    pub blocks: usize,
    pub keep_bits: u64,
}

impl Candidate {
    pub fn new(matrix: MatrixId, blocks: usize, keep: f64) -> Self {
        Candidate {
            matrix,
            blocks,
            keep_bits: keep.to_bits(),
        }
    }
    pub fn keep(&self) -> f64 {
        f64::from_bits(self.keep_bits)
    }
}

/// An evaluation: rows, and the candidate (none = the base model).
#[salsa::interned]
pub struct EvalReq<'db> {
    #[returns(copy)]
    pub setup: Setup,
    #[returns(copy)]
    pub rows: Rows,
    #[returns(copy)]
    pub candidate: Option<Candidate>,
}

#[salsa::tracked(returns(clone))]
pub fn gradients(db: &dyn EngineDb, setup: Setup) -> StageResult {
    stages::gradients(db, setup)
        .map(Out)
        .map_err(|e| e.to_string())
}

#[salsa::tracked(returns(clone))]
pub fn matrix_digest<'db>(db: &'db dyn EngineDb, req: MatrixReq<'db>) -> Result<[u8; 32], String> {
    stages::matrix_digest(db, req.setup(db), req.matrix(db)).map_err(|e| e.to_string())
}

#[salsa::tracked(returns(clone))]
pub fn factors<'db>(db: &'db dyn EngineDb, req: MatrixReq<'db>) -> StageResult {
    stages::factors(db, req).map(Out).map_err(|e| e.to_string())
}

#[salsa::tracked(returns(clone))]
pub fn sv_grads<'db>(db: &'db dyn EngineDb, req: MatrixReq<'db>) -> StageResult {
    stages::sv_grads(db, req)
        .map(Out)
        .map_err(|e| e.to_string())
}

#[salsa::tracked(returns(clone))]
pub fn evaluate<'db>(db: &'db dyn EngineDb, req: EvalReq<'db>) -> StageResult {
    stages::evaluate(db, req)
        .map(Out)
        .map_err(|e| e.to_string())
}

/// The engine's database: salsa storage plus the shared context.
#[salsa::db]
#[derive(Clone)]
pub struct Database {
    storage: salsa::Storage<Self>,
    ctx: Arc<Ctx>,
}

impl Database {
    pub fn new(ctx: Ctx) -> Database {
        Database {
            storage: salsa::Storage::default(),
            ctx: Arc::new(ctx),
        }
    }
}

#[salsa::db]
impl salsa::Database for Database {}

#[salsa::db]
impl EngineDb for Database {
    fn ctx(&self) -> &Ctx {
        &self.ctx
    }
}
