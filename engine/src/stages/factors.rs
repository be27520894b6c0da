//! `factors(matrix, K)`: the thin SVD of each of K consecutive row-blocks of one
//! weight matrix. Keyed by the matrix's content and K only, so it is shared across
//! data sets, pipelines and models that contain the same matrix.

use super::matrix_digests::MatrixInfo;
use super::{has_outputs, seconds, Produced, StageDef};
use crate::action::{Action, DeviceSpec, Input};
use crate::ctx::Ctx;
use crate::EngineError;
use c2i_cache::ActionEntry;
use c2i_stages::factor::{factor_matrix, Precision, RowMajor};
use c2i_stages::model::MatrixId;
use std::collections::BTreeMap;
use std::time::Instant;

pub const NAME: &str = "factors";
/// 2: every block's SVD runs sequentially (blocks in parallel), so the bytes are the
/// same whatever the number of threads (version 1 let faer split a lone block's SVD
/// across threads, which changed its last bits).
pub const VERSION: &str = "2";

pub const DEF: StageDef = StageDef {
    name: NAME,
    version: VERSION,
    run,
    check,
    parallel: true,
};

/// Factors of `matrix` (whose content `info` names) of the model file `model`, K = `blocks`.
pub fn action(
    model: &Input,
    matrix: MatrixId,
    info: &MatrixInfo,
    blocks: usize,
    device: &DeviceSpec,
) -> Result<Action, EngineError> {
    Action::builder(NAME, VERSION, instance(matrix, blocks))
        .param("blocks", blocks)
        .param("svd_precision", Precision::default().name())
        .input(
            "matrix",
            Input::Matrix {
                digest: info.digest,
                name: matrix.hf_name(),
                model: Box::new(model.clone()),
            },
        )
        .on(device)
        .build()
}

/// `model.layers.3.mlp.up_proj.weight K=2`.
pub fn instance(matrix: MatrixId, blocks: usize) -> String {
    format!("{} K={blocks}", matrix.hf_name())
}

fn run(ctx: &Ctx, action: &Action) -> Result<Produced, EngineError> {
    let k: usize = action.param("blocks")?;
    let precision: String = action.param("svd_precision")?;
    if precision != Precision::default().name() {
        return Err(EngineError::Invalid(format!(
            "factors action {}: svd_precision `{precision}`, this c2i computes `{}`",
            action.key().short(),
            Precision::default().name()
        )));
    }
    let (v, r, c) = ctx.input_matrix(action, "matrix")?;
    let started = Instant::now();
    let f = factor_on(ctx, &DeviceSpec::of(action)?, RowMajor::new(&v, r, c)?, k)?;
    Ok(Produced {
        outputs: BTreeMap::from([("factors".to_string(), f.to_safetensors()?)]),
        metadata: serde_json::json!({
            "rows": r, "cols": c, "blocks": k, "seconds": seconds(started)
        }),
    })
}

/// The block SVD on the action's device: faer on the CPU, cuSOLVER on a CUDA device.
fn factor_on(
    ctx: &Ctx,
    device: &DeviceSpec,
    w: RowMajor<'_>,
    k: usize,
) -> Result<c2i_stages::factor::MatrixFactors, EngineError> {
    if device.is_cpu() {
        return Ok(factor_matrix(w, k)?);
    }
    #[cfg(feature = "cuda")]
    {
        let dev = ctx.device(device)?;
        let svd = c2i_stages::factor::cuda::GpuSvd::on(&dev)?;
        Ok(svd.factor_matrix(w, k, Precision::default())?)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ctx;
        Err(EngineError::Invalid(format!(
            "run.device {}: this c2i was built without the `cuda` feature",
            device.device
        )))
    }
}

fn check(entry: &ActionEntry) -> Result<(), String> {
    has_outputs(entry, &["factors"])
}

/// The `factors` output of an entry, as an input of a downstream action.
pub fn output(entry: &ActionEntry) -> Result<Input, EngineError> {
    super::output_input(entry, "factors")
}
