//! BIG-bench Epistemic Reasoning: two-way classification, entailment vs non-entailment.
//!
//! LASER (`src/dataset_utils/bigbench.py`, split `epistemic_reasoning`) reads
//! `tasksource/bigbench`'s `inputs` and `targets[0]`, with choices
//! `["entailment", "non-entailment"]`, and asserts the target is one of them.
//! `src/intervention_{gptj,llama2}_bbh.py` feed `inputs` unchanged as the prompt and
//! score each choice as the continuation `" " + choice`: GPT-J tokenizes `f" {choice}"`
//! (or `prompt + " " + choice` when a choice is several tokens), Llama-2 tokenizes
//! `choice`, which SentencePiece turns into `"▁" + choice`, the same leading space.
//! The prediction is the argmax of the choices' (summed) answer log-probabilities.
//!
//! The `inputs` string is BIG-bench's formatting of `task.json` (see
//! [`super::bigbench`]):
//! `strip(task_prefix + "\n" + input + "\nRelation: ")`, that is
//! `"Identify the relation between the following premises and hypotheses, choosing from
//! the options 'entailment' or 'non-entailment'.\n\n{input}\nRelation:"`.
//!
//! Data file: `laser_epistemic_reasoning.jsonl`, one
//! `{"inputs": str, "target": "entailment" | "non-entailment", "split": str}` a line.

use super::error::FieldError;
use super::pystr::python_strip;
use super::record::get_str;
use super::Answer;
use serde_json::{Map, Value};

/// The labels as they appear in the data (`target`), in LASER's choice order.
pub const LABELS: [&str; 2] = ["entailment", "non-entailment"];

/// The scored continuations, index = class index: `" " + label`.
pub const CHOICES: [&str; 2] = [" entailment", " non-entailment"];

/// `task_prefix` of `benchmark_tasks/epistemic_reasoning/task.json`.
pub const TASK_PREFIX: &str = "Identify the relation between the following premises and hypotheses, choosing from the options 'entailment' or 'non-entailment'.\n";
/// `example_input_prefix` of the task.
pub const INPUT_PREFIX: &str = "\n";
/// `example_output_prefix` of the task.
pub const OUTPUT_PREFIX: &str = "\nRelation: ";

/// The prompt LASER feeds the model: the data set's `inputs`, unchanged.
pub fn prompt(inputs: &str) -> String {
    inputs.to_owned()
}

/// The `inputs` string BIG-bench builds from one raw `task.json` example's `input`
/// (`"Premise: ... Hypothesis: ..."`).
pub fn inputs_from_task_input(input: &str) -> String {
    python_strip(&format!(
        "{TASK_PREFIX}{INPUT_PREFIX}{input}{OUTPUT_PREFIX}"
    ))
    .to_owned()
}

/// Class index of a `target` label (exact match, as LASER asserts).
pub fn gold_index(target: &str) -> Option<usize> {
    LABELS.iter().position(|l| *l == target)
}

pub(crate) fn parse(rec: &Map<String, Value>) -> Result<(String, Answer), FieldError> {
    let inputs = get_str(rec, "inputs")?;
    let target = get_str(rec, "target")?;
    let gold = gold_index(target).ok_or_else(|| {
        FieldError::new(
            "target",
            format!("unknown label {target:?}: expected \"entailment\" or \"non-entailment\""),
        )
    })?;
    Ok((prompt(inputs), Answer::choice(&CHOICES, gold)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_bigbench_formatting_byte_for_byte() {
        let input = "Premise: Amelia sees that William thinks that a dog runs. Hypothesis: William thinks that a dog runs.";
        let expected = "Identify the relation between the following premises and hypotheses, choosing from the options 'entailment' or 'non-entailment'.\n\nPremise: Amelia sees that William thinks that a dog runs. Hypothesis: William thinks that a dog runs.\nRelation:";
        let inputs = inputs_from_task_input(input);
        assert_eq!(inputs, expected);
        assert_eq!(prompt(&inputs), expected);
        assert!(prompt(&inputs).ends_with("Relation:"));
    }

    #[test]
    fn record_parses_to_choice_answer() {
        let rec: Map<String, Value> = serde_json::from_str(
            r#"{"inputs": "P.\nRelation:", "target": "non-entailment", "split": "train"}"#,
        )
        .unwrap();
        let (p, a) = parse(&rec).unwrap();
        assert_eq!(p, "P.\nRelation:");
        assert_eq!(a, Answer::choice(&[" entailment", " non-entailment"], 1));
        assert_eq!(a.gold_continuation(), " non-entailment");
    }

    #[test]
    fn unknown_label_names_the_field() {
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"inputs": "x", "target": "Entailment"}"#).unwrap();
        let e = parse(&rec).unwrap_err();
        assert_eq!(e.field, "target");
        assert!(e.problem.contains("unknown label"), "{}", e.problem);
    }
}
