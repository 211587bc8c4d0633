//! Multi-head softmax attention as both backbone families compute it.

use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::fused::FusedBackend;

/// Softmax attention over heads, as one fused op ([`FusedBackend::fused_attention`]): under
/// autodiff only q, k and v are kept for the backward.
///
/// # Shapes
/// - q, k, v: `[batch, heads, tokens, head_dim]`
/// - output: `[batch, tokens, heads * head_dim]`
pub(crate) fn attention<B: FusedBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 3> {
    use tracknet_quant::autocast::{active, to, to_f32};
    let [b, h, t, d] = q.dims();
    // Under autocast both matmuls run in the region's dtype (the softmax in f32, see
    // `fused::attention_probs`).
    let half = active::<B>(&q.device());
    let out = B::fused_attention(
        to(q, half).into_primitive().tensor(),
        to(k, half).into_primitive().tensor(),
        to(v, half).into_primitive().tensor(),
    );
    to_f32(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out)))
        .swap_dims(1, 2)
        .reshape([b, t, h * d])
}

/// `[batch, tokens, hidden]` → `[batch, heads, tokens, hidden / heads]`.
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, c] = x.dims();
    x.reshape([b, t, heads, c / heads]).swap_dims(1, 2)
}
