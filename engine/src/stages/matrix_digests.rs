//! `matrix-digests`: the content digest of every weight matrix of a model file, so
//! that factors are keyed by a matrix's content (shared by every model and pipeline
//! that has the same matrix) and a warm run never loads the model to learn them.

use super::{has_outputs, seconds, Produced, StageDef};
use crate::action::{Action, Input};
use crate::ctx::Ctx;
use crate::EngineError;
use c2i_cache::{ActionEntry, Digest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

pub const NAME: &str = "matrix-digests";
/// 1: one action per model (it replaced one `matrix-digest` action per matrix).
pub const VERSION: &str = "1";

pub const DEF: StageDef = StageDef {
    name: NAME,
    version: VERSION,
    run,
    check,
    parallel: false,
};

/// One matrix: its digest and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixInfo {
    pub digest: Digest,
    pub rows: usize,
    pub cols: usize,
}

/// Hugging Face name -> [`MatrixInfo`], for every weight matrix of the model.
pub type MatrixDigests = BTreeMap<String, MatrixInfo>;

/// BLAKE3 of a matrix's shape (rows, cols as u64 LE) and its f32 values (LE).
pub fn digest_of(values: &[f32], rows: usize, cols: usize) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&(rows as u64).to_le_bytes());
    h.update(&(cols as u64).to_le_bytes());
    h.update(bytemuck::cast_slice(values));
    Digest::from(h.finalize())
}

/// The action for a model file.
pub fn action(model: &Input) -> Result<Action, EngineError> {
    let file = match model {
        Input::File { path, .. } => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        _ => String::new(),
    };
    Action::builder(NAME, VERSION, format!("all matrices of {file}"))
        .input("model", model.clone())
        .build()
}

fn run(ctx: &Ctx, action: &Action) -> Result<Produced, EngineError> {
    let loaded = ctx.input_model(action, "model")?;
    let started = Instant::now();
    let mut map = MatrixDigests::new();
    for id in loaded.weights.matrix_ids() {
        let w = loaded.weights.matrix(id)?;
        let (rows, cols) = w.dims2()?;
        let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
        map.insert(
            id.hf_name(),
            MatrixInfo {
                digest: digest_of(&v, rows, cols),
                rows,
                cols,
            },
        );
    }
    Ok(Produced {
        outputs: BTreeMap::from([("digests".to_string(), serde_json::to_vec(&map)?)]),
        metadata: serde_json::json!({ "matrices": map.len(), "seconds": seconds(started) }),
    })
}

fn check(entry: &ActionEntry) -> Result<(), String> {
    has_outputs(entry, &["digests"])
}

/// The digests an entry holds.
pub fn read(ctx: &Ctx, entry: &ActionEntry) -> Result<MatrixDigests, EngineError> {
    let blob = ctx.output(entry, "digests")?;
    serde_json::from_slice(blob.bytes())
        .map_err(|e| EngineError::Corrupt(format!("matrix-digests entry {}: {e}", entry.key)))
}
