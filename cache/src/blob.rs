//! The blob store: BLAKE3 of the bytes -> the bytes, at `blobs/<2 hex>/<62 hex>`.
//!
//! Blobs are written once (create-only: the first complete writer wins) and never
//! modified in place; they are only ever replaced by rename (a damaged file of the
//! wrong length) or removed (verify --repair, gc). Both leave existing memory maps of
//! the old file valid, which is what makes [`Blob`] sound to hand out. A process
//! outside c2i that truncates a blob file while it is mapped would make reads of the
//! lost pages fault (SIGBUS); that is the usual caveat of memory maps and the reason
//! `verify` reads with `read(2)`, not through a map.

use crate::error::{CacheError, IoContext, Result};
use crate::fsutil::{touch_existing, Placed, TempFile};
use crate::hash::Digest;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A blob's identity: digest and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// BLAKE3 of the bytes.
    pub digest: Digest,
    /// Length in bytes.
    pub size: u64,
}

/// A blob opened for reading: a read-only memory map (or nothing, for an empty blob)
/// that derefs to the bytes and stays valid for as long as the handle lives.
pub struct Blob {
    digest: Digest,
    path: PathBuf,
    map: Option<memmap2::Mmap>,
}

impl Blob {
    /// The blob's digest (as asked for; checked only by the verifying getters).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The file the bytes come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => m,
            None => &[],
        }
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("digest", &self.digest)
            .field("path", &self.path)
            .field("len", &self.bytes().len())
            .finish()
    }
}

/// Streams bytes into the store, hashing as it writes. Nothing is visible under a
/// blob name until [`BlobWriter::finish`]; dropping the writer discards the bytes.
pub struct BlobWriter<'a> {
    store: &'a Store,
    tmp: TempFile,
    hasher: blake3::Hasher,
    len: u64,
}

impl BlobWriter<'_> {
    /// Appends bytes.
    pub fn append(&mut self, buf: &[u8]) -> Result<()> {
        self.tmp.write_all(buf)?;
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// fsyncs and places the blob under its digest (keeping an existing copy).
    pub fn finish(self) -> Result<BlobRef> {
        self.finish_inner(None)
    }

    /// Like [`finish`](Self::finish), but fails with [`CacheError::CorruptBlob`]
    /// (naming `source`) when the bytes do not hash to `expected`; used when copying
    /// from a remote.
    pub fn finish_expecting(self, expected: &Digest, source: &Path) -> Result<BlobRef> {
        self.finish_inner(Some((expected, source)))
    }

    fn finish_inner(self, expected: Option<(&Digest, &Path)>) -> Result<BlobRef> {
        let digest = Digest::from(self.hasher.finalize());
        if let Some((want, source)) = expected {
            if *want != digest {
                return Err(CacheError::CorruptBlob {
                    path: source.to_path_buf(),
                    expected: *want,
                    actual: digest,
                });
            }
        }
        let dest = self.store.blob_path(&digest);
        let placed = self.tmp.place_create_only(&dest, self.len)?;
        tracing::trace!(%digest, size = self.len, new = (placed == Placed::New), "blob stored");
        Ok(BlobRef {
            digest,
            size: self.len,
        })
    }
}

impl io::Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Where the blob with this digest lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        crate::store::fanout(&self.blobs_dir(), digest.as_bytes())
    }

    /// The blob's size if it is stored.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::io("stat", path, e)),
        }
    }

    /// Stores `bytes`; a blob already present is kept (and not rewritten).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<BlobRef> {
        let digest = Digest::of(bytes);
        let size = bytes.len() as u64;
        let dest = self.blob_path(&digest);
        if self.blob_size(&digest)? == Some(size) {
            touch_existing(&dest);
            return Ok(BlobRef { digest, size });
        }
        let dir = dest.parent().unwrap_or(&dest);
        let mut tmp = TempFile::new_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.place_create_only(&dest, size)?;
        Ok(BlobRef { digest, size })
    }

    /// A writer that streams a new blob into the store.
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>> {
        Ok(BlobWriter {
            store: self,
            tmp: TempFile::new_in(&self.blobs_dir())?,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    /// Stores everything `reader` yields, hashing while writing. On a read error the
    /// partial bytes are discarded and nothing appears in the store.
    pub fn put_reader(&self, mut reader: impl Read) -> Result<BlobRef> {
        let mut w = self.blob_writer()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CacheError::Source {
                        what: "blob source".into(),
                        source,
                    })
                }
            };
            w.append(&buf[..n])?;
        }
        w.finish()
    }

    /// Copies a file into the store.
    pub fn put_file(&self, path: &Path) -> Result<BlobRef> {
        let f = File::open(path).ctx("open", path)?;
        self.put_reader(f).map_err(|e| match e {
            CacheError::Source { source, .. } => CacheError::io("read", path, source),
            other => other,
        })
    }

    /// Opens a blob as a memory map, without rehashing it.
    pub fn get_blob(&self, digest: &Digest) -> Result<Blob> {
        self.open_blob(digest, false)
    }

    /// Opens a blob and rehashes it; a mismatch is [`CacheError::CorruptBlob`].
    pub fn get_blob_verified(&self, digest: &Digest) -> Result<Blob> {
        self.open_blob(digest, true)
    }

    /// Opens the blob `blob` names, checking its size, and its hash if `verify`.
    pub fn get(&self, blob: &BlobRef, verify: bool) -> Result<Blob> {
        let b = self.open_blob(&blob.digest, verify)?;
        let actual = b.bytes().len() as u64;
        if actual != blob.size {
            return Err(CacheError::BlobSize {
                path: b.path,
                expected: blob.size,
                actual,
            });
        }
        Ok(b)
    }

    fn open_blob(&self, digest: &Digest, verify: bool) -> Result<Blob> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::MissingBlob {
                    digest: *digest,
                    path,
                })
            }
            Err(e) => return Err(CacheError::io("open", path, e)),
        };
        let len = file.metadata().ctx("stat", &path)?.len();
        // A zero-length map is an error on most platforms: an empty blob has no map.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: blob files are immutable once placed: the store never writes to a
            // placed blob, and replaces or deletes it only by rename/unlink, which keep
            // this mapping valid. See the module docs for outside interference.
            let map = unsafe { memmap2::Mmap::map(&file) }.ctx("memory-map", &path)?;
            Some(map)
        };
        let blob = Blob {
            digest: *digest,
            path,
            map,
        };
        if verify {
            let actual = Digest::of(blob.bytes());
            if actual != *digest {
                return Err(CacheError::CorruptBlob {
                    path: blob.path,
                    expected: *digest,
                    actual,
                });
            }
        }
        Ok(blob)
    }
}
