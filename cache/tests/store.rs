//! Blob store, action cache, verify, gc, ls and the remote hook.

use c2i_cache::{
    ActionEntry, BlobProblem, BlobRef, CacheError, Digest, EntryProblem, GcPolicy, GcReason, Key,
    KeyBuilder, KeyParts, Lookup, MissReason, ObjectKind, RemoteBackend, Store,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("cache")).expect("open store");
    (dir, store)
}

/// Every regular file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).expect("prefix").display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn parts(stage: &str, n: u32) -> KeyParts {
    KeyBuilder::new(stage, "1")
        .param("n", n)
        .build()
        .expect("parts")
}

/// Stores `outputs` as blobs and an entry naming them.
fn put_action(store: &Store, p: &KeyParts, outputs: &[(&str, &[u8])]) -> ActionEntry {
    let mut map = BTreeMap::new();
    for (name, bytes) in outputs {
        map.insert(name.to_string(), store.put_bytes(bytes).expect("put blob"));
    }
    store
        .put_entry(p, map, serde_json::json!({"note": "test"}))
        .expect("put entry")
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

fn hours_ago(h: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600 * h)
}

#[test]
fn blob_round_trip_bytes_reader_file_and_empty() {
    let (dir, store) = store();
    let small = store.put_bytes(b"hello").expect("put");
    assert_eq!(small.digest, Digest::of(b"hello"));
    assert_eq!(small.size, 5);
    assert_eq!(&*store.get_blob(&small.digest).expect("get"), b"hello");

    // Streamed, several read chunks long.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = store.put_reader(io::Cursor::new(&big)).expect("put reader");
    assert_eq!(r.digest, Digest::of(&big));
    let b = store.get_blob_verified(&r.digest).expect("get verified");
    assert_eq!(b.len(), big.len());
    assert!(b[..] == big[..]);
    assert_eq!(b.path(), store.blob_path(&r.digest));

    // Empty blob: no memory map, still a valid handle.
    let e = store.put_reader(io::empty()).expect("put empty");
    assert_eq!(e.digest, Digest::of(b""));
    assert_eq!(
        store.get_blob_verified(&e.digest).expect("get empty").len(),
        0
    );
    assert_eq!(store.put_bytes(b"").expect("put empty bytes"), e);

    // From a file, and with the streaming writer.
    let src = dir.path().join("src.bin");
    fs::write(&src, b"file bytes").expect("write");
    assert_eq!(
        store.put_file(&src).expect("put file").digest,
        Digest::of(b"file bytes")
    );
    let mut w = store.blob_writer().expect("writer");
    w.write_all(b"file ").expect("write");
    w.write_all(b"bytes").expect("write");
    assert_eq!(w.len(), 10);
    assert_eq!(
        w.finish().expect("finish").digest,
        Digest::of(b"file bytes")
    );

    // Layout: blobs/<2>/<62>, plus the LAYOUT marker; no temporary files left.
    let hex = small.digest.to_hex();
    assert!(store
        .root()
        .join("blobs")
        .join(&hex[..2])
        .join(&hex[2..])
        .is_file());
    let files = files_under(store.root());
    assert!(files.iter().all(|f| !f.contains(".tmp.")), "{files:?}");
    assert!(files.contains(&"LAYOUT".to_string()));
}

