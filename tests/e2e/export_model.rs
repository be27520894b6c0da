//! The exported dense model of each real family, loaded back from its Hugging Face
//! directory, reproduces the held-out accuracy the report states, and its config.json
//! names the family's `model_type` and architecture.

use crate::support::tiny::epistemic_data;
use c2i_stages::data::{self, Task};
use c2i_stages::eval::evaluator::{evaluate, EvalOptions, EvalSet};
use c2i_stages::model::{Decoder, Weights};
use serde_json::Value;
use std::process::Command;

/// Runs a small pipeline on `model` (one MLP matrix of `layer`, K = 2, dense and
/// factored export) and checks the export.
fn export_round_trip(model: &str, layer: usize, model_type: &str, architecture: &str) {
    let data_file = epistemic_data();
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[model]\npath = \"{model}\"\n[data]\ntask = \"epistemic_reasoning\"\npath = \"{}\"\n\
             calibration = {{ samples = 4, seed = 0 }}\nevaluation = {{ samples = 8, seed = 1 }}\n\
             heldout = {{ samples = 16, seed = 2 }}\n[search]\nlayers = [{layer}]\nmatrices = [\"down\"]\n\
             top_k = 1\nblocks = [2]\nkeep = [0.05]\n[output]\ndir = \"out\"\ndense = true\nfactored = true\n",
            data_file.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_c2i"))
        .args(["--quiet", "run", pipeline.to_str().unwrap(), "--cache"])
        .arg(tmp.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{model}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    let reported = report["best"]["heldout"]["accuracy"].as_f64().unwrap();
    let factored = &report["export"]["factored"];
    assert!(factored["params"].as_u64().unwrap() < factored["dense_params"].as_u64().unwrap());

    let dir = tmp.path().join("out/model");
    let read = |f: &str| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join(f)).unwrap()).unwrap()
    };
    let config = read("config.json");
    assert_eq!(config["model_type"], model_type, "{model}");
    assert_eq!(config["architectures"][0], architecture, "{model}");
    let loaded = Weights::load_hf_dir(&dir).unwrap();
    // Generation stops, in the exported model, where the evaluation stopped.
    let stop = loaded.special.stop();
    assert!(stop.is_some(), "{model}: no end-of-sequence token named");
    assert_eq!(config["eos_token_id"], stop.unwrap(), "{model}");
    let name = loaded.tokenizer.id_to_token(stop.unwrap()).unwrap();
    assert_eq!(
        read("tokenizer_config.json")["eos_token"],
        name.as_str(),
        "{model}"
    );

    let examples = data::load(Task::EpistemicReasoning, &data_file).unwrap();
    let rows: Vec<usize> = serde_json::from_value(report["rows"]["heldout"].clone()).unwrap();
    let set = EvalSet::from_rows(
        Task::EpistemicReasoning,
        &examples,
        &rows,
        &loaded.tokenizer,
        stop,
    )
    .unwrap();
    let decoder = Decoder::new(&loaded.weights).unwrap().inference();
    let r = evaluate(
        &decoder,
        &set,
        None,
        0,
        &EvalOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.samples, rows.len());
    assert!(
        (r.accuracy() - reported).abs() < 1e-12,
        "{model}: exported model {} on held-out, report says {reported}",
        r.accuracy()
    );
    let base = report["baseline"]["heldout"]["accuracy"].as_f64().unwrap();
    println!(
        "{model}: held-out accuracy: base {base:.3}, reported best {reported:.3}, exported model {:.3}",
        r.accuracy()
    );
}

#[test]
fn exported_llama_reproduces_the_reported_heldout_accuracy() {
    export_round_trip("smollm2", 29, "llama", "LlamaForCausalLM");
}

#[test]
fn exported_qwen2_reproduces_the_reported_heldout_accuracy() {
    export_round_trip("qwen2.5-0.5b", 23, "qwen2", "Qwen2ForCausalLM");
}

#[test]
fn exported_gemma3_reproduces_the_reported_heldout_accuracy() {
    export_round_trip("gemma3-270m", 17, "gemma3_text", "Gemma3ForCausalLM");
}
