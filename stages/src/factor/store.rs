//! Factors as safetensors bytes, readable in place from a memory map.
//!
//! One file per (matrix, K). Tensors, all F32 little-endian, for each block `b`:
//! `block.{b}.ut` of shape `[k, rows_b]`, `block.{b}.s` of shape `[k]`,
//! `block.{b}.vt` of shape `[k, cols]`. The header's metadata holds
//! `format = "c2i.block-svd"`, `version`, `rows`, `cols` and `blocks` (K); block row
//! ranges are not stored because they follow from `rows` and K
//! ([`split_rows`](super::split_rows)), and are checked on read.
//!
//! Reading borrows the tensors' bytes as `&[f32]` with `bytemuck::try_cast_slice`
//! when they are 4-byte aligned (always, for a memory map or a `Vec<u8>` from the
//! system allocator: safetensors pads its header to 8 bytes and every tensor here is
//! a whole number of f32s) and falls back to a copy otherwise. Every name, dtype,
//! shape and singular value is checked, so a truncated or foreign file is an error,
//! never a panic.

use super::types::{check_block, check_singular_values, BlockView, FactorsView};
use super::FactorError;
use safetensors::tensor::{Dtype, Metadata, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::HashMap;

/// Value of the `format` metadata key.
pub const FORMAT: &str = "c2i.block-svd";
/// Value of the `version` metadata key; bump when the layout changes.
pub const FORMAT_VERSION: &str = "1";

/// One f32 tensor to serialize, borrowed.
struct F32Tensor<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl View for F32Tensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

fn tensor_names(block: usize) -> [String; 3] {
    [
        format!("block.{block}.ut"),
        format!("block.{block}.s"),
        format!("block.{block}.vt"),
    ]
}

/// Serializes factors to safetensors bytes.
pub fn to_safetensors(factors: &FactorsView<'_>) -> Result<Vec<u8>, FactorError> {
    let mut tensors = Vec::with_capacity(3 * factors.num_blocks());
    for (b, block) in factors.blocks().iter().enumerate() {
        let k = block.rank();
        let [ut, s, vt] = tensor_names(b);
        tensors.push((
            ut,
            F32Tensor {
                shape: vec![k, block.rows()],
                data: block.ut(),
            },
        ));
        tensors.push((
            s,
            F32Tensor {
                shape: vec![k],
                data: block.s(),
            },
        ));
        tensors.push((
            vt,
            F32Tensor {
                shape: vec![k, block.cols()],
                data: block.vt(),
            },
        ));
    }
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), FORMAT_VERSION.to_string()),
        ("rows".to_string(), factors.rows().to_string()),
        ("cols".to_string(), factors.cols().to_string()),
        ("blocks".to_string(), factors.num_blocks().to_string()),
    ]);
    // Sorted header keys: the same factors always give the same blob.
    Ok(crate::model::weights::canonical_safetensors(
        safetensors::serialize(tensors, Some(meta))?,
    ))
}

fn malformed(message: impl Into<String>) -> FactorError {
    FactorError::Format {
        message: message.into(),
    }
}

fn meta_usize(meta: &HashMap<String, String>, key: &str) -> Result<usize, FactorError> {
    let v = meta
        .get(key)
        .ok_or_else(|| malformed(format!("metadata has no `{key}`")))?;
    v.parse().map_err(|_| {
        malformed(format!(
            "metadata `{key}` = {v:?} is not a non-negative integer"
        ))
    })
}

