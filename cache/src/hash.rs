//! 32-byte BLAKE3 values: [`Digest`] names a blob by its bytes, [`Key`] names an action
//! (a stage run on given inputs). Both print and serialise as 64 lowercase hex digits.

use crate::error::CacheError;
use std::fmt;
use std::str::FromStr;

macro_rules! hash32 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps 32 raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }

            /// Parses 64 hex digits (either case).
            pub fn from_hex(s: &str) -> Result<Self, CacheError> {
                parse_hex(s).map(Self).ok_or_else(|| CacheError::BadHex {
                    what: $what,
                    input: s.chars().take(80).collect(),
                })
            }

            /// The first 12 hex digits, for messages.
            pub fn short(&self) -> String {
                let mut h = self.to_hex();
                h.truncate(12);
                h
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = CacheError;
            fn from_str(s: &str) -> Result<Self, CacheError> {
                Self::from_hex(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_hex(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

hash32!(
    /// BLAKE3 of a blob's bytes: its name in the blob store.
    Digest,
    "digest"
);

hash32!(
    /// The content key of an action: BLAKE3 over a stage's [`KeyParts`](crate::KeyParts).
    Key,
    "key"
);

impl Digest {
    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

/// A file's digest can be the input of a key (the model file feeding `weights`).
impl From<Digest> for Key {
    fn from(d: Digest) -> Self {
        Key(d.0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_serde() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()).ok(), Some(d));
        let json = serde_json::to_string(&d).expect("serialise");
        assert_eq!(json, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, d);
        assert!(Key::from_hex("xyz").is_err());
        assert!(Key::from_hex(&"g".repeat(64)).is_err());
    }
}
