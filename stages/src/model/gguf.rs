//! Reading GGUF headers from untrusted files.
//!
//! candle's `gguf_file::Content::read` bounds most lengths by the file size, but not
//! everything: a `general.alignment` of 0 divides by zero (a panic), and tensor
//! shapes are multiplied without overflow checks, so a forged shape can wrap to a small
//! byte count and then ask for far more elements than the file holds when the tensor
//! is read. [`read_content`] therefore walks the header itself first (every length
//! checked against the bytes left, nesting bounded, no allocation sized by the file
//! beyond a short key), lets candle parse it only when the walk succeeds, and then
//! checks every tensor's shape, byte size and offset against the file. Any problem is
//! a [`ModelError::Format`] naming the file, the byte offset and what was expected.

use super::ModelError;
use candle_core::quantized::gguf_file;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The deepest nesting of arrays accepted (candle's limit).
const MAX_DEPTH: usize = 64;
/// The most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: u64 = 4;

/// Reads and checks the header of the GGUF file open in `reader` (at its start).
pub fn read_content<R: Read + Seek>(
    reader: &mut R,
    path: &Path,
) -> Result<gguf_file::Content, ModelError> {
    let fail = |message: String| ModelError::Format {
        path: path.to_path_buf(),
        message: format!("not a valid GGUF file: {message}"),
    };
    let io = |source: std::io::Error| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_size = reader.seek(SeekFrom::End(0)).map_err(io)?;
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    {
        let mut walker = Walker {
            r: BufReader::new(&mut *reader),
            pos: 0,
            size: file_size,
            wide: true,
        };
        walker.header().map_err(fail)?;
    }
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let ct = gguf_file::Content::read(&mut BufReader::new(&mut *reader))
        .map_err(|e| fail(e.to_string()))?;
    check_tensors(&ct, file_size).map_err(fail)?;
    Ok(ct)
}

/// Every tensor's element count, byte size and data range fit the file.
fn check_tensors(ct: &gguf_file::Content, file_size: u64) -> Result<(), String> {
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &ct.tensor_infos[name];
        let dims = info.shape.dims();
        let elems = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: shape {dims:?} overflows"))?;
        let block = info.ggml_dtype.block_size();
        if block == 0 || elems % block != 0 {
            return Err(format!(
                "tensor `{name}`: {elems} elements is not a multiple of the {:?} block size {block}",
                info.ggml_dtype
            ));
        }
        let bytes = (elems / block)
            .checked_mul(info.ggml_dtype.type_size())
            .ok_or_else(|| format!("tensor `{name}`: byte size overflows"))?;
        let end = ct
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| s.checked_add(bytes as u64));
        match end {
            Some(end) if end <= file_size => {}
            _ => {
                return Err(format!(
                    "tensor `{name}` ({:?}, shape {dims:?}) needs {bytes} bytes at data offset {}, \
                     past the end of the {file_size}-byte file (truncated file?)",
                    info.ggml_dtype, info.offset
                ))
            }
        }
    }
    Ok(())
}

/// A forward-only walk over the header, tracking the position itself.
struct Walker<R> {
    r: R,
    pos: u64,
    size: u64,
    /// Lengths are u64 (GGUF v2, v3) rather than u32 (v1).
    wide: bool,
}

