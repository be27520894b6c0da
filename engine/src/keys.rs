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

/// Where a run computes: the device (`cpu`, `cuda:N`) and the weights' dtype on it.
/// Part of every stage key, so CPU and GPU results never alias in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Exec {
    pub device: String,
    pub dtype: String,
}

impl Exec {
    /// The CPU in f32 (the default).
    pub fn cpu() -> Exec {
        Exec {
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }

    /// Checks and normalizes `[run] device` and `[run] dtype`; on error, the field and
    /// what was expected.
    pub fn parse(device: &str, dtype: &str) -> Result<Exec, (&'static str, String)> {
        let device = match device {
            "cpu" => "cpu".to_string(),
            "cuda" => "cuda:0".to_string(),
            d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => format!("cuda:{n}"),
                _ => return Err(("run.device", format!("cpu, cuda or cuda:N (found `{d}`)"))),
            },
        };
        match dtype {
            "f32" => {}
            "bf16" if device != "cpu" => {}
            "bf16" => {
                return Err((
                    "run.dtype",
                    "f32 on the CPU (bf16 needs a CUDA device)".into(),
                ))
            }
            other => return Err(("run.dtype", format!("f32 or bf16 (found `{other}`)"))),
        }
        Ok(Exec {
            device,
            dtype: dtype.to_string(),
        })
    }

    pub fn is_cpu(&self) -> bool {
        self.device == "cpu"
    }

    /// The CUDA ordinal, for a CUDA device.
    pub fn cuda_ordinal(&self) -> Option<usize> {
        self.device.strip_prefix("cuda:")?.parse().ok()
    }

    pub fn dtype(&self) -> candle_core::DType {
        match self.dtype.as_str() {
            "bf16" => candle_core::DType::BF16,
            _ => candle_core::DType::F32,
        }
    }
}

/// The environment that can change numbers: device, dtype, library versions.
pub fn environment(exec: &Exec) -> Vec<(&'static str, String)> {
    vec![
        ("c2i", env!("CARGO_PKG_VERSION").to_string()),
        ("device", exec.device.clone()),
        ("dtype", exec.dtype.clone()),
        ("candle", "0.11.1".to_string()),
        ("faer", "0.24".to_string()),
    ]
}

fn builder(stage: (&str, &str), exec: &Exec) -> KeyBuilder {
    let mut b = KeyBuilder::new(stage.0, stage.1);
    for (k, v) in environment(exec) {
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
    exec: &Exec,
    model: &Digest,
    data: &Digest,
    task: &Task,
    rows: &[usize],
    micro_batch: usize,
) -> Result<KeyParts, EngineError> {
    done(
        builder(GRADIENTS, exec)
            .param("task", task_param(task))
            .param("calibration_rows", rows)
            .param("loss", "mean over samples of summed gold-answer NLL")
            .param("micro_batch", micro_batch)
            .input("model", Key::from(*model))
            .input("data", Key::from(*data)),
    )
}

/// Factors: the matrix's content and K only (and where they are computed).
pub fn factors(exec: &Exec, matrix: &Digest, blocks: usize) -> Result<KeyParts, EngineError> {
    done(
        builder(FACTORS, exec)
            .param("blocks", blocks)
            .param(
                "svd_precision",
                c2i_stages::factor::Precision::default().name(),
            )
            .input("matrix", Key::from(*matrix)),
    )
}

/// Singular-value gradients of one matrix: its factors and the gradient pass.
pub fn sv_grads(
    exec: &Exec,
    matrix: MatrixId,
    factors: &Key,
    gradients: &Key,
) -> Result<KeyParts, EngineError> {
    done(
        builder(SV_GRADS, exec)
            .param("matrix", matrix.hf_name())
            .input("factors", *factors)
            .input("gradients", *gradients),
    )
}

/// One evaluation: the model, the candidate (none for the base model), the rows.
pub fn evaluate(
    exec: &Exec,
    model: &Digest,
    data: &Digest,
    task: &Task,
    rows: &[usize],
    candidate: Option<(MatrixId, usize, f64, &Key)>,
) -> Result<KeyParts, EngineError> {
    let mut b = builder(EVALUATE, exec)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_dtypes_parse_and_enter_the_key() {
        assert_eq!(Exec::parse("cpu", "f32").unwrap(), Exec::cpu());
        let gpu = Exec::parse("cuda", "bf16").unwrap();
        assert_eq!(
            (gpu.device.as_str(), gpu.cuda_ordinal()),
            ("cuda:0", Some(0))
        );
        assert_eq!(
            Exec::parse("cuda:3", "f32").unwrap().cuda_ordinal(),
            Some(3)
        );
        for (d, t, field) in [
            ("gpu", "f32", "run.device"),
            ("cuda:x", "f32", "run.device"),
            ("cpu", "bf16", "run.dtype"),
            ("cpu", "f16", "run.dtype"),
        ] {
            assert_eq!(Exec::parse(d, t).unwrap_err().0, field, "{d} {t}");
        }
        let m = Digest::from_bytes([7; 32]);
        let cpu = factors(&Exec::cpu(), &m, 1).unwrap().key();
        let cuda = factors(&Exec::parse("cuda", "f32").unwrap(), &m, 1)
            .unwrap()
            .key();
        let bf16 = factors(&Exec::parse("cuda", "bf16").unwrap(), &m, 1)
            .unwrap()
            .key();
        assert!(cpu != cuda && cuda != bf16 && cpu != bf16);
    }
}
