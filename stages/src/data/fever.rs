//! FEVER: claim verification, two-way classification ` false` / ` true`.
//!
//! LASER (`src/dataset_utils/fever.py`) takes `EleutherAI/fever` v1.0 `paper_dev`
//! then `paper_test`, drops NOT ENOUGH INFO, and keeps each claim whose labels agree
//! (`answer`: 1 = SUPPORTS = true, 0 = REFUTES = false). The prompt is built in
//! `src/intervention_{gptj,llama2}_fever.py`:
//!
//! ```text
//! if question.strip().endswith(".") or question.strip().endswith("?"):
//!     "Consider the following claim: " + question.strip() + " Is this claim true or false. The claim is"
//! else:
//!     "Consider the following claim: " + question.strip() + ". Is this claim true or false. The claim is"
//! ```
//!
//! and the model's next-token log-probabilities of `" true"` and `" false"` are
//! compared (GPT-J: `tokenizer(" true")`, "Space before true is important"; Llama-2:
//! `tokenizer("true")[1]`, i.e. `▁true`). LASER counts a tie as wrong for both labels;
//! c2i's evaluator takes an argmax, so a tie predicts the lower index (` false`).
//!
//! Class index = the data file's `answer`: 0 = ` false`, 1 = ` true`.
//!
//! Data file: `laser_fever.jsonl`, one `{"question": str, "answer": 0 | 1,
//! "split": str}` a line.

use super::error::FieldError;
use super::pystr::python_strip;
use super::record::{get_binary_label, get_str};
use super::Answer;
use serde_json::{Map, Value};

/// The scored next tokens, index = label (0 = false / REFUTES, 1 = true / SUPPORTS).
pub const CHOICES: [&str; 2] = [" false", " true"];

/// LASER's FEVER prompt for a claim.
pub fn prompt(claim: &str) -> String {
    let q = python_strip(claim);
    if q.ends_with('.') || q.ends_with('?') {
        format!("Consider the following claim: {q} Is this claim true or false. The claim is")
    } else {
        format!("Consider the following claim: {q}. Is this claim true or false. The claim is")
    }
}

pub(crate) fn parse(rec: &Map<String, Value>) -> Result<(String, Answer), FieldError> {
    let claim = get_str(rec, "question")?;
    let gold = get_binary_label(rec, "answer")?;
    Ok((prompt(claim), Answer::choice(&CHOICES, gold)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_byte_for_byte() {
        assert_eq!(
            prompt("Fox 2000 Pictures released the film Soul Food."),
            "Consider the following claim: Fox 2000 Pictures released the film Soul Food. Is this claim true or false. The claim is"
        );
        assert_eq!(
            prompt(" Is Soul Food a film? "),
            "Consider the following claim: Is Soul Food a film? Is this claim true or false. The claim is"
        );
        assert_eq!(
            prompt("Telemundo is a English-language television network"),
            "Consider the following claim: Telemundo is a English-language television network. Is this claim true or false. The claim is"
        );
    }

    #[test]
    fn label_is_class_index() {
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"question": "A.", "answer": 1, "split": "paper_dev"}"#)
                .unwrap();
        let (_, a) = parse(&rec).unwrap();
        assert_eq!(a, Answer::choice(&[" false", " true"], 1));
        assert_eq!(a.gold_continuation(), " true");
        for bad in [
            r#"{"question": "A", "answer": 2}"#,
            r#"{"question": "A", "answer": "1"}"#,
            r#"{"question": "A", "answer": 1.0}"#,
            r#"{"question": "A"}"#,
        ] {
            let rec: Map<String, Value> = serde_json::from_str(bad).unwrap();
            assert_eq!(parse(&rec).unwrap_err().field, "answer", "{bad}");
        }
    }
}
