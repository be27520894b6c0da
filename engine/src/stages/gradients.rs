//! `gradients`: one forward and backward pass over the calibration rows; dLoss/dW of
//! every weight matrix. Independent of K and rho.

use super::{has_outputs, Produced, StageDef};
use crate::action::{Action, Input};
use crate::ctx::Ctx;
use crate::EngineError;
use c2i_cache::ActionEntry;
use c2i_stages::data::Task;
use c2i_stages::grad::{gradient_pass, GradOptions, LossSample};
use c2i_stages::model::tokenizer::{encode, encode_prompt};
use c2i_stages::model::weights::save_safetensors_bytes;
use std::collections::BTreeMap;
use std::time::Instant;

pub const NAME: &str = "gradients";
/// 2: the hand-written CPU forward/backward (`stages::model::ops`) replaced candle autograd.
pub const VERSION: &str = "2";

pub const DEF: StageDef = StageDef {
    name: NAME,
    version: VERSION,
    run,
    check,
    parallel: false,
};

const LOSS: &str = "mean over samples of summed gold-answer NLL";

/// Gradients of the model on `rows` of the data, in micro-batches of `micro_batch`.
pub fn action(
    model: &Input,
    data: &Input,
    task: Task,
    rows: &[usize],
    micro_batch: usize,
) -> Result<Action, EngineError> {
    Action::builder(NAME, VERSION, "all matrices")
        .param("task", task.name())
        .param("calibration_rows", rows)
        .param("loss", LOSS)
        .param("micro_batch", micro_batch)
        .input("model", model.clone())
        .input("data", data.clone())
        .build()
}

fn run(ctx: &Ctx, action: &Action) -> Result<Produced, EngineError> {
    let task: Task = action
        .param::<String>("task")?
        .parse()
        .map_err(|e: c2i_stages::data::DataError| EngineError::Invalid(e.to_string()))?;
    let rows: Vec<usize> = action.param("calibration_rows")?;
    let micro_batch: usize = action.param("micro_batch")?;
    let loaded = ctx.input_model(action, "model")?;
    let ex = ctx.input_examples(action, "data", task)?;
    let mut samples = Vec::new();
    for &r in &rows {
        let e = ex.get(r).ok_or(EngineError::Row(r))?;
        samples.push(LossSample {
            prompt: encode_prompt(&loaded.tokenizer, &e.prompt)?,
            answer: encode(&loaded.tokenizer, &e.answer.gold_continuation())?,
        });
    }
    let started = Instant::now();
    ctx.progress.start("gradients", samples.len() as u64);
    let g = gradient_pass(
        &loaded.weights,
        &samples,
        &[],
        &GradOptions { micro_batch },
        &mut |done, _| ctx.progress.advance(done as u64),
    )?;
    ctx.progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let meta = BTreeMap::from([("loss".to_string(), g.loss.to_string())]);
    let bytes = save_safetensors_bytes(&g.named(), &meta)?;
    Ok(Produced {
        outputs: BTreeMap::from([("grads".to_string(), bytes)]),
        metadata: serde_json::json!({
            "loss": g.loss,
            "samples": g.samples,
            "answer_tokens": g.answer_tokens,
            "seconds": seconds,
        }),
    })
}

fn check(entry: &ActionEntry) -> Result<(), String> {
    has_outputs(entry, &["grads"])
}
