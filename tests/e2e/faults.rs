//! The fault suite: `kill -9` in every long stage, corrupted caches, and malformed
//! inputs, all through the real `c2i` binary on the real SmolLM2 model and the real
//! epistemic-reasoning data.
//!
//! - A run killed with SIGKILL in gradients, factors, sv-grads or evaluate leaves a
//!   cache that `c2i cache verify` finds clean, and the rerun's report equals that of a
//!   clean run on a fresh cache. Where the run is comes from the engine's stage and
//!   progress log lines (`C2I_LOG=c2i::stage=debug,c2i::progress=debug`): the kill is
//!   sent the moment the wanted line appears, no sleeping.
//! - Each kind of damage (flipped or truncated blob, empty blob, truncated or flipped
//!   action entry, stray temporary file) is named by `verify`; after `verify --repair`
//!   the next run rebuilds and matches the clean run. Without repair, a truncated blob
//!   is never read (lookups check sizes) and a flipped byte in a blob a stage reads is
//!   caught by the engine's hash check on read and recomputed, never used.
//! - Malformed inputs are clear errors naming the file and what was expected, with
//!   exit code 1 and no panic.

use crate::support::tiny;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn data_file() -> PathBuf {
    tiny::epistemic_data()
}

/// The smallest pipeline that still has every stage: 4 calibration rows in micro-batches
/// of 2 (so the gradient pass reports progress half-way), 8 + 8 evaluation rows in
/// batches of 4, the MLP matrices of layer 29, K in {1, 2}, two rho, top 2.
fn pipeline_text(model: &str, data: &Path) -> String {
    tiny::pipeline_text(
        model,
        data,
        (4, 8, 8),
        "[29]",
        "[run]\nmicro_batch = 2\neval_batch = 4",
    )
}

fn write_pipeline(dir: &Path) -> PathBuf {
    tiny::write_pipeline_text(dir, &pipeline_text("smollm2", &data_file()))
}

