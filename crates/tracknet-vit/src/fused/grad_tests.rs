//! The fused ops' forward and written-out backward on `Autodiff<NdArray>` against the composed
//! Burn ops they replace, differentiated by Burn's autodiff in f64 (GELU: against the exact
//! derivative, which Burn's autodiff does not use).

use burn::backend::autodiff::grads::Gradients;
use burn::backend::{Autodiff, NdArray};
use burn::nn::{GroupNormConfig, conv::Conv2dConfig};
use burn::prelude::*;
use burn::tensor::ops::{ActivationOps, ModuleOps};
use burn::tensor::{DType, TensorPrimitive};

use super::{Act, FusedBackend, composed};

type A = Autodiff<NdArray>;
type A64 = Autodiff<NdArray<f64>>;

/// Deterministic values in about [-2, 2], from a hash.
fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn leaf<const D: usize>(shape: [usize; D], seed: u64) -> (Tensor<A, D>, Tensor<A64, D>) {
    let v = values(shape.iter().product(), seed);
    let d = Default::default();
    let wide: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
    (
        Tensor::<A, D>::from_data(TensorData::new(v, shape), &d).require_grad(),
        Tensor::<A64, D>::from_data(TensorData::new(wide, shape), (&d, DType::F64)).require_grad(),
    )
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().expect("f64")
}

