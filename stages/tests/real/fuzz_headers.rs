//! Fuzzing the readers of untrusted model files: GGUF headers (our pre-validating walk
//! in front of candle's `gguf_file`, then config, tokenizer and tensor reads) and
//! safetensors files. Random bytes, truncations and mutations of valid files must give
//! an `Err`, never a panic, a hang or an allocation sized by a forged length.
//!
//! The default case count keeps this at seconds; for a long session:
//! `PROPTEST_CASES=200000 cargo test --release -p c2i-stages --test real fuzz_headers`.

use c2i_stages::model::config::ModelConfig;
use c2i_stages::model::gguf::read_content;
use c2i_stages::model::tokenizer::tokenizer_from_gguf;
use c2i_stages::model::weights::parse_safetensors;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use proptest::prelude::*;
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

/// Everything the loader does with a GGUF file short of building the model: header,
/// config, tokenizer, and reading and dequantizing every tensor.
fn load_gguf_bytes(bytes: &[u8]) -> Result<usize, String> {
    let path = Path::new("fuzz.gguf");
    let mut cur = Cursor::new(bytes);
    let ct = read_content(&mut cur, path).map_err(|e| e.to_string())?;
    // Errors here are fine; panics are not.
    let _ = ModelConfig::from_gguf(&ct, path);
    let _ = tokenizer_from_gguf(&ct, path);
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut elems = 0;
    for name in names {
        let q = ct
            .tensor(&mut cur, name, &Device::Cpu)
            .map_err(|e| e.to_string())?;
        let t = q.dequantize(&Device::Cpu).map_err(|e| e.to_string())?;
        elems += t.elem_count();
    }
    Ok(elems)
}

/// A tiny but complete llama GGUF: config, a byte-level BPE tokenizer, two tensors
/// (f32 and q8_0), alignment 32.
fn tiny_gguf() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        use gguf_file::Value as V;
        let s = |x: &str| V::String(x.to_string());
        let tokens = V::Array(
            ["a", "b", "ab", "<|im_end|>"]
                .iter()
                .map(|t| s(t))
                .collect(),
        );
        let merges = V::Array(vec![s("a b")]);
        let types = V::Array(vec![V::I32(1), V::I32(1), V::I32(1), V::I32(3)]);
        let meta: Vec<(&str, V)> = vec![
            ("general.architecture", s("llama")),
            ("general.alignment", V::U32(32)),
            ("llama.vocab_size", V::U32(4)),
            ("llama.embedding_length", V::U32(32)),
            ("llama.feed_forward_length", V::U32(64)),
            ("llama.block_count", V::U32(1)),
            ("llama.attention.head_count", V::U32(2)),
            ("llama.attention.head_count_kv", V::U32(1)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
            ("llama.rope.freq_base", V::F32(10000.0)),
            ("tokenizer.ggml.model", s("gpt2")),
            ("tokenizer.ggml.pre", s("smollm")),
            ("tokenizer.ggml.tokens", tokens),
            ("tokenizer.ggml.merges", merges),
            ("tokenizer.ggml.token_type", types),
            ("tokenizer.ggml.eos_token_id", V::U32(3)),
        ];
        let dev = Device::Cpu;
        let embd = Tensor::arange(0f32, 128.0, &dev)
            .and_then(|t| t.reshape((4, 32)))
            .expect("tensor");
        let norm = Tensor::ones(32, candle_core::DType::F32, &dev).expect("tensor");
        let q_embd = QTensor::quantize(&embd, GgmlDType::Q8_0).expect("quantize");
        let q_norm = QTensor::quantize(&norm, GgmlDType::F32).expect("quantize");
        let meta_refs: Vec<(&str, &V)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(
            &mut out,
            &meta_refs,
            &[
                ("token_embd.weight", &q_embd),
                ("output_norm.weight", &q_norm),
            ],
        )
        .expect("write gguf");
        out.into_inner()
    })
}

/// The real model's header (everything before its tensor data), when the model has
/// been fetched into `$C2I_HOME` (`c2i fetch smollm2`); tests using it skip otherwise.
fn real_header() -> Option<&'static [u8]> {
    static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BYTES
        .get_or_init(|| {
            let dir = c2i_stages::assets::c2i_home().ok()?.join("assets/smollm2");
            let path = std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "gguf"))?;
            let mut f = std::fs::File::open(&path).ok()?;
            let ct = read_content(&mut f, &path).ok()?;
            let bytes = std::fs::read(&path).ok()?;
            Some(bytes[..ct.tensor_data_offset as usize].to_vec())
        })
        .as_deref()
}

#[test]
fn the_tiny_gguf_is_valid_and_loads() {
    let bytes = tiny_gguf();
    assert_eq!(load_gguf_bytes(bytes), Ok(128 + 32));
    let ct = read_content(&mut Cursor::new(bytes), Path::new("t.gguf")).unwrap();
    ModelConfig::from_gguf(&ct, Path::new("t.gguf")).unwrap();
    tokenizer_from_gguf(&ct, Path::new("t.gguf")).unwrap();
}

#[test]
fn gguf_alignment_zero_is_an_error_not_a_division_by_zero() {
    // candle divides the header end by `general.alignment`: 0 would panic there.
    let mut bytes = tiny_gguf().to_vec();
    let key = b"general.alignment";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("key present")
        + key.len();
    // value type (u32 = 4), then the value.
    assert_eq!(&bytes[at..at + 4], &4u32.to_le_bytes());
    bytes[at + 4..at + 8].copy_from_slice(&0u32.to_le_bytes());
    let err = load_gguf_bytes(&bytes).unwrap_err();
    assert!(
        err.contains("fuzz.gguf") && err.contains("alignment"),
        "{err}"
    );
}

