//! The exported dense model, loaded back from its Hugging Face directory, reproduces
//! the held-out accuracy the report states (issue 6).

use c2i_stages::data::{self, Task};
use c2i_stages::eval::evaluator::{evaluate, EvalOptions, EvalSet};
use c2i_stages::model::{Llama, Weights};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn exported_model_reproduces_the_reported_heldout_accuracy() {
    let shared = std::env::var_os("C2I_SHARED_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"));
    let data_file = shared.join("bigbench_epistemic_reasoning/laser_epistemic_reasoning.jsonl");
    assert!(data_file.exists(), "{}", data_file.display());
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[model]\npath = \"smollm2\"\n[data]\ntask = \"epistemic_reasoning\"\npath = \"{}\"\n\
             calibration = {{ samples = 4, seed = 0 }}\nevaluation = {{ samples = 8, seed = 1 }}\n\
             heldout = {{ samples = 24, seed = 2 }}\n[search]\nlayers = [29]\nmatrices = [\"down\"]\n\
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
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/report.json")).unwrap())
            .unwrap();
    let reported = report["best"]["heldout"]["accuracy"].as_f64().unwrap();
    let factored = &report["export"]["factored"];
    assert!(factored["params"].as_u64().unwrap() < factored["dense_params"].as_u64().unwrap());

    let loaded = Weights::load_hf_dir(&tmp.path().join("out/model")).unwrap();
    // The special tokens are named for Hugging Face loaders (generate stops at <|im_end|>).
    let read = |f: &str| -> Value {
        serde_json::from_slice(&std::fs::read(tmp.path().join("out/model").join(f)).unwrap())
            .unwrap()
    };
    let eos_id = loaded.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert_eq!(read("config.json")["eos_token_id"], eos_id);
    assert_eq!(read("tokenizer_config.json")["eos_token"], "<|im_end|>");
    let task = Task::builtin("epistemic_reasoning").unwrap();
    let examples = data::load(&task, &data_file).unwrap();
    let rows: Vec<usize> = serde_json::from_value(report["rows"]["heldout"].clone()).unwrap();
    let eos = loaded.tokenizer.token_to_id("<|im_end|>");
    let set = EvalSet::from_rows(&examples, &rows, &loaded.tokenizer, eos).unwrap();
    let model = Llama::new(&loaded.weights).unwrap();
    let r = evaluate(
        &model,
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
        "exported model: {} on held-out, report says {reported}",
        r.accuracy()
    );
    let base = report["baseline"]["heldout"]["accuracy"].as_f64().unwrap();
    println!(
        "held-out accuracy: base {base:.3}, reported best {reported:.3}, exported model {:.3}",
        r.accuracy()
    );
}
