//! The one decoder on the real checkpoints of the other families: Qwen2.5-Coder-0.5B
//! (qwen2) and Gemma-3-270m (gemma3), fetched by the tests if absent.
//!
//! - log-probabilities equal to candle-transformers' model of the family on identical
//!   weights (our dense f32 tensors, written in the family's Hugging Face names);
//! - log-probabilities and the perplexity of a fixed paragraph equal to candle-transformers'
//!   quantized model of the family run on the Q4_K_M file's weights as candle dequantizes
//!   them (an independent loader and layout), and the perplexity against that model on
//!   the file's quantized blocks. Two findings, both measured by these tests: candle's quantized matmul
//!   quantizes the activations to 8 bits, which moves Qwen2.5's perplexity by about 2%
//!   (Qwen's activations have large outliers); and candle-transformers 0.11.1's
//!   `quantized_gemma3` gates its MLP with SiLU where Gemma uses tanh-GELU (its own
//!   `gemma3` and Hugging Face use GELU), so that reference is compared with our decoder
//!   switched to SiLU, and our GELU decoder with candle's `gemma3`;
//! - gradients against central differences of the loss in f64, 21 entries over the seven
//!   matrix kinds (gemma3: in local, sliding-window layers and in global ones).

use crate::common::{wikidata_samples, PARAGRAPH};
use crate::model_real::{ours_log_probs, perplexity};
use c2i_stages::assets::{self, GEMMA3_270M, QWEN2_5_0_5B};
use c2i_stages::grad::{calibration_loss_fast, gradient_pass, GradOptions};
use c2i_stages::model::decoder::max_abs_diff;
use c2i_stages::model::tokenizer::encode_prompt;
use c2i_stages::model::{Decoder, LoadedModel, MatrixId, MatrixKind, Weights};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;

struct Real {
    path: PathBuf,
    loaded: LoadedModel,
}

fn load(spec: &assets::AssetSpec) -> Real {
    let (mut paths, _) = assets::ensure(spec).expect("fetch the model");
    let path = paths.remove(0);
    let loaded = Weights::load_gguf(&path).expect("load GGUF");
    Real { path, loaded }
}

fn qwen() -> &'static Real {
    static R: OnceLock<Real> = OnceLock::new();
    R.get_or_init(|| load(&QWEN2_5_0_5B))
}

fn gemma() -> &'static Real {
    static R: OnceLock<Real> = OnceLock::new();
    R.get_or_init(|| load(&GEMMA3_270M))
}

fn var_builder(w: &Weights) -> VarBuilder<'static> {
    let t: HashMap<String, Tensor> = w.hf_tensors(DType::F32).unwrap().into_iter().collect();
    VarBuilder::from_tensors(t, DType::F32, &Device::Cpu)
}

fn worst(a: &[Tensor], b: &[Tensor]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y).unwrap())
        .fold(0f32, f32::max)
}

