//! Action-cache entries and their on-disk encoding.
//!
//! An entry file is
//!
//! ```text
//! rkyv archive of EntryRecord | b"C2IACT02" | BLAKE3(archive) (32 bytes)
//! ```
//!
//! Format 2 added an optional ed25519 signature ([`crate::sign`]); files of format 1
//! (`C2IACT01`, no signature field) are still read, as unsigned entries.
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
use crate::sign::{EntrySignature, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Magic and format version at the start of the trailer.
pub const ENTRY_MAGIC: [u8; 8] = *b"C2IACT02";
/// Format 1: no signature field; still read.
const ENTRY_MAGIC_V1: [u8; 8] = *b"C2IACT01";
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
    /// The signature of whoever wrote it, if it was signed ([`crate::sign`]).
    pub signature: Option<Box<EntrySignature>>,
    /// The metadata exactly as stored (what a signature covers).
    #[serde(skip)]
    pub(crate) metadata_json: String,
}

impl ActionEntry {
    /// The metadata as the JSON text stored in the entry.
    pub fn metadata_json(&self) -> &str {
        &self.metadata_json
    }

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
    signature: Option<SignatureRecord>,
}

/// Format 1, as written before signatures.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EntryRecordV1 {
    key: [u8; 32],
    stage: String,
    created_unix_ms: u64,
    outputs: Vec<OutputRecord>,
    metadata_json: String,
    parts: PartsRecord,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SignatureRecord {
    public_key: [u8; 32],
    signature: Vec<u8>,
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

/// The metadata as stored: compact JSON.
pub(crate) fn metadata_text(key: &Key, metadata: &serde_json::Value) -> Result<String> {
    serde_json::to_string(metadata).map_err(|e| CacheError::Serialize {
        what: format!("metadata of entry {key}"),
        reason: e.to_string(),
    })
}

/// Encodes an entry with its checksum trailer (its `metadata_json` is what is stored).
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
        metadata_json: entry.metadata_json.clone(),
        parts: PartsRecord {
            stage: entry.parts.stage.clone(),
            version: entry.parts.version.clone(),
            params: fields(&entry.parts.params),
            inputs: fields(&entry.parts.inputs),
            env: fields(&entry.parts.env),
        },
        signature: entry.signature.as_deref().map(|s| SignatureRecord {
            public_key: s.public_key.0,
            signature: s.signature.to_vec(),
        }),
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
    if magic != ENTRY_MAGIC && magic != ENTRY_MAGIC_V1 {
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
    if magic == ENTRY_MAGIC_V1 {
        let rec = rkyv::access::<ArchivedEntryRecordV1, rkyv::rancor::Error>(&aligned)
            .map_err(|e| format!("invalid archive: {e}"))?;
        return assemble(
            rec.key,
            rec.stage.as_str(),
            rec.created_unix_ms.to_native(),
            &rec.outputs,
            rec.metadata_json.as_str(),
            &rec.parts,
            None,
        );
    }
    let rec = rkyv::access::<ArchivedEntryRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|e| format!("invalid archive: {e}"))?;
    let signature = match rec.signature.as_ref() {
        None => None,
        Some(s) => {
            let signature: [u8; 64] = s.signature.as_slice().try_into().map_err(|_| {
                format!(
                    "signature of {} bytes, an ed25519 signature has 64",
                    s.signature.len()
                )
            })?;
            Some(Box::new(EntrySignature {
                public_key: PublicKey(s.public_key),
                signature,
            }))
        }
    };
    assemble(
        rec.key,
        rec.stage.as_str(),
        rec.created_unix_ms.to_native(),
        &rec.outputs,
        rec.metadata_json.as_str(),
        &rec.parts,
        signature,
    )
}

fn assemble(
    key: [u8; 32],
    stage: &str,
    created_unix_ms: u64,
    outputs_rec: &rkyv::vec::ArchivedVec<ArchivedOutputRecord>,
    metadata_json: &str,
    parts_rec: &ArchivedPartsRecord,
    signature: Option<Box<EntrySignature>>,
) -> std::result::Result<ActionEntry, String> {
    let mut outputs = BTreeMap::new();
    for o in outputs_rec.iter() {
        let blob = BlobRef {
            digest: Digest::from_bytes(o.digest),
            size: o.size.to_native(),
        };
        if outputs.insert(o.name.as_str().to_owned(), blob).is_some() {
            return Err(format!("output `{}` appears twice", o.name.as_str()));
        }
    }
    let metadata =
        serde_json::from_str(metadata_json).map_err(|e| format!("metadata is not JSON: {e}"))?;
    let parts = KeyParts {
        stage: parts_rec.stage.as_str().to_owned(),
        version: parts_rec.version.as_str().to_owned(),
        params: unfields(&parts_rec.params, "parameter")?,
        inputs: unfields(&parts_rec.inputs, "input")?,
        env: unfields(&parts_rec.env, "environment entry")?,
    };
    Ok(ActionEntry {
        key: Key::from_bytes(key),
        stage: stage.to_owned(),
        created_unix_ms,
        outputs,
        metadata,
        parts,
        signature,
        metadata_json: metadata_json.to_owned(),
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
        let metadata = serde_json::json!({"shape": [2, 3], "secs": 0.5});
        ActionEntry {
            key: parts.key(),
            stage: "factors".into(),
            created_unix_ms: 1_700_000_000_000,
            outputs,
            metadata_json: metadata.to_string(),
            metadata,
            parts,
            signature: None,
        }
    }

    #[test]
    fn format_1_entries_still_read_as_unsigned() {
        let e = sample();
        let rec = EntryRecordV1 {
            key: *e.key.as_bytes(),
            stage: e.stage.clone(),
            created_unix_ms: e.created_unix_ms,
            outputs: e
                .outputs
                .iter()
                .map(|(name, b)| OutputRecord {
                    name: name.clone(),
                    digest: *b.digest.as_bytes(),
                    size: b.size,
                })
                .collect(),
            metadata_json: e.metadata_json.clone(),
            parts: PartsRecord {
                stage: e.parts.stage.clone(),
                version: e.parts.version.clone(),
                params: fields(&e.parts.params),
                inputs: fields(&e.parts.inputs),
                env: fields(&e.parts.env),
            },
        };
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&rec).expect("archive");
        let mut bytes = archive.to_vec();
        bytes.extend_from_slice(&ENTRY_MAGIC_V1);
        bytes.extend_from_slice(blake3::hash(&archive).as_bytes());
        assert_eq!(decode(&bytes, Path::new("x")).expect("decode"), e);
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
