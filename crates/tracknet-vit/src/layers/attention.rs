//! Multi-head softmax attention as both backbone families compute it.

use burn::prelude::*;
use burn::tensor::activation;

/// Softmax attention over heads. q, k, v: `[batch, heads, tokens, head_dim]` →
/// `[batch, tokens, heads * head_dim]`.
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 3> {
    let [b, h, t, d] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5);
    let probs = activation::softmax(scores, 3);
    probs.matmul(v).swap_dims(1, 2).reshape([b, t, h * d])
}

/// `[batch, tokens, hidden]` → `[batch, heads, tokens, hidden / heads]`.
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, c] = x.dims();
    x.reshape([b, t, heads, c / heads]).swap_dims(1, 2)
}