#[test]
fn gguf_shape_overflow_is_an_error() {
    // A forged first dimension whose product with the second wraps around.
    let mut bytes = tiny_gguf().to_vec();
    let name = b"token_embd.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor info present")
        + name.len();
    assert_eq!(&bytes[at..at + 4], &2u32.to_le_bytes()); // two dimensions
    let huge = (1u64 << 63) + 32;
    bytes[at + 4..at + 12].copy_from_slice(&huge.to_le_bytes());
    let err = load_gguf_bytes(&bytes).unwrap_err();
    assert!(err.contains("token_embd.weight"), "{err}");
}

#[test]
fn truncated_real_header_names_what_is_missing() {
    let Some(h) = real_header() else {
        eprintln!("SmolLM2 not fetched: skipped");
        return;
    };
    for cut in [0, 3, 10, 24, 100, h.len() / 2, h.len() - 1] {
        let err = load_gguf_bytes(&h[..cut]).unwrap_err();
        assert!(err.contains("fuzz.gguf"), "{err}");
    }
    // The whole header without the tensor data: the header parses, the tensors do not fit.
    let err = load_gguf_bytes(h).unwrap_err();
    assert!(err.contains("past the end"), "{err}");
}

fn tiny_safetensors() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        let a: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let b: Vec<u8> = (0..4)
            .flat_map(|i| half::f16::from_f32(i as f32).to_le_bytes())
            .collect();
        let views = vec![
            (
                "a".to_string(),
                TensorView::new(Dtype::F32, vec![3, 4], &a).unwrap(),
            ),
            (
                "b".to_string(),
                TensorView::new(Dtype::F16, vec![4], &b).unwrap(),
            ),
        ];
        let meta = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
        safetensors::serialize(views, Some(meta)).unwrap()
    })
}

#[test]
fn the_tiny_safetensors_is_valid() {
    let t = parse_safetensors(tiny_safetensors(), Path::new("t.safetensors")).unwrap();
    assert_eq!(t.len(), 2);
}

#[test]
fn safetensors_header_longer_than_the_file_is_named() {
    let mut bytes = tiny_safetensors().to_vec();
    let claimed = bytes.len() as u64 * 10;
    bytes[..8].copy_from_slice(&claimed.to_le_bytes());
    let err = parse_safetensors(&bytes, Path::new("m.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.safetensors") && err.contains(&claimed.to_string()),
        "{err}"
    );
}

/// A mutation: overwrite `len` bytes at a fraction of the file with random bytes.
fn mutate(base: &[u8], edits: &[(f64, Vec<u8>)]) -> Vec<u8> {
    let mut v = base.to_vec();
    for (at, patch) in edits {
        if v.is_empty() {
            break;
        }
        let start = ((*at * v.len() as f64) as usize).min(v.len() - 1);
        for (i, b) in patch.iter().enumerate() {
            if let Some(x) = v.get_mut(start + i) {
                *x = *b;
            }
        }
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<(f64, Vec<u8>)>> {
    prop::collection::vec(
        (0.0f64..1.0, prop::collection::vec(any::<u8>(), 1..9)),
        1..4,
    )
}

proptest! {
    #[test]
    fn gguf_random_bytes_are_rejected(tail in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let mut bytes = if magic { b"GGUF\x03\0\0\0".to_vec() } else { Vec::new() };
        bytes.extend(tail);
        prop_assert!(load_gguf_bytes(&bytes).is_err());
    }

    #[test]
    fn gguf_truncations_are_rejected(frac in 0.0f64..1.0) {
        let full = tiny_gguf();
        let cut = ((frac * full.len() as f64) as usize).min(full.len() - 1);
        prop_assert!(load_gguf_bytes(&full[..cut]).is_err());
    }

    #[test]
    fn gguf_mutations_never_panic(e in edits()) {
        let bytes = mutate(tiny_gguf(), &e);
        let _ = load_gguf_bytes(&bytes);
    }

    #[test]
    fn gguf_mutations_of_the_header_region_never_panic(
        at in 0usize..600, patch in prop::collection::vec(any::<u8>(), 1..9)
    ) {
        // Most of the tiny file is header: aim edits at counts, lengths and types.
        let mut bytes = tiny_gguf().to_vec();
        let at = at.min(bytes.len() - 1);
        for (i, b) in patch.iter().enumerate() {
            if let Some(x) = bytes.get_mut(at + i) { *x = *b; }
        }
        let _ = load_gguf_bytes(&bytes);
    }

    #[test]
    fn safetensors_random_bytes_are_rejected(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(parse_safetensors(&bytes, Path::new("f.safetensors")).is_err());
    }

    #[test]
    fn safetensors_truncations_are_rejected(frac in 0.0f64..1.0) {
        let full = tiny_safetensors();
        let cut = ((frac * full.len() as f64) as usize).min(full.len() - 1);
        prop_assert!(parse_safetensors(&full[..cut], Path::new("f.safetensors")).is_err());
    }

    #[test]
    fn safetensors_mutations_never_panic(e in edits()) {
        let bytes = mutate(tiny_safetensors(), &e);
        let _ = parse_safetensors(&bytes, Path::new("f.safetensors"));
    }
}

proptest! {
    // The real header is ~1 MB: fewer cases by default.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn real_gguf_header_truncations_and_mutations_never_panic(
        frac in 0.0f64..1.0, e in edits()
    ) {
        let Some(h) = real_header() else { return Ok(()) };
        let cut = ((frac * h.len() as f64) as usize).min(h.len() - 1);
        prop_assert!(load_gguf_bytes(&h[..cut]).is_err());
        let _ = load_gguf_bytes(&mutate(h, &e));
    }
}
