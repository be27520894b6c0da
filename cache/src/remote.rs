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

use crate::entry::{self, ActionEntry};
use crate::error::{CacheError, Result};
use crate::fsutil;
use crate::hash::{Digest, Key};
use crate::sign::TrustedKeys;
use crate::store::{Lookup, MissReason, Store, MAX_SMALL_OBJECT};
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The two tables of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `blobs/`: bytes named by their BLAKE3.
    Blob,
    /// `actions/`: entries named by their key.
    Action,
    /// `descriptions/`: what an action computes, named by its key.
    Description,
}

/// The object's name relative to the store root, with `/` separators.
pub fn object_name(kind: ObjectKind, id: &[u8; 32]) -> String {
    let hex = crate::hash::hex(id);
    format!("{}/{}/{}", kind.dir(), &hex[..2], &hex[2..])
}

impl ObjectKind {
    /// The table's directory name.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blobs",
            ObjectKind::Action => "actions",
            ObjectKind::Description => "descriptions",
        }
    }
}

/// A writer that fails as soon as more than `limit` bytes are written to it, so that
/// a download stops at the first chunk past the size it may have (an object that
/// claims to be small but streams gigabytes is cut off, never read whole).
struct Capped<W> {
    inner: W,
    limit: u64,
    written: u64,
    exceeded: bool,
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other(format!(
                "more than the {} bytes expected",
                self.limit
            )));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Downloads a small object (entry or description) whole, refusing one of more than
