//! Stage bodies: each computes its key, then looks it up or computes through
//! [`Ctx::get_or_compute`]. They call the pure functions of `c2i-stages` and know
//! the cache only through the context.

use crate::ctx::Ctx;
use crate::db::{self, Candidate, EngineDb, EvalReq, MatrixReq, Rows, Setup};
use crate::{keys, EngineError};
use c2i_cache::{ActionEntry, Blob, Digest, Key, KeyBuilder};
use c2i_stages::compress::dense_candidate;
use c2i_stages::data::Dataset;
use c2i_stages::eval::evaluator::{
    evaluate as run_eval, first_changed_layer, EvalOptions, EvalSet,
};
use c2i_stages::eval::prefix::Prefix;
use c2i_stages::factor::{factor_matrix, from_safetensors, RowMajor};
use c2i_stages::grad::{gradient_pass, GradOptions, LossSample};
use c2i_stages::model::tokenizer::{encode, encode_prompt};
use c2i_stages::model::weights::save_safetensors_bytes;
use c2i_stages::model::{Decoder, LoadedModel, MatrixId};
use c2i_stages::score::{sv_grads as compute_sv_grads, Components};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

fn model_digest(db: &dyn EngineDb, setup: Setup) -> Digest {
    Digest::from_bytes(setup.model_digest(db))
}

fn model(db: &dyn EngineDb, setup: Setup) -> Result<Arc<LoadedModel>, EngineError> {
    db.ctx().model(
        setup.model_path(db),
        &Digest::from_bytes(setup.model_digest(db)),
    )
}

fn examples(db: &dyn EngineDb, setup: Setup) -> Result<Arc<Dataset>, EngineError> {
    db.ctx().examples(
        setup.task(db),
        setup.data_path(db),
        &Digest::from_bytes(setup.data_digest(db)),
    )
}

/// The examples as the model sees them: wrapped in its chat template for a
/// `chat = true` task (memoized per task, data and model).
fn model_examples(
    db: &dyn EngineDb,
    setup: Setup,
    loaded: &LoadedModel,
) -> Result<Arc<Dataset>, EngineError> {
    let ds = examples(db, setup)?;
    if !ds.task.chat {
        return Ok(ds);
    }
    let key = format!(
        "chat:{}:{}:{}",
        setup.task(db).digest(),
        hex(&setup.data_digest(db)),
        hex(&setup.model_digest(db))
    );
    let _ = loaded;
    db.ctx().memo(&key, || {
        let path = setup.model_path(db);
        let template = c2i_stages::model::chat::chat_template(path)?;
        Ok(ds
            .for_model(template.as_deref(), &path.display().to_string())?
            .into_owned())
    })
}

/// The gradients' key (also used by `status`).
pub fn gradients_parts(
    db: &dyn EngineDb,
    setup: Setup,
) -> Result<c2i_cache::KeyParts, EngineError> {
    keys::gradients(
        setup.exec(db),
        &Digest::from_bytes(setup.model_digest(db)),
        &Digest::from_bytes(setup.data_digest(db)),
        setup.task(db),
        setup.calibration(db),
        setup.micro_batch(db),
    )
}

pub fn gradients(db: &dyn EngineDb, setup: Setup) -> Result<Arc<ActionEntry>, EngineError> {
    let ctx = db.ctx();
    let parts = gradients_parts(db, setup)?;
    let entry = ctx.get_or_compute(&parts, "all matrices", || {
        let loaded = model(db, setup)?;
        let ex = model_examples(db, setup, &loaded)?;
        let mut samples = Vec::new();
        for &r in setup.calibration(db) {
            let e = ex.examples.get(r).ok_or(EngineError::Row(r))?;
            samples.push(LossSample {
                prompt: encode_prompt(&loaded.tokenizer, &e.prompt)?,
                answer: encode(&loaded.tokenizer, &e.answer.gold_continuation())?,
            });
        }
        let started = Instant::now();
        ctx.progress.start("gradients", samples.len() as u64);
        let exec = setup.exec(db);
        let weights = ctx.weights_on(setup.model_path(db), &model_digest(db, setup), exec)?;
        let g = gradient_pass(
            &weights,
            &samples,
            &[],
            &GradOptions {
                micro_batch: setup.micro_batch(db),
            },
            &mut |done, _| ctx.progress.advance(done as u64),
        )?;
        ctx.progress.finish();
        let seconds = started.elapsed().as_secs_f64();
        let meta = BTreeMap::from([("loss".to_string(), g.loss.to_string())]);
        // Stored as f32 on the CPU whatever the device computed them on.
        let named: BTreeMap<String, Tensor> = g
            .named()
            .into_iter()
            .map(|(n, t)| {
                Ok((
                    n,
                    t.to_dtype(candle_core::DType::F32)?
                        .to_device(&Device::Cpu)?,
                ))
            })
            .collect::<Result<_, EngineError>>()?;
        let bytes = save_safetensors_bytes(&named, &meta)?;
        Ok((
            BTreeMap::from([("grads".to_string(), bytes)]),
            serde_json::json!({
                "loss": g.loss,
                "samples": g.samples,
                "answer_tokens": g.answer_tokens,
                "seconds": seconds,
            }),
        ))
    })?;
    Ok(Arc::new(entry))
}

