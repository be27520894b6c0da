//! Remote caches through `object_store`: a shared directory and a real S3 server
//! (moto, installed and started by the test itself). Push/pull round trips, first
//! writer wins, and damaged remote objects rejected.

#[path = "../../tests/e2e/support/moto.rs"]
mod moto;

use c2i_cache::{
    object_name, BlobRef, Key, KeyBuilder, KeyParts, ObjectKind, ObjectStoreRemote, RemoteBackend,
    RemoteOptions, RemoteUrl, Store,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An entry with two blobs of a few KiB (content depends on `i`).
fn put_entry(store: &Store, i: u32) -> (KeyParts, Vec<BlobRef>) {
    let parts = KeyBuilder::new("factors", "1")
        .param("i", i)
        .build()
        .unwrap();
    let a: Vec<u8> = (0..5000u32).map(|x| (x * 31 + i) as u8).collect();
    let b: Vec<u8> = format!("records of {i}").into_bytes();
    let ra = store.put_bytes(&a).unwrap();
    let rb = store.put_bytes(&b).unwrap();
    let outputs = BTreeMap::from([("a".to_string(), ra), ("b".to_string(), rb)]);
    store
        .put_entry(&parts, outputs, serde_json::json!({ "i": i }))
        .unwrap();
    (parts, vec![ra, rb])
}

fn dir_remote(dir: &Path) -> ObjectStoreRemote {
    ObjectStoreRemote::open(
        &RemoteUrl::Dir(dir.to_path_buf()),
        &RemoteOptions::default(),
    )
    .unwrap()
}

fn s3_remote(m: &moto::Moto, prefix: &str) -> ObjectStoreRemote {
    let opts = RemoteOptions {
        endpoint: Some(m.endpoint()),
        // moto listens on plain HTTP on 127.0.0.1.
        allow_http: true,
        s3_config: m.s3_config(),
        timeout: Duration::from_secs(30),
        ..RemoteOptions::default()
    };
    ObjectStoreRemote::open_str(&m.url(prefix), &opts).unwrap()
}

/// Push everything from one store, pull it into an empty one, check, push again.
fn round_trip(remote: &dyn RemoteBackend) {
    let tmp = tempfile::tempdir().unwrap();
    let a = Store::open(tmp.path().join("a")).unwrap();
    let keys: Vec<Key> = (0..4).map(|i| put_entry(&a, i).0.key()).collect();
    let pushed = a.push_all(remote).unwrap();
    assert_eq!(pushed.entries_uploaded, 4, "{pushed:?}");
    assert_eq!(pushed.blobs_uploaded, 8, "{pushed:?}");
    let again = a.push_all(remote).unwrap();
    assert_eq!(
        (
            again.entries_uploaded,
            again.entries_present,
            again.blobs_uploaded
        ),
        (0, 4, 0),
        "{again:?}"
    );

    let b = Store::open(tmp.path().join("b")).unwrap();
    let pulled = b.pull_all(remote, None).unwrap();
    assert_eq!(pulled.entries_listed, 4, "{pulled:?}");
    assert_eq!(pulled.entries_pulled, 4, "{pulled:?}");
    assert!(pulled.rejected.is_empty(), "{pulled:?}");
    for k in &keys {
        let e = b.lookup(k).unwrap().hit().expect("pulled entry is a hit");
        for r in e.outputs.values() {
            b.get(r, true).unwrap();
        }
    }
    assert!(b.verify(false).unwrap().is_clean());
    let again = b.pull_all(remote, None).unwrap();
    assert_eq!((again.entries_pulled, again.entries_present), (0, 4));
}

#[test]
fn shared_directory_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    round_trip(&dir_remote(&tmp.path().join("remote")));
    // A plain absolute path and file:// name the same remote.
    let url = format!("file://{}", tmp.path().join("remote").display());
    assert_eq!(
        RemoteUrl::parse(&url).unwrap(),
        RemoteUrl::Dir(tmp.path().join("remote"))
    );
    for bad in ["relative/dir", "ftp://x/y", "s3://"] {
        let e = RemoteUrl::parse(bad).unwrap_err();
        assert!(e.contains("expected"), "{bad}: {e}");
    }
}

/// Several writers push the same entry at once: all succeed, exactly one creates each
/// object, and the objects are intact.
fn first_writer_wins(remote: Arc<dyn RemoteBackend>) {
    let tmp = tempfile::tempdir().unwrap();
    let stores: Vec<Store> = (0..6)
        .map(|w| Store::open(tmp.path().join(format!("w{w}"))).unwrap())
        .collect();
    let mut key = None;
    for s in &stores {
        key = Some(put_entry(s, 99).0.key());
    }
    let key = key.unwrap();
    let handles: Vec<_> = stores
        .into_iter()
        .map(|s| {
            let r = remote.clone();
            std::thread::spawn(move || s.push(&key, r.as_ref()))
        })
        .collect();
    let reports: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("every writer succeeds"))
        .collect();
    let entries_created = reports.iter().filter(|r| r.entry_uploaded).count();
    let blobs_created: usize = reports.iter().map(|r| r.uploaded_blobs.len()).sum();
    assert_eq!(entries_created, 1, "{reports:?}");
    assert_eq!(blobs_created, 2, "{reports:?}");
    let fresh = Store::open(tmp.path().join("reader")).unwrap();
    assert!(fresh.pull(&key, remote.as_ref()).unwrap().is_hit());

    // Create-only at the object level: a second upload under a taken name is a
    // success that changes nothing.
    let f1 = tmp.path().join("one");
    let f2 = tmp.path().join("two");
    std::fs::write(&f1, b"first").unwrap();
    std::fs::write(&f2, b"second writer").unwrap();
    let id = [7u8; 32];
    assert!(remote.upload(ObjectKind::Blob, &id, &f1).unwrap());
    assert!(!remote.upload(ObjectKind::Blob, &id, &f2).unwrap());
    let mut got = Vec::new();
    assert!(remote.download(ObjectKind::Blob, &id, &mut got).unwrap());
    assert_eq!(got, b"first");
}

