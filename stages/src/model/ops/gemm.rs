//! Strided matrix views over slices and a GEMM on them (faer's kernels), parallel by
//! splitting the output into independent blocks.
//!
//! faer's own `Par::rayon` splits inside one product and synchronises its threads at
//! every block; on two shared cores, independent sequential products over halves of the
//! output keep both cores busy with less waiting. [`set_mode`] picks the strategy (for
//! benchmarks).

use super::Real;
use faer::{Accum, MatMut, MatRef, Par};
use std::sync::atomic::{AtomicU8, Ordering};

/// A read-only strided matrix view. The caller keeps the data alive and unaliased by
/// writers while the view is used (the views are internal to this module's users).
#[derive(Clone, Copy, Debug)]
pub struct View<T> {
    ptr: *const T,
    pub rows: usize,
    pub cols: usize,
    rs: isize,
    cs: isize,
}

// SAFETY: a view is a pointer plus shape; T: Sync makes sharing reads across threads fine.
unsafe impl<T: Sync> Send for View<T> {}
unsafe impl<T: Sync> Sync for View<T> {}

/// A writable strided matrix view; distinct `ViewMut`s used at the same time must not
/// overlap.
#[derive(Clone, Copy, Debug)]
pub struct ViewMut<T> {
    ptr: *mut T,
    pub rows: usize,
    pub cols: usize,
    rs: isize,
    cs: isize,
}

// SAFETY: see `ViewMut`: callers hand disjoint views to different threads.
unsafe impl<T: Send> Send for ViewMut<T> {}
unsafe impl<T: Send> Sync for ViewMut<T> {}

impl<T> View<T> {
    /// A row-major `rows x cols` matrix at the start of `s`.
    pub fn new(s: &[T], rows: usize, cols: usize) -> View<T> {
        Self::strided(s, rows, cols, cols)
    }

    /// `rows x cols` with rows `row_stride` apart, at the start of `s`.
    pub fn strided(s: &[T], rows: usize, cols: usize, row_stride: usize) -> View<T> {
        assert!(cols <= row_stride || rows <= 1);
        if rows > 0 && cols > 0 {
            assert!(
                (rows - 1) * row_stride + cols <= s.len(),
                "view out of bounds"
            );
        }
        View {
            ptr: s.as_ptr(),
            rows,
            cols,
            rs: row_stride as isize,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> View<T> {
        View {
            ptr: self.ptr,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Rows `r0..r0+n`.
    pub fn rows(self, r0: usize, n: usize) -> View<T> {
        assert!(r0 + n <= self.rows);
        View {
            // SAFETY: in bounds of the viewed matrix.
            ptr: unsafe { self.ptr.offset(r0 as isize * self.rs) },
            rows: n,
            ..self
        }
    }

    /// Columns `c0..c0+n`.
    pub fn cols(self, c0: usize, n: usize) -> View<T> {
        assert!(c0 + n <= self.cols);
        View {
            // SAFETY: in bounds of the viewed matrix.
            ptr: unsafe { self.ptr.offset(c0 as isize * self.cs) },
            cols: n,
            ..self
        }
    }

    fn faer(&self) -> MatRef<'_, T> {
        // SAFETY: the constructors checked the extent against a live slice.
        unsafe { MatRef::from_raw_parts(self.ptr, self.rows, self.cols, self.rs, self.cs) }
    }
}

impl<T> ViewMut<T> {
    pub fn new(s: &mut [T], rows: usize, cols: usize) -> ViewMut<T> {
        Self::strided(s, rows, cols, cols)
    }

    pub fn strided(s: &mut [T], rows: usize, cols: usize, row_stride: usize) -> ViewMut<T> {
        assert!(cols <= row_stride || rows <= 1);
        if rows > 0 && cols > 0 {
            assert!(
                (rows - 1) * row_stride + cols <= s.len(),
                "view out of bounds"
            );
        }
        ViewMut {
            ptr: s.as_mut_ptr(),
            rows,
            cols,
            rs: row_stride as isize,
            cs: 1,
        }
    }

    pub fn rows(self, r0: usize, n: usize) -> ViewMut<T> {
        assert!(r0 + n <= self.rows);
        ViewMut {
            // SAFETY: in bounds of the viewed matrix.
            ptr: unsafe { self.ptr.offset(r0 as isize * self.rs) },
            rows: n,
            ..self
        }
    }

    pub fn cols(self, c0: usize, n: usize) -> ViewMut<T> {
        assert!(c0 + n <= self.cols);
        ViewMut {
            // SAFETY: in bounds of the viewed matrix.
            ptr: unsafe { self.ptr.offset(c0 as isize * self.cs) },
            cols: n,
            ..self
        }
    }

    /// Row `i` as a slice (unit column stride only).
    ///
    /// # Safety
    /// No other live reference may overlap the row, and the data must outlive `'a`.
    pub unsafe fn row_slice<'a>(&self, i: usize) -> &'a mut [T] {
        assert!(i < self.rows && (self.cs == 1 || self.cols <= 1));
        std::slice::from_raw_parts_mut(self.ptr.offset(i as isize * self.rs), self.cols)
    }

    fn faer(&mut self) -> MatMut<'_, T> {
        // SAFETY: the constructors checked the extent against a live slice.
        unsafe { MatMut::from_raw_parts_mut(self.ptr, self.rows, self.cols, self.rs, self.cs) }
    }
}

/// How [`gemm`] uses the threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Split the output into one block per rayon thread; sequential products.
    Split,
    /// faer's own parallel product.
    Faer,
    /// One thread.
    Seq,
    /// Whole-matrix products (see [`super::linear`]) through candle's CPU matmul (the
    /// `gemm` crate, its own threading); everything else as `Split`.
    Candle,
    /// Only the weight-gradient products (`dYᵀ·X`) through candle's matmul; everything
    /// else as `Split`.
    CandleDw,
}

/// The default: `CandleDw` (see [`Mode`] and the measurements in [`super::linear`]).
static MODE: AtomicU8 = AtomicU8::new(4);

/// Sets the parallel strategy of [`gemm`] for the whole process.
pub fn set_mode(m: Mode) {
    MODE.store(
        match m {
            Mode::Split => 0,
            Mode::Faer => 1,
            Mode::Seq => 2,
            Mode::Candle => 3,
            Mode::CandleDw => 4,
        },
        Ordering::Relaxed,
    );
}

pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        0 => Mode::Split,
        1 => Mode::Faer,
        2 => Mode::Seq,
        3 => Mode::Candle,
        _ => Mode::CandleDw,
    }
}

