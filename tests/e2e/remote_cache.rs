//! Sharing the cache across a team, driving the real `c2i` binary on the real SmolLM2
//! model: a shared-directory remote and a real S3 server (moto, installed and started
//! by the test), damaged remote blobs, and runs started at the same time.
//!
//! Figures (also in the final report): concurrent runs tried: 2 on one local cache,
//! 2 with separate local caches on one S3 remote; corruptions tried: a poisoned blob
//! (another valid blob's bytes), a flipped byte, a truncated blob; each test asserts
//! that no result is lost or differs.

use crate::support::moto;
use crate::support::tiny;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tiny pipeline in `dir`: 6 calibration rows, 12 evaluation and 12 held-out rows,
/// the MLP matrices of layer 29, K in {1, 2}, two rho values, top 2. `cache` is extra
/// TOML for the `[cache]` table.
fn write_pipeline(dir: &Path, cache: &str) -> PathBuf {
    let text = tiny::pipeline_text(
        "smollm2",
        &tiny::epistemic_data(),
        (6, 12, 12),
        "[29]",
        &format!("[cache]\n{cache}"),
    );
    tiny::write_pipeline_text(dir, &text)
}

fn c2i(args: &[&str], env: &[(String, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_c2i"));
    c.args(args).env_remove("C2I_CACHE_REMOTE");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `c2i run PIPELINE --cache CACHE` plus `extra` args.
fn run_cmd(pipeline: &Path, cache: &Path, extra: &[&str], env: &[(String, String)]) -> Command {
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    c2i(&args, env)
}

fn run_json(pipeline: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(pipeline.parent().unwrap().join("out/run.json")).unwrap())
        .unwrap()
}

fn outcomes(pipeline: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    serde_json::from_value(run_json(pipeline)["outcomes"].clone()).unwrap()
}

fn total(o: &BTreeMap<String, BTreeMap<String, u64>>, outcome: &str) -> u64 {
    o.values()
        .map(|m| m.get(outcome).copied().unwrap_or(0))
        .sum()
}

/// report.json without what legitimately differs between runs that found the same
/// results: timings and how each stage was satisfied. The stage keys are kept (as a
/// sorted list), so two runs must have asked for exactly the same work.
fn results(pipeline: &Path) -> Value {
    let mut v = tiny::read_report(pipeline);
    let mut keys: Vec<String> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {} {}", s["stage"], s["instance"], s["key"]))
        .collect();
    keys.sort();
    keys.dedup();
    // Where the output and cache are differs by design between the runs compared.
    if let Some(r) = v["resolved"].as_object_mut() {
        r.remove("output");
        r.remove("cache");
    }
    let m = v.as_object_mut().unwrap();
    m.remove("stages");
    m.insert("stage_keys".into(), keys.into());
    tiny::strip_keys(&mut v, &["seconds"]);
    v
}

/// Non-temporary files under `dir/blobs`, smallest first.
fn remote_blobs(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(dir.join("blobs")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_file() && name.len() == 62 {
                v.push((std::fs::metadata(&p).unwrap().len(), p));
            }
        }
    }
    v.sort();
    v
}

#[test]
fn shared_directory_remote_pulls_rejects_damage_and_rebuilds() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let cache_line = format!("remote = \"{}\"", remote.display());

    // A computes everything and pushes it (remote named in the pipeline file).
    let a = write_pipeline(&tmp.path().join("a"), &cache_line);
    ok(
        run_cmd(&a, &tmp.path().join("cache-a"), &["--quiet"], &[])
            .output()
            .unwrap(),
        "run A",
    );
    let oa = outcomes(&a);
    assert_eq!(total(&oa, "pulled"), 0, "{oa:?}");
    let ra = run_json(&a)["remote"].clone();
    assert_eq!(ra["status"], "ok", "{ra}");
    assert!(ra["pushed_entries"].as_u64().unwrap() >= 10, "{ra}");

    // B, with an empty local cache, pulls everything and computes nothing.
    let b = write_pipeline(&tmp.path().join("b"), &cache_line);
    ok(
        run_cmd(&b, &tmp.path().join("cache-b"), &["--quiet"], &[])
            .output()
            .unwrap(),
        "run B",
    );
    let ob = outcomes(&b);
    assert_eq!(total(&ob, "computed"), 0, "{ob:?}");
    assert!(total(&ob, "pulled") >= 10, "{ob:?}");
    assert_eq!(results(&a), results(&b), "pulled results differ");

    // Damage three of the remote's smallest blobs (evaluation records): poison one
    // with another valid blob's bytes, flip a byte in one, truncate one.
    let blobs = remote_blobs(&remote);
    assert!(blobs.len() >= 6, "{blobs:?}");
    std::fs::copy(&blobs[3].1, &blobs[0].1).unwrap();
    let mut bytes = std::fs::read(&blobs[1].1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&blobs[1].1, &bytes).unwrap();
    let bytes = std::fs::read(&blobs[2].1).unwrap();
    std::fs::write(&blobs[2].1, &bytes[..bytes.len() / 2]).unwrap();

    // C (empty local cache, remote from the environment) rejects each damaged blob,
    // says so, recomputes those stages and finds the same results.
    let c = write_pipeline(&tmp.path().join("c"), "");
    let env = [(
        "C2I_CACHE_REMOTE".to_string(),
        format!("file://{}", remote.display()),
    )];
    let out = ok(
        run_cmd(&c, &tmp.path().join("cache-c"), &[], &env)
            .output()
            .unwrap(),
        "run C",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let oc = outcomes(&c);
    assert_eq!(total(&oc, "remote-rejected"), 3, "{oc:?}\n{stderr}");
    // Three warnings (the progress lines say `remote-rejected` for the same three).
    assert_eq!(stderr.matches(": rejected ").count(), 3, "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("remote-rejected "))
            .count(),
        3,
        "{stderr}"
    );
    assert!(
        stderr.contains("corrupt blob") || stderr.contains("bytes, expected"),
        "{stderr}"
    );
    let rc = run_json(&c)["remote"].clone();
    assert_eq!(rc["rejected"].as_array().unwrap().len(), 3, "{rc}");
    assert_eq!(results(&a), results(&c), "results after rejection differ");
    eprintln!("run C remote summary: {rc}");

    // The damaged remote blobs were replaced by C (its recomputation gave the same
    // bytes): the remote, read as a store, is clean again.
    let verify = c2i(
        &[
            "--json",
            "cache",
            "--cache",
            remote.to_str().unwrap(),
            "verify",
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(
        verify.status.success(),
        "remote still damaged: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // `cache push` / `cache pull` with counts.
    let remote2 = tmp.path().join("remote2");
    let out = ok(
        c2i(
            &[
                "--json",
                "cache",
                "--cache",
                tmp.path().join("cache-a").to_str().unwrap(),
                "push",
                "--remote",
                remote2.to_str().unwrap(),
            ],
            &[],
        )
        .output()
        .unwrap(),
        "cache push",
    );
    let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = pushed["entries_uploaded"].as_u64().unwrap();
    assert!(
        n >= 10 && pushed["blobs_uploaded"].as_u64().unwrap() >= 5,
        "{pushed}"
    );
    let out = ok(
        c2i(
            &[
                "--json",
                "cache",
                "--cache",
                tmp.path().join("cache-e").to_str().unwrap(),
                "pull",
                "--remote",
                &format!("file://{}", remote2.display()),
            ],
            &[],
        )
        .output()
        .unwrap(),
        "cache pull",
    );
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pulled["entries_pulled"].as_u64().unwrap(), n, "{pulled}");
    assert_eq!(pulled["rejected"].as_array().unwrap().len(), 0, "{pulled}");

    // An unreachable remote: one warning, the run goes on with the local cache. (A new
    // K, up to the factors: only three small SVDs to compute, the rest are hits.)
    let env = [
        (
            "C2I_CACHE_REMOTE".to_string(),
            "s3://nowhere/cache".to_string(),
        ),
        (
            "AWS_ENDPOINT_URL".to_string(),
            "http://127.0.0.1:1".to_string(),
        ),
        ("AWS_ACCESS_KEY_ID".to_string(), "x".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "x".to_string()),
    ];
    let t = std::time::Instant::now();
    let out = ok(
        run_cmd(
            &a,
            &tmp.path().join("cache-a"),
            &["--until", "factors", "--set", "search.blocks=[3]"],
            &env,
        )
        .output()
        .unwrap(),
        "run with an unreachable remote",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("s3://nowhere/cache") && stderr.contains("local cache only"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("local cache only").count(), 1, "{stderr}");
    let status = run_json(&a)["remote"]["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(status.starts_with("unreachable"), "{status}");
    eprintln!(
        "run with unreachable remote: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // gc --keep pins the keys of the pipeline's last run (the K=3 one): with
    // every other entry dropped, that run is still all hits.
    ok(
        c2i(
            &[
                "--quiet",
                "cache",
                "--cache",
                tmp.path().join("cache-a").to_str().unwrap(),
                "gc",
                "--keep",
                a.to_str().unwrap(),
                "--keep-last",
                "0",
            ],
            &[],
        )
        .output()
        .unwrap(),
        "gc --keep",
    );
    ok(
        run_cmd(
            &a,
            &tmp.path().join("cache-a"),
            &[
                "--quiet",
                "--remote",
                "",
                "--until",
                "factors",
                "--set",
                "search.blocks=[3]",
            ],
            &[],
        )
        .output()
        .unwrap(),
        "run after gc",
    );
    let og = outcomes(&a);
    assert_eq!(
        total(&og, "computed"),
        0,
        "gc removed what --keep pinned: {og:?}"
    );
    let help = c2i(&["cache", "gc", "--help"], &[]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("never deletes anything from a remote"));
}

#[test]
fn runs_started_together_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let s3 = moto::Moto::start("c2i-run-test");

    // Two runs at once on one local cache.
    let shared = tmp.path().join("cache-shared");
    let p: Vec<PathBuf> = (0..2)
        .map(|i| write_pipeline(&tmp.path().join(format!("local{i}")), ""))
        .collect();
    let children: Vec<_> = p
        .iter()
        .map(|p| run_cmd(p, &shared, &["--quiet"], &[]).spawn().unwrap())
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        ok(
            c.wait_with_output().unwrap(),
            &format!("concurrent local run {i}"),
        );
    }
    assert_eq!(results(&p[0]), results(&p[1]), "runs on one cache disagree");
    let verify = c2i(
        &[
            "--quiet",
            "cache",
            "--cache",
            shared.to_str().unwrap(),
            "verify",
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(verify.status.success(), "the shared cache is damaged");

    // Two runs at once with their own local caches on one S3 remote.
    let mut env = s3.env();
    env.push(("C2I_CACHE_REMOTE".into(), s3.url("team")));
    let q: Vec<PathBuf> = (0..2)
        .map(|i| write_pipeline(&tmp.path().join(format!("s3-{i}")), ""))
        .collect();
    let children: Vec<_> = q
        .iter()
        .enumerate()
        .map(|(i, q)| {
            run_cmd(
                q,
                &tmp.path().join(format!("cache-s3-{i}")),
                &["--quiet"],
                &env,
            )
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        ok(
            c.wait_with_output().unwrap(),
            &format!("concurrent S3 run {i}"),
        );
    }
    for q in &q {
        assert_eq!(run_json(q)["remote"]["status"], "ok");
        assert_eq!(results(&p[0]), results(q), "S3 runs disagree");
    }

    // A third, later, pulls everything from S3.
    let r = write_pipeline(&tmp.path().join("s3-late"), "");
    ok(
        run_cmd(&r, &tmp.path().join("cache-s3-late"), &["--quiet"], &env)
            .output()
            .unwrap(),
        "late S3 run",
    );
    let o = outcomes(&r);
    assert_eq!(total(&o, "computed"), 0, "{o:?}");
    assert_eq!(results(&p[0]), results(&r));
}