fn c2i(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_c2i"))
        .args(args)
        .env_remove("C2I_LOG")
        .output()
        .expect("run c2i")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `c2i run` to completion; returns run.json's outcomes and the stderr.
fn run_ok(pipeline: &Path, cache: &Path) -> (BTreeMap<String, BTreeMap<String, u64>>, String) {
    let out = c2i(&[
        "--quiet",
        "run",
        pipeline.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "c2i run failed:\n{err}");
    let run_json: Value = serde_json::from_slice(
        &std::fs::read(pipeline.parent().unwrap().join("out/run.json")).unwrap(),
    )
    .unwrap();
    (
        serde_json::from_value(run_json["outcomes"].clone()).unwrap(),
        err,
    )
}

fn computed(o: &BTreeMap<String, BTreeMap<String, u64>>, stage: &str) -> u64 {
    o.get(stage)
        .and_then(|m| m.get("computed"))
        .copied()
        .unwrap_or(0)
}

/// report.json without what legitimately differs between runs: timings, how each stage
/// instance was satisfied (hit or computed), and paths of the run's own directory.
fn normalized_report(pipeline: &Path) -> Value {
    let mut v = tiny::read_report(pipeline);
    // How and where each instance was satisfied (hit, or computed by which executor,
    // on which host, in how many attempts) differs; what it is does not.
    tiny::strip_keys(
        &mut v,
        &[
            "seconds", "outcome", "note", "executor", "host", "job", "attempts",
        ],
    );
    // The stage log lists the same instances, but a resumed run may record them in
    // another order; compare it as a sorted set.
    if let Some(Value::Array(stages)) = v.get_mut("stages") {
        stages.sort_by_key(|s| s.to_string());
        // A stage rebuilt in-process after a damaged read is listed twice (hit, then
        // computed); the instances are what must match.
        stages.dedup();
    }
    if let Some(Value::Object(r)) = v.get_mut("resolved") {
        r.remove("output");
    }
    v
}

/// `c2i --json cache verify [--repair]`: (exit success, report).
fn verify(cache: &Path, repair: bool) -> (bool, Value) {
    let mut args = vec![
        "--json",
        "cache",
        "--cache",
        cache.to_str().unwrap(),
        "verify",
    ];
    if repair {
        args.push("--repair");
    }
    let out = c2i(&args);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify output is not JSON ({e}): {}", text(&out.stdout)));
    (out.status.success(), report)
}

fn assert_clean(cache: &Path, when: &str) -> Value {
    let (ok, report) = verify(cache, false);
    assert!(ok, "cache not clean {when}: {report}");
    assert_eq!(
        report["bad_blobs"],
        Value::Array(vec![]),
        "{when}: {report}"
    );
    assert_eq!(
        report["bad_entries"],
        Value::Array(vec![]),
        "{when}: {report}"
    );
    report
}

/// Entry keys of a stage, from `c2i --json cache ls`.
fn entries_of(cache: &Path, stage: &str) -> Vec<String> {
    let out = c2i(&["--json", "cache", "--cache", cache.to_str().unwrap(), "ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let l: Value = serde_json::from_slice(&out.stdout).unwrap();
    l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["stage"] == stage)
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

fn entry_path(cache: &Path, key: &str) -> PathBuf {
    cache.join("actions").join(&key[..2]).join(&key[2..])
}

/// Blob files (not temporaries), smallest first.
fn blobs_by_size(cache: &Path) -> Vec<(u64, PathBuf)> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(cache.join("blobs")).unwrap() {
        let d = d.unwrap().path();
        if !d.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&d).unwrap() {
            let p = f.unwrap().path();
            if p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                v.push((std::fs::metadata(&p).unwrap().len(), p));
            }
        }
    }
    v.sort();
    v
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x20;
    std::fs::write(path, b).unwrap();
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Where to kill: the `nth` (1-based) log line `<event> stage=<stage>`, where event is
/// `computing` (a stage instance starts), `progress` (a batch of a long stage is done)
/// or `stored` (an instance's entry was just written).
struct KillPoint {
    stage: &'static str,
    event: &'static str,
    nth: usize,
}

/// Starts `c2i run` with the engine's stage log on, SIGKILLs it at `at`; returns
/// whether the kill landed (the process was still running at that point).
fn run_and_kill(pipeline: &Path, cache: &Path, at: &KillPoint) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_c2i"))
        .args([
            "--json",
            "run",
            pipeline.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ])
        .env("C2I_LOG", "error,c2i::stage=debug,c2i::progress=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn c2i");
    let stderr = child.stderr.take().unwrap();
    let wanted = format!("{} stage={}", at.event, at.stage);
    let mut seen = 0;
    let mut landed = false;
    let mut log = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line.contains(&wanted) {
            seen += 1;
            if seen == at.nth {
                // Child::kill is SIGKILL on Unix: no destructor, no flush, no cleanup.
                landed = child.kill().is_ok();
                break;
            }
        }
        log.push(line);
    }
    let status = child.wait().expect("wait");
    assert!(
        landed,
        "the run ended ({status}) before `{wanted}` #{}:\n{}",
        at.nth,
        log.join("\n")
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status}");
    landed
}

