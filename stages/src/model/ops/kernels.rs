//! Fused row-wise kernels with their backward: RMSNorm, rotary embedding, the gated
//! activations (SiLU·up, tanh-GELU·up), bias rows, and log-softmax with the NLL
//! gradient. All take row-major slices and run in parallel over blocks of rows.

use super::real::{dispatch, dot, Real};
use crate::model::config::Activation;
use rayon::prelude::*;

/// Rows per rayon task for rows of width `d` (about 16k elements a task).
fn block_rows(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

/// RMSNorm forward: `out = x · r · w` with `r = 1/sqrt(mean(x²) + eps)` per row of
/// width `w.len()`; `r` is stored in `rinv` (one per row) for the backward.
pub fn rms_norm<T: Real>(x: &[T], w: &[T], eps: f64, out: &mut [T], rinv: &mut [T]) {
    let d = w.len();
    let rows = x.len() / d;
    assert!(x.len() == rows * d && out.len() == x.len() && rinv.len() == rows);
    let br = block_rows(d);
    out.par_chunks_mut(br * d)
        .zip(rinv.par_chunks_mut(br))
        .zip(x.par_chunks(br * d))
        .for_each(|((o, r), x)| rms_norm_block(x, w, eps, o, r));
}

fn rms_norm_block<T: Real>(x: &[T], w: &[T], eps: f64, out: &mut [T], rinv: &mut [T]) {
    dispatch!({
        let d = w.len();
        let inv_d = T::lit(1.0 / d as f64);
        for ((o, x), r) in out
            .chunks_exact_mut(d)
            .zip(x.chunks_exact(d))
            .zip(rinv.iter_mut())
        {
            let ms = dot(x, x) * inv_d + T::lit(eps);
            let ri = T::lit(1.0) / ms.sqrt_();
            *r = ri;
            for i in 0..d {
                o[i] = x[i] * ri * w[i];
            }
        }
    })
}

/// RMSNorm forward with the `rinv` saved by [`rms_norm`].
pub fn rms_norm_apply<T: Real>(x: &[T], w: &[T], rinv: &[T], out: &mut [T]) {
    let d = w.len();
    assert!(out.len() == x.len() && x.len() == rinv.len() * d);
    let br = block_rows(d);
    out.par_chunks_mut(br * d)
        .zip(rinv.par_chunks(br))
        .zip(x.par_chunks(br * d))
        .for_each(|((o, r), x)| {
            dispatch!({
                for ((o, x), &ri) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(r) {
                    for i in 0..d {
                        o[i] = x[i] * ri * w[i];
                    }
                }
            })
        });
}

/// RMSNorm backward (no gradient for `w`): `dx (+)= r·g − x·r³·(g·x)/d` with `g = dy ⊙ w`.
pub fn rms_norm_backward<T: Real>(
    x: &[T],
    w: &[T],
    rinv: &[T],
    dy: &[T],
    dx: &mut [T],
    accumulate: bool,
) {
    let d = w.len();
    assert!(x.len() == rinv.len() * d && dy.len() == x.len() && dx.len() == x.len());
    let br = block_rows(d);
    dx.par_chunks_mut(br * d)
        .zip(dy.par_chunks(br * d))
        .zip(x.par_chunks(br * d))
        .zip(rinv.par_chunks(br))
        .for_each(|(((dx, dy), x), r)| {
            dispatch!({
                let inv_d = T::lit(1.0 / d as f64);
                let mut g = vec![T::zero_(); d];
                for (((dx, dy), x), &ri) in dx
                    .chunks_exact_mut(d)
                    .zip(dy.chunks_exact(d))
                    .zip(x.chunks_exact(d))
                    .zip(r)
                {
                    for i in 0..d {
                        g[i] = dy[i] * w[i];
                    }
                    let c = dot(&g, x) * ri * ri * ri * inv_d;
                    if accumulate {
                        for i in 0..d {
                            dx[i] += ri * g[i] - x[i] * c;
                        }
                    } else {
                        for i in 0..d {
                            dx[i] = ri * g[i] - x[i] * c;
                        }
                    }
                }
            })
        });
}

/// Rotary embedding in place (Hugging Face's half-split layout) on rows of `heads·hd`
/// values, row `i` at position `pos[i]`; `cos`/`sin` are `positions x hd/2` tables.
/// `inverse` applies the transpose rotation (the backward).
pub fn rope<T: Real>(
    x: &mut [T],
    hd: usize,
    width: usize,
    pos: &[u32],
    cos: &[T],
    sin: &[T],
    inverse: bool,
) {
    assert!(x.len() == pos.len() * width && width.is_multiple_of(hd) && hd.is_multiple_of(2));
    let half = hd / 2;
    let br = block_rows(width);
    x.par_chunks_mut(br * width)
        .zip(pos.par_chunks(br))
        .for_each(|(x, pos)| {
            dispatch!({
                for (row, &p) in x.chunks_exact_mut(width).zip(pos) {
                    let c = &cos[p as usize * half..(p as usize + 1) * half];
                    let s = &sin[p as usize * half..(p as usize + 1) * half];
                    for head in row.chunks_exact_mut(hd) {
                        let (x1, x2) = head.split_at_mut(half);
                        for i in 0..half {
                            let (a, b) = (x1[i], x2[i]);
                            if inverse {
                                x1[i] = a * c[i] + b * s[i];
                                x2[i] = b * c[i] - a * s[i];
                            } else {
                                x1[i] = a * c[i] - b * s[i];
                                x2[i] = b * c[i] + a * s[i];
                            }
                        }
                    }
                }
            })
        });
}

/// σ(x) = 1 / (1 + e^-x).
#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    T::lit(1.0) / (T::lit(1.0) + (T::zero_() - x).exp_())
}

