//! The one error type of this crate. Every variant that comes from the disk names the
//! path involved and, where it applies, what was expected there.

use crate::hash::{Digest, Key};
use std::path::PathBuf;

/// Result with [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file-system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done ("open", "read", "rename to", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Reading from a caller-supplied source (not a store file) failed.
    #[error("cannot read {what}: {source}")]
    Source {
        /// What the source was.
        what: String,
        /// The error it gave.
        #[source]
        source: std::io::Error,
    },

    /// A blob's bytes do not hash to its name.
    #[error("corrupt blob {path}: expected BLAKE3 {expected}, the bytes hash to {actual}")]
    CorruptBlob {
        /// The blob file (or the remote object) read.
        path: PathBuf,
        /// The digest it is stored under.
        expected: Digest,
        /// The digest of the bytes found.
        actual: Digest,
    },

    /// A blob is not the size an action entry says it is.
    #[error("blob {path} has {actual} bytes, expected {expected}")]
    BlobSize {
        /// The blob file.
        path: PathBuf,
        /// The size the entry names.
        expected: u64,
        /// The size on disk.
        actual: u64,
    },

    /// A downloaded blob ran past the size its entry declares; the download was cut
    /// off there.
    #[error("blob {path} has more than the {expected} bytes its entry declares; the download was cut off there")]
    BlobTooLong {
        /// The remote object.
        path: PathBuf,
        /// The size the entry names.
        expected: u64,
    },

    /// A blob that was asked for is not in the store.
    #[error("blob {digest} is not in the store (expected at {path})")]
    MissingBlob {
        /// The blob's digest.
        digest: Digest,
        /// Where it would be.
        path: PathBuf,
    },

    /// An action entry cannot be decoded: bad checksum, bad archive, bad JSON.
    #[error("corrupt action entry {path}: {reason}")]
    CorruptEntry {
        /// The entry file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },

    /// An action entry may only be written once every blob it names is present.
    #[error(
        "cannot write action entry {key}: output `{output}` names the blob at {path} \
         with {expected_size} bytes, but {found}"
    )]
    EntryOutputNotStored {
        /// The entry's key.
        key: Key,
        /// The output's name.
        output: String,
        /// Where the blob it names should be.
        path: PathBuf,
        /// The size the entry names.
        expected_size: u64,
        /// What was found instead ("it is missing", "it has 12 bytes").
        found: String,
    },

    /// Text that should be a 64-digit hex hash is not.
    #[error("invalid {what} {input:?}: expected 64 hex digits")]
    BadHex {
        /// "key" or "digest".
        what: &'static str,
        /// The text given.
        input: String,
    },

    /// A key could not be built (duplicate field, parameter not serialisable, ...).
    #[error("cannot build key for stage `{stage}`: {reason}")]
    KeyField {
        /// The stage the key is for.
        stage: String,
        /// What is wrong.
        reason: String,
    },

    /// The store directory was made by an incompatible version of this crate.
    #[error("{path} holds store layout {found:?}, expected {expected:?}")]
    Layout {
        /// The layout marker file.
        path: PathBuf,
        /// What the file says.
        found: String,
        /// What this version writes.
        expected: String,
    },

    /// A file changed while it was being hashed, every time it was tried.
    #[error("{path} kept changing while it was hashed")]
    FileChanged {
        /// The file.
        path: PathBuf,
    },

    /// Something could not be serialised.
    #[error("cannot serialise {what}: {reason}")]
    Serialize {
        /// What was being written.
        what: String,
        /// Why it failed.
        reason: String,
    },

    /// A directory that is not a c2i cache was given where one was expected.
    #[error("{path} is not a c2i cache ({reason}); refusing to use it (point --cache at a c2i cache directory, or at a new or empty one)")]
    NotACache {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// A file or object larger than what may be read.
    #[error("{path} has more than {limit} bytes, the most that is read for it")]
    TooLarge {
        /// The file or object.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },

    /// A signing key could not be made, read or used.
    #[error("signing key {what}: {reason}")]
    Signing {
        /// The key file (or what was being made).
        what: String,
        /// Why.
        reason: String,
    },

    /// A remote backend failed.
    #[error("remote {backend}: cannot {op}: {reason}")]
    Remote {
        /// The backend, as it describes itself.
        backend: String,
        /// What was being done.
        op: String,
        /// Why it failed.
        reason: String,
    },
}

impl CacheError {
    /// An [`CacheError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CacheError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when this says stored bytes are damaged (a blob that fails its hash or
    /// size, an entry that fails its checks), as opposed to a failure to read them.
    /// [`crate::Store::pull`] returns these for a damaged remote object.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            CacheError::CorruptBlob { .. }
                | CacheError::BlobSize { .. }
                | CacheError::BlobTooLong { .. }
                | CacheError::CorruptEntry { .. }
        )
    }

    /// The blob a [`CacheError::CorruptBlob`] names.
    pub fn corrupt_blob(&self) -> Option<Digest> {
        match self {
            CacheError::CorruptBlob { expected, .. } => Some(*expected),
            _ => None,
        }
    }

    /// True when this is an I/O error saying the file does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            CacheError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            CacheError::MissingBlob { .. } => true,
            _ => false,
        }
    }
}

/// Extension to attach an operation and path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| CacheError::io(op, path, e))
    }
}
