//! Block SVDs on the GPU (feature `cuda`): cuSOLVER's Jacobi SVD (`gesvdj`), in f32 or
//! f64, written straight into the stored layout.
//!
//! A row-major `m × n` block W is, as it lies in memory, the column-major `n × m`
//! matrix B = Wᵀ, which is what cuSOLVER reads. The economy SVD B = U_B S V_Bᵀ gives
//! W = V_B S U_Bᵀ, so W's left vectors are V_B and its right vectors U_B; and a
//! column-major `m × k` matrix is a row-major `k × m` one: V_B's buffer *is* the stored
//! Uᵀ and U_B's buffer the stored Vᵀ. No transpose is ever made. `gesvdj` returns the
//! singular values in descending order, as the CPU path stores them.
//!
//! The results are checked against faer in `factor_matches_faer` (run with the GPU
//! checks of `c2i gpu check`): reconstruction and orthogonality at the precision's
//! rounding level, the same singular values.

use super::svd::Thin;
use super::{BlockFactors, FactorError, MatrixFactors, Precision, RowMajor};
use cudarc::cusolver::safe::DnHandle;
use cudarc::cusolver::sys;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

fn gpu_err(what: &str, e: impl std::fmt::Debug) -> FactorError {
    FactorError::Gpu(format!("{what}: {e:?}"))
}

/// A cuSOLVER handle on a stream.
pub struct GpuSvd {
    stream: Arc<CudaStream>,
    handle: DnHandle,
}

/// The f32 and f64 entry points of `gesvdj`.
trait Gesvdj: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Default {
    #[allow(clippy::too_many_arguments)]
    unsafe fn buffer_size(
        h: sys::cusolverDnHandle_t,
        m: i32,
        n: i32,
        a: *const Self,
        s: *const Self,
        u: *const Self,
        v: *const Self,
        lwork: *mut i32,
        info: sys::gesvdjInfo_t,
    ) -> sys::cusolverStatus_t;
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        h: sys::cusolverDnHandle_t,
        m: i32,
        n: i32,
        a: *mut Self,
        s: *mut Self,
        u: *mut Self,
        v: *mut Self,
        work: *mut Self,
        lwork: i32,
        dev_info: *mut i32,
        info: sys::gesvdjInfo_t,
    ) -> sys::cusolverStatus_t;
}

const VECTORS: sys::cusolverEigMode_t = sys::cusolverEigMode_t::CUSOLVER_EIG_MODE_VECTOR;

macro_rules! gesvdj {
    ($t:ty, $size:ident, $run:ident) => {
        impl Gesvdj for $t {
            unsafe fn buffer_size(
                h: sys::cusolverDnHandle_t,
                m: i32,
                n: i32,
                a: *const Self,
                s: *const Self,
                u: *const Self,
                v: *const Self,
                lwork: *mut i32,
                info: sys::gesvdjInfo_t,
            ) -> sys::cusolverStatus_t {
                sys::$size(h, VECTORS, 1, m, n, a, m, s, u, m, v, n, lwork, info)
            }
            unsafe fn run(
                h: sys::cusolverDnHandle_t,
                m: i32,
                n: i32,
                a: *mut Self,
                s: *mut Self,
                u: *mut Self,
                v: *mut Self,
                work: *mut Self,
                lwork: i32,
                dev_info: *mut i32,
                info: sys::gesvdjInfo_t,
            ) -> sys::cusolverStatus_t {
                sys::$run(
                    h, VECTORS, 1, m, n, a, m, s, u, m, v, n, work, lwork, dev_info, info,
                )
            }
        }
    };
}

gesvdj!(f32, cusolverDnSgesvdj_bufferSize, cusolverDnSgesvdj);
gesvdj!(f64, cusolverDnDgesvdj_bufferSize, cusolverDnDgesvdj);

fn check(what: &str, s: sys::cusolverStatus_t) -> Result<(), FactorError> {
    if s == sys::cusolverStatus_t::CUSOLVER_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(gpu_err(what, s))
    }
}