/// One copy of a directory tree (the reference cache, for the corruption rounds).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// kill -9 in each long stage, then corruption of each kind: every recovery ends with
/// the clean run's report. One test, because every part compares with the same clean
/// run (the expensive part, ~1 min on 2 cores) and they would only fight over the
/// cores if run in parallel.
#[test]
fn kill9_and_corruption_recover_to_the_clean_result() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();

    // The reference: a clean run on a fresh cache.
    let ref_pipeline = write_pipeline(&tmp.path().join("ref"));
    let ref_cache = tmp.path().join("ref/cache");
    run_ok(&ref_pipeline, &ref_cache);
    let reference = normalized_report(&ref_pipeline);
    assert!(reference["best"].is_object(), "{reference}");
    assert_clean(&ref_cache, "after the clean run");
    eprintln!("clean run: {:.0} s", started.elapsed().as_secs_f64());

    // --- kill -9 in each long stage, resuming on the same cache each time ---
    let t = Instant::now();
    let kill_pipeline = write_pipeline(&tmp.path().join("kill"));
    let kill_cache = tmp.path().join("kill/cache");
    let points = [
        // In the gradient pass: after the first micro-batch's forward+backward.
        KillPoint {
            stage: "gradients",
            event: "progress",
            nth: 1,
        },
        // The gradients are stored, factors start: 2 of 6 factor entries exist.
        KillPoint {
            stage: "factors",
            event: "computing",
            nth: 3,
        },
        // Just after an entry is written (its blobs and entry complete).
        KillPoint {
            stage: "factors",
            event: "stored",
            nth: 2,
        },
        KillPoint {
            stage: "sv-grads",
            event: "computing",
            nth: 2,
        },
        // Within an evaluation (after its first batch), then at the next one.
        KillPoint {
            stage: "evaluate",
            event: "progress",
            nth: 1,
        },
        KillPoint {
            stage: "evaluate",
            event: "computing",
            nth: 2,
        },
    ];
    let mut kills = 0;
    let mut temp_left = 0;
    for at in &points {
        assert!(run_and_kill(&kill_pipeline, &kill_cache, at));
        kills += 1;
        let report = assert_clean(
            &kill_cache,
            &format!("after kill -9 at {} {} #{}", at.event, at.stage, at.nth),
        );
        temp_left += report["temp_files"].as_array().map_or(0, |a| a.len());
    }
    let (outcomes, _) = run_ok(&kill_pipeline, &kill_cache);
    assert_clean(&kill_cache, "after the resumed run");
    let resumed = normalized_report(&kill_pipeline);
    let mut wrong = 0;
    if resumed != reference {
        wrong += 1;
    }
    assert_eq!(
        resumed, reference,
        "the run resumed after {kills} kills differs from the clean run"
    );
    // The last kill was in evaluate, so the final run found all else cached.
    assert_eq!(computed(&outcomes, "gradients"), 0, "{outcomes:?}");
    assert_eq!(computed(&outcomes, "factors"), 0, "{outcomes:?}");
    eprintln!(
        "kill -9: {kills} kills tried, {} lost or wrong results, {temp_left} temporary files left \
         behind (never under a blob name), {:.0} s",
        wrong,
        t.elapsed().as_secs_f64()
    );

    // --- corruption, one kind at a time, each repaired and rebuilt ---
    let t = Instant::now();
    let pipeline = write_pipeline(&tmp.path().join("corrupt"));
    let cache = tmp.path().join("corrupt/cache");
    copy_dir(&ref_cache, &cache);
    let eval_entry = |cache: &Path| entry_path(cache, &entries_of(cache, "evaluate")[0]);
    let factor_entry = |cache: &Path| entry_path(cache, &entries_of(cache, "factors")[0]);
    type Damage = Box<dyn Fn(&Path) -> PathBuf>;
    let kinds: Vec<(&str, Damage)> = vec![
        (
            // A factors blob (a few MB): neither the largest (gradients) nor the
            // smallest (evaluation records).
            "flipped byte in a blob",
            Box::new(|c: &Path| {
                let b = blobs_by_size(c);
                let (len, p) = b[b.len() - 2].clone();
                flip_byte(&p, len as usize / 2);
                p
            }),
        ),
        (
            "truncated blob",
            Box::new(|c: &Path| {
                let (len, p) = blobs_by_size(c)[0].clone();
                truncate(&p, len / 2);
                p
            }),
        ),
        (
            "empty blob file",
            Box::new(|c: &Path| {
                let (_, p) = blobs_by_size(c)[1].clone();
                truncate(&p, 0);
                p
            }),
        ),
        (
            "truncated action entry",
            Box::new(move |c: &Path| {
                let p = eval_entry(c);
                let len = std::fs::metadata(&p).unwrap().len();
                truncate(&p, len - 7);
                p
            }),
        ),
        (
            "flipped byte in an action entry",
            Box::new(move |c: &Path| {
                let p = factor_entry(c);
                flip_byte(&p, 40);
                p
            }),
        ),
        (
            "stray temporary file",
            Box::new(|c: &Path| {
                let (_, blob) = blobs_by_size(c)[0].clone();
                let p = blob.parent().unwrap().join(".tmp.999999.0.faults");
                std::fs::write(&p, b"half a blob").unwrap();
                p
            }),
        ),
    ];
    let mut corruptions = 0;
    for (kind, damage) in &kinds {
        let damaged = damage(&cache);
        corruptions += 1;
        let (ok, report) = verify(&cache, false);
        let name = file_name(&damaged);
        assert!(
            report.to_string().contains(&name),
            "{kind}: verify does not name {name}: {report}"
        );
        if *kind == "stray temporary file" {
            // Not damage: listed for gc, and the store stays clean.
            assert!(ok, "{kind}: {report}");
            let _ = std::fs::remove_file(&damaged);
        } else {
            assert!(!ok, "{kind}: verify passed: {report}");
            let (ok, _) = verify(&cache, true);
            assert!(ok, "{kind}: verify --repair failed");
            assert_clean(&cache, &format!("after repairing a {kind}"));
        }
        let (outcomes, _) = run_ok(&pipeline, &cache);
        let total: u64 = outcomes.keys().map(|s| computed(&outcomes, s)).sum();
        if *kind != "stray temporary file" {
            assert!(total >= 1, "{kind}: nothing rebuilt: {outcomes:?}");
        }
        assert_eq!(
            normalized_report(&pipeline),
            reference,
            "{kind}: the rebuilt result differs from the clean run"
        );
        assert_clean(&cache, &format!("after the run that followed a {kind}"));
    }

    // --- without repair: a truncated blob is never read ---
    let (len, p) = blobs_by_size(&cache)[blobs_by_size(&cache).len() - 2].clone();
    truncate(&p, len / 3);
    corruptions += 1;
    let (outcomes, _) = run_ok(&pipeline, &cache);
    assert_eq!(computed(&outcomes, "factors"), 1, "{outcomes:?}");
    assert_eq!(
        normalized_report(&pipeline),
        reference,
        "truncated blob, no repair"
    );
    // No entry names a damaged blob any more. The truncated file itself is left behind
    // when the recomputed factors hash differently (block SVD is not bit-reproducible
    // across processes); it is unreferenced, verify lists it, and repair (or gc) removes it.
    let (_, report) = verify(&cache, false);
    assert_eq!(report["bad_entries"], Value::Array(vec![]), "{report}");
    for b in report["bad_blobs"].as_array().unwrap() {
        assert_eq!(b["path"].as_str(), p.to_str(), "{report}");
    }
    let (ok, _) = verify(&cache, true);
    assert!(ok);
    assert_clean(&cache, "after a run on a truncated blob and a repair");

    // --- without repair: a flipped byte in a blob a stage reads is caught on read ---
    // sv-grads read every factors blob; drop their entries so they must, flip a byte in
    // the middle of a factors blob's data (sizes stay right, so lookups hit).
    let (len, p) = blobs_by_size(&cache)[blobs_by_size(&cache).len() - 2].clone();
    flip_byte(&p, len as usize / 2);
    corruptions += 1;
    for k in entries_of(&cache, "sv-grads") {
        std::fs::remove_file(entry_path(&cache, &k)).unwrap();
    }
    let (outcomes, err) = {
        let out = Command::new(env!("CARGO_BIN_EXE_c2i"))
            .args([
                "run",
                pipeline.to_str().unwrap(),
                "--cache",
                cache.to_str().unwrap(),
            ])
            .env("C2I_LOG", "warn")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        let run_json: Value = serde_json::from_slice(
            &std::fs::read(pipeline.parent().unwrap().join("out/run.json")).unwrap(),
        )
        .unwrap();
        let o: BTreeMap<String, BTreeMap<String, u64>> =
            serde_json::from_value(run_json["outcomes"].clone()).unwrap();
        (o, err)
    };
    assert!(
        err.contains("damaged"),
        "no warning about the damaged blob:\n{err}"
    );
    assert_eq!(computed(&outcomes, "factors"), 1, "{outcomes:?}");
    assert_eq!(computed(&outcomes, "sv-grads"), 6, "{outcomes:?}");
    assert_eq!(
        normalized_report(&pipeline),
        reference,
        "flipped byte, no repair"
    );
    // The engine removed the damaged file when it caught it: nothing for verify to find.
    assert_clean(&cache, "after a run on a flipped blob");
    eprintln!(
        "corruption: {corruptions} corruptions tried, 0 lost or wrong results, {:.0} s; total {:.0} s",
        t.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------
// Malformed inputs: a clear error naming the file and what was expected, exit code 1,
// no panic.

fn assert_clean_error(out: &Output, must_contain: &[&str]) -> String {
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status {}:\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "panic:\n{err}");
    for s in must_contain {
        assert!(err.contains(s), "error does not mention `{s}`:\n{err}");
    }
    err
}

