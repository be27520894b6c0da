//! Helpers shared by the integration tests.

use c2i_stages::grad::LossSample;
use c2i_stages::model::tokenizer::{encode, encode_prompt};
use std::path::PathBuf;

/// The data sets shipped in the repository (`data/`, see its README): the tests read
/// nothing outside the clone.
#[allow(dead_code)]
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data")
}

/// A built-in task's shipped rows, as the repository holds them.
#[allow(dead_code)]
pub fn builtin_data(task: &c2i_stages::data::Task) -> PathBuf {
    data_dir().join(task.bundled().expect("a built-in task").name)
}

/// The opening of the US Declaration of Independence (public domain): the fixed
/// paragraph of the perplexity checks.
#[allow(dead_code)]
pub const PARAGRAPH: &str = "When in the Course of human events, it becomes necessary for one people to dissolve the political bands which have connected them with another, and to assume among the powers of the earth, the separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of mankind requires that they should declare the causes which impel them to the separation. We hold these truths to be self-evident, that all men are created equal, that they are endowed by their Creator with certain unalienable Rights, that among these are Life, Liberty and the pursuit of Happiness.";

/// The first `n` rows of BigBench WikidataQA as loss samples (short prompts keep the
/// f64 finite-difference checks quick): prompt, and `" " + target` as the answer.
#[allow(dead_code)]
pub fn wikidata_samples(tok: &tokenizers::Tokenizer, n: usize) -> Vec<LossSample> {
    let path = data_dir().join("bigbench/qa_wikidata/task.json");
    let rows = c2i_stages::data::bigbench::read_laser_rows(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    rows.iter()
        .filter(|r| r.example.targets.len() == 1)
        .take(n)
        .map(|r| LossSample {
            prompt: encode_prompt(tok, &r.example.inputs).unwrap(),
            answer: encode(tok, &format!(" {}", r.example.targets[0])).unwrap(),
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
