//! HotPotQA: generation; correct when the answer appears in the generated
//! continuation.
//!
//! LASER (`src/dataset_utils/hotpot.py`, and inline in
//! `src/intervention_llama2_hotpot.py`) takes the first `len(validation)` = 7405
//! `hotpot_qa`/`fullwiki` train rows, then the validation rows, with
//! `question.strip()` and `answer.strip()`, and drops answers longer than 15 Llama-2
//! tokens (that filter is *not* applied to the shared file: no Llama-2 tokenizer here).
//! `src/intervention_{gptj,llama2}_hotpot.py` build
//!
//! ```text
//! if not question.endswith("?") and not question.endswith("."):
//!     f"{question}? The answer is"
//! else:
//!     f"{question} The answer is"
//! ```
//!
//! generate greedily with `max_new_tokens = 15` (`--max_len` default) and
//! `min_new_tokens = 1`, score `prompt + " " + answer`, and count an example correct
//! when the stripped, lower-cased answer is a substring of the generation. As for
//! WikidataQA, LASER's decoded generation includes the prompt; c2i matches against the
//! continuation only.
//!
//! Data file: `laser_hotpot_unfiltered.jsonl`, one `{"question": str, "answer": str,
//! "split": str}` a line.

use super::error::FieldError;
use super::pystr::python_strip;
use super::record::get_str;
use super::Answer;
use serde_json::{Map, Value};

/// Greedy generation length (LASER's `--max_len` default for hotpot).
pub const MAX_NEW_TOKENS: usize = 15;

/// LASER's HotPotQA prompt for a question (stripped first, as LASER's loader does).
pub fn prompt(question: &str) -> String {
    let q = python_strip(question);
    if !q.ends_with('?') && !q.ends_with('.') {
        format!("{q}? The answer is")
    } else {
        format!("{q} The answer is")
    }
}

pub(crate) fn parse(rec: &Map<String, Value>) -> Result<(String, Answer), FieldError> {
    let question = get_str(rec, "question")?;
    let answer = python_strip(get_str(rec, "answer")?);
    if answer.is_empty() {
        return Err(FieldError::new(
            "answer",
            "empty answer (it would match every generation)",
        ));
    }
    Ok((prompt(question), Answer::generate(answer, MAX_NEW_TOKENS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_byte_for_byte() {
        assert_eq!(
            prompt("Which magazine was started first Arthur's Magazine or First for Women?"),
            "Which magazine was started first Arthur's Magazine or First for Women? The answer is"
        );
        assert_eq!(
            prompt("Who was once considered the best kick boxer in the world."),
            "Who was once considered the best kick boxer in the world. The answer is"
        );
        assert_eq!(
            prompt("  What government position was held by the woman  "),
            "What government position was held by the woman? The answer is"
        );
    }

    #[test]
    fn record_parses_to_generation_spec() {
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"question": "Q?", "answer": "Delhi", "split": "train"}"#)
                .unwrap();
        let (p, a) = parse(&rec).unwrap();
        assert_eq!(p, "Q? The answer is");
        assert_eq!(a, Answer::generate("Delhi", 15));
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"question": "Q?", "answer": null}"#).unwrap();
        assert_eq!(parse(&rec).unwrap_err().field, "answer");
    }
}
