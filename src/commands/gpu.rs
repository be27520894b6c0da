//! `c2i gpu check` and `c2i gpu bench` (feature `cuda`): the GPU path against the CPU
//! on a real model, and its timings at 7B scale.
//!
//! - `check`: on a real model (SmolLM2), the gradients of the GPU pass (candle's CUDA
//!   backend, autograd) against the CPU pass (the hand-written kernels): per-matrix
//!   cosine and norm difference; the choice log-probabilities of an evaluation on both;
//!   the block SVD on the GPU (cuSOLVER's Jacobi SVD) against faer on real matrices.
//! - `bench`: a model of a real 7B architecture's shapes (Qwen2.5-7B) with random bf16
//!   weights generated on the GPU (timings do not depend on the values): the gradient
//!   pass over real epistemic-reasoning rows tokenized with Qwen's tokenizer, the block
//!   SVDs of the MLP matrices (K = 1 and 4), one candidate's evaluation on 100 rows,
//!   and the peak GPU memory.
//!
//! Both write one JSON file of figures (`--out`).

use super::Output;
use anyhow::{bail, Context, Result};
use c2i_stages::data::{self, Task};
use c2i_stages::eval::evaluator::{evaluate, EvalOptions, EvalSet, Prediction};
use c2i_stages::factor::cuda::GpuSvd;
use c2i_stages::factor::{factor_matrix, FactorsView, MatrixFactors, Precision, RowMajor};
use c2i_stages::grad::{gradient_pass, gradient_pass_autograd, GradOptions, LossSample};
use c2i_stages::model::config::{Activation, Family, ModelConfig, Rope};
use c2i_stages::model::tokenizer::{encode, encode_prompt};
use c2i_stages::model::weights::expected_shapes;
use c2i_stages::model::{Decoder, MatrixId, MatrixKind, Weights};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: GpuCommand,
}

#[derive(clap::Subcommand)]
pub enum GpuCommand {
    /// The GPU path against the CPU on a real model.
    Check(CheckArgs),
    /// Timings of a 7B-scale model with synthetic weights.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The model: a .gguf file or a Hugging Face directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Epistemic reasoning rows (LASER's jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// Calibration rows for the gradient comparison.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Evaluation rows for the log-prob comparison.
    #[arg(long, default_value_t = 64)]
    pub rows: usize,
    /// `cuda:N`, or `cpu` to rehearse the command without a GPU (the "device" side then
    /// runs candle's CPU ops and faer).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Epistemic reasoning rows (LASER's jsonl): their real lengths and tokens.
    #[arg(long)]
    pub data: PathBuf,
    /// A tokenizer.json of the architecture's family (Qwen2.5).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Calibration rows of the gradient pass.
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
    /// Rows of the candidate evaluation.
    #[arg(long, default_value_t = 100)]
    pub rows: usize,
    /// How many MLP matrices to factor (all 84 by default).
    #[arg(long)]
    pub svd_matrices: Option<usize>,
    /// Precision of the GPU SVDs.
    #[arg(long, default_value = "f32")]
    pub svd_precision: String,
    /// Stop factoring (per K) after this many seconds and project the rest from the
    /// matrices done.
    #[arg(long, default_value_t = 90.0)]
    pub svd_seconds: f64,
    /// `cuda:N`, or `cpu` to rehearse the command without a GPU (with `--layers` and
    /// `--scale` to shrink the model).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Layers of the synthetic model (28 for Qwen2.5-7B).
    #[arg(long, default_value_t = 28)]
    pub layers: usize,
    /// Divides the hidden, MLP and vocabulary sizes (1 for Qwen2.5-7B).
    #[arg(long, default_value_t = 1)]
    pub scale: usize,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args, out: &Output) -> Result<()> {
    match args.command {
        GpuCommand::Check(a) => check(a, out),
        GpuCommand::Bench(a) => bench(a, out),
    }
}

/// The device named: `cuda:N`, or `cpu` (a rehearsal).
fn device(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal: usize = name
        .strip_prefix("cuda:")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("--device {name}: expected cuda:N or cpu"))?;
    // cudarc panics rather than erring when the driver library is missing.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => bail!("cannot open CUDA device {ordinal}: {e}"),
        Err(_) => bail!("cannot open CUDA device {ordinal}: the CUDA driver library is missing"),
    }
}

