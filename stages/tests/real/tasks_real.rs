//! Task files on the real model and real data: the built-in tasks give the figures the
//! hand-written parsers gave, the three row formats give the same examples, per-row
//! choices do not depend on their order, a generation task with stop strings and
//! token F1, and `chat = true` with SmolLM2's own template.

use crate::common::{builtin_data, data_dir};

use c2i_stages::assets::smollm2_gguf;
use c2i_stages::data::{self, load, Answer, ChoiceMode, Dataset, Task};
use c2i_stages::eval::{evaluate, EvalOptions, EvalSet, Prediction, SampleAnswer, TaskMetrics};
use c2i_stages::model::chat::chat_template;
use c2i_stages::model::tokenizer::encode;
use c2i_stages::model::{Decoder, LoadedModel, Weights};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Fixture {
    loaded: LoadedModel,
    base: Decoder,
    eos: Option<u32>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = smollm2_gguf().expect("fetch SmolLM2");
        let loaded = Weights::load_gguf(&path).expect("load GGUF");
        let base = Decoder::new(&loaded.weights).expect("build model");
        let eos = loaded.special.stop();
        Fixture { loaded, base, eos }
    })
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/real/fixtures")
}

fn eval(set: &EvalSet) -> c2i_stages::eval::EvalResult {
    let f = fixture();
    evaluate(
        &f.base,
        set,
        None,
        0,
        &EvalOptions::default(),
        &mut |_, _| {},
    )
    .unwrap()
}

/// The five built-in task files on the shared rows give the old parsers' figures,
/// exactly: `fixtures/builtin_figures_8ed5d8e.json` holds what the evaluator of commit
/// 8ed5d8e (hand-written parsers, argmax ties to the first choice) computed on the
/// same rows: 12 rows of each choice task's evaluation sample, 4 of each generation
/// task's (metrics, log-loss and every record, log-probabilities included).
#[test]
fn builtin_tasks_give_the_old_parsers_figures() {
    let f = fixture();
    let old: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("builtin_figures_8ed5d8e.json")).unwrap(),
    )
    .unwrap();
    // The five LASER tasks (the fixture predates the BIG-Bench-Hard ones).
    for name in Task::builtin_names().filter(|n| !n.starts_with("bbh_")) {
        let task = Task::builtin(name).unwrap();
        let d = load(&task, &builtin_data(&task)).unwrap();
        let want = &old[name];
        let rows: Vec<usize> = serde_json::from_value(want["rows"].clone()).unwrap();
        let set = EvalSet::from_rows(&d, &rows, &f.loaded.tokenizer, f.eos).unwrap();
        let r = eval(&set);
        same(
            &serde_json::to_value(&r.metrics).unwrap(),
            &want["metrics"],
            name,
        );
        same(
            &serde_json::to_value(r.log_loss).unwrap(),
            &want["log_loss"],
            name,
        );
        same(
            &serde_json::to_value(&r.records).unwrap(),
            &want["records"],
            name,
        );
    }
}

