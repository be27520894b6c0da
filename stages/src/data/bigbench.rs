//! Rebuild LASER's BIG-bench files from the `bigbench` package's `task.json`.
//!
//! LASER reads `tasksource/bigbench` (the Hugging Face `google/bigbench` splits),
//! validation split first, then train (`src/dataset_utils/bigbench.py`). Those splits
//! come from BIG-bench's seqio bridge (`bigbench/bbseqio/bigbench_bridge.py`,
//! `json_task.default_format_fn`) and the HF script's `.strip()`; the shared
//! `derivation/bb_rebuild.py` and `build_laser_format.py` reproduce them, and this
//! module does the same, step for step:
//!
//! 1. de-duplicate `examples`, keeping the first of each `json.dumps(example)`
//!    ([`PyJson::dumps`] with `ensure_ascii=True`, key order kept);
//! 2. format each example: `input = example_input_prefix + input +
//!    example_output_prefix` (defaults `"\nQ: "`, `"\nA: "`); for `target_scores`
//!    tasks (which must have `append_choices_to_input` false) a missing `target` is the
//!    first key with the highest score; a single target becomes a one-element list;
//! 3. `random.seed(42); random.shuffle(examples)` with CPython's generator
//!    ([`PyRandom`], bit for bit);
//! 4. `n_val = max(int(0.2 * n), 16)`: the *last* `n_val` shuffled examples are the
//!    validation split, the others the train split;
//! 5. `inputs = (task_prefix + input).strip()`, `targets = [t.strip() ...]`;
//! 6. LASER's order: validation rows, then train rows. WikidataQA keeps only rows with
//!    exactly one target (LASER skips the others); Epistemic Reasoning must have exactly
//!    one (LASER asserts it).
//!
//! The result equals `../shared/datasets/bigbench_*/laser_*.jsonl` row for row (tested
//! in `stages/tests/data_real.rs`), and [`write_jsonl`] writes it byte for byte as
//! `build_laser_format.py` does (`json.dumps(row, ensure_ascii=False)` per line).

use super::error::DataError;
use super::pyjson::{write_str, PyJson};
use super::pyrandom::PyRandom;
use super::pystr::python_strip;
use super::split::selection_len;
use super::Task;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// `SPLIT_SHUFFLE_SEED` of BIG-bench's seqio bridge.
pub const SHUFFLE_SEED: u64 = 42;
/// The smallest validation split BIG-bench makes.
pub const MIN_VALIDATION: usize = 16;

/// Which Hugging Face split a row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BigBenchSplit {
    Validation,
    Train,
}

impl BigBenchSplit {
    pub fn name(self) -> &'static str {
        match self {
            BigBenchSplit::Validation => "validation",
            BigBenchSplit::Train => "train",
        }
    }
}

/// One row of a `laser_*.jsonl` BIG-bench file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BigBenchRow {
    pub inputs: String,
    pub target: String,
    pub split: BigBenchSplit,
}

/// One example of the Hugging Face-style splits: formatted `inputs` and its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfExample {
    pub inputs: String,
    pub targets: Vec<String>,
}

/// The Hugging Face-style splits of a task, in BIG-bench's shuffled order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfSplits {
    /// Number of examples in `task.json` before de-duplication.
    pub raw: usize,
    pub train: Vec<HfExample>,
    pub validation: Vec<HfExample>,
}

fn task_err(
    path: &Path,
    example: Option<usize>,
    field: &str,
    problem: impl Into<String>,
) -> DataError {
    DataError::TaskJson {
        path: path.to_owned(),
        example,
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn opt_str<'a>(
    d: &'a PyJson,
    key: &str,
    default: &'a str,
    path: &Path,
) -> Result<&'a str, DataError> {
    match d.get(key) {
        None => Ok(default),
        Some(PyJson::Str(s)) => Ok(s),
        Some(v) => Err(task_err(
            path,
            None,
            key,
            format!("expected a string, found {}", v.type_name()),
        )),
    }
}

