//! Action-cache entries and their on-disk encoding.
//!
//! An entry file is
//!
//! ```text
//! rkyv archive of EntryRecord | b"C2IACT01" | BLAKE3(archive) (32 bytes)
//! ```
//!
//! Reading checks, in order: the file is long enough for the 40-byte trailer; the
//! magic (which is also the format version); the BLAKE3 of the archive; the archive
//! itself with bytecheck (`rkyv::access`), so a damaged or hostile file is an error,
//! never undefined behaviour; then the metadata JSON and that output names are unique.
//!
//! The checksum is not redundant with bytecheck: bytecheck proves the archive is
//! memory-safe to read, not that it is the archive that was written (a flipped bit in
//! a size or a digest still validates). The records below are private, so the public
//! [`ActionEntry`] can evolve; a change to the records must change [`ENTRY_MAGIC`],
//! after which older entries read as corrupt, which `lookup` reports as a miss and
//! the engine simply recomputes.

use crate::blob::BlobRef;
use crate::error::{CacheError, Result};
use crate::hash::{Digest, Key};
use crate::key::KeyParts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Magic and format version at the start of the trailer.
pub const ENTRY_MAGIC: [u8; 8] = *b"C2IACT01";
const TRAILER_LEN: usize = 8 + 32;

/// One action-cache entry: the outputs of a stage run, by name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionEntry {
    /// The action's key (equal to `parts.key()`).
    pub key: Key,
    /// The stage that produced it.
    pub stage: String,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Output name -> blob.
    pub outputs: BTreeMap<String, BlobRef>,
    /// Small stage-defined metadata (shapes, timings, metrics).
    pub metadata: serde_json::Value,
    /// What the key was made of, for `status --why`.
    pub parts: KeyParts,
}

