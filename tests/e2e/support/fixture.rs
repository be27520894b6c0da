//! One clean run of a tiny pipeline, shared by the tests that compare with it (the
//! executors, trust and lock-file tests), so that each of them pays only for what it
//! changes: the real SmolLM2 model, 4 calibration rows, 8 + 8 evaluation rows, the
//! three MLP matrices of layer 29 at K in {1, 2} and two rho values, top 2, with the
//! adapted model exported. The reference run computes everything on its own empty
//! cache with two threads, signs every entry with a fresh key and pushes to a
//! shared-directory remote, whose copies the trust tests then forge and poison.
//!
//! It lives under the target's temporary directory (`e2e-reference-PID`); a later test
//! process removes the directories of test processes that are gone.

#![allow(dead_code)]

use super::tiny;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The reference run.
pub struct Reference {
    pub dir: PathBuf,
    pub pipeline: PathBuf,
    pub cache: PathBuf,
    /// Its shared-directory remote: every entry signed by `key`.
    pub remote: PathBuf,
    /// The private key file that signed them, and its public key.
    pub key: PathBuf,
    pub public_key: String,
    pub report: Value,
    /// PIPELINE.lock as the run wrote it.
    pub lock: String,
    pub seconds: f64,
}

/// The pipeline, with `cache` lines for its `[cache]` table and `extra` tables.
pub fn text(cache: &str, extra: &str) -> String {
    format!(
        r#"
[model]
path = "smollm2"

[data]
task = "epistemic_reasoning"
path = "{data}"
calibration = {{ samples = 4, seed = 0 }}
evaluation  = {{ samples = 8, seed = 1 }}
heldout     = {{ samples = 8, seed = 2 }}

[search]
layers = [29]
top_k = 2
# The two best entries (not the defaults: two matrices at every K and keep) by the
# paper's rule: these tests are about the engine, and two candidates keep them fast.
select = "entries"
score = "negative-sv-grad"
blocks = [1, 2]
keep = [0.1, 0.5]
# Every candidate on every round: the trust tests forge and poison whole evaluations.
racing = "off"

[run]
micro_batch = 2
eval_batch = 4

[output]
dir = "out"
dense = true

[cache]
{cache}

{extra}
"#,
        data = tiny::epistemic_data().display()
    )
}

/// `c2i` with none of the environment that would change what a test asks for.
pub fn c2i() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_c2i"));
    for v in [
        "C2I_CACHE_REMOTE",
        "C2I_SIGNING_KEY",
        "C2I_TRUSTED_KEYS",
        "C2I_LOG",
        "RAYON_NUM_THREADS",
        "SLURM_CONF",
    ] {
        c.env_remove(v);
    }
    c
}

/// Runs `cmd`, panicking with its stderr unless it succeeds.
pub fn ok(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `c2i --quiet run PIPELINE --cache CACHE` plus `args`.
pub fn run(pipeline: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut c = c2i();
    c.args(["--quiet", "run"])
        .arg(pipeline)
        .arg("--cache")
        .arg(cache)
        .args(args);
    c
}

/// The run.json next to `pipeline` (output dir `out`).
pub fn run_json(pipeline: &Path) -> Value {
    read_json(&pipeline.parent().unwrap().join("out/run.json"))
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Stage -> outcome -> count, from run.json.
pub fn outcome(run: &Value, stage: &str, outcome: &str) -> u64 {
    run["outcomes"][stage][outcome].as_u64().unwrap_or(0)
}

/// What a report found: every score, the baseline, every candidate, the winner with
/// its held-out figures (timings removed).
pub fn figures(report: &Value) -> Value {
    let mut v = serde_json::json!({
        "scores": report["scores"],
        "baseline": report["baseline"],
        "candidates": report["candidates"],
        "best": report["best"],
    });
    tiny::strip_keys(&mut v, &["seconds"]);
    v
}

/// One copy of a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
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

/// Writes `text` as `dir/pipeline.toml`.
pub fn write(dir: &Path, text: &str) -> PathBuf {
    tiny::write_pipeline_text(dir, text)
}

fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("e2e-reference-") {
            if pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The reference run (made once per test process).
pub fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        sweep_stale(&base);
        let dir = base.join(format!("e2e-reference-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("ci.pem");
        let out = ok(
            {
                let mut c = c2i();
                c.args(["cache", "keygen", "--out"]).arg(&key);
                c
            },
            "c2i cache keygen",
        );
        let public_key = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(public_key.starts_with("ed25519:"), "{public_key}");
        let remote = dir.join("remote");
        let pipeline = write(
            &dir.join("p"),
            &text(
                &format!(
                    "remote = \"{}\"\nsigning_key = \"{}\"",
                    remote.display(),
                    key.display()
                ),
                "",
            ),
        );
        let cache = dir.join("cache");
        let t = std::time::Instant::now();
        let mut cmd = run(&pipeline, &cache, &[]);
        cmd.env("RAYON_NUM_THREADS", "2");
        ok(cmd, "the reference run");
        let seconds = t.elapsed().as_secs_f64();
        eprintln!("reference run (cold, local, 2 threads): {seconds:.1} s");
        let report = tiny::read_report(&pipeline);
        assert!(report["best"].is_object(), "{report}");
        let lock = std::fs::read_to_string(pipeline.with_extension("lock")).unwrap();
        Reference {
            dir,
            pipeline,
            cache,
            remote,
            key,
            public_key,
            report,
            lock,
            seconds,
        }
    })
}

/// A copy of a store's tree made of hard links: cheap, and safe because a store never
/// changes a file in place (blobs are immutable, entries and the stat cache are
/// replaced by rename). Never use it for a test that damages files in place.
pub fn link_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            link_dir(&e.path(), &dest);
        } else {
            std::fs::hard_link(e.path(), &dest).unwrap();
        }
    }
}

/// The key of the stage instance `instance` of `stage` in a run.json.
pub fn key_of(run: &Value, stage: &str, instance: &str) -> String {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == stage && r["instance"] == instance)
        .and_then(|r| r["key"].as_str())
        .unwrap_or_else(|| panic!("no {stage} {instance} in {run}"))
        .to_string()
}
