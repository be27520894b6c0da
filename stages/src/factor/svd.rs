//! The thin SVD of one row-block with faer, written straight into the stored layout.
//!
//! faer's `Mat::thin_svd()` reads the *global* parallelism setting; this module calls
//! the lower-level `faer::linalg::svd::svd` instead, which takes the parallelism as an
//! argument, so one caller can run many sequential SVDs on rayon's pool while another
//! runs one SVD with faer's own threads, without touching process-wide state. It is
//! the same routine `thin_svd()` runs (`Svd::new_thin` calls it with the same default
//! parameters).
//!
//! Output goes directly into Uᵀ (`k × m` row-major) and Vᵀ (`k × n` row-major): the
//! transpose of a row-major `k × m` buffer is a column-major `m × k` matrix, which is
//! the layout faer prefers for singular vectors, so no reshuffle is needed.

use super::Precision;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors, SvdError};
use faer::traits::RealField;
use faer::{ColMut, Mat, MatMut, MatRef, Par};

/// Thin SVD of `a` (`m × n`) into `ut` (`k × m`), `s` (`k`), `vt` (`k × n`), with
/// `k = min(m, n)`. The slices must have exactly those lengths.
fn svd_into<T: RealField>(
    a: MatRef<'_, T>,
    ut: &mut [T],
    s: &mut [T],
    vt: &mut [T],
    par: Par,
) -> Result<(), SvdError> {
    let (m, n) = a.shape();
    let k = m.min(n);
    let u = MatMut::from_row_major_slice_mut(ut, k, m).transpose_mut();
    let v = MatMut::from_row_major_slice_mut(vt, k, n).transpose_mut();
    let s = ColMut::from_slice_mut(s).as_diagonal_mut();
    let req = svd_scratch::<T>(
        m,
        n,
        ComputeSvdVectors::Thin,
        ComputeSvdVectors::Thin,
        par,
        Default::default(),
    );
    let mut mem = MemBuffer::new(req);
    svd(
        a,
        s,
        Some(u),
        Some(v),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
}

/// The factors of one block, f32, in the stored layout.
pub(crate) struct Thin {
    pub ut: Vec<f32>,
    pub s: Vec<f32>,
    pub vt: Vec<f32>,
}

/// Thin SVD of the row-major `m × n` block `data` in the given precision.
///
/// Callers have checked `data.len() == m * n`, `m, n >= 1` and that every value is
/// finite.
pub(crate) fn thin_svd_block(
    data: &[f32],
    m: usize,
    n: usize,
    precision: Precision,
    par: Par,
) -> Result<Thin, SvdError> {
    let k = m.min(n);
    match precision {
        Precision::F32 => {
            let a = MatRef::from_row_major_slice(data, m, n);
            let mut ut = vec![0f32; k * m];
            let mut s = vec![0f32; k];
            let mut vt = vec![0f32; k * n];
            svd_into(a, &mut ut, &mut s, &mut vt, par)?;
            Ok(Thin { ut, s, vt })
        }
        Precision::F64 => {
            // Column-major f64 copy: the layout faer's bidiagonalization reads best.
            let a = Mat::<f64>::from_fn(m, n, |i, j| f64::from(data[i * n + j]));
            let mut ut = vec![0f64; k * m];
            let mut s = vec![0f64; k];
            let mut vt = vec![0f64; k * n];
            svd_into(a.as_ref(), &mut ut, &mut s, &mut vt, par)?;
            let narrow = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            // Rounding to nearest is monotone, so `s` stays descending in f32.
            Ok(Thin {
                ut: narrow(ut),
                s: narrow(s),
                vt: narrow(vt),
            })
        }
    }
}
