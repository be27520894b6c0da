//! The differentiable forward against candle-transformers' `quantized_llama`, on the
//! real SmolLM2-135M-Instruct GGUF (fetched by the test if absent).

use c2i_stages::assets::smollm2_gguf;
use c2i_stages::model::decoder::max_abs_diff;
use c2i_stages::model::tokenizer::encode;
use c2i_stages::model::{Batch, Decoder, Padding, Weights};
use candle_core::quantized::gguf_file;
use candle_core::{Device, IndexOp, Tensor, D};
use candle_transformers::models::quantized_llama::ModelWeights;

use crate::common::PARAGRAPH;

/// Per-position log-softmax rows from the reference, fed one token at a time.
fn reference_log_probs(model: &mut ModelWeights, ids: &[u32]) -> Vec<Tensor> {
    let dev = Device::Cpu;
    ids.iter()
        .enumerate()
        .map(|(i, &tok)| {
            let x = Tensor::new(&[tok], &dev).unwrap().unsqueeze(0).unwrap();
            let logits = model.forward(&x, i).unwrap().squeeze(0).unwrap();
            candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap()
        })
        .collect()
}

pub(crate) fn perplexity(rows: &[Tensor], ids: &[u32]) -> f64 {
    let mut nll = 0f64;
    for (i, row) in rows.iter().enumerate().take(ids.len() - 1) {
        nll -= row
            .i(ids[i + 1] as usize)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
    }
    (nll / (ids.len() - 1) as f64).exp()
}

pub(crate) fn ours_log_probs(model: &Decoder, ids: &[u32]) -> Vec<Tensor> {
    let batch = Batch::new(&[ids.to_vec()], Padding::Right, 0, &Device::Cpu).unwrap();
    let logits = model.logits(&batch).unwrap().squeeze(0).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    (0..ids.len()).map(|i| lp.i(i).unwrap()).collect()
}

#[test]
fn perplexity_matches_quantized_reference_and_logits_match_f32_reference() {
    let path = smollm2_gguf().expect("fetch SmolLM2");
    let loaded = Weights::load_gguf(&path).expect("load GGUF");
    let ids = encode(&loaded.tokenizer, PARAGRAPH).unwrap();
    assert!(ids.len() > 100, "{} tokens", ids.len());
    let ours = Decoder::new(&loaded.weights).unwrap();
    let ours_rows = ours_log_probs(&ours, &ids);
    let ppl_ours = perplexity(&ours_rows, &ids);

    // 1. The quantized reference on the original Q4_1 file.
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    let ppl_q = perplexity(&reference_log_probs(&mut reference, &ids), &ids);
    let rel = (ppl_ours - ppl_q).abs() / ppl_q;
    println!("perplexity: ours (dense f32) {ppl_ours:.4}, quantized reference {ppl_q:.4}, rel diff {rel:.4}");
    assert!(rel < 0.02, "perplexity differs by {:.2}%", rel * 100.0);
    assert!(
        ppl_ours > 1.0 && ppl_ours < 30.0,
        "implausible perplexity {ppl_ours}"
    );

    // 2. The same reference code on exactly our weights: every tensor dequantized and
    //    stored as F32 in a GGUF (still in GGUF's permuted Q/K layout).
    let dir = tempfile::tempdir().unwrap();
    let f32_path = crate::common::f32_gguf(&path, dir.path());
    let mut f = std::fs::File::open(&f32_path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    let n = 48;
    let ref_rows = reference_log_probs(&mut reference, &ids[..n]);
    let mut worst = 0f32;
    for i in 0..n {
        worst = worst.max(max_abs_diff(&ref_rows[i], &ours_rows[i]).unwrap());
    }
    println!("max |log-prob diff| vs quantized_llama on the same f32 weights, {n} positions: {worst:.2e}");
    assert!(worst < 2e-3, "log-probs differ by {worst}");
}

#[test]
fn padding_left_or_right_gives_the_same_log_probs() {
    let path = smollm2_gguf().expect("fetch SmolLM2");
    let loaded = Weights::load_gguf(&path).unwrap();
    let model = Decoder::new(&loaded.weights).unwrap();
    let texts = [
        "The capital of France is",
        "Premise: Anna knows that the cat is asleep. Hypothesis: The cat is asleep.\nRelation:",
        "1 2 3 4 5 6",
    ];
    let seqs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| encode(&loaded.tokenizer, t).unwrap())
        .collect();
    let dev = Device::Cpu;
    for padding in [Padding::Right, Padding::Left] {
        let batch = Batch::new(&seqs, padding, 2, &dev).unwrap();
        let logits = model.logits(&batch).unwrap();
        for (row, s) in seqs.iter().enumerate() {
            let alone = Batch::new(std::slice::from_ref(s), Padding::Right, 2, &dev).unwrap();
            let want = model.logits(&alone).unwrap().squeeze(0).unwrap();
            let got = logits
                .i(row)
                .unwrap()
                .narrow(0, batch.offsets[row], s.len())
                .unwrap();
            let diff = max_abs_diff(&got, &want).unwrap();
            assert!(diff < 1e-3, "{padding:?} row {row}: max diff {diff}");
        }
    }
}

#[test]
fn tokenizer_round_trips_and_splits_digits() {
    let path = smollm2_gguf().expect("fetch SmolLM2");
    let loaded = Weights::load_gguf(&path).unwrap();
    let tok = &loaded.tokenizer;
    let ids = encode(tok, PARAGRAPH).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), PARAGRAPH);
    // SmolLM2 splits numbers into single digits and adds no prefix space.
    let digits = encode(tok, "2025").unwrap();
    assert_eq!(digits.len(), 4);
    let word = encode(tok, "Relation:").unwrap();
    assert_eq!(tok.decode(&word, false).unwrap(), "Relation:");
    assert_eq!(tok.id_to_token(word[0]).unwrap(), "Rel");
    // A control token is one token.
    assert_eq!(encode(tok, "<|im_start|>").unwrap().len(), 1);
}