/// BLAKE3 of a matrix's shape and f32 bytes, itself cached (keyed by the model file
/// and the matrix name) so a warm run never loads the model to learn it.
pub fn matrix_digest(
    db: &dyn EngineDb,
    setup: Setup,
    matrix: MatrixId,
) -> Result<[u8; 32], EngineError> {
    let parts = KeyBuilder::new("matrix-digest", "1")
        .param("matrix", matrix.hf_name())
        .input(
            "model",
            Key::from(Digest::from_bytes(setup.model_digest(db))),
        )
        .build()?;
    let entry = db.ctx().get_or_compute(&parts, &matrix.hf_name(), || {
        let loaded = model(db, setup)?;
        let w = loaded.weights.matrix(matrix)?;
        let (r, c) = w.dims2()?;
        let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let mut h = blake3::Hasher::new();
        h.update(&(r as u64).to_le_bytes());
        h.update(&(c as u64).to_le_bytes());
        h.update(bytemuck::cast_slice(&v));
        Ok((
            BTreeMap::new(),
            serde_json::json!({ "digest": h.finalize().to_hex().to_string() }),
        ))
    })?;
    let hex = entry.metadata["digest"]
        .as_str()
        .ok_or_else(|| EngineError::Corrupt("matrix-digest entry without a digest".into()))?;
    Ok(*Digest::from_hex(hex)?.as_bytes())
}

fn factors_parts(
    db: &dyn EngineDb,
    req: MatrixReq<'_>,
) -> Result<c2i_cache::KeyParts, EngineError> {
    // The digest does not depend on K: ask for it once per matrix.
    let one = MatrixReq::new(db, req.setup(db), req.matrix(db), 0);
    let digest = db::matrix_digest(db, one).map_err(EngineError::Stage)?;
    keys::factors(
        req.setup(db).exec(db),
        &Digest::from_bytes(digest),
        req.blocks(db),
    )
}

pub fn factors(db: &dyn EngineDb, req: MatrixReq<'_>) -> Result<Arc<ActionEntry>, EngineError> {
    let setup = req.setup(db);
    let (matrix, k) = (req.matrix(db), req.blocks(db));
    let parts = factors_parts(db, req)?;
    let entry = db
        .ctx()
        .get_or_compute(&parts, &format!("{} K={k}", matrix.hf_name()), || {
            let loaded = model(db, setup)?;
            let w = loaded.weights.matrix(matrix)?;
            let (r, c) = w.dims2()?;
            let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
            let started = Instant::now();
            let f = factor_on(db, setup, RowMajor::new(&v, r, c)?, k)?;
            let seconds = started.elapsed().as_secs_f64();
            Ok((
                BTreeMap::from([("factors".to_string(), f.to_safetensors()?)]),
                serde_json::json!({ "rows": r, "cols": c, "blocks": k, "seconds": seconds }),
            ))
        })?;
    Ok(Arc::new(entry))
}

/// The block SVD on the run's device: faer on the CPU, cuSOLVER on a CUDA device.
fn factor_on(
    db: &dyn EngineDb,
    setup: Setup,
    w: RowMajor<'_>,
    k: usize,
) -> Result<c2i_stages::factor::MatrixFactors, EngineError> {
    let exec = setup.exec(db);
    if exec.is_cpu() {
        return Ok(factor_matrix(w, k)?);
    }
    #[cfg(feature = "cuda")]
    {
        let dev = db.ctx().device(exec)?;
        let svd = db.ctx().memo(&format!("cusolver:{}", exec.device), || {
            Ok(c2i_stages::factor::cuda::GpuSvd::on(&dev)?)
        })?;
        Ok(svd.factor_matrix(w, k, c2i_stages::factor::Precision::default())?)
    }
    #[cfg(not(feature = "cuda"))]
    Err(EngineError::Invalid(format!(
        "run.device {}: this c2i was built without the `cuda` feature",
        exec.device
    )))
}

