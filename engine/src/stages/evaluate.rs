//! `evaluate`: accuracy and log-loss of the base model, or of the base model with one
//! candidate applied (matrix, K, rho), on a sample of rows. A candidate at layer L can
//! reuse the base model's hidden states at the input of layer L (when the process
//! evaluates several candidates on the same rows: a hint, never part of the key).

use super::{has_outputs, Produced, StageDef};
use crate::action::{Action, DeviceSpec, Input};
use crate::ctx::Ctx;
use crate::loaded::EvalSetId;
use crate::EngineError;
use c2i_cache::{ActionEntry, Digest};
use c2i_stages::compress::dense_candidate;
use c2i_stages::data::Task;
use c2i_stages::eval::evaluator::{
    evaluate as run_eval, first_changed_layer, EvalOptions, EvalSet, Shape, TaskMetrics,
};
use c2i_stages::eval::metrics::SelectionScore;
use c2i_stages::eval::prefix::Prefix;
use c2i_stages::export::report::fmt_keep;
use c2i_stages::factor::from_safetensors;
use c2i_stages::model::{Decoder, MatrixId};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Instant;

pub const NAME: &str = "evaluate";
/// 3: keys from content (the candidate's factors blob digest), and the collapse flag
/// is computed when a report is made, from the stored prediction histogram (so the
/// threshold is not part of the key and a changed threshold shows on a warm run).
/// 4: the task is its task file's content (canonical form and digest); ties between
/// choices are broken without regard to position; per-row choices report chance.
/// 5: the entry records the set's shape (what aggregating its records needs), so a
/// race's rounds add up to the figures of all their rows.
/// 6: answer log-probabilities go through the LM head in blocks of at most 8 MiB of
/// logits (their last bits can differ from one product over every position).
pub const VERSION: &str = "6";

pub const DEF: StageDef = StageDef {
    name: NAME,
    version: VERSION,
    run,
    check,
    parallel: false,
};

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

/// What an evaluation is of.
pub struct EvalOf<'a> {
    pub model: &'a Input,
    pub data: &'a Input,
    pub task: &'a Task,
    pub rows: Rows,
    pub row_list: &'a [usize],
    pub eval_batch: usize,
    pub device: &'a crate::action::DeviceSpec,
    /// The racing round (1-based) and the number of rounds, for people (not in the key).
    pub round: Option<(usize, usize)>,
}

/// The evaluation of the base model (`None`) or of `candidate` with its factors entry.
pub fn action(
    of: &EvalOf<'_>,
    candidate: Option<(Candidate, &ActionEntry)>,
) -> Result<Action, EngineError> {
    let rows = match of.round {
        None => format!("{:?}", of.rows),
        Some((r, n)) => format!("{:?} round {r}/{n}", of.rows),
    };
    let instance = match candidate {
        None => format!("base model, {rows}"),
        Some((c, _)) => format!(
            "{} K={} keep={}, {rows}",
            c.matrix.hf_name(),
            c.blocks,
            fmt_keep(c.keep())
        ),
    };
    let mut b = Action::builder(NAME, VERSION, instance)
        .param("task", of.task.canonical())
        .param("task_digest", of.task.digest())
        .param("rows", of.row_list)
        .input("model", of.model.clone())
        .input("data", of.data.clone())
        .setting("eval_batch", of.eval_batch)
        .on(of.device);
    match candidate {
        None => b = b.param("candidate", "base"),
        Some((c, f)) => {
            b = b
                .param("matrix", c.matrix.hf_name())
                .param("blocks", c.blocks)
                .param("keep", c.keep())
                .input("factors", super::output_input(f, "factors")?);
        }
    }
    b.build()
}

fn file_digest(action: &Action, name: &str) -> Result<Digest, EngineError> {
    Ok(action.input(name)?.digest())
}