/// The f32 values of tensor `name`, borrowed when aligned, checked to have `shape`.
fn f32_tensor<'a>(
    meta: &Metadata,
    data: &'a [u8],
    name: &str,
    shape: &[usize],
) -> Result<Cow<'a, [f32]>, FactorError> {
    let info = meta
        .info(name)
        .ok_or_else(|| malformed(format!("missing tensor `{name}`")))?;
    if info.dtype != Dtype::F32 {
        return Err(malformed(format!(
            "tensor `{name}` has dtype {:?}, expected F32",
            info.dtype
        )));
    }
    if info.shape != shape {
        return Err(malformed(format!(
            "tensor `{name}` has shape {:?}, expected {shape:?}",
            info.shape
        )));
    }
    let (start, end) = info.data_offsets;
    let bytes = data.get(start..end).ok_or_else(|| {
        malformed(format!(
            "tensor `{name}`: offsets {start}..{end} out of range"
        ))
    })?;
    if cfg!(target_endian = "little") {
        if let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
            return Ok(Cow::Borrowed(values));
        }
    }
    // Unaligned (or big-endian): copy.
    if bytes.len() % 4 != 0 {
        return Err(malformed(format!(
            "tensor `{name}`: {} bytes is not a whole number of f32",
            bytes.len()
        )));
    }
    Ok(Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// Reads factors written by [`to_safetensors`], borrowing from `bytes` where possible.
pub fn from_safetensors(bytes: &[u8]) -> Result<FactorsView<'_>, FactorError> {
    let (header_len, meta) = SafeTensors::read_metadata(bytes)?;
    // read_metadata checked that the header and all tensors lie inside `bytes`.
    let data = bytes
        .get(8 + header_len..)
        .ok_or_else(|| malformed("buffer shorter than its header"))?;
    let kv = meta
        .metadata()
        .as_ref()
        .ok_or_else(|| malformed("no metadata: not a c2i factor file"))?;
    match kv.get("format") {
        Some(f) if f == FORMAT => {}
        other => {
            return Err(malformed(format!(
                "metadata `format` is {other:?}, expected {FORMAT:?}"
            )))
        }
    }
    match kv.get("version") {
        Some(v) if v == FORMAT_VERSION => {}
        other => {
            return Err(malformed(format!(
                "metadata `version` is {other:?}, this build reads {FORMAT_VERSION:?}"
            )))
        }
    }
    let rows = meta_usize(kv, "rows")?;
    let cols = meta_usize(kv, "cols")?;
    let nblocks = meta_usize(kv, "blocks")?;
    // Count tensors before splitting rows, so a forged `blocks` cannot make us
    // allocate more than the header already holds.
    let found = meta.tensors().len();
    if nblocks.checked_mul(3) != Some(found) {
        return Err(malformed(format!(
            "{found} tensors for {nblocks} blocks (expected 3 per block)"
        )));
    }
    let ranges = super::split_rows(rows, nblocks)
        .map_err(|e| malformed(format!("{rows} rows in {nblocks} blocks: {e}")))?;
    if cols == 0 {
        return Err(malformed("metadata `cols` is 0"));
    }
    let mut blocks = Vec::with_capacity(nblocks);
    for (b, range) in ranges.iter().enumerate() {
        let k = range.rows.min(cols);
        let [ut_name, s_name, vt_name] = tensor_names(b);
        let ut = f32_tensor(&meta, data, &ut_name, &[k, range.rows])?;
        let s = f32_tensor(&meta, data, &s_name, &[k])?;
        let vt = f32_tensor(&meta, data, &vt_name, &[k, cols])?;
        check_block(Some(b), range.rows, cols, ut.len(), s.len(), vt.len())?;
        check_singular_values(b, &s)?;
        blocks.push(BlockView::new(range.start, range.rows, cols, ut, s, vt)?);
    }
    FactorsView::new(rows, cols, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::{factor_matrix, MatrixFactors, RowMajor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn sample(rows: usize, cols: usize, k: usize) -> MatrixFactors {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        factor_matrix(RowMajor::new(&w, rows, cols).unwrap(), k).unwrap()
    }

    #[test]
    fn round_trip_is_exact_and_zero_copy() {
        let f = sample(13, 7, 3);
        let bytes = to_safetensors(&f.view()).unwrap();
        // A Vec<u8> from the system allocator is at least 8-aligned.
        let v = from_safetensors(&bytes).unwrap();
        assert!(v.is_borrowed(), "aligned bytes should be read in place");
        assert_eq!(v.to_owned_factors(), f);
        // Readable by any safetensors reader, with the documented names and shapes.
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("block.0.ut").unwrap();
        assert_eq!(t.shape(), &[5, 5]);
        assert_eq!(st.tensor("block.2.vt").unwrap().shape(), &[4, 7]);
        assert_eq!(st.tensor("block.1.s").unwrap().shape(), &[4]);
        // The same factors give the same bytes every time (the cache keys blobs by hash;
        // the header's metadata passes through a HashMap on the way).
        for _ in 0..20 {
            assert_eq!(to_safetensors(&f.view()).unwrap(), bytes);
        }
    }

    #[test]
    fn unaligned_bytes_are_copied() {
        let f = sample(9, 11, 2);
        let bytes = to_safetensors(&f.view()).unwrap();
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let v = from_safetensors(&shifted[1..]).unwrap();
        assert!(!v.is_borrowed());
        assert_eq!(v.to_owned_factors(), f);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let f = sample(9, 11, 2);
        let bytes = to_safetensors(&f.view()).unwrap();
        // Truncated.
        for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(from_safetensors(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Garbage.
        assert!(from_safetensors(&[0xff; 64]).is_err());
        // A valid safetensors file that is not a factor file.
        let other = safetensors::serialize(
            [(
                "x",
                F32Tensor {
                    shape: vec![2],
                    data: &[1.0, 2.0],
                },
            )],
            None,
        )
        .unwrap();
        let e = from_safetensors(&other).unwrap_err();
        assert!(e.to_string().contains("metadata"), "{e}");
    }

    /// Re-serializes `f`'s tensors with one changed, and the given metadata.
    fn rewrite(
        f: &MatrixFactors,
        meta: HashMap<String, String>,
        change: &str,
        shape: Vec<usize>,
        data: &[f32],
    ) -> Vec<u8> {
        let v = f.view();
        let mut tensors = Vec::new();
        for (b, block) in v.blocks().iter().enumerate() {
            let [ut, s, vt] = tensor_names(b);
            let k = block.rank();
            tensors.push((
                ut,
                F32Tensor {
                    shape: vec![k, block.rows()],
                    data: block.ut(),
                },
            ));
            tensors.push((
                s,
                F32Tensor {
                    shape: vec![k],
                    data: block.s(),
                },
            ));
            tensors.push((
                vt,
                F32Tensor {
                    shape: vec![k, block.cols()],
                    data: block.vt(),
                },
            ));
        }
        for t in tensors.iter_mut().filter(|t| t.0 == change) {
            t.1 = F32Tensor {
                shape: shape.clone(),
                data,
            };
        }
        safetensors::serialize(tensors, Some(meta)).unwrap()
    }

    fn meta(rows: usize, cols: usize, blocks: usize) -> HashMap<String, String> {
        HashMap::from([
            ("format".into(), FORMAT.into()),
            ("version".into(), FORMAT_VERSION.into()),
            ("rows".into(), rows.to_string()),
            ("cols".into(), cols.to_string()),
            ("blocks".into(), blocks.to_string()),
        ])
    }

    #[test]
    fn inconsistent_content_is_an_error() {
        let f = sample(9, 11, 2);
        let b0 = f.blocks()[0].clone();
        // Sanity: an unchanged rewrite reads back.
        let ok = rewrite(&f, meta(9, 11, 2), "none", vec![], &[]);
        assert!(from_safetensors(&ok).is_ok());
        // Wrong metadata.
        for m in [
            meta(10, 11, 2),
            meta(9, 12, 2),
            meta(9, 11, 3),
            meta(9, 11, 0),
        ] {
            assert!(from_safetensors(&rewrite(&f, m, "none", vec![], &[])).is_err());
        }
        let mut m = meta(9, 11, 2);
        m.insert("rows".into(), "-3".into());
        assert!(from_safetensors(&rewrite(&f, m, "none", vec![], &[])).is_err());
        let mut m = meta(9, 11, 2);
        m.insert("version".into(), "99".into());
        assert!(from_safetensors(&rewrite(&f, m, "none", vec![], &[])).is_err());
        // Wrong shape.
        let e = from_safetensors(&rewrite(
            &f,
            meta(9, 11, 2),
            "block.0.vt",
            vec![b0.cols(), b0.rank()],
            b0.vt(),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("shape"), "{e}");
        // Singular values not descending.
        let mut s = b0.s().to_vec();
        s.reverse();
        let e = from_safetensors(&rewrite(&f, meta(9, 11, 2), "block.0.s", vec![s.len()], &s))
            .unwrap_err();
        assert!(e.to_string().contains("descending"), "{e}");
    }
}
