//! c2i's content-addressed store.
//!
//! Two tables, as in Bazel: an **action cache** (key of a stage run -> entry naming its
//! output blobs, plus metadata) and a **blob store** (BLAKE3 of the bytes -> the
//! bytes). The engine computes a [`Key`] with [`KeyBuilder`], asks [`Store::lookup`],
//! and on a miss runs the stage, stores its outputs with [`Store::put_bytes`] /
//! [`Store::blob_writer`], and finally [`Store::put_entry`].
//!
//! # On-disk layout
//!
//! ```text
//! <root>/                      `$C2I_HOME/cache` or `--cache DIR`, chosen by the caller
//!   LAYOUT                     "c2i-cache layout 1\n"; another value is refused
//!   blobs/<2 hex>/<62 hex>     the raw bytes whose BLAKE3 is the 64-hex name
//!   actions/<2 hex>/<62 hex>   the entry of the action with that key
//!   used/<2 hex>/<62 hex>      empty file; its mtime is the entry's last use
//!   stat-cache.json            file digests remembered by stat (see [`StatCache`])
//!   .../.tmp.<pid>.<n>.<rand>  a write in progress (or interrupted; gc removes old ones)
//! ```
//!
//! Blobs are raw bytes in whatever format the stage chose, so they can be
//! memory-mapped ([`Blob`]) without copying. Tensor blobs (gradients, block-SVD
//! factors) are safetensors, not rkyv: safetensors keeps the data 8-byte aligned, so
//! `bytemuck` gives `&[f32]` straight from the map; it writes a 320 MiB file in 0.6 s
//! against rkyv's 1.45 s (STACK.md); and candle, numpy and torch read it, so a user can
//! inspect a cached gradient or factor in any framework, while an rkyv layout is tied to
//! our Rust structs and the rkyv version. rkyv is used where that tie is an asset: the
//! small action-cache entries below, validated on read.
//!
//! # Writes
//!
//! Every file is written to a uniquely named temporary file in the same directory
//! (for a streamed blob, whose name is known only at the end, in `blobs/`: same file
//! system), fsynced, then moved into place, and the directory is fsynced. Blobs are
//! create-only: `hard_link` refuses to replace, so concurrent writers of the same blob
//! all succeed and the first one's file stays (an existing file of the wrong length is
//! damaged and is replaced). A final name never holds a partial file. An entry is
//! written last, only after [`Store::put_entry`] has checked that every blob it names
//! is present with the right size; an existing valid entry is kept (first writer
//! wins), a damaged one replaced by rename.
//!
//! # Entries: rkyv with a checksum trailer
//!
//! Entries ([`ActionEntry`]) are rkyv 0.8 archives followed by a 40-byte trailer:
//! the magic [`ENTRY_MAGIC`] (`b"C2IACT01"`, also the format version) and the BLAKE3
//! of the archive. A read checks the length, the magic, the checksum, then the archive
//! with bytecheck (`rkyv::access`), then the metadata JSON and that output names are
//! unique; any failure is [`CacheError::CorruptEntry`] naming the file. The checksum
//! is not redundant: bytecheck proves an archive safe to read, not that it is the one
//! written (a flipped bit in a size or digest still validates). rkyv rather
//! than JSON because the project names it for manifests, reads are validated
//! zero-copy (bytecheck makes a damaged file an error, never undefined behaviour), and
//! the format is pinned (little-endian, 32-bit offsets) regardless of features others
//! enable. JSON would be easier to read by eye; [`ActionEntry`] also derives serde,
//! so a command line can print entries as JSON. The entry's free-form metadata is stored inside the
//! archive as a JSON string, since `serde_json::Value` has no archived form. The
//! records are private and versioned by the magic: changing them makes old entries
//! read as damaged, which [`Store::lookup`] reports as a miss.
//!
//! # Reads
//!
//! [`Store::lookup`] is a hit only when the entry is intact, its stored key and key
//! parts match the key asked for, and every output blob is present with the size the
//! entry names; everything else is a [`MissReason`], never a panic. A hit touches the
//! last-use file. Blob hashes are checked by [`Store::verify`], by
//! [`Store::get_blob_verified`], and always when pulling from a remote.
//!
//! # Maintenance
//!
//! [`Store::verify`] rehashes everything and with `repair` deletes damaged blobs and
//! the entries that need them. [`Store::gc`] removes entries by [`GcPolicy`] and then
//! every blob no remaining entry references, except blobs younger than
//! [`GcPolicy::grace`] (default one hour: putting an existing blob refreshes its
//! mtime), so gc does not race a writer that has stored its blobs but not yet its
//! entry. [`Store::ls`] lists entries and totals.
//!
//! # Remotes
//!
//! [`RemoteBackend`] moves objects to and from a remote holding the same two tables
//! under the same names; [`ObjectStoreRemote`] implements it with `object_store` for a
//! shared directory or S3. [`Store::push`] sends blobs before the entry that names
//! them; [`Store::pull`] rehashes every blob while writing it and checks the entry, so
//! a damaged or poisoned remote object is rejected, never placed. Writes to a remote
//! are create-only (first writer wins), except that a remote blob found damaged is
//! overwritten with local bytes verified against its name
//! ([`Store::repair_remote_blob`]). gc never touches a remote.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod blob;
mod entry;
mod error;
mod fsutil;
mod gc;
mod hash;
mod key;
mod objstore;
mod remote;
pub mod sign;
mod statcache;
mod store;
mod verify;

pub use blob::{Blob, BlobRef, BlobWriter};
pub use entry::{ActionEntry, ENTRY_MAGIC};
pub use error::{CacheError, Result};
pub use gc::{GcPolicy, GcReason, GcReport, RemovedEntry};
pub use hash::{Digest, Key};
pub use key::{
    canonical_json, closest, diff_parts, Closest, KeyBuilder, KeyParts, PartChange, KEY_CONTEXT,
};
pub use objstore::{ObjectStoreRemote, RemoteOptions, RemoteUrl, REMOTE_URL_FORMS};
pub use remote::{
    object_name, verify_remote, ObjectKind, PullAllReport, PushAllReport, PushReport, Rejected,
    RemoteBackend, RemoteVerifyReport,
};
pub use sign::{EntrySignature, PublicKey, SigningKey, TrustedKeys};
pub use statcache::{FileDigest, StatCache, RACY_WINDOW};
pub use store::{
    EntrySummary, Listing, Lookup, MissReason, PutEntry, Store, UnreadableEntry, LAYOUT,
    MAX_SMALL_OBJECT,
};
pub use verify::{BadBlob, BadEntry, BlobProblem, EntryProblem, VerifyReport};