impl GpuSvd {
    /// A handle on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Result<GpuSvd, FactorError> {
        let handle = DnHandle::new(stream.clone()).map_err(|e| gpu_err("cusolverDnCreate", e))?;
        Ok(GpuSvd { stream, handle })
    }

    /// A handle on candle's stream of a CUDA device.
    pub fn on(device: &candle_core::Device) -> Result<GpuSvd, FactorError> {
        match device {
            candle_core::Device::Cuda(d) => GpuSvd::new(d.cuda_stream()),
            other => Err(FactorError::Gpu(format!(
                "the GPU SVD needs a CUDA device, not {other:?}"
            ))),
        }
    }

    /// Economy SVD of the column-major `m × n` matrix `a` (host values): returns
    /// (U: `m × k`, S: `k`, V: `n × k`), column-major, `k = min(m, n)`.
    fn gesvdj<T: Gesvdj>(
        &self,
        a: &[T],
        m: usize,
        n: usize,
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>), FactorError> {
        let k = m.min(n);
        let (mi, ni) = (
            i32::try_from(m).map_err(|e| gpu_err("rows", e))?,
            i32::try_from(n).map_err(|e| gpu_err("cols", e))?,
        );
        let st = &self.stream;
        let mut da = st.clone_htod(a).map_err(|e| gpu_err("upload", e))?;
        let mut ds = st.alloc_zeros::<T>(k).map_err(|e| gpu_err("alloc", e))?;
        let mut du = st
            .alloc_zeros::<T>(m * k)
            .map_err(|e| gpu_err("alloc", e))?;
        let mut dv = st
            .alloc_zeros::<T>(n * k)
            .map_err(|e| gpu_err("alloc", e))?;
        let mut dinfo = st.alloc_zeros::<i32>(1).map_err(|e| gpu_err("alloc", e))?;
        let mut params: sys::gesvdjInfo_t = std::ptr::null_mut();
        // SAFETY: cuSOLVER calls on buffers of the sizes the calls document, all on the
        // handle's stream; `params` is created and destroyed here.
        unsafe {
            check(
                "cusolverDnCreateGesvdjInfo",
                sys::cusolverDnCreateGesvdjInfo(&mut params),
            )?;
            let result = (|| {
                let mut lwork = 0i32;
                {
                    let (pa, _ga) = da.device_ptr(st);
                    let (ps, _gs) = ds.device_ptr(st);
                    let (pu, _gu) = du.device_ptr(st);
                    let (pv, _gv) = dv.device_ptr(st);
                    check(
                        "gesvdj_bufferSize",
                        T::buffer_size(
                            self.handle.cu(),
                            mi,
                            ni,
                            pa as *const T,
                            ps as *const T,
                            pu as *const T,
                            pv as *const T,
                            &mut lwork,
                            params,
                        ),
                    )?;
                }
                let mut work = st
                    .alloc_zeros::<T>(lwork.max(1) as usize)
                    .map_err(|e| gpu_err("alloc", e))?;
                {
                    let (pa, _ga) = da.device_ptr_mut(st);
                    let (ps, _gs) = ds.device_ptr_mut(st);
                    let (pu, _gu) = du.device_ptr_mut(st);
                    let (pv, _gv) = dv.device_ptr_mut(st);
                    let (pw, _gw) = work.device_ptr_mut(st);
                    let (pi, _gi) = dinfo.device_ptr_mut(st);
                    check(
                        "gesvdj",
                        T::run(
                            self.handle.cu(),
                            mi,
                            ni,
                            pa as *mut T,
                            ps as *mut T,
                            pu as *mut T,
                            pv as *mut T,
                            pw as *mut T,
                            lwork,
                            pi as *mut i32,
                            params,
                        ),
                    )?;
                }
                Ok::<(), FactorError>(())
            })();
            sys::cusolverDnDestroyGesvdjInfo(params);
            result?;
        }
        let info = st.clone_dtoh(&dinfo).map_err(|e| gpu_err("download", e))?;
        if info[0] != 0 {
            return Err(FactorError::Gpu(format!(
                "gesvdj did not converge on a {m}x{n} matrix (info {})",
                info[0]
            )));
        }
        Ok((
            st.clone_dtoh(&du).map_err(|e| gpu_err("download", e))?,
            st.clone_dtoh(&ds).map_err(|e| gpu_err("download", e))?,
            st.clone_dtoh(&dv).map_err(|e| gpu_err("download", e))?,
        ))
    }

    /// Thin SVD of the row-major `m × n` block `data` (see the module docs).
    pub(crate) fn thin_svd_block(
        &self,
        data: &[f32],
        m: usize,
        n: usize,
        precision: Precision,
    ) -> Result<Thin, FactorError> {
        // Column-major n × m: B = Wᵀ. U_B (n × k) is Vᵀ, V_B (m × k) is Uᵀ.
        match precision {
            Precision::F32 => {
                let (vt, s, ut) = self.gesvdj::<f32>(data, n, m)?;
                Ok(Thin { ut, s, vt })
            }
            Precision::F64 => {
                let wide: Vec<f64> = data.iter().map(|&x| f64::from(x)).collect();
                let (vt, s, ut) = self.gesvdj::<f64>(&wide, n, m)?;
                let narrow = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
                Ok(Thin {
                    ut: narrow(ut),
                    s: narrow(s),
                    vt: narrow(vt),
                })
            }
        }
    }

    /// Block SVD of `w` with `blocks` = K row-blocks on the GPU.
    pub fn factor_matrix(
        &self,
        w: RowMajor<'_>,
        blocks: usize,
        precision: Precision,
    ) -> Result<MatrixFactors, FactorError> {
        let ranges = super::split_rows(w.rows(), blocks)?;
        w.check_finite()?;
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let thin = self.thin_svd_block(w.block(r), r.rows, w.cols(), precision)?;
            out.push(BlockFactors::new(
                r.start,
                r.rows,
                w.cols(),
                thin.ut,
                thin.s,
                thin.vt,
            )?);
        }
        MatrixFactors::new(w.rows(), w.cols(), out)
    }
}
