//! Whole-op kernels with their own backward, behind a small extension trait.
//!
//! [`FusedBackend`] narrows `Backend` the way `tracknet_quant::QuantBackend` does for the 4-bit
//! matmul: every backend gets the composed Burn ops by default, and `Autodiff<B>` gets one
//! graph node per op with a written-out backward. [`ModelBackend`] is what the model needs:
//! both traits.
//!
//! The optimizer's AdamW update is one too ([`adamw`]): one pass instead of fourteen.
//!
//! Attention is the first such op. Burn's composed `softmax(q·kᵀ/√d)·v` keeps the scores, the
//! exponentials and the probabilities — several `[batch, heads, tokens, tokens]` maps per
//! layer (8 MB each per image at 581 tokens, 6 heads) — for its backward. The fused op keeps
//! only q, k and v and recomputes the probabilities in the backward (as flash attention does),
//! so the attention maps never outlive the forward.
//!
//! On NdArray ([`FusedBackend::host_kernels`]) LayerNorm, GroupNorm + activation, GELU and the
//! depthwise 3×3 are host [kernels] as well: one contiguous pass over the data, parallel over
//! rows / groups / planes, instead of a dozen strided element-wise ops each keeping its
//! operands for the backward. The GPU backends keep Burn's native ops for these (their
//! autodiff differentiates them), except GELU, which every backend differentiates exactly
//! (`Φ(x) + x·φ(x)`, PyTorch's derivative): Burn 0.21's autodiff uses the tanh
//! approximation's derivative for its erf GELU.

pub mod adamw;
mod attention_kernel;
mod autodiff;
pub(crate) mod bilinear;
mod composed;
#[cfg(test)]
mod grad_tests;
mod host;
pub mod kernels;
mod ndarray;
mod nodes;

pub use adamw::AdamWStep;
pub use kernels::Act;

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::activation::softmax;
use burn::tensor::ops::{FloatTensor, ModuleOps};
use tracknet_quant::QuantBackend;

type Grads3<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);
type OptGrads3<B> = (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>);

/// Backends with the model's fused ops.
pub trait FusedBackend: Backend {
    /// Whether [`crate::fastconv`] (convolutions as matmuls and shifted slices) beats the
    /// backend's own conv2d. True on NdArray, whose conv2d backward is a naive loop; false on
    /// the CubeCL backends, where Burn's conv is one kernel (the shifted taps would be ≈ 9×
    /// the activation memory and ≈ 20 launches per depthwise conv).
    fn matmul_convolutions() -> bool {
        false
    }

    /// Whether shards of a batch gain by running at once on host threads
    /// (`training.parallel_shards`): true on NdArray, whose ops mostly keep one core busy; false
    /// on the GPU backends, where one device runs the whole batch anyway.
    fn parallel_shards() -> bool {
        false
    }

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