fn run_pipeline_file(p: &Path) -> Output {
    let cache = p.parent().unwrap().join("cache");
    c2i(&[
        "--quiet",
        "run",
        p.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ])
}

fn export_grads(model: &Path, data: &Path, dir: &Path) -> Output {
    c2i(&[
        "--quiet",
        "export-grads",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--task",
        "epistemic_reasoning",
        "--samples",
        "2",
        "--eval-samples",
        "2",
        "--out",
        dir.join("g.safetensors").to_str().unwrap(),
    ])
}

#[test]
fn malformed_pipeline_and_missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // A wrong type: line, key and the expected type.
    let p = dir.join("wrongtype.toml");
    let good = pipeline_text("smollm2", &data_file());
    std::fs::write(&p, good.replace("top_k = 2", "top_k = \"two\"")).unwrap();
    let err = assert_clean_error(&run_pipeline_file(&p), &["wrongtype.toml:"]);
    assert!(err.contains("top_k") || err.contains("integer"), "{err}");

    // A missing pipeline file.
    let missing = dir.join("nope.toml");
    assert_clean_error(&run_pipeline_file(&missing), &["nope.toml"]);

    // A missing model file.
    let p = dir.join("nomodel.toml");
    std::fs::write(&p, pipeline_text("/nonexistent/model.gguf", &data_file())).unwrap();
    assert_clean_error(
        &run_pipeline_file(&p),
        &["/nonexistent/model.gguf", "model.path"],
    );

    // A missing data file.
    let p = dir.join("nodata.toml");
    std::fs::write(
        &p,
        pipeline_text("smollm2", Path::new("/nonexistent/data.jsonl")),
    )
    .unwrap();
    assert_clean_error(
        &run_pipeline_file(&p),
        &["/nonexistent/data.jsonl", "data.path"],
    );

    // Missing files for export-grads.
    let out = export_grads(Path::new("/nonexistent/m.gguf"), &data_file(), dir);
    assert_clean_error(&out, &["/nonexistent/m.gguf"]);
    let out = export_grads(Path::new("smollm2"), Path::new("/nonexistent/d.jsonl"), dir);
    assert_clean_error(&out, &["/nonexistent/d.jsonl"]);
}

