//! Task files through the real binary: a user's own CSV task with `chat = true` runs end
//! to end on the real model (and a prompt edit recomputes gradients and evaluations
//! but reuses every SVD), and every bad input of a task is an error naming the file,
//! the row (line) and the field, with nothing written to the cache; `c2i task check`
//! reports the same.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn c2i(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_c2i"))
        .args(args)
        .env_remove("C2I_LOG")
        .output()
        .expect("run c2i")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 30 rows of claims, as a user would write them: `{"claim": ..., "label": 0|1,
/// "options": [...], "answer": ...}`.
fn claims(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "claim": format!("The number {i} is even"),
                "label": i % 2,
                "options": ["yes", "no", "maybe"],
                "answer": if i % 2 == 0 { "yes" } else { "no" },
            })
        })
        .collect()
}

fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

const FIXED: &str = "name = \"claims\"\nkind = \"choice\"\nprompt = \"Consider the following claim: {claim}. Is this claim true or false? The claim is\"\nchoices = [\"true\", \"false\"]\nanswer_field = \"label\"\n";
const PER_ROW: &str = "name = \"claims_mc\"\nkind = \"choice\"\nprompt = \"{claim}? Answer:\"\nchoices_field = \"options\"\nanswer_field = \"answer\"\n";

/// A pipeline over `task.toml` and `rows` in `dir`, tiny samples, layer 29 only.
fn pipeline(dir: &Path, rows: &str, samples: (usize, usize, usize)) -> PathBuf {
    let (c, e, h) = samples;
    let p = dir.join("pipeline.toml");
    std::fs::write(
        &p,
        format!(
            "[model]\npath = \"smollm2\"\n\n[data]\ntask = \"task.toml\"\npath = \"{rows}\"\n\
             calibration = {{ samples = {c}, seed = 0 }}\nevaluation = {{ samples = {e}, seed = 1 }}\n\
             heldout = {{ samples = {h}, seed = 2 }}\n\n[search]\nlayers = [29]\ntop_k = 1\n\
             blocks = [1]\nkeep = [0.5]\n\n[output]\ndir = \"out\"\ndense = false\n"
        ),
    )
    .unwrap();
    p
}

