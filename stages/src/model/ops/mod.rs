//! Hand-written CPU kernels for the one decoder's forward and backward, and the
//! gradient pass and answer-tree forward built on them.
//!
//! candle's autograd keeps every intermediate tensor of a forward alive until the
//! backward ends, computes gradients nobody asked for (both sides of every matmul, the
//! embedding and the LM head), and runs most elementwise ops on one thread. The pass in
//! [`decoder`] instead walks the layers by hand: token rows are packed without padding,
//! each layer saves only what its backward needs (its input, Q, K, V, the attention
//! output, the mid-layer residual, the MLP's gate and up projections, and the inputs of
//! the norms some families add), weight gradients are accumulated in place by the GEMM,
//! and the elementwise work (RMSNorm, rotary embedding, causal and windowed softmax,
//! the gated activations) is fused and parallel over rows.
//!
//! Everything is generic over [`Real`] (f32 and f64), so the f64 finite-difference test
//! checks the same code that runs in f32. Each kernel is tested against the plain candle
//! ops it replaces, forward and backward (candle's autograd).

pub mod alloc;
pub mod attention;
pub mod decoder;
pub mod gemm;
pub mod kernels;
pub mod linear;
pub mod real;
pub mod tree;

pub use real::Real;

/// A tensor's values as f64, flattened (tests compare kernels with candle through it).
#[cfg(test)]
pub(crate) fn test_flat(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