/// [`MAX_SMALL_OBJECT`] bytes as soon as the stream passes that.
fn download_small(
    remote: &dyn RemoteBackend,
    kind: ObjectKind,
    id: &[u8; 32],
) -> Result<Option<Vec<u8>>> {
    let mut w = Capped {
        inner: Vec::new(),
        limit: MAX_SMALL_OBJECT,
        written: 0,
        exceeded: false,
    };
    let found = remote.download(kind, id, &mut w);
    if w.exceeded {
        return Err(CacheError::CorruptEntry {
            path: remote_path(remote, kind, id),
            reason: format!(
                "larger than the {MAX_SMALL_OBJECT} bytes such an object may have; not read further"
            ),
        });
    }
    Ok(if found? { Some(w.inner) } else { None })
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
    /// Whether a remote entry that no valid signature vouched for was replaced by
    /// this signed one.
    pub entry_replaced: bool,
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
    /// Entries not signed by a trusted key (only with trusted keys); not taken.
    pub untrusted: Vec<Rejected>,
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
        // Rehash every local blob first: a blob damaged on this disk is never uploaded
        // (and nor is the entry naming it).
        for blob in entry.outputs.values() {
            self.get(blob, true)?;
        }
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
        let epath = self.entry_path(key);
        report.entry_uploaded = remote.upload(ObjectKind::Action, key.as_bytes(), &epath)?;
        if !report.entry_uploaded && crate::sign::signature_valid(&entry) {
            // First writer wins, except over an entry nobody can vouch for: a signed
            // entry replaces a remote one that is unsigned, damaged or whose signature
            // fails (so that an early unsigned writer cannot keep readers who trust
            // this signer from ever getting the entry).
            let remote_ok = match download_small(remote, ObjectKind::Action, key.as_bytes()) {
                Ok(Some(bytes)) => entry::decode(&bytes, &epath)
                    .map(|e| e.key == *key && crate::sign::signature_valid(&e))
                    .unwrap_or(false),
                Ok(None) => false,
                Err(e) if e.is_corruption() => false,
                Err(e) => return Err(e),
            };
            if !remote_ok {
                remote.replace(ObjectKind::Action, key.as_bytes(), &epath)?;
                report.entry_uploaded = true;
                report.entry_replaced = true;
            }
        }
        Ok(report)
    }

    /// Copies the stored description of `key` to the remote (create-only). False when
    /// the remote had one already.
    pub fn push_description(&self, key: &Key, remote: &dyn RemoteBackend) -> Result<bool> {
        let path = self.description_path(key);
        if !path.exists() {
            return Err(CacheError::Remote {
                backend: remote.describe(),
                op: format!("push the description of {key}"),
                reason: "it is not in the local cache".into(),
            });
        }
        remote.upload(ObjectKind::Description, key.as_bytes(), &path)
    }

    /// Fetches one blob from the remote into this store, rehashing it and cutting the
    /// download off past `blob.size`. `Ok(false)` when the remote does not have it.
    pub fn pull_blob(&self, blob: &crate::BlobRef, remote: &dyn RemoteBackend) -> Result<bool> {
        if self.blob_size(&blob.digest)? == Some(blob.size) {
            return Ok(true);
        }
        let id = blob.digest.as_bytes();
        let bpath = remote_path(remote, ObjectKind::Blob, id);
        let mut w = Capped {
            inner: self.blob_writer()?,
            limit: blob.size,
            written: 0,
            exceeded: false,
        };
        let found = remote.download(ObjectKind::Blob, id, &mut w);
        if w.exceeded {
            return Err(CacheError::BlobTooLong {
                path: bpath,
                expected: blob.size,
            });
        }
        if !found? {
            return Ok(false);
        }
        let w = w.inner;
        if w.len() != blob.size {
            return Err(CacheError::BlobSize {
                path: bpath,
                expected: blob.size,
                actual: w.len(),
            });
        }
        w.finish_expecting(&blob.digest, &bpath)?;
        Ok(true)
    }

    /// Fetches the description of `key` from the remote into this store (the engine
    /// checks it against the key before use). `Ok(None)` when the remote has none.
    pub fn pull_description(
        &self,
        key: &Key,
        remote: &dyn RemoteBackend,
    ) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = download_small(remote, ObjectKind::Description, key.as_bytes())? else {
            return Ok(None);
        };
        self.put_description(key, &bytes)?;
        Ok(Some(bytes))
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
            let r = match self.push(&e.key, remote) {
                Ok(r) => r,
                Err(err) if err.is_corruption() => {
                    report.entries_skipped.push(Rejected {
                        key: e.key,
                        reason: format!("damaged here, not uploaded: {err}"),
                    });
                    continue;
                }
                Err(err) => return Err(err),
            };
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
    pub fn pull_all(
        &self,
        remote: &dyn RemoteBackend,
        trusted: Option<&TrustedKeys>,
    ) -> Result<PullAllReport> {
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
            match self.pull_with(&key, remote, trusted) {
                Ok(Lookup::Hit(_)) => report.entries_pulled += 1,
                Ok(Lookup::Miss(reason @ MissReason::Untrusted { .. })) => {
                    report.untrusted.push(Rejected {
                        key,
                        reason: reason.to_string(),
                    })
                }
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
        self.pull_with(key, remote, None)
    }

    /// [`Store::pull`], taking the entry only if it is signed by one of `trusted` (when
    /// given and not empty): otherwise [`MissReason::Untrusted`], before any blob is
    /// downloaded. The entry is read only up to [`MAX_SMALL_OBJECT`] bytes and each
    /// blob only up to the size the entry declares: a stream that runs past it is cut
    /// off at once ([`CacheError::BlobSize`]).
    pub fn pull_with(
        &self,
        key: &Key,
        remote: &dyn RemoteBackend,
        trusted: Option<&TrustedKeys>,
    ) -> Result<Lookup> {
        if let hit @ Lookup::Hit(_) = self.lookup(key)? {
            return Ok(hit);
        }
        let Some(bytes) = download_small(remote, ObjectKind::Action, key.as_bytes())? else {
            return Ok(Lookup::Miss(MissReason::NoEntry));
        };
        let epath = remote_path(remote, ObjectKind::Action, key.as_bytes());
        let entry = entry::decode(&bytes, &epath)?;
        if entry.key != *key || entry.parts.key() != *key {
            return Err(CacheError::CorruptEntry {
                path: epath,
                reason: format!("holds key {}, expected {key}", entry.key),
            });
        }
        if let Some(t) = trusted.filter(|t| !t.is_empty()) {
            if let Err(reason) = t.check(&entry) {
                return Ok(Lookup::Miss(MissReason::Untrusted { why: reason }));
            }
        }
        for (name, blob) in &entry.outputs {
            if self.blob_size(&blob.digest)? == Some(blob.size) {
                continue;
            }
            let id = blob.digest.as_bytes();
            let bpath = remote_path(remote, ObjectKind::Blob, id);
            let mut w = Capped {
                inner: self.blob_writer()?,
                limit: blob.size,
                written: 0,
                exceeded: false,
            };
            let found = remote.download(ObjectKind::Blob, id, &mut w);
            if w.exceeded {
                return Err(CacheError::BlobTooLong {
                    path: bpath,
                    expected: blob.size,
                });
            }
            if !found? {
                return Ok(Lookup::Miss(MissReason::MissingBlob {
                    output: name.clone(),
                    digest: blob.digest,
                    path: bpath,
                }));
            }
            let w = w.inner;
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
        // Entry last, byte for byte, so its creation time, checksum and signature
        // travel with it.
        fsutil::write_replace(&self.entry_path(key), &bytes)?;
        self.lookup(key)
    }
}

/// What `c2i cache verify --remote` found on a remote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteVerifyReport {
    /// The remote.
    pub remote: String,
    /// Whether entries were checked against trusted keys. Without them the remote is
    /// unauthenticated: an entry that is intact but forged (any writer can make one)
    /// passes every other check.
    pub authenticated: bool,
    /// Entries read.
    pub entries_checked: u64,
    /// Blobs rehashed.
    pub blobs_checked: u64,
    /// Bytes rehashed.
    pub bytes_checked: u64,
    /// Entries that are damaged, name a missing or damaged blob, or sit under
    /// another key.
    pub bad_entries: Vec<Rejected>,
    /// Intact entries without a valid signature by a trusted key.
    pub untrusted: Vec<Rejected>,
}