/// GPU memory in use on the device (bytes), from the driver; 0 on the CPU.
fn gpu_used(dev: &Device) -> u64 {
    let Device::Cuda(d) = dev else { return 0 };
    let Ok(ctx) = std::panic::catch_unwind(|| d.cuda_stream().context().clone()) else {
        return 0;
    };
    if ctx.bind_to_thread().is_err() {
        return 0;
    }
    match candle_core::cuda_backend::cudarc::driver::result::mem_get_info() {
        Ok((free, total)) => (total - free) as u64,
        Err(_) => 0,
    }
}

/// The block SVD on the device: cuSOLVER, or faer on the CPU.
fn factor_on(
    svd: Option<&GpuSvd>,
    w: RowMajor<'_>,
    k: usize,
    precision: Precision,
) -> Result<MatrixFactors> {
    Ok(match svd {
        Some(s) => s.factor_matrix(w, k, precision)?,
        None => c2i_stages::factor::factor_matrix_with(
            w,
            k,
            &c2i_stages::factor::FactorOptions {
                precision,
                ..Default::default()
            },
        )?,
    })
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?)
}

/// The epistemic-reasoning rows of a LASER-ordered file (the built-in task).
fn epistemic(path: &PathBuf) -> Result<data::Dataset> {
    let task = Task::builtin("epistemic_reasoning")
        .ok_or_else(|| anyhow::anyhow!("the built-in task epistemic_reasoning is missing"))?;
    Ok(data::load(&task, path)?)
}

fn rows_of(path: &PathBuf, n: usize, skip: usize) -> Result<Vec<data::Example>> {
    let ex = epistemic(path)?;
    if ex.len() < skip + n {
        bail!("{}: {} rows, {} needed", path.display(), ex.len(), skip + n);
    }
    Ok(ex.examples[skip..skip + n].to_vec())
}

fn samples(tok: &tokenizers::Tokenizer, ex: &[data::Example]) -> Result<Vec<LossSample>> {
    ex.iter()
        .map(|e| {
            Ok(LossSample {
                prompt: encode_prompt(tok, &e.prompt)?,
                answer: encode(tok, &e.answer.gold_continuation())?,
            })
        })
        .collect()
}

/// Reconstruction error ‖W − Σ_b U_b S_b V_bᵀ‖_F / ‖W‖_F, orthogonality error
/// max |UᵀU − I|, |VᵀV − I|, in f64.
fn svd_errors(w: &[f32], cols: usize, f: &FactorsView<'_>) -> (f64, f64) {
    let mut num = 0f64;
    let mut den = 0f64;
    let mut orth = 0f64;
    for b in f.blocks() {
        let (r, k) = (b.rows(), b.rank());
        for i in 0..r {
            for j in 0..cols {
                let mut x = 0f64;
                for c in 0..k {
                    x += f64::from(b.ut()[c * r + i])
                        * f64::from(b.s()[c])
                        * f64::from(b.vt()[c * cols + j]);
                }
                let wv = f64::from(w[(b.row_start() + i) * cols + j]);
                num += (wv - x) * (wv - x);
                den += wv * wv;
            }
        }
        for (vecs, len) in [(b.ut(), r), (b.vt(), cols)] {
            for a in 0..k {
                for c in 0..k {
                    let d: f64 = (0..len)
                        .map(|t| f64::from(vecs[a * len + t]) * f64::from(vecs[c * len + t]))
                        .sum();
                    let want = if a == c { 1.0 } else { 0.0 };
                    orth = orth.max((d - want).abs());
                }
            }
        }
    }
    ((num / den).sqrt(), orth)
}