/// Steps 1-5 of the module docs on the text of a `task.json`; `path` is for errors.
pub fn hf_splits(text: &str, path: &Path) -> Result<HfSplits, DataError> {
    let d = PyJson::parse(text)
        .map_err(|e| task_err(path, None, "(document)", format!("not valid JSON: {e}")))?;
    if !matches!(d, PyJson::Dict(_)) {
        return Err(task_err(
            path,
            None,
            "(document)",
            format!("expected an object, found {}", d.type_name()),
        ));
    }
    let examples = match d.get("examples") {
        Some(PyJson::List(xs)) => xs,
        Some(v) => {
            return Err(task_err(
                path,
                None,
                "examples",
                format!("expected an array, found {}", v.type_name()),
            ))
        }
        None => return Err(task_err(path, None, "examples", "missing")),
    };
    let input_prefix = opt_str(&d, "example_input_prefix", "\nQ: ", path)?;
    let output_prefix = opt_str(&d, "example_output_prefix", "\nA: ", path)?;
    let task_prefix = opt_str(&d, "task_prefix", "", path)?;
    let append_choices = match d.get("append_choices_to_input") {
        None => true,
        Some(PyJson::Bool(b)) => *b,
        Some(v) => {
            return Err(task_err(
                path,
                None,
                "append_choices_to_input",
                format!("expected a boolean, found {}", v.type_name()),
            ))
        }
    };

    let mut seen = HashSet::new();
    let mut formatted = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        if !seen.insert(ex.dumps(true)) {
            continue;
        }
        let input = match ex.get("input") {
            Some(PyJson::Str(s)) => s,
            Some(v) => {
                return Err(task_err(
                    path,
                    Some(i),
                    "input",
                    format!("expected a string, found {}", v.type_name()),
                ))
            }
            None => return Err(task_err(path, Some(i), "input", "missing")),
        };
        let mut target = ex.get("target").cloned();
        if let Some(scores) = ex.get("target_scores") {
            let kv = match scores {
                PyJson::Dict(kv) if !kv.is_empty() => kv,
                v => {
                    return Err(task_err(
                        path,
                        Some(i),
                        "target_scores",
                        format!("expected a non-empty object, found {}", v.type_name()),
                    ))
                }
            };
            if append_choices {
                return Err(task_err(
                    path,
                    Some(i),
                    "target_scores",
                    "the task appends choices to the input (append_choices_to_input is true), \
                     which this rebuild does not support",
                ));
            }
            if target.is_none() {
                let mut best: Option<(&str, f64)> = None;
                for (k, v) in kv {
                    let s = v.as_f64().ok_or_else(|| {
                        task_err(
                            path,
                            Some(i),
                            "target_scores",
                            format!("score of {k:?} is {}, not a number", v.type_name()),
                        )
                    })?;
                    if best.is_none_or(|(_, b)| s > b) {
                        best = Some((k, s));
                    }
                }
                target = best.map(|(k, _)| PyJson::Str(k.to_owned()));
            }
        }
        let targets: Vec<&str> = match &target {
            Some(PyJson::Str(s)) => vec![s.as_str()],
            Some(PyJson::List(xs)) => xs
                .iter()
                .map(|x| {
                    x.as_str().ok_or_else(|| {
                        task_err(
                            path,
                            Some(i),
                            "target",
                            format!("expected strings, found {}", x.type_name()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(task_err(
                    path,
                    Some(i),
                    "target",
                    format!(
                        "expected a string or an array of strings, found {}",
                        v.type_name()
                    ),
                ))
            }
            None => {
                return Err(task_err(
                    path,
                    Some(i),
                    "target",
                    "missing (and no target_scores)",
                ))
            }
        };
        formatted.push(HfExample {
            inputs: python_strip(&format!(
                "{task_prefix}{input_prefix}{input}{output_prefix}"
            ))
            .to_owned(),
            targets: targets.iter().map(|t| python_strip(t).to_owned()).collect(),
        });
    }

    PyRandom::seed(SHUFFLE_SEED).shuffle(&mut formatted);
    let n = formatted.len();
    let n_val = selection_len(n).max(MIN_VALIDATION);
    if n_val > n {
        return Err(task_err(
            path,
            None,
            "examples",
            format!("{n} distinct examples; BIG-bench's split needs at least {MIN_VALIDATION}"),
        ));
    }
    let validation = formatted.split_off(n - n_val);
    Ok(HfSplits {
        raw: examples.len(),
        train: formatted,
        validation,
    })
}

/// LASER's rows of a BIG-bench task from the text of its `task.json` (step 6).
pub fn rebuild_from_str(
    task: Task,
    text: &str,
    path: &Path,
) -> Result<Vec<BigBenchRow>, DataError> {
    if !task.is_bigbench() {
        return Err(task_err(
            path,
            None,
            "name",
            format!("task {task} does not come from BIG-bench"),
        ));
    }
    let splits = hf_splits(text, path)?;
    let mut rows = Vec::new();
    for (split, part) in [
        (BigBenchSplit::Validation, &splits.validation),
        (BigBenchSplit::Train, &splits.train),
    ] {
        for ex in part {
            if ex.targets.len() != 1 {
                if task == Task::QaWikidata {
                    continue;
                }
                return Err(task_err(
                    path,
                    None,
                    "target",
                    format!(
                        "an example ({:?}) has {} targets; {task} needs exactly one",
                        ex.inputs,
                        ex.targets.len()
                    ),
                ));
            }
            rows.push(BigBenchRow {
                inputs: ex.inputs.clone(),
                target: ex.targets[0].clone(),
                split,
            });
        }
    }
    Ok(rows)
}

/// LASER's rows of a BIG-bench task from `benchmark_tasks/<task>/task.json`.
pub fn rebuild(task: Task, task_json: &Path) -> Result<Vec<BigBenchRow>, DataError> {
    let text = std::fs::read_to_string(task_json).map_err(|source| DataError::Read {
        path: task_json.to_owned(),
        source,
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if let Ok(PyJson::Dict(kv)) = PyJson::parse(text).as_ref() {
        if let Some((_, PyJson::Str(name))) = kv.iter().find(|(k, _)| k == "name") {
            if name != task.name() {
                return Err(task_err(
                    task_json,
                    None,
                    "name",
                    format!("the file is BIG-bench task {name:?}, not {:?}", task.name()),
                ));
            }
        }
    }
    rebuild_from_str(task, text, task_json)
}

/// The rows in the `laser_*.jsonl` format: one
/// `{"inputs": ..., "target": ..., "split": ...}` per line, as Python's
/// `json.dumps(row, ensure_ascii=False)` writes it, each line ending in `\n`.
pub fn to_jsonl(rows: &[BigBenchRow]) -> String {
    let mut out = String::new();
    for r in rows {
        out.push_str("{\"inputs\": ");
        write_str(&mut out, &r.inputs, false);
        out.push_str(", \"target\": ");
        write_str(&mut out, &r.target, false);
        out.push_str(", \"split\": ");
        write_str(&mut out, r.split.name(), false);
        out.push_str("}\n");
    }
    out
}

/// Write [`to_jsonl`] to `path` atomically (a temporary file beside it, then rename).
pub fn write_jsonl(rows: &[BigBenchRow], path: &Path) -> Result<(), DataError> {
    let err = |source| DataError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, to_jsonl(rows)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("task.json")
    }

    /// A 20-example task: 4 validation rows (max(int(0.2*20), 16) = 16!), so 16
    /// validation and 4 train.
    fn tiny_task(with_dup: bool) -> String {
        let mut ex: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"input": "Premise {i}.", "target_scores": {{"entailment": {}, "non-entailment": {}}}}}"#, i % 2, 1 - i % 2))
            .collect();
        if with_dup {
            ex.insert(5, ex[3].clone());
        }
        format!(
            r#"{{"name": "epistemic_reasoning", "append_choices_to_input": false, "example_input_prefix": "\n", "task_prefix": "TP\n", "example_output_prefix": "\nRelation: ", "examples": [{}]}}"#,
            ex.join(", ")
        )
    }

    #[test]
    fn formats_dedupes_and_splits() {
        let s = hf_splits(&tiny_task(true), &p()).unwrap();
        assert_eq!(s.raw, 21);
        assert_eq!(s.validation.len(), 16);
        assert_eq!(s.train.len(), 4);
        let mut all: Vec<&HfExample> = s.train.iter().chain(&s.validation).collect();
        all.sort_by(|a, b| a.inputs.cmp(&b.inputs));
        assert_eq!(all.len(), 20);
        assert_eq!(all[0].inputs, "TP\n\nPremise 0.\nRelation:");
        assert_eq!(all[0].targets, ["non-entailment"]);
        assert_eq!(all[1].inputs, "TP\n\nPremise 1.\nRelation:");
        assert_eq!(all[1].targets, ["entailment"]);
        // Order = Python's shuffle of the 20 formatted examples with seed 42.
        let mut idx: Vec<usize> = (0..20).collect();
        PyRandom::seed(42).shuffle(&mut idx);
        let order: Vec<String> = s
            .train
            .iter()
            .chain(&s.validation)
            .map(|e| e.inputs.clone())
            .collect();
        let want: Vec<String> = idx
            .iter()
            .map(|i| format!("TP\n\nPremise {i}.\nRelation:"))
            .collect();
        assert_eq!(order, want);
        let rows = rebuild_from_str(Task::EpistemicReasoning, &tiny_task(false), &p()).unwrap();
        assert_eq!(rows.len(), 20);
        assert_eq!(rows[0].inputs, want[4]);
        assert_eq!(rows[0].split, BigBenchSplit::Validation);
        assert_eq!(rows[16].inputs, want[0]);
        assert_eq!(rows[16].split, BigBenchSplit::Train);
    }

    #[test]
    fn wikidata_skips_multi_target_and_epistemic_rejects_it() {
        let ex: Vec<String> = (0..20)
            .map(|i| {
                if i == 7 {
                    r#"{"input": "Multi is", "target": ["a", " b "]}"#.to_owned()
                } else {
                    format!(r#"{{"input": "Q{i} is", "target": " T{i} "}}"#)
                }
            })
            .collect();
        let text = format!(
            r#"{{"example_input_prefix": "\n", "example_output_prefix": " ", "examples": [{}]}}"#,
            ex.join(",")
        );
        let rows = rebuild_from_str(Task::QaWikidata, &text, &p()).unwrap();
        assert_eq!(rows.len(), 19);
        assert!(rows.iter().all(|r| r.inputs != "Multi is"));
        let r = rows.iter().find(|r| r.inputs == "Q3 is").unwrap();
        assert_eq!(r.target, "T3");
        let e = rebuild_from_str(Task::EpistemicReasoning, &text, &p()).unwrap_err();
        assert!(e.to_string().contains("needs exactly one"), "{e}");
        let e = rebuild_from_str(Task::Fever, &text, &p()).unwrap_err();
        assert!(
            e.to_string().contains("does not come from BIG-bench"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_example_and_field() {
        let e = hf_splits(r#"{"examples": [{"input": 3, "target": "x"}]}"#, &p()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "task.json: examples[0]: field `input`: expected a string, found a number"
        );
        let e = hf_splits(r#"{"examples": [{"input": "a"}]}"#, &p()).unwrap_err();
        assert!(
            e.to_string()
                .contains("examples[0]: field `target`: missing"),
            "{e}"
        );
        let e = hf_splits(
            r#"{"examples": [{"input": "a", "target_scores": {"x": 1}}]}"#,
            &p(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("append_choices_to_input"), "{e}");
        let e = hf_splits("{", &p()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("task.json: field `(document)`: not valid JSON"),
            "{e}"
        );
        let e = hf_splits(r#"{"examples": [{"input": "a", "target": "b"}]}"#, &p()).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
    }

    #[test]
    fn jsonl_is_python_json_dumps_ensure_ascii_false() {
        let rows = vec![BigBenchRow {
            inputs: "Café \"x\"\n\\ 😀".to_owned(),
            target: "Brazil".to_owned(),
            split: BigBenchSplit::Validation,
        }];
        assert_eq!(
            to_jsonl(&rows),
            "{\"inputs\": \"Café \\\"x\\\"\\n\\\\ 😀\", \"target\": \"Brazil\", \"split\": \"validation\"}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("laser_x.jsonl");
        write_jsonl(&rows, &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), to_jsonl(&rows));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
