//! The evaluator on the real SmolLM2-135M-Instruct model and the shared data sets:
//! the choice tree against separate forwards, layer-prefix reuse against a full
//! forward for a real rank-reduced candidate, KV-cached generation against repeated
//! full forwards, and a small evaluation against a direct recomputation.

use crate::common::builtin_data;

use c2i_stages::assets::smollm2_gguf;
use c2i_stages::compress::dense_with_ranks;
use c2i_stages::data::{load, selection_samples, Dataset, SampleSize, SampleSpec, Task};
use c2i_stages::eval::choice::{choice_log_probs, tree_batch};
use c2i_stages::eval::generate::{greedy_generate, greedy_generate_uncached};
use c2i_stages::eval::metrics::{classification_metrics, mean_log_loss};
use c2i_stages::eval::{
    evaluate, first_changed_layer, EvalOptions, EvalResult, EvalSet, Forward, Prediction, Prefix,
    SampleAnswer, TaskMetrics,
};
use c2i_stages::factor::{factor_matrix, RowMajor};
use c2i_stages::model::{
    Batch, Decoder, LoadedModel, MatrixId, MatrixKind, Padding, Target, Weights,
};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

struct Fixture {
    loaded: LoadedModel,
    base: Decoder,
    eos: Option<u32>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = smollm2_gguf().expect("fetch SmolLM2");
        let loaded = Weights::load_gguf(&path).expect("load GGUF");
        let base = Decoder::new(&loaded.weights).expect("build model");
        let eos = loaded.special.stop();
        Fixture { loaded, base, eos }
    })
}

/// A built-in task's data set, as shipped.
fn examples(task: &str) -> Dataset {
    let t = Task::builtin(task).expect("a built-in task");
    load(&t, &builtin_data(&t)).expect("load data set")
}

/// The first `n` rows of the 100-row evaluation sample of the selection split.
fn eval_rows(task: &str, all: &Dataset, n: usize) -> Vec<usize> {
    let s = selection_samples(
        all.len(),
        SampleSpec::new(SampleSize::N(100), 1),
        SampleSpec::new(SampleSize::N(100), 0),
    )
    .unwrap_or_else(|e| panic!("{task}: {e}"));
    s.evaluation[..n].to_vec()
}

/// Summed log-probability of `cont` after `prompt`, from one unpadded forward.
fn separate_log_prob(model: &Decoder, prompt: &[u32], cont: &[u32]) -> f64 {
    let seq = [prompt, cont].concat();
    let batch = Batch::new(&[seq], Padding::Right, 0, &Device::Cpu).unwrap();
    let h = model.hidden(&batch).unwrap();
    let targets: Vec<Target> = cont
        .iter()
        .enumerate()
        .map(|(j, &token)| Target {
            flat_pos: prompt.len() + j - 1,
            token,
        })
        .collect();
    let lp: Vec<f32> = model
        .answer_log_probs(&h, &targets)
        .unwrap()
        .to_vec1()
        .unwrap();
    lp.iter().map(|&x| f64::from(x)).sum()
}

fn choices_of(set: &EvalSet, i: usize) -> (&[u32], &[Vec<u32>], usize) {
    let s = &set.samples()[i];
    match &s.answer {
        SampleAnswer::Choice { choices, gold, .. } => (&s.prompt, choices, *gold),
        SampleAnswer::Generate { .. } => panic!("not a choice sample"),
    }
}

#[test]
fn choice_tree_matches_separate_forwards() {
    let f = fixture();
    let mut worst = 0f64;
    for (task, n) in [("epistemic_reasoning", 5), ("truthfulqa", 3)] {
        let all = examples(task);
        let rows = eval_rows(task, &all, n);
        let set = EvalSet::from_rows(&all, &rows, &f.loaded.tokenizer, f.eos).unwrap();
        // All samples in one batch: different lengths, so rows are padded too.
        let rows: Vec<(&[u32], &[Vec<u32>])> = (0..set.len())
            .map(|i| {
                let (p, c, _) = choices_of(&set, i);
                (p, c)
            })
            .collect();
        let cb = tree_batch(&rows, &Device::Cpu).unwrap();
        let h = f.base.hidden(&cb.batch).unwrap();
        let tree = choice_log_probs(&f.base, &h, &cb).unwrap();
        for (i, (prompt, choices)) in rows.iter().enumerate() {
            for (c, choice) in choices.iter().enumerate() {
                let sep = separate_log_prob(&f.base, prompt, choice);
                let d = (sep - tree[i][c]).abs();
                worst = worst.max(d);
                assert!(
                    d < 1e-4,
                    "{task} sample {i} choice {c}: tree {} vs separate {sep}",
                    tree[i][c]
                );
            }
        }
        // Multi-token choices really are in play.
        if task == "epistemic_reasoning" {
            assert!(rows.iter().any(|(_, cs)| cs.iter().any(|c| c.len() > 1)));
        }
    }
    println!("choice tree vs separate forwards: max |diff| = {worst:.3e}");
}

