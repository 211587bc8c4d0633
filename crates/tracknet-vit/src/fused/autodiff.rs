//! `Autodiff<B>`'s fused ops: one graph node per op with its written-out backward (the nodes in
//! [`super::nodes`]), or the inner backend's op where nothing needs a gradient.

use super::*;

impl<B: FusedBackend, C: CheckpointStrategy> FusedBackend for Autodiff<B, C> {
    fn matmul_convolutions() -> bool {
        B::matmul_convolutions()
    }

    fn parallel_shards() -> bool {
        B::parallel_shards()
    }

    fn host_kernels() -> bool {
        B::host_kernels()
    }

    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        nodes::gelu::<B, C>(x)
    }

    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        if B::host_kernels() {
            nodes::layer_norm::<B, C>(x, gamma, beta, eps)
        } else {
            Self::layer_norm(x, gamma, Some(beta), eps)
        }
    }

    fn fused_group_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        act: Act,
    ) -> FloatTensor<Self> {
        if B::host_kernels() {
            return nodes::group_norm_act::<B, C>(x, gamma, beta, groups, eps, act);
        }
        // Burn's autodiff through the composed norm; GELU through the exact node.
        let inner = if act == Act::Gelu { Act::Identity } else { act };
        let y = composed::group_norm_act::<Self>(x, gamma, beta, groups, eps, inner);
        if act == Act::Gelu {
            nodes::gelu::<B, C>(y)
        } else {
            y
        }
    }

    fn fused_bilinear_resize(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self> {
        if B::host_kernels() {
            nodes::bilinear_resize::<B, C>(x, size)
        } else {
            prim(crate::fused::bilinear::composed(float::<Self>(x), size))
        }
    }

    fn fused_depthwise3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if B::host_kernels() {
            nodes::conv::<B, C>(nodes::ConvKind::Depthwise3x3, x, weight, bias)
        } else {
            composed::depthwise3x3::<Self>(x, weight, bias)
        }
    }

    fn fused_pointwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if B::host_kernels() {
            nodes::conv::<B, C>(nodes::ConvKind::Pointwise, x, weight, bias)
        } else {
            composed::pointwise::<Self>(x, weight, bias)
        }
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        // The node treats cos and sin as constants: tracked ones take the composed ops.
        let constant = cos.node.requirement.is_none() && sin.node.requirement.is_none();
        if B::host_kernels() && constant {
            nodes::rope::<B, C>(x, cos.primitive, sin.primitive, transpose)
        } else {
            composed::rope::<Self>(x, cos, sin, transpose)
        }
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: FusedBackend> Backward<B, 3> for AttentionBackward {
            /// q, k, v only: the probabilities are recomputed.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (q, k, v) = ops.state;
                let need = ops.parents.each_ref().map(Option::is_some);
                let out = B::fused_attention_backward(q, k, v, grad, need);
                for (node, g) in ops.parents.into_iter().zip(out) {
                    if let (Some(node), Some(g)) = (node, g) {
                        grads.register::<B>(node.id, g);
                    }
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