impl RemoteVerifyReport {
    /// Nothing damaged and, when authenticated, nothing untrusted.
    pub fn is_clean(&self) -> bool {
        self.bad_entries.is_empty() && self.untrusted.is_empty()
    }
}

struct Hashing {
    hasher: blake3::Hasher,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_remote_entry(
    remote: &dyn RemoteBackend,
    id: &[u8; 32],
    trusted: Option<&TrustedKeys>,
    blobs_seen: &mut BTreeSet<Digest>,
    report: &mut RemoteVerifyReport,
) -> Result<std::result::Result<Option<String>, String>> {
    let key = Key::from_bytes(*id);
    let epath = remote_path(remote, ObjectKind::Action, id);
    let bytes = match download_small(remote, ObjectKind::Action, id) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Err("listed but gone".into())),
        Err(e) if e.is_corruption() => return Ok(Err(e.to_string())),
        Err(e) => return Err(e),
    };
    let entry: ActionEntry = match entry::decode(&bytes, &epath) {
        Ok(e) => e,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if entry.key != key || entry.parts.key() != key {
        return Ok(Err(format!("holds key {}, stored under {key}", entry.key)));
    }
    for (name, blob) in &entry.outputs {
        if !blobs_seen.insert(blob.digest) {
            continue;
        }
        let mut w = Capped {
            inner: Hashing {
                hasher: blake3::Hasher::new(),
            },
            limit: blob.size,
            written: 0,
            exceeded: false,
        };
        let found = remote.download(ObjectKind::Blob, blob.digest.as_bytes(), &mut w);
        report.blobs_checked += 1;
        report.bytes_checked += w.written;
        if w.exceeded {
            return Ok(Err(format!(
                "output `{name}` (blob {}) has more than the {} bytes declared",
                blob.digest.short(),
                blob.size
            )));
        }
        if !found? {
            return Ok(Err(format!(
                "output `{name}` (blob {}) is missing",
                blob.digest.short()
            )));
        }
        let actual = Digest::from(w.inner.hasher.finalize());
        if w.written != blob.size || actual != blob.digest {
            return Ok(Err(format!(
                "output `{name}`: blob {} has {} bytes hashing to {}, expected {} bytes",
                blob.digest.short(),
                w.written,
                actual.short(),
                blob.size
            )));
        }
    }
    Ok(Ok(match trusted.filter(|t| !t.is_empty()) {
        Some(t) => t.check(&entry).err(),
        None => None,
    }))
}

/// Reads every entry of `remote` and rehashes every blob they name (streamed, each
/// cut off at its declared size); with `trusted` keys, also checks each entry's
/// signature. Nothing is written anywhere.
pub fn verify_remote(
    remote: &dyn RemoteBackend,
    trusted: Option<&TrustedKeys>,
) -> Result<RemoteVerifyReport> {
    let mut report = RemoteVerifyReport {
        remote: remote.describe(),
        authenticated: trusted.is_some_and(|t| !t.is_empty()),
        ..RemoteVerifyReport::default()
    };
    let mut seen = BTreeSet::new();
    for id in remote.list(ObjectKind::Action)? {
        report.entries_checked += 1;
        let key = Key::from_bytes(id);
        match check_remote_entry(remote, &id, trusted, &mut seen, &mut report)? {
            Ok(None) => {}
            Ok(Some(reason)) => report.untrusted.push(Rejected { key, reason }),
            Err(reason) => report.bad_entries.push(Rejected { key, reason }),
        }
    }
    Ok(report)
}