/// √(2/π), for the tanh approximation of GELU.
const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044715;

/// tanh through the vectorisable exp: 1 − 2/(e^{2x} + 1).
#[inline(always)]
fn tanh<T: Real>(x: T) -> T {
    let one = T::lit(1.0);
    one - T::lit(2.0) / ((x + x).exp_() + one)
}

/// Gated activation forward: `a = act(g)·u`, with `act` SiLU (`g·σ(g)`) or the tanh
/// approximation of GELU (`g/2·(1 + tanh(√(2/π)(g + 0.044715 g³)))`).
pub fn gated<T: Real>(act: Activation, g: &[T], u: &[T], a: &mut [T]) {
    assert!(g.len() == u.len() && a.len() == g.len());
    let b = 16384;
    a.par_chunks_mut(b)
        .zip(g.par_chunks(b))
        .zip(u.par_chunks(b))
        .for_each(|((a, g), u)| {
            dispatch!({
                match act {
                    Activation::Silu => {
                        for i in 0..a.len() {
                            a[i] = g[i] * sigmoid(g[i]) * u[i];
                        }
                    }
                    Activation::GeluTanh => {
                        let (half, c, k) = (T::lit(0.5), T::lit(GELU_C), T::lit(GELU_A));
                        for i in 0..a.len() {
                            let x = g[i];
                            let t = tanh(c * (x + k * x * x * x));
                            a[i] = half * x * (T::lit(1.0) + t) * u[i];
                        }
                    }
                }
            })
        });
}

/// Gated activation backward in place: given `da`, overwrites `g` with dL/dg and `u`
/// with dL/du.
pub fn gated_backward<T: Real>(act: Activation, g: &mut [T], u: &mut [T], da: &[T]) {
    assert!(g.len() == u.len() && da.len() == g.len());
    let b = 16384;
    g.par_chunks_mut(b)
        .zip(u.par_chunks_mut(b))
        .zip(da.par_chunks(b))
        .for_each(|((g, u), da)| {
            dispatch!({
                let one = T::lit(1.0);
                match act {
                    Activation::Silu => {
                        for i in 0..g.len() {
                            let (x, up, d) = (g[i], u[i], da[i]);
                            let s = sigmoid(x);
                            u[i] = d * x * s;
                            g[i] = d * up * s * (one + x * (one - s));
                        }
                    }
                    Activation::GeluTanh => {
                        let (half, c, k) = (T::lit(0.5), T::lit(GELU_C), T::lit(GELU_A));
                        for i in 0..g.len() {
                            let (x, up, d) = (g[i], u[i], da[i]);
                            let t = tanh(c * (x + k * x * x * x));
                            let act = half * x * (one + t);
                            let dt = c * (one + T::lit(3.0) * k * x * x);
                            let dact = half * (one + t) + half * x * (one - t * t) * dt;
                            u[i] = d * act;
                            g[i] = d * up * dact;
                        }
                    }
                }
            })
        });
}

