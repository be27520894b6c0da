//! Helpers shared by the integration tests.

use c2i_stages::grad::LossSample;
use c2i_stages::model::tokenizer::encode;
use std::path::PathBuf;

/// The team's data sets: `$C2I_SHARED_DATASETS`, else `shared/datasets` beside the
/// workspace (where CI puts it). A missing directory fails the test: these tests must
/// never pass by skipping.
#[allow(dead_code)]
pub fn shared_datasets() -> PathBuf {
    let dir = std::env::var_os("C2I_SHARED_DATASETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets"));
    assert!(
        dir.is_dir(),
        "no shared data sets at {}: put shared/ beside the workspace or set C2I_SHARED_DATASETS",
        dir.display()
    );
    dir
}

/// The first `n` rows of BigBench WikidataQA as loss samples (short prompts keep the
/// f64 finite-difference checks quick): prompt, and `" " + target` as the answer.
#[allow(dead_code)]
pub fn wikidata_samples(tok: &tokenizers::Tokenizer, n: usize) -> Vec<LossSample> {
    let path = shared_datasets().join("bigbench_qa_wikidata/laser_qa_wikidata.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            LossSample {
                prompt: encode(tok, v["inputs"].as_str().unwrap()).unwrap(),
                answer: encode(tok, &format!(" {}", v["target"].as_str().unwrap())).unwrap(),
            }
        })
        .collect()
}
