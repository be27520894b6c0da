//! What each stage's content key is made of.
//!
//! key(stage) = BLAKE3(stage name, stage code version, the parameters that stage
//! reads, the content keys of its inputs, the environment fingerprint). Only the
//! parameters a stage reads enter its key, so changing rho never invalidates
//! gradients or factors. Factors are keyed by the matrix's own content and K, so they
//! are shared across data sets, pipelines and models that contain the same matrix.
//!
//! Bump a stage's version when its code changes what it computes.

use c2i_cache::{Digest, Key, KeyBuilder, KeyParts};
use c2i_stages::data::Task;

/// The key parameter that stands for a task: its content digest (never its path or
/// file name), so editing a prompt changes the keys of the stages that read the task
/// and nothing else.
fn task_param(task: &Task) -> String {
    task.digest().to_string()
}
use c2i_stages::model::MatrixId;

use crate::EngineError;

/// 2: the hand-written CPU forward/backward (`stages::model::ops`) replaced candle autograd.
/// 3: the task is its task file's content digest, not a built-in name.
pub const GRADIENTS: (&str, &str) = ("gradients", "3");
pub const FACTORS: (&str, &str) = ("factors", "1");
pub const SV_GRADS: (&str, &str) = ("sv-grads", "1");
/// 2: answer choices are scored on the hand-written kernels (`stages::model::ops::tree`)
/// instead of candle's ops: the same numbers up to float rounding (~5e-5 in a log-prob).
/// 3: the task is its task file's content digest; ties between choices are broken
/// without regard to position; per-row choices report chance.
pub const EVALUATE: (&str, &str) = ("evaluate", "3");

/// The environment that can change numbers: device, dtype, library versions.
pub fn environment() -> Vec<(&'static str, String)> {
    vec![
        ("c2i", env!("CARGO_PKG_VERSION").to_string()),
        ("device", "cpu".to_string()),
        ("dtype", "f32".to_string()),
        ("candle", "0.11.1".to_string()),
        ("faer", "0.24".to_string()),
    ]
}

fn builder(stage: (&str, &str)) -> KeyBuilder {
    let mut b = KeyBuilder::new(stage.0, stage.1);
    for (k, v) in environment() {
        b = b.env(k, v);
    }
    b
}

fn done(b: KeyBuilder) -> Result<KeyParts, EngineError> {
    b.build().map_err(EngineError::from)
}

/// Gradients: model content, data content, the task's content, the calibration rows
/// and the loss.
pub fn gradients(
    model: &Digest,
    data: &Digest,
    task: &Task,
    rows: &[usize],
    micro_batch: usize,
) -> Result<KeyParts, EngineError> {
    done(
        builder(GRADIENTS)
            .param("task", task_param(task))
            .param("calibration_rows", rows)
            .param("loss", "mean over samples of summed gold-answer NLL")
            .param("micro_batch", micro_batch)
            .input("model", Key::from(*model))
            .input("data", Key::from(*data)),
    )
}

/// Factors: the matrix's content and K only.
pub fn factors(matrix: &Digest, blocks: usize) -> Result<KeyParts, EngineError> {
    done(
        builder(FACTORS)
            .param("blocks", blocks)
            .param(
                "svd_precision",
                c2i_stages::factor::Precision::default().name(),
            )
            .input("matrix", Key::from(*matrix)),
    )
}

/// Singular-value gradients of one matrix: its factors and the gradient pass.
pub fn sv_grads(matrix: MatrixId, factors: &Key, gradients: &Key) -> Result<KeyParts, EngineError> {
    done(
        builder(SV_GRADS)
            .param("matrix", matrix.hf_name())
            .input("factors", *factors)
            .input("gradients", *gradients),
    )
}

/// One evaluation: the model, the candidate (none for the base model), the rows.
pub fn evaluate(
    model: &Digest,
    data: &Digest,
    task: &Task,
    rows: &[usize],
    candidate: Option<(MatrixId, usize, f64, &Key)>,
) -> Result<KeyParts, EngineError> {
    let mut b = builder(EVALUATE)
        .param("task", task_param(task))
        .param("rows", rows)
        .input("model", Key::from(*model))
        .input("data", Key::from(*data));
    match candidate {
        None => b = b.param("candidate", "base"),
        Some((m, k, rho, f)) => {
            b = b
                .param("matrix", m.hf_name())
                .param("blocks", k)
                .param("keep", rho)
                .input("factors", *f);
        }
    }
    done(b)
}
