//! Helpers shared by the integration tests.

use c2i_stages::grad::LossSample;
use c2i_stages::model::tokenizer::{encode, encode_prompt};
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

/// The opening of the US Declaration of Independence (public domain): the fixed
/// paragraph of the perplexity checks.
#[allow(dead_code)]
pub const PARAGRAPH: &str = "When in the Course of human events, it becomes necessary for one people to dissolve the political bands which have connected them with another, and to assume among the powers of the earth, the separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of mankind requires that they should declare the causes which impel them to the separation. We hold these truths to be self-evident, that all men are created equal, that they are endowed by their Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.";

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
                prompt: encode_prompt(tok, v["inputs"].as_str().unwrap()).unwrap(),
                answer: encode(tok, &format!(" {}", v["target"].as_str().unwrap())).unwrap(),
            }
        })
        .collect()
}

/// The GGUF file at `path` with every tensor dequantized and stored as F32 (same
/// metadata, same names and layouts), written into `dir`: a reference implementation
/// reading it computes on exactly the weights our loader produced.
#[allow(dead_code)]
pub fn f32_gguf(path: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::Device;
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut qts = Vec::new();
    let mut names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    names.sort();
    for name in &names {
        let t = ct
            .tensor(&mut f, name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        qts.push((name.clone(), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let meta: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = qts.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let out_path = dir.join("f32.gguf");
    let mut out = std::fs::File::create(&out_path).unwrap();
    gguf_file::write(&mut out, &meta, &tensors).unwrap();
    out_path
}
