//! A stat cache for file digests: (canonical path, size, mtime, inode) -> BLAKE3, so
//! that an unchanged 500 MB model file is not rehashed on every run.
//!
//! Persisted as JSON at `<store>/stat-cache.json` (small, human-readable, and only a
//! cache: a damaged file is logged and treated as empty). Saving rereads the file and
//! merges this process's new records over it, then writes atomically, so concurrent
//! processes lose at most a record (which only costs a rehash).
//!
//! Like git's index, a file modified within [`RACY_WINDOW`] of being hashed could change
//! again without its mtime moving (coarse timestamps), so such a digest is returned but
//! not recorded. A file that changes while being hashed is hashed again.

use crate::error::{CacheError, IoContext, Result};
use crate::fsutil;
use crate::hash::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file modified less than this long before it was hashed is not recorded.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

const FORMAT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stat {
    size: u64,
    mtime_ns: u64,
    inode: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    stat: Stat,
    digest: Digest,
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    files: BTreeMap<String, Record>,
}

/// The digest of a file, and whether it had to be read to get it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileDigest {
    /// The canonical path.
    pub path: PathBuf,
    /// BLAKE3 of the contents.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// True when the file was hashed by this call, false when the cache answered.
    pub rehashed: bool,
}

/// File digests remembered by stat. Load it, call [`StatCache::digest_file`], then
/// [`StatCache::save`].
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    files: BTreeMap<String, Record>,
    changed: BTreeMap<String, Record>,
}

fn stat_of(m: &Metadata) -> Stat {
    let mtime_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0);
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(m);
    #[cfg(not(unix))]
    let inode = 0;
    Stat {
        size: m.len(),
        mtime_ns,
        inode,
    }
}

fn hash_reader(mut r: impl Read) -> io::Result<Digest> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h.finalize().into())
}

fn read_disk(path: &Path) -> BTreeMap<String, Record> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot read stat cache {}: {e}; starting empty",
                    path.display()
                );
            }
            return BTreeMap::new();
        }
    };
    match serde_json::from_slice::<OnDisk>(&bytes) {
        Ok(d) if d.format == FORMAT => d.files,
        Ok(d) => {
            tracing::warn!(
                "stat cache {} has format {}, expected {FORMAT}; starting empty",
                path.display(),
                d.format
            );
            BTreeMap::new()
        }
        Err(e) => {
            tracing::warn!(
                "stat cache {} is damaged ({e}); starting empty",
                path.display()
            );
            BTreeMap::new()
        }
    }
}

impl StatCache {
    /// Loads the cache stored at `path` (empty if there is none or it is damaged).
    pub fn load(path: impl Into<PathBuf>) -> StatCache {
        let path = path.into();
        let files = read_disk(&path);
        StatCache {
            path,
            files,
            changed: BTreeMap::new(),
        }
    }

    /// The file the cache is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no file is remembered.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The digest of `path`, from the cache when its size, mtime and inode are
    /// unchanged, else by hashing it (and remembering the result).
    pub fn digest_file(&mut self, path: &Path) -> Result<FileDigest> {
        let canonical = fs::canonicalize(path).ctx("resolve", path)?;
        // Non-UTF-8 paths are hashed every time rather than risk a lossy key.
        let name = canonical.to_str().map(str::to_owned);
        let before = stat_of(&fs::metadata(&canonical).ctx("stat", &canonical)?);
        if let Some(rec) = name.as_ref().and_then(|n| self.files.get(n)) {
            if rec.stat == before {
                return Ok(FileDigest {
                    path: canonical,
                    digest: rec.digest,
                    size: before.size,
                    rehashed: false,
                });
            }
        }
        let mut before = before;
        for _ in 0..3 {
            let digest = hash_reader(File::open(&canonical).ctx("open", &canonical)?)
                .ctx("read", &canonical)?;
            let after = stat_of(&fs::metadata(&canonical).ctx("stat", &canonical)?);
            if after != before {
                before = after;
                continue;
            }
            let hashed_at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
                .unwrap_or(0);
            let racy = after.mtime_ns.saturating_add(RACY_WINDOW.as_nanos() as u64) > hashed_at;
            if let (Some(n), false) = (&name, racy) {
                let rec = Record {
                    stat: after,
                    digest,
                };
                self.files.insert(n.clone(), rec.clone());
                self.changed.insert(n.clone(), rec);
            }
            return Ok(FileDigest {
                path: canonical,
                digest,
                size: after.size,
                rehashed: true,
            });
        }
        Err(CacheError::FileChanged { path: canonical })
    }

    /// Writes the new records (merged over what is on disk now) atomically. Does
    /// nothing when nothing was hashed.
    pub fn save(&mut self) -> Result<()> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let mut files = read_disk(&self.path);
        files.extend(std::mem::take(&mut self.changed));
        let out = OnDisk {
            format: FORMAT,
            files,
        };
        let bytes = serde_json::to_vec_pretty(&out).map_err(|e| CacheError::Serialize {
            what: format!("stat cache {}", self.path.display()),
            reason: e.to_string(),
        })?;
        fsutil::write_replace(&self.path, &bytes)?;
        self.files = out.files;
        Ok(())
    }
}

impl crate::Store {
    /// The stat cache kept in this store (`<root>/stat-cache.json`).
    pub fn stat_cache(&self) -> StatCache {
        StatCache::load(self.root().join("stat-cache.json"))
    }
}