/// JSON equality: every count, index, text, token and flag exactly; log-probabilities
/// and log-losses to 1e-5 relative. (With the model code of 8ed5d8e they agreed to the
/// last bit, commit 11a98de; the generic decoder that replaced the llama forward since
/// (74288b4) moves a generation log-probability by up to ~1.4e-6 relative: the model
/// side, not the task's.)
fn same(a: &Value, b: &Value, what: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "{what}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{what}");
            for (p, q) in x.iter().zip(y) {
                same(p, q, what);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{what}"
            );
            for (k, p) in x {
                same(p, &y[k], &format!("{what}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// `fixtures/claims/`: the same 20 rows written by Python's json and csv modules and by
/// pyarrow (snappy), see `make.py`.
fn claims_task(extra: &str) -> Task {
    Task::parse(
        &format!(
            "name = \"claims\"\nkind = \"choice\"\nprompt = \"Consider the following claim: {{claim|strip|ensure_end(\\\".\\\")}} Is this claim true or false? The claim is\"\n{extra}"
        ),
        &fixtures().join("claims/claims.toml"),
    )
    .unwrap()
}

#[test]
fn jsonl_csv_and_parquet_give_the_same_examples() {
    let fixed = claims_task("choices = [\"true\", \"false\"]\nanswer_field = \"label\"\n");
    let per_row = claims_task("choices_field = \"options\"\nanswer_field = \"answer\"\n");
    let dir = fixtures().join("claims");
    for task in [&fixed, &per_row] {
        let sets: Vec<Dataset> = ["claims.jsonl", "claims.csv", "claims.parquet"]
            .iter()
            .map(|f| load(task, &dir.join(f)).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(sets[0].len(), 20);
        assert_eq!(
            sets[0].examples[0].prompt,
            "Consider the following claim: Water boils at 100 degrees Celsius at sea level. Is this claim true or false? The claim is"
        );
        for s in &sets[1..] {
            let strip = |d: &Dataset| -> Vec<(String, Answer)> {
                d.examples
                    .iter()
                    .map(|e| (e.prompt.clone(), e.answer.clone()))
                    .collect()
            };
            assert_eq!(strip(s), strip(&sets[0]), "{}", s.path.display());
            assert_eq!(s.choices, sets[0].choices);
        }
        assert_eq!(sets[2].examples[3].loc, data::Loc::Row(4));
        assert_eq!(sets[1].examples[3].loc, data::Loc::Line(5));
    }
    let d = load(&per_row, &dir.join("claims.parquet")).unwrap();
    assert_eq!(d.choices, Some(ChoiceMode::PerRow));
    assert_eq!(
        d.examples[0].answer,
        Answer::choice(&[" yes", " no", " unsure"], 0)
    );
    assert_eq!(d.examples[1].answer, Answer::choice(&[" no", " yes"], 0));
}

#[test]
fn a_parquet_column_of_the_wrong_type_names_file_row_and_field() {
    let path = fixtures().join("claims/wrong_types.parquet");
    let p = path.display().to_string();
    for (task, want) in [
        (
            claims_task("choices = [\"true\", \"false\"]\nanswer_field = \"label\"\n"),
            format!("{p}: row 1: field `claim`: expected text or a number, found an array"),
        ),
        (
            Task::parse(
                "name = \"c\"\nkind = \"choice\"\nprompt = \"{answer}\"\nchoices = [\"true\", \"false\"]\nanswer_field = \"label\"\n",
                Path::new("c.toml"),
            )
            .unwrap(),
            format!("{p}: row 1: field `label`: 0.0 is not a choice index"),
        ),
        (
            Task::parse(
                "name = \"c\"\nkind = \"choice\"\nprompt = \"{answer}\"\nchoices_field = \"options\"\nanswer_field = \"answer\"\n",
                Path::new("c.toml"),
            )
            .unwrap(),
            format!("{p}: row 1: field `options`: expected a list of answers, found a number"),
        ),
    ] {
        let e = load(&task, &path).unwrap_err().to_string();
        assert!(e.starts_with(&want), "{e}\nwanted {want}");
    }
    let e = load(
        &claims_task("choices = [\"a\", \"b\"]\nanswer_field = \"label\"\n"),
        &fixtures()
            .join("claims/claims.csv")
            .with_extension("parquet.missing"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("format"), "{e}");
    let not_parquet = fixtures().join("claims/claims.jsonl");
    let t = Task::parse(
        "name = \"c\"\nformat = \"parquet\"\nkind = \"choice\"\nprompt = \"{claim}\"\nchoices = [\"a\", \"b\"]\nanswer_field = \"label\"\n",
        Path::new("c.toml"),
    )
    .unwrap();
    let e = load(&t, &not_parquet).unwrap_err().to_string();
    assert!(
        e.contains("claims.jsonl: not a readable Parquet file"),
        "{e}"
    );
}

/// BIG-Bench-Hard `ruin_names` lists its own options on each row (3 or 4 of them).
/// With every row's choices reversed (the gold answer moved), the model picks the same
/// answers and scores the same accuracy; the metric is accuracy against chance, never a
/// majority-class rate over gold positions.
#[test]
fn per_row_choices_do_not_leak_their_order() {
    let f = fixture();
    let task = Task::builtin("bbh_ruin_names").unwrap();
    let d = load(&task, &builtin_data(&task)).unwrap();
    assert_eq!(d.choices, Some(ChoiceMode::PerRow));
    // The two rows whose options miss their target are left out, with the reason.
    assert_eq!((d.len(), d.skipped.len()), (248, 2));
    let mut reversed = d.clone();
    for e in &mut reversed.examples {
        if let Answer::Choice { choices, gold } = &mut e.answer {
            choices.reverse();
            *gold = choices.len() - 1 - *gold;
        }
    }
    let rows: Vec<usize> = (0..24).collect();
    let a = eval(&EvalSet::from_rows(&d, &rows, &f.loaded.tokenizer, f.eos).unwrap());
    let b = eval(&EvalSet::from_rows(&reversed, &rows, &f.loaded.tokenizer, f.eos).unwrap());
    let picked = |r: &c2i_stages::eval::EvalResult, set: &Dataset| -> Vec<String> {
        r.records
            .iter()
            .map(
                |rec| match (&rec.prediction, &set.examples[rec.row].answer) {
                    (Prediction::Choice { index, .. }, Answer::Choice { choices, .. }) => {
                        choices[*index].clone()
                    }
                    _ => panic!("not a choice"),
                },
            )
            .collect()
    };
    assert_eq!(picked(&a, &d), picked(&b, &reversed));
    let (TaskMetrics::MultipleChoice(ma), TaskMetrics::MultipleChoice(mb)) =
        (&a.metrics, &b.metrics)
    else {
        panic!(
            "per-row choices must give multiple-choice metrics: {:?}",
            a.metrics
        )
    };
    assert_eq!(ma.accuracy, mb.accuracy);
    let chance: f64 = rows
        .iter()
        .map(|&r| match &d.examples[r].answer {
            Answer::Choice { choices, .. } => 1.0 / choices.len() as f64,
            _ => 0.0,
        })
        .sum::<f64>()
        / rows.len() as f64;
    assert!((ma.chance - chance).abs() < 1e-12);
    assert!(a.selection.balanced_accuracy.is_none());
    println!(
        "bbh_ruin_names, 24 rows: accuracy {:.3} either way, chance {:.3}",
        ma.accuracy, ma.chance
    );
}

/// A generation task over a real CSV (TruthfulQA's own file): greedy decoding cut at
/// the first newline, scored by token F1.
#[test]
fn a_generation_task_over_csv_with_stop_and_token_f1() {
    let f = fixture();
    let task = Task::parse(
        "name = \"truthfulqa_gen\"\nkind = \"generate\"\nprompt = \"Q: {Question}\\nA:\"\nanswer_field = \"Best Answer\"\nmax_new_tokens = 12\nstop = [\"\\n\"]\nmatch = \"token_f1\"\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let d = load(&task, &data_dir().join("truthfulqa/TruthfulQA_v0.csv")).unwrap();
    assert_eq!(d.len(), 817);
    assert_eq!(
        d.examples[0].prompt,
        "Q: What happens to you if you eat watermelon seeds?\nA:"
    );
    let set = EvalSet::from_rows(&d, &[0, 1, 2, 3], &f.loaded.tokenizer, f.eos).unwrap();
    let r = eval(&set);
    let TaskMetrics::Generation(m) = &r.metrics else {
        panic!("{:?}", r.metrics)
    };
    let mut f1 = 0.0;
    for (rec, s) in r.records.iter().zip(set.samples()) {
        let Prediction::Generation { text, scores, .. } = &rec.prediction else {
            panic!()
        };
        assert!(!text.contains('\n'), "not cut at the stop string: {text:?}");
        let SampleAnswer::Generate { target, .. } = &s.answer else {
            panic!()
        };
        let want = c2i_stages::eval::metrics::token_f1(text, target);
        assert_eq!(scores.credit, Some(want));
        f1 += want;
    }
    assert!((m.accuracy - f1 / 4.0).abs() < 1e-12);
    assert_eq!(m.accuracy, m.token_f1);
}

/// `chat = true` wraps the prompt in the chat template SmolLM2's GGUF carries, rendered
/// as Hugging Face's `apply_chat_template(..., add_generation_prompt=True)` renders it.
/// The expected text was printed by Python's jinja2 3.1.6 with transformers' settings
/// (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`) on the
/// template read out of the same GGUF file.
#[test]
fn chat_true_renders_smollm2_s_template_as_hugging_face_does() {
    let f = fixture();
    let template = chat_template(&smollm2_gguf().unwrap()).unwrap().unwrap();
    let task = Task::parse(
        "name = \"c\"\nkind = \"choice\"\nprompt = \"Is the claim true? {claim}\"\nchoices = [\"true\", \"false\"]\nanswer_field = \"label\"\nchat = true\n",
        Path::new("c.toml"),
    )
    .unwrap();
    assert_eq!(task.answer_prefix, "");
    let rows = data::rows::parse_jsonl(
        b"{\"claim\": \"Paris is the capital of France.\", \"label\": 0}\n",
        Path::new("c.jsonl"),
    )
    .unwrap();
    let d = data::build(
        &task,
        Path::new("c.jsonl"),
        data::Format::Jsonl,
        rows,
        Vec::new(),
    )
    .unwrap();
    let seen = d.for_model(Some(&template), "SmolLM2").unwrap();
    let want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nIs the claim true? Paris is the capital of France.<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(seen.examples[0].prompt, want);
    // The turn markers are single special tokens, as the model was trained on them.
    let ids = encode(&f.loaded.tokenizer, want).unwrap();
    let start = f.loaded.tokenizer.token_to_id("<|im_start|>").unwrap();
    assert_eq!(ids[0], start);
    assert_eq!(ids.iter().filter(|&&t| t == start).count(), 3);
    // Without a template, a chat task is a clear error naming the model.
    let e = d.for_model(None, "plain.gguf").unwrap_err().to_string();
    assert!(
        e.contains("plain.gguf") && e.contains("no chat template"),
        "{e}"
    );
}