    /// `[dq, dk, dv]` of [`fused_attention`](Self::fused_attention) for the output gradient
    /// `grad`, each only where `need` says so. The probabilities are recomputed.
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        composed_attention_backward::<Self>(q, k, v, grad, need)
    }

    /// Bilinear resize (`align_corners = false`) of `[batch, channels, h, w]` to `size`
    /// (`[height, width]`), PyTorch's `F.interpolate(mode="bilinear")`.
    fn fused_bilinear_resize(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self> {
        prim(crate::fused::bilinear::composed(float::<Self>(x), size))
    }

    /// The gradient of [`fused_bilinear_resize`](Self::fused_bilinear_resize) with respect to
    /// its input of spatial size `in_hw`.
    fn fused_bilinear_resize_backward(
        grad: FloatTensor<Self>,
        in_hw: [usize; 2],
    ) -> FloatTensor<Self> {
        prim(crate::fused::bilinear::composed_backward(
            float::<Self>(grad),
            in_hw,
        ))
    }

    /// Whether the ops below are host kernels whose autodiff nodes should be used (NdArray).
    /// False: the autodiff backend differentiates the composed (native) forward instead.
    fn host_kernels() -> bool {
        false
    }

    /// Exact (erf) GELU, any rank.
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// `grad · gelu'(x)` with the exact derivative.
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::gelu_backward::<Self>(x, grad)
    }

    /// LayerNorm over the last axis: `(x − μ)/√(σ² + eps) · γ + β`.
    ///
    /// # Shapes
    /// - x: `[..., d]`; gamma, beta: `[d]`
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }

    /// `(dx, dγ, dβ)` of [`fused_layer_norm`](Self::fused_layer_norm).
    fn fused_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> Grads3<Self> {
        composed::layer_norm_backward::<Self>(x, gamma, grad, eps)
    }

    /// `act(GroupNorm(x) · γ + β)` with `groups` groups.
    ///
    /// # Shapes
    /// - x: `[batch, channels, h, w]`; gamma, beta: `[channels]`
    fn fused_group_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        act: Act,
    ) -> FloatTensor<Self> {
        composed::group_norm_act::<Self>(x, gamma, beta, groups, eps, act)
    }

    /// `(dx, dγ, dβ)` of [`fused_group_norm_act`](Self::fused_group_norm_act).
    #[allow(clippy::too_many_arguments)]
    fn fused_group_norm_act_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        act: Act,
    ) -> Grads3<Self> {
        composed::group_norm_act_backward::<Self>(x, gamma, beta, grad, groups, eps, act)
    }

    /// Depthwise 3×3 conv, stride 1, padding 1, with bias.
    ///
    /// # Shapes
    /// - x: `[batch, channels, h, w]`; weight: `[channels, 1, 3, 3]`; bias: `[channels]`
    fn fused_depthwise3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::depthwise3x3::<Self>(x, weight, bias)
    }

    /// `(dx, dw, dbias)` of [`fused_depthwise3x3`](Self::fused_depthwise3x3); `dx` only when
    /// `need_dx`.
    fn fused_depthwise3x3_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need_dx: bool,
    ) -> OptGrads3<Self> {
        composed::depthwise3x3_backward::<Self>(x, weight, grad, need_dx)
    }

    /// 1×1 conv with bias on NCHW data.
    ///
    /// # Shapes
    /// - x: `[batch, C, h, w]`; weight: `[O, C, 1, 1]`; bias: `[O]`; output `[batch, O, h, w]`
    fn fused_pointwise(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::pointwise::<Self>(x, weight, bias)
    }

    /// `(dx, dW, dbias)` of [`fused_pointwise`](Self::fused_pointwise); `dx` only when
    /// `need_dx`.
    fn fused_pointwise_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need_dx: bool,
    ) -> OptGrads3<Self> {
        composed::pointwise_backward::<Self>(x, weight, grad, need_dx)
    }

    /// DINOv3's 2-D RoPE on the last `patches` tokens, `x · cos + rot(x) · sin` with
    /// `rot(x1, x2) = (−x2, x1)` over the halves of the head dimension; the leading
    /// (CLS, register) tokens pass unchanged. With `transpose`, the adjoint (the backward).
    ///
    /// # Shapes
    /// - x: `[batch, heads, tokens, head_dim]`; cos, sin: `[patches, head_dim]`
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        transpose: bool,
    ) -> FloatTensor<Self> {
        composed::rope::<Self>(x, cos, sin, transpose)
    }

    /// One AdamW update ([`adamw`]) of a parameter `p` with gradient `g` and moments `m`, `v`
    /// (zeros before the first): `[p, m, v]` after it. The training loop's optimizer runs it
    /// on the inner (non-autodiff) backend.
    ///
    /// # Shapes
    /// - p, g, m, v and the results: `[n]`
    fn fused_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        step: AdamWStep,
    ) -> [FloatTensor<Self>; 3] {
        adamw::composed::<Self>(p, g, m, v, step)
    }
}

/// What the model's layers need: the 4-bit linear and the fused ops.
pub trait ModelBackend: QuantBackend + FusedBackend {}

impl<B: QuantBackend + FusedBackend> ModelBackend for B {}

#[cfg(feature = "cuda")]
impl FusedBackend for burn::backend::Cuda {}

#[cfg(feature = "wgpu")]
impl FusedBackend for burn::backend::Wgpu {}

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Exact (erf) GELU through [`FusedBackend::fused_gelu`]: PyTorch's `nn.GELU()`, forward and
/// derivative.
pub fn gelu<B: FusedBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    wrap(B::fused_gelu(prim(x)))
}

/// LayerNorm over the last axis through [`FusedBackend::fused_layer_norm`].
pub fn layer_norm<B: FusedBackend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    wrap(B::fused_layer_norm(prim(x), prim(gamma), prim(beta), eps))
}

/// `act(norm(x))` for Burn's [`GroupNorm`](burn::nn::GroupNorm) through
/// [`FusedBackend::fused_group_norm_act`]. A norm without affine parameters takes Burn's
/// module and then the activation.
pub fn group_norm_act<B: FusedBackend>(
    x: Tensor<B, 4>,
    norm: &burn::nn::GroupNorm<B>,
    act: Act,
) -> Tensor<B, 4> {
    match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if norm.affine => wrap(B::fused_group_norm_act(
            prim(x),
            prim(gamma.val()),
            prim(beta.val()),
            norm.num_groups,
            norm.epsilon,
            act,
        )),
        _ => {
            let y = norm.forward(x);
            match act {
                Act::Identity => y,
                Act::Gelu => gelu(y),
                Act::Relu => burn::tensor::activation::relu(y),
            }
        }
    }
}

