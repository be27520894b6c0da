//! Products of whole row-major matrices (activations and weights), on either GEMM the
//! build has: faer's (through [`super::gemm`]) or the `gemm` crate that candle's CPU
//! matmul calls (through `CpuStorage::matmul`, without copying: buffers move into a
//! `CpuStorage` for the call and back). On two Zen 3 cores the `gemm` crate is markedly
//! faster for the weight-gradient shape (`dYᵀ·X`, long reduction over tokens); see
//! [`super::gemm::Mode`].

use super::gemm::{gemm, View, ViewMut};
use super::real::dispatch;
use super::Real;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};
use rayon::prelude::*;

/// A weight matrix: its tensor's storage, where its data starts, and the data.
#[derive(Debug, Clone, Copy)]
pub struct WeightMat<'a, T> {
    pub storage: &'a CpuStorage,
    pub offset: usize,
    pub data: &'a [T],
}

/// Where an operand's row-major data lives.
pub enum Src<'a, 'w, T> {
    /// A buffer of ours: moved into a `CpuStorage` for candle's matmul and back.
    Buf(&'a mut Vec<T>),
    Weight(&'a WeightMat<'w, T>),
}

/// A row-major `rows x cols` matrix, used as is or transposed.
pub struct Operand<'a, 'w, T> {
    pub src: Src<'a, 'w, T>,
    pub rows: usize,
    pub cols: usize,
    pub transposed: bool,
}

impl<'a, 'w, T> Operand<'a, 'w, T> {
    pub fn buf(v: &'a mut Vec<T>, rows: usize, cols: usize) -> Self {
        Operand {
            src: Src::Buf(v),
            rows,
            cols,
            transposed: false,
        }
    }

    pub fn weight(w: &'a WeightMat<'w, T>, rows: usize, cols: usize) -> Self {
        Operand {
            src: Src::Weight(w),
            rows,
            cols,
            transposed: false,
        }
    }

    pub fn t(mut self) -> Self {
        self.transposed = !self.transposed;
        self
    }

    /// Shape as used: (rows, cols) of the (maybe transposed) matrix.
    fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    fn layout(&self, offset: usize) -> Layout {
        if self.transposed {
            Layout::new((self.cols, self.rows).into(), vec![1, self.cols], offset)
        } else {
            Layout::contiguous_with_offset((self.rows, self.cols), offset)
        }
    }

    fn view(&self) -> View<T> {
        let s: &[T] = match &self.src {
            Src::Buf(v) => v,
            Src::Weight(w) => w.data,
        };
        let v = View::new(s, self.rows, self.cols);
        if self.transposed {
            v.t()
        } else {
            v
        }
    }
}

/// Runs `f` with `v` as a `CpuStorage` (a move, not a copy) and puts it back.
fn as_storage<T: Real, R>(v: &mut Vec<T>, f: impl FnOnce(&CpuStorage) -> R) -> R {
    let s = T::to_cpu_storage_owned(std::mem::take(v));
    let r = f(&s);
    *v = T::cpu_storage_data(s).expect("the dtype we put in");
    r
}

fn with_operand<T: Real, R>(
    o: &mut Operand<'_, '_, T>,
    f: impl FnOnce(&CpuStorage, usize) -> R,
) -> R {
    match &mut o.src {
        Src::Buf(v) => as_storage(v, |s| f(s, 0)),
        Src::Weight(w) => f(w.storage, w.offset),
    }
}

/// dst (m x n, row-major, resized if replaced) = a·b, or += when `acc`; through candle's
/// matmul when `candle` (and the product is not tiny), else [`gemm`].
pub fn matmul<T: Real>(
    dst: &mut Vec<T>,
    acc: bool,
    mut a: Operand<'_, '_, T>,
    mut b: Operand<'_, '_, T>,
    candle: bool,
) {
    let (m, k) = a.shape();
    let (k2, n) = b.shape();
    assert_eq!(k, k2, "inner dimensions");
    if acc {
        assert_eq!(dst.len(), m * n, "accumulated product shape");
    }
    if !candle || m * n * k < 1 << 21 {
        if !acc {
            dst.resize(m * n, T::zero_());
        }
        gemm(ViewMut::new(dst, m, n), acc, a.view(), b.view());
        return;
    }
    let la = a.layout(0);
    let lb = b.layout(0);
    let out = with_operand(&mut a, |sa, oa| {
        with_operand(&mut b, |sb, ob| {
            let la = relayout(&la, oa);
            let lb = relayout(&lb, ob);
            sa.matmul(sb, (1, m, n, k), &la, &lb)
                .expect("matmul on CPU storages of one dtype")
        })
    });
    let out = T::cpu_storage_data(out).expect("the dtype we put in");
    if acc {
        add_into(dst, &out);
    } else {
        *dst = out;
    }
}

fn relayout(l: &Layout, offset: usize) -> Layout {
    Layout::new(l.shape().clone(), l.stride().to_vec(), offset)
}

/// dst += src, in parallel.
pub fn add_into<T: Real>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    dst.par_chunks_mut(1 << 15)
        .zip(src.par_chunks(1 << 15))
        .for_each(|(d, s)| {
            dispatch!({
                for (d, s) in d.iter_mut().zip(s) {
                    *d += *s;
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Storage, Tensor};

    #[test]
    fn both_backends_agree_on_every_layout() {
        let (m, k, n) = (150, 130, 140);
        let a: Vec<f64> = (0..m * k)
            .map(|i| ((i * 7919) % 101) as f64 - 50.0)
            .collect();
        let w: Vec<f64> = (0..n * k)
            .map(|i| ((i * 104729) % 97) as f64 - 48.0)
            .collect();
        // A "weight" at an offset inside a tensor's storage.
        let mut padded = vec![0.0; 7];
        padded.extend_from_slice(&w);
        let t = Tensor::from_vec(padded, 7 + n * k, &Device::Cpu).unwrap();
        let (guard, _) = t.storage_and_layout();
        let Storage::Cpu(storage) = &*guard else {
            panic!("cpu")
        };
        let wm = WeightMat {
            storage,
            offset: 7,
            data: &storage.as_slice::<f64>().unwrap()[7..],
        };
        let mut results = Vec::new();
        for candle in [false, true] {
            let mut av = a.clone();
            // y = a·wᵀ, then y += a·wᵀ, then aᵀ·y (transposed buffer operand).
            let mut y = Vec::new();
            matmul(
                &mut y,
                false,
                Operand::buf(&mut av, m, k),
                Operand::weight(&wm, n, k).t(),
                candle,
            );
            matmul(
                &mut y,
                true,
                Operand::buf(&mut av, m, k),
                Operand::weight(&wm, n, k).t(),
                candle,
            );
            let mut z = Vec::new();
            matmul(
                &mut z,
                false,
                Operand::buf(&mut av, m, k).t(),
                Operand::buf(&mut y, m, n),
                candle,
            );
            assert_eq!(av, a, "buffers come back unchanged");
            results.push((y, z));
        }
        assert_eq!(results[0], results[1]);
        // Spot check one entry of y against the definition.
        let y01: f64 = (0..k).map(|l| a[l] * w[k + l]).sum();
        assert_eq!(results[0].0[1], 2.0 * y01);
    }
}
