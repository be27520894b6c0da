//! BIG-bench `task.json` files in LASER's order: the `bigbench` format's rows.
//!
//! LASER reads `tasksource/bigbench` (the Hugging Face `google/bigbench` splits),
//! validation split first, then train (`src/dataset_utils/bigbench.py`). Those splits
//! come from BIG-bench's seqio bridge (`bigbench/bbseqio/bigbench_bridge.py`,
//! `json_task.default_format_fn`) and the HF script's `.strip()`; the shared
//! `derivation/bb_rebuild.py` and `build_laser_format.py` reproduce them, and this
//! module does the same, step for step, for any task of the package:
//!
//! 1. de-duplicate `examples`, keeping the first of each `json.dumps(example)`
//!    ([`PyJson::dumps`] with `ensure_ascii=True`, key order kept);
//! 2. format each example as `default_format_fn` does: with `target_scores` and a
//!    (Python-)true `append_choices_to_input` (the default), the input gets
//!    `choice_prefix` (default `"\n  choice: "`) before each of the sorted choices,
//!    in the order of numpy's `RandomState(42).permutation` ([`NumpyRandomState`]);
//!    then `input = example_input_prefix + input + example_output_prefix` (defaults
//!    `"\nQ: "`, `"\nA: "`); a missing `target` is the first key with the highest
//!    score (an example whose scores are all equal is an error, as in BIG-bench); a
//!    single target becomes a one-element list;
//! 3. `random.seed(42); random.shuffle(examples)` with CPython's generator
//!    ([`PyRandom`], bit for bit);
//! 4. `n_val = max(int(0.2 * n), 16)`: the *last* `n_val` shuffled examples are the
//!    validation split, the others the train split;
//! 5. `inputs = (task_prefix + input).strip()`, `targets = [t.strip() ...]`;
//! 6. LASER's order: validation rows, then train rows ([`laser_rows`]).
//!
//! For the shipped task.json files (`data/bigbench/`) [`to_jsonl`] writes the rows byte
//! for byte as `data/derivation/build_laser_format.py` does
//! (`json.dumps(row, ensure_ascii=False)`; WikidataQA keeps only rows with exactly one
//! target, as LASER does): tested against that file's sha256 in
//! `stages/tests/real/data_real.rs`.

use super::error::DataError;
use super::pyjson::{write_str, PyJson};
use super::pyrandom::{NumpyRandomState, PyRandom};
use super::pystr::python_strip;
use super::split::selection_len;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;

/// `SPLIT_SHUFFLE_SEED` of BIG-bench's seqio bridge.
pub const SHUFFLE_SEED: u64 = 42;
/// The smallest validation split BIG-bench makes.
pub const MIN_VALIDATION: usize = 16;
/// `random_seed` of BIG-bench's `JsonTask`, passed to `default_format_fn`.
pub const FORMAT_SEED: u32 = 42;

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

/// One formatted example of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfExample {
    /// 0-based index in the file's `examples` (the first of its duplicates).
    pub example: usize,
    /// The raw `input`.
    pub input: String,
    /// The formatted, stripped input (Hugging Face's `inputs`).
    pub inputs: String,
    /// The stripped targets.
    pub targets: Vec<String>,
    /// The `target_scores` keys in file order, when the example has them.
    pub choices: Option<Vec<String>>,
    /// The first `target_scores` key with the highest score.
    pub best: Option<String>,
}

/// The Hugging Face-style splits of a task, in BIG-bench's shuffled order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfSplits {
    /// Number of examples in `task.json` before de-duplication.
    pub raw: usize,
    pub train: Vec<HfExample>,
    pub validation: Vec<HfExample>,
}

/// One row in LASER's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigBenchRow {
    pub example: HfExample,
    pub split: BigBenchSplit,
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

