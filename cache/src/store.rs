//! The local store: opening it, the action cache (lookup, put, list) and last-use
//! records.

use crate::blob::BlobRef;
use crate::entry::{self, ActionEntry};
use crate::error::{CacheError, IoContext, Result};
use crate::fsutil::{self, walk_fanout, TempFile};
use crate::hash::{Digest, Key};
use crate::key::{Closest, KeyParts};
use crate::sign::SigningKey;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Contents of the `LAYOUT` marker file.
pub const LAYOUT: &str = "c2i-cache layout 1\n";

/// The names a store keeps at its root.
const STORE_NAMES: &[&str] = &[
    "LAYOUT",
    "blobs",
    "actions",
    "used",
    "descriptions",
    "stat-cache.json",
];

/// `dir/<first 2 hex>/<other 62 hex>`.
pub(crate) fn fanout(dir: &Path, id: &[u8; 32]) -> PathBuf {
    let hex = crate::hash::hex(id);
    dir.join(&hex[..2]).join(&hex[2..])
}

/// A content-addressed store in one directory. Cheap to clone; every method takes
/// `&self` and is safe to call from many threads and processes at once.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens the store in `root`, creating it when `root` is missing or empty. Fails if
    /// `root` holds a store of another layout version, or files but no store (a
    /// directory that is not a c2i cache is never adopted: gc would delete its files).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        Self::open_inner(root.into(), true)
    }

    /// Opens an existing store only: `root` must hold the `LAYOUT` marker. For commands
    /// that read, repair or delete (ls, verify, gc, push), which must never act on a
    /// directory that is not a c2i cache.
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Store> {
        Self::open_inner(root.into(), false)
    }

    fn open_inner(root: PathBuf, create: bool) -> Result<Store> {
        let store = Store { root };
        let marker = store.root.join("LAYOUT");
        match fs::read(&marker) {
            Ok(found) if found == LAYOUT.as_bytes() => {}
            Ok(found) => {
                return Err(CacheError::Layout {
                    path: marker,
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: LAYOUT.to_string(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Creating: the directory must be missing, empty, or hold only what a
                // store creating itself at the same moment (another process) writes.
                let stranger = match fs::read_dir(&store.root) {
                    Ok(it) => it.filter_map(|e| e.ok()).find(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        !(STORE_NAMES.contains(&name.as_str())
                            || name.starts_with(fsutil::TEMP_PREFIX))
                    }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(CacheError::io("read directory", &store.root, e)),
                };
                if !create || stranger.is_some() {
                    return Err(CacheError::NotACache {
                        path: store.root.clone(),
                        reason: match stranger {
                            Some(e) => {
                                format!("it holds {} but no LAYOUT marker", e.path().display())
                            }
                            None => "it has no LAYOUT marker".into(),
                        },
                    });
                }
                fs::create_dir_all(&store.root).ctx("create directory", &store.root)?;
                fsutil::write_replace(&marker, LAYOUT.as_bytes())?;
            }
            Err(e) => return Err(CacheError::io("read", marker, e)),
        }
        for dir in [
            store.blobs_dir(),
            store.actions_dir(),
            store.used_dir(),
            store.descriptions_dir(),
        ] {
            fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub(crate) fn actions_dir(&self) -> PathBuf {
        self.root.join("actions")
    }

    pub(crate) fn used_dir(&self) -> PathBuf {
        self.root.join("used")
    }

    pub(crate) fn descriptions_dir(&self) -> PathBuf {
        self.root.join("descriptions")
    }

    /// Where the description of the action with `key` lives.
    pub fn description_path(&self, key: &Key) -> PathBuf {
        fanout(&self.descriptions_dir(), key.as_bytes())
    }

    /// Stores the description of the action `key` (what any process needs to compute
    /// it: see the engine's actions). Create-only: an existing one is kept. The store
    /// does not interpret the bytes; readers check them against the key.
    pub fn put_description(&self, key: &Key, bytes: &[u8]) -> Result<bool> {
        let dest = self.description_path(key);
        if dest.exists() {
            return Ok(false);
        }
        let dir = dest.parent().unwrap_or(&dest);
        let mut tmp = TempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.place_create_only(&dest, bytes.len() as u64)?;
        Ok(true)
    }

    /// The stored description of `key`, if any (at most [`MAX_SMALL_OBJECT`] bytes).
    pub fn read_description(&self, key: &Key) -> Result<Option<Vec<u8>>> {
        let path = self.description_path(key);
        read_capped(&path, MAX_SMALL_OBJECT)
    }

    /// Removes a stored description (a damaged one, so that it is written again).
    pub fn remove_description(&self, key: &Key) -> Result<bool> {
        fsutil::remove_if_present(&self.description_path(key))
    }

    /// Where the action entry for `key` lives (whether or not it is there).
    pub fn entry_path(&self, key: &Key) -> PathBuf {
        fanout(&self.actions_dir(), key.as_bytes())
    }

    pub(crate) fn used_path(&self, key: &Key) -> PathBuf {
        fanout(&self.used_dir(), key.as_bytes())
    }

    /// Reads and checks the entry for `key`. `Ok(None)` when there is none; a damaged
    /// (or oversized) entry is [`CacheError::CorruptEntry`]. Does not look at the blobs.
    pub fn read_entry(&self, key: &Key) -> Result<Option<ActionEntry>> {
        let path = self.entry_path(key);
        match read_capped(&path, MAX_SMALL_OBJECT) {
            Ok(Some(bytes)) => entry::decode(&bytes, &path).map(Some),
            Ok(None) => Ok(None),
            Err(CacheError::TooLarge { path, limit, .. }) => Err(CacheError::CorruptEntry {
                path,
                reason: format!("larger than the {limit} bytes an entry may have"),
            }),
            Err(e) => Err(e),
        }
    }

    /// Looks up an action. A hit means the entry is intact and every blob it names is
    /// present with the right size (hashes are checked by `verify`, or on read with
    /// [`Store::get`]`(.., true)`); a hit records the time of use. Anything else is a
    /// miss with its reason: the caller recomputes and [`Store::put_entry`] replaces
    /// what was there. Only unexpected I/O errors (permissions, ...) are `Err`.
    pub fn lookup(&self, key: &Key) -> Result<Lookup> {
        let found = self.lookup_quiet(key)?;
        if let Lookup::Hit(_) = found {
            self.mark_used_at(key, SystemTime::now());
        }
        Ok(found)
    }

    fn lookup_quiet(&self, key: &Key) -> Result<Lookup> {
        let path = self.entry_path(key);
        let entry = match self.read_entry(key) {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(Lookup::Miss(MissReason::NoEntry)),
            Err(CacheError::CorruptEntry { reason, .. }) => {
                return Ok(Lookup::Miss(MissReason::UnreadableEntry {
                    path,
                    error: reason,
                }))
            }
            Err(e) => return Err(e),
        };
        if entry.key != *key || entry.parts.key() != *key {
            return Ok(Lookup::Miss(MissReason::KeyMismatch {
                stored: entry.key,
                from_parts: entry.parts.key(),
            }));
        }
        for (name, blob) in &entry.outputs {
            if let Some(reason) = self.check_output(name, blob)? {
                return Ok(Lookup::Miss(reason));
            }
        }
        Ok(Lookup::Hit(entry))
    }

    /// `Some(reason)` when the blob is missing or of the wrong size.
    fn check_output(&self, name: &str, blob: &BlobRef) -> Result<Option<MissReason>> {
        let path = self.blob_path(&blob.digest);
        Ok(match self.blob_size(&blob.digest)? {
            None => Some(MissReason::MissingBlob {
                output: name.to_string(),
                digest: blob.digest,
                path,
            }),
            Some(actual) if actual != blob.size => Some(MissReason::SizeMismatch {
                output: name.to_string(),
                digest: blob.digest,
                path,
                expected: blob.size,
                actual,
            }),
            Some(_) => None,
        })
    }

    /// Writes the entry for `parts.key()`, naming `outputs`, after checking that every
    /// one of those blobs is stored with its size (entries are written last). If a
    /// valid entry for the key is already there it is kept and returned (first writer
    /// wins); a damaged or incomplete one is replaced atomically.
    pub fn put_entry(
        &self,
        parts: &KeyParts,
        outputs: BTreeMap<String, BlobRef>,
        metadata: serde_json::Value,
    ) -> Result<ActionEntry> {
        self.put_entry_with(parts, outputs, metadata, &PutEntry::default())
    }

    /// [`Store::put_entry`] with options: sign the entry, or replace a valid existing
    /// one (which its reader found unusable, e.g. invalid metadata).
    pub fn put_entry_with(
        &self,
        parts: &KeyParts,
        outputs: BTreeMap<String, BlobRef>,
        metadata: serde_json::Value,
        opts: &PutEntry<'_>,
    ) -> Result<ActionEntry> {
        let key = parts.key();
        for (name, blob) in &outputs {
            let path = self.blob_path(&blob.digest);
            let found = match self.blob_size(&blob.digest)? {
                Some(s) if s == blob.size => continue,
                Some(s) => format!("it has {s} bytes"),
                None => "it is missing".to_string(),
            };
            return Err(CacheError::EntryOutputNotStored {
                key,
                output: name.clone(),
                path,
                expected_size: blob.size,
                found,
            });
        }
        if !opts.replace {
            if let Lookup::Hit(existing) = self.lookup_quiet(&key)? {
                self.mark_used_at(&key, SystemTime::now());
                return Ok(existing);
            }
        }
        let metadata_json = entry::metadata_text(&key, &metadata)?;
        let mut entry = ActionEntry {
            key,
            stage: parts.stage.clone(),
            created_unix_ms: fsutil::unix_ms(SystemTime::now()),
            outputs,
            metadata,
            parts: parts.clone(),
            signature: None,
            metadata_json,
        };
        if let Some(signer) = opts.signer {
            entry.signature = Some(Box::new(signer.sign(&entry)));
        }
        let bytes = entry::encode(&entry)?;
        let dest = self.entry_path(&key);
        // Hand back what a later lookup will read, not the value passed in: the
        // metadata is stored as JSON text, and serde_json's default float parsing is not
        // always correctly rounded, so a float could come back one ulp off. A stage's
        // consumers must see the same numbers whether the stage was just computed or
        // found cached (the fault tests caught a score differing in its last digit).
        let entry = entry::decode(&bytes, &dest)?;
        let dir = dest.parent().unwrap_or(&dest);
        let mut tmp = TempFile::new_in(dir)?;
        tmp.write_all(&bytes)?;
        tmp.place_replace(&dest)?;
        self.mark_used_at(&key, SystemTime::now());
        tracing::debug!(%key, stage = %entry.stage, "action entry written");
        Ok(entry)
    }

    /// Removes the entry for `key` (not its blobs; gc does that). True if it existed.
    pub fn remove_entry(&self, key: &Key) -> Result<bool> {
        let removed = fsutil::remove_if_present(&self.entry_path(key))?;
        fsutil::remove_if_present(&self.used_path(key))?;
        Ok(removed)
    }

    /// Records a use of `key` at `when` (the store does this on every hit). Best
    /// effort: a failure is logged, not returned.
    pub fn mark_used_at(&self, key: &Key, when: SystemTime) {
        fsutil::touch_at(&self.used_path(key), when);
    }

    /// When `key` was last used: its last-use record, else its entry's creation time.
    pub fn last_used(&self, key: &Key) -> Option<SystemTime> {
        if let Ok(t) = fs::metadata(self.used_path(key)).and_then(|m| m.modified()) {
            return Some(t);
        }
        fs::metadata(self.entry_path(key))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Every file in `actions/`, decoded where possible.
    pub(crate) fn scan_entries(&self) -> Result<Vec<Scanned>> {
        let mut out = Vec::new();
        for f in walk_fanout(&self.actions_dir())? {
            if f.temp {
                continue;
            }
            let key = f.id.map(Key::from_bytes);
            let entry = match read_capped(&f.path, MAX_SMALL_OBJECT) {
                Ok(Some(bytes)) => entry::decode(&bytes, &f.path).map_err(|e| e.to_string()),
                Ok(None) => continue, // removed meanwhile
                Err(e) => Err(e.to_string()),
            };
            let entry = match (key, entry) {
                (None, _) => Err("file name is not a key".to_string()),
                (Some(k), Ok(e)) if e.key != k => {
                    Err(format!("stored under {k} but its key is {}", e.key))
                }
                (_, other) => other,
            };
            let last_used = match (&key, &entry) {
                (Some(k), Ok(e)) => self
                    .last_used(k)
                    .unwrap_or_else(|| fsutil::from_unix_ms(e.created_unix_ms)),
                _ => SystemTime::UNIX_EPOCH,
            };
            out.push(Scanned {
                key,
                path: f.path,
                entry,
                last_used,
            });
        }
        Ok(out)
    }

    /// Lists the action entries, most recently used first, with totals.
    pub fn ls(&self) -> Result<Listing> {
        let scanned = self.scan_entries()?;
        let mut entries = Vec::new();
        let mut unreadable = Vec::new();
        let mut referenced: BTreeMap<Digest, u64> = BTreeMap::new();
        for s in scanned {
            match (s.key, s.entry) {
                (Some(key), Ok(e)) => {
                    for b in e.outputs.values() {
                        referenced.insert(b.digest, b.size);
                    }
                    entries.push(EntrySummary {
                        key,
                        stage: e.stage.clone(),
                        created_unix_ms: e.created_unix_ms,
                        last_used_unix_ms: fsutil::unix_ms(s.last_used),
                        outputs: e.outputs.len(),
                        total_bytes: e.total_bytes(),
                    });
                }
                (_, Err(error)) => unreadable.push(UnreadableEntry {
                    path: s.path,
                    error,
                }),
                (None, Ok(_)) => {}
            }
        }
        entries.sort_by(|a, b| {
            b.last_used_unix_ms
                .cmp(&a.last_used_unix_ms)
                .then(a.key.cmp(&b.key))
        });
        let (mut blob_count, mut blob_bytes) = (0u64, 0u64);
        for f in walk_fanout(&self.blobs_dir())? {
            if f.id.is_some() && !f.temp {
                if let Ok(m) = fs::metadata(&f.path) {
                    blob_count += 1;
                    blob_bytes += m.len();
                }
            }
        }
        Ok(Listing {
            entry_count: entries.len(),
            entries,
            unreadable,
            blob_count,
            blob_bytes,
            referenced_bytes: referenced.values().sum(),
        })
    }

    /// The readable cached entry of the same stage closest to `parts` (see
    /// [`crate::closest`]), most recently used first on ties; for `status --why`.
    pub fn closest_entry(&self, parts: &KeyParts) -> Result<Option<Closest>> {
        let mut cands: Vec<(SystemTime, ActionEntry)> = self
            .scan_entries()?
            .into_iter()
            .filter_map(|s| s.entry.ok().map(|e| (s.last_used, e)))
            .filter(|(_, e)| e.parts.stage == parts.stage)
            .collect();
        cands.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.key.cmp(&b.1.key)));
        Ok(crate::key::closest(
            parts,
            cands.iter().map(|(_, e)| (e.key, &e.parts)),
        ))
    }
}

/// Options of [`Store::put_entry_with`].
#[derive(Default)]
pub struct PutEntry<'a> {
    /// Sign the entry with this key.
    pub signer: Option<&'a SigningKey>,
    /// Replace an existing entry even if it is intact.
    pub replace: bool,
}

/// The largest entry or description read (entries are small: names, digests, sizes
/// and a little metadata). A bigger file is refused before it is read whole.
pub const MAX_SMALL_OBJECT: u64 = 16 << 20;

/// The file's bytes if it exists and has at most `limit` bytes.
pub(crate) fn read_capped(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::io("open", path, e)),
    };
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CacheError::io("read", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(CacheError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(Some(bytes))
}

/// One file of `actions/` as found by a scan.
pub(crate) struct Scanned {
    pub(crate) key: Option<Key>,
    pub(crate) path: PathBuf,
    pub(crate) entry: std::result::Result<ActionEntry, String>,
    pub(crate) last_used: SystemTime,
}

/// The answer of [`Store::lookup`].
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// The entry, with every output blob present.
    Hit(ActionEntry),
    /// Why there is nothing usable.
    Miss(MissReason),
}

impl Lookup {
    /// The entry on a hit.
    pub fn hit(self) -> Option<ActionEntry> {
        match self {
            Lookup::Hit(e) => Some(e),
            Lookup::Miss(_) => None,
        }
    }

    /// True on a hit.
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }
}

