//! The element types the kernels run on (f32 and f64), and a vectorisable f32 `exp`.

use candle_core::WithDType;

/// A float the kernels support: f32 (fast path) or f64 (finite-difference checks).
pub trait Real: WithDType + faer::traits::ComplexField + Send + Sync {
    /// e^x. f32 uses a branch-free polynomial that the compiler vectorises (relative
    /// error ~1e-7 over the normal range); f64 uses the standard library.
    fn exp_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn ln_(self) -> Self;
    /// The larger of two values (no NaN handling needed here).
    fn max_(self, other: Self) -> Self;
    /// A constant.
    fn lit(v: f64) -> Self;
    fn zero_() -> Self {
        Self::lit(0.0)
    }
}

impl Real for f32 {
    #[inline(always)]
    fn exp_(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn sqrt_(self) -> f32 {
        self.sqrt()
    }
    #[inline(always)]
    fn ln_(self) -> f32 {
        self.ln()
    }
    #[inline(always)]
    fn max_(self, other: f32) -> f32 {
        if self > other {
            self
        } else {
            other
        }
    }
    #[inline(always)]
    fn lit(v: f64) -> f32 {
        v as f32
    }
}

impl Real for f64 {
    #[inline(always)]
    fn exp_(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn sqrt_(self) -> f64 {
        self.sqrt()
    }
    #[inline(always)]
    fn ln_(self) -> f64 {
        self.ln()
    }
    #[inline(always)]
    fn max_(self, other: f64) -> f64 {
        if self > other {
            self
        } else {
            other
        }
    }
    #[inline(always)]
    fn lit(v: f64) -> f64 {
        v
    }
}

/// e^x for f32 without branches or calls, so loops over it vectorise: Cody-Waite range
/// reduction x = k·ln2 + r, |r| <= ln2/2, and Cephes' degree-5 minimax polynomial for
/// e^r. Inputs are clamped to [-87, 88] (e^-87 ~ 1.6e-38 stands in for 0).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    // The integer k sits in the low mantissa bits of `shifted` (an integer-only
    // conversion that vectorises, unlike the saturating `k as i32`).
    let ki = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r2 + r + 1.0;
    let scale = f32::from_bits(((ki + 127) << 23) as u32);
    e * scale
}

/// Evaluates `$body` compiled for AVX2+FMA when the CPU has them (the kernels are plain
/// loops that the compiler vectorises), else for the baseline target.
macro_rules! dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide<R, F: FnOnce() -> R>(f: F) -> R {
                    f()
                }
                // SAFETY: the features were just detected.
                unsafe { wide(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}
pub(crate) use dispatch;

/// Σ a[i]·b[i] with eight partial sums (vectorises).
#[inline(always)]
pub fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero_(); 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = T::zero_();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += *x * *y;
    }
    for v in acc {
        s += v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert!(exp_f32(-1e9) < 1e-37 && exp_f32(-1e9) >= 0.0);
        assert!(exp_f32(1e9).is_finite());
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f64> = (0..37).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..37).map(|i| (i as f64 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-12);
    }
}
