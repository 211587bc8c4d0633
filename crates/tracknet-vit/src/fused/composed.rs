//! The fused ops written with Burn's tensor ops, for any backend: what [`super::FusedBackend`]
//! does by default, and the reference the host kernels are tested against.
//!
//! The backward functions here are the formulas the kernels implement; a backend without host
//! kernels never reaches them in training (its autodiff differentiates the composed forward),
//! except GELU's, which every backend uses for PyTorch's exact derivative.

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::{ConvOptions, FloatTensor};

use super::kernels::Act;

fn tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `[rows, last]` view of any-rank `t`, and its shape.
fn rows<B: Backend>(t: FloatTensor<B>) -> (Tensor<B, 2>, Shape) {
    use burn::tensor::TensorMetadata;
    let shape = t.shape();
    let d = shape[shape.num_dims() - 1];
    let n = shape.num_elements() / d.max(1);
    (
        tensor::<B, 1>(B::float_reshape(t, Shape::new([n * d]))).reshape([n, d]),
        shape,
    )
}

fn unrows<B: Backend>(t: Tensor<B, 2>, shape: Shape) -> FloatTensor<B> {
    B::float_reshape(prim(t), shape)
}

/// `Φ(x) + x·φ(x)`, the exact GELU derivative.
fn gelu_derivative<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = (x.clone() / std::f64::consts::SQRT_2).erf().add_scalar(1.0) * 0.5;
    let pdf = (x.clone().powi_scalar(2) * -0.5).exp() * 0.398_942_280_401_432_7;
    cdf + x * pdf
}

/// `grad · gelu'(x)`, any rank.
pub fn gelu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let (grad, _) = rows::<B>(grad);
    unrows(grad * gelu_derivative(x), shape)
}

/// Mean and `1/√(var + eps)` over the last axis (biased variance), kept as `[n, 1]`.
fn moments<B: Backend>(x: Tensor<B, 2>, eps: f64) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let mean = x.clone().mean_dim(1);
    let var = (x - mean.clone()).powi_scalar(2).mean_dim(1);
    (mean, var.add_scalar(eps).sqrt().recip())
}

/// `dx` of a normalisation over the last axis, given `g = dz · γ` and `x̂`:
/// `r · (g − mean(g) − x̂ · mean(g · x̂))`.
fn norm_dx<B: Backend>(g: Tensor<B, 2>, xhat: Tensor<B, 2>, rstd: Tensor<B, 2>) -> Tensor<B, 2> {
    let mean_g = g.clone().mean_dim(1);
    let mean_gx = (g.clone() * xhat.clone()).mean_dim(1);
    (g - mean_g - xhat * mean_gx) * rstd
}

/// LayerNorm's `(dx, dγ, dβ)`.
pub fn layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (x, shape) = rows::<B>(x);
    let (dy, _) = rows::<B>(grad);
    let gamma = tensor::<B, 1>(gamma).unsqueeze::<2>();
    let (mean, rstd) = moments(x.clone(), eps);
    let xhat = (x - mean) * rstd.clone();
    let dgamma = (dy.clone() * xhat.clone()).sum_dim(0).squeeze_dim::<1>(0);
    let dbeta = dy.clone().sum_dim(0).squeeze_dim::<1>(0);
    let dx = norm_dx(dy * gamma, xhat, rstd);
    (unrows(dx, shape), prim(dgamma), prim(dbeta))
}

fn activate<B: Backend, const D: usize>(z: Tensor<B, D>, act: Act) -> Tensor<B, D> {
    match act {
        Act::Identity => z,
        Act::Gelu => burn::tensor::activation::gelu(z),
        Act::Relu => burn::tensor::activation::relu(z),
    }
}

fn act_derivative<B: Backend, const D: usize>(z: Tensor<B, D>, act: Act) -> Tensor<B, D> {
    match act {
        Act::Identity => z.ones_like(),
        Act::Gelu => gelu_derivative(z),
        Act::Relu => z.greater_elem(0.0).float(),
    }
}

/// `x̂` per group and the per-group `1/√(var + eps)`: `[batch · groups, C/groups · h · w]`.
fn group_xhat<B: Backend>(
    x: Tensor<B, 4>,
    groups: usize,
    eps: f64,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [b, c, h, w] = x.dims();
    let x = x.reshape([b * groups, c / groups * h * w]);
    let (mean, rstd) = moments(x.clone(), eps);
    ((x - mean) * rstd.clone(), rstd)
}

/// `act(GroupNorm(x) · γ + β)`, `x: [batch, C, h, w]`.
pub fn group_norm_act<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    groups: usize,
    eps: f64,
    act: Act,
) -> FloatTensor<B> {
    let x = tensor::<B, 4>(x);
    let [b, c, h, w] = x.dims();
    let (xhat, _) = group_xhat(x, groups, eps);
    let z = xhat.reshape([b, c, h, w]) * tensor::<B, 1>(gamma).reshape([1, c, 1, 1])
        + tensor::<B, 1>(beta).reshape([1, c, 1, 1]);
    prim(activate(z, act))
}

