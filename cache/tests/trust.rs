//! What a reader of a shared cache can rely on: signed entries, trusted keys, capped
//! reads of remote objects, and stores that refuse directories they did not make.

use c2i_cache::{
    BlobRef, GcPolicy, Key, KeyBuilder, KeyParts, Lookup, MissReason, ObjectKind,
    ObjectStoreRemote, PutEntry, RemoteBackend, RemoteOptions, RemoteUrl, SigningKey, Store,
    TrustedKeys,
};
use std::collections::BTreeMap;
use std::path::Path;

fn parts(i: u32) -> KeyParts {
    KeyBuilder::new("evaluate", "3")
        .param("i", i)
        .env("dtype", "f32")
        .build()
        .unwrap()
}

fn put(store: &Store, i: u32, signer: Option<&SigningKey>, accuracy: f64) -> (KeyParts, BlobRef) {
    let p = parts(i);
    let blob = store.put_bytes(format!("records {i}").as_bytes()).unwrap();
    store
        .put_entry_with(
            &p,
            BTreeMap::from([("records".to_string(), blob)]),
            serde_json::json!({ "accuracy": accuracy }),
            &PutEntry {
                signer,
                replace: true,
            },
        )
        .unwrap();
    (p, blob)
}

fn dir_remote(dir: &Path) -> ObjectStoreRemote {
    ObjectStoreRemote::open(
        &RemoteUrl::Dir(dir.to_path_buf()),
        &RemoteOptions::default(),
    )
    .unwrap()
}

#[test]
fn signatures_cover_key_outputs_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("c")).unwrap();
    let ci = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let (p, _) = put(&store, 1, Some(&ci), 0.5);
    let e = store.read_entry(&p.key()).unwrap().unwrap();
    let trusted = TrustedKeys(vec![ci.public()]);
    assert_eq!(trusted.check(&e), Ok(()));
    assert!(TrustedKeys(vec![other.public()]).check(&e).is_err());

    // An unsigned entry, and one carrying another entry's signature (a forged entry
    // with a copied signature): neither counts.
    let (p2, _) = put(&store, 2, None, 1.0);
    let unsigned = store.read_entry(&p2.key()).unwrap().unwrap();
    assert!(trusted.check(&unsigned).unwrap_err().contains("not signed"));
    let mut stolen = unsigned.clone();
    stolen.signature = e.signature.clone();
    assert!(!c2i_cache::sign::signature_valid(&stolen));
    assert!(trusted
        .check(&stolen)
        .unwrap_err()
        .contains("does not match"));

    // Keys round-trip through their text and PEM forms.
    let text = ci.public().to_string();
    assert!(text.starts_with("ed25519:"), "{text}");
    assert_eq!(
        TrustedKeys::parse(&[format!(" {text} ,")]).unwrap(),
        trusted
    );
    assert!(TrustedKeys::parse(&["ed25519:AAAA"]).is_err());
    assert!(TrustedKeys::parse(&["ssh-ed25519 AAAA"]).is_err());
    let pem = tmp.path().join("key.pem");
    ci.save(&pem).unwrap();
    assert_eq!(SigningKey::load(&pem).unwrap().public(), ci.public());
    assert!(ci.save(&pem).is_err(), "a key file is never overwritten");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::write(tmp.path().join("junk.pem"), "not a key").unwrap();
    let err = SigningKey::load(&tmp.path().join("junk.pem")).unwrap_err();
    assert!(err.to_string().contains("junk.pem"), "{err}");
}

#[test]
fn a_reader_with_trusted_keys_pulls_only_signed_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = Store::open(tmp.path().join("w")).unwrap();
    let remote = dir_remote(&tmp.path().join("remote"));
    let ci = SigningKey::generate().unwrap();
    let (signed, _) = put(&writer, 1, Some(&ci), 0.5);
    let (unsigned, _) = put(&writer, 2, None, 0.5);
    writer.push(&signed.key(), &remote).unwrap();
    writer.push(&unsigned.key(), &remote).unwrap();

    let trusted = TrustedKeys(vec![ci.public()]);
    let reader = Store::open(tmp.path().join("r")).unwrap();
    let got = reader
        .pull_with(&signed.key(), &remote, Some(&trusted))
        .unwrap();
    assert!(got.is_hit(), "{got:?}");
    let got = reader
        .pull_with(&unsigned.key(), &remote, Some(&trusted))
        .unwrap();
    assert!(
        matches!(got, Lookup::Miss(MissReason::Untrusted { .. })),
        "{got:?}"
    );
    // Nothing of the untrusted entry was kept.
    assert!(reader.read_entry(&unsigned.key()).unwrap().is_none());

    // verify --remote: unauthenticated without keys, the unsigned entry named with them.
    let plain = c2i_cache::verify_remote(&remote, None).unwrap();
    assert!(!plain.authenticated && plain.is_clean(), "{plain:?}");
    let checked = c2i_cache::verify_remote(&remote, Some(&trusted)).unwrap();
    assert!(checked.authenticated, "{checked:?}");
    assert_eq!(checked.untrusted.len(), 1, "{checked:?}");
    assert_eq!(checked.untrusted[0].key, unsigned.key());

    // A signed push replaces a remote entry nobody vouches for (first writer wins
    // otherwise): the signed writer is not locked out by an early unsigned one.
    let laptop = Store::open(tmp.path().join("laptop")).unwrap();
    let (p3, _) = put(&laptop, 3, None, 0.9);
    laptop.push(&p3.key(), &remote).unwrap();
    let (p3b, _) = put(&writer, 3, Some(&ci), 0.9);
    assert_eq!(p3.key(), p3b.key());
    let rep = writer.push(&p3.key(), &remote).unwrap();
    assert!(rep.entry_replaced, "{rep:?}");
    let fresh = Store::open(tmp.path().join("fresh")).unwrap();
    assert!(fresh
        .pull_with(&p3.key(), &remote, Some(&trusted))
        .unwrap()
        .is_hit());
    // ... but a validly signed remote entry is never replaced by an unsigned one.
    let (p4, _) = put(&writer, 4, Some(&ci), 0.1);
    writer.push(&p4.key(), &remote).unwrap();
    let (_, _) = put(&laptop, 4, None, 0.1);
    let rep = laptop.push(&p4.key(), &remote).unwrap();
    assert!(!rep.entry_uploaded && !rep.entry_replaced, "{rep:?}");
}

