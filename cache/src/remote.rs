//! The hook for remote caches (a shared directory, S3, ... through `object_store`).
//!
//! A remote holds the same two tables under the same relative names as the local
//! store ([`object_name`]): `blobs/<2 hex>/<62 hex>` and `actions/<2 hex>/<62 hex>`,
//! entry files byte for byte as written locally. A backend only moves opaque objects;
//! [`Store::push`] and [`Store::pull`] keep the invariants: blobs go before the entry
//! that names them, a pulled blob is rehashed while it is written and rejected if it
//! does not match its name, and a pulled entry is checked (checksum, bytecheck, key)
//! before it is placed locally. [`crate::ObjectStoreRemote`] implements the backend
//! for a shared directory and S3.

use crate::entry;
use crate::error::{CacheError, Result};
use crate::fsutil;
use crate::hash::{Digest, Key};
use crate::store::{Lookup, MissReason, Store};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The two tables of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `blobs/`: bytes named by their BLAKE3.
    Blob,
    /// `actions/`: entries named by their key.
    Action,
}

/// The object's name relative to the store root, with `/` separators.
pub fn object_name(kind: ObjectKind, id: &[u8; 32]) -> String {
    let dir = match kind {
        ObjectKind::Blob => "blobs",
        ObjectKind::Action => "actions",
    };
    let hex = crate::hash::hex(id);
    format!("{dir}/{}/{}", &hex[..2], &hex[2..])
}

/// A place objects can be copied to and from. Implementations must make uploads
/// atomic (a reader never sees part of an object). Objects are immutable: `upload` is
/// create-only (an existing object is left as it is: first writer wins), and only
/// [`RemoteBackend::replace`] overwrites, which [`Store`] uses for one thing: putting
/// verified bytes over a blob whose remote copy was found damaged.
pub trait RemoteBackend: Send + Sync {
    /// A short description for messages ("s3://bucket/prefix").
    fn describe(&self) -> String;
    /// The object's size, or `None` if it is absent.
    fn size(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<Option<u64>>;
    /// Uploads the local file `src` as the object unless an object of that name exists.
    /// `Ok(true)`: this call created it; `Ok(false)`: it was already there (untouched).
    fn upload(&self, kind: ObjectKind, id: &[u8; 32], src: &Path) -> Result<bool>;
    /// Uploads `src` over whatever object is there.
    fn replace(&self, kind: ObjectKind, id: &[u8; 32], src: &Path) -> Result<()>;
    /// Streams the object into `dst`; `Ok(false)` if it is absent.
    fn download(&self, kind: ObjectKind, id: &[u8; 32], dst: &mut dyn Write) -> Result<bool>;
    /// The ids of every object of `kind` (names that are not ids are skipped).
    fn list(&self, kind: ObjectKind) -> Result<Vec<[u8; 32]>>;
}

/// What [`Store::push`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// Blobs uploaded.
    pub uploaded_blobs: Vec<Digest>,
    /// Blobs the remote already had.
    pub present_blobs: Vec<Digest>,
    /// Blobs the remote had with the wrong size, overwritten with verified bytes.
    pub repaired_blobs: Vec<Digest>,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Whether the entry was created on the remote (false: one was already there).
    pub entry_uploaded: bool,
}

/// A remote entry that [`Store::pull_all`] did not take, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// The entry's key (its remote name).
    pub key: Key,
    /// What check failed, or what is missing.
    pub reason: String,
}

/// What [`Store::push_all`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PushAllReport {
    /// The remote.
    pub remote: String,
    /// Entries created on the remote.
    pub entries_uploaded: u64,
    /// Entries the remote already had.
    pub entries_present: u64,
    /// Local entries not pushed because they are not usable locally (missing blob, ...).
    pub entries_skipped: Vec<Rejected>,
    /// Blobs uploaded.
    pub blobs_uploaded: u64,
    /// Blobs the remote already had.
    pub blobs_present: u64,
    /// Remote blobs of the wrong size replaced with verified local bytes.
    pub blobs_repaired: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

/// What [`Store::pull_all`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PullAllReport {
    /// The remote.
    pub remote: String,
    /// Entries on the remote.
    pub entries_listed: u64,
    /// Entries fetched (with their blobs, each verified).
    pub entries_pulled: u64,
    /// Entries already usable locally.
    pub entries_present: u64,
    /// Entries rejected: a blob failed its hash or size, the entry is damaged or names
    /// a blob the remote lacks. Nothing of a rejected entry is kept locally.
    pub rejected: Vec<Rejected>,
}

fn remote_path(remote: &dyn RemoteBackend, kind: ObjectKind, id: &[u8; 32]) -> PathBuf {
    PathBuf::from(format!("{}/{}", remote.describe(), object_name(kind, id)))
}

