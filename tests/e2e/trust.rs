//! A cache you can trust (issue 16), on copies of the reference run's cache and of its
//! signed shared-directory remote: forged entries, a poisoned upstream, read-only
//! readers, the collapse threshold on a warm run, a crash in the middle of an export,
//! oversized remote objects under a 1 GiB address-space limit, an S3 signature error
//! that echoes credentials, gc on a directory that is not a cache, invalid cached
//! metadata, and lock files that do not depend on the number of threads.

use crate::support::fixture::{
    self, c2i, figures, key_of, link_dir, ok, outcome, read_json, run, run_json, write,
};
use crate::support::{moto, tiny};
use c2i_cache::{BlobRef, Key, ObjectKind, PutEntry, Store};
use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Rewrites the entry `key` of the store at `dir` (as an attacker with write access
/// would: unsigned), changing its metadata and outputs with `f`.
fn forge(
    dir: &Path,
    key: &str,
    f: impl FnOnce(&Store, &mut Value, &mut BTreeMap<String, BlobRef>),
) {
    let store = Store::open_existing(dir).unwrap();
    let e = store
        .read_entry(&Key::from_hex(key).unwrap())
        .unwrap()
        .unwrap();
    let (mut meta, mut outs) = (e.metadata.clone(), e.outputs.clone());
    f(&store, &mut meta, &mut outs);
    store
        .put_entry_with(
            &e.parts,
            outs,
            meta,
            &PutEntry {
                signer: None,
                replace: true,
            },
        )
        .unwrap();
}

/// Every file under `dir` with its size and mtime.
fn snapshot(dir: &Path) -> BTreeSet<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

fn stage_keys(run: &Value) -> BTreeSet<String> {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

/// Rewrites every selection round of candidate `c`'s evaluation (in the store at
/// `dir`) to say that every row was answered right: its records and its figures.
fn forge_all_correct(dir: &Path, rj: &Value, c: &Value) -> Vec<String> {
    let prefix = candidate_instance(c, "Selection round ");
    let keys: Vec<String> = rj["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["stage"] == "evaluate" && s["instance"].as_str().unwrap().starts_with(&prefix)
        })
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    assert!(!keys.is_empty(), "no rounds of {prefix}");
    for key in &keys {
        forge(dir, key, |store, meta, outs| {
            let blob = store.get(&outs["records"], false).unwrap();
            let mut records: Value = serde_json::from_slice(blob.bytes()).unwrap();
            for r in records.as_array_mut().unwrap() {
                let gold = r["gold"]["index"].clone();
                r["prediction"]["index"] = gold;
                r["correct"] = true.into();
            }
            let b = store
                .put_bytes(&serde_json::to_vec(&records).unwrap())
                .unwrap();
            outs.insert("records".into(), b);
            meta["selection"]["accuracy"] = 1.0.into();
            meta["metrics"]["accuracy"] = 1.0.into();
        });
    }
    keys
}

fn candidate_instance(c: &Value, rows: &str) -> String {
    format!(
        "{} K={} keep={}, {rows}",
        c["matrix"].as_str().unwrap(),
        c["blocks"],
        c["keep"]
    )
}

#[test]
fn forged_entries_are_untrusted_and_a_reader_that_does_not_push_writes_nothing() {
    let r = fixture::reference();
    let rj = run_json(&r.pipeline);
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    link_dir(&r.remote, &remote);

    // Forge a losing candidate's evaluation to accuracy 1.0, and the matrix digests
    // so that layer 29's up_proj is said to have gate_proj's content (same shape):
    // its factors key would then name gate_proj's valid factors.
    let best = &r.report["best"];
    let loser = r.report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["keep"] != best["keep"]
                || c["matrix"] != best["matrix"]
                || c["blocks"] != best["blocks"]
        })
        .unwrap();
    let eval_keys = forge_all_correct(&remote, &rj, loser);
    let p = write(
        &tmp.path().join("p"),
        &fixture::text(&format!("remote = \"{}\"", remote.display()), ""),
    );
    let untouched = snapshot(&remote);
    // Without trusted keys (today's behaviour) the forgery is pulled and wins.
    ok(
        run(
            &p,
            &tmp.path().join("plain"),
            &["--no-push", "--set", "output.dense=false"],
        ),
        "unauthenticated reader",
    );
    let plain = tiny::read_report(&p);
    // push = false: this reader computed the forged winner's held-out evaluation,
    // which the remote lacks, and wrote nothing there.
    assert_eq!(
        snapshot(&remote),
        untouched,
        "a --no-push reader wrote to the remote"
    );
    assert_eq!(
        plain["best"]["selection"]["accuracy"], 1.0,
        "{}",
        plain["best"]
    );
    // Only the forged winner's held-out evaluation was new.
    assert!(outcome(&run_json(&p), "evaluate", "computed") <= 1);

    // The matrix digests now say layer 29's up_proj has gate_proj's content (same
    // shape), so its factors key names gate_proj's valid, signed factors.
    let md_key = rj["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "matrix-digests")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    forge(&remote, &md_key, |store, _, outs| {
        let blob = store.get(&outs["digests"], true).unwrap();
        let mut map: BTreeMap<String, Value> = serde_json::from_slice(blob.bytes()).unwrap();
        let gate = map["model.layers.29.mlp.gate_proj.weight"].clone();
        map.insert("model.layers.29.mlp.up_proj.weight".into(), gate);
        let forged = store.put_bytes(&serde_json::to_vec(&map).unwrap()).unwrap();
        outs.insert("digests".into(), forged);
    });
    ok(
        run(
            &p,
            &tmp.path().join("plain2"),
            &["--no-push", "--until", "factors"],
        ),
        "unauthenticated reader, up to the factors",
    );
    let pj = run_json(&p);
    for k in [1, 2] {
        assert_eq!(
            key_of(
                &pj,
                "factors",
                &format!("model.layers.29.mlp.up_proj.weight K={k}")
            ),
            key_of(
                &rj,
                "factors",
                &format!("model.layers.29.mlp.gate_proj.weight K={k}")
            ),
            "the forged digests did not redirect the factors"
        );
    }
    let v = ok(
        {
            let mut c = c2i();
            c.args(["cache", "verify", "--remote"]).arg(&remote);
            c
        },
        "verify --remote",
    );
    assert!(String::from_utf8_lossy(&v.stdout).contains("UNAUTHENTICATED"));
    let before = snapshot(&remote);

    // With the writer's public key trusted: both forgeries are `remote-untrusted`,
    // computed here, every signed entry is `pulled`, and the report is the clean one.
    // (Not --quiet: the warnings are part of what is checked.)
    let mut cmd = c2i();
    cmd.arg("run")
        .arg(&p)
        .arg("--cache")
        .arg(tmp.path().join("trusted"))
        .args(["--no-push", "--set", "output.dense=false"])
        .env("C2I_TRUSTED_KEYS", &r.public_key);
    let out = ok(cmd, "trusted reader");
    let trusted = run_json(&p);
    assert_eq!(figures(&tiny::read_report(&p)), figures(&r.report));
    let untrusted: Vec<String> = trusted["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "remote-untrusted")
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    let forged: BTreeSet<&String> = eval_keys.iter().chain([&md_key]).collect();
    assert_eq!(
        untrusted.iter().collect::<BTreeSet<_>>(),
        forged,
        "{trusted}"
    );
    let total: usize = trusted["stages"].as_array().unwrap().len();
    let pulled = trusted["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "pulled")
        .count();
    assert_eq!(pulled, total - forged.len(), "{trusted}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not signed"), "{err}");
    assert_eq!(trusted["remote"]["authenticated"], true);

    // push = false: the remote is exactly as it was, though the readers computed.
    assert_eq!(
        snapshot(&remote),
        before,
        "a --no-push reader wrote to the remote"
    );

    // verify --remote with the key names exactly the two forgeries.
    let mut c = c2i();
    c.args(["--json", "cache", "verify", "--remote"])
        .arg(&remote)
        .args(["--trusted-keys", &r.public_key]);
    let v = c.output().unwrap();
    assert!(!v.status.success());
    let rep: Value = serde_json::from_slice(&v.stdout).unwrap();
    let named: BTreeSet<&str> = rep["untrusted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(named, forged.iter().map(|k| k.as_str()).collect(), "{rep}");
}

#[test]
fn a_poisoned_upstream_removed_from_the_remote_leaves_nothing_a_clean_run_would_hit() {
    let r = fixture::reference();
    let rj = run_json(&r.pipeline);
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    link_dir(&r.remote, &remote);
    // The factors entry of layer 29's up_proj (K=2: the reference's candidates) now
    // names gate_proj's valid factors blob (same shape).
    let target = key_of(&rj, "factors", "model.layers.29.mlp.up_proj.weight K=2");
    let other = key_of(&rj, "factors", "model.layers.29.mlp.gate_proj.weight K=2");
    let store = Store::open_existing(&remote).unwrap();
    let other_blob = store
        .read_entry(&Key::from_hex(&other).unwrap())
        .unwrap()
        .unwrap()
        .outputs["factors"];
    forge(&remote, &target, |_, _, outs| {
        outs.insert("factors".into(), other_blob);
    });
    // Planted before anyone computed what depends on it: the entries downstream of
    // those factors (their sv-grads, the evaluations of their candidates) are not on
    // the remote yet.
    for s in rj["stages"].as_array().unwrap() {
        let inst = s["instance"].as_str().unwrap();
        let downstream = (s["stage"] == "sv-grads"
            && inst == "model.layers.29.mlp.up_proj.weight K=2")
            || (s["stage"] == "evaluate"
                && inst.starts_with("model.layers.29.mlp.up_proj.weight K=2 keep="));
        if downstream {
            let key = Key::from_hex(s["key"].as_str().unwrap()).unwrap();
            std::fs::remove_file(
                remote.join(c2i_cache::object_name(ObjectKind::Action, key.as_bytes())),
            )
            .unwrap();
        }
    }

    // A victim without trusted keys uses it and pushes what it computed from it.
    let p = write(
        &tmp.path().join("p"),
        &fixture::text(&format!("remote = \"{}\"", remote.display()), ""),
    );
    ok(
        run(
            &p,
            &tmp.path().join("victim"),
            &["--set", "output.dense=false"],
        ),
        "victim run",
    );
    let victim = run_json(&p);
    let computed: BTreeSet<String> = victim["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] != "pulled" && s["outcome"] != "hit")
        .map(|s| s["key"].as_str().unwrap().to_string())
        .collect();
    assert!(
        outcome(&victim, "sv-grads", "computed") >= 1,
        "the poison was not used: {victim}"
    );

    // The poison is removed; a clean run on an empty cache hits none of the victim's
    // results and finds the clean figures.
    std::fs::remove_file(remote.join(c2i_cache::object_name(
        ObjectKind::Action,
        Key::from_hex(&target).unwrap().as_bytes(),
    )))
    .unwrap();
    ok(
        run(
            &p,
            &tmp.path().join("clean"),
            &["--no-push", "--set", "output.dense=false"],
        ),
        "clean run",
    );
    let clean = run_json(&p);
    let hit: BTreeSet<String> = stage_keys(&clean);
    let shared: Vec<&String> = computed.intersection(&hit).collect();
    assert!(
        shared.is_empty(),
        "a clean run used results computed from the poison: {shared:?}"
    );
    assert_eq!(figures(&tiny::read_report(&p)), figures(&r.report));
}

#[test]
fn a_changed_collapse_threshold_changes_the_flags_on_a_warm_run() {
    let r = fixture::reference();
    let collapsed = |rep: &Value| -> usize {
        rep["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["selection"]["metrics"]["collapsed"] == true)
            .count()
    };
    assert!(
        collapsed(&r.report) > 0,
        "the reference has no collapsed candidate"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    link_dir(&r.cache, &cache);
    let p = write(&tmp.path().join("p"), &fixture::text("", ""));
    ok(
        run(
            &p,
            &cache,
            &[
                "--set",
                "search.collapse_threshold=1.0",
                "--set",
                "output.dense=false",
            ],
        ),
        "warm run with another threshold",
    );
    let rj = run_json(&p);
    for stage in ["gradients", "factors", "sv-grads", "evaluate"] {
        assert_eq!(outcome(&rj, stage, "computed"), 0, "{stage}: {rj}");
    }
    let rep = tiny::read_report(&p);
    assert_eq!(collapsed(&rep), 0, "{}", rep["candidates"]);
    assert_eq!(
        rep["candidates"][0]["selection"]["metrics"]["collapse_threshold"],
        1.0
    );
    assert!(
        !std::fs::read_to_string(p.parent().unwrap().join("out/report.md"))
            .unwrap()
            .contains("**COLLAPSED**")
    );
}

/// model.safetensors' c2i metadata, and the stamp's record of what it was made of.
fn export_state(model_dir: &Path) -> (BTreeMap<String, String>, Option<Value>) {
    let bytes = std::fs::read(model_dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta: BTreeMap<String, String> =
        serde_json::from_value(header["__metadata__"].clone()).unwrap();
    let stamp = std::fs::read(model_dir.join("c2i-export.json"))
        .ok()
        .map(|b| serde_json::from_slice::<Value>(&b).unwrap());
    (meta, stamp)
}

fn agree(meta: &BTreeMap<String, String>, stamp: &Value) -> bool {
    let made = &stamp["made_of"];
    made["matrix"].as_str() == meta.get("c2i_replaced").map(String::as_str)
        && made["keep"].as_f64().map(|k| k.to_string()) == meta.get("c2i_keep").cloned()
}

#[test]
fn a_crash_between_the_model_and_its_stamp_never_leaves_a_stamp_that_disagrees() {
    let r = fixture::reference();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    link_dir(&r.cache, &cache);
    let p = write(&tmp.path().join("p"), &fixture::text("", ""));
    let model_dir = p.parent().unwrap().join("out/model");
    ok(run(&p, &cache, &[]), "first export");
    let (meta, stamp) = export_state(&model_dir);
    assert!(agree(&meta, stamp.as_ref().unwrap()), "{meta:?} {stamp:?}");
    // Another winner (other rho), and the process dies right after model.safetensors.
    let mut cmd = run(&p, &cache, &["--set", "search.keep=[0.3]"]);
    cmd.env("C2I_CRASH_AT", "export-after-model");
    let out = cmd.output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (meta2, stamp2) = export_state(&model_dir);
    assert_eq!(
        meta2["c2i_keep"], "0.3",
        "the crash came before the new model was written"
    );
    if let Some(s) = &stamp2 {
        assert!(
            agree(&meta2, s),
            "a stamp vouches for another model: {s} vs {meta2:?}"
        );
    }
    // The next run writes the rest, and the stamp again matches.
    ok(
        run(&p, &cache, &["--set", "search.keep=[0.3]"]),
        "export after the crash",
    );
    let (meta3, stamp3) = export_state(&model_dir);
    assert!(agree(&meta3, stamp3.as_ref().unwrap()));
}

#[test]
fn invalid_cached_metadata_is_a_miss_that_recomputes() {
    let r = fixture::reference();
    let rj = run_json(&r.pipeline);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    link_dir(&r.cache, &cache);
    // A NaN log-loss, as serde_json stores it: null.
    let key = key_of(&rj, "evaluate", "base model, Selection round 1/4");
    forge(&cache, &key, |_, meta, _| {
        meta["log_loss"] = Value::Null;
        meta["selection"]["log_loss"] = Value::Null;
    });
    let p = write(&tmp.path().join("p"), &fixture::text("", ""));
    ok(
        run(&p, &cache, &["--set", "output.dense=false"]),
        "run on a cache with invalid metadata",
    );
    let after = run_json(&p);
    let rec = after["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap()
        .clone();
    assert_eq!(rec["outcome"], "computed", "{rec}");
    assert!(rec["note"].as_str().unwrap().contains("unusable"), "{rec}");
    assert_eq!(figures(&tiny::read_report(&p)), figures(&r.report));
}

#[test]
fn an_s3_signature_error_never_shows_the_credentials() {
    let r = fixture::reference();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    link_dir(&r.cache, &cache);
    let server = moto::Echo403::start();
    let (key_id, token) = ("AKIASENTINEL7KEYID42", "SENTINEL-SESSION-TOKEN-8c1f2e");
    let p = write(&tmp.path().join("p"), &fixture::text("", ""));
    // A new K: its factors are not cached, so the run asks the remote, which refuses.
    // Not --quiet: the warning must be shown, without the credentials.
    let mut cmd = c2i();
    cmd.arg("run").arg(&p).arg("--cache").arg(&cache).args([
        "--set",
        "search.blocks=[3]",
        "--until",
        "factors",
        "--remote",
        "s3://bucket/team",
    ]);
    cmd.env_remove("AWS_PROFILE")
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", "sentinel-secret-never-sent")
        .env("AWS_SESSION_TOKEN", token)
        .env("AWS_REGION", "us-east-1");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let dir = p.parent().unwrap().join("out");
    let run_text = std::fs::read_to_string(dir.join("run.json")).unwrap();
    let report_text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    let status = read_json(&dir.join("run.json"))["remote"]["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(status.contains("SignatureDoesNotMatch"), "{status}");
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");
    for (what, text) in [
        ("stderr", &err),
        ("run.json", &run_text),
        ("report.json", &report_text),
    ] {
        for s in [key_id, token] {
            assert!(!text.contains(s), "{what} shows {s}:\n{text}");
        }
    }
}

#[test]
fn gc_and_push_refuse_a_directory_that_is_not_a_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("not-a-cache");
    let blob = dir.join("blobs/ab").join("c".repeat(62));
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, b"someone's file").unwrap();
    std::fs::write(dir.join("notes.txt"), b"keep me").unwrap();
    // Old enough for gc's grace period.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let before = snapshot(&dir);
    for args in [
        vec!["gc", "--keep-last", "0"],
        vec!["push", "--remote", "/nonexistent-remote-for-c2i-test"],
        vec!["verify", "--repair"],
    ] {
        let out = c2i()
            .args(["cache", "--cache"])
            .arg(&dir)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("not a c2i cache"), "{args:?}: {err}");
    }
    assert_eq!(snapshot(&dir), before, "files were touched");
    assert!(!dir.join("LAYOUT").exists());
}

#[test]
fn oversized_remote_objects_fail_cleanly_under_a_1_gib_address_space_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let rdir = tmp.path().join("remote");
    // A remote with two small entries, written through the cache's own API.
    let writer = Store::open(tmp.path().join("w")).unwrap();
    let remote = c2i_cache::ObjectStoreRemote::open(
        &c2i_cache::RemoteUrl::Dir(rdir.clone()),
        &c2i_cache::RemoteOptions::default(),
    )
    .unwrap();
    let mut keys = Vec::new();
    for i in 0..2u32 {
        let parts = c2i_cache::KeyBuilder::new("evaluate", "3")
            .param("i", i)
            .build()
            .unwrap();
        let b = writer.put_bytes(format!("records {i}").as_bytes()).unwrap();
        writer
            .put_entry(
                &parts,
                BTreeMap::from([("records".to_string(), b)]),
                serde_json::json!({}),
            )
            .unwrap();
        writer.push(&parts.key(), &remote).unwrap();
        keys.push((parts.key(), b));
    }
    // 8 GiB sparse files: one entry's blob behind its 9-byte declared size, and the
    // other entry itself.
    let sparse = |p: PathBuf| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_len(8 << 30)
            .unwrap()
    };
    sparse(rdir.join(c2i_cache::object_name(
        ObjectKind::Blob,
        keys[0].1.digest.as_bytes(),
    )));
    sparse(rdir.join(c2i_cache::object_name(
        ObjectKind::Action,
        keys[1].0.as_bytes(),
    )));
    let reader = tmp.path().join("r");
    let t = std::time::Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v 1048576 && ulimit -f 2097152 && exec '{}' --json cache --cache '{}' pull --remote '{}'",
            env!("CARGO_BIN_EXE_c2i"),
            reader.display(),
            rdir.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} {err}", out.status);
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rejected = rep["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{rep}");
    let text = rep.to_string();
    assert!(text.contains("more than the 9 bytes"), "{rep}");
    assert!(text.contains("larger than"), "{rep}");
    assert!(t.elapsed().as_secs() < 30, "took {:?}", t.elapsed());
    // Nothing of them was kept.
    let l = ok(
        {
            let mut c = c2i();
            c.args(["--json", "cache", "--cache"])
                .arg(&reader)
                .arg("ls");
            c
        },
        "ls",
    );
    let l: Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(l["entry_count"], 0, "{l}");
    assert_eq!(l["blob_bytes"], 0, "{l}");
}

#[test]
fn lock_files_do_not_depend_on_the_thread_count_and_frozen_runs_check_them() {
    let r = fixture::reference();
    let tmp = tempfile::tempdir().unwrap();
    let p = write(&tmp.path().join("p"), &fixture::text("", ""));
    let cache = tmp.path().join("cache");
    // One thread, empty cache; the reference used two.
    let mut cmd = run(&p, &cache, &[]);
    cmd.env("RAYON_NUM_THREADS", "1");
    ok(cmd, "one-thread run");
    let lock_path = p.with_extension("lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    assert_eq!(lock, r.lock, "the lock files of 1 and 2 threads differ");
    assert!(lock.contains("model/model.safetensors"), "{lock}");
    // A third run, --frozen: passes, and leaves the lock as it was.
    ok(run(&p, &cache, &["--frozen"]), "frozen run");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);
    // A variant (--set) writes no lock over the file's own: the batch size enters no
    // key, so this run is all cache hits, and only the lock file could differ.
    let mut variant = c2i();
    variant
        .arg("run")
        .arg(&p)
        .arg("--cache")
        .arg(&cache)
        .args(["--set", "run.eval_batch=3"]);
    let o = ok(variant, "variant run");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("left as it was (--set overrides"), "{said}");
    // A lock edited to another digest: --frozen names the stage and both digests.
    let (line, digest) = lock
        .lines()
        .find_map(|l| {
            l.strip_prefix("factors = \"")
                .map(|d| (l.to_string(), d.trim_end_matches('"').to_string()))
        })
        .expect("a factors output in the lock");
    let forged = "0".repeat(64);
    std::fs::write(
        &lock_path,
        lock.replacen(&line, &format!("factors = \"{forged}\""), 1),
    )
    .unwrap();
    let out = run(&p, &cache, &["--frozen"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for s in ["--frozen", "factors model.layers.", &digest, &forged] {
        assert!(err.contains(s), "the error does not say `{s}`:\n{err}");
    }
    // A plain run on a machine whose bytes differ from the lock (here: the forged
    // digest) leaves the lock as it was and says which output differs, so running a
    // shipped pipeline never dirties a clone silently; --update-lock replaces it.
    let forged_lock = std::fs::read_to_string(&lock_path).unwrap();
    let plain = |args: &[&str]| {
        let mut c = c2i();
        c.arg("run").arg(&p).arg("--cache").arg(&cache).args(args);
        c
    };
    let o = ok(plain(&[]), "plain run against a lock of other bytes");
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), forged_lock);
    for s in [
        "left as it was",
        "computed other bytes",
        &forged[..12],
        "--update-lock",
    ] {
        assert!(said.contains(s), "the run does not say `{s}`:\n{said}");
    }
    let o = ok(plain(&["--update-lock"]), "--update-lock run");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock);
    assert!(String::from_utf8_lossy(&o.stdout).contains("replaced"));
    // An unchanged run leaves the file alone (not even rewritten); --json says so.
    let mtime = std::fs::metadata(&lock_path).unwrap().modified().unwrap();
    let mut json = plain(&[]);
    json.arg("--json");
    let o = ok(json, "unchanged run");
    assert_eq!(
        std::fs::metadata(&lock_path).unwrap().modified().unwrap(),
        mtime
    );
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["lock_state"]["state"], "matches", "{j}");
    // A pipeline that no longer matches the lock fails before computing anything.
    std::fs::write(&lock_path, &lock).unwrap();
    let out = run(&p, &cache, &["--frozen", "--set", "search.keep=[0.2]"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no longer matches"), "{err}");
}

/// A GGUF file with the given metadata and no tensors (candle's writer).
fn gguf_header(kvs: &[(&str, GgufValue)]) -> Vec<u8> {
    let refs: Vec<(&str, &GgufValue)> = kvs.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut out, &refs, &[]).unwrap();
    out.into_inner()
}