fn run(ctx: &Ctx, action: &Action) -> Result<Produced, EngineError> {
    let task = ctx.input_task(action)?;
    let device = DeviceSpec::of(action)?;
    let row_list: Vec<usize> = action.param("rows")?;
    let candidate = if action.params.contains_key("matrix") {
        let name: String = action.param("matrix")?;
        let m = MatrixId::from_hf_name(&name).ok_or_else(|| {
            EngineError::Invalid(format!(
                "evaluate action {}: `{name}` is not a matrix",
                action.key().short()
            ))
        })?;
        Some(Candidate::new(
            m,
            action.param("blocks")?,
            action.param("keep")?,
        ))
    } else {
        None
    };
    let loaded = ctx.input_model(action, "model")?;
    let model_digest = file_digest(action, "model")?;
    let ex = ctx.input_examples(action, "data", "model", &task)?;
    let set_id = EvalSetId::new(
        model_digest,
        file_digest(action, "data")?,
        task.clone(),
        &row_list,
        device.clone(),
    );
    // Generation stops where the model file says a turn ends.
    let eos = loaded.special.stop();
    let set = ctx.loaded.eval_set(&set_id, || {
        Ok(EvalSet::from_rows(&ex, &row_list, &loaded.tokenizer, eos)?)
    })?;
    let weights = ctx.weights_on(&loaded, &model_digest, &device)?;
    let opts = EvalOptions {
        micro_batch: action.setting("eval_batch", EvalOptions::default().micro_batch),
        ..EvalOptions::default()
    };
    let started = Instant::now();
    let mut replace = BTreeMap::new();
    if let Some(c) = candidate {
        let fblob = ctx.input_blob(action, "factors")?;
        let view = from_safetensors(fblob.bytes())?;
        let dense = dense_candidate(&view, c.keep())?;
        let t = Tensor::from_vec(dense, (view.rows(), view.cols()), &Device::Cpu)?;
        let t = if device.is_cpu() {
            t
        } else {
            t.to_dtype(device.dtype())?
                .to_device(&*ctx.device(&device)?)?
        };
        replace.insert(c.matrix, t);
    }
    let base = ctx.loaded.decoder(&model_digest, &device, || {
        Ok(Decoder::new(&weights)?.inference())
    })?;
    let from = first_changed_layer(&replace);
    let candidate_model = if replace.is_empty() {
        (*base).clone()
    } else {
        Decoder::with_matrices(&weights, &replace)?.inference()
    };
    ctx.progress.start("evaluate", set.len() as u64);
    // Prefix reuse pays when this process evaluates several candidates on the same
    // rows (the executor says which layers it will see); alone, run from layer 0.
    let layers = ctx.prefix_layers();
    let result = if from > 0 && layers.contains(&from) {
        let prefix = ctx.loaded.prefix(&set_id, &layers, || {
            Ok(Prefix::compute(
                &base,
                &set,
                &layers,
                &opts,
                &mut |_, _| {},
            )?)
        })?;
        run_eval(
            &candidate_model,
            &set,
            Some(&prefix),
            from,
            &opts,
            &mut |d, _| ctx.progress.advance(d as u64),
        )?
    } else {
        run_eval(&candidate_model, &set, None, 0, &opts, &mut |d, _| {
            ctx.progress.advance(d as u64)
        })?
    };
    ctx.progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    for (what, v) in [
        ("log-loss", result.log_loss),
        ("accuracy", result.selection.accuracy),
    ] {
        if !v.is_finite() {
            return Err(EngineError::Invalid(format!(
                "evaluate {}: the {what} is {v}, not a number a search can compare \
                 (a non-finite weight in the model or the candidate?)",
                action.instance
            )));
        }
    }
    let records = serde_json::to_vec(&result.records)?;
    Ok(Produced {
        outputs: BTreeMap::from([("records".to_string(), records)]),
        metadata: serde_json::json!({
            "samples": result.samples,
            "metrics": result.metrics,
            "log_loss": result.log_loss,
            "selection": result.selection,
            "shape": set.shape(),
            "seconds": seconds,
        }),
    })
}

/// An evaluation's figures as stored in its entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub samples: usize,
    pub shape: Shape,
    pub metrics: TaskMetrics,
    pub log_loss: f64,
    pub selection: SelectionScore,
}

/// The figures of an evaluate entry; an error says what is wrong with them (a
/// missing field, a number that is not finite: a NaN is stored as null).
pub fn summary(entry: &ActionEntry) -> Result<Summary, String> {
    let s: Summary = serde_json::from_value(entry.metadata.clone()).map_err(|e| e.to_string())?;
    let nums = [
        ("log_loss", Some(s.log_loss)),
        ("selection.accuracy", Some(s.selection.accuracy)),
        ("selection.log_loss", Some(s.selection.log_loss)),
        ("selection.balanced_accuracy", s.selection.balanced_accuracy),
    ];
    for (name, v) in nums {
        if let Some(v) = v {
            if !v.is_finite() {
                return Err(format!("{name} is {v}"));
            }
        }
    }
    Ok(s)
}

fn check(entry: &ActionEntry) -> Result<(), String> {
    has_outputs(entry, &["records"])?;
    summary(entry).map(|_| ())
}