#[test]
fn shared_directory_first_writer_wins() {
    let tmp = tempfile::tempdir().unwrap();
    first_writer_wins(Arc::new(dir_remote(&tmp.path().join("remote"))));
}

#[test]
fn s3_round_trip_first_writer_wins_and_unreachable() {
    let started = Instant::now();
    let m = moto::Moto::start("c2i-cache-test");
    eprintln!("moto up in {:.1} s", started.elapsed().as_secs_f64());
    round_trip(&s3_remote(&m, "team/cache"));
    // moto honours If-None-Match: * (PutMode::Create): checked by the object-level
    // part of first_writer_wins, which fails if the second upload overwrote.
    first_writer_wins(Arc::new(s3_remote(&m, "race")));

    // Nothing listens on port 1: a clear error, quickly, never a hang.
    let mut opts = RemoteOptions {
        endpoint: Some("http://127.0.0.1:1".into()),
        s3_config: m.s3_config(),
        ..RemoteOptions::default()
    };
    // A plain-HTTP endpoint is refused unless allowed (a pipeline file could
    // otherwise send signed requests in clear text to any host).
    let refused = ObjectStoreRemote::open_str("s3://nowhere/x", &opts).unwrap_err();
    assert!(refused.to_string().contains("allow_http"), "{refused}");
    opts.allow_http = true;
    let dead = ObjectStoreRemote::open_str("s3://nowhere/x", &opts).unwrap();
    let t = Instant::now();
    let err = dead
        .size(ObjectKind::Blob, &[1u8; 32])
        .unwrap_err()
        .to_string();
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.contains("s3://nowhere/x"), "{err}");
}

/// What can be wrong with a remote blob: bytes of another valid blob (poisoned), one
/// flipped byte, cut short.
#[test]
fn damaged_remote_blobs_are_rejected_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let rdir = tmp.path().join("remote");
    let remote = dir_remote(&rdir);
    let a = Store::open(tmp.path().join("a")).unwrap();
    // Each entry's first output is its 5000-byte blob `a`.
    let made: Vec<(KeyParts, Vec<BlobRef>)> = (0..3).map(|i| put_entry(&a, i)).collect();
    a.push_all(&remote).unwrap();

    let blob_file = |r: &BlobRef| rdir.join(object_name(ObjectKind::Blob, r.digest.as_bytes()));
    // 0: poisoned with the bytes of entry 1's blob (a valid blob, wrong name).
    let poisoned = made[0].1[0];
    std::fs::copy(blob_file(&made[1].1[0]), blob_file(&poisoned)).unwrap();
    // 1: one byte flipped.
    let flipped = made[1].1[0];
    let mut bytes = std::fs::read(blob_file(&flipped)).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(blob_file(&flipped), &bytes).unwrap();
    // 2: truncated.
    let truncated = made[2].1[0];
    let bytes = std::fs::read(blob_file(&truncated)).unwrap();
    std::fs::write(blob_file(&truncated), &bytes[..bytes.len() / 2]).unwrap();

    let b = Store::open(tmp.path().join("b")).unwrap();
    for (parts, blobs) in &made {
        let err = b.pull(&parts.key(), &remote).unwrap_err();
        assert!(err.is_corruption(), "{err}");
        // Nothing of a rejected entry is kept: no entry, no bad blob.
        assert!(b.read_entry(&parts.key()).unwrap().is_none());
        assert_eq!(b.blob_size(&blobs[0].digest).unwrap(), None);
    }
    let report = b.pull_all(&remote, None).unwrap();
    assert_eq!(report.rejected.len(), 3, "{report:?}");
    assert_eq!(report.entries_pulled, 0, "{report:?}");

    // The writer repairs: a push replaces a blob of the wrong size (the truncated
    // one) ...
    let pushed = a.push_all(&remote).unwrap();
    assert_eq!(pushed.blobs_repaired, 1, "{pushed:?}");
    // ... and a same-size corruption (poisoned, flipped) once a reader reported it.
    a.repair_remote_blob(&poisoned.digest, &remote).unwrap();
    a.repair_remote_blob(&flipped.digest, &remote).unwrap();
    let report = b.pull_all(&remote, None).unwrap();
    assert_eq!(report.entries_pulled, 3, "{report:?}");
    assert!(report.rejected.is_empty(), "{report:?}");
    assert!(b.verify(false).unwrap().is_clean());
}
