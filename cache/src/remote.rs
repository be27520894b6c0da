//! The hook for remote caches (a shared directory, S3, ... through `object_store`).
//!
//! A remote holds the same two tables under the same relative names as the local
//! store ([`object_name`]): `blobs/<2 hex>/<62 hex>` and `actions/<2 hex>/<62 hex>`,
//! entry files byte for byte as written locally. A backend only moves opaque objects;
//! [`Store::push`] and [`Store::pull`] keep the invariants: blobs go before the entry
//! that names them, a pulled blob is rehashed while it is written and rejected if it
//! does not match its name, and a pulled entry is checked (checksum, bytecheck, key)
//! before it is placed locally. No remote backend is implemented in this crate yet.

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

/// A place objects can be copied to and from. Implementations must make `upload`
/// atomic (a reader never sees part of an object) and may treat an existing object as
/// done (objects are immutable, except that an entry may be re-uploaded).
pub trait RemoteBackend: Send + Sync {
    /// A short description for messages ("s3://bucket/prefix").
    fn describe(&self) -> String;
    /// The object's size, or `None` if it is absent.
    fn size(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<Option<u64>>;
    /// Uploads the local file `src` as the object.
    fn upload(&self, kind: ObjectKind, id: &[u8; 32], src: &Path) -> Result<()>;
    /// Streams the object into `dst`; `Ok(false)` if it is absent.
    fn download(&self, kind: ObjectKind, id: &[u8; 32], dst: &mut dyn Write) -> Result<bool>;
}

/// What [`Store::push`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// Blobs uploaded.
    pub uploaded_blobs: Vec<Digest>,
    /// Blobs the remote already had.
    pub present_blobs: Vec<Digest>,
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
            if remote.size(ObjectKind::Blob, id)? == Some(blob.size) {
                report.present_blobs.push(blob.digest);
                continue;
            }
            remote.upload(ObjectKind::Blob, id, &self.blob_path(&blob.digest))?;
            report.uploaded_blobs.push(blob.digest);
        }
        remote.upload(ObjectKind::Action, key.as_bytes(), &self.entry_path(key))?;
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