/// Per-position log-softmax rows of a model fed one token at a time (its KV cache).
fn one_at_a_time(ids: &[u32], mut step: impl FnMut(&Tensor, usize) -> Tensor) -> Vec<Tensor> {
    ids.iter()
        .enumerate()
        .map(|(i, &tok)| {
            let x = Tensor::new(&[tok], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = step(&x, i).flatten_all().unwrap();
            candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap()
        })
        .collect()
}

#[test]
fn qwen2_matches_candle_transformers_and_the_quantized_perplexity() {
    use candle_transformers::models::{quantized_qwen2, qwen2};
    let r = qwen();
    let w = &r.loaded.weights;
    let c = &w.config;
    let ids = encode_prompt(&r.loaded.tokenizer, PARAGRAPH).unwrap();
    assert!(ids.len() > 100, "{} tokens", ids.len());
    let ours = ours_log_probs(&Decoder::new(w).unwrap(), &ids);
    let ppl_ours = perplexity(&ours, &ids);

    let cfg: qwen2::Config = serde_json::from_value(serde_json::json!({
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "max_position_embeddings": c.max_position_embeddings,
        "sliding_window": c.max_position_embeddings, "max_window_layers": c.num_hidden_layers,
        "tie_word_embeddings": c.tie_word_embeddings, "rope_theta": c.ropes[0].theta,
        "rms_norm_eps": c.rms_norm_eps, "use_sliding_window": false, "hidden_act": "silu",
    }))
    .unwrap();
    let mut reference = qwen2::Model::new(&cfg, var_builder(w)).unwrap();
    let n = 48;
    let x = Tensor::new(&ids[..n], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let h = reference.forward(&x, 0, None).unwrap().squeeze(0).unwrap();
    let lp = candle_nn::ops::log_softmax(
        &h.matmul(&w.lm_head().unwrap().t().unwrap()).unwrap(),
        D::Minus1,
    )
    .unwrap();
    let want: Vec<Tensor> = (0..n).map(|i| lp.i(i).unwrap()).collect();
    let d = worst(&ours[..n], &want);
    println!("qwen2: max |log-prob diff| vs candle-transformers qwen2 on the same f32 weights, {n} positions: {d:.2e}");
    assert!(d <= 1e-3, "log-probs differ by {d}");

    let quantized = |path: &std::path::Path, ids: &[u32]| {
        let mut f = std::fs::File::open(path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let mut q = quantized_qwen2::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        one_at_a_time(ids, |x, i| q.forward(x, i).unwrap())
    };
    // The quantized model on the Q4_K_M file's own weights, dequantized by candle (the
    // values the file stores, exactly), every position of the paragraph: log-probs and
    // the perplexity. Then on the Q4_K_M blocks themselves, where candle's matmul also
    // rounds the activations to 8 bits.
    let dir = tempfile::tempdir().unwrap();
    let same = quantized(&crate::common::f32_gguf(&r.path, dir.path()), &ids);
    drop(dir);
    let d = worst(&ours, &same);
    let n_all = ids.len();
    println!("qwen2: max |log-prob diff| vs candle-transformers quantized_qwen2 on the Q4_K_M file's weights dequantized by candle, {n_all} positions: {d:.2e}");
    assert!(d <= 1e-3, "log-probs differ by {d}");
    let ppl_deq = perplexity(&same, &ids);
    let rel_deq = (ppl_ours - ppl_deq).abs() / ppl_deq;
    let ppl_q = perplexity(&quantized(&r.path, &ids), &ids);
    let rel = (ppl_ours - ppl_q).abs() / ppl_q;
    println!("qwen2: perplexity ours (dense f32) {ppl_ours:.4}; quantized_qwen2 on the Q4_K_M file's weights {ppl_deq:.4} (rel diff {rel_deq:.5}), on its Q4_K_M blocks with 8-bit activations {ppl_q:.4} (rel diff {rel:.4})");
    assert!(
        rel_deq < 0.02,
        "perplexity differs by {:.3}%",
        rel_deq * 100.0
    );
    // The 8-bit rounding of the activations in candle's quantized matmul alone moves
    // the perplexity on Qwen's outlier-heavy activations by ~2% (measured 2.2%).
    assert!(rel < 0.03, "perplexity differs by {:.2}%", rel * 100.0);
    assert!(
        ppl_ours > 1.0 && ppl_ours < 40.0,
        "implausible perplexity {ppl_ours}"
    );
}

#[test]
fn gemma3_matches_candle_transformers_and_the_quantized_perplexity() {
    use candle_transformers::models::{gemma3, quantized_gemma3};
    let r = gemma();
    let w = &r.loaded.weights;
    let c = &w.config;
    let ids = encode_prompt(&r.loaded.tokenizer, PARAGRAPH).unwrap();
    assert_eq!(ids[0], 2, "Gemma prompts start with <bos>");
    let ours = ours_log_probs(&Decoder::new(w).unwrap(), &ids);
    let ppl_ours = perplexity(&ours, &ids);

    let window = c.layers.iter().find_map(|l| l.window).unwrap();
    let cfg: gemma3::Config = serde_json::from_value(serde_json::json!({
        "attention_bias": false, "head_dim": c.head_dim,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers, "num_key_value_heads": c.num_key_value_heads,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.ropes[0].theta,
        "rope_local_base_freq": c.ropes[1].theta, "vocab_size": c.vocab_size,
        "final_logit_softcapping": null, "attn_logit_softcapping": null,
        "query_pre_attn_scalar": c.head_dim,
        // candle keeps window + 1 keys where Hugging Face keeps window.
        "sliding_window": window - 1, "sliding_window_pattern": 6,
        "max_position_embeddings": c.max_position_embeddings,
    }))
    .unwrap();
    let mut reference = gemma3::Model::new(false, &cfg, var_builder(w)).unwrap();
    let n = 48;
    let want = one_at_a_time(&ids[..n], |x, i| reference.forward(x, i).unwrap());
    let d = worst(&ours[..n], &want);
    println!("gemma3: max |log-prob diff| vs candle-transformers gemma3 on the same f32 weights, {n} positions: {d:.2e}");
    assert!(d <= 1e-3, "log-probs differ by {d}");

    // candle-transformers' quantized_gemma3 gates with SiLU: compare it with our decoder
    // switched to SiLU (everything else as Gemma).
    let mut silu = w.clone();
    silu.config.activation = c2i_stages::model::config::Activation::Silu;
    let ours_silu = ours_log_probs(&Decoder::new(&silu).unwrap(), &ids);
    let quantized = |path: &std::path::Path, ids: &[u32]| {
        let mut f = std::fs::File::open(path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let mut q = quantized_gemma3::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
        one_at_a_time(ids, |x, i| q.forward(x, i).unwrap())
    };
    // As for qwen2: on the Q4_K_M file's weights dequantized by candle, every position,
    // then on its Q4_K_M blocks (8-bit activations).
    let dir = tempfile::tempdir().unwrap();
    let same = quantized(&crate::common::f32_gguf(&r.path, dir.path()), &ids);
    drop(dir);
    let d = worst(&ours_silu, &same);
    let n_all = ids.len();
    println!("gemma3: max |log-prob diff| with SiLU vs candle-transformers quantized_gemma3 (SiLU) on the Q4_K_M file's weights dequantized by candle, {n_all} positions: {d:.2e}");
    assert!(d <= 1e-3, "log-probs differ by {d}");
    let ppl_silu = perplexity(&ours_silu, &ids);
    let ppl_deq = perplexity(&same, &ids);
    let rel_deq = (ppl_silu - ppl_deq).abs() / ppl_deq;
    let ppl_q = perplexity(&quantized(&r.path, &ids), &ids);
    let rel = (ppl_silu - ppl_q).abs() / ppl_q;
    println!("gemma3: perplexity ours (dense f32, GELU as Gemma) {ppl_ours:.4}; with SiLU {ppl_silu:.4} vs quantized_gemma3 (SiLU) on the Q4_K_M file's weights {ppl_deq:.4} (rel diff {rel_deq:.5}), on its Q4_K_M blocks with 8-bit activations {ppl_q:.4} (rel diff {rel:.4})");
    assert!(
        rel_deq < 0.02,
        "perplexity differs by {:.3}%",
        rel_deq * 100.0
    );
    // As for qwen2: the 8-bit activations of the quantized matmul (measured 2.5%).
    assert!(rel < 0.03, "perplexity differs by {:.2}%", rel * 100.0);
    assert!(
        ppl_ours > 1.0 && ppl_ours < ppl_silu,
        "GELU {ppl_ours}, SiLU {ppl_silu}"
    );
}

/// Gradients of the real model in f64 against central differences of the same loss, at
/// one random entry of each matrix of `picks`.
fn check_gradients(r: &Real, picks: &[MatrixId]) {
    let w64 = r.loaded.weights.to_dtype(DType::F64).unwrap();
    // One short sample: 42 forwards of the f64 model.
    let samples = wikidata_samples(&r.loaded.tokenizer, 1);
    let opts = GradOptions { micro_batch: 1 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let g = gradient_pass(&w64, &samples, picks, &opts, &mut |_, _| {}).unwrap();
    let eps = 1e-4;
    let mut worst = 0f64;
    let family = w64.config.family;
    for id in picks {
        let w = w64.matrix(*id).unwrap();
        let (rows, cols) = w.dims2().unwrap();
        let (row, col) = (rng.random_range(0..rows), rng.random_range(0..cols));
        let loss_at = |delta: f64| {
            let mut v: Vec<f64> = w.flatten_all().unwrap().to_vec1().unwrap();
            v[row * cols + col] += delta;
            let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
            let moved = w64.with_replaced(&BTreeMap::from([(*id, t)])).unwrap();
            calibration_loss_fast::<f64>(&moved, &samples, &opts).unwrap()
        };
        let fd = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps);
        let an: f64 = g.grads[id].i((row, col)).unwrap().to_scalar().unwrap();
        let rel = (fd - an).abs() / fd.abs().max(an.abs()).max(1e-8);
        let window = w64.config.layers[id.layer].window;
        println!(
            "{family} {:<42} window {window:?} [{row:>4},{col:>4}] analytic {an:+.6e} finite-diff {fd:+.6e} rel {rel:.1e}",
            id.hf_name()
        );
        worst = worst.max(rel);
        assert!(
            rel < 1e-2,
            "{} [{row},{col}]: analytic {an}, finite difference {fd}",
            id.hf_name()
        );
    }
    println!(
        "{family}: worst relative error over {} entries: {worst:.2e}",
        picks.len()
    );
}

#[test]
fn qwen2_gradients_match_central_differences_in_f64() {
    let picks: Vec<MatrixId> = MatrixKind::ALL
        .into_iter()
        .enumerate()
        .flat_map(|(i, kind)| [i % 5, 10 + i % 4, 23 - i % 3].map(|l| MatrixId::new(l, kind)))
        .collect();
    check_gradients(qwen(), &picks);
}

#[test]
fn gemma3_gradients_match_central_differences_in_f64() {
    let r = gemma();
    // Layers 5, 11 and 17 are global; the others have a sliding window.
    let picks: Vec<MatrixId> = MatrixKind::ALL
        .into_iter()
        .enumerate()
        .flat_map(|(i, kind)| [i % 5, 5 + 6 * (i % 3), 12 + i % 4].map(|l| MatrixId::new(l, kind)))
        .collect();
    assert!(picks
        .iter()
        .any(|id| r.loaded.weights.config.layers[id.layer].window.is_some()));
    assert!(picks
        .iter()
        .any(|id| r.loaded.weights.config.layers[id.layer].window.is_none()));
    check_gradients(r, &picks);
}

/// Gemma's tokenizer, built from the GGUF's SentencePiece scores, against Google's
/// SentencePiece on the same vocabulary (ids from `reference/gemma3_spm_ids.py`).
#[test]
fn gemma3_tokenizer_matches_sentencepiece() {
    use c2i_stages::model::tokenizer::encode;
    let tok = &gemma().loaded.tokenizer;
    let cases: [(&str, &[u32]); 5] = [
        (
            "Consider the following claim: Fox 2000 Pictures released the film Soul Food. Is this claim true or false. The claim is",
            &[24501, 506, 2269, 3539, 236787, 17615, 236743, 236778, 236771, 236771, 236771, 44776, 6811, 506, 4103, 41025, 10353, 236761, 2375, 672, 3539, 1847, 653, 2416, 236761, 669, 3539, 563],
        ),
        (
            "Premise: Anna knows that the cat is asleep.\n\nHypothesis: The cat is asleep.\nRelation:",
            &[75192, 1117, 236787, 24944, 10077, 600, 506, 5866, 563, 38888, 236761, 108, 67901, 77869, 236787, 669, 5866, 563, 38888, 236761, 107, 65726, 236787],
        ),
        (
            "Ünïcödé café — naïve façade, 東京 and 🙂!",
            &[238194, 236749, 238527, 236755, 55515, 236859, 33443, 2192, 120362, 96008, 236764, 86459, 532, 57235, 236888],
        ),
        (
            "x = [1, 2, 3]; y = {'a': 10.5}",
            &[236781, 578, 870, 236770, 236764, 236743, 236778, 236764, 236743, 236800, 2312, 570, 578, 16923, 236746, 2632, 236743, 236770, 236771, 236761, 236810, 236783],
        ),
        ("The answer is", &[818, 3890, 563]),
    ];
    for (text, want) in cases {
        let got = encode(tok, text).unwrap();
        assert_eq!(got, want, "{text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), text);
        // A prompt gets <bos> in front, nothing else.
        let prompt = encode_prompt(tok, text).unwrap();
        assert_eq!(prompt[0], 2);
        assert_eq!(&prompt[1..], want);
    }
}