#[test]
fn a_jsonl_line_that_is_not_json_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    // The epistemic rows in LASER's order as JSON lines (what build_laser_format.py writes).
    let rows = c2i_stages::data::bigbench::read_laser_rows(&data_file()).unwrap();
    let text_in = c2i_stages::data::bigbench::to_jsonl(&rows);
    let mut lines: Vec<&str> = text_in.lines().take(200).collect();
    lines[6] = "{\"inputs\": \"an unterminated string";
    let data = tmp.path().join("laser_epistemic_reasoning.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = export_grads(Path::new("smollm2"), &data, tmp.path());
    assert_clean_error(&out, &["laser_epistemic_reasoning.jsonl:7:", "JSON"]);
    // The same file through a pipeline.
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, pipeline_text("smollm2", &data)).unwrap();
    assert_clean_error(
        &run_pipeline_file(&p),
        &["laser_epistemic_reasoning.jsonl:7:"],
    );
}

fn smollm2_path() -> PathBuf {
    let home = std::env::var_os("C2I_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_cache().join("c2i"));
    let p = home.join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        // Fetch it the way a user would.
        let out = c2i(&["--quiet", "fetch", "smollm2"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert!(p.exists(), "no SmolLM2 at {}", p.display());
    p
}

fn dirs_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
}

#[test]
fn a_truncated_gguf_header_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let real = std::fs::read(smollm2_path()).unwrap();
    for (cut, name) in [
        (6usize, "cut6.gguf"),
        (4096, "cut4k.gguf"),
        (400_000, "cut400k.gguf"),
    ] {
        let model = tmp.path().join(name);
        std::fs::write(&model, &real[..cut]).unwrap();
        let out = export_grads(&model, &data_file(), tmp.path());
        assert_clean_error(&out, &[name, "GGUF"]);
        // Through a pipeline too: the header is read for the layer count first.
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&p, pipeline_text(model.to_str().unwrap(), &data_file())).unwrap();
        assert_clean_error(&run_pipeline_file(&p), &[name, "GGUF"]);
    }
}

#[test]
fn a_nan_in_a_model_tensor_names_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("nan-model");
    tiny::tiny_hf_dir(&model, true);
    let out = export_grads(&model, &data_file(), tmp.path());
    assert_clean_error(
        &out,
        &[
            "model.safetensors",
            "model.layers.0.mlp.up_proj.weight",
            "NaN",
        ],
    );
}

#[test]
fn a_safetensors_header_longer_than_the_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("bad-header");
    let file = tiny::tiny_hf_dir(&model, false);
    let mut bytes = std::fs::read(&file).unwrap();
    let claimed = 10 * bytes.len() as u64;
    bytes[..8].copy_from_slice(&claimed.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let out = export_grads(&model, &data_file(), tmp.path());
    assert_clean_error(&out, &["model.safetensors", "header", &claimed.to_string()]);
}