#[test]
fn missing_blob_is_an_error_naming_the_path() {
    let (_d, store) = store();
    let d = Digest::of(b"nope");
    match store.get_blob(&d) {
        Err(CacheError::MissingBlob { digest, path }) => {
            assert_eq!(digest, d);
            assert_eq!(path, store.blob_path(&d));
        }
        other => panic!("expected MissingBlob, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn blobs_are_create_only_first_writer_wins() {
    use std::os::unix::fs::MetadataExt;
    let (_d, store) = store();
    let a = store.put_bytes(b"same").expect("put");
    let path = store.blob_path(&a.digest);
    let ino = fs::metadata(&path).expect("stat").ino();
    let b = store.put_bytes(b"same").expect("put again");
    let c = store.put_reader(&b"same"[..]).expect("put streamed");
    assert_eq!((a, a), (b, c));
    assert_eq!(
        fs::metadata(&path).expect("stat").ino(),
        ino,
        "file was replaced"
    );
}

#[test]
fn a_damaged_existing_blob_is_replaced_on_put() {
    let (_d, store) = store();
    let a = store.put_bytes(b"0123456789").expect("put");
    let path = store.blob_path(&a.digest);
    fs::write(&path, b"0123").expect("truncate");
    store.put_bytes(b"0123456789").expect("put again");
    assert_eq!(fs::read(&path).expect("read"), b"0123456789");
    fs::write(&path, b"01").expect("truncate");
    store.put_reader(&b"0123456789"[..]).expect("put streamed");
    assert_eq!(fs::read(&path).expect("read"), b"0123456789");
}

/// Yields `ok` bytes, then fails: a crash of the producer mid-write.
struct FailingReader {
    ok: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::other("producer died"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(7);
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn a_failed_write_leaves_no_partial_or_temporary_file() {
    let (_d, store) = store();
    let before = files_under(store.root());
    let err = store
        .put_reader(FailingReader { ok: 2_500_000 })
        .expect_err("must fail");
    assert!(matches!(err, CacheError::Source { .. }), "{err}");
    assert_eq!(files_under(store.root()), before);

    // A writer dropped without finish: same.
    let mut w = store.blob_writer().expect("writer");
    w.append(&[1u8; 1000]).expect("append");
    drop(w);
    assert_eq!(files_under(store.root()), before);
    assert!(store.ls().expect("ls").blob_count == 0);
}

#[test]
fn verified_read_reports_path_expected_and_actual() {
    let (_d, store) = store();
    let a = store.put_bytes(b"payload!").expect("put");
    let path = store.blob_path(&a.digest);
    fs::write(&path, b"payloaX!").expect("corrupt");
    assert_eq!(
        &*store.get_blob(&a.digest).expect("unverified get"),
        b"payloaX!"
    );
    match store.get_blob_verified(&a.digest) {
        Err(CacheError::CorruptBlob {
            path: p,
            expected,
            actual,
        }) => {
            assert_eq!(p, path);
            assert_eq!(expected, a.digest);
            assert_eq!(actual, Digest::of(b"payloaX!"));
        }
        other => panic!("expected CorruptBlob, got {other:?}"),
    }
    fs::write(&path, b"pay").expect("truncate");
    assert!(matches!(
        store.get(&a, false),
        Err(CacheError::BlobSize {
            expected: 8,
            actual: 3,
            ..
        })
    ));
}

#[test]
fn entry_round_trip_and_hit() {
    let (_d, store) = store();
    let p = KeyBuilder::new("factors", "3")
        .param("blocks", 4)
        .input("weights", Digest::of(b"w"))
        .env("dtype", "f32")
        .build()
        .expect("parts");
    let key = p.key();
    assert_eq!(
        store.lookup(&key).expect("lookup"),
        Lookup::Miss(MissReason::NoEntry)
    );
    let written = put_action(&store, &p, &[("u", b"uuu"), ("v", b"vv"), ("empty", b"")]);
    assert_eq!(written.key, key);
    assert_eq!(written.total_bytes(), 5);
    let hit = store.lookup(&key).expect("lookup").hit().expect("hit");
    assert_eq!(hit, written);
    assert_eq!(hit.parts, p);
    assert_eq!(hit.metadata["note"], "test");
    let v = store.get(&hit.outputs["v"], true).expect("get v");
    assert_eq!(&*v, b"vv");
    assert!(store.entry_path(&key).is_file());
}

#[test]
fn entries_are_written_only_after_their_blobs() {
    let (_d, store) = store();
    let p = parts("s", 1);
    let ghost = BlobRef {
        digest: Digest::of(b"never stored"),
        size: 12,
    };
    let mut outputs = BTreeMap::new();
    outputs.insert("x".to_string(), ghost);
    match store.put_entry(&p, outputs.clone(), serde_json::Value::Null) {
        Err(CacheError::EntryOutputNotStored { output, path, .. }) => {
            assert_eq!(output, "x");
            assert_eq!(path, store.blob_path(&ghost.digest));
        }
        other => panic!("expected EntryOutputNotStored, got {other:?}"),
    }
    assert!(!store.entry_path(&p.key()).exists());
    // Wrong size is refused too.
    let real = store.put_bytes(b"never stored").expect("put");
    outputs.insert("x".into(), BlobRef { size: 99, ..real });
    assert!(store
        .put_entry(&p, outputs, serde_json::Value::Null)
        .is_err());
}

#[test]
fn missing_or_resized_blobs_and_damaged_entries_are_misses_with_reasons() {
    let (_d, store) = store();
    let p = parts("s", 1);
    let key = p.key();
    let e = put_action(&store, &p, &[("a", b"aaaa"), ("b", b"bbbb")]);
    let a_path = store.blob_path(&e.outputs["a"].digest);

    fs::write(&a_path, b"aa").expect("truncate");
    match store.lookup(&key).expect("lookup") {
        Lookup::Miss(MissReason::SizeMismatch {
            output,
            expected,
            actual,
            ..
        }) => assert_eq!((output.as_str(), expected, actual), ("a", 4, 2)),
        other => panic!("{other:?}"),
    }

    fs::remove_file(&a_path).expect("remove");
    match store.lookup(&key).expect("lookup") {
        Lookup::Miss(MissReason::MissingBlob { output, path, .. }) => {
            assert_eq!(output, "a");
            assert_eq!(path, a_path);
        }
        other => panic!("{other:?}"),
    }

    // Recompute: the incomplete entry is replaced.
    let again = put_action(&store, &p, &[("a", b"aaaa"), ("b", b"bbbb")]);
    assert!(store.lookup(&key).expect("lookup").is_hit());
    assert_eq!(again.outputs, e.outputs);

    // Flip one byte of the entry file.
    let epath = store.entry_path(&key);
    let mut bytes = fs::read(&epath).expect("read");
    bytes[3] ^= 1;
    fs::write(&epath, &bytes).expect("write");
    match store.lookup(&key).expect("lookup") {
        Lookup::Miss(MissReason::UnreadableEntry { path, error }) => {
            assert_eq!(path, epath);
            assert!(error.contains("checksum"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.read_entry(&key),
        Err(CacheError::CorruptEntry { .. })
    ));
    // An empty entry file, too.
    fs::write(&epath, b"").expect("write");
    assert!(matches!(
        store.lookup(&key).expect("lookup"),
        Lookup::Miss(MissReason::UnreadableEntry { .. })
    ));
    put_action(&store, &p, &[("a", b"aaaa"), ("b", b"bbbb")]);
    assert!(store.lookup(&key).expect("lookup").is_hit());
}

#[test]
fn an_entry_stored_under_the_wrong_key_is_a_miss() {
    let (_d, store) = store();
    let p1 = parts("s", 1);
    let p2 = parts("s", 2);
    put_action(&store, &p1, &[("a", b"a")]);
    fs::create_dir_all(store.entry_path(&p2.key()).parent().expect("parent")).expect("mkdir");
    fs::copy(store.entry_path(&p1.key()), store.entry_path(&p2.key())).expect("copy");
    assert!(matches!(
        store.lookup(&p2.key()).expect("lookup"),
        Lookup::Miss(MissReason::KeyMismatch { .. })
    ));
}

#[test]
fn a_valid_entry_is_kept_when_written_again() {
    let (_d, store) = store();
    let p = parts("s", 1);
    let first = put_action(&store, &p, &[("a", b"first")]);
    let second = put_action(&store, &p, &[("a", b"second")]);
    assert_eq!(second, first, "first writer wins");
}

#[test]
fn verify_detects_flipped_and_truncated_blobs_and_repair_removes_them() {
    let (_d, store) = store();
    let pf = parts("s", 1);
    let pt = parts("s", 2);
    let pok = parts("s", 3);
    let flipped = put_action(&store, &pf, &[("x", b"flip me please")]);
    let truncated = put_action(&store, &pt, &[("y", b"truncate me please")]);
    let good = put_action(&store, &pok, &[("z", b"leave me alone")]);
    let clean = store.verify(false).expect("verify");
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.blobs_checked, clean.entries_checked), (3, 3));

    let fx = flipped.outputs["x"].digest;
    let ty = truncated.outputs["y"].digest;
    let mut bytes = fs::read(store.blob_path(&fx)).expect("read");
    bytes[5] ^= 0x80;
    fs::write(store.blob_path(&fx), &bytes).expect("write");
    fs::write(store.blob_path(&ty), b"trunc").expect("write");

    let r = store.verify(false).expect("verify");
    assert!(!r.is_clean());
    assert_eq!(r.bad_blobs.len(), 2);
    let find = |d: Digest| {
        r.bad_blobs
            .iter()
            .find(|b| b.digest == d)
            .expect("reported")
    };
    assert!(matches!(
        find(fx).problem,
        BlobProblem::Corrupt { size: 14, .. }
    ));
    assert_eq!(
        find(ty).problem,
        BlobProblem::Truncated {
            expected_size: 18,
            actual_size: 5
        }
    );
    let bad_keys: BTreeSet<Key> = r.bad_entries.iter().filter_map(|e| e.key).collect();
    assert_eq!(bad_keys, [pf.key(), pt.key()].into_iter().collect());
    assert!(r
        .bad_entries
        .iter()
        .all(|e| matches!(e.problems[..], [EntryProblem::BadBlob { .. }])));
    assert!(r.removed_blobs.is_empty(), "no repair without the flag");
    assert!(store.blob_path(&fx).exists());

    let r = store.verify(true).expect("repair");
    assert_eq!(r.removed_blobs.len(), 2);
    assert_eq!(r.removed_entries.len(), 2);
    assert!(!store.blob_path(&fx).exists() && !store.blob_path(&ty).exists());
    assert!(store.verify(false).expect("verify").is_clean());
    assert_eq!(
        store.lookup(&pf.key()).expect("lookup"),
        Lookup::Miss(MissReason::NoEntry)
    );
    assert_eq!(store.lookup(&pok.key()).expect("lookup").hit(), Some(good));
    // The next run recomputes.
    put_action(&store, &pf, &[("x", b"flip me please")]);
    assert!(store.lookup(&pf.key()).expect("lookup").is_hit());
}

#[test]
fn verify_reports_dangling_and_unreadable_entries() {
    let (_d, store) = store();
    let p1 = parts("s", 1);
    let p2 = parts("s", 2);
    let e1 = put_action(&store, &p1, &[("a", b"aaa")]);
    put_action(&store, &p2, &[("b", b"bbb")]);
    fs::remove_file(store.blob_path(&e1.outputs["a"].digest)).expect("rm");
    fs::write(store.entry_path(&p2.key()), b"garbage").expect("write");
    let r = store.verify(false).expect("verify");
    assert!(r.bad_blobs.is_empty());
    assert_eq!(r.bad_entries.len(), 2);
    let by_key = |k: Key| {
        r.bad_entries
            .iter()
            .find(|e| e.key == Some(k))
            .expect("bad")
    };
    assert!(matches!(
        by_key(p1.key()).problems[..],
        [EntryProblem::MissingBlob { .. }]
    ));
    assert!(matches!(
        by_key(p2.key()).problems[..],
        [EntryProblem::Unreadable { .. }]
    ));
    let r = store.verify(true).expect("repair");
    assert_eq!(r.removed_entries.len(), 2);
    assert!(store.verify(false).expect("verify").is_clean());
}

fn no_grace() -> GcPolicy {
    GcPolicy {
        grace: Duration::ZERO,
        ..GcPolicy::default()
    }
}

#[test]
fn gc_keeps_referenced_blobs_and_removes_unreferenced() {
    let (_d, store) = store();
    let p1 = parts("s", 1);
    let p2 = parts("s", 2);
    let e1 = put_action(&store, &p1, &[("shared", b"shared"), ("own", b"only one")]);
    let e2 = put_action(&store, &p2, &[("shared", b"shared"), ("own", b"only two")]);
    let loose = store.put_bytes(b"no entry names me").expect("put");

    // Default grace: the fresh loose blob survives.
    let r = store.gc(&GcPolicy::default()).expect("gc");
    assert!(r.removed_blobs.is_empty() && r.removed_entries.is_empty());

    let r = store.gc(&no_grace()).expect("gc");
    assert_eq!(r.removed_blobs, vec![loose]);
    assert_eq!(r.freed_bytes, loose.size);
    assert_eq!(r.kept_entries, 2);
    assert!(store.lookup(&p1.key()).expect("lookup").is_hit());

    // Remove everything but p2: p1's own blob goes, the shared one stays.
    let policy = GcPolicy {
        pinned: [p2.key()].into_iter().collect(),
        remove_unpinned: true,
        ..no_grace()
    };
    let dry = store
        .gc(&GcPolicy {
            dry_run: true,
            ..policy.clone()
        })
        .expect("dry run");
    assert_eq!(dry.removed_entries.len(), 1);
    assert!(store.entry_path(&p1.key()).exists(), "dry run removed");
    let r = store.gc(&policy).expect("gc");
    assert_eq!(r.removed_entries.len(), 1);
    assert_eq!(r.removed_entries[0].key, Some(p1.key()));
    assert_eq!(r.removed_entries[0].reason, GcReason::NotPinned);
    assert_eq!(r.removed_blobs, vec![e1.outputs["own"]]);
    assert!(store.lookup(&p2.key()).expect("lookup").is_hit());
    for b in e2.outputs.values() {
        assert!(store.get(b, true).is_ok());
    }
    assert!(store.verify(false).expect("verify").is_clean());
    assert_eq!(store.ls().expect("ls").blob_count, 2);
}

#[test]
fn gc_keep_last_max_age_and_size_cap_follow_last_use() {
    let (_d, store) = store();
    let ps: Vec<KeyParts> = (0..5).map(|i| parts("s", i)).collect();
    for (i, p) in ps.iter().enumerate() {
        let bytes = vec![i as u8; 100];
        put_action(&store, p, &[("o", &bytes)]);
        // p0 used 50 h ago, p1 40 h ago, ..., p4 10 h ago.
        store.mark_used_at(&p.key(), hours_ago(50 - 10 * i as u64));
    }
    // A hit makes p0 the most recently used.
    assert!(store.lookup(&ps[0].key()).expect("lookup").is_hit());
    let ls = store.ls().expect("ls");
    assert_eq!(ls.entries[0].key, ps[0].key());
    assert_eq!(ls.entries[1].key, ps[4].key());

    let r = store
        .gc(&GcPolicy {
            max_age: Some(Duration::from_secs(45 * 3600)),
            ..no_grace()
        })
        .expect("gc");
    let removed: Vec<Option<Key>> = r.removed_entries.iter().map(|e| e.key).collect();
    assert_eq!(removed, Vec::<Option<Key>>::new(), "p0 was just used");

    let r = store
        .gc(&GcPolicy {
            max_age: Some(Duration::from_secs(35 * 3600)),
            ..no_grace()
        })
        .expect("gc");
    assert_eq!(r.removed_entries.len(), 1);
    assert_eq!(r.removed_entries[0].key, Some(ps[1].key()));
    assert_eq!(r.removed_entries[0].reason, GcReason::MaxAge);

    // Left: p0 (now), p4 (10 h), p3 (20 h), p2 (30 h). Pin p2, keep the 2 most recent others.
    let r = store
        .gc(&GcPolicy {
            keep_last: Some(2),
            pinned: [ps[2].key()].into_iter().collect(),
            ..no_grace()
        })
        .expect("gc");
    assert_eq!(r.removed_entries.len(), 1);
    assert_eq!(r.removed_entries[0].key, Some(ps[3].key()));
    assert_eq!(r.removed_entries[0].reason, GcReason::KeepLast);

    // Left: p0, p4, p2 (pinned), 100 bytes each. Cap at 250: evict the LRU unpinned (p4).
    let r = store
        .gc(&GcPolicy {
            max_total_bytes: Some(250),
            pinned: [ps[2].key()].into_iter().collect(),
            ..no_grace()
        })
        .expect("gc");
    assert_eq!(r.removed_entries.len(), 1);
    assert_eq!(r.removed_entries[0].key, Some(ps[4].key()));
    assert_eq!(r.removed_entries[0].reason, GcReason::MaxTotalBytes);
    assert_eq!(r.kept_bytes, 200);
    let ls = store.ls().expect("ls");
    assert_eq!(ls.entry_count, 2);
    assert_eq!(ls.blob_bytes, 200);
    assert_eq!(ls.referenced_bytes, 200);
}

#[test]
fn gc_removes_unreadable_entries_and_old_temp_files() {
    let (_d, store) = store();
    let p = parts("s", 1);
    put_action(&store, &p, &[("a", b"a")]);
    fs::write(store.entry_path(&p.key()), b"junk").expect("write");
    let tmp = store.root().join("blobs").join(".tmp.1.2.3");
    fs::write(&tmp, b"partial").expect("write");
    set_mtime(&tmp, hours_ago(2));
    let r = store.gc(&GcPolicy::default()).expect("gc");
    assert_eq!(r.removed_entries.len(), 1);
    assert_eq!(r.removed_entries[0].reason, GcReason::Unreadable);
    assert_eq!(r.removed_temp_files, vec![tmp.clone()]);
    assert!(!tmp.exists());
}

#[test]
fn ls_lists_entries_and_totals() {
    let (_d, store) = store();
    put_action(
        &store,
        &parts("factors", 1),
        &[("u", b"1234"), ("v", b"56")],
    );
    put_action(&store, &parts("scores", 1), &[("s", b"1234")]);
    let ls = store.ls().expect("ls");
    assert_eq!(ls.entry_count, 2);
    assert_eq!(ls.blob_count, 2);
    assert_eq!(ls.blob_bytes, 6);
    assert_eq!(ls.referenced_bytes, 6);
    let f = ls
        .entries
        .iter()
        .find(|e| e.stage == "factors")
        .expect("factors");
    assert_eq!((f.outputs, f.total_bytes), (2, 6));
    assert!(f.last_used_unix_ms >= f.created_unix_ms);
    let json = serde_json::to_value(&ls).expect("json");
    assert_eq!(json["entry_count"], 2);
}

#[test]
fn a_store_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("LAYOUT"), "c2i-cache layout 999\n").expect("write");
    match Store::open(dir.path()) {
        Err(CacheError::Layout { path, .. }) => assert_eq!(path, dir.path().join("LAYOUT")),
        other => panic!("{other:?}"),
    }
}

/// An in-memory remote, to show the hook is enough for push and pull.
#[derive(Default)]
struct MemRemote {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl RemoteBackend for MemRemote {
    fn describe(&self) -> String {
        "mem://test".into()
    }
    fn size(&self, kind: ObjectKind, id: &[u8; 32]) -> c2i_cache::Result<Option<u64>> {
        let objects = self.objects.lock().expect("lock");
        Ok(objects
            .get(&c2i_cache::object_name(kind, id))
            .map(|v| v.len() as u64))
    }
    fn upload(&self, kind: ObjectKind, id: &[u8; 32], src: &Path) -> c2i_cache::Result<bool> {
        let bytes = fs::read(src).map_err(|e| CacheError::Remote {
            backend: self.describe(),
            op: "read".into(),
            reason: e.to_string(),
        })?;
        let mut objects = self.objects.lock().expect("lock");
        let name = c2i_cache::object_name(kind, id);
        if objects.contains_key(&name) {
            return Ok(false);
        }
        objects.insert(name, bytes);
        Ok(true)
    }
    fn replace(&self, kind: ObjectKind, id: &[u8; 32], src: &Path) -> c2i_cache::Result<()> {
        let bytes = fs::read(src).map_err(|e| CacheError::Remote {
            backend: self.describe(),
            op: "read".into(),
            reason: e.to_string(),
        })?;
        let mut objects = self.objects.lock().expect("lock");
        objects.insert(c2i_cache::object_name(kind, id), bytes);
        Ok(())
    }
    fn list(&self, _kind: ObjectKind) -> c2i_cache::Result<Vec<[u8; 32]>> {
        Ok(Vec::new())
    }
    fn download(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        dst: &mut dyn Write,
    ) -> c2i_cache::Result<bool> {
        let objects = self.objects.lock().expect("lock");
        match objects.get(&c2i_cache::object_name(kind, id)) {
            None => Ok(false),
            Some(bytes) => {
                dst.write_all(bytes).map_err(|e| CacheError::Remote {
                    backend: "mem://test".into(),
                    op: "write".into(),
                    reason: e.to_string(),
                })?;
                Ok(true)
            }
        }
    }
}

#[test]
fn push_and_pull_through_the_remote_hook_verify_blobs() {
    let (_d1, a) = store();
    let (_d2, b) = store();
    let remote = MemRemote::default();
    let p = parts("factors", 7);
    let e = put_action(&a, &p, &[("u", b"uuuu"), ("v", b"vvvv")]);
    let pushed = a.push(&p.key(), &remote).expect("push");
    assert_eq!(pushed.uploaded_blobs.len(), 2);
    assert_eq!(
        a.push(&p.key(), &remote).expect("push").present_blobs.len(),
        2
    );

    let got = b.pull(&p.key(), &remote).expect("pull").hit().expect("hit");
    assert_eq!(got, e);
    assert!(b.verify(false).expect("verify").is_clean());
    assert_eq!(
        b.pull(&parts("factors", 8).key(), &remote).expect("pull"),
        Lookup::Miss(MissReason::NoEntry)
    );

    // A blob damaged on the remote is rejected and not stored.
    let (_d3, c) = store();
    let u = e.outputs["u"].digest;
    remote.objects.lock().expect("lock").insert(
        c2i_cache::object_name(ObjectKind::Blob, u.as_bytes()),
        b"uuuX".to_vec(),
    );
    match c.pull(&p.key(), &remote) {
        Err(CacheError::CorruptBlob { expected, .. }) => assert_eq!(expected, u),
        other => panic!("{other:?}"),
    }
    assert!(c.blob_size(&u).expect("stat").is_none());
    assert!(!c.entry_path(&p.key()).exists());
}
