//! The fused ops as single autodiff nodes: each keeps its inputs only and calls the inner
//! backend's written-out backward ([`FusedBackend`]'s `*_backward` methods).

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::tensor::ops::FloatTensor;

use super::FusedBackend;
use super::kernels::Act;

type Ad<B, C> = FloatTensor<Autodiff<B, C>>;

/// Element-wise GELU with the exact derivative.
pub fn gelu<B: FusedBackend, C: CheckpointStrategy>(x: Ad<B, C>) -> Ad<B, C> {
    #[derive(Debug)]
    struct GeluBackward;

    impl<B: FusedBackend> Backward<B, 1> for GeluBackward {
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            if let Some(node) = node {
                grads.register::<B>(node.id, B::fused_gelu_backward(ops.state, grad));
            }
        }
    }

    match GeluBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = B::fused_gelu(x.primitive.clone());
            prep.finish(x.primitive, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::fused_gelu(x.primitive)),
    }
}

/// LayerNorm over the last axis with weight and bias.
pub fn layer_norm<B: FusedBackend, C: CheckpointStrategy>(
    x: Ad<B, C>,
    gamma: Ad<B, C>,
    beta: Ad<B, C>,
    eps: f64,
) -> Ad<B, C> {
    #[derive(Debug)]
    struct LayerNormBackward {
        eps: f64,
    }

    impl<B: FusedBackend> Backward<B, 3> for LayerNormBackward {
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_g, node_b] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x, gamma) = ops.state;
            let (dx, dg, db) = B::fused_layer_norm_backward(x, gamma, grad, self.eps);
            for (node, g) in [(node_x, dx), (node_g, dg), (node_b, db)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    match (LayerNormBackward { eps })
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (x.primitive.clone(), gamma.primitive.clone());
            let out = B::fused_layer_norm(x.primitive, gamma.primitive, beta.primitive, eps);
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::fused_layer_norm(
            x.primitive,
            gamma.primitive,
            beta.primitive,
            eps,
        )),
    }
}

/// `act(GroupNorm(x) · γ + β)` on `[batch, C, h, w]`.
pub fn group_norm_act<B: FusedBackend, C: CheckpointStrategy>(
    x: Ad<B, C>,
    gamma: Ad<B, C>,
    beta: Ad<B, C>,
    groups: usize,
    eps: f64,
    act: Act,
) -> Ad<B, C> {
    #[derive(Debug)]
    struct GroupNormBackward {
        groups: usize,
        eps: f64,
        act: Act,
    }

    impl<B: FusedBackend> Backward<B, 3> for GroupNormBackward {
        type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_g, node_b] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x, gamma, beta) = ops.state;
            let (dx, dg, db) = B::fused_group_norm_act_backward(
                x,
                gamma,
                beta,
                grad,
                self.groups,
                self.eps,
                self.act,
            );
            for (node, g) in [(node_x, dx), (node_g, dg), (node_b, db)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    let forward = |x, g, b| B::fused_group_norm_act(x, g, b, groups, eps, act);
    match (GroupNormBackward { groups, eps, act })
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (
                x.primitive.clone(),
                gamma.primitive.clone(),
                beta.primitive.clone(),
            );
            prep.finish(state, forward(x.primitive, gamma.primitive, beta.primitive))
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(x.primitive, gamma.primitive, beta.primitive))
        }
    }
}

/// Which convolution [`conv`] records.
#[derive(Debug, Clone, Copy)]
pub enum ConvKind {
    /// Depthwise 3×3, stride 1, padding 1.
    Depthwise3x3,
    /// 1×1.
    Pointwise,
}

/// A convolution with bias (`x`, `weight`, `bias` parents) as one node.
pub fn conv<B: FusedBackend, C: CheckpointStrategy>(
    kind: ConvKind,
    x: Ad<B, C>,
    weight: Ad<B, C>,
    bias: Ad<B, C>,
) -> Ad<B, C> {
    #[derive(Debug)]
    struct ConvBackward {
        kind: ConvKind,
    }

    impl<B: FusedBackend> Backward<B, 3> for ConvBackward {
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_w, node_b] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x, weight) = ops.state;
            let need_dx = node_x.is_some();
            let (dx, dw, db) = match self.kind {
                ConvKind::Depthwise3x3 => B::fused_depthwise3x3_backward(x, weight, grad, need_dx),
                ConvKind::Pointwise => B::fused_pointwise_backward(x, weight, grad, need_dx),
            };
            if let (Some(node), Some(dx)) = (node_x, dx) {
                grads.register::<B>(node.id, dx);
            }
            for (node, g) in [(node_w, dw), (node_b, db)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    let forward = |x, w, b| match kind {
        ConvKind::Depthwise3x3 => B::fused_depthwise3x3(x, w, b),
        ConvKind::Pointwise => B::fused_pointwise(x, w, b),
    };
    let parents = [x.node.clone(), weight.node.clone(), bias.node.clone()];
    match (ConvBackward { kind })
        .prepare::<C>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (x.primitive.clone(), weight.primitive.clone());
            prep.finish(
                state,
                forward(x.primitive, weight.primitive, bias.primitive),
            )
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(x.primitive, weight.primitive, bias.primitive))
        }
    }
}

/// RoPE with constant `cos`/`sin` (inner-backend tensors): the backward is the adjoint.
pub fn rope<B: FusedBackend, C: CheckpointStrategy>(
    x: Ad<B, C>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    transpose: bool,
) -> Ad<B, C> {
    #[derive(Debug)]
    struct RopeBackward {
        transpose: bool,
    }

    impl<B: FusedBackend> Backward<B, 1> for RopeBackward {
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (cos, sin) = ops.state;
            if let Some(node) = node {
                let dx = B::fused_rope(grad, cos, sin, !self.transpose);
                grads.register::<B>(node.id, dx);
            }
        }
    }

    match (RopeBackward { transpose })
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = B::fused_rope(x.primitive, cos.clone(), sin.clone(), transpose);
            prep.finish((cos, sin), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::fused_rope(x.primitive, cos, sin, transpose)),
    }
}

/// Bilinear resize (`align_corners = false`) of `[batch, channels, h, w]` to `size`.
pub fn bilinear_resize<B: FusedBackend, C: CheckpointStrategy>(
    x: Ad<B, C>,
    size: [usize; 2],
) -> Ad<B, C> {
    #[derive(Debug)]
    struct ResizeBackward {
        in_hw: [usize; 2],
    }

    impl<B: FusedBackend> Backward<B, 1> for ResizeBackward {
        type State = ();

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            if let Some(node) = node {
                grads.register::<B>(node.id, B::fused_bilinear_resize_backward(grad, self.in_hw));
            }
        }
    }

    use burn::tensor::TensorMetadata;
    let shape = x.primitive.shape();
    let in_hw = [shape[2], shape[3]];
    (ResizeBackward { in_hw })
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateless(B::fused_bilinear_resize(x.primitive, size))
}