/// Every file under `dir/sub`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs the pipeline and `c2i task check` on a bad input: both exit 1 without a
/// panic, name what `want` lists, and the run leaves no cache entry or blob. (Sample
/// sizes are the pipeline's: when `want` names `data.`, `task check` must pass.)
fn bad(task: &str, rows_name: &str, rows: &[u8], samples: (usize, usize, usize), want: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("task.toml"), task).unwrap();
    std::fs::write(dir.join(rows_name), rows).unwrap();
    let p = pipeline(dir, rows_name, samples);
    let cache = dir.join("cache");
    let run = c2i(&[
        "--quiet",
        "run",
        p.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    let check = c2i(&[
        "task",
        "check",
        dir.join("task.toml").to_str().unwrap(),
        "--data",
        dir.join(rows_name).to_str().unwrap(),
    ]);
    let pipeline_only = want.iter().any(|w| w.contains("data."));
    if pipeline_only {
        assert!(check.status.success(), "{}", stderr(&check));
    }
    for (what, out) in [("run", &run), ("task check", &check)] {
        if what == "task check" && pipeline_only {
            continue;
        }
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        for w in want {
            let w = w.replace("DIR", &dir.display().to_string());
            assert!(err.contains(&w), "{what}: `{w}` not in:\n{err}");
        }
    }
    for sub in ["actions", "blobs"] {
        let left = files_under(&cache.join(sub));
        assert!(left.is_empty(), "the failed run wrote {left:?}");
    }
}

fn good_rows_with(bad_line: usize, line: &str) -> Vec<u8> {
    let mut lines: Vec<String> = claims(30).iter().map(|r| r.to_string()).collect();
    lines.insert(bad_line - 1, line.to_string());
    (lines.join("\n") + "\n").into_bytes()
}

#[test]
fn a_template_field_the_row_lacks() {
    bad(
        FIXED,
        "rows.jsonl",
        &good_rows_with(4, r#"{"statement": "x", "label": 0}"#),
        (2, 2, 2),
        &["DIR/rows.jsonl:4: field `claim`: missing (the row has `label`, `statement`)"],
    );
}

#[test]
fn a_gold_answer_not_among_the_choices() {
    bad(
        FIXED,
        "rows.jsonl",
        &good_rows_with(2, r#"{"claim": "x", "label": "maybe"}"#),
        (2, 2, 2),
        &["DIR/rows.jsonl:2: field `label`: gold answer \"maybe\" is not among the choices [\"true\", \"false\"]"],
    );
}

#[test]
fn a_gold_index_out_of_range() {
    bad(
        PER_ROW,
        "rows.jsonl",
        &good_rows_with(7, r#"{"claim": "x", "options": ["a", "b"], "answer": 2}"#),
        (2, 2, 2),
        &["DIR/rows.jsonl:7: field `answer`: gold index 2 is out of range: the row has 2 choices"],
    );
}

#[test]
fn an_empty_file() {
    bad(
        FIXED,
        "rows.jsonl",
        b"",
        (2, 2, 2),
        &["DIR/rows.jsonl: no examples"],
    );
    bad(
        FIXED,
        "rows.csv",
        b"claim,label\n",
        (2, 2, 2),
        &["DIR/rows.csv: no examples"],
    );
}

#[test]
fn fewer_rows_than_a_sample_asks_for() {
    bad(
        FIXED,
        "rows.jsonl",
        jsonl(&claims(30)).as_bytes(),
        (2, 100, 2),
        &[
            "pipeline.toml: field `data.evaluation / data.calibration`",
            "DIR/rows.jsonl",
            "cannot draw 100 evaluation samples: only 6 rows",
        ],
    );
}

#[test]
fn per_row_choices_that_are_empty() {
    bad(
        PER_ROW,
        "rows.jsonl",
        &good_rows_with(3, r#"{"claim": "x", "options": [], "answer": 0}"#),
        (2, 2, 2),
        &["DIR/rows.jsonl:3: field `options`: an empty list of choices"],
    );
}

#[test]
fn per_row_choices_that_repeat() {
    bad(
        PER_ROW,
        "rows.jsonl",
        &good_rows_with(
            5,
            r#"{"claim": "x", "options": ["a", "b", "a"], "answer": "a"}"#,
        ),
        (2, 2, 2),
        &["DIR/rows.jsonl:5: field `options`: choice \"a\" is repeated (positions 0 and 2)"],
    );
}

#[test]
fn invalid_utf8() {
    let mut rows = good_rows_with(6, "{\"claim\": \"caf\u{e9}\", \"label\": 0}");
    let at = rows.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
    rows[at] = 0xff;
    bad(
        FIXED,
        "rows.jsonl",
        &rows,
        (2, 2, 2),
        &["DIR/rows.jsonl:6: invalid UTF-8"],
    );
    let csv = b"claim,label\nok,0\nbad \xff,1\n";
    bad(
        FIXED,
        "rows.csv",
        csv,
        (2, 2, 2),
        &["DIR/rows.csv:3: field `claim`: invalid UTF-8"],
    );
}

#[test]
fn a_malformed_csv_line() {
    let mut csv = String::from("claim,label\n");
    for i in 0..30 {
        csv.push_str(&format!("\"Claim {i}, quoted\",{}\n", i % 2));
    }
    csv.push_str("one,two,three\n");
    bad(
        FIXED,
        "rows.csv",
        csv.as_bytes(),
        (2, 2, 2),
        &["DIR/rows.csv:32: malformed CSV: this record has 3 fields, the header has 2"],
    );
}

#[test]
fn an_unknown_format_kind_or_match() {
    let rows = jsonl(&claims(30));
    for (task, want) in [
        (
            FIXED.replace("kind = \"choice\"\n", "kind = \"choice\"\nformat = \"xml\"\n"),
            "DIR/task.toml:3: field `format`: unknown format `xml`: expected jsonl, csv, parquet, bigbench or bbh",
        ),
        (
            FIXED.replace("\"choice\"", "\"rank\""),
            "DIR/task.toml:2: field `kind`: unknown kind `rank`: expected choice or generate",
        ),
        (
            "name = \"g\"\nkind = \"generate\"\nprompt = \"{claim}\"\nanswer_field = \"claim\"\nmatch = \"fuzzy\"\n"
                .to_string(),
            "DIR/task.toml:5: field `match`: unknown match `fuzzy`: expected substring, exact, token_f1 or text",
        ),
    ] {
        bad(&task, "rows.jsonl", rows.as_bytes(), (2, 2, 2), &[want]);
    }
}

#[test]
fn a_parquet_column_of_the_wrong_type() {
    // Written by pyarrow: `label` is a double column, `options` an int64 one.
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("stages/tests/real/fixtures/claims/wrong_types.parquet");
    let bytes = std::fs::read(fixture).unwrap();
    bad(
        "name = \"c\"\nkind = \"choice\"\nprompt = \"{answer}\"\nchoices = [\"true\", \"false\"]\nanswer_field = \"label\"\n",
        "rows.parquet",
        &bytes,
        (2, 2, 2),
        &["DIR/rows.parquet: row 1: field `label`: 0.0 is not a choice index"],
    );
    bad(
        "name = \"c\"\nkind = \"choice\"\nprompt = \"{answer}\"\nchoices_field = \"options\"\nanswer_field = \"answer\"\n",
        "rows.parquet",
        &bytes,
        (2, 2, 2),
        &["DIR/rows.parquet: row 1: field `options`: expected a list of answers, found a number"],
    );
}

/// Runs the pipeline; stage -> outcome -> count from run.json.
fn run_ok(p: &Path, cache: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let out = c2i(&[
        "--quiet",
        "run",
        p.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run: Value =
        serde_json::from_slice(&std::fs::read(p.parent().unwrap().join("out/run.json")).unwrap())
            .unwrap();
    serde_json::from_value(run["outcomes"].clone()).unwrap()
}

fn n(o: &BTreeMap<String, BTreeMap<String, u64>>, stage: &str, outcome: &str) -> u64 {
    o.get(stage)
        .and_then(|m| m.get(outcome))
        .copied()
        .unwrap_or(0)
}

/// A user's own CSV of per-row multiple choice, wrapped in SmolLM2's chat template,
/// runs end to end; report.json names the task (digest, definition), the data (digest,
/// rows) and the rows each sample used. Editing the prompt recomputes the gradients
/// and the evaluations and reuses every factor (SVD).
#[test]
fn a_csv_task_file_runs_and_a_prompt_edit_reuses_every_svd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut csv = String::from("claim,options,answer\n");
    for r in claims(30) {
        csv.push_str(&format!(
            "\"{}\",\"[\"\"yes\"\", \"\"no\"\", \"\"maybe\"\"]\",{}\n",
            r["claim"].as_str().unwrap(),
            r["answer"].as_str().unwrap()
        ));
    }
    std::fs::write(dir.join("rows.csv"), csv).unwrap();
    let task = "name = \"claims_chat\"\nkind = \"choice\"\nprompt = \"Is it true? {claim}.\"\nchoices_field = \"options\"\nanswer_field = \"answer\"\nchat = true\n";
    std::fs::write(dir.join("task.toml"), task).unwrap();
    let p = pipeline(dir, "rows.csv", (2, 3, 3));
    let cache = dir.join("cache");
    let first = run_ok(&p, &cache);
    assert_eq!(n(&first, "gradients", "computed"), 1, "{first:?}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(report["task"], "claims_chat");
    assert_eq!(report["task_info"]["definition"]["chat"], true);
    assert_eq!(
        report["task_info"]["file"],
        dir.join("task.toml").display().to_string()
    );
    assert_eq!(report["data_info"]["rows"], 30);
    assert_eq!(report["data_info"]["format"], "csv");
    assert_eq!(report["data_info"]["selection_rows"], 6);
    assert_eq!(report["rows"]["evaluation"].as_array().unwrap().len(), 3);
    assert_eq!(
        report["baseline"]["heldout"]["metrics"]["kind"],
        "multiple_choice"
    );
    assert_eq!(
        report["baseline"]["heldout"]["metrics"]["chance"],
        1.0 / 3.0
    );
    let digest = report["task_info"]["digest"].clone();

    // A comment and key order: the same task, every stage a hit.
    std::fs::write(dir.join("task.toml"), format!("# my claims\n{task}")).unwrap();
    let same = run_ok(&p, &cache);
    assert_eq!(n(&same, "gradients", "hit"), 1, "{same:?}");
    assert_eq!(n(&same, "evaluate", "computed"), 0, "{same:?}");

    // A new prompt: gradients and evaluations again, every factor from the cache.
    std::fs::write(
        dir.join("task.toml"),
        task.replace("Is it true?", "True or not?"),
    )
    .unwrap();
    let edited = run_ok(&p, &cache);
    assert_eq!(n(&edited, "gradients", "computed"), 1, "{edited:?}");
    assert!(n(&edited, "evaluate", "computed") >= 3, "{edited:?}");
    assert_eq!(n(&edited, "factors", "computed"), 0, "{edited:?}");
    assert!(n(&edited, "factors", "hit") >= 3, "{edited:?}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.join("out/report.json")).unwrap()).unwrap();
    assert_ne!(report["task_info"]["digest"], digest);
}