impl ActionEntry {
    /// Sum of the output sizes (a blob named twice counts twice).
    pub fn total_bytes(&self) -> u64 {
        self.outputs.values().map(|b| b.size).sum()
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EntryRecord {
    key: [u8; 32],
    stage: String,
    created_unix_ms: u64,
    outputs: Vec<OutputRecord>,
    metadata_json: String,
    parts: PartsRecord,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct OutputRecord {
    name: String,
    digest: [u8; 32],
    size: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct PartsRecord {
    stage: String,
    version: String,
    params: Vec<FieldRecord>,
    inputs: Vec<FieldRecord>,
    env: Vec<FieldRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct FieldRecord {
    name: String,
    value: String,
}

fn fields(map: &BTreeMap<String, String>) -> Vec<FieldRecord> {
    map.iter()
        .map(|(name, value)| FieldRecord {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn unfields(
    v: &rkyv::vec::ArchivedVec<ArchivedFieldRecord>,
    what: &str,
) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for f in v.iter() {
        if map
            .insert(f.name.as_str().to_owned(), f.value.as_str().to_owned())
            .is_some()
        {
            return Err(format!("{what} `{}` appears twice", f.name.as_str()));
        }
    }
    Ok(map)
}

/// Encodes an entry with its checksum trailer.
pub(crate) fn encode(entry: &ActionEntry) -> Result<Vec<u8>> {
    let rec = EntryRecord {
        key: *entry.key.as_bytes(),
        stage: entry.stage.clone(),
        created_unix_ms: entry.created_unix_ms,
        outputs: entry
            .outputs
            .iter()
            .map(|(name, b)| OutputRecord {
                name: name.clone(),
                digest: *b.digest.as_bytes(),
                size: b.size,
            })
            .collect(),
        metadata_json: serde_json::to_string(&entry.metadata).map_err(|e| {
            CacheError::Serialize {
                what: format!("metadata of entry {}", entry.key),
                reason: e.to_string(),
            }
        })?,
        parts: PartsRecord {
            stage: entry.parts.stage.clone(),
            version: entry.parts.version.clone(),
            params: fields(&entry.parts.params),
            inputs: fields(&entry.parts.inputs),
            env: fields(&entry.parts.env),
        },
    };
    let archive =
        rkyv::to_bytes::<rkyv::rancor::Error>(&rec).map_err(|e| CacheError::Serialize {
            what: format!("entry {}", entry.key),
            reason: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(archive.len() + TRAILER_LEN);
    out.extend_from_slice(&archive);
    out.extend_from_slice(&ENTRY_MAGIC);
    out.extend_from_slice(blake3::hash(&archive).as_bytes());
    Ok(out)
}

/// Decodes and checks an entry file's bytes; `path` is for messages only.
pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<ActionEntry> {
    decode_inner(bytes).map_err(|reason| CacheError::CorruptEntry {
        path: path.to_path_buf(),
        reason,
    })
}

fn decode_inner(bytes: &[u8]) -> std::result::Result<ActionEntry, String> {
    if bytes.len() < TRAILER_LEN {
        return Err(format!(
            "{} bytes, shorter than the {TRAILER_LEN}-byte trailer",
            bytes.len()
        ));
    }
    let (archive, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let (magic, sum) = trailer.split_at(8);
    if magic != ENTRY_MAGIC {
        return Err(format!(
            "trailer magic {:?}, expected {:?} (another format version?)",
            String::from_utf8_lossy(magic),
            String::from_utf8_lossy(&ENTRY_MAGIC)
        ));
    }
    let actual = blake3::hash(archive);
    if actual.as_bytes()[..] != sum[..] {
        return Err(format!(
            "checksum mismatch: trailer says {}, the archive hashes to {}",
            crate::hash::hex(sum),
            actual.to_hex()
        ));
    }
    // rkyv needs the archive aligned; a Vec<u8> from fs::read is not guaranteed to be.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    let rec = rkyv::access::<ArchivedEntryRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|e| format!("invalid archive: {e}"))?;

    let mut outputs = BTreeMap::new();
    for o in rec.outputs.iter() {
        let blob = BlobRef {
            digest: Digest::from_bytes(o.digest),
            size: o.size.to_native(),
        };
        if outputs.insert(o.name.as_str().to_owned(), blob).is_some() {
            return Err(format!("output `{}` appears twice", o.name.as_str()));
        }
    }
    let metadata = serde_json::from_str(rec.metadata_json.as_str())
        .map_err(|e| format!("metadata is not JSON: {e}"))?;
    let parts = KeyParts {
        stage: rec.parts.stage.as_str().to_owned(),
        version: rec.parts.version.as_str().to_owned(),
        params: unfields(&rec.parts.params, "parameter")?,
        inputs: unfields(&rec.parts.inputs, "input")?,
        env: unfields(&rec.parts.env, "environment entry")?,
    };
    Ok(ActionEntry {
        key: Key::from_bytes(rec.key),
        stage: rec.stage.as_str().to_owned(),
        created_unix_ms: rec.created_unix_ms.to_native(),
        outputs,
        metadata,
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ActionEntry {
        let parts = crate::KeyBuilder::new("factors", "1")
            .param("blocks", 4)
            .env("dtype", "f32")
            .build()
            .expect("parts");
        let mut outputs = BTreeMap::new();
        outputs.insert(
            "u".to_string(),
            BlobRef {
                digest: Digest::of(b"u"),
                size: 1,
            },
        );
        ActionEntry {
            key: parts.key(),
            stage: "factors".into(),
            created_unix_ms: 1_700_000_000_000,
            outputs,
            metadata: serde_json::json!({"shape": [2, 3], "secs": 0.5}),
            parts,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let e = sample();
        let bytes = encode(&e).expect("encode");
        let back = decode(&bytes, Path::new("x")).expect("decode");
        assert_eq!(back, e);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_an_error() {
        let bytes = encode(&sample()).expect("encode");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, Path::new("x")).is_err(), "flip at {i} accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], Path::new("x")).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn garbage_with_a_valid_trailer_is_an_error_not_ub() {
        // Checksum passes, so only bytecheck stands between this and a wild read.
        for len in [0usize, 1, 7, 64, 300] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut b = junk.clone();
            b.extend_from_slice(&ENTRY_MAGIC);
            b.extend_from_slice(blake3::hash(&junk).as_bytes());
            assert!(
                decode(&b, Path::new("x")).is_err(),
                "junk of {len} accepted"
            );
        }
    }
}
