//! Signed action-cache entries (ed25519).
//!
//! Anyone who can write a shared cache could otherwise make every reader use results
//! nobody computed: the BLAKE3 trailer of an entry proves it undamaged, not honest. A run
//! with a [`SigningKey`] signs each entry it writes; a reader with [`TrustedKeys`] uses a
//! remote entry only when it carries a valid signature by one of them.
//!
//! The signature covers [`signed_message`]: a domain tag, the entry's key (which is the
//! BLAKE3 of its key parts: stage, version, parameters, input digests, environment, and
//! [`crate::Store::lookup`] checks that the parts hash to it), every output's name,
//! digest and size, and the metadata exactly as stored (the JSON text in the archive,
//! so no float formatting can make a valid signature fail). The creation time is not
//! covered: it says nothing about the result.
//!
//! Keys: a private key is a PKCS#8 PEM file (`openssl pkey -in FILE -text` reads it);
//! a public key is written `ed25519:` followed by the base64 of its 32 bytes.

use crate::entry::ActionEntry;
use crate::error::{CacheError, Result};
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Domain separation for entry signatures (changing it invalidates every signature).
pub const SIGNATURE_CONTEXT: &[u8] = b"c2i action entry signature v1\0";

/// The prefix of a written public key.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// An ed25519 public key, as `ed25519:BASE64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses `ed25519:BASE64` (32 bytes); the error says what was expected.
    pub fn parse(s: &str) -> std::result::Result<PublicKey, String> {
        let s = s.trim();
        let b64 = s.strip_prefix(PUBLIC_KEY_PREFIX).ok_or_else(|| {
            format!(
                "`{s}`: expected a public key written `ed25519:BASE64` (from `c2i cache keygen`)"
            )
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("`{s}`: not base64: {e}"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("`{s}`: {} bytes, an ed25519 public key has 32", b.len())
        })?;
        ed25519_dalek::VerifyingKey::from_bytes(&arr)
            .map_err(|e| format!("`{s}`: not a valid ed25519 point: {e}"))?;
        Ok(PublicKey(arr))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_KEY_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A signature on an entry: who signed, and the 64 signature bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EntrySignature {
    /// The signer's public key.
    pub public_key: PublicKey,
    /// The ed25519 signature of [`signed_message`].
    #[serde(with = "sig_b64")]
    pub signature: [u8; 64],
}

mod sig_b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let s = String::deserialize(d)?;
        let b = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)?;
        b.try_into()
            .map_err(|_| serde::de::Error::custom("a signature has 64 bytes"))
    }
}

/// The bytes an entry's signature covers (see the module docs).
pub fn signed_message(entry: &ActionEntry) -> Vec<u8> {
    let mut m = Vec::with_capacity(128 + entry.metadata_json().len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(entry.key.as_bytes());
    m.extend_from_slice(&(entry.outputs.len() as u64).to_le_bytes());
    for (name, blob) in &entry.outputs {
        m.extend_from_slice(&(name.len() as u64).to_le_bytes());
        m.extend_from_slice(name.as_bytes());
        m.extend_from_slice(blob.digest.as_bytes());
        m.extend_from_slice(&blob.size.to_le_bytes());
    }
    let meta = entry.metadata_json().as_bytes();
    m.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    m.extend_from_slice(meta);
    m
}

/// A private signing key.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public())
    }
}

impl SigningKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SigningKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| CacheError::Signing {
            what: "a new key".into(),
            reason: format!("no random bytes from the operating system: {e}"),
        })?;
        Ok(SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Reads a PKCS#8 PEM private key (as written by [`SigningKey::save`]).
    pub fn load(path: &Path) -> Result<SigningKey> {
        let text = std::fs::read_to_string(path).map_err(|e| CacheError::io("read", path, e))?;
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_pem(&text).map_err(|e| CacheError::Signing {
                what: path.display().to_string(),
                reason: format!(
                    "not an ed25519 private key in PKCS#8 PEM (`c2i cache keygen` writes one): {e}"
                ),
            })?;
        Ok(SigningKey { key })
    }

    /// Writes the key as PKCS#8 PEM, readable by its owner only; refuses to replace a
    /// file.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| CacheError::Signing {
                what: path.display().to_string(),
                reason: format!("cannot encode the key: {e}"),
            })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| CacheError::io("create", path, e))?;
        f.write_all(pem.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| CacheError::io("write", path, e))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `entry` (its key, outputs and metadata).
    pub fn sign(&self, entry: &ActionEntry) -> EntrySignature {
        EntrySignature {
            public_key: self.public(),
            signature: self.key.sign(&signed_message(entry)).to_bytes(),
        }
    }
}

/// Whether an entry's signature holds.
pub fn signature_valid(entry: &ActionEntry) -> bool {
    let Some(sig) = &entry.signature else {
        return false;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&sig.public_key.0) else {
        return false;
    };
    vk.verify(
        &signed_message(entry),
        &ed25519_dalek::Signature::from_bytes(&sig.signature),
    )
    .is_ok()
}

/// The public keys whose signatures a reader accepts on remote entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys(pub Vec<PublicKey>);

impl TrustedKeys {
    /// Parses `ed25519:...` keys (a list, or one comma-separated string).
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> std::result::Result<TrustedKeys, String> {
        let mut out = Vec::new();
        for k in keys {
            for one in k
                .as_ref()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                out.push(PublicKey::parse(one)?);
            }
        }
        out.sort();
        out.dedup();
        Ok(TrustedKeys(out))
    }

    /// True when no key is trusted (then nothing can be checked).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when `entry` carries a valid signature by a trusted key, else why not.
    pub fn check(&self, entry: &ActionEntry) -> std::result::Result<(), String> {
        let Some(sig) = &entry.signature else {
            return Err("the entry is not signed".into());
        };
        if !self.0.contains(&sig.public_key) {
            return Err(format!(
                "signed by {}, which is not among the trusted keys",
                sig.public_key
            ));
        }
        if !signature_valid(entry) {
            return Err(format!(
                "the signature by {} does not match the entry (altered after signing)",
                sig.public_key
            ));
        }
        Ok(())
    }
}