/// Depthwise 3×3 conv, stride 1, padding 1, through [`FusedBackend::fused_depthwise3x3`]:
/// `x [batch, C, h, w]`, `weight [C, 1, 3, 3]`, `bias [C]` (zeros when `None`).
pub fn depthwise3x3<B: FusedBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
    wrap(B::fused_depthwise3x3(prim(x), prim(weight), prim(bias)))
}

/// 1×1 conv with bias through [`FusedBackend::fused_pointwise`]: `x [batch, C, h, w]`,
/// `weight [O, C, 1, 1]`, `bias [O]`.
pub fn pointwise<B: FusedBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 4> {
    wrap(B::fused_pointwise(prim(x), prim(weight), prim(bias)))
}

/// DINOv3's 2-D RoPE through [`FusedBackend::fused_rope`]: `x [batch, heads, tokens, d]`,
/// `cos`, `sin` `[patches, d]` (constants: no gradient flows to them through the host node).
pub fn rope<B: FusedBackend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Tensor<B, 4> {
    wrap(B::fused_rope(prim(x), prim(cos), prim(sin), false))
}

fn float<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// [`FusedBackend::fused_attention_backward`] in Burn's tensor ops.
fn composed_attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    grad: FloatTensor<B>,
    need: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let grad = float::<B>(grad);
    let (q, k, v) = (float::<B>(q), float::<B>(k), float::<B>(v));
    let scale = (q.dims()[3] as f64).powf(-0.5);
    let p = attention_probs(q.clone(), k.clone());
    // dV = Pᵀ·dO
    let dv = need[2].then(|| p.clone().swap_dims(2, 3).matmul(grad.clone()));
    if !need[0] && !need[1] {
        return [None, None, dv.map(prim)];
    }
    // dS = P ⊙ (dP − rowsum(dP ⊙ P)), dP = dO·vᵀ (the softmax backward), times the
    // 1/√d of the scores.
    let dp = grad.matmul(v.swap_dims(2, 3));
    let row = (dp.clone() * p.clone()).sum_dim(3);
    let ds = (p * (dp - row)) * scale;
    let dq = need[0].then(|| ds.clone().matmul(k));
    let dk = need[1].then(|| ds.swap_dims(2, 3).matmul(q));
    [dq.map(prim), dk.map(prim), dv.map(prim)]
}