/// Largest difference relative to the largest magnitude of `truth`.
fn rel(got: &[f64], truth: &[f64]) -> f64 {
    assert_eq!(got.len(), truth.len());
    let scale = truth.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(truth)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Reads one leaf's gradient.
type Grad<'a> = dyn Fn(&Gradients) -> Vec<f64> + 'a;

/// Checks the fused output and the gradients of `Σ out · w` for each named leaf against the
/// f64 reference.
fn check<const D: usize>(
    name: &str,
    out: Tensor<A, D>,
    truth: Tensor<A64, D>,
    leaves: &[(&str, &Grad<'_>, &Grad<'_>)],
) {
    let shape = out.dims();
    let (w, w64) = leaf(shape, 99);
    let (w, w64) = (w.detach(), w64.detach());
    let err = rel(&host(out.clone().inner()), &host(truth.clone().inner()));
    assert!(err < 1e-5, "{name}: forward {err:e} from f64");
    let g = (out * w).sum().backward();
    let g64 = (truth * w64).sum().backward();
    for (leaf_name, got, want) in leaves {
        let err = rel(&got(&g), &want(&g64));
        println!("{name} d{leaf_name}: {err:e} relative to f64");
        assert!(err < 1e-4, "{name}: d{leaf_name} {err:e} from f64");
    }
}

#[test]
fn fused_layer_norm_matches_burns_layer_norm_and_its_gradients() {
    assert!(
        <A as FusedBackend>::host_kernels(),
        "NdArray runs the host kernels"
    );
    let (x, x64) = leaf([2, 5, 24], 1);
    let (g, g64) = leaf([24], 2);
    let (b, b64) = leaf([24], 3);
    let out = super::layer_norm(x.clone(), g.clone(), b.clone(), 1e-5);
    let truth = Tensor::<A64, 3>::from_primitive(TensorPrimitive::Float(A64::layer_norm(
        x64.clone().into_primitive().tensor(),
        g64.clone().into_primitive().tensor(),
        Some(b64.clone().into_primitive().tensor()),
        1e-5,
    )));
    check(
        "layer_norm",
        out,
        truth,
        &[
            ("x", &|gr| host(x.grad(gr).unwrap()), &|gr| {
                host(x64.grad(gr).unwrap())
            }),
            ("gamma", &|gr| host(g.grad(gr).unwrap()), &|gr| {
                host(g64.grad(gr).unwrap())
            }),
            ("beta", &|gr| host(b.grad(gr).unwrap()), &|gr| {
                host(b64.grad(gr).unwrap())
            }),
        ],
    );
}

#[test]
fn fused_group_norm_act_matches_burns_group_norm_and_its_gradients() {
    for act in [Act::Identity, Act::Relu] {
        let d = Default::default();
        let (x, x64) = leaf([2, 6, 5, 7], 4);
        let mut norm = GroupNormConfig::new(3, 6).init::<A>(&d);
        let mut norm64 = GroupNormConfig::new(3, 6).init::<A64>(&d);
        let (g, g64) = leaf([6], 5);
        let (b, b64) = leaf([6], 6);
        norm.gamma = Some(burn::module::Param::from_tensor(g.clone()));
        norm.beta = Some(burn::module::Param::from_tensor(b.clone()));
        norm64.gamma = Some(burn::module::Param::from_tensor(g64.clone()));
        norm64.beta = Some(burn::module::Param::from_tensor(b64.clone()));
        let out = super::group_norm_act(x.clone(), &norm, act);
        let truth = norm64.forward(x64.clone());
        let truth = match act {
            Act::Relu => burn::tensor::activation::relu(truth),
            _ => truth,
        };
        let (gp, bp) = (norm.gamma.clone().unwrap(), norm.beta.clone().unwrap());
        let (gp64, bp64) = (norm64.gamma.clone().unwrap(), norm64.beta.clone().unwrap());
        check(
            &format!("group_norm {act:?}"),
            out,
            truth,
            &[
                ("x", &|gr| host(x.grad(gr).unwrap()), &|gr| {
                    host(x64.grad(gr).unwrap())
                }),
                ("gamma", &|gr| host(gp.val().grad(gr).unwrap()), &|gr| {
                    host(gp64.val().grad(gr).unwrap())
                }),
                ("beta", &|gr| host(bp.val().grad(gr).unwrap()), &|gr| {
                    host(bp64.val().grad(gr).unwrap())
                }),
            ],
        );
    }
}

/// GELU's exact derivative: against the composed formula in f64 (Burn's autodiff of its erf
/// GELU uses the tanh approximation's derivative, up to ≈ 1e-3 off, so it is no reference).
#[test]
fn fused_gelu_and_group_norm_gelu_have_the_exact_derivative() {
    type N64 = NdArray<f64>;
    let prim64 = |t: Tensor<A64, 4>| t.inner().into_primitive().tensor();
    let (x, x64) = leaf([2, 6, 5, 7], 7);
    let (c, c64) = leaf([2, 6, 5, 7], 8);
    let (c, c64) = (c.detach(), c64.detach());

    let y = super::gelu(x.clone());
    let want =
        Tensor::<N64, 4>::from_primitive(TensorPrimitive::Float(N64::gelu(prim64(x64.clone()))));
    assert!(rel(&host(y.clone().inner()), &host(want)) < 1e-6);
    let dx = host(x.grad(&(y * c.clone()).sum().backward()).unwrap());
    let want = composed::gelu_backward::<N64>(prim64(x64.clone()), prim64(c64.clone()));
    let want = host(Tensor::<N64, 4>::from_primitive(TensorPrimitive::Float(
        want,
    )));
    assert!(rel(&dx, &want) < 1e-5, "gelu dx {:e}", rel(&dx, &want));
    // Burn's own derivative is measurably different: the reason for the fused op.
    let burn = host(
        x.grad(
            &(burn::tensor::activation::gelu(x.clone()) * c.clone())
                .sum()
                .backward(),
        )
        .unwrap(),
    );
    assert!(
        rel(&burn, &want) > 1e-4,
        "Burn's GELU derivative became exact"
    );

    let d = Default::default();
    let norm = GroupNormConfig::new(2, 6).init::<A>(&d);
    let y = super::group_norm_act(x.clone(), &norm, Act::Gelu);
    let ones = || {
        Tensor::<N64, 1>::ones([6], (&d, DType::F64))
            .into_primitive()
            .tensor()
    };
    let zeros = || {
        Tensor::<N64, 1>::zeros([6], (&d, DType::F64))
            .into_primitive()
            .tensor()
    };
    let fwd =
        composed::group_norm_act::<N64>(prim64(x64.clone()), ones(), zeros(), 2, 1e-5, Act::Gelu);
    let fwd = host(Tensor::<N64, 4>::from_primitive(TensorPrimitive::Float(
        fwd,
    )));
    assert!(rel(&host(y.clone().inner()), &fwd) < 1e-5);
    let dx = host(x.grad(&(y * c).sum().backward()).unwrap());
    let (want, _, _) = composed::group_norm_act_backward::<N64>(
        prim64(x64),
        ones(),
        zeros(),
        prim64(c64),
        2,
        1e-5,
        Act::Gelu,
    );
    let want = host(Tensor::<N64, 4>::from_primitive(TensorPrimitive::Float(
        want,
    )));
    assert!(
        rel(&dx, &want) < 1e-4,
        "group_norm gelu dx {:e}",
        rel(&dx, &want)
    );
}

/// A Burn `Conv2d` in f64 with the given weight and bias leaves.
fn conv64(
    cfg: Conv2dConfig,
    weight: &Tensor<A64, 4>,
    bias: &Tensor<A64, 1>,
) -> burn::nn::conv::Conv2d<A64> {
    let conv = cfg.init::<A64>(&Default::default());
    burn::nn::conv::Conv2d {
        weight: burn::module::Param::from_tensor(weight.clone()),
        bias: Some(burn::module::Param::from_tensor(bias.clone())),
        ..conv
    }
}

#[test]
fn fused_depthwise_matches_burns_conv_and_its_gradients() {
    let (x, x64) = leaf([2, 4, 6, 9], 9);
    let (w, w64) = leaf([4, 1, 3, 3], 10);
    let (b, b64) = leaf([4], 12);
    let out = super::depthwise3x3(x.clone(), w.clone(), Some(b.clone()));
    let cfg = Conv2dConfig::new([4, 4], [3, 3])
        .with_groups(4)
        .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1));
    let conv = conv64(cfg, &w64, &b64);
    let (wp, bp) = (conv.weight.clone(), conv.bias.clone().unwrap());
    let truth = conv.forward(x64.clone());
    check(
        "depthwise3x3",
        out,
        truth,
        &[
            ("x", &|gr| host(x.grad(gr).unwrap()), &|gr| {
                host(x64.grad(gr).unwrap())
            }),
            ("w", &|gr| host(w.grad(gr).unwrap()), &|gr| {
                host(wp.val().grad(gr).unwrap())
            }),
            ("b", &|gr| host(b.grad(gr).unwrap()), &|gr| {
                host(bp.val().grad(gr).unwrap())
            }),
        ],
    );
}