/// Why a lookup missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum MissReason {
    /// No entry under the key.
    NoEntry,
    /// The entry file is damaged.
    UnreadableEntry {
        /// The entry file.
        path: PathBuf,
        /// What check failed.
        error: String,
    },
    /// The entry's stored key or key parts do not match the key looked up.
    KeyMismatch {
        /// Key stored in the entry.
        stored: Key,
        /// Key its stored parts hash to.
        from_parts: Key,
    },
    /// An output blob is missing.
    MissingBlob {
        /// Output name.
        output: String,
        /// Its digest.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
    },
    /// A remote entry that is not signed by a trusted key (only from a pull with
    /// trusted keys set).
    Untrusted {
        /// Why the signature does not count.
        why: String,
    },
    /// An output blob has the wrong size.
    SizeMismatch {
        /// Output name.
        output: String,
        /// Its digest.
        digest: Digest,
        /// The blob file.
        path: PathBuf,
        /// Size the entry names.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
}

impl fmt::Display for MissReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissReason::NoEntry => f.write_str("not cached"),
            MissReason::UnreadableEntry { path, error } => {
                write!(f, "entry {} is damaged: {error}", path.display())
            }
            MissReason::KeyMismatch { stored, from_parts } => write!(
                f,
                "entry holds key {stored} with parts hashing to {from_parts}"
            ),
            MissReason::MissingBlob {
                output,
                digest,
                path,
            } => write!(
                f,
                "output `{output}` (blob {}) is missing at {}",
                digest.short(),
                path.display()
            ),
            MissReason::Untrusted { why } => write!(f, "not signed by a trusted key: {why}"),
            MissReason::SizeMismatch {
                output,
                path,
                expected,
                actual,
                ..
            } => write!(
                f,
                "output `{output}` at {} has {actual} bytes, expected {expected}",
                path.display()
            ),
        }
    }
}

/// One line of [`Store::ls`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntrySummary {
    /// The action key.
    pub key: Key,
    /// Its stage.
    pub stage: String,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Last hit (or creation), ms since the Unix epoch.
    pub last_used_unix_ms: u64,
    /// Number of outputs.
    pub outputs: usize,
    /// Sum of output sizes.
    pub total_bytes: u64,
}

/// An entry file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnreadableEntry {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: String,
}

/// What [`Store::ls`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// Readable entries, most recently used first.
    pub entries: Vec<EntrySummary>,
    /// Entry files that could not be read (`verify --repair` removes them).
    pub unreadable: Vec<UnreadableEntry>,
    /// `entries.len()`.
    pub entry_count: usize,
    /// Blob files on disk.
    pub blob_count: u64,
    /// Bytes of all blob files on disk.
    pub blob_bytes: u64,
    /// Bytes of the distinct blobs that readable entries reference.
    pub referenced_bytes: u64,
}