/// Python's truth value of a JSON value (BIG-bench tests `append_choices_to_input`
/// with `if`, so the string `"false"` is true there, and here).
fn truthy(v: &PyJson) -> bool {
    match v {
        PyJson::Null => false,
        PyJson::Bool(b) => *b,
        PyJson::Int(i) => *i != 0,
        PyJson::Float(f) => *f != 0.0,
        PyJson::Str(s) => !s.is_empty(),
        PyJson::List(xs) => !xs.is_empty(),
        PyJson::Dict(kv) => !kv.is_empty(),
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
        None => {
            return Err(task_err(
                path,
                None,
                "examples",
                "missing (a task with subtasks keeps its examples in <subtask>/task.json:                  set `subtask` in the task file)",
            ))
        }
    };
    let input_prefix = opt_str(&d, "example_input_prefix", "\nQ: ", path)?;
    let output_prefix = opt_str(&d, "example_output_prefix", "\nA: ", path)?;
    let choice_prefix = opt_str(&d, "choice_prefix", "\n  choice: ", path)?;
    let task_prefix = opt_str(&d, "task_prefix", "", path)?;
    let append_choices = d.get("append_choices_to_input").is_none_or(truthy);

    let mut seen = HashSet::new();
    let mut formatted = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        if !seen.insert(ex.dumps(true)) {
            continue;
        }
        if !matches!(ex, PyJson::Dict(_)) {
            return Err(task_err(
                path,
                Some(i),
                "(example)",
                format!("expected an object, found {}", ex.type_name()),
            ));
        }
        let input = match ex.get("input") {
            Some(PyJson::Str(s)) => s.clone(),
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
        let mut choices = None;
        let mut best_key = None;
        let mut with_choices = input.clone();
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
            let mut best: Option<(&str, f64)> = None;
            let mut worst = f64::INFINITY;
            for (k, v) in kv {
                let s = v.as_f64().ok_or_else(|| {
                    task_err(
                        path,
                        Some(i),
                        "target_scores",
                        format!("score of {k:?} is {}, not a number", v.type_name()),
                    )
                })?;
                worst = worst.min(s);
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((k, s));
                }
            }
            let (bk, bs) = best.unwrap_or(("", 0.0));
            let no_correct = (kv.len() == 1 && bs == 0.0) || (kv.len() > 1 && bs <= worst);
            if target.is_none() && no_correct {
                return Err(task_err(
                    path,
                    Some(i),
                    "target_scores",
                    "no correct choice: every choice has the same score",
                ));
            }
            if append_choices {
                let mut sorted: Vec<&str> = kv.iter().map(|(k, _)| k.as_str()).collect();
                sorted.sort_unstable();
                NumpyRandomState::seed(FORMAT_SEED).shuffle(&mut sorted);
                with_choices = format!("{input}{choice_prefix}{}", sorted.join(choice_prefix));
            }
            if target.is_none() {
                target = Some(PyJson::Str(bk.to_owned()));
            }
            choices = Some(kv.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>());
            best_key = Some(bk.to_owned());
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
            example: i,
            inputs: python_strip(&format!(
                "{task_prefix}{input_prefix}{with_choices}{output_prefix}"
            ))
            .to_owned(),
            input,
            targets: targets.iter().map(|t| python_strip(t).to_owned()).collect(),
            choices,
            best: best_key,
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

/// The rows of a `task.json` in LASER's order (step 6): validation, then train.
pub fn laser_rows(text: &str, path: &Path) -> Result<Vec<BigBenchRow>, DataError> {
    let splits = hf_splits(text, path)?;
    let mut rows = Vec::with_capacity(splits.validation.len() + splits.train.len());
    for (split, part) in [
        (BigBenchSplit::Validation, splits.validation),
        (BigBenchSplit::Train, splits.train),
    ] {
        rows.extend(
            part.into_iter()
                .map(|example| BigBenchRow { example, split }),
        );
    }
    Ok(rows)
}

/// Reads a `task.json` (a leading BOM is ignored) into [`laser_rows`].
pub fn read_laser_rows(path: &Path) -> Result<Vec<BigBenchRow>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    laser_rows(text, path)
}