fn check(a: CheckArgs, out: &Output) -> Result<()> {
    let dev = device(&a.device)?;
    let loaded =
        Weights::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let cpu = &loaded.weights;
    let gpu = cpu.to_device(&dev, DType::F32)?;
    let mut report = serde_json::Map::new();

    // 1. Gradients.
    let ex = rows_of(&a.data, a.samples, 0)?;
    let s = samples(&loaded.tokenizer, &ex)?;
    let opts = GradOptions { micro_batch: 8 };
    let t = Instant::now();
    let g_cpu = gradient_pass(cpu, &s, &[], &opts, &mut |_, _| {})?;
    let cpu_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let g_gpu = gradient_pass_autograd(&gpu, &s, &[], &opts, &mut |_, _| {})?;
    let gpu_s = t.elapsed().as_secs_f64();
    let mut min_cos = 1f64;
    let mut max_norm = 0f64;
    for (id, gc) in &g_cpu.grads {
        let (x, y) = (flat(gc)?, flat(&g_gpu.grads[id])?);
        let dot: f64 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
        let (nx, ny) = (
            x.iter().map(|v| v * v).sum::<f64>().sqrt(),
            y.iter().map(|v| v * v).sum::<f64>().sqrt(),
        );
        min_cos = min_cos.min(dot / (nx * ny).max(1e-300));
        max_norm = max_norm.max((nx - ny).abs() / nx.max(1e-300));
    }
    report.insert(
        "gradients".into(),
        json!({
            "samples": a.samples, "matrices": g_cpu.grads.len(),
            "loss_cpu": g_cpu.loss, "loss_gpu": g_gpu.loss,
            "min_cosine": min_cos, "max_rel_norm_diff": max_norm,
            "seconds_cpu": cpu_s, "seconds_gpu": gpu_s,
        }),
    );

    // 2. Log-probabilities of an evaluation (choice trees): CPU kernels vs GPU candle.
    let ex = epistemic(&a.data)?;
    let rows: Vec<usize> = (a.samples..a.samples + a.rows).collect();
    let set = EvalSet::from_rows(&ex, &rows, &loaded.tokenizer, loaded.special.stop())?;
    let eopts = EvalOptions::default();
    let t = Instant::now();
    let r_cpu = evaluate(
        &Decoder::new(cpu)?.inference(),
        &set,
        None,
        0,
        &eopts,
        &mut |_, _| {},
    )?;
    let ecpu = t.elapsed().as_secs_f64();
    // The device side on candle's ops (what a GPU runs; forced for a CPU rehearsal).
    let dopts = EvalOptions {
        forward: c2i_stages::eval::Forward::Candle,
        ..eopts
    };
    let t = Instant::now();
    let r_gpu = evaluate(
        &Decoder::new(&gpu)?.inference(),
        &set,
        None,
        0,
        &dopts,
        &mut |_, _| {},
    )?;
    let egpu = t.elapsed().as_secs_f64();
    let mut worst = 0f64;
    for (x, y) in r_cpu.records.iter().zip(&r_gpu.records) {
        if let (Prediction::Choice { log_probs: p, .. }, Prediction::Choice { log_probs: q, .. }) =
            (&x.prediction, &y.prediction)
        {
            for (u, v) in p.iter().zip(q) {
                worst = worst.max((u - v).abs());
            }
        }
    }
    report.insert(
        "log_probs".into(),
        json!({
            "rows": a.rows, "max_abs_diff": worst,
            "accuracy_cpu": r_cpu.accuracy(), "accuracy_gpu": r_gpu.accuracy(),
            "seconds_cpu": ecpu, "seconds_gpu": egpu,
        }),
    );

    // 3. Block SVDs: cuSOLVER against faer on real matrices.
    let svd = match dev {
        Device::Cpu => None,
        _ => Some(GpuSvd::on(&dev)?),
    };
    let n = cpu.config.num_hidden_layers;
    let mut svds = Vec::new();
    for (layer, kind) in [
        (0, MatrixKind::Gate),
        (n / 2, MatrixKind::Down),
        (n - 1, MatrixKind::Q),
    ] {
        let id = MatrixId::new(layer, kind);
        let w = cpu.matrix(id)?;
        let (r, c) = w.dims2()?;
        let v: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let wm = RowMajor::new(&v, r, c)?;
        for k in [1usize, 4] {
            let t = Instant::now();
            let reference: MatrixFactors = factor_matrix(wm, k)?;
            let faer_s = t.elapsed().as_secs_f64();
            for precision in [Precision::F64, Precision::F32] {
                let t = Instant::now();
                let f = factor_on(svd.as_ref(), wm, k, precision)?;
                let gpu_s = t.elapsed().as_secs_f64();
                let (recon, orth) = svd_errors(&v, c, &f.view());
                let mut ds = 0f64;
                for (bg, bc) in f.blocks().iter().zip(reference.blocks()) {
                    let smax = f64::from(bc.s()[0]);
                    for (x, y) in bg.s().iter().zip(bc.s()) {
                        ds = ds.max((f64::from(*x) - f64::from(*y)).abs() / smax);
                    }
                }
                svds.push(json!({
                    "matrix": id.hf_name(), "rows": r, "cols": c, "blocks": k,
                    "precision": precision.name(), "reconstruction": recon,
                    "orthogonality": orth, "max_rel_singular_value_diff": ds,
                    "seconds_gpu": gpu_s, "seconds_faer_f64": faer_s,
                }));
            }
        }
    }
    report.insert("svd".into(), Value::Array(svds));
    let report = Value::Object(report);
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)?;
    out.result(&serde_json::to_string_pretty(&report)?, &report);
    Ok(())
}