/// Singular values and their gradients of one block, as stored in sv-grads metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockSpectrum {
    pub rows: usize,
    pub cols: usize,
    /// Singular values, descending.
    pub s: Vec<f32>,
    /// dLoss/dσ_i for every component.
    pub g: Vec<f64>,
}

/// Output `name` of `entry`, hash-checked on read ([`Ctx::read_output`]); when it is
/// damaged (and so was just removed), `rebuild` recomputes the producing stage, whose
/// lookup now misses, and the fresh output is read instead. A corrupt cache therefore
/// costs a recomputation, never a wrong result.
pub(crate) fn read_or_rebuild(
    ctx: &Ctx,
    entry: &ActionEntry,
    name: &str,
    rebuild: impl FnOnce() -> Result<Arc<ActionEntry>, EngineError>,
) -> Result<Blob, EngineError> {
    match ctx.read_output(entry, name) {
        Err(e @ EngineError::DamagedOutput { .. }) => {
            tracing::warn!("{e}");
            let fresh = rebuild()?;
            ctx.read_output(&fresh, name)
        }
        other => other,
    }
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

pub fn sv_grads(db: &dyn EngineDb, req: MatrixReq<'_>) -> Result<Arc<ActionEntry>, EngineError> {
    let ctx = db.ctx();
    let setup = req.setup(db);
    let (matrix, k) = (req.matrix(db), req.blocks(db));
    let grads = db::gradients(db, setup).map_err(EngineError::Stage)?;
    let facts = db::factors(db, req).map_err(EngineError::Stage)?;
    let parts = keys::sv_grads(setup.exec(db), matrix, &facts.0.key, &grads.0.key)?;
    let entry = ctx.get_or_compute(&parts, &format!("{} K={k}", matrix.hf_name()), || {
        let fblob = read_or_rebuild(ctx, &facts.0, "factors", || factors(db, req))?;
        let view = from_safetensors(fblob.bytes())?;
        let gblob = read_or_rebuild(ctx, &grads.0, "grads", || gradients(db, setup))?;
        let (g, shape) = tensor_from_blob(gblob.bytes(), &matrix.hf_name())?;
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
        Ok((BTreeMap::new(), serde_json::json!({ "blocks": blocks })))
    })?;
    Ok(Arc::new(entry))
}

/// The spectra stored by [`sv_grads`].
pub fn spectra(entry: &ActionEntry) -> Result<Vec<BlockSpectrum>, EngineError> {
    serde_json::from_value(entry.metadata["blocks"].clone())
        .map_err(|e| EngineError::Corrupt(format!("sv-grads entry {}: {e}", entry.key)))
}

fn rows_of(db: &dyn EngineDb, setup: Setup, rows: Rows) -> Vec<usize> {
    match rows {
        Rows::Selection => setup.evaluation(db).clone(),
        Rows::Heldout => setup.heldout(db).clone(),
    }
}

/// The evaluation's key (also used by `status`); needs the candidate's factors key.
pub fn evaluate_parts(
    db: &dyn EngineDb,
    setup: Setup,
    rows: Rows,
    candidate: Option<(Candidate, &Key)>,
) -> Result<c2i_cache::KeyParts, EngineError> {
    keys::evaluate(
        setup.exec(db),
        &Digest::from_bytes(setup.model_digest(db)),
        &Digest::from_bytes(setup.data_digest(db)),
        setup.task(db),
        &rows_of(db, setup, rows),
        candidate.map(|(c, k)| (c.matrix, c.blocks, c.keep(), k)),
    )
}

fn eval_options(db: &dyn EngineDb, setup: Setup) -> EvalOptions {
    EvalOptions {
        micro_batch: setup.eval_batch(db),
        collapse_threshold: f64::from_bits(setup.collapse_bits(db)),
        ..EvalOptions::default()
    }
}

pub fn evaluate(db: &dyn EngineDb, req: EvalReq<'_>) -> Result<Arc<ActionEntry>, EngineError> {
    let ctx = db.ctx();
    let setup = req.setup(db);
    let rows = req.rows(db);
    let cand = req.candidate(db);
    let facts = match cand {
        Some(c) => Some(
            db::factors(db, MatrixReq::new(db, setup, c.matrix, c.blocks))
                .map_err(EngineError::Stage)?,
        ),
        None => None,
    };
    let parts = evaluate_parts(db, setup, rows, cand.zip(facts.as_ref().map(|f| &f.0.key)))?;
    let instance = match cand {
        None => format!("base model, {rows:?}"),
        Some(c) => format!(
            "{} K={} keep={}, {rows:?}",
            c.matrix.hf_name(),
            c.blocks,
            c.keep()
        ),
    };
    let entry = ctx.get_or_compute(&parts, &instance, || {
        let loaded = model(db, setup)?;
        let ex = model_examples(db, setup, &loaded)?;
        let row_list = rows_of(db, setup, rows);
        // The set depends on the task, the data, the model (tokenizer, chat template)
        // and the rows: a sweep may vary any of them.
        let set_key = format!(
            "evalset:{:?}:{}:{}:{}:{}",
            rows,
            setup.task(db).digest(),
            hex(&setup.data_digest(db)),
            hex(&setup.model_digest(db)),
            blake3::hash(format!("{row_list:?}").as_bytes())
        );
        // Generation stops where the model file says a turn ends.
        let eos = loaded.special.stop();
        let set = ctx.memo(&set_key, || {
            Ok(EvalSet::from_rows(&ex, &row_list, &loaded.tokenizer, eos)?)
        })?;
        let opts = eval_options(db, setup);
        let started = Instant::now();
        let exec = setup.exec(db);
        let weights = ctx.weights_on(setup.model_path(db), &model_digest(db, setup), exec)?;
        let mut replace = BTreeMap::new();
        if let (Some(c), Some(f)) = (cand, &facts) {
            let fblob = read_or_rebuild(ctx, &f.0, "factors", || {
                factors(db, MatrixReq::new(db, setup, c.matrix, c.blocks))
            })?;
            let view = from_safetensors(fblob.bytes())?;
            let dense = dense_candidate(&view, c.keep())?;
            let dev = ctx.device(exec)?;
            replace.insert(
                c.matrix,
                Tensor::from_vec(dense, (view.rows(), view.cols()), &Device::Cpu)?
                    .to_dtype(exec.dtype())?
                    .to_device(&dev)?,
            );
        }
        let base = ctx.memo(
            &format!(
                "decoder:{}:{}:{}",
                hex(&setup.model_digest(db)),
                exec.device,
                exec.dtype
            ),
            || Ok(Decoder::new(&weights)?.inference()),
        )?;
        let from = first_changed_layer(&replace);
        let candidate_model = if replace.is_empty() {
            (*base).clone()
        } else {
            Decoder::with_matrices(&weights, &replace)?.inference()
        };
        ctx.progress.start("evaluate", set.len() as u64);
        // Prefix reuse pays when several candidates share the rows (the selection
        // sample); the held-out rows see one candidate, so they run from layer 0.
        let result = if from > 0 && rows == Rows::Selection {
            let layers = ctx.prefix_layers();
            let prefix_key = format!("prefix:{set_key}:{layers:?}");
            let prefix = ctx.memo(&prefix_key, || {
                Ok(Prefix::compute(
                    &base,
                    &set,
                    &layers,
                    &opts,
                    &mut |_, _| {},
                )?)
            })?;
            if prefix.supports(from) {
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
            }
        } else {
            run_eval(&candidate_model, &set, None, 0, &opts, &mut |d, _| {
                ctx.progress.advance(d as u64)
            })?
        };
        ctx.progress.finish();
        let seconds = started.elapsed().as_secs_f64();
        let records = serde_json::to_vec(&result.records)?;
        Ok((
            BTreeMap::from([("records".to_string(), records)]),
            serde_json::json!({
                "samples": result.samples,
                "metrics": result.metrics,
                "log_loss": result.log_loss,
                "selection": result.selection,
                "seconds": seconds,
            }),
        ))
    })?;
    Ok(Arc::new(entry))
}

fn hex(bytes: &[u8; 32]) -> String {
    Digest::from_bytes(*bytes).to_hex()
}
