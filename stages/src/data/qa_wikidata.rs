//! BIG-bench WikidataQA: generation; correct when the target appears in the
//! generated continuation.
//!
//! LASER (`src/dataset_utils/bigbench.py`, split `qa_wikidata`) keeps the
//! `tasksource/bigbench` rows (validation, then train) whose `targets` has exactly one
//! element. `src/intervention_{gptj,llama2}_bbh_qa.py` use
//! `prompt = inputs.strip()`, `answer = targets[0].strip()`, generate greedily with
//! `max_new_tokens = 10` (`--max_len` default) and `min_new_tokens = 1`, score the
//! answer's log-probability in `prompt + " " + answer`, and count an example correct
//! when `answer.lower()` is a substring of the generation (both stripped).
//!
//! One deliberate difference: LASER decodes `generate`'s whole output, which for these
//! decoder-only models *includes the prompt*; c2i matches against the generated
//! continuation only (see [`crate::eval::metrics::substring_match`]), so a target that
//! the prompt already contains is not counted correct for free.
//!
//! Data file: `laser_qa_wikidata.jsonl`, one `{"inputs": str, "target": str,
//! "split": str}` a line. BIG-bench formats `task.json`'s `input` as
//! `strip("\n" + input + " ")`.

use super::error::FieldError;
use super::pystr::python_strip;
use super::record::get_str;
use super::Answer;
use serde_json::{Map, Value};

/// Greedy generation length (LASER's `--max_len` default for `bbh_qa`).
pub const MAX_NEW_TOKENS: usize = 10;

/// The prompt: `inputs.strip()`.
pub fn prompt(inputs: &str) -> String {
    python_strip(inputs).to_owned()
}

pub(crate) fn parse(rec: &Map<String, Value>) -> Result<(String, Answer), FieldError> {
    let inputs = get_str(rec, "inputs")?;
    let target = python_strip(get_str(rec, "target")?);
    if target.is_empty() {
        return Err(FieldError::new(
            "target",
            "empty target (it would match every generation)",
        ));
    }
    Ok((prompt(inputs), Answer::generate(target, MAX_NEW_TOKENS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_byte_for_byte() {
        assert_eq!(
            prompt("The sport played by Bam Adebayo is"),
            "The sport played by Bam Adebayo is"
        );
        // BIG-bench formatting then LASER's strip: no trailing space survives.
        assert_eq!(
            prompt(&format!("\n{} ", "The country of Vadodara is")),
            "The country of Vadodara is"
        );
    }

    #[test]
    fn record_parses_to_generation_spec() {
        let rec: Map<String, Value> = serde_json::from_str(
            r#"{"inputs": "The language of X is ", "target": " English ", "split": "validation"}"#,
        )
        .unwrap();
        let (p, a) = parse(&rec).unwrap();
        assert_eq!(p, "The language of X is");
        assert_eq!(a, Answer::generate("English", 10));
        assert_eq!(a.gold_continuation(), " English");
    }

    #[test]
    fn wrong_type_and_empty_target_name_the_field() {
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"inputs": "x", "target": ["a"]}"#).unwrap();
        let e = parse(&rec).unwrap_err();
        assert_eq!(e.field, "target");
        assert!(e.problem.contains("expected a string"), "{}", e.problem);
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"inputs": "x", "target": "  "}"#).unwrap();
        assert_eq!(parse(&rec).unwrap_err().field, "target");
        let rec: Map<String, Value> = serde_json::from_str(r#"{"target": "a"}"#).unwrap();
        let e = parse(&rec).unwrap_err();
        assert_eq!((e.field, e.problem.as_str()), ("inputs", "missing"));
    }
}