/// Qwen2.5-7B's architecture (config.json of Qwen/Qwen2.5-7B-Instruct); `layers` and a
/// divisor `scale` of the widths shrink it for a rehearsal.
fn qwen2_5_7b(layers: usize, scale: usize) -> ModelConfig {
    let scale = scale.max(1);
    ModelConfig {
        family: Family::Qwen2,
        vocab_size: 152064,
        hidden_size: 3584 / scale,
        intermediate_size: 18944 / scale,
        num_hidden_layers: layers,
        num_attention_heads: 28 / scale.min(7),
        num_key_value_heads: 4 / scale.min(4),
        head_dim: 128,
        rms_norm_eps: 1e-6,
        activation: Activation::Silu,
        qkv_bias: true,
        qk_norm: false,
        post_norms: false,
        embed_scale: 1.0,
        attn_scale: 1.0 / 128f64.sqrt(),
        tie_word_embeddings: false,
        max_position_embeddings: 32768,
        ropes: vec![Rope::plain(1_000_000.0)],
        layers: ModelConfig::uniform_layers(layers, None),
    }
}

/// Random weights of `c` on `dev` in `dtype`: matrices N(0, 0.02), norms 1, biases 0.
fn synthetic(c: &ModelConfig, dev: &Device, dtype: DType) -> Result<Weights> {
    let mut tensors = BTreeMap::new();
    for (name, shape) in expected_shapes(c) {
        let t = if shape.len() == 1 {
            if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), dtype, dev)?
            } else {
                Tensor::zeros(shape.as_slice(), dtype, dev)?
            }
        } else {
            // Made a variable here, so the gradient pass takes it as it is instead of
            // copying 13 GB of matrices into variables of its own.
            let t = Tensor::randn(0f32, 0.02, shape.as_slice(), dev)?.to_dtype(dtype)?;
            candle_core::Var::from_tensor(&t)?.as_tensor().clone()
        };
        tensors.insert(name, t);
    }
    Ok(Weights {
        config: c.clone(),
        tensors,
        source: PathBuf::from("synthetic Qwen2.5-7B"),
    })
}

