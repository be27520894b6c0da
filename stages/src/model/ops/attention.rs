//! Causal grouped-query attention over packed sequences, forward and backward.
//!
//! Token rows of several sequences are packed one after the other without padding: Q is
//! `(tokens, heads·hd)`, K and V `(tokens, kv_heads·hd)`. One task per (sequence, KV
//! head) stacks the `heads/kv_heads` query heads that share the KV head into one
//! `(rep·len, hd)` matrix, so each step is a single GEMM. The backward recomputes the
//! probabilities from Q and K instead of keeping them (they grow with len²), and can
//! recompute the attention output on the way. Scores are scaled by [`Heads::scale`]
//! and, with a window `w`, a query sees only itself and the `w - 1` keys before it
//! (key index = position in every layout that uses these kernels).

use super::gemm::{gemm_seq, View, ViewMut};
use super::real::{dispatch, dot, Real};
use rayon::prelude::*;

/// One sequence in the packed layout: its keys and values are rows `start..start+len`
/// of K and V; its queries are positions `q_first..len`, stored from row `q_row` of Q
/// (and of the output). All positions: `q_first = 0`, `q_row = start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRows {
    pub start: usize,
    pub len: usize,
    pub q_first: usize,
    pub q_row: usize,
}

impl SeqRows {
    /// Every position of the sequence queries.
    pub fn full(start: usize, len: usize) -> SeqRows {
        SeqRows {
            start,
            len,
            q_first: 0,
            q_row: start,
        }
    }

    /// Number of query positions.
    pub fn queries(&self) -> usize {
        self.len - self.q_first
    }
}

/// Head counts and size, the score scale, and the window of the layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub dim: usize,
    /// Scores are multiplied by this (usually 1/√dim).
    pub scale: f64,
    /// A query sees itself and the `window - 1` keys before it; `None`: every key
    /// before it.
    pub window: Option<usize>,
}

impl Heads {
    /// Plain causal attention scaled by 1/√dim.
    pub fn causal(q: usize, kv: usize, dim: usize) -> Heads {
        Heads {
            q,
            kv,
            dim,
            scale: 1.0 / (dim as f64).sqrt(),
            window: None,
        }
    }

    fn rep(&self) -> usize {
        self.q / self.kv
    }
    fn scale<T: Real>(&self) -> T {
        T::lit(self.scale)
    }
}

fn tasks(seqs: &[SeqRows], kv: usize) -> Vec<(SeqRows, usize)> {
    seqs.iter()
        .flat_map(|&s| (0..kv).map(move |g| (s, g)))
        .collect()
}

/// Copies the `rep` query heads of group `g` of the query rows of `s` into
/// `(rep·queries, hd)`.
fn gather<T: Real>(src: &[T], s: SeqRows, g: usize, h: Heads, out: &mut [T]) {
    let (rep, hd, w, nq) = (h.rep(), h.dim, h.q * h.dim, s.queries());
    for r in 0..rep {
        let col = (g * rep + r) * hd;
        for i in 0..nq {
            let from = (s.q_row + i) * w + col;
            out[(r * nq + i) * hd..(r * nq + i + 1) * hd].copy_from_slice(&src[from..from + hd]);
        }
    }
}

/// The inverse of [`gather`], into a `(tokens, heads·hd)` view.
fn scatter<T: Real>(src: &[T], s: SeqRows, g: usize, h: Heads, dst: ViewMut<T>) {
    let (rep, hd, nq) = (h.rep(), h.dim, s.queries());
    for r in 0..rep {
        let block = dst.rows(s.q_row, nq).cols((g * rep + r) * hd, hd);
        for i in 0..nq {
            // SAFETY: each task writes its own (rows, columns) block.
            let d = unsafe { block.row_slice(i) };
            d.copy_from_slice(&src[(r * nq + i) * hd..(r * nq + i + 1) * hd]);
        }
    }
}