impl<R: Read> Walker<R> {
    fn left(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<(), String> {
        if n > self.left() {
            return Err(format!(
                "{what} at byte {} needs {n} bytes, only {} remain (truncated file?)",
                self.pos,
                self.left()
            ));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{what} at byte {}: {e}", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    fn len(&mut self, what: &str) -> Result<u64, String> {
        if self.wide {
            self.u64(what)
        } else {
            Ok(self.u32(what)? as u64)
        }
    }

    fn prefix(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        self.need(n, what)?;
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| format!("{what} at byte {}: {e}", self.pos))?;
        if copied != n {
            return Err(format!("{what} at byte {}: file ended early", self.pos));
        }
        self.pos += n;
        Ok(())
    }

    /// A string; its text only when it is short (keys), else skipped.
    fn string(&mut self, what: &str) -> Result<Option<Vec<u8>>, String> {
        let at = self.pos;
        let n = self.len(what)?;
        if n > self.left() {
            return Err(format!(
                "{what} at byte {at} claims {n} bytes, only {} remain (truncated file?)",
                self.left()
            ));
        }
        if n <= 256 {
            let mut v = vec![0u8; n as usize];
            self.r
                .read_exact(&mut v)
                .map_err(|e| format!("{what} at byte {}: {e}", self.pos))?;
            self.pos += n;
            Ok(Some(v))
        } else {
            self.skip(n, what)?;
            Ok(None)
        }
    }

    fn header(&mut self) -> Result<(), String> {
        let magic = self.bytes::<4>("magic")?;
        if &magic != b"GGUF" && &magic != b"FUGG" {
            return Err(format!(
                "magic is {magic:02x?}, expected \"GGUF\" (is this a GGUF file?)"
            ));
        }
        let version = self.u32("version")?;
        self.wide = match version {
            1 => false,
            2 | 3 => true,
            v => return Err(format!("version {v}, expected 1, 2 or 3")),
        };
        let tensors = self.len("tensor count")?;
        let kvs = self.len("metadata count")?;
        // Cheapest possible entries, so absurd counts fail before any loop.
        let min_kv = self.prefix() + 4 + 1;
        let min_tensor = self.prefix() + 4 + 4 + 8;
        let needed = kvs
            .saturating_mul(min_kv)
            .saturating_add(tensors.saturating_mul(min_tensor));
        if needed > self.left() {
            return Err(format!(
                "header declares {tensors} tensors and {kvs} metadata entries, which need at \
                 least {needed} bytes, only {} remain (truncated file?)",
                self.left()
            ));
        }
        for i in 0..kvs {
            let key = self.string(&format!("key of metadata entry {i}"))?;
            let ty = self.u32("metadata value type")?;
            let is_alignment = key.as_deref() == Some(b"general.alignment".as_slice());
            let at = self.pos;
            let value = self.value(ty, 0)?;
            if is_alignment {
                if let Some(a) = value {
                    if a == 0 || !a.is_power_of_two() {
                        return Err(format!(
                            "general.alignment at byte {at} is {a}, expected a power of two"
                        ));
                    }
                }
            }
        }
        for i in 0..tensors {
            let what = format!("tensor info {i}");
            self.string(&what)?;
            let dims = self.u32(&what)? as u64;
            if dims > MAX_DIMS {
                return Err(format!(
                    "{what} has {dims} dimensions, at most {MAX_DIMS} are allowed"
                ));
            }
            let dim_bytes = if self.wide { 8 } else { 4 };
            self.skip(dims * dim_bytes, &what)?;
            self.u32(&what)?; // dtype: candle checks the value
            self.u64(&what)?; // offset: checked against the file after parsing
        }
        Ok(())
    }

    /// Skips one value of type `ty`; returns it when it is a non-negative integer of a
    /// type candle reads `general.alignment` from.
    fn value(&mut self, ty: u32, depth: usize) -> Result<Option<u64>, String> {
        if depth > MAX_DEPTH {
            return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
        }
        let what = "metadata value";
        Ok(match ty {
            0 => Some(self.bytes::<1>(what)?[0] as u64),
            1 => u64::try_from(self.bytes::<1>(what)?[0] as i8).ok(),
            2 => Some(u16::from_le_bytes(self.bytes::<2>(what)?) as u64),
            3 => u64::try_from(i16::from_le_bytes(self.bytes::<2>(what)?)).ok(),
            4 => Some(self.u32(what)? as u64),
            5 => u64::try_from(i32::from_le_bytes(self.bytes::<4>(what)?)).ok(),
            6 => {
                self.skip(4, what)?;
                None
            }
            7 => {
                let b = self.bytes::<1>(what)?[0];
                if b > 1 {
                    return Err(format!("bool at byte {} is {b}", self.pos - 1));
                }
                None
            }
            8 => {
                self.string("string value")?;
                None
            }
            9 => {
                let at = self.pos;
                let elem = self.u32("array element type")?;
                let n = self.len("array length")?;
                let fixed = match elem {
                    0 | 1 | 7 => Some(1u64),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    8 => None,
                    9 => None,
                    t => return Err(format!("array at byte {at}: unknown element type {t}")),
                };
                let min = fixed.unwrap_or(if elem == 8 {
                    self.prefix()
                } else {
                    4 + self.prefix()
                });
                let needed = n.saturating_mul(min);
                if needed > self.left() {
                    return Err(format!(
                        "array at byte {at} of {n} elements needs at least {needed} bytes, \
                         only {} remain (truncated file?)",
                        self.left()
                    ));
                }
                match fixed {
                    Some(s) if elem != 7 => self.skip(n * s, "array")?,
                    _ => {
                        for _ in 0..n {
                            self.value(elem, depth + 1)?;
                        }
                    }
                }
                None
            }
            10 => Some(self.u64(what)?),
            11 => u64::try_from(i64::from_le_bytes(self.bytes::<8>(what)?)).ok(),
            12 => {
                self.skip(8, what)?;
                None
            }
            t => {
                return Err(format!(
                    "unknown metadata value type {t} at byte {}",
                    self.pos
                ))
            }
        })
    }
}

/// Typed access to a GGUF file's metadata, with errors that name the file and the key.
pub struct Meta<'a> {
    pub ct: &'a gguf_file::Content,
    pub path: &'a Path,
}

impl<'a> Meta<'a> {
    pub fn new(ct: &'a gguf_file::Content, path: &'a Path) -> Meta<'a> {
        Meta { ct, path }
    }

    fn missing(&self, key: &str, expected: &str) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            field: key.to_string(),
            expected: format!("{expected} in the GGUF metadata"),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.ct.metadata.contains_key(key)
    }

    pub fn str(&self, key: &str) -> Result<String, ModelError> {
        match self.ct.metadata.get(key) {
            Some(gguf_file::Value::String(s)) => Ok(s.clone()),
            _ => Err(self.missing(key, "a string")),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>, ModelError> {
        if self.has(key) {
            self.str(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize, ModelError> {
        use gguf_file::Value::*;
        let v = match self.ct.metadata.get(key) {
            Some(U8(v)) => *v as i128,
            Some(I8(v)) => *v as i128,
            Some(U16(v)) => *v as i128,
            Some(I16(v)) => *v as i128,
            Some(U32(v)) => *v as i128,
            Some(I32(v)) => *v as i128,
            Some(U64(v)) => *v as i128,
            Some(I64(v)) => *v as i128,
            _ => return Err(self.missing(key, "an integer")),
        };
        usize::try_from(v).map_err(|_| self.missing(key, "a non-negative integer"))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        if self.has(key) {
            self.usize(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn f64(&self, key: &str) -> Result<f64, ModelError> {
        match self.ct.metadata.get(key) {
            Some(gguf_file::Value::F32(v)) => Ok(*v as f64),
            Some(gguf_file::Value::F64(v)) => Ok(*v),
            _ => Err(self.missing(key, "a float")),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        if self.has(key) {
            self.f64(key).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.ct.metadata.get(key) {
            None => Ok(None),
            Some(gguf_file::Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.missing(key, "a boolean")),
        }
    }

    /// An optional token id (`tokenizer.ggml.*_token_id`).
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, ModelError> {
        match self.opt_usize(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| self.missing(key, "a 32-bit integer")),
        }
    }
}