#[test]
fn a_gguf_declaring_huge_sizes_fails_cleanly_under_a_1_gib_address_space_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("forged.gguf");
    let sizes = [
        ("llama.block_count", GgufValue::U64(1 << 32)),
        ("llama.context_length", GgufValue::U64(1 << 40)),
    ];
    for (which, forged) in sizes.into_iter().enumerate() {
        let mut kvs = vec![
            ("general.architecture", GgufValue::String("llama".into())),
            ("llama.block_count", GgufValue::U32(2)),
            ("llama.context_length", GgufValue::U32(2048)),
            ("llama.embedding_length", GgufValue::U32(64)),
            ("llama.vocab_size", GgufValue::U32(100)),
            ("llama.feed_forward_length", GgufValue::U32(128)),
            ("llama.attention.head_count", GgufValue::U32(4)),
            ("llama.attention.head_count_kv", GgufValue::U32(2)),
            ("llama.rope.freq_base", GgufValue::F32(10000.0)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                GgufValue::F32(1e-5),
            ),
        ];
        let key = forged.0;
        kvs.retain(|(k, _)| *k != key);
        kvs.push(forged);
        std::fs::write(&model, gguf_header(&kvs)).unwrap();
        let dir = tmp.path().join(format!("p{which}"));
        let text = tiny::pipeline_text(
            &model.display().to_string(),
            &tiny::epistemic_data(),
            (2, 2, 2),
            "[0]",
            "",
        );
        let p = tiny::write_pipeline_text(&dir, &text);
        let t = std::time::Instant::now();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -v 1048576 && exec '{}' run '{}' --cache '{}'",
                env!("CARGO_BIN_EXE_c2i"),
                p.display(),
                dir.join("cache").display()
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // An error naming the file, not a crash, an abort on allocation or a hang.
        assert_eq!(out.status.code(), Some(1), "{key}: {} {err}", out.status);
        assert!(err.contains("forged.gguf"), "{key}: {err}");
        assert!(t.elapsed().as_secs() < 60, "{key}: {:?}", t.elapsed());
        if key == "llama.block_count" {
            assert!(
                err.contains("num_hidden_layers") && err.contains("4294967296"),
                "{err}"
            );
        }
    }
}
