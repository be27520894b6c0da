//! What the end-to-end tests share: the real data, and a tiny pipeline over the real
//! SmolLM2 model and the real epistemic-reasoning rows that still has every stage.
#![allow(dead_code)] // each test crate includes this file and uses a different part

use std::path::{Path, PathBuf};

/// The data sets shipped in the repository (`data/`): the tests read nothing outside
/// the clone.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The epistemic-reasoning rows (BIG-bench's task.json, read in LASER's order).
pub fn epistemic_data() -> PathBuf {
    data_dir().join("bigbench/epistemic_reasoning/task.json")
}

/// A tiny pipeline on the epistemic-reasoning rows in `data`: `rows` = (calibration, evaluation,
/// held-out) samples, the MLP matrices of `layers` (a TOML list), K in {1, 2}, two rho
/// values, top 2, no dense export. `extra` is appended (more tables: `[run]`,
/// `[cache]`).
pub fn pipeline_text(
    model: &str,
    data: &Path,
    rows: (usize, usize, usize),
    layers: &str,
    extra: &str,
) -> String {
    let (calibration, evaluation, heldout) = rows;
    format!(
        r#"
[model]
path = "{model}"

[data]
task = "epistemic_reasoning"
path = "{data}"
calibration = {{ samples = {calibration}, seed = 0 }}
evaluation  = {{ samples = {evaluation}, seed = 1 }}
heldout     = {{ samples = {heldout}, seed = 2 }}

[search]
layers = {layers}
top_k = 2
# The two best entries (not the defaults: two matrices at every K and keep) by the
# paper's rule: these tests are about the engine, and two candidates keep them fast.
select = "entries"
score = "negative-sv-grad"
blocks = [1, 2]
keep = [0.1, 0.5]

[output]
dir = "out"
dense = false

{extra}
"#,
        data = data.display()
    )
}

/// Writes `text` as `dir/pipeline.toml` (creating `dir`) and returns its path.
pub fn write_pipeline_text(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `report.json` a run of `pipeline` wrote (output dir `out` next to it).
pub fn read_report(pipeline: &Path) -> serde_json::Value {
    let path = pipeline.parent().unwrap().join("out/report.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Removes `keys` from every object in `v`, at any depth (timings and other fields that
/// legitimately differ between runs that found the same results).
pub fn strip_keys(v: &mut serde_json::Value, keys: &[&str]) {
    match v {
        serde_json::Value::Object(m) => {
            for k in keys {
                m.remove(*k);
            }
            m.values_mut().for_each(|x| strip_keys(x, keys));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| strip_keys(x, keys)),
        _ => {}
    }
}

/// A tiny llama checkpoint directory (1 layer, hidden 8) with a word-level tokenizer;
/// `poison` puts a NaN in one tensor.
pub fn tiny_hf_dir(dir: &Path, poison: bool) -> PathBuf {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "llama", "vocab_size": 4, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2, "c": 3},
                      "unk_token": "[UNK]"}}"#,
    )
    .unwrap();
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![4, 8]),
        ("model.norm.weight".into(), vec![8]),
        ("model.layers.0.input_layernorm.weight".into(), vec![8]),
        (
            "model.layers.0.post_attention_layernorm.weight".into(),
            vec![8],
        ),
        ("model.layers.0.self_attn.q_proj.weight".into(), vec![8, 8]),
        ("model.layers.0.self_attn.k_proj.weight".into(), vec![4, 8]),
        ("model.layers.0.self_attn.v_proj.weight".into(), vec![4, 8]),
        ("model.layers.0.self_attn.o_proj.weight".into(), vec![8, 8]),
        ("model.layers.0.mlp.gate_proj.weight".into(), vec![16, 8]),
        ("model.layers.0.mlp.up_proj.weight".into(), vec![16, 8]),
        ("model.layers.0.mlp.down_proj.weight".into(), vec![8, 16]),
    ];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, s)| {
            let n: usize = s.iter().product();
            (0..n)
                .flat_map(|i| {
                    let v = if poison && name.contains("up_proj") && i == 5 {
                        f32::NAN
                    } else {
                        0.01 * (i % 7) as f32
                    };
                    v.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    let file = dir.join("model.safetensors");
    std::fs::write(&file, safetensors::serialize(views, None).unwrap()).unwrap();
    file
}
