//! Atomic file placement: write to a uniquely named temporary file in the target's
//! directory, fsync it, then link or rename it into place and fsync the directory.
//! A final name therefore only ever holds a complete file.

use crate::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prefix of every temporary file; listings skip these names and gc removes old ones.
pub(crate) const TEMP_PREFIX: &str = ".tmp.";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `.tmp.<pid>.<counter>.<random>`: unique across threads (counter) and processes
/// (pid, plus 64 random bits in case pids are reused or shared across hosts).
fn temp_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // RandomState is seeded from the OS per thread and differs per instance.
    let random = std::collections::hash_map::RandomState::new().hash_one((n, nanos));
    format!("{TEMP_PREFIX}{}.{n}.{random:016x}", std::process::id())
}

/// A temporary file that is removed on drop unless it was placed.
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates a new temporary file in `dir` (creating `dir` if needed).
    pub(crate) fn new_in(dir: &Path) -> Result<TempFile> {
        fs::create_dir_all(dir).ctx("create directory", dir)?;
        loop {
            let path = dir.join(temp_name());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(crate::CacheError::io("create", path, e)),
            }
        }
    }

    /// Writes all of `buf`.
    pub(crate) fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        let res = match self.file.as_mut() {
            Some(f) => f.write_all(buf),
            None => Err(io::Error::other("temporary file already closed")),
        };
        res.ctx("write", &self.path)
    }

    /// fsyncs and closes the file, leaving it ready to be placed.
    fn sync_and_close(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().ctx("fsync", &self.path)?;
        }
        Ok(())
    }

    /// Places the file at `dest` unless a file of `expected_len` bytes is already
    /// there (first writer wins). An existing file of another length is damaged and is
    /// replaced. Returns whether this call's bytes were placed.
    pub(crate) fn place_create_only(mut self, dest: &Path, expected_len: u64) -> Result<Placed> {
        self.sync_and_close()?;
        let dir = parent(dest);
        fs::create_dir_all(dir).ctx("create directory", dir)?;
        // hard_link fails with AlreadyExists instead of replacing: an atomic create-only.
        match fs::hard_link(&self.path, dest) {
            Ok(()) => {
                sync_dir(dir);
                return Ok(Placed::New);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                // Some file systems have no hard links; fall back to check-then-rename,
                // which can only race with a writer of the same bytes.
                tracing::debug!("hard link into {} failed ({e}); renaming", dest.display());
            }
        }
        match fs::metadata(dest) {
            Ok(m) if m.is_file() && m.len() == expected_len => {
                // Keep the existing file; refresh its mtime so gc's grace period
                // protects it until the entry naming it is written.
                touch_existing(dest);
                Ok(Placed::Existing)
            }
            Ok(m) => {
                tracing::warn!(
                    "replacing damaged {} ({} bytes, expected {expected_len})",
                    dest.display(),
                    m.len()
                );
                self.rename_into(dest)?;
                Ok(Placed::New)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.rename_into(dest)?;
                Ok(Placed::New)
            }
            Err(e) => Err(crate::CacheError::io("stat", dest, e)),
        }
    }

    /// Atomically replaces `dest` with this file.
    pub(crate) fn place_replace(mut self, dest: &Path) -> Result<()> {
        self.sync_and_close()?;
        let dir = parent(dest);
        fs::create_dir_all(dir).ctx("create directory", dir)?;
        self.rename_into(dest)
    }

    fn rename_into(&mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).ctx("rename temporary file to", dest)?;
        // Renamed away: nothing left to remove on drop.
        self.path = PathBuf::new();
        sync_dir(parent(dest));
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove temporary file {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// Whether a create-only placement stored new bytes or kept an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placed {
    New,
    Existing,
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or_else(|| Path::new("."))
}

/// Writes `bytes` to `dest` atomically, replacing what is there.
pub(crate) fn write_replace(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::new_in(parent(dest))?;
    tmp.write_all(bytes)?;
    tmp.place_replace(dest)
}

/// fsyncs a directory so a rename in it survives a crash. Best effort: not every
/// platform or file system allows opening a directory.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    {
        match File::open(dir).and_then(|d| d.sync_all()) {
            Ok(()) => {}
            Err(e) => tracing::debug!("cannot fsync directory {}: {e}", dir.display()),
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Sets the mtime of an existing file to now; never creates one. Best effort.
pub(crate) fn touch_existing(path: &Path) {
    let res = OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = res {
        tracing::debug!("cannot touch {}: {e}", path.display());
    }
}

/// Sets a file's mtime to `when`, creating it (and its directory) if needed.
pub(crate) fn touch_at(path: &Path, when: SystemTime) {
    let open = || OpenOptions::new().append(true).create(true).open(path);
    let file = match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(parent(path)).and_then(|()| open())
        }
        Err(e) => Err(e),
    };
    if let Err(e) = file.and_then(|f| f.set_modified(when)) {
        tracing::debug!("cannot touch {}: {e}", path.display());
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// An object file found in a two-level `xx/yyyy…` fan-out directory.
pub(crate) struct Found {
    /// The 32-byte name, or `None` for a stray file whose name is not a hash.
    pub(crate) id: Option<[u8; 32]>,
    pub(crate) path: PathBuf,
    /// A temporary file left by an interrupted write.
    pub(crate) temp: bool,
}

/// Lists the files of a fan-out directory (`dir/<2 hex>/<62 hex>`), plus temporary
/// and stray files at either level. A missing `dir` is empty.
pub(crate) fn walk_fanout(dir: &Path) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let top = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(crate::CacheError::io("list", dir, e)),
    };
    for ent in top {
        let ent = ent.ctx("list", dir)?;
        let path = ent.path();
        let name = ent.file_name().to_string_lossy().into_owned();
        let ft = ent.file_type().ctx("stat", &path)?;
        if !ft.is_dir() {
            out.push(Found {
                id: None,
                temp: name.starts_with(TEMP_PREFIX),
                path,
            });
            continue;
        }
        let prefix_ok = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
        for sub in fs::read_dir(&path).ctx("list", &path)? {
            let sub = sub.ctx("list", &path)?;
            let sub_name = sub.file_name().to_string_lossy().into_owned();
            let id = if prefix_ok {
                crate::hash::parse_hex(&format!("{name}{sub_name}"))
            } else {
                None
            };
            out.push(Found {
                id,
                temp: sub_name.starts_with(TEMP_PREFIX),
                path: sub.path(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Removes a file; a file already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(crate::CacheError::io("remove", path, e)),
    }
}
