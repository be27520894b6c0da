//! Many writers of the same blobs and entries at once, in threads and in processes.

use c2i_cache::{KeyBuilder, Store};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "C2I_CACHE_TEST_CHILD_STORE";
const ROUNDS: u32 = 40;

fn payload(i: u32) -> Vec<u8> {
    // A few hundred KiB each, so writes overlap.
    (0..(64 * 1024 + i * 4096)).map(|j| (j ^ i) as u8).collect()
}

/// What every writer does: the same blobs and entries, in the same order.
fn write_all(store: &Store) {
    for i in 0..ROUNDS {
        let b = if i % 2 == 0 {
            store.put_bytes(&payload(i)).expect("put bytes")
        } else {
            store.put_reader(&payload(i)[..]).expect("put reader")
        };
        let parts = KeyBuilder::new("stage", "1")
            .param("i", i)
            .build()
            .expect("parts");
        let mut outputs = BTreeMap::new();
        outputs.insert("out".to_string(), b);
        let e = store
            .put_entry(&parts, outputs, serde_json::json!({ "i": i }))
            .expect("put entry");
        assert_eq!(e.outputs["out"], b);
        assert!(store.lookup(&parts.key()).expect("lookup").is_hit());
    }
}

fn check(root: &Path) {
    let store = Store::open(root).expect("open");
    let report = store.verify(false).expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert!(report.temp_files.is_empty(), "{:?}", report.temp_files);
    assert_eq!(report.blobs_checked, u64::from(ROUNDS));
    assert_eq!(report.entries_checked, u64::from(ROUNDS));
}

#[test]
fn threads_writing_the_same_blobs_and_entries_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    std::thread::scope(|s| {
        for _ in 0..6 {
            let store = store.clone();
            s.spawn(move || write_all(&store));
        }
    });
    check(dir.path());
}

/// Not a test on its own: the body of a child process of the test below.
#[test]
fn child_writer() {
    let Ok(root) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(root).expect("open");
    write_all(&store);
}

#[test]
fn processes_writing_the_same_blobs_and_entries_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args(["child_writer", "--exact", "--test-threads=1", "--quiet"])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "child failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    check(dir.path());
}