/// Scaled causal softmax of the `(rep·nq, len)` scores in place: row `r·nq + i` is the
/// query at position `i' = q_first + i` and keeps keys `i' + 1 - window ..= i'` (all of
/// `0..=i'` without a window); other keys get probability 0.
fn causal_softmax<T: Real>(
    s: &mut [T],
    len: usize,
    q_first: usize,
    scale: T,
    window: Option<usize>,
) {
    let nq = len - q_first;
    dispatch!({
        for (ri, row) in s.chunks_exact_mut(len).enumerate() {
            let i = q_first + ri % nq;
            let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
            let (row, dead) = row.split_at_mut(i + 1);
            let (early, live) = row.split_at_mut(lo);
            for v in early.iter_mut() {
                *v = T::zero_();
            }
            let mut m = live[0] * scale;
            for v in live.iter_mut() {
                *v *= scale;
                m = m.max_(*v);
            }
            let mut sum = T::zero_();
            for v in live.iter_mut() {
                *v = (*v - m).exp_();
                sum += *v;
            }
            let inv = T::lit(1.0) / sum;
            for v in live.iter_mut() {
                *v *= inv;
            }
            for v in dead.iter_mut() {
                *v = T::zero_();
            }
        }
    })
}

/// Scores and probabilities of one task: `qs` gets the gathered queries, `p` the
/// `(rep·len, len)` probabilities.
fn probabilities<T: Real>(
    q: &[T],
    k: &[T],
    s: SeqRows,
    g: usize,
    h: Heads,
    qs: &mut [T],
    p: &mut [T],
) {
    let (m, hd, kw) = (h.rep() * s.queries(), h.dim, h.kv * h.dim);
    gather(q, s, g, h, qs);
    let kg = View::strided(&k[s.start * kw + g * hd..], s.len, hd, kw);
    gemm_seq(
        ViewMut::new(p, m, s.len),
        false,
        View::new(qs, m, hd),
        kg.t(),
    );
    causal_softmax(p, s.len, s.q_first, h.scale(), h.window);
}

/// Attention output `y = softmax(q·kᵀ/√hd + causal)·v` for every sequence and head,
/// written into `y` (shaped like `q`: `(query rows, heads·hd)`). `q` and `k` are
/// already rotated.
pub fn attention_forward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    y: &mut [T],
    seqs: &[SeqRows],
    h: Heads,
) {
    let rows = q.len() / (h.q * h.dim);
    assert_eq!(y.len(), q.len());
    let yv = ViewMut::new(y, rows, h.q * h.dim);
    tasks(seqs, h.kv).into_par_iter().for_each(|(s, g)| {
        let (m, hd, kw) = (h.rep() * s.queries(), h.dim, h.kv * h.dim);
        let mut qs = vec![T::zero_(); m * hd];
        let mut p = vec![T::zero_(); m * s.len];
        probabilities(q, k, s, g, h, &mut qs, &mut p);
        let vg = View::strided(&v[s.start * kw + g * hd..], s.len, hd, kw);
        gemm_seq(
            ViewMut::new(&mut qs, m, hd),
            false,
            View::new(&p, m, s.len),
            vg,
        );
        scatter(&qs, s, g, h, yv);
    });
}

