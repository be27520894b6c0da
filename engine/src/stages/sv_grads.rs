//! `sv-grads(matrix, K)`: the singular values of each block of a matrix and the
//! gradient of the loss with respect to each (diag(Uᵀ G V)), from the matrix's
//! factors and the gradient pass. Scores for every rho come from these.

use super::{has_outputs, seconds, Produced, StageDef};
use crate::action::Action;
use crate::ctx::Ctx;
use crate::EngineError;
use c2i_cache::ActionEntry;
use c2i_stages::factor::{from_safetensors, RowMajor};
use c2i_stages::model::MatrixId;
use c2i_stages::score::{sv_grads as compute_sv_grads, Components};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

pub const NAME: &str = "sv-grads";
/// 2: the spectra are an output blob (keys are built from output digests).
pub const VERSION: &str = "2";

pub const DEF: StageDef = StageDef {
    name: NAME,
    version: VERSION,
    run,
    check,
    parallel: false,
};

/// Singular values and their gradients of one block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockSpectrum {
    pub rows: usize,
    pub cols: usize,
    /// Singular values, descending.
    pub s: Vec<f32>,
    /// dLoss/dσ_i for every component.
    pub g: Vec<f64>,
}

/// The sv-grads of `matrix` from its `factors` entry (K blocks) and the `gradients` entry.
pub fn action(
    matrix: MatrixId,
    blocks: usize,
    factors: &ActionEntry,
    gradients: &ActionEntry,
) -> Result<Action, EngineError> {
    Action::builder(NAME, VERSION, super::factors::instance(matrix, blocks))
        .param("matrix", matrix.hf_name())
        .input("factors", super::output_input(factors, "factors")?)
        .input("gradients", super::output_input(gradients, "grads")?)
        .build()
}

/// One f32 tensor out of a safetensors blob, copied (the blob may be unaligned).
fn tensor_from_blob(bytes: &[u8], name: &str) -> Result<(Vec<f32>, Vec<usize>), EngineError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| EngineError::Corrupt(format!("gradients blob: {e}")))?;
    let t = st
        .tensor(name)
        .map_err(|e| EngineError::Corrupt(format!("gradients blob, tensor {name}: {e}")))?;
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((v, t.shape().to_vec()))
}

fn run(ctx: &Ctx, action: &Action) -> Result<Produced, EngineError> {
    let matrix: String = action.param("matrix")?;
    let fblob = ctx.input_blob(action, "factors")?;
    let view = from_safetensors(fblob.bytes())?;
    let gblob = ctx.input_blob(action, "gradients")?;
    let (g, shape) = tensor_from_blob(gblob.bytes(), &matrix)?;
    let started = Instant::now();
    let gm = RowMajor::new(&g, shape[0], shape.get(1).copied().unwrap_or(1))?;
    let svg = compute_sv_grads(&view, gm, Components::All)?;
    let blocks: Vec<BlockSpectrum> = view
        .blocks()
        .iter()
        .zip(svg.blocks)
        .map(|(b, bg)| BlockSpectrum {
            rows: b.rows(),
            cols: b.cols(),
            s: b.s().to_vec(),
            g: bg.grads,
        })
        .collect();
    Ok(Produced {
        outputs: BTreeMap::from([("spectra".to_string(), serde_json::to_vec(&blocks)?)]),
        metadata: serde_json::json!({ "blocks": blocks.len(), "seconds": seconds(started) }),
    })
}

fn check(entry: &ActionEntry) -> Result<(), String> {
    has_outputs(entry, &["spectra"])
}

/// The spectra an entry holds.
pub fn spectra(ctx: &Ctx, entry: &ActionEntry) -> Result<Vec<BlockSpectrum>, EngineError> {
    let blob = ctx.output(entry, "spectra")?;
    serde_json::from_slice(blob.bytes())
        .map_err(|e| EngineError::Corrupt(format!("sv-grads entry {}: {e}", entry.key)))
}