/// The rows with exactly one target in the `laser_*.jsonl` format: one
/// `{"inputs": ..., "target": ..., "split": ...}` per line, as Python's
/// `json.dumps(row, ensure_ascii=False)` writes it, each line ending in `\n`.
pub fn to_jsonl(rows: &[BigBenchRow]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.example.targets.len() == 1) {
        out.push_str("{\"inputs\": ");
        write_str(&mut out, &r.example.inputs, false);
        out.push_str(", \"target\": ");
        write_str(&mut out, &r.example.targets[0], false);
        out.push_str(", \"split\": ");
        write_str(&mut out, r.split.name(), false);
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("task.json")
    }

    /// A 20-example task: max(int(0.2*20), 16) = 16 validation and 4 train.
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
        assert_eq!(all[0].best.as_deref(), Some("non-entailment"));
        assert_eq!(
            all[0].choices.as_deref(),
            Some(&["entailment".to_string(), "non-entailment".to_string()][..])
        );
        assert_eq!(all[1].inputs, "TP\n\nPremise 1.\nRelation:");
        assert_eq!(all[1].targets, ["entailment"]);
        // The duplicate (inserted at 5) is dropped; later examples keep their index.
        assert!(all.iter().all(|e| e.example != 5));
        assert_eq!(
            all.iter()
                .find(|e| e.input == "Premise 19.")
                .unwrap()
                .example,
            20
        );
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
        let rows = laser_rows(&tiny_task(false), &p()).unwrap();
        assert_eq!(rows.len(), 20);
        assert_eq!(rows[0].example.inputs, want[4]);
        assert_eq!(rows[0].split, BigBenchSplit::Validation);
        assert_eq!(rows[16].example.inputs, want[0]);
        assert_eq!(rows[16].split, BigBenchSplit::Train);
    }

    #[test]
    fn appended_choices_follow_numpy_permutation() {
        // Three choices sorted [a, b, c]; RandomState(42).permutation of 3 items keeps
        // [0, 1, 2]; of 2 items gives [1, 0].
        let ex: Vec<String> = (0..20)
            .map(|i| {
                if i == 0 {
                    r#"{"input": "X", "target_scores": {"c": 0, "a": 1, "b": 0}}"#.to_owned()
                } else {
                    format!(r#"{{"input": "Y{i}", "target_scores": {{"yes": 1, "no": 0}}}}"#)
                }
            })
            .collect();
        let text = format!(
            r#"{{"example_output_prefix": " A:", "examples": [{}]}}"#,
            ex.join(",")
        );
        let rows = laser_rows(&text, &p()).unwrap();
        let x = rows.iter().find(|r| r.example.input == "X").unwrap();
        assert_eq!(
            x.example.inputs,
            "Q: X\n  choice: a\n  choice: b\n  choice: c A:"
        );
        assert_eq!(x.example.targets, ["a"]);
        let y = rows.iter().find(|r| r.example.input == "Y1").unwrap();
        assert_eq!(y.example.inputs, "Q: Y1\n  choice: yes\n  choice: no A:");
        // A string "false" is true for Python's `if`: choices are still appended.
        let text = text.replacen('{', r#"{"append_choices_to_input": "false", "#, 1);
        let y2 = laser_rows(&text, &p()).unwrap();
        assert_eq!(
            y2.iter()
                .find(|r| r.example.input == "Y1")
                .unwrap()
                .example
                .inputs,
            y.example.inputs
        );
    }

    #[test]
    fn several_targets_are_kept_as_a_list() {
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
        let rows = laser_rows(&text, &p()).unwrap();
        assert_eq!(rows.len(), 20);
        let m = rows
            .iter()
            .find(|r| r.example.inputs == "Multi is")
            .unwrap();
        assert_eq!(m.example.targets, ["a", "b"]);
        let r = rows.iter().find(|r| r.example.inputs == "Q3 is").unwrap();
        assert_eq!(r.example.targets, ["T3"]);
        assert_eq!(r.example.choices, None);
        // to_jsonl writes only the single-target rows.
        assert_eq!(to_jsonl(&rows).lines().count(), 19);
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
            r#"{"examples": [{"input": "a", "target_scores": {"x": 1, "y": 1}}]}"#,
            &p(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no correct choice"), "{e}");
        let e = hf_splits("{", &p()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("task.json: field `(document)`: not valid JSON"),
            "{e}"
        );
        let e = hf_splits(r#"{"name": "x"}"#, &p()).unwrap_err();
        assert!(e.to_string().contains("subtask"), "{e}");
        let e = hf_splits(r#"{"examples": [{"input": "a", "target": "b"}]}"#, &p()).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
    }

    #[test]
    fn jsonl_is_python_json_dumps_ensure_ascii_false() {
        let rows = vec![BigBenchRow {
            example: HfExample {
                example: 0,
                input: String::new(),
                inputs: "Café \"x\"\n\\ 😀".to_owned(),
                targets: vec!["Brazil".to_owned()],
                choices: None,
                best: None,
            },
            split: BigBenchSplit::Validation,
        }];
        assert_eq!(
            to_jsonl(&rows),
            "{\"inputs\": \"Café \\\"x\\\"\\n\\\\ 😀\", \"target\": \"Brazil\", \"split\": \"validation\"}\n"
        );
    }
}
