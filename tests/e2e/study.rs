//! `c2i study` end to end on the real SmolLM2 model and epistemic-reasoning rows, at
//! tiny sizes (the MLP matrices of layer 29, a handful of rows): the study's figures
//! agree with the variants' own reports, a warm rerun computes nothing and writes the
//! same bytes, and bad input fails naming what is wrong.

use crate::support::tiny;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn c2i(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_c2i"))
        .args(args)
        .output()
        .expect("run c2i")
}

fn json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn study(pipeline: &Path, cache: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "study",
        pipeline.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--layers",
        "[29]",
        "--oracle-keep",
        "0.1,0.5",
        "--calibration",
        "2,4",
        "--evaluation",
        "6",
    ];
    args.extend_from_slice(extra);
    c2i(&args)
}

#[test]
fn study_matches_its_runs_reruns_from_the_cache_and_rejects_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 calibration, 8 evaluation, 8 held-out rows; layer 29's MLP matrices.
    let text = tiny::pipeline_text("smollm2", &tiny::epistemic_data(), (4, 8, 8), "[29]", "")
        .replace("blocks = [1, 2]", "blocks = [1]");
    let pipeline = tiny::write_pipeline_text(tmp.path(), &text);
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("study");

    let run = study(&pipeline, &cache, &out, &[]);
    assert!(
        run.status.success(),
        "c2i study failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s = json(&out.join("study.json"));
    // 3 matrices × 2 keeps, each measured against the pipeline's baseline.
    let entries = s["oracle"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 6, "{s}");
    let pipeline_report = json(&out.join("runs/pipeline/report.json"));
    let oracle_report = json(&out.join("runs/oracle/report.json"));
    let base = &pipeline_report["baseline"]["selection"]["selection"];
    // The study keeps figures to 1e-9 (the same bytes cold and warm).
    let close = |a: f64, b: f64| (a - b).abs() < 3e-9;
    assert!(close(
        s["baseline"]["accuracy"].as_f64().unwrap(),
        base["accuracy"].as_f64().unwrap()
    ));
    for c in oracle_report["candidates"].as_array().unwrap() {
        let e = entries
            .iter()
            .find(|e| e["matrix"] == c["matrix"] && e["keep"] == c["keep"])
            .unwrap_or_else(|| panic!("{} keep {} not in the study", c["matrix"], c["keep"]));
        assert_eq!(c["rows_evaluated"], 8);
        let (acc, ll) = (
            c["selection"]["selection"]["accuracy"].as_f64().unwrap(),
            c["selection"]["selection"]["log_loss"].as_f64().unwrap(),
        );
        let d_acc = e["delta_accuracy"].as_f64().unwrap();
        let d_ll = e["delta_log_loss"].as_f64().unwrap();
        assert!(close(acc - base["accuracy"].as_f64().unwrap(), d_acc));
        assert!(close(ll - base["log_loss"].as_f64().unwrap(), d_ll));
    }
    // Every rule, its figures in range, and its ranking is the order of its own scores
    // in the scores variant's report.
    let rules = s["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        vec!["negative-sv-grad", "first-order", "first-order-slope"]
    );
    for r in rules {
        for k in ["spearman_entries_log_loss", "spearman_entries_accuracy"] {
            if let Some(x) = r[k].as_f64() {
                assert!((-1.0..=1.0).contains(&x), "{k} {x}");
            }
        }
        let name = r["rule"].as_str().unwrap();
        let report = json(&out.join(format!("runs/scores-{name}/report.json")));
        let lower_is_better = name != "negative-sv-grad";
        let mut best: Vec<(String, f64)> = Vec::new();
        for sc in report["scores"].as_array().unwrap() {
            let m = sc["matrix"].as_str().unwrap().to_string();
            let v = sc["score"].as_f64().unwrap();
            let v = if lower_is_better { -v } else { v };
            match best.iter_mut().find(|(x, _)| *x == m) {
                Some(b) => b.1 = b.1.max(v),
                None => best.push((m, v)),
            }
        }
        best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<&str> = best.iter().map(|(m, _)| m.as_str()).collect();
        let got: Vec<&str> = r["top_matrices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(r["points"].as_array().unwrap().len(), 6);
        assert!(out.join(format!("scatter-{name}.svg")).is_file());
    }
    // Calibration sizes, the largest the reference.
    let cal: Vec<(u64, bool)> = s["calibration"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["size"]["used"].as_u64().unwrap(),
                c["reference"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(cal, vec![(2, false), (4, true)], "{s}");
    let md = std::fs::read_to_string(out.join("study.md")).unwrap();
    assert!(md.contains("| random ranking (expected) |"), "{md}");
    // Evaluation: 6 rows asked, and the pipeline's own 8 added as the reference.
    let ev: Vec<(u64, bool)> = s["evaluation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["size"]["used"].as_u64().unwrap(),
                e["own"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(ev, vec![(6, false), (8, true)], "{s}");
    assert!(s["cost"]["seconds_per_candidate_row"].as_f64().unwrap() > 0.0);
    assert!(
        s["cost"]["paper_protocol"]["projected_seconds"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // Warm: nothing computed anywhere, the same bytes.
    let first: Vec<Vec<u8>> = ["study.json", "study.md", "scatter-first-order.svg"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let again = study(&pipeline, &cache, &out, &["--quiet"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    for (f, before) in ["study.json", "study.md", "scatter-first-order.svg"]
        .iter()
        .zip(&first)
    {
        let now = std::fs::read(out.join(f)).unwrap();
        let (a, b) = (
            String::from_utf8_lossy(before),
            String::from_utf8_lossy(&now),
        );
        let diff = a.lines().zip(b.lines()).find(|(x, y)| x != y);
        assert!(now == *before, "{f} changed on a rerun: {diff:?}");
    }
    for d in std::fs::read_dir(out.join("runs")).unwrap() {
        let run_json = json(&d.unwrap().path().join("run.json"));
        for (stage, o) in run_json["outcomes"].as_object().unwrap() {
            assert!(o.get("computed").is_none(), "{stage} computed on a rerun");
        }
    }

    // Re-rendered from study.json alone (no cache: nothing is evaluated), the same
    // bytes: the figures read back bit-exact and the derived tables come out the same.
    let rendered = c2i(&[
        "study",
        pipeline.to_str().unwrap(),
        "--rerender",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--cache",
        tmp.path().join("no-cache").to_str().unwrap(),
    ]);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(!tmp.path().join("no-cache").exists());
    for (f, before) in ["study.json", "study.md", "scatter-first-order.svg"]
        .iter()
        .zip(&first)
    {
        assert!(
            std::fs::read(out.join(f)).unwrap() == *before,
            "{f} re-rendered differs"
        );
    }
    assert!(md.contains("## How deep must the search go?"), "{md}");

    // Bad input fails, naming it.
    for (args, want) in [
        (
            vec!["--oracle-keep", "0.1,0"],
            "--oracle-keep: 0 is not a fraction",
        ),
        (
            vec!["--calibration", "0"],
            "--calibration: sample sizes must be positive",
        ),
        (
            vec!["--set", "search.mode=\"laser\""],
            "field `search.mode`",
        ),
        (vec!["--set", "search.top_k=\"x\""], "search.top_k"),
    ] {
        let o = study(&pipeline, &cache, &tmp.path().join("bad"), &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }
    let empty = tmp.path().join("empty");
    let o = c2i(&[
        "study",
        pipeline.to_str().unwrap(),
        "--rerender",
        "--out",
        empty.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains(&format!("{}", empty.join("study.json").display())),
        "{err}"
    );
    let o = c2i(&["study", tmp.path().join("missing.toml").to_str().unwrap()]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("missing.toml"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