/// `(dx, dγ, dβ)` of [`group_norm_act`].
pub fn group_norm_act_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    grad: FloatTensor<B>,
    groups: usize,
    eps: f64,
    act: Act,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let x = tensor::<B, 4>(x);
    let [b, c, h, w] = x.dims();
    let (xhat, rstd) = group_xhat(x, groups, eps);
    let xhat4 = xhat.clone().reshape([b, c, h, w]);
    let gamma = tensor::<B, 1>(gamma).reshape([1, c, 1, 1]);
    let z = xhat4.clone() * gamma.clone() + tensor::<B, 1>(beta).reshape([1, c, 1, 1]);
    let dz = tensor::<B, 4>(grad) * act_derivative(z, act);
    let per_channel = |t: Tensor<B, 4>| t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([c]);
    let dgamma = per_channel(dz.clone() * xhat4);
    let dbeta = per_channel(dz.clone());
    let g = (dz * gamma).reshape([b * groups, c / groups * h * w]);
    let dx = norm_dx(g, xhat, rstd).reshape([b, c, h, w]);
    (prim(dx), prim(dgamma), prim(dbeta))
}

fn depthwise_options(channels: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], channels)
}

/// Depthwise 3×3, stride 1, padding 1, with bias: Burn's conv2d with `groups = C`.
pub fn depthwise3x3<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    use burn::tensor::TensorMetadata;
    let c = weight.shape()[0];
    B::conv2d(x, weight, Some(bias), depthwise_options(c))
}

/// `(dx, dw, dbias)` of [`depthwise3x3`] (`dx` only when `need_dx`), by Burn's conv2d
/// backward.
pub fn depthwise3x3_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    need_dx: bool,
) -> (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>) {
    use burn::tensor::TensorMetadata;
    let c = weight.shape()[0];
    let options = depthwise_options(c);
    let dx = need_dx
        .then(|| B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone()));
    let db = prim(per_channel_sum(tensor::<B, 4>(grad.clone())));
    let dw = B::conv2d_weight_backward(x, weight, grad, options);
    (dx, dw, db)
}

/// `Σ_{b, h, w} t` per channel: `[C]`.
fn per_channel_sum<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 1> {
    let c = t.dims()[1];
    t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([c])
}

/// 1×1 conv with bias on NCHW: `y_b = W · x_b + bias`, `W: [O, C, 1, 1]`.
pub fn pointwise<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    let x = tensor::<B, 4>(x);
    let weight = tensor::<B, 4>(weight);
    let [b, c, h, w] = x.dims();
    let o = weight.dims()[0];
    let y = weight
        .reshape([1, o, c])
        .matmul(x.reshape([b, c, h * w]))
        .reshape([b, o, h, w]);
    prim(y + tensor::<B, 1>(bias).reshape([1, o, 1, 1]))
}

/// `(dx, dW, dbias)` of [`pointwise`] (`dx` only when `need_dx`).
pub fn pointwise_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    need_dx: bool,
) -> (Option<FloatTensor<B>>, FloatTensor<B>, FloatTensor<B>) {
    let x = tensor::<B, 4>(x);
    let weight = tensor::<B, 4>(weight);
    let dy = tensor::<B, 4>(grad);
    let [b, c, h, w] = x.dims();
    let o = weight.dims()[0];
    let db = per_channel_sum(dy.clone());
    let dy = dy.reshape([b, o, h * w]);
    let dx = need_dx.then(|| {
        let wt = weight
            .clone()
            .reshape([o, c])
            .transpose()
            .reshape([1, c, o]);
        prim(wt.matmul(dy.clone()).reshape([b, c, h, w]))
    });
    let dw = dy
        .matmul(x.reshape([b, c, h * w]).swap_dims(1, 2))
        .sum_dim(0)
        .reshape([o, c, 1, 1]);
    (dx, prim(dw), prim(db))
}

/// 2-D RoPE on the last `cos.dims()[0]` tokens of `x [batch, heads, tokens, d]`:
/// `x · cos + rot(x) · sin`, `rot(x1, x2) = (−x2, x1)`; with `transpose`, its adjoint
/// `x · cos − rot(x · sin)`.
pub fn rope<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    transpose: bool,
) -> FloatTensor<B> {
    let x = tensor::<B, 4>(x);
    let (cos, sin) = (tensor::<B, 2>(cos), tensor::<B, 2>(sin));
    let [b, h, t, d] = x.dims();
    let prefix = t - cos.dims()[0];
    let rot = |p: Tensor<B, 4>| {
        let x1 = p.clone().slice([0..b, 0..h, 0..t - prefix, 0..d / 2]);
        let x2 = p.slice([0..b, 0..h, 0..t - prefix, d / 2..d]);
        Tensor::cat(vec![x2.neg(), x1], 3)
    };
    let head = x.clone().slice([0..b, 0..h, 0..prefix, 0..d]);
    let patches = x.slice([0..b, 0..h, prefix..t, 0..d]);
    let (cos, sin) = (cos.unsqueeze::<4>(), sin.unsqueeze::<4>());
    let patches = if transpose {
        patches.clone() * cos - rot(patches * sin)
    } else {
        patches.clone() * cos + rot(patches) * sin
    };
    prim(Tensor::cat(vec![head, patches], 2))
}