impl Store {
    /// Copies the entry for `key` and its blobs to `remote`, blobs first.
    pub fn push(&self, key: &Key, remote: &dyn RemoteBackend) -> Result<PushReport> {
        let entry = match self.lookup(key)? {
            Lookup::Hit(e) => e,
            Lookup::Miss(reason) => {
                return Err(CacheError::Remote {
                    backend: remote.describe(),
                    op: format!("push {key}"),
                    reason: format!("not in the local cache: {reason}"),
                })
            }
        };
        let mut report = PushReport::default();
        for blob in entry.outputs.values() {
            let id = blob.digest.as_bytes();
            let path = self.blob_path(&blob.digest);
            match remote.size(ObjectKind::Blob, id)? {
                Some(size) if size == blob.size => report.present_blobs.push(blob.digest),
                Some(_) => {
                    self.repair_remote_blob(&blob.digest, remote)?;
                    report.repaired_blobs.push(blob.digest);
                    report.uploaded_bytes += blob.size;
                }
                None => {
                    if remote.upload(ObjectKind::Blob, id, &path)? {
                        report.uploaded_blobs.push(blob.digest);
                        report.uploaded_bytes += blob.size;
                    } else {
                        report.present_blobs.push(blob.digest);
                    }
                }
            }
        }
        // Entry last: a reader that sees it finds every blob it names.
        report.entry_uploaded =
            remote.upload(ObjectKind::Action, key.as_bytes(), &self.entry_path(key))?;
        Ok(report)
    }

    /// Overwrites the remote copy of a blob with the local one, after rehashing the
    /// local one: for a remote blob found damaged (wrong size, or bytes that do not
    /// hash to its name). Safe against concurrent writers, since every correct writer
    /// of a name writes the same bytes. Fails if the local blob is missing or damaged.
    pub fn repair_remote_blob(&self, digest: &Digest, remote: &dyn RemoteBackend) -> Result<()> {
        let blob = self.get_blob_verified(digest)?;
        tracing::warn!(
            "remote {}: replacing damaged blob {} with verified local bytes",
            remote.describe(),
            digest.short()
        );
        remote.replace(ObjectKind::Blob, digest.as_bytes(), blob.path())
    }

    /// Pushes every usable local entry (blobs first, then the entry).
    pub fn push_all(&self, remote: &dyn RemoteBackend) -> Result<PushAllReport> {
        let mut report = PushAllReport {
            remote: remote.describe(),
            ..PushAllReport::default()
        };
        for e in self.ls()?.entries {
            if let Lookup::Miss(reason) = self.lookup(&e.key)? {
                report.entries_skipped.push(Rejected {
                    key: e.key,
                    reason: reason.to_string(),
                });
                continue;
            }
            let r = self.push(&e.key, remote)?;
            report.blobs_uploaded += r.uploaded_blobs.len() as u64;
            report.blobs_present += r.present_blobs.len() as u64;
            report.blobs_repaired += r.repaired_blobs.len() as u64;
            report.bytes_uploaded += r.uploaded_bytes;
            if r.entry_uploaded {
                report.entries_uploaded += 1;
            } else {
                report.entries_present += 1;
            }
        }
        Ok(report)
    }

    /// Pulls every entry of the remote, verifying each blob. Damaged remote objects
    /// are reported in [`PullAllReport::rejected`] and nothing of them is kept; an
    /// error talking to the remote stops the pull.
    pub fn pull_all(&self, remote: &dyn RemoteBackend) -> Result<PullAllReport> {
        let mut report = PullAllReport {
            remote: remote.describe(),
            ..PullAllReport::default()
        };
        for id in remote.list(ObjectKind::Action)? {
            let key = Key::from_bytes(id);
            report.entries_listed += 1;
            if self.lookup(&key)?.is_hit() {
                report.entries_present += 1;
                continue;
            }
            match self.pull(&key, remote) {
                Ok(Lookup::Hit(_)) => report.entries_pulled += 1,
                Ok(Lookup::Miss(reason)) => report.rejected.push(Rejected {
                    key,
                    reason: format!("on the remote, {reason}"),
                }),
                Err(e) if e.is_corruption() => report.rejected.push(Rejected {
                    key,
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Fetches the entry for `key` and its missing blobs from `remote` into this
    /// store, verifying each blob's hash, and returns the local lookup. A local hit is
    /// returned without asking the remote.
    pub fn pull(&self, key: &Key, remote: &dyn RemoteBackend) -> Result<Lookup> {
        if let hit @ Lookup::Hit(_) = self.lookup(key)? {
            return Ok(hit);
        }
        let mut bytes = Vec::new();
        if !remote.download(ObjectKind::Action, key.as_bytes(), &mut bytes)? {
            return Ok(Lookup::Miss(MissReason::NoEntry));
        }
        let epath = remote_path(remote, ObjectKind::Action, key.as_bytes());
        let entry = entry::decode(&bytes, &epath)?;
        if entry.key != *key || entry.parts.key() != *key {
            return Err(CacheError::CorruptEntry {
                path: epath,
                reason: format!("holds key {}, expected {key}", entry.key),
            });
        }
        for (name, blob) in &entry.outputs {
            if self.blob_size(&blob.digest)? == Some(blob.size) {
                continue;
            }
            let id = blob.digest.as_bytes();
            let bpath = remote_path(remote, ObjectKind::Blob, id);
            let mut w = self.blob_writer()?;
            if !remote.download(ObjectKind::Blob, id, &mut w)? {
                return Ok(Lookup::Miss(MissReason::MissingBlob {
                    output: name.clone(),
                    digest: blob.digest,
                    path: bpath,
                }));
            }
            if w.len() != blob.size {
                return Err(CacheError::BlobSize {
                    path: bpath,
                    expected: blob.size,
                    actual: w.len(),
                });
            }
            let got = w.finish_expecting(&blob.digest, &bpath)?;
            if got.size != blob.size {
                return Err(CacheError::BlobSize {
                    path: bpath,
                    expected: blob.size,
                    actual: got.size,
                });
            }
        }
        // Entry last, byte for byte, so its creation time and checksum travel with it.
        fsutil::write_replace(&self.entry_path(key), &bytes)?;
        self.lookup(key)
    }
}