/// A rank-reduced `id`: the top `keep` fraction of its singular components.
fn low_rank(weights: &Weights, id: MatrixId, keep: f64) -> Tensor {
    let w = weights.matrix(id).unwrap();
    let (r, c) = w.dims2().unwrap();
    let data: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    let factors = factor_matrix(RowMajor::new(&data, r, c).unwrap(), 1).unwrap();
    let rank = ((r.min(c) as f64 * keep).round() as usize).max(1);
    let dense = dense_with_ranks(&factors.view(), &[rank]).unwrap();
    Tensor::from_vec(dense, (r, c), w.device()).unwrap()
}

fn choice_lps(r: &EvalResult) -> Vec<f64> {
    r.records
        .iter()
        .flat_map(|rec| match &rec.prediction {
            Prediction::Choice { log_probs, .. } => log_probs.clone(),
            Prediction::Generation { .. } => vec![rec.gold_log_prob],
        })
        .collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn prefix_reuse_matches_full_forward_for_a_rank_reduced_candidate() {
    let f = fixture();
    let id = MatrixId::new(25, MatrixKind::Up);
    let mut replace = BTreeMap::new();
    replace.insert(id, low_rank(&f.loaded.weights, id, 0.05));
    let cand = Decoder::with_matrices(&f.loaded.weights, &replace).unwrap();
    let from = first_changed_layer(&replace);
    assert_eq!(from, 25);
    let opts = EvalOptions::default();

    // Classification: 16 epistemic reasoning samples.
    let task = "epistemic_reasoning";
    let all = examples(task);
    let set =
        EvalSet::from_rows(&all, &eval_rows(task, &all, 16), &f.loaded.tokenizer, f.eos).unwrap();
    let t = Instant::now();
    let prefix = Prefix::compute(&f.base, &set, &[from], &opts, &mut |_, _| {}).unwrap();
    let t_prefix = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let full = evaluate(&cand, &set, None, 0, &opts, &mut |_, _| {}).unwrap();
    let t_full = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let reused = evaluate(&cand, &set, Some(&prefix), from, &opts, &mut |_, _| {}).unwrap();
    let t_reused = t.elapsed().as_secs_f64();
    let d = max_diff(&choice_lps(&full), &choice_lps(&reused));
    assert!(d < 1e-4, "prefix vs full: max |diff| {d}");
    assert_eq!(full.metrics, reused.metrics);
    // The base model from the same prefix (its layers >= 25 are the base's own).
    let base = evaluate(&f.base, &set, Some(&prefix), from, &opts, &mut |_, _| {}).unwrap();
    let moved = max_diff(&choice_lps(&base), &choice_lps(&full));
    assert!(
        moved > 1e-3,
        "the candidate does not change the log-probs ({moved})"
    );
    println!(
        "{task}, {} samples, candidate {}: full {t_full:.2} s, from layer {from} {t_reused:.2} s \
         (speed-up x{:.2}); prefix computed in {t_prefix:.2} s, {:.1} MB; max |diff| {d:.2e}; \
         candidate moved log-probs by up to {moved:.3}",
        set.len(),
        id.hf_name(),
        t_full / t_reused,
        prefix.bytes() as f64 / 1e6,
    );
    // A prefix refuses a layer it does not hold, and a different set.
    assert!(evaluate(&cand, &set, Some(&prefix), 20, &opts, &mut |_, _| {}).is_err());

    // Generation: 8 WikidataQA samples, same tokens and target log-probs.
    let task = "qa_wikidata";
    let all = examples(task);
    let gset =
        EvalSet::from_rows(&all, &eval_rows(task, &all, 8), &f.loaded.tokenizer, f.eos).unwrap();
    assert!(evaluate(&cand, &gset, Some(&prefix), from, &opts, &mut |_, _| {}).is_err());
    let gprefix = Prefix::compute(&f.base, &gset, &[from], &opts, &mut |_, _| {}).unwrap();
    let t = Instant::now();
    let gfull = evaluate(&cand, &gset, None, 0, &opts, &mut |_, _| {}).unwrap();
    let tg_full = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let greused = evaluate(&cand, &gset, Some(&gprefix), from, &opts, &mut |_, _| {}).unwrap();
    let tg_reused = t.elapsed().as_secs_f64();
    let gd = max_diff(&choice_lps(&gfull), &choice_lps(&greused));
    assert!(gd < 1e-4, "generation prefix vs full: max |diff| {gd}");
    for (a, b) in gfull.records.iter().zip(&greused.records) {
        assert_eq!(a.prediction, b.prediction, "row {}", a.row);
    }
    println!(
        "{task}, {} samples: full {tg_full:.2} s, from layer {from} {tg_reused:.2} s \
         (speed-up x{:.2}); prefix {:.1} MB; max |diff| of target log-probs {gd:.2e}",
        gset.len(),
        tg_full / tg_reused,
        gprefix.bytes() as f64 / 1e6
    );
}

/// The hand-written tree forward (the default) against candle's padded one, side by side
/// on the same rows: the base model from the embeddings, and a rank-reduced candidate
/// from a prefix computed each way.
#[test]
fn kernel_forward_matches_candle_forward() {
    let f = fixture();
    let candle = EvalOptions {
        forward: Forward::Candle,
        ..EvalOptions::default()
    };
    let kernels = EvalOptions::default();
    assert_eq!(kernels.forward, Forward::Auto);
    let id = MatrixId::new(11, MatrixKind::Down);
    let mut replace = BTreeMap::new();
    replace.insert(id, low_rank(&f.loaded.weights, id, 0.1));
    let cand = Decoder::with_matrices(&f.loaded.weights, &replace).unwrap();
    let from = first_changed_layer(&replace);
    for (task, n) in [("epistemic_reasoning", 32), ("truthfulqa", 16)] {
        let all = examples(task);
        let rows = eval_rows(task, &all, n);
        let set = EvalSet::from_rows(&all, &rows, &f.loaded.tokenizer, f.eos).unwrap();
        let timed = |model: &Decoder, prefix: Option<&Prefix>, opts: &EvalOptions| {
            let t = Instant::now();
            let r = evaluate(
                model,
                &set,
                prefix,
                if prefix.is_some() { from } else { 0 },
                opts,
                &mut |_, _| {},
            )
            .unwrap();
            (r, t.elapsed().as_secs_f64())
        };
        let (base_c, t_base_c) = timed(&f.base, None, &candle);
        let (base_k, t_base_k) = timed(&f.base, None, &kernels);
        let d_base = max_diff(&choice_lps(&base_c), &choice_lps(&base_k));
        assert!(
            d_base < 1e-3,
            "{task} base: kernels vs candle max |diff| {d_base}"
        );
        let pc = Prefix::compute(&f.base, &set, &[from], &candle, &mut |_, _| {}).unwrap();
        let pk = Prefix::compute(&f.base, &set, &[from], &kernels, &mut |_, _| {}).unwrap();
        let (cand_c, t_cand_c) = timed(&cand, Some(&pc), &candle);
        let (cand_k, t_cand_k) = timed(&cand, Some(&pk), &kernels);
        let d_cand = max_diff(&choice_lps(&cand_c), &choice_lps(&cand_k));
        assert!(
            d_cand < 1e-3,
            "{task} candidate: kernels vs candle max |diff| {d_cand}"
        );
        // The candidate really moved the log-probs, further than the two forwards differ.
        let moved = max_diff(&choice_lps(&base_k), &choice_lps(&cand_k));
        assert!(
            moved > 100.0 * d_cand.max(1e-6),
            "{task}: moved {moved} vs {d_cand}"
        );
        // Same predictions, except where the two choices are closer than the difference.
        for (a, b) in base_c
            .records
            .iter()
            .zip(&base_k.records)
            .chain(cand_c.records.iter().zip(&cand_k.records))
        {
            if let (
                Prediction::Choice {
                    index: ia,
                    log_probs: la,
                },
                Prediction::Choice { index: ib, .. },
            ) = (&a.prediction, &b.prediction)
            {
                let mut s = la.clone();
                s.sort_by(|x, y| y.total_cmp(x));
                if s[0] - s[1] > 1e-3 {
                    assert_eq!(ia, ib, "{task} row {}", a.row);
                }
            }
        }
        println!(
            "{task}, {} samples (micro-batch {}): base model candle {t_base_c:.2} s vs kernels \
             {t_base_k:.2} s (x{:.2}), max |diff| {d_base:.1e}; {} from layer {from}: candle \
             {t_cand_c:.2} s vs kernels {t_cand_k:.2} s (x{:.2}), max |diff| {d_cand:.1e}",
            set.len(),
            kernels.micro_batch,
            t_base_c / t_base_k,
            id.hf_name(),
            t_cand_c / t_cand_k,
        );
    }
}

#[test]
fn kv_cached_generation_matches_repeated_full_forwards() {
    let f = fixture();
    assert_eq!(f.eos, Some(2), "SmolLM2's eos id");
    let mut prompts = Vec::new();
    for (task, n) in [("qa_wikidata", 3), ("hotpotqa", 2)] {
        let all = examples(task);
        let set = EvalSet::from_rows(&all, &eval_rows(task, &all, n), &f.loaded.tokenizer, f.eos)
            .unwrap();
        prompts.extend(set.samples().iter().map(|s| s.prompt.clone()));
    }
    let max_new = 12;
    let cached = greedy_generate(&f.base, &prompts, max_new, f.eos).unwrap();
    for (p, c) in prompts.iter().zip(&cached) {
        let reference = greedy_generate_uncached(&f.base, p, max_new, f.eos).unwrap();
        let text = f.loaded.tokenizer.decode(&c.tokens, true).unwrap();
        println!(
            "{:?} -> {text:?}",
            f.loaded.tokenizer.decode(p, false).unwrap()
        );
        assert_eq!(c, &reference, "prompt of {} tokens", p.len());
        assert!(c.stopped_at_eos || c.tokens.len() == max_new);
    }
}

#[test]
fn small_epistemic_evaluation_matches_direct_recomputation() {
    let f = fixture();
    let task = "epistemic_reasoning";
    let all = examples(task);
    let set =
        EvalSet::from_rows(&all, &eval_rows(task, &all, 16), &f.loaded.tokenizer, f.eos).unwrap();
    // Small micro-batches so several batches and the reordering are exercised.
    let opts = EvalOptions {
        micro_batch: 5,
        ..EvalOptions::default()
    };
    let mut calls = Vec::new();
    let r = evaluate(&f.base, &set, None, 0, &opts, &mut |d, t| {
        calls.push((d, t))
    })
    .unwrap();
    assert_eq!(calls.last(), Some(&(16, 16)));
    assert_eq!(calls.len(), 4);
    let (mut gold, mut pred, mut gold_lps) = (Vec::new(), Vec::new(), Vec::new());
    for (i, rec) in r.records.iter().enumerate() {
        let (prompt, choices, g) = choices_of(&set, i);
        assert_eq!(rec.row, set.samples()[i].row);
        let lps: Vec<f64> = choices
            .iter()
            .map(|c| separate_log_prob(&f.base, prompt, c))
            .collect();
        // LASER: argmax of the summed log-probs, ties to the lower index.
        let p = if lps[1] > lps[0] { 1 } else { 0 };
        let Prediction::Choice { index, log_probs } = &rec.prediction else {
            panic!("not a choice record")
        };
        assert!(max_diff(&lps, log_probs) < 1e-4);
        assert_eq!(*index, p, "row {}", rec.row);
        assert_eq!(rec.correct, p == g);
        gold.push(g);
        pred.push(p);
        gold_lps.push(lps[g]);
    }
    let direct = classification_metrics(&gold, &pred, 2, 0.95).unwrap();
    let TaskMetrics::Classification(m) = &r.metrics else {
        panic!("not classification metrics")
    };
    assert_eq!(m.accuracy, direct.accuracy);
    assert_eq!(m.confusion, direct.confusion);
    assert!((r.log_loss - mean_log_loss(&gold_lps).unwrap()).abs() < 1e-4);
    assert_eq!(r.selection.accuracy, direct.accuracy);
    let json = serde_json::to_string(&r).unwrap();
    let back: EvalResult = serde_json::from_str(&json).unwrap();
    assert_eq!(back.metrics, r.metrics);
    println!(
        "{task}: 16 samples, accuracy {:.4}, balanced {:.4}, log-loss {:.4}",
        m.accuracy, m.balanced_accuracy, r.log_loss
    );
}
