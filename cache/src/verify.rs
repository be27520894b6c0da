//! `verify`: rehash every blob, check every action entry, and optionally remove what
//! is damaged so that the next run recomputes it.

use crate::error::Result;
use crate::fsutil::{self, walk_fanout};
use crate::hash::{Digest, Key};
use crate::store::Store;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// What [`Store::verify`] found (and, with `repair`, removed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Blob files hashed.
    pub blobs_checked: u64,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Entry files read.
    pub entries_checked: u64,
    /// Blobs whose bytes do not match their name, or that cannot be read.
    pub bad_blobs: Vec<BadBlob>,
    /// Entries that cannot be read or that name missing or bad blobs.
    pub bad_entries: Vec<BadEntry>,
    /// Files whose names are not hashes (left alone).
    pub stray_files: Vec<PathBuf>,
    /// Temporary files of interrupted or in-progress writes (gc removes old ones).
    pub temp_files: Vec<PathBuf>,
    /// Whether `repair` was asked for.
    pub repaired: bool,
    /// Blobs removed by the repair.
    pub removed_blobs: Vec<Digest>,
    /// Entry files removed by the repair.
    pub removed_entries: Vec<PathBuf>,
}

impl VerifyReport {
    /// True when nothing bad was found.
    pub fn is_clean(&self) -> bool {
        self.bad_blobs.is_empty() && self.bad_entries.is_empty()
    }
}

/// A damaged blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadBlob {
    /// The digest it is stored under.
    pub digest: Digest,
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: BlobProblem,
}

/// What is wrong with a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlobProblem {
    /// The bytes hash to something else.
    Corrupt {
        /// What they hash to.
        actual: Digest,
        /// Their length.
        size: u64,
    },
    /// Shorter than an entry says it should be (and so also mis-hashed).
    Truncated {
        /// Size named by an entry.
        expected_size: u64,
        /// Size on disk.
        actual_size: u64,
    },
    /// Reading failed.
    Unreadable {
        /// The error.
        error: String,
    },
}

/// A damaged or dangling entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadEntry {
    /// Its key, when the file name is one.
    pub key: Option<Key>,
    /// The file.
    pub path: PathBuf,
    /// Everything wrong with it.
    pub problems: Vec<EntryProblem>,
}

/// What is wrong with an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryProblem {
    /// The file fails its checks.
    Unreadable {
        /// Why.
        error: String,
    },
    /// An output blob is not in the store.
    MissingBlob {
        /// Output name.
        output: String,
        /// Its digest.
        digest: Digest,
    },
    /// An output blob is damaged.
    BadBlob {
        /// Output name.
        output: String,
        /// Its digest.
        digest: Digest,
    },
    /// An output blob is intact but not the size the entry names.
    SizeMismatch {
        /// Output name.
        output: String,
        /// Its digest.
        digest: Digest,
        /// Size the entry names.
        expected: u64,
        /// Size of the blob.
        actual: u64,
    },
}

fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    let mut f = File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((Digest::from(h.finalize()), n_total))
}

enum BlobState {
    Good(u64),
    Bad,
}

impl Store {
    /// Rehashes every blob and checks every entry. With `repair`, removes the bad blobs
    /// and every entry that is unreadable or names a missing or bad blob.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            repaired: repair,
            ..VerifyReport::default()
        };
        let entries = self.scan_entries()?;
        // Sizes the entries expect, to tell truncation from other damage.
        let mut expected: BTreeMap<Digest, u64> = BTreeMap::new();
        for e in entries.iter().filter_map(|s| s.entry.as_ref().ok()) {
            for b in e.outputs.values() {
                expected.entry(b.digest).or_insert(b.size);
            }
        }

        let mut states: BTreeMap<Digest, BlobState> = BTreeMap::new();
        for f in walk_fanout(&self.blobs_dir())? {
            if f.temp {
                report.temp_files.push(f.path);
                continue;
            }
            let Some(id) = f.id else {
                report.stray_files.push(f.path);
                continue;
            };
            let digest = Digest::from_bytes(id);
            report.blobs_checked += 1;
            let problem = match hash_file(&f.path) {
                Ok((actual, size)) => {
                    report.bytes_checked += size;
                    if actual == digest {
                        states.insert(digest, BlobState::Good(size));
                        continue;
                    }
                    match expected.get(&digest) {
                        Some(&want) if size < want => BlobProblem::Truncated {
                            expected_size: want,
                            actual_size: size,
                        },
                        _ => BlobProblem::Corrupt { actual, size },
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => BlobProblem::Unreadable {
                    error: e.to_string(),
                },
            };
            states.insert(digest, BlobState::Bad);
            report.bad_blobs.push(BadBlob {
                digest,
                path: f.path,
                problem,
            });
        }

        for s in &entries {
            report.entries_checked += 1;
            let problems = match &s.entry {
                Err(error) => vec![EntryProblem::Unreadable {
                    error: error.clone(),
                }],
                Ok(e) => e
                    .outputs
                    .iter()
                    .filter_map(|(name, b)| {
                        let output = name.clone();
                        let digest = b.digest;
                        match states.get(&b.digest) {
                            None => Some(EntryProblem::MissingBlob { output, digest }),
                            Some(BlobState::Bad) => Some(EntryProblem::BadBlob { output, digest }),
                            Some(BlobState::Good(size)) if *size != b.size => {
                                Some(EntryProblem::SizeMismatch {
                                    output,
                                    digest,
                                    expected: b.size,
                                    actual: *size,
                                })
                            }
                            Some(BlobState::Good(_)) => None,
                        }
                    })
                    .collect(),
            };
            if !problems.is_empty() {
                report.bad_entries.push(BadEntry {
                    key: s.key,
                    path: s.path.clone(),
                    problems,
                });
            }
        }

        if repair {
            // Entries first, so that no entry ever names a blob that is gone.
            for bad in &report.bad_entries {
                if fsutil::remove_if_present(&bad.path)? {
                    report.removed_entries.push(bad.path.clone());
                }
                if let Some(k) = &bad.key {
                    fsutil::remove_if_present(&self.used_path(k))?;
                }
            }
            for bad in &report.bad_blobs {
                if fsutil::remove_if_present(&bad.path)? {
                    report.removed_blobs.push(bad.digest);
                }
            }
            tracing::info!(
                entries = report.removed_entries.len(),
                blobs = report.removed_blobs.len(),
                "verify --repair removed damaged items"
            );
        }
        Ok(report)
    }
}