/// c = a·b (or c += a·b when `acc`), using the rayon threads when the product is big
/// enough. Sequential inside rayon tasks that already run in parallel: use [`gemm_seq`].
pub fn gemm<T: Real>(c: ViewMut<T>, acc: bool, a: View<T>, b: View<T>) {
    check(&c, &a, &b);
    let threads = rayon::current_num_threads();
    let flops = c.rows * c.cols * a.cols;
    if threads <= 1 || flops < 1 << 21 {
        return gemm_seq(c, acc, a, b);
    }
    match mode() {
        Mode::Seq => gemm_seq(c, acc, a, b),
        Mode::Faer => run(c, acc, a, b, Par::rayon(threads)),
        Mode::Split | Mode::Candle | Mode::CandleDw => split(c, acc, a, b, threads),
    }
}

/// c = a·b (or +=) on the calling thread.
pub fn gemm_seq<T: Real>(c: ViewMut<T>, acc: bool, a: View<T>, b: View<T>) {
    check(&c, &a, &b);
    run(c, acc, a, b, Par::Seq)
}

fn check<T>(c: &ViewMut<T>, a: &View<T>, b: &View<T>) {
    assert!(
        c.rows == a.rows && c.cols == b.cols && a.cols == b.rows,
        "gemm shapes: c {}x{}, a {}x{}, b {}x{}",
        c.rows,
        c.cols,
        a.rows,
        a.cols,
        b.rows,
        b.cols
    );
}

fn run<T: Real>(mut c: ViewMut<T>, acc: bool, a: View<T>, b: View<T>, par: Par) {
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    if a.cols == 0 {
        if !acc {
            for i in 0..c.rows {
                for j in 0..c.cols {
                    // SAFETY: in bounds of c.
                    unsafe { *c.ptr.offset(i as isize * c.rs + j as isize * c.cs) = T::zero_() };
                }
            }
        }
        return;
    }
    let beta = if acc { Accum::Add } else { Accum::Replace };
    faer::linalg::matmul::matmul(c.faer(), beta, a.faer(), b.faer(), T::lit(1.0), par);
}

/// Splits the larger output dimension into `parts` blocks of whole multiples of 16 and
/// runs the blocks as independent sequential products.
fn split<T: Real>(c: ViewMut<T>, acc: bool, a: View<T>, b: View<T>, parts: usize) {
    let by_rows = c.rows >= c.cols;
    let n = if by_rows { c.rows } else { c.cols };
    let step = n.div_ceil(parts).div_ceil(16) * 16;
    let blocks: Vec<(usize, usize)> = (0..n)
        .step_by(step.max(1))
        .map(|s| (s, step.min(n - s)))
        .collect();
    rayon::scope(|sc| {
        for &(s, len) in &blocks {
            let (cb, ab, bb) = if by_rows {
                (c.rows(s, len), a.rows(s, len), b)
            } else {
                (c.cols(s, len), a, b.cols(s, len))
            };
            sc.spawn(move |_| run(cb, acc, ab, bb, Par::Seq));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    c[i * n + j] += a[i * k + l] * b[l * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn every_mode_and_layout_matches_the_naive_product() {
        let (m, k, n) = (300, 70, 250);
        let a: Vec<f64> = (0..m * k)
            .map(|i| ((i * 7919) % 101) as f64 - 50.0)
            .collect();
        let b: Vec<f64> = (0..k * n)
            .map(|i| ((i * 104729) % 97) as f64 - 48.0)
            .collect();
        let want = naive(&a, &b, m, k, n);
        // bᵀ stored row-major, so b = view(bt).t().
        let mut bt = vec![0.0; k * n];
        for l in 0..k {
            for j in 0..n {
                bt[j * k + l] = b[l * n + j];
            }
        }
        let before = mode();
        for mode in [Mode::Split, Mode::Faer, Mode::Seq] {
            set_mode(mode);
            let mut c = vec![1.0; m * n];
            gemm(
                ViewMut::new(&mut c, m, n),
                false,
                View::new(&a, m, k),
                View::new(&bt, n, k).t(),
            );
            assert_eq!(c, want, "{mode:?}");
            gemm(
                ViewMut::new(&mut c, m, n),
                true,
                View::new(&a, m, k),
                View::new(&b, k, n),
            );
            let twice: Vec<f64> = want.iter().map(|x| 2.0 * x).collect();
            assert_eq!(c, twice, "{mode:?} accumulate");
            // A wide output (split by columns) written into a strided sub-block.
            let mut wide = vec![0.0; 4 * (n + 3)];
            gemm(
                ViewMut::strided(&mut wide, 4, n, n + 3),
                false,
                View::new(&a, m, k).rows(5, 4),
                View::new(&b, k, n),
            );
            for i in 0..4 {
                assert_eq!(
                    &wide[i * (n + 3)..i * (n + 3) + n],
                    &want[(5 + i) * n..(6 + i) * n]
                );
            }
        }
        set_mode(before);
    }
}