/// Adds `bias` to every row of `y` (rows of `bias.len()` values).
pub fn add_bias<T: Real>(y: &mut [T], bias: &[T]) {
    let w = bias.len();
    assert!(w > 0 && y.len().is_multiple_of(w));
    let br = block_rows(w);
    y.par_chunks_mut(br * w).for_each(|rows| {
        dispatch!({
            for row in rows.chunks_exact_mut(w) {
                for i in 0..w {
                    row[i] += bias[i];
                }
            }
        })
    });
}

/// Multiplies every value by `k`.
pub fn scale<T: Real>(x: &mut [T], k: T) {
    x.par_chunks_mut(16384).for_each(|c| {
        dispatch!({
            for v in c.iter_mut() {
                *v *= k;
            }
        })
    });
}

/// For one row of logits: returns log softmax(row)[target] and overwrites the row with
/// `scale · (softmax(row) − onehot(target))`, the gradient of `−scale · log p[target]`.
pub fn log_softmax_nll_grad<T: Real>(row: &mut [T], target: usize, scale: T) -> T {
    dispatch!({
        let mut m = row[0];
        for &v in row.iter() {
            m = m.max_(v);
        }
        let mut acc = [T::zero_(); 8];
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            for i in 0..8 {
                c[i] = (c[i] - m).exp_();
                acc[i] += c[i];
            }
        }
        let mut sum = T::zero_();
        for v in chunks.into_remainder() {
            *v = (*v - m).exp_();
            sum += *v;
        }
        for a in acc {
            sum += a;
        }
        let lp = row[target].ln_() - sum.ln_();
        let k = scale / sum;
        for v in row.iter_mut() {
            *v *= k;
        }
        row[target] -= scale;
        lp
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::config::Rope;
    use crate::model::decoder;
    use crate::model::ops::test_flat as flat;
    use candle_core::{Device, Tensor, Var, D};

    pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
        // A small LCG: deterministic values in [-1, 1).
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    pub(crate) fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= tol * scale,
            "{what}: max diff {worst} (scale {scale})"
        );
    }

    fn to_t<T: Real>(v: &[f64]) -> Vec<T> {
        v.iter().map(|&x| T::lit(x)).collect()
    }

    fn back<T: Real>(v: &[T]) -> Vec<f64> {
        v.iter().map(|x| x.to_f64()).collect()
    }

    /// RMSNorm forward and backward against `decoder::rms_norm` and candle's autograd.
    fn check_rms_norm<T: Real>(tol: f64) {
        let (rows, d) = (37, 96);
        let x = rand_vec(rows * d, 1);
        let w: Vec<f64> = rand_vec(d, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let dy = rand_vec(rows * d, 3);
        let eps = 1e-5;
        let dev = Device::Cpu;
        let xv = Var::from_tensor(
            &Tensor::from_vec(x.clone(), (rows, d), &dev)
                .unwrap()
                .to_dtype(T::DTYPE)
                .unwrap(),
        )
        .unwrap();
        let wt = Tensor::from_vec(w.clone(), d, &dev)
            .unwrap()
            .to_dtype(T::DTYPE)
            .unwrap();
        let dyt = Tensor::from_vec(dy.clone(), (rows, d), &dev)
            .unwrap()
            .to_dtype(T::DTYPE)
            .unwrap();
        let y = decoder::rms_norm(xv.as_tensor(), &wt, eps).unwrap();
        let g = (&y * &dyt).unwrap().sum_all().unwrap().backward().unwrap();
        let want_dx = flat(g.get(xv.as_tensor()).unwrap());

        let (xs, ws, dys) = (to_t::<T>(&x), to_t::<T>(&w), to_t::<T>(&dy));
        let mut out = vec![T::zero_(); rows * d];
        let mut r = vec![T::zero_(); rows];
        rms_norm(&xs, &ws, eps, &mut out, &mut r);
        close(&back(&out), &flat(&y), tol, "rms_norm forward");
        let mut again = vec![T::zero_(); rows * d];
        rms_norm_apply(&xs, &ws, &r, &mut again);
        assert_eq!(back(&again), back(&out));
        let mut dx = vec![T::lit(1.0); rows * d];
        rms_norm_backward(&xs, &ws, &r, &dys, &mut dx, false);
        close(&back(&dx), &want_dx, tol, "rms_norm backward");
        rms_norm_backward(&xs, &ws, &r, &dys, &mut dx, true);
        let twice: Vec<f64> = want_dx.iter().map(|v| 2.0 * v).collect();
        close(&back(&dx), &twice, tol, "rms_norm backward, accumulated");
    }

    #[test]
    fn rms_norm_matches_plain_ops_f32() {
        check_rms_norm::<f32>(1e-5);
    }

    #[test]
    fn rms_norm_matches_plain_ops_f64() {
        check_rms_norm::<f64>(1e-12);
    }

    /// Rotary embedding against `decoder::rope` (forward and autograd backward).
    fn check_rope<T: Real>(tol: f64) {
        let (t, heads, hd) = (11, 3, 16);
        let dev = Device::Cpu;
        let (cos, sin) = Rope::plain(10000.0).table(hd, 64);
        let pos: Vec<u32> = (0..t as u32).map(|i| (i * 5) % 64).collect();
        let x = rand_vec(t * heads * hd, 4);
        let dy = rand_vec(t * heads * hd, 5);
        // The plain-op version wants (batch, heads, time, hd) and (batch, 1, time, hd).
        let half = hd / 2;
        let mut c4 = Vec::new();
        let mut s4 = Vec::new();
        for &p in &pos {
            for rep in 0..2 {
                let _ = rep;
                c4.extend_from_slice(&cos[p as usize * half..(p as usize + 1) * half]);
                s4.extend_from_slice(&sin[p as usize * half..(p as usize + 1) * half]);
            }
        }
        let mk = |v: Vec<f64>, shape: (usize, usize, usize, usize)| {
            Tensor::from_vec(v, shape, &dev)
                .unwrap()
                .to_dtype(T::DTYPE)
                .unwrap()
        };
        let ct = mk(c4, (1, 1, t, hd));
        let st = mk(s4, (1, 1, t, hd));
        // Packed rows (t, heads·hd) -> (1, heads, t, hd).
        let xt = mk(x.clone(), (1, t, heads, hd))
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let xv = Var::from_tensor(&xt).unwrap();
        let dyt = mk(dy.clone(), (1, t, heads, hd))
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let y = decoder::rope(xv.as_tensor(), &ct, &st).unwrap();
        let g = (&y * &dyt).unwrap().sum_all().unwrap().backward().unwrap();
        let packed = |t: &Tensor| flat(&t.transpose(1, 2).unwrap().contiguous().unwrap());
        let want_y = packed(&y);
        let want_dx = packed(g.get(xv.as_tensor()).unwrap());

        let (ct, st) = (to_t::<T>(&cos), to_t::<T>(&sin));
        let mut xs = to_t::<T>(&x);
        rope(&mut xs, hd, heads * hd, &pos, &ct, &st, false);
        close(&back(&xs), &want_y, tol, "rope forward");
        let mut d = to_t::<T>(&dy);
        rope(&mut d, hd, heads * hd, &pos, &ct, &st, true);
        close(&back(&d), &want_dx, tol, "rope backward");
    }

    #[test]
    fn rope_matches_plain_ops_f32() {
        check_rope::<f32>(1e-6);
    }

    #[test]
    fn rope_matches_plain_ops_f64() {
        check_rope::<f64>(1e-14);
    }

    /// act·up against candle's `silu()` / `gelu()` (tanh approximation) times up, and
    /// its autograd.
    fn check_gated<T: Real>(act: Activation, tol: f64) {
        let n = 5000;
        let dev = Device::Cpu;
        let g: Vec<f64> = rand_vec(n, 6).iter().map(|v| 12.0 * v).collect();
        let u = rand_vec(n, 7);
        let da = rand_vec(n, 8);
        let mk = |v: &[f64]| {
            Tensor::from_vec(v.to_vec(), n, &dev)
                .unwrap()
                .to_dtype(T::DTYPE)
                .unwrap()
        };
        let gv = Var::from_tensor(&mk(&g)).unwrap();
        let uv = Var::from_tensor(&mk(&u)).unwrap();
        let ga = match act {
            Activation::Silu => gv.as_tensor().silu().unwrap(),
            Activation::GeluTanh => gv.as_tensor().gelu().unwrap(),
        };
        let a = (ga * uv.as_tensor()).unwrap();
        let grads = (&a * &mk(&da))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (mut gs, mut us) = (to_t::<T>(&g), to_t::<T>(&u));
        let mut out = vec![T::zero_(); n];
        gated(act, &gs, &us, &mut out);
        close(&back(&out), &flat(&a), tol, "gated forward");
        gated_backward(act, &mut gs, &mut us, &to_t::<T>(&da));
        close(
            &back(&gs),
            &flat(grads.get(gv.as_tensor()).unwrap()),
            tol,
            "gated backward (gate)",
        );
        close(
            &back(&us),
            &flat(grads.get(uv.as_tensor()).unwrap()),
            tol,
            "gated backward (up)",
        );
    }

    #[test]
    fn gated_activations_match_plain_ops_f32() {
        check_gated::<f32>(Activation::Silu, 2e-6);
        check_gated::<f32>(Activation::GeluTanh, 2e-6);
    }

    #[test]
    fn gated_activations_match_plain_ops_f64() {
        check_gated::<f64>(Activation::Silu, 1e-13);
        // candle's gelu backward rounds its constants to six digits.
        check_gated::<f64>(Activation::GeluTanh, 1e-6);
    }

    #[test]
    fn gated_backward_matches_central_differences() {
        for act in [Activation::Silu, Activation::GeluTanh] {
            let g: Vec<f64> = rand_vec(200, 21).iter().map(|v| 6.0 * v).collect();
            let u = rand_vec(200, 22);
            let da = rand_vec(200, 23);
            let (mut dg, mut du) = (g.clone(), u.clone());
            gated_backward(act, &mut dg, &mut du, &da);
            let f = |g: &[f64], u: &[f64]| {
                let mut a = vec![0.0; g.len()];
                gated(act, g, u, &mut a);
                a.iter().zip(&da).map(|(x, y)| x * y).sum::<f64>()
            };
            let eps = 1e-6;
            for i in (0..200).step_by(7) {
                let (mut gp, mut gm) = (g.clone(), g.clone());
                gp[i] += eps;
                gm[i] -= eps;
                let fd = (f(&gp, &u) - f(&gm, &u)) / (2.0 * eps);
                assert!(
                    (dg[i] - fd).abs() < 1e-8 * fd.abs().max(1.0),
                    "{act:?} g[{i}]"
                );
                let (mut up, mut um) = (u.clone(), u.clone());
                up[i] += eps;
                um[i] -= eps;
                let fd = (f(&g, &up) - f(&g, &um)) / (2.0 * eps);
                assert!(
                    (du[i] - fd).abs() < 1e-8 * fd.abs().max(1.0),
                    "{act:?} u[{i}]"
                );
            }
        }
    }

    #[test]
    fn bias_rows_and_scaling() {
        let mut y = vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        add_bias(&mut y, &[10.0, 20.0, 30.0]);
        assert_eq!(y, vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        scale(&mut y, 0.5);
        assert_eq!(y, vec![5.5, 11.0, 16.5, 7.0, 12.5, 18.0]);
    }

    fn check_log_softmax<T: Real>(tol: f64) {
        let n = 1003;
        let dev = Device::Cpu;
        let x: Vec<f64> = rand_vec(n, 9).iter().map(|v| 8.0 * v).collect();
        let target = 417;
        let scale = 0.25;
        let xv = Var::from_tensor(
            &Tensor::from_vec(x.clone(), (1, n), &dev)
                .unwrap()
                .to_dtype(T::DTYPE)
                .unwrap(),
        )
        .unwrap();
        let lp = candle_nn::ops::log_softmax(xv.as_tensor(), D::Minus1).unwrap();
        let want_lp = flat(&lp)[target];
        let loss = (lp.narrow(1, target, 1).unwrap().sum_all().unwrap() * -scale).unwrap();
        let g = loss.backward().unwrap();
        let mut row = to_t::<T>(&x);
        let got = log_softmax_nll_grad(&mut row, target, T::lit(scale));
        assert!((got.to_f64() - want_lp).abs() < tol * 10.0, "log prob");
        close(
            &back(&row),
            &flat(g.get(xv.as_tensor()).unwrap()),
            tol,
            "nll gradient",
        );
    }

    #[test]
    fn log_softmax_nll_matches_plain_ops() {
        check_log_softmax::<f32>(1e-6);
        check_log_softmax::<f64>(1e-14);
    }
}
