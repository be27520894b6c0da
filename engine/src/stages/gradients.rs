//! `gradients`: one forward and backward pass over the calibration rows; dLoss/dW of
//! every weight matrix. Independent of K and rho.

use super::{has_outputs, Produced, StageDef};
use crate::action::{Action, DeviceSpec, Input};
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
/// 3: the task is its task file's content (canonical form and digest), not a built-in name.
pub const VERSION: &str = "3";

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
    task: &Task,
    rows: &[usize],
    micro_batch: usize,
    device: &DeviceSpec,
) -> Result<Action, EngineError> {
    Action::builder(NAME, VERSION, "all matrices")
        .param("task", task.canonical())
        .param("task_digest", task.digest())
        .param("calibration_rows", rows)
        .param("loss", LOSS)
        .param("micro_batch", micro_batch)
        .input("model", model.clone())
        .input("data", data.clone())
        .on(device)
        .build()
}

fn run(ctx: &Ctx, action: &Action) -> Result<Produced, EngineError> {
    let task = ctx.input_task(action)?;
    let device = DeviceSpec::of(action)?;
    let rows: Vec<usize> = action.param("calibration_rows")?;
    let micro_batch: usize = action.param("micro_batch")?;
    let loaded = ctx.input_model(action, "model")?;
    let ex = ctx.input_examples(action, "data", "model", &task)?;
    let mut samples = Vec::new();
    for &r in &rows {
        let e = ex.examples.get(r).ok_or(EngineError::Row(r))?;
        samples.push(LossSample {
            prompt: encode_prompt(&loaded.tokenizer, &e.prompt)?,
            answer: encode(&loaded.tokenizer, &e.answer.gold_continuation())?,
        });
    }
    let started = Instant::now();
    ctx.progress.start("gradients", samples.len() as u64);
    let weights = ctx.weights_on(&loaded, &action.input("model")?.digest(), &device)?;
    let g = gradient_pass(
        &weights,
        &samples,
        &[],
        &GradOptions { micro_batch },
        &mut |done, _| ctx.progress.advance(done as u64),
    )?;
    ctx.progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let meta = BTreeMap::from([("loss".to_string(), g.loss.to_string())]);
    let (loss, n_samples, answer_tokens) = (g.loss, g.samples, g.answer_tokens);
    // Stored as f32 on the CPU whatever the device computed them on; the map takes the
    // only references, so each gradient is freed as its bytes are written (at 1.5B the
    // gradients are 5 GB: held once, not twice).
    let named: BTreeMap<String, candle_core::Tensor> = g
        .into_named()
        .into_iter()
        .map(|(n, t)| {
            Ok((
                n,
                t.to_dtype(candle_core::DType::F32)?
                    .to_device(&candle_core::Device::Cpu)?,
            ))
        })
        .collect::<Result<_, EngineError>>()?;
    let bytes = save_safetensors_bytes(named, &meta)?;
    Ok(Produced {
        outputs: BTreeMap::from([("grads".to_string(), bytes)]),
        metadata: serde_json::json!({
            "loss": loss,
            "samples": n_samples,
            "answer_tokens": answer_tokens,
            "seconds": seconds,
        }),
    })
}

fn check(entry: &ActionEntry) -> Result<(), String> {
    has_outputs(entry, &["grads"])
}
