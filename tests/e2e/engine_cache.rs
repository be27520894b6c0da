//! The build engine, driving the real `c2i` binary on the real SmolLM2 model and the
//! real epistemic-reasoning data: what is reused when which parameter changes, and
//! what `cache verify` catches.

use crate::support::tiny;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small pipeline: 6 calibration rows, 12 evaluation and 12 held-out rows, the MLP
/// matrices of layers 28 and 29, K in {1, 2}, two rho values, top 2.
fn write_pipeline(dir: &Path) -> PathBuf {
    let text = tiny::pipeline_text(
        "smollm2",
        &tiny::epistemic_data(),
        (6, 12, 12),
        "[28, 29]",
        "",
    );
    tiny::write_pipeline_text(dir, &text)
}

fn c2i(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_c2i"))
        .args(args)
        .output()
        .expect("run c2i")
}

/// Runs the pipeline; returns stage -> outcome -> count from run.json.
fn run(pipeline: &Path, cache: &Path, sets: &[&str]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut args = vec![
        "--quiet",
        "run",
        pipeline.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    let out = c2i(&args);
    assert!(
        out.status.success(),
        "c2i run {sets:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_json: Value = serde_json::from_slice(
        &std::fs::read(pipeline.parent().unwrap().join("out/run.json")).unwrap(),
    )
    .unwrap();
    serde_json::from_value(run_json["outcomes"].clone()).unwrap()
}

fn count(o: &BTreeMap<String, BTreeMap<String, u64>>, stage: &str, outcome: &str) -> u64 {
    o.get(stage)
        .and_then(|m| m.get(outcome))
        .copied()
        .unwrap_or(0)
}

fn blobs(cache: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(cache.join("blobs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn reuse_follows_the_keys_and_verify_catches_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(tmp.path());
    let cache = tmp.path().join("cache");

    // Cold: everything is computed.
    let cold = run(&pipeline, &cache, &[]);
    assert_eq!(count(&cold, "gradients", "computed"), 1, "{cold:?}");
    assert_eq!(count(&cold, "factors", "computed"), 12, "{cold:?}");
    assert_eq!(count(&cold, "sv-grads", "computed"), 12, "{cold:?}");
    assert!(count(&cold, "evaluate", "computed") >= 3, "{cold:?}");
    // Every blob the default configuration needs; later runs with other parameters add
    // blobs the final default run never reads, so the corruption below picks from these.
    let default_blobs = blobs(&cache);
    let out_dir = pipeline.parent().unwrap().join("out");
    let cold_report = tmp.path().join("cold-report.json");
    std::fs::copy(out_dir.join("report.json"), &cold_report).unwrap();

    // The same run again: every stage is a hit, nothing is computed (no forward).
    let warm = run(&pipeline, &cache, &[]);
    for (stage, m) in &warm {
        assert_eq!(
            m.get("computed"),
            None,
            "{stage} computed on a warm run: {warm:?}"
        );
    }
    assert_eq!(count(&warm, "gradients", "hit"), 1);

    // compare reads the engine's real reports: the cold run's search cost is what it
    // computed; the warm run computed nothing and says how much it reused.
    let out = c2i(&[
        "--json",
        "compare",
        cold_report.to_str().unwrap(),
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmp: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (c, w) = (&cmp["runs"][0], &cmp["runs"][1]);
    assert_eq!(c["search_cached"], 0, "{cmp}");
    assert!(c["search_seconds"].as_f64().unwrap() > 0.0, "{cmp}");
    assert!(c["heldout_seconds"].as_f64().unwrap() > 0.0, "{cmp}");
    assert_eq!(w["search_seconds"], 0.0, "{cmp}");
    assert_eq!(w["heldout_seconds"], 0.0, "{cmp}");
    assert!(
        w["search_cached"].as_u64().unwrap() >= 1 + 12 + 12 + 3,
        "{cmp}"
    );
    assert_eq!(c["winner"], w["winner"], "{cmp}");

    // Progress where there is no terminal (stderr is a pipe here, as in CI): one line
    // per stage instance, with how it was satisfied and where the wave stands.
    let out = c2i(&[
        "run",
        pipeline.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("hit gradients all matrices"), "{err}");
    assert!(
        err.contains("hit evaluate base model, Selection round 1/5"),
        "{err}"
    );
    assert!(err.contains("[1/1]") && !err.contains('\r'), "{err}");

    // Racing: the default (`exact`) stopped some candidates early or none, but its
    // winner and every full figure are those of evaluating every candidate on every row
    // (`off`), which reuses the rounds `exact` computed.
    let cold: Value = serde_json::from_slice(&std::fs::read(&cold_report).unwrap()).unwrap();
    let off = run(&pipeline, &cache, &["search.racing=off"]);
    let off_report: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(off_report["best"], cold["best"], "{off:?}");
    let stopped = cold["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["stopped_after_round"].is_null())
        .count() as u64;
    assert_eq!(
        count(&off, "evaluate", "computed") > 0,
        stopped > 0,
        "{off:?} {cold}"
    );
    for (a, b) in cold["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .zip(off_report["candidates"].as_array().unwrap())
    {
        assert_eq!(a["matrix"], b["matrix"]);
        assert_eq!(b["rows_evaluated"], 12, "{b}");
        if a["stopped_after_round"].is_null() {
            assert_eq!(a["selection"], b["selection"], "{a} {b}");
        } else {
            assert!(a["rows_evaluated"].as_u64().unwrap() < 12, "{a}");
        }
    }
    assert_eq!(off_report["race"]["saved_share"], 0.0);
    assert_eq!(
        off_report["race"]["round_ends"],
        serde_json::json!([3, 6, 9, 11, 12])
    );

    // Changing rho: gradients, factors and sv-grads all hit; evaluations run.
    let rho = run(&pipeline, &cache, &["search.keep=[0.2, 0.05]"]);
    assert_eq!(count(&rho, "gradients", "hit"), 1, "{rho:?}");
    assert_eq!(count(&rho, "factors", "hit"), 12, "{rho:?}");
    assert_eq!(count(&rho, "factors", "computed"), 0, "{rho:?}");
    assert_eq!(count(&rho, "sv-grads", "computed"), 0, "{rho:?}");
    assert!(count(&rho, "evaluate", "computed") >= 1, "{rho:?}");

    // Changing K: gradients hit; factors computed only for the new K (6 matrices).
    let k = run(&pipeline, &cache, &["search.blocks=[1, 4]"]);
    assert_eq!(count(&k, "gradients", "hit"), 1, "{k:?}");
    assert_eq!(count(&k, "factors", "computed"), 6, "{k:?}");
    assert_eq!(count(&k, "factors", "hit"), 6, "{k:?}");

    // Changing the calibration seed: new gradients, every factor reused.
    let seed = run(&pipeline, &cache, &["data.calibration.seed=7"]);
    assert_eq!(count(&seed, "gradients", "computed"), 1, "{seed:?}");
    assert_eq!(count(&seed, "factors", "computed"), 0, "{seed:?}");
    assert_eq!(count(&seed, "factors", "hit"), 12, "{seed:?}");

    // status: a rho change is explained by the parameter, old and new.
    let out = c2i(&[
        "status",
        pipeline.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--set",
        "search.blocks=[8]",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("param blocks: 1 -> 8")
            || text.contains("param blocks: 2 -> 8")
            || text.contains("-> 8"),
        "{text}"
    );

    // Corrupt two blobs of the default configuration: flip a byte in one, truncate
    // another.
    let all = &default_blobs;
    assert!(all.len() >= 4);
    let flipped = &all[0];
    let mut bytes = std::fs::read(flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(flipped, &bytes).unwrap();
    let truncated = &all[1];
    let bytes = std::fs::read(truncated).unwrap();
    std::fs::write(truncated, &bytes[..bytes.len() / 2]).unwrap();

    let verify = c2i(&[
        "--json",
        "cache",
        "--cache",
        cache.to_str().unwrap(),
        "verify",
    ]);
    assert!(
        !verify.status.success(),
        "verify should fail on a corrupt cache"
    );
    let report = String::from_utf8_lossy(&verify.stdout);
    for p in [flipped, truncated] {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            report.contains(&name),
            "verify did not name {name}: {report}"
        );
    }
    let repair = c2i(&[
        "--quiet",
        "cache",
        "--cache",
        cache.to_str().unwrap(),
        "verify",
        "--repair",
    ]);
    assert!(
        repair.status.success(),
        "{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    let clean = c2i(&[
        "--quiet",
        "cache",
        "--cache",
        cache.to_str().unwrap(),
        "verify",
    ]);
    assert!(
        clean.status.success(),
        "the cache is not clean after repair"
    );

    // The next run rebuilds what was removed and succeeds.
    let rebuilt = run(&pipeline, &cache, &[]);
    let computed: u64 = rebuilt
        .values()
        .map(|m| m.get("computed").copied().unwrap_or(0))
        .sum();
    assert!(computed >= 1, "nothing was rebuilt: {rebuilt:?}");
}

#[test]
fn bad_pipeline_files_name_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, "[model]\npath = \"smollm2\"\n[data]\ntask = \"epistemic_reasoning\"\n[search]\ntop_k = \"many\"\n[output]\ndir = \"o\"\n").unwrap();
    let out = c2i(&["run", p.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:6:"), "{err}");
    assert!(err.contains("top_k") || err.contains("integer"), "{err}");

    std::fs::write(&p, "[model]\npath = \"smollm2\"\n[data]\ntask = \"epistemic_reasoning\"\nwhat = 1\n[output]\ndir = \"o\"\n").unwrap();
    let out = c2i(&["run", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml:5:") && err.contains("what"), "{err}");

    let out = c2i(&["run", tmp.path().join("missing.toml").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("missing.toml"),
        "{err}"
    );
}
