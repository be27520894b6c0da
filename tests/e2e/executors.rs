//! Stages as actions, run by other processes (issue 15): the `pool` executor (worker
//! processes on this machine) and the `slurm` executor on a real single-node Slurm
//! (installed with apt-get when missing, started and stopped by the test) find exactly
//! the figures of the local reference run, also when a running array task is
//! `scancel`ed and a worker is killed with `kill -9` (each is submitted again); an
//! action that fails by itself (a model with a NaN) ends the run with its log tail,
//! tried once; a worker of another c2i version refuses.

use crate::support::fixture::{self, c2i, figures, ok, run, run_json, write};
use crate::support::{slurm, tiny};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The stage records of a run.json.
fn records(run: &Value) -> Vec<Value> {
    run["stages"].as_array().cloned().unwrap_or_default()
}

/// Waits (up to `secs`) for a Slurm log in `dir` whose text contains `needle`; returns
/// its `JOB_TASK` name and its text.
fn wait_for_log(dir: &Path, needle: &str, secs: u64) -> Option<(String, String)> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(tag) = name.strip_suffix(".log") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    if text.contains(needle) {
                        return Some((tag.to_string(), text));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    None
}

/// The worker pid a Slurm log names (`worker pid N on HOST: ...`).
fn worker_pid(log: &str) -> Option<u32> {
    let rest = log.split("worker pid ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A copy of the c2i binary that says it is version 0.1.9: a worker of another c2i.
fn other_version_binary(dir: &Path) -> PathBuf {
    let mine = std::fs::read(env!("CARGO_BIN_EXE_c2i")).unwrap();
    let version = env!("CARGO_PKG_VERSION").as_bytes();
    assert_eq!(version, b"0.1.0", "the patch below assumes version 0.1.0");
    let mut bytes = mine.clone();
    let mut n = 0;
    let mut i = 0;
    while i + version.len() <= bytes.len() {
        if &bytes[i..i + version.len()] == version {
            bytes[i + version.len() - 1] = b'9';
            n += 1;
            i += version.len();
        } else {
            i += 1;
        }
    }
    assert!(n > 0);
    let path = dir.join("c2i-0.1.9");
    std::fs::write(&path, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let v = Command::new(&path).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "c2i 0.1.9");
    path
}

#[test]
fn pool_and_slurm_find_the_local_figures_and_slurm_survives_faults() {
    let reference = fixture::reference();
    let want = figures(&reference.report);
    let tmp = tempfile::tempdir().unwrap();

    // --- pool: two worker processes on this machine, sharing an empty cache ---
    let t = Instant::now();
    let p = write(&tmp.path().join("pool"), &fixture::text("", ""));
    ok(
        run(
            &p,
            &tmp.path().join("pool/cache"),
            &["--executor", "pool", "--jobs", "2"],
        ),
        "pool run",
    );
    let pool_secs = t.elapsed().as_secs_f64();
    assert_eq!(figures(&tiny::read_report(&p)), want, "pool figures differ");
    let rj = run_json(&p);
    assert_eq!(rj["executor"], "pool");
    let computed: Vec<Value> = records(&rj)
        .into_iter()
        .filter(|r| r["outcome"] == "computed")
        .collect();
    // 1 matrix-digests, 1 gradients, 6 factors, 6 sv-grads, and 14 evaluations: the base
    // model and 2 candidates in 4 racing rounds each, the base model's and the winner's
    // held-out evaluations.
    assert_eq!(computed.len(), 28, "{rj}");
    let mut pids: Vec<String> = computed
        .iter()
        .map(|r| {
            assert_eq!(r["executor"], "pool", "{r}");
            r["job"].as_str().unwrap().to_string()
        })
        .collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 2, "two workers shared the work: {pids:?}");

    // --- slurm, with a running array task cancelled and a worker killed ---
    let t = Instant::now();
    let cluster = slurm::Cluster::start();
    eprintln!("Slurm started in {:.1} s", t.elapsed().as_secs_f64());
    let remote = tmp.path().join("slurm/remote");
    let sp = write(
        &tmp.path().join("slurm"),
        &fixture::text(
            &format!("remote = \"{}\"", remote.display()),
            "[run.slurm]\npoll_secs = 0.2\nactions_per_task = 3",
        ),
    );
    let logs = tmp.path().join("slurm/out/slurm");
    let t = Instant::now();
    let mut cmd = run(
        &sp,
        &tmp.path().join("slurm/cache"),
        &["--executor", "slurm"],
    );
    cmd.envs(cluster.env()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // scancel the gradient pass's task while it runs.
    let (task, _) =
        wait_for_log(&logs, "gradients all matrices", 120).expect("no gradients task started");
    let out = cluster.cmd("scancel").arg(&task).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kill -9 the worker of an evaluation.
    let (etask, elog) =
        wait_for_log(&logs, "evaluate base model, Selection", 180).expect("no evaluation started");
    let pid = worker_pid(&elog).expect("worker pid in the log");
    let k = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let out = child.wait_with_output().unwrap();
    let slurm_secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "slurm run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        figures(&tiny::read_report(&sp)),
        want,
        "slurm figures differ"
    );
    let rj = run_json(&sp);
    assert_eq!(rj["executor"], "slurm");
    let again = |stage: &str| {
        records(&rj)
            .into_iter()
            .find(|r| r["stage"] == stage && r["attempts"] == 2)
            .unwrap_or_else(|| panic!("no {stage} computed on a second attempt: {rj}"))
    };
    let g = again("gradients");
    let e = again("evaluate");
    for r in [&g, &e] {
        assert_eq!(r["executor"], "slurm", "{r}");
        assert!(r["job"].as_str().unwrap().contains('_'), "{r}");
        assert!(!r["host"].as_str().unwrap().is_empty(), "{r}");
    }
    let resubmitted = rj["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["attempt"] == 2)
        .count();
    assert!(resubmitted >= 2, "{}", rj["jobs"]);
    eprintln!(
        "pool run {pool_secs:.1} s, slurm run {slurm_secs:.1} s (cancelled {task}, killed worker {pid} of {etask}), \
         reference (local) {:.1} s",
        reference.seconds
    );

    // --- an action that fails by itself: tried once, its log tail in the error ---
    let nan = tmp.path().join("nan-model");
    tiny::tiny_hf_dir(&nan, true);
    let text = fixture::text(
        &format!("remote = \"{}\"", tmp.path().join("nan/remote").display()),
        "[run.slurm]\npoll_secs = 0.2\nactions_per_task = 3",
    )
    .replace(
        "path = \"smollm2\"",
        &format!("path = \"{}\"", nan.display()),
    )
    .replace("layers = [29]", "layers = [0]");
    let np = write(&tmp.path().join("nan"), &text);
    let mut cmd = run(&np, &tmp.path().join("nan/cache"), &["--executor", "slurm"]);
    cmd.envs(cluster.env());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for s in [
        "NaN",
        "model.layers.0.mlp.up_proj.weight",
        "exit code 3",
        "not retried",
        "Last lines of",
    ] {
        assert!(err.contains(s), "the error does not say `{s}`:\n{err}");
    }
    let rj = run_json(&np);
    assert_eq!(
        rj["jobs"].as_array().unwrap().len(),
        1,
        "retried: {}",
        rj["jobs"]
    );
    assert!(rj["error"].as_str().unwrap().contains("NaN"), "{rj}");

    // --- a worker of another c2i version refuses ---
    let other = other_version_binary(tmp.path());
    let vp = write(
        &tmp.path().join("version"),
        &fixture::text(
            &format!(
                "remote = \"{}\"",
                tmp.path().join("version/remote").display()
            ),
            &format!(
                "[run.slurm]\npoll_secs = 0.2\nworker_command = \"{}\"",
                other.display()
            ),
        ),
    );
    let mut cmd = run(
        &vp,
        &tmp.path().join("version/cache"),
        &["--executor", "slurm"],
    );
    cmd.envs(cluster.env());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for s in [
        "c2i 0.1.9",
        "another environment",
        "c2i: 0.1.0 for the action, 0.1.9 here",
        "exit code 4",
    ] {
        assert!(err.contains(s), "the error does not say `{s}`:\n{err}");
    }
    assert_eq!(run_json(&vp)["jobs"].as_array().unwrap().len(), 1);
    // Nothing was computed by it.
    let ls = ok(
        {
            let mut c = c2i();
            c.args(["--json", "cache", "--cache"])
                .arg(tmp.path().join("version/cache"))
                .arg("ls");
            c
        },
        "cache ls",
    );
    let l: Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(l["entry_count"], 0, "{l}");

    // --- an interrupted coordinator cancels its jobs ---
    let ip = write(
        &tmp.path().join("interrupt"),
        &fixture::text(
            &format!(
                "remote = \"{}\"",
                tmp.path().join("interrupt/remote").display()
            ),
            "[run.slurm]\npoll_secs = 0.2",
        ),
    );
    let mut cmd = run(
        &ip,
        &tmp.path().join("interrupt/cache"),
        &["--executor", "slurm"],
    );
    cmd.envs(cluster.env()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_for_log(&tmp.path().join("interrupt/out/slurm"), "worker pid", 120)
        .expect("no task started");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted: cancelled Slurm job"), "{err}");
    let t = Instant::now();
    while !cluster.running().is_empty() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cluster.running().is_empty(),
        "still running: {:?}",
        cluster.running()
    );

    // --- a cache the nodes cannot reach is refused ---
    let mut cmd = run(&p, &tmp.path().join("local-only"), &["--executor", "slurm"]);
    cmd.envs(cluster.env());
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs a cache its workers can reach"), "{err}");
}