#[test]
fn fused_pointwise_matches_burns_conv_and_its_gradients() {
    let (x, x64) = leaf([2, 5, 4, 7], 13);
    let (w, w64) = leaf([3, 5, 1, 1], 14);
    let (b, b64) = leaf([3], 15);
    let out = super::pointwise(x.clone(), w.clone(), b.clone());
    let conv = conv64(Conv2dConfig::new([5, 3], [1, 1]), &w64, &b64);
    let (wp, bp) = (conv.weight.clone(), conv.bias.clone().unwrap());
    let truth = conv.forward(x64.clone());
    check(
        "pointwise",
        out,
        truth,
        &[
            ("x", &|gr| host(x.grad(gr).unwrap()), &|gr| {
                host(x64.grad(gr).unwrap())
            }),
            ("w", &|gr| host(w.grad(gr).unwrap()), &|gr| {
                host(wp.val().grad(gr).unwrap())
            }),
            ("b", &|gr| host(b.grad(gr).unwrap()), &|gr| {
                host(bp.val().grad(gr).unwrap())
            }),
        ],
    );
}

/// RoPE on a strided view (as `split_heads` gives it) against the composed rotation in f64.
#[test]
fn fused_rope_matches_the_composed_rotation_and_its_gradient() {
    let (x, x64) = leaf([2, 7, 3, 8], 16); // [batch, tokens, heads, d]
    let (cos, cos64) = leaf([5, 8], 17); // 5 patches after 2 prefix tokens
    let (sin, sin64) = leaf([5, 8], 18);
    let (cos, sin) = (cos.detach(), sin.detach());
    let out = super::rope(x.clone().swap_dims(1, 2), cos, sin);
    let truth = Tensor::<A64, 4>::from_primitive(TensorPrimitive::Float(composed::rope::<A64>(
        x64.clone().swap_dims(1, 2).into_primitive().tensor(),
        cos64.detach().into_primitive().tensor(),
        sin64.detach().into_primitive().tensor(),
        false,
    )));
    check(
        "rope",
        out,
        truth,
        &[("x", &|gr| host(x.grad(gr).unwrap()), &|gr| {
            host(x64.grad(gr).unwrap())
        })],
    );
}

#[test]
fn fused_bilinear_resize_matches_the_composed_resize_and_its_gradients() {
    for size in [[10, 14], [3, 2], [5, 14]] {
        let (x, x64) = leaf([2, 3, 5, 7], 11);
        let out = crate::decoder::bilinear_resize(x.clone(), size);
        let truth = crate::fused::bilinear::composed(x64.clone(), size);
        check(
            &format!("bilinear {size:?}"),
            out,
            truth,
            &[("x", &|gr| host(x.grad(gr).unwrap()), &|gr| {
                host(x64.grad(gr).unwrap())
            })],
        );
    }
}

/// The composed RoPE's `transpose` (the fallback backward) is its forward's adjoint, and
/// equals the host kernel's.
#[test]
fn composed_rope_transpose_is_the_adjoint() {
    let d = Default::default();
    let t = |shape: [usize; 4], seed| {
        Tensor::<NdArray, 4>::from_data(
            TensorData::new(values(shape.iter().product(), seed), shape),
            &d,
        )
    };
    let t2 = |seed| Tensor::<NdArray, 2>::from_data(TensorData::new(values(40, seed), [5, 8]), &d);
    let (x, g, cos, sin) = (t([2, 3, 7, 8], 20), t([2, 3, 7, 8], 21), t2(22), t2(23));
    let run = |x: Tensor<NdArray, 4>, transpose| {
        let p = |t: Tensor<NdArray, 2>| t.into_primitive().tensor();
        Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(composed::rope::<NdArray>(
            x.into_primitive().tensor(),
            p(cos.clone()),
            p(sin.clone()),
            transpose,
        )))
    };
    let lhs: f32 = (run(x.clone(), false) * g.clone()).sum().into_scalar();
    let rhs: f32 = (run(g.clone(), true) * x).sum().into_scalar();
    assert!(
        (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
        "{lhs} vs {rhs}"
    );
    let kernel = NdArray::fused_rope(
        g.clone().into_primitive().tensor(),
        cos.clone().into_primitive().tensor(),
        sin.clone().into_primitive().tensor(),
        true,
    );
    let kernel = Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(kernel));
    assert!(rel(&host(kernel), &host(run(g, true))) < 1e-6);
}
