//! Whole-op kernels with their own backward, behind a small extension trait.
//!
//! [`FusedBackend`] narrows `Backend` the way `tracknet_quant::QuantBackend` does for the 4-bit
//! matmul: every backend gets the composed Burn ops by default, and `Autodiff<B>` gets one
//! graph node per op with a written-out backward. [`ModelBackend`] is what the model needs:
//! both traits.
//!
//! Attention is the first such op. Burn's composed `softmax(q·kᵀ/√d)·v` keeps the scores, the
//! exponentials and the probabilities — several `[batch, heads, tokens, tokens]` maps per
//! layer (8 MB each per image at 581 tokens, 6 heads) — for its backward. The fused op keeps
//! only q, k and v and recomputes the probabilities in the backward (as flash attention does),
//! so the attention maps never outlive the forward.

use burn::backend::NdArray;
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::activation::softmax;
use burn::tensor::ops::FloatTensor;
use tracknet_quant::QuantBackend;

/// Backends with the model's fused ops.
pub trait FusedBackend: Backend {
    /// `softmax(q·kᵀ/√d)·v` per batch and head.
    ///
    /// # Shapes
    /// - q, k, v: `[batch, heads, tokens, head_dim]`
    /// - output: `[batch, heads, tokens, head_dim]`
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (q, k, v) = (float::<Self>(q), float::<Self>(k), float::<Self>(v));
        attention_probs(q, k).matmul(v).into_primitive().tensor()
    }
}

/// What the model's layers need: the 4-bit linear and the fused ops.
pub trait ModelBackend: QuantBackend + FusedBackend {}

impl<B: QuantBackend + FusedBackend> ModelBackend for B {}

impl FusedBackend for NdArray {}

#[cfg(feature = "cuda")]
impl FusedBackend for burn::backend::Cuda {}

fn float<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `softmax(q·kᵀ/√d)`: `[batch, heads, tokens, tokens]`.
fn attention_probs<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
    let d = q.dims()[3];
    softmax(q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5), 3)
}

impl<B: FusedBackend, C: CheckpointStrategy> FusedBackend for Autodiff<B, C> {
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: Backend> Backward<B, 3> for AttentionBackward {
            /// q, k, v only: the probabilities are recomputed.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_q, node_k, node_v] = ops.parents;
                let grad = float::<B>(grads.consume::<B>(&ops.node));
                let (q, k, v) = ops.state;
                let (q, k, v) = (float::<B>(q), float::<B>(k), float::<B>(v));
                let scale = (q.dims()[3] as f64).powf(-0.5);
                let p = attention_probs(q.clone(), k.clone());
                if let Some(node) = node_v {
                    // dV = Pᵀ·dO
                    let dv = p.clone().swap_dims(2, 3).matmul(grad.clone());
                    grads.register::<B>(node.id, dv.into_primitive().tensor());
                }
                if node_q.is_none() && node_k.is_none() {
                    return;
                }
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), dP = dO·vᵀ (the softmax backward), times the
                // 1/√d of the scores.
                let dp = grad.matmul(v.swap_dims(2, 3));
                let row = (dp.clone() * p.clone()).sum_dim(3);
                let ds = (p * (dp - row)) * scale;
                if let Some(node) = node_q {
                    let dq = ds.clone().matmul(k);
                    grads.register::<B>(node.id, dq.into_primitive().tensor());
                }
                if let Some(node) = node_k {
                    let dk = ds.swap_dims(2, 3).matmul(q);
                    grads.register::<B>(node.id, dk.into_primitive().tensor());
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = (
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                );
                let out = B::fused_attention(q.primitive, k.primitive, v.primitive);
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_attention(q.primitive, k.primitive, v.primitive))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type A = Autodiff<NdArray>;

    fn max_rel(a: Tensor<NdArray, 4>, b: Tensor<NdArray, 4>) -> f32 {
        let scale = b.clone().abs().max().into_scalar().max(1e-12);
        (a - b).abs().max().into_scalar() / scale
    }

    /// The fused op's forward and its written-out backward against the composed Burn ops it
    /// replaces (whose backward is Burn's autodiff).
    #[test]
    fn fused_attention_matches_the_composed_ops_and_their_gradients() {
        let device = Default::default();
        let leaf = || {
            Tensor::<A, 4>::random([2, 3, 7, 8], Distribution::Normal(0.0, 1.0), &device)
                .require_grad()
        };
        let (q, k, v) = (leaf(), leaf(), leaf());
        let w = Tensor::<A, 4>::random([2, 3, 7, 8], Distribution::Normal(0.0, 1.0), &device);
        let fused = float::<A>(A::fused_attention(
            q.clone().into_primitive().tensor(),
            k.clone().into_primitive().tensor(),
            v.clone().into_primitive().tensor(),
        ));
        let composed = attention_probs(q.clone(), k.clone()).matmul(v.clone());
        assert!(max_rel(fused.clone().inner(), composed.clone().inner()) < 1e-6);
        let g_fused = (fused * w.clone()).sum().backward();
        let g_composed = (composed * w).sum().backward();
        for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
            let (a, b) = (t.grad(&g_fused).unwrap(), t.grad(&g_composed).unwrap());
            let d = max_rel(a, b);
            assert!(d < 1e-4, "d{name}: {d}");
        }
        // Only v needs a gradient: the others are not computed (and nothing fails).
        let v2 = leaf();
        let out = float::<A>(A::fused_attention(
            q.clone().detach().into_primitive().tensor(),
            k.clone().detach().into_primitive().tensor(),
            v2.clone().into_primitive().tensor(),
        ));
        let g = out.sum().backward();
        assert!(v2.grad(&g).is_some());
    }
}
