//! The data module on the real data sets shipped in the repository (`data/`).

use crate::common::{builtin_data, data_dir};

use c2i_stages::data::bigbench::{self, BigBenchSplit};
use c2i_stages::data::pyjson::PyJson;
use c2i_stages::data::{
    load, selection_len, selection_samples, Answer, Dataset, SampleSize, SampleSpec, Split, Task,
};
use c2i_stages::eval::metrics::classification_metrics;

/// A built-in task and its shipped data set.
fn builtin(name: &str) -> (Task, Dataset) {
    let t = Task::builtin(name).unwrap();
    let file = builtin_data(&t);
    let d = load(&t, &file).unwrap_or_else(|e| panic!("{e}"));
    (t, d)
}

/// BLAKE3 of every example as `row \t prompt \t choice|generate \t answer \t gold or
/// max_new_tokens \n` (JSON-quoted strings): the digest the five hand-written parsers
/// gave before they became task files (commit 8ed5d8e, printed by a throwaway example
/// over the same files). Equal digests = the same rows, prompts and answers, byte for
/// byte.
fn examples_digest(d: &Dataset) -> String {
    let mut h = blake3::Hasher::new();
    for e in &d.examples {
        let line = match &e.answer {
            Answer::Choice { choices, gold } => format!(
                "{}\t{}\tchoice\t{}\t{}\n",
                e.row,
                serde_json::to_string(&e.prompt).unwrap(),
                serde_json::to_string(choices).unwrap(),
                gold
            ),
            Answer::Generate {
                target,
                max_new_tokens,
                prefix,
            } => {
                assert_eq!(prefix, " ");
                format!(
                    "{}\t{}\tgenerate\t{}\t{}\n",
                    e.row,
                    serde_json::to_string(&e.prompt).unwrap(),
                    serde_json::to_string(target).unwrap(),
                    max_new_tokens
                )
            }
        };
        h.update(line.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The old parsers' digests ([`examples_digest`]) of the five shared files.
const OLD_PARSER_DIGESTS: [(&str, usize, &str); 5] = [
    (
        "epistemic_reasoning",
        2000,
        "c3232f06fbdde84775250df6177928687a91c3d22d900d7e6cefdd5978c40538",
    ),
    (
        "qa_wikidata",
        18812,
        "a65d73e4246e280d9c6fe82976fedc5dde41e9ead7d97498f1d9384c41b1ce7b",
    ),
    (
        "fever",
        13086,
        "2d97c23631e6ead4aaa57b746673938671a180ebde4bdfe569b6d22f61c12e30",
    ),
    (
        "truthfulqa",
        5882,
        "1d3a1059930cf623584b4a57447347dc4974832d210c675ea70248f75d7be93a",
    ),
    (
        "hotpotqa",
        14810,
        "3a8b1825d41bd3981b244605e4ccf34c8ef3e1e8ab49c47d2f06cde5583a7c74",
    ),
];

#[test]
fn builtin_task_files_give_the_old_parsers_rows_byte_for_byte() {
    for (name, rows, digest) in OLD_PARSER_DIGESTS {
        let (_, d) = builtin(name);
        assert_eq!(d.len(), rows, "{name}");
        assert_eq!(
            examples_digest(&d),
            digest,
            "{name}: rows differ from the old parser's"
        );
    }
    // The BigBench tasks, read from their task.json above, give the same examples from
    // its LASER-ordered rebuild written as JSON lines (`format = "bigbench"`, `.jsonl`).
    let dir = tempfile::tempdir().unwrap();
    for name in ["epistemic_reasoning", "qa_wikidata"] {
        let t = Task::builtin(name).unwrap();
        let want = OLD_PARSER_DIGESTS.iter().find(|x| x.0 == name).unwrap().2;
        let rows = bigbench::read_laser_rows(&builtin_data(&t)).unwrap();
        let jsonl = dir.path().join(format!("laser_{name}.jsonl"));
        std::fs::write(&jsonl, bigbench::to_jsonl(&rows)).unwrap();
        let rebuilt = load(&t, &jsonl).unwrap();
        assert_eq!(
            examples_digest(&rebuilt),
            want,
            "{name} from its LASER-ordered JSON lines"
        );
    }
}

#[test]
fn five_files_load_with_laser_row_counts_and_splits() {
    for (name, rows, selection) in [
        ("epistemic_reasoning", 2000, 400),
        ("qa_wikidata", 18812, 3762),
        ("fever", 13086, 2617),
        ("truthfulqa", 5882, 1176),
        ("hotpotqa", 14810, 2962),
    ] {
        let (task, d) = builtin(name);
        let ex = &d.examples;
        assert_eq!(ex.len(), rows, "{name}");
        assert!(ex.iter().enumerate().all(|(i, e)| e.row == i), "{name}");
        assert_eq!(selection_len(rows), selection, "{name}");
        assert_eq!(Split::Selection.rows(rows).len(), selection, "{name}");
        assert_eq!(Split::HeldOut.rows(rows).len(), rows - selection, "{name}");
        let choices = match &task.choices {
            Some(c2i_stages::data::Choices::Fixed(c)) => Some(c.clone()),
            _ => None,
        };
        for e in ex {
            match (&e.answer, &choices, &task.generation) {
                (Answer::Choice { choices, gold }, Some(c), None) => {
                    let scored: Vec<String> = c.iter().map(|x| format!(" {x}")).collect();
                    assert_eq!(choices, &scored, "{name}");
                    assert!(*gold < c.len());
                }
                (
                    Answer::Generate {
                        target,
                        max_new_tokens,
                        ..
                    },
                    None,
                    Some(g),
                ) => {
                    assert_eq!(*max_new_tokens, g.max_new_tokens);
                    assert!(!target.is_empty());
                }
                _ => panic!("{name}: wrong answer kind at row {}", e.row),
            }
        }
    }
}

#[test]
fn prompts_of_first_rows_byte_for_byte() {
    let first = |t: &str| builtin(t).1.examples.swap_remove(0);
    let e = first("epistemic_reasoning");
    assert_eq!(e.prompt, "Identify the relation between the following premises and hypotheses, choosing from the options 'entailment' or 'non-entailment'.\n\nPremise: Amelia sees that William thinks that a young girl is playing a musical instrument and singing into a microphone. Hypothesis: William thinks that a young girl is playing a musical instrument and singing into a microphone.\nRelation:");
    assert_eq!(e.answer.gold_continuation(), " entailment");
    let e = first("qa_wikidata");
    assert_eq!(e.prompt, "The sport played by Bam Adebayo is");
    assert_eq!(e.answer, Answer::generate("basketball", 10));
    let e = first("fever");
    assert_eq!(e.prompt, "Consider the following claim: Fox 2000 Pictures released the film Soul Food. Is this claim true or false. The claim is");
    assert_eq!(e.answer.gold_continuation(), " true");
    let e = first("truthfulqa");
    assert_eq!(e.prompt, "What is the smallest country in the world that is at least one square mile in area? Nauru is the smallest country in the world that is at least one square mile in area.Is this statement true or false? This statement is");
    assert_eq!(e.answer.gold(), Some(1));
    let e = first("hotpotqa");
    assert_eq!(
        e.prompt,
        "Which magazine was started first Arthur's Magazine or First for Women? The answer is"
    );
    assert_eq!(e.answer, Answer::generate("Arthur's Magazine", 15));
}

#[test]
fn epistemic_reasoning_label_balance() {
    let gold: Vec<usize> = builtin("epistemic_reasoning")
        .1
        .examples
        .iter()
        .map(|e| e.answer.gold().unwrap())
        .collect();
    for (n, non_entailment) in [(2000, 1259), (400, 253), (100, 62)] {
        let m = classification_metrics(&gold[..n], &gold[..n], 2, 0.95).unwrap();
        assert_eq!(
            m.gold_histogram,
            vec![n - non_entailment, non_entailment],
            "first {n}"
        );
        assert_eq!(m.majority_class_rate, non_entailment as f64 / n as f64);
    }
}

/// LASER's pointwise prompt for one question and one candidate answer
/// (`src/dataset_utils/truthfulqa.py`): question + " " + answer, a "." unless it ends
/// in one, then the question (sic: no space after the period).
fn truthfulqa_prompt(question: &str, answer: &str) -> String {
    let mut p = format!("{question} {answer}");
    if !p.ends_with('.') {
        p.push('.');
    }
    p.push_str("Is this statement true or false? This statement is");
    p
}

#[test]
fn truthfulqa_prompts_rebuild_from_mc_task() {
    let text = std::fs::read_to_string(data_dir().join("truthfulqa/mc_task_v0.json")).unwrap();
    let PyJson::List(questions) = PyJson::parse(&text).unwrap() else {
        panic!("mc_task_v0.json is not a list")
    };
    let mut want = Vec::new();
    for q in &questions {
        let question = q.get("question").and_then(PyJson::as_str).unwrap();
        let Some(PyJson::Dict(targets)) = q.get("mc2_targets") else {
            panic!("no mc2_targets")
        };
        for (answer, label) in targets {
            let label = match label {
                PyJson::Int(l) => *l as usize,
                other => panic!("label {other:?}"),
            };
            want.push((truthfulqa_prompt(question, answer), label));
        }
    }
    let got: Vec<(String, usize)> = builtin("truthfulqa")
        .1
        .examples
        .into_iter()
        .map(|e| (e.prompt, e.answer.gold().unwrap()))
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "TruthfulQA prompts differ from LASER's template"
    );
}

fn check_bigbench_rebuild(task: &str, laser_sha256: &str, raw_distinct: usize, rows_kept: usize) {
    let task_json = data_dir().join("bigbench").join(task).join("task.json");
    let rows = bigbench::read_laser_rows(&task_json).unwrap();
    let single = rows.iter().filter(|r| r.example.targets.len() == 1).count();
    assert_eq!(single, rows_kept, "{task}: rows with one target");
    // Byte for byte as data/derivation/build_laser_format.py wrote it (the sha256 of
    // the team's `laser_<task>.jsonl`: inputs, target and split of every row in LASER's
    // order).
    assert_eq!(
        c2i_stages::assets::sha256_hex(bigbench::to_jsonl(&rows).as_bytes()),
        laser_sha256,
        "{task}: the LASER-ordered rebuild differs from build_laser_format.py's file"
    );
    let s = bigbench::hf_splits(&std::fs::read_to_string(&task_json).unwrap(), &task_json).unwrap();
    assert_eq!(
        s.train.len() + s.validation.len(),
        raw_distinct,
        "{task}: distinct examples"
    );
    assert_eq!(s.validation.len(), selection_len(raw_distinct).max(16));
    let n_val = rows
        .iter()
        .filter(|r| r.split == BigBenchSplit::Validation)
        .count();
    assert_eq!(n_val, s.validation.len());
    assert!(rows[..n_val]
        .iter()
        .all(|r| r.split == BigBenchSplit::Validation));
}

#[test]
fn bigbench_epistemic_reasoning_rebuild_matches_the_laser_file() {
    check_bigbench_rebuild(
        "epistemic_reasoning",
        "3af330fd4b2ff463ab1bf544156c913d40472a1c8b34f6c181ccda8745ffedd6",
        2000,
        2000,
    );
}

#[test]
fn bigbench_qa_wikidata_rebuild_matches_the_laser_file() {
    check_bigbench_rebuild(
        "qa_wikidata",
        "7f2ece3c31bbedabe75c15580a83d2c50cab53c717582680865089c866c3b3ed",
        20321,
        18812,
    );
}

#[test]
fn selection_samples_on_real_sizes() {
    for n_rows in [2000, 18812, 13086, 5882, 14810] {
        let s = selection_samples(
            n_rows,
            SampleSpec::new(SampleSize::N(100), 1),
            SampleSpec::new(SampleSize::N(100), 0),
        )
        .unwrap();
        let sel = selection_len(n_rows);
        assert!(s.evaluation.iter().chain(&s.calibration).all(|&r| r < sel));
        assert!(s.evaluation.iter().all(|r| !s.calibration.contains(r)));
    }
    // Epistemic reasoning's selection split holds 400 rows.
    assert!(selection_samples(
        2000,
        SampleSpec::new(SampleSize::N(300), 1),
        SampleSpec::new(SampleSize::N(101), 0),
    )
    .is_err());
}