/// Attention backward: from `dy` (shaped like `q`), writes `dq` (same shape) and `dk`,
/// `dv` (shaped like `k`), gradients with respect to the rotated q and k and to v. Key
/// rows that belong to no sequence are left as they are; the rest are overwritten. When
/// `y` is given, the forward output is recomputed into it.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    dy: &[T],
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    y: Option<&mut [T]>,
    seqs: &[SeqRows],
    h: Heads,
) {
    let rows = q.len() / (h.q * h.dim);
    let kw = h.kv * h.dim;
    let tokens = k.len() / kw;
    assert!(
        dy.len() == q.len() && dq.len() == q.len() && dk.len() == k.len() && dv.len() == v.len()
    );
    let dqv = ViewMut::new(dq, rows, h.q * h.dim);
    let dkv = ViewMut::new(dk, tokens, kw);
    let dvv = ViewMut::new(dv, tokens, kw);
    let yv = y.map(|y| {
        assert_eq!(y.len(), q.len());
        ViewMut::new(y, rows, h.q * h.dim)
    });
    let scale: T = h.scale();
    tasks(seqs, h.kv).into_par_iter().for_each(|(s, g)| {
        let (m, hd, len) = (h.rep() * s.queries(), h.dim, s.len);
        let mut qs = vec![T::zero_(); m * hd];
        let mut p = vec![T::zero_(); m * len];
        probabilities(q, k, s, g, h, &mut qs, &mut p);
        let kg = View::strided(&k[s.start * kw + g * hd..], len, hd, kw);
        let vg = View::strided(&v[s.start * kw + g * hd..], len, hd, kw);
        let mut buf = vec![T::zero_(); m * hd];
        if let Some(yv) = yv {
            gemm_seq(
                ViewMut::new(&mut buf, m, hd),
                false,
                View::new(&p, m, len),
                vg,
            );
            scatter(&buf, s, g, h, yv);
        }
        // buf <- dy of this group's heads.
        gather(dy, s, g, h, &mut buf);
        let mut dp = vec![T::zero_(); m * len];
        gemm_seq(
            ViewMut::new(&mut dp, m, len),
            false,
            View::new(&buf, m, hd),
            vg.t(),
        );
        // dV = Pᵀ·dY
        gemm_seq(
            dvv.rows(s.start, len).cols(g * hd, hd),
            false,
            View::new(&p, m, len).t(),
            View::new(&buf, m, hd),
        );
        // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, in place in dp.
        dispatch!({
            for (dr, pr) in dp.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
                let c = dot(dr, pr);
                for j in 0..len {
                    dr[j] = pr[j] * (dr[j] - c) * scale;
                }
            }
        });
        // dK = dSᵀ·Q, dQ = dS·K.
        gemm_seq(
            dkv.rows(s.start, len).cols(g * hd, hd),
            false,
            View::new(&dp, m, len).t(),
            View::new(&qs, m, hd),
        );
        gemm_seq(
            ViewMut::new(&mut buf, m, hd),
            false,
            View::new(&dp, m, len),
            kg,
        );
        scatter(&buf, s, g, h, dqv);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::kernels::tests::{close, rand_vec};
    use crate::model::ops::test_flat as flat;
    use candle_core::{Device, Tensor, Var, D};

    /// The plain-op attention of one sequence, as `llama.rs` computes it: q (1, nh, t,
    /// hd), k and v (1, nkv, t, hd), returns (1, nh, t, hd).
    fn plain(q: &Tensor, k: &Tensor, v: &Tensor, h: Heads) -> Tensor {
        let (_, _, t, hd) = q.dims4().unwrap();
        let rep = h.rep();
        let q = q.reshape((1, h.kv, rep * t, hd)).unwrap();
        let scores = (q.matmul(&k.t().unwrap()).unwrap() * h.scale).unwrap();
        let mut bias = vec![-1e9f64; t * t];
        for i in 0..t {
            for j in 0..=i {
                if h.window.is_none_or(|w| i - j < w) {
                    bias[i * t + j] = 0.0;
                }
            }
        }
        let bias = Tensor::from_vec(bias, (1, 1, 1, t, t), q.device())
            .unwrap()
            .to_dtype(q.dtype())
            .unwrap();
        let scores = scores
            .reshape((1, h.kv, rep, t, t))
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
            .reshape((1, h.kv, rep * t, t))
            .unwrap();
        let att = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        att.matmul(v).unwrap().reshape((1, h.q, t, hd)).unwrap()
    }

    /// Our kernels on packed sequences against `plain` per sequence. With `suffix`, only
    /// the last `suffix` positions of each sequence query (others get dy = 0 in the
    /// reference).
    fn check<T: Real>(tol: f64, suffix: Option<usize>, window: Option<usize>) {
        let h = Heads {
            window,
            ..Heads::causal(6, 2, 8)
        };
        let lens = [5usize, 1, 9];
        let mut seqs = Vec::new();
        let (mut at, mut qat) = (0, 0);
        for &len in &lens {
            let nq = suffix.map_or(len, |s| s.min(len));
            seqs.push(SeqRows {
                start: at,
                len,
                q_first: len - nq,
                q_row: qat,
            });
            at += len;
            qat += nq;
        }
        let (n, nq_total) = (at, qat);
        let (qw, kw) = (h.q * h.dim, h.kv * h.dim);
        let q = rand_vec(n * qw, 11);
        let k = rand_vec(n * kw, 12);
        let v = rand_vec(n * kw, 13);
        let mut dy = rand_vec(n * qw, 14);
        // The query-side rows we pass: the suffix rows of q and dy.
        let mut q_rows = Vec::new();
        let mut dy_rows = Vec::new();
        for s in &seqs {
            for i in s.q_first..s.len {
                let r = s.start + i;
                q_rows.extend_from_slice(&q[r * qw..(r + 1) * qw]);
                dy_rows.extend_from_slice(&dy[r * qw..(r + 1) * qw]);
            }
            for i in 0..s.q_first {
                let r = s.start + i;
                dy[r * qw..(r + 1) * qw].iter_mut().for_each(|x| *x = 0.0);
            }
        }
        let cv = |x: &[f64]| -> Vec<T> { x.iter().map(|&a| T::lit(a)).collect() };
        let (qt, kt, vt, dyt) = (cv(&q_rows), cv(&k), cv(&v), cv(&dy_rows));
        let mut y = vec![T::zero_(); nq_total * qw];
        attention_forward(&qt, &kt, &vt, &mut y, &seqs, h);
        let mut dq = vec![T::zero_(); nq_total * qw];
        let mut dk = vec![T::zero_(); n * kw];
        let mut dv = vec![T::zero_(); n * kw];
        let mut y2 = vec![T::zero_(); nq_total * qw];
        attention_backward(
            &qt,
            &kt,
            &vt,
            &dyt,
            &mut dq,
            &mut dk,
            &mut dv,
            Some(&mut y2),
            &seqs,
            h,
        );
        let back = |x: &[T]| -> Vec<f64> { x.iter().map(|a| a.to_f64()).collect() };
        assert_eq!(back(&y), back(&y2), "recomputed output");

        let dev = Device::Cpu;
        for s in &seqs {
            let heads = |x: &[f64], w: usize, nh: usize| {
                Tensor::from_vec(
                    x[s.start * w..(s.start + s.len) * w].to_vec(),
                    (1, s.len, nh, h.dim),
                    &dev,
                )
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .to_dtype(T::DTYPE)
                .unwrap()
            };
            let qv = Var::from_tensor(&heads(&q, qw, h.q)).unwrap();
            let kv = Var::from_tensor(&heads(&k, kw, h.kv)).unwrap();
            let vv = Var::from_tensor(&heads(&v, kw, h.kv)).unwrap();
            let out = plain(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), h);
            let g = (&out * heads(&dy, qw, h.q))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            // Reference rows q_first.. of a (1, heads, t, hd) tensor, packed.
            let packed = |t: &Tensor, from: usize| {
                let v = flat(&t.transpose(1, 2).unwrap().contiguous().unwrap());
                let w = v.len() / s.len;
                v[from * w..].to_vec()
            };
            let qside = |x: &[T]| back(&x[s.q_row * qw..(s.q_row + s.queries()) * qw]);
            let kside = |x: &[T]| back(&x[s.start * kw..(s.start + s.len) * kw]);
            close(
                &qside(&y),
                &packed(&out, s.q_first),
                tol,
                "attention forward",
            );
            close(
                &qside(&dq),
                &packed(g.get(qv.as_tensor()).unwrap(), s.q_first),
                tol,
                "dq",
            );
            close(
                &kside(&dk),
                &packed(g.get(kv.as_tensor()).unwrap(), 0),
                tol,
                "dk",
            );
            close(
                &kside(&dv),
                &packed(g.get(vv.as_tensor()).unwrap(), 0),
                tol,
                "dv",
            );
        }
    }

    #[test]
    fn attention_matches_plain_ops_f32() {
        check::<f32>(1e-5, None, None);
    }

    #[test]
    fn attention_matches_plain_ops_f64() {
        check::<f64>(1e-12, None, None);
    }

    #[test]
    fn attention_on_a_query_suffix_matches_plain_ops() {
        check::<f64>(1e-12, Some(3), None);
        check::<f32>(1e-5, Some(2), None);
    }

    #[test]
    fn windowed_attention_matches_plain_ops() {
        // Windows shorter than, equal to and longer than the sequences (1, 5 and 9).
        for w in [1, 3, 5, 20] {
            check::<f64>(1e-12, None, Some(w));
            check::<f64>(1e-12, Some(3), Some(w));
        }
        check::<f32>(1e-5, None, Some(2));
    }
}