fn bench(a: BenchArgs, out: &Output) -> Result<()> {
    let dev = device(&a.device)?;
    let tok = tokenizers::Tokenizer::from_file(&a.tokenizer)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.tokenizer.display()))?;
    let c = qwen2_5_7b(a.layers, a.scale);
    c.validate(std::path::Path::new("Qwen2.5-7B shapes"))?;
    let mut report = serde_json::Map::new();
    let used = || gpu_used(&dev);
    let mut peak = used();
    let t = Instant::now();
    // bf16 on a GPU; the CPU has no bf16 matmul, so a rehearsal uses f32.
    let dtype = if dev.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let w = synthetic(&c, &dev, dtype)?;
    dev.synchronize()?;
    peak = peak.max(used());
    report.insert(
        "weights".into(),
        json!({
            "architecture": "Qwen2.5-7B shapes, random bf16 weights (synthetic)",
            "params": expected_shapes(&c).iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(),
            "seconds": t.elapsed().as_secs_f64(), "gpu_bytes": used(),
        }),
    );

    // Gradient pass: bf16 weights, f32 accumulation, every matrix.
    let ex = rows_of(&a.data, a.samples, 0)?;
    let s = samples(&tok, &ex)?;
    let tokens: usize = s.iter().map(|x| x.prompt.len() + x.answer.len()).sum();
    let t = Instant::now();
    let g = gradient_pass_autograd(&w, &s, &[], &GradOptions { micro_batch: 8 }, &mut |_, _| {
        peak = peak.max(used());
    })?;
    dev.synchronize()?;
    let grad_s = t.elapsed().as_secs_f64();
    peak = peak.max(used());
    report.insert(
        "gradients".into(),
        json!({
            "samples": a.samples, "tokens": tokens, "matrices": g.grads.len(),
            "seconds": grad_s, "loss": g.loss,
        }),
    );
    drop(g);

    // Block SVDs of the MLP matrices, K = 1 and 4.
    let precision = match a.svd_precision.as_str() {
        "f64" => Precision::F64,
        _ => Precision::F32,
    };
    let svd = match dev {
        Device::Cpu => None,
        _ => Some(GpuSvd::on(&dev)?),
    };
    let mut mlp: Vec<MatrixId> = Vec::new();
    for l in 0..c.num_hidden_layers {
        for k in MatrixKind::MLP {
            mlp.push(MatrixId::new(l, k));
        }
    }
    let take = a.svd_matrices.unwrap_or(mlp.len()).min(mlp.len());
    let mut svd_report = Vec::new();
    for k in [1usize, 4] {
        let mut per = Vec::new();
        let t = Instant::now();
        for id in &mlp[..take] {
            if !per.is_empty() && t.elapsed().as_secs_f64() > a.svd_seconds {
                break;
            }
            let m = w
                .matrix(*id)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?;
            let (r, cc) = m.dims2()?;
            let v: Vec<f32> = m.flatten_all()?.to_vec1()?;
            let t1 = Instant::now();
            factor_on(svd.as_ref(), RowMajor::new(&v, r, cc)?, k, precision)?;
            per.push(t1.elapsed().as_secs_f64());
            peak = peak.max(used());
        }
        let total = t.elapsed().as_secs_f64();
        let svd_only: f64 = per.iter().sum();
        svd_report.push(json!({
            "blocks": k, "precision": precision.name(), "matrices": per.len(),
            "of": mlp.len(), "seconds": total, "seconds_in_svd": svd_only,
            "seconds_per_matrix": per,
            "projected_all_seconds": svd_only / per.len().max(1) as f64 * mlp.len() as f64,
        }));
    }
    report.insert("svd".into(), Value::Array(svd_report));

    // One candidate's evaluation on the rows: the whole model from layer 0.
    let ex = epistemic(&a.data)?;
    let rows: Vec<usize> = (a.samples..a.samples + a.rows).collect();
    let set = EvalSet::from_rows(&ex, &rows, &tok, None)?;
    let id = MatrixId::new(c.num_hidden_layers / 2, MatrixKind::Down);
    let cand = (w.matrix(id)? * 0.5)?;
    let model = Decoder::with_matrices(&w, &BTreeMap::from([(id, cand)]))?.inference();
    let t = Instant::now();
    let eopts = EvalOptions {
        forward: c2i_stages::eval::Forward::Candle,
        ..EvalOptions::default()
    };
    let r = evaluate(&model, &set, None, 0, &eopts, &mut |_, _| {
        peak = peak.max(used());
    })?;
    dev.synchronize()?;
    report.insert(
        "evaluation".into(),
        json!({ "rows": r.samples, "seconds": t.elapsed().as_secs_f64() }),
    );
    peak = peak.max(used());
    report.insert(
        "peak_gpu_bytes".into(),
        json!({ "bytes": peak, "gib": peak as f64 / (1u64 << 30) as f64,
                "note": "device memory in use (driver's free/total), sampled between steps" }),
    );
    let report = Value::Object(report);
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)?;
    out.result(&serde_json::to_string_pretty(&report)?, &report);
    Ok(())
}
