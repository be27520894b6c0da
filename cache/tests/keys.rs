//! Content keys, the closest-entry explanation, and the stat cache.

use c2i_cache::{
    canonical_json, closest, CacheError, Digest, Key, KeyBuilder, KeyParts, PartChange, Store,
};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn base() -> KeyBuilder {
    KeyBuilder::new("factors", "2")
        .param("blocks", 4)
        .param("matrix", "model.layers.3.mlp.up_proj.weight")
        .param("opts", serde_json::json!({"b": [1, 2.5], "a": null}))
        .input("weights", Digest::of(b"weights"))
        .env("device", "cpu")
        .env("dtype", "f32")
}

#[test]
fn key_is_stable_across_runs() {
    let key = base().build().expect("parts").key();
    // Computed once from this exact builder; a change here changes every cached key.
    assert_eq!(
        key.to_hex(),
        "42748f6a87fb55cba77242480f122643d2206e8e4986bea6b5b761973895eda9"
    );
    let json = serde_json::to_string(&key).expect("json");
    assert_eq!(json, format!("\"{}\"", key.to_hex()));
    assert_eq!(serde_json::from_str::<Key>(&json).expect("parse"), key);
    assert_eq!(key.to_string().parse::<Key>().expect("parse"), key);
}

#[test]
fn key_ignores_field_order_and_json_key_order() {
    let a = base().build().expect("parts");
    let b = KeyBuilder::new("factors", "2")
        .env("dtype", "f32")
        .input("weights", Digest::of(b"weights"))
        .param("opts", serde_json::json!({"a": null, "b": [1, 2.5]}))
        .env("device", "cpu")
        .param("matrix", "model.layers.3.mlp.up_proj.weight")
        .param("blocks", 4)
        .build()
        .expect("parts");
    assert_eq!(a, b);
    assert_eq!(a.key(), b.key());
    assert_eq!(a.params["opts"], r#"{"a":null,"b":[1,2.5]}"#);
}

#[test]
fn key_changes_with_every_field() {
    let k0 = base().build().expect("parts").key();
    let variants: Vec<(&str, KeyParts)> = vec![
        ("stage", {
            let mut p = base().build().expect("parts");
            p.stage = "scores".into();
            p
        }),
        ("version", {
            let mut p = base().build().expect("parts");
            p.version = "3".into();
            p
        }),
        (
            "param value",
            base().param("rho", 0.1).build().expect("parts"),
        ),
        ("param int vs float", {
            let mut p = base().build().expect("parts");
            p.params.insert("blocks".into(), "4.0".into());
            p
        }),
        ("nested param", {
            let mut p = base().build().expect("parts");
            p.params
                .insert("opts".into(), r#"{"a":null,"b":[1,2.6]}"#.into());
            p
        }),
        ("input", {
            let mut p = base().build().expect("parts");
            p.inputs
                .insert("weights".into(), Digest::of(b"other").to_hex());
            p
        }),
        ("input name", {
            let mut p = base().build().expect("parts");
            let v = p.inputs.remove("weights").expect("present");
            p.inputs.insert("weights2".into(), v);
            p
        }),
        (
            "extra input",
            base()
                .input("gradients", Key::from_bytes([1; 32]))
                .build()
                .expect("parts"),
        ),
        ("env", {
            let mut p = base().build().expect("parts");
            p.env.insert("dtype".into(), "bf16".into());
            p
        }),
        (
            "extra env",
            base().env("candle", "0.11.1").build().expect("parts"),
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    seen.insert(k0);
    for (what, p) in variants {
        assert!(
            seen.insert(p.key()),
            "changing {what} did not change the key"
        );
    }
}

#[test]
fn fields_are_length_prefixed_and_grouped() {
    // Same concatenated text, different split: different keys.
    let a = KeyBuilder::new("s", "1")
        .env("ab", "c")
        .build()
        .expect("parts");
    let b = KeyBuilder::new("s", "1")
        .env("a", "bc")
        .build()
        .expect("parts");
    assert_ne!(a.key(), b.key());
    let c = KeyBuilder::new("s1", "").build().expect("parts");
    let d = KeyBuilder::new("s", "1").build().expect("parts");
    assert_ne!(c.key(), d.key());
    // Same name and value in another group: different keys.
    let e = KeyBuilder::new("s", "1")
        .env("x", "\"y\"")
        .build()
        .expect("parts");
    let f = KeyBuilder::new("s", "1")
        .param("x", "y")
        .build()
        .expect("parts");
    assert_eq!(e.env["x"], f.params["x"]);
    assert_ne!(e.key(), f.key());
}

#[test]
fn duplicate_fields_are_an_error() {
    let err = KeyBuilder::new("s", "1")
        .param("k", 1)
        .param("k", 2)
        .build()
        .expect_err("duplicate");
    assert!(
        matches!(err, CacheError::KeyField { ref stage, .. } if stage == "s"),
        "{err}"
    );
    assert!(err.to_string().contains("`k` given twice"), "{err}");
}

#[test]
fn canonical_json_sorts_nested_keys() {
    let v = serde_json::json!({"z": {"y": 1, "x": [ {"b": 1, "a": "é\"q"} ]}, "a": true});
    assert_eq!(
        canonical_json(&v),
        r#"{"a":true,"z":{"x":[{"a":"é\"q","b":1}],"y":1}}"#
    );
}

#[test]
fn closest_entry_lists_what_changed() {
    let weights = Digest::of(b"w");
    let mk = |k: u32, rho: f64, w: Digest, ver: &str| {
        KeyBuilder::new("scores", ver)
            .param("blocks", k)
            .param("rho", rho)
            .input("weights", w)
            .build()
            .expect("parts")
    };
    let cached = [
        mk(4, 0.1, weights, "1"),
        mk(8, 0.2, weights, "1"),
        mk(4, 0.2, Digest::of(b"old weights"), "0"),
    ];
    let other_stage = KeyBuilder::new("factors", "1").build().expect("parts");
    let new = mk(4, 0.2, weights, "1");
    let cands = cached
        .iter()
        .chain(std::iter::once(&other_stage))
        .map(|p| (p.key(), p));
    let best = closest(&new, cands).expect("a candidate");
    assert_eq!(best.key, cached[0].key());
    assert_eq!(
        best.changes,
        vec![PartChange::Param {
            name: "rho".into(),
            old: Some("0.1".into()),
            new: Some("0.2".into())
        }]
    );
    assert_eq!(best.changes[0].to_string(), "param rho: 0.1 -> 0.2");

    // Against the third alone: version and input changed.
    let third = closest(&new, [(cached[2].key(), &cached[2])]).expect("one");
    assert_eq!(third.changes.len(), 2);
    assert!(
        matches!(&third.changes[0], PartChange::Version { old, new } if old == "0" && new == "1")
    );
    assert!(matches!(&third.changes[1], PartChange::Input { name, .. } if name == "weights"));
    assert!(third.changes[1]
        .to_string()
        .starts_with("input weights changed"));

    // A parameter only on one side.
    let extra = KeyBuilder::new("scores", "1")
        .param("blocks", 4)
        .param("rho", 0.2)
        .param("rule", "first-order")
        .input("weights", weights)
        .build()
        .expect("parts");
    let d = closest(&extra, [(new.key(), &new)]).expect("one");
    assert_eq!(
        d.changes,
        vec![PartChange::Param {
            name: "rule".into(),
            old: None,
            new: Some("\"first-order\"".into())
        }]
    );
    assert!(closest(&new, [(other_stage.key(), &other_stage)]).is_none());
}

#[test]
fn store_finds_the_closest_cached_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let mk = |rho: f64| {
        KeyBuilder::new("evaluate", "1")
            .param("rho", rho)
            .build()
            .expect("parts")
    };
    for rho in [0.1, 0.5] {
        let b = store.put_bytes(format!("{rho}").as_bytes()).expect("put");
        let mut outputs = BTreeMap::new();
        outputs.insert("m".to_string(), b);
        store
            .put_entry(&mk(rho), outputs, serde_json::Value::Null)
            .expect("entry");
    }
    let why = store.closest_entry(&mk(0.2)).expect("scan").expect("found");
    assert_eq!(why.changes.len(), 1);
    let exact = store.closest_entry(&mk(0.5)).expect("scan").expect("found");
    assert!(exact.changes.is_empty());
    assert_eq!(exact.key, mk(0.5).key());
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

#[test]
fn stat_cache_skips_rehash_of_unchanged_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("cache")).expect("open");
    let file = dir.path().join("model.bin");
    fs::write(&file, b"weights v1").expect("write");
    let past = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&file, past);

    let mut sc = store.stat_cache();
    let d1 = sc.digest_file(&file).expect("digest");
    assert!(d1.rehashed);
    assert_eq!(d1.digest, Digest::of(b"weights v1"));
    assert_eq!(d1.size, 10);
    let d2 = sc.digest_file(&file).expect("digest");
    assert!(!d2.rehashed, "unchanged file was rehashed");
    assert_eq!(d2.digest, d1.digest);
    sc.save().expect("save");
    assert!(dir.path().join("cache/stat-cache.json").is_file());

    // A new process (reload) also trusts it; a relative path resolves the same.
    let mut sc = store.stat_cache();
    assert_eq!(sc.len(), 1);
    assert!(!sc.digest_file(&file).expect("digest").rehashed);

    // Same size, new content, mtime moved: rehash.
    fs::write(&file, b"weights v2").expect("write");
    set_mtime(&file, past + Duration::from_secs(1));
    let d3 = sc.digest_file(&file).expect("digest");
    assert!(d3.rehashed);
    assert_eq!(d3.digest, Digest::of(b"weights v2"));

    // Size change with the mtime put back: rehash.
    fs::write(&file, b"weights v2 longer").expect("write");
    set_mtime(&file, past + Duration::from_secs(1));
    assert!(sc.digest_file(&file).expect("digest").rehashed);
    assert!(!sc.digest_file(&file).expect("digest").rehashed);

    // Same size and mtime but a new inode (file replaced by rename): rehash.
    #[cfg(unix)]
    {
        let other = dir.path().join("new.bin");
        fs::write(&other, b"weights v3 longer").expect("write");
        set_mtime(&other, past + Duration::from_secs(1));
        fs::rename(&other, &file).expect("rename");
        let d = sc.digest_file(&file).expect("digest");
        assert!(d.rehashed);
        assert_eq!(d.digest, Digest::of(b"weights v3 longer"));
    }
    sc.save().expect("save");
}

#[test]
fn stat_cache_does_not_record_racy_files_and_survives_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("cache")).expect("open");
    let file = dir.path().join("fresh.bin");
    fs::write(&file, b"just written").expect("write");
    let mut sc = store.stat_cache();
    assert!(sc.digest_file(&file).expect("digest").rehashed);
    assert!(
        sc.digest_file(&file).expect("digest").rehashed,
        "a file modified just now must not be trusted by stat"
    );
    assert!(sc.is_empty());

    fs::write(dir.path().join("cache/stat-cache.json"), b"{not json").expect("write");
    let mut sc = store.stat_cache();
    assert!(sc.is_empty());
    let missing = sc
        .digest_file(&dir.path().join("absent"))
        .expect_err("missing");
    assert!(missing.is_not_found(), "{missing}");
}