/// `softmax(q·kᵀ/√d)`: `[batch, heads, tokens, tokens]`.
fn attention_probs<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
    use tracknet_quant::autocast::{to, to_f32};
    let d = q.dims()[3];
    // Half-precision scores (autocast) are normalised in f32, as PyTorch's attention does,
    // and the probabilities go back to the inputs' dtype for `p · v`.
    let half = match q.dtype() {
        burn::tensor::DType::F16 => Some(burn::tensor::FloatDType::F16),
        burn::tensor::DType::BF16 => Some(burn::tensor::FloatDType::BF16),
        _ => None,
    };
    let scores = q.matmul(k.swap_dims(2, 3));
    let scores = if half.is_some() {
        to_f32(scores)
    } else {
        scores
    };
    to(softmax(scores * (d as f64).powf(-0.5), 3), half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type A = Autodiff<NdArray>;

    /// Deterministic `[2, 3, 7, 8]` values (normal-ish, from a hash), so a failure reproduces.
    fn values(seed: u64) -> Vec<f32> {
        (0..2 * 3 * 7 * 8u64)
            .map(|i| {
                let h = (i.wrapping_add(seed << 20))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(29);
                let u = |x: u64| ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                let (a, b) = (u(h), u(h.wrapping_mul(0xD1B5_4A32_D192_ED03)));
                ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
            })
            .collect()
    }

    fn host(t: Tensor<NdArray, 4>) -> Vec<f64> {
        t.into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .expect("f64 data")
    }

    /// Largest difference relative to the largest magnitude of `truth`.
    fn rel_to(got: &[f64], truth: &[f64]) -> f64 {
        let scale = truth.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        got.iter()
            .zip(truth)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
            / scale
    }

    /// The fused op's forward and its written-out backward against the composed Burn ops it
    /// replaces (whose backward is Burn's autodiff), both in f32, held against the composed
    /// ops in f64. Measured: the fused dq/dk are within 3e-7 of f64, Burn's composed f32
    /// softmax backward 4e-4 off (so comparing the two f32 paths at 1e-4 was flaky); the fused
    /// op must stay within 1e-5.
    #[test]
    fn fused_attention_matches_the_composed_ops_and_their_gradients() {
        type A64 = Autodiff<NdArray<f64>>;
        let device = Default::default();
        let shape = [2, 3, 7, 8];
        let data: Vec<Vec<f32>> = (1..=4).map(values).collect();
        let leaf = |i: usize| {
            Tensor::<A, 4>::from_data(TensorData::new(data[i].clone(), shape), &device)
                .require_grad()
        };
        let leaf64 = |i: usize| {
            let wide: Vec<f64> = data[i].iter().map(|&x| f64::from(x)).collect();
            Tensor::<A64, 4>::from_data(
                TensorData::new(wide, shape),
                (&device, burn::tensor::DType::F64),
            )
            .require_grad()
        };
        let (q, k, v, w) = (leaf(0), leaf(1), leaf(2), leaf(3).detach());
        let fused = float::<A>(A::fused_attention(
            q.clone().into_primitive().tensor(),
            k.clone().into_primitive().tensor(),
            v.clone().into_primitive().tensor(),
        ));
        let composed = attention_probs(q.clone(), k.clone()).matmul(v.clone());
        let (q64, k64, v64, w64) = (leaf64(0), leaf64(1), leaf64(2), leaf64(3).detach());
        let truth = attention_probs(q64.clone(), k64.clone()).matmul(v64.clone());
        assert_eq!(
            truth.dtype(),
            burn::tensor::DType::F64,
            "the reference runs in f64"
        );
        let truth_out: Vec<f64> = truth
            .clone()
            .inner()
            .into_data()
            .convert::<f64>()
            .to_vec()
            .expect("f64");
        assert!(rel_to(&host(fused.clone().inner()), &truth_out) < 1e-6);
        assert!(rel_to(&host(composed.clone().inner()), &truth_out) < 1e-6);
        let g_fused = (fused * w.clone()).sum().backward();
        let g_composed = (composed * w).sum().backward();
        let g_truth = (truth * w64).sum().backward();
        for (name, t, t64) in [("q", &q, &q64), ("k", &k, &k64), ("v", &v, &v64)] {
            let want: Vec<f64> = t64
                .grad(&g_truth)
                .unwrap()
                .into_data()
                .convert::<f64>()
                .to_vec()
                .expect("f64");
            let fused = rel_to(&host(t.grad(&g_fused).unwrap()), &want);
            let composed = rel_to(&host(t.grad(&g_composed).unwrap()), &want);
            println!("d{name}: fused {fused:e}, composed {composed:e} (relative to f64)");
            assert!(fused < 1e-5, "d{name}: fused {fused} from the f64 gradient");
        }
        // Strided inputs (the `split_heads` view of `[batch, tokens, heads, head_dim]`
        // memory, which the NdArray kernel reads in place): the same values and gradients as
        // contiguous ones.
        let bthd = |i: usize| {
            let t =
                Tensor::<A, 4>::from_data(TensorData::new(data[i].clone(), [2, 7, 3, 8]), &device);
            t.require_grad()
        };
        let (qs, ks, vs) = (bthd(0), bthd(1), bthd(2));
        let contiguous = |t: &Tensor<A, 4>| {
            Tensor::<A, 4>::from_data(t.clone().swap_dims(1, 2).into_data(), &device).require_grad()
        };
        let (qc, kc, vc) = (contiguous(&qs), contiguous(&ks), contiguous(&vs));
        let run = |q: Tensor<A, 4>, k: Tensor<A, 4>, v: Tensor<A, 4>| {
            float::<A>(A::fused_attention(prim(q), prim(k), prim(v)))
        };
        let strided = run(
            qs.clone().swap_dims(1, 2),
            ks.clone().swap_dims(1, 2),
            vs.clone().swap_dims(1, 2),
        );
        let plain = run(qc.clone(), kc.clone(), vc.clone());
        let wide = |t: Tensor<NdArray, 4>| host(t);
        assert_eq!(wide(strided.clone().inner()), wide(plain.clone().inner()));
        let w2 = Tensor::<A, 4>::from_data(TensorData::new(data[3].clone(), shape), &device);
        let (gs, gc) = (
            (strided * w2.clone()).sum().backward(),
            (plain * w2).sum().backward(),
        );
        for (s, c) in [(&qs, &qc), (&ks, &kc), (&vs, &vc)] {
            let s = s.grad(&gs).unwrap().swap_dims(1, 2);
            assert_eq!(wide(s), wide(c.grad(&gc).unwrap()));
        }
        // Only v needs a gradient: the others are not computed (and nothing fails).
        let v2 = leaf(2);
        let out = float::<A>(A::fused_attention(
            q.clone().detach().into_primitive().tensor(),
            k.clone().detach().into_primitive().tensor(),
            v2.clone().into_primitive().tensor(),
        ));
        let g = out.sum().backward();
        assert!(v2.grad(&g).is_some());
    }
}