/// A sparse file of `len` bytes (takes no disk space).
fn sparse(path: &Path, len: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
}

#[test]
fn oversized_remote_objects_are_cut_off_not_read_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = Store::open(tmp.path().join("w")).unwrap();
    let rdir = tmp.path().join("remote");
    let remote = dir_remote(&rdir);
    let (p, blob) = put(&writer, 1, None, 0.5);
    writer.push(&p.key(), &remote).unwrap();
    // The blob's remote file becomes 8 GiB (sparse) behind its small declared size.
    let bpath = rdir.join(c2i_cache::object_name(
        ObjectKind::Blob,
        blob.digest.as_bytes(),
    ));
    sparse(&bpath, 8 << 30);
    let reader = Store::open(tmp.path().join("r")).unwrap();
    let t = std::time::Instant::now();
    let err = reader.pull(&p.key(), &remote).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("more than the {} bytes", blob.size)),
        "{err}"
    );
    assert!(t.elapsed().as_secs() < 5, "read for {:?}", t.elapsed());
    // Nothing of it was kept, not even a temporary file.
    assert!(reader.blob_size(&blob.digest).unwrap().is_none());
    assert!(reader.verify(false).unwrap().temp_files.is_empty());

    // An 8 GiB entry is refused at 16 MiB.
    let key = Key::from_bytes([7u8; 32]);
    sparse(
        &rdir.join(c2i_cache::object_name(ObjectKind::Action, key.as_bytes())),
        8 << 30,
    );
    let err = reader.pull(&key, &remote).unwrap_err();
    assert!(
        err.is_corruption() && err.to_string().contains("larger than"),
        "{err}"
    );
}

#[test]
fn a_directory_that_is_not_a_cache_is_never_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("photos");
    let stray = dir.join("blobs/ab").join("c".repeat(62));
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"not a blob").unwrap();
    std::fs::write(dir.join("holiday.jpg"), b"jpeg").unwrap();
    for open in [Store::open, Store::open_existing] {
        let err = open(dir.clone()).unwrap_err().to_string();
        assert!(
            err.contains("not a c2i cache") && err.contains("photos"),
            "{err}"
        );
    }
    assert!(stray.exists() && dir.join("holiday.jpg").exists());
    assert!(!dir.join("LAYOUT").exists());
    // open_existing never creates one either.
    assert!(Store::open_existing(tmp.path().join("new")).is_err());
    assert!(!tmp.path().join("new").exists());
    // A real store is opened and gc'd as before.
    let real = Store::open(tmp.path().join("real")).unwrap();
    put(&real, 1, None, 0.5);
    let again = Store::open_existing(tmp.path().join("real")).unwrap();
    again.gc(&GcPolicy::default()).unwrap();
    // A shared-directory remote is refused the same way.
    let err = ObjectStoreRemote::open(&RemoteUrl::Dir(dir.clone()), &RemoteOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a c2i cache"), "{err}");
}

#[test]
fn push_rehashes_local_blobs_and_uploads_no_damaged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("c")).unwrap();
    let remote = dir_remote(&tmp.path().join("remote"));
    let (p, blob) = put(&store, 1, None, 0.5);
    let path = store.blob_path(&blob.digest);
    let mut b = std::fs::read(&path).unwrap();
    b[0] ^= 1;
    std::fs::write(&path, b).unwrap();
    let err = store.push(&p.key(), &remote).unwrap_err();
    assert!(err.is_corruption(), "{err}");
    assert_eq!(
        remote
            .size(ObjectKind::Blob, blob.digest.as_bytes())
            .unwrap(),
        None
    );
    assert_eq!(
        remote.size(ObjectKind::Action, p.key().as_bytes()).unwrap(),
        None
    );
    let all = store.push_all(&remote).unwrap();
    assert_eq!(all.entries_skipped.len(), 1, "{all:?}");
    assert_eq!(all.entries_uploaded, 0);
}
