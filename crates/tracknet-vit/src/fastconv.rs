//! Convolutions expressed as matmuls and shifted slices, on the parameters of a Burn `Conv2d`.
//!
//! Why: burn-ndarray 0.21 computes conv2d *backward* with a naive kernel — a 3×3 conv over
//! `[8, 64, 36, 64]` takes about a minute to differentiate on two cores, a 1×1 conv seconds —
//! while its matmul and element-wise backward are fast. Every conv this model uses is one of
//! four shapes (1×1, depthwise 3×3, full 3×3 with padding 1, and the non-overlapping patch
//! embedding), and each is exactly a matmul or a sum of shifted element-wise products, so
//! autodiff goes through fast ops. Any other shape falls back to Burn's conv.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::fused::FusedBackend;

/// Burn's conv, in the autocast region's dtype where one is active
/// ([`tracknet_quant::autocast`]; f32 out). Padding other than valid or explicit stays f32.
fn native<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    use tracknet_quant::autocast::{active, to, to_f32};
    let half = active::<B>(&x.device());
    let (begin, end) = match (&conv.padding, half) {
        (_, None) => return conv.forward(x),
        (PaddingConfig2d::Valid, _) => ([0, 0], [0, 0]),
        (PaddingConfig2d::Explicit(t, l, b, r), _) => ([*t, *l], [*b, *r]),
        _ => return conv.forward(x),
    };
    let options = burn::tensor::ops::PaddedConvOptions::asymmetric(
        conv.stride,
        begin,
        end,
        conv.dilation,
        conv.groups,
    );
    to_f32(burn::tensor::module::conv2d(
        to(x, half),
        to(conv.weight.val(), half),
        conv.bias.as_ref().map(|b| to(b.val(), half)),
        options,
    ))
}

/// `conv.forward(x)`, computed with matmuls / shifted slices where the shape allows and the
/// backend gains by it ([`FusedBackend::matmul_convolutions`]); Burn's conv otherwise.
pub fn conv2d<B: FusedBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if !B::matmul_convolutions() {
        return native(conv, x);
    }
    let [out_c, in_per_group, kh, kw] = conv.weight.dims();
    let [_, in_c, _, _] = x.dims();
    let unit = conv.stride == [1, 1] && conv.dilation == [1, 1];
    let pad = match &conv.padding {
        PaddingConfig2d::Valid => Some(0),
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Some(*t),
        _ => None,
    };
    let bias = conv.bias.as_ref().map(|b| b.val());
    let weight = conv.weight.val();
    let y = match (kh, kw, pad) {
        // With a bias: one fused op (bias included); without: the batched matmul.
        (1, 1, Some(0)) if unit && conv.groups == 1 => match bias {
            Some(b) => return crate::fused::pointwise(x, weight, b),
            None => pointwise(x, weight, out_c, in_c),
        },
        (3, 3, Some(1)) if unit && conv.groups == in_c && in_per_group == 1 && out_c == in_c => {
            return crate::fused::depthwise3x3(x, weight, bias);
        }
        (3, 3, Some(1)) if unit && conv.groups == 1 => full3x3(x, weight),
        (p, q, Some(0))
            if p == q && conv.stride == [p, p] && conv.groups == 1 && conv.dilation == [1, 1] =>
        {
            patchify(x, weight, p)
        }
        _ => return conv.forward(x),
    };
    match bias {
        Some(b) => y + b.reshape([1, out_c, 1, 1]),
        None => y,
    }
}

/// 1×1 conv: `[B, C, H, W] → [B, O, H, W]` as `W [O, C] · x_b [C, H·W]` per image, on the
/// NCHW data as it lies (no permute to channels-last and back).
fn pointwise<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    out_c: usize,
    in_c: usize,
) -> Tensor<B, 4> {
    let [b, _, h, w] = x.dims();
    let w2 = weight.reshape([1, out_c, in_c]);
    w2.matmul(x.reshape([b, in_c, h * w]))
        .reshape([b, out_c, h, w])
}

/// The nine shifted views of `x` padded by one pixel, in kernel order `(dy, dx)` row-major.
fn taps<B: Backend>(x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
    let [b, c, h, w] = x.dims();
    let padded = Tensor::zeros([b, c, h + 2, w + 2], &x.device())
        .slice_assign([0..b, 0..c, 1..h + 1, 1..w + 1], x);
    let mut out = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            out.push(padded.clone().slice([0..b, 0..c, dy..dy + h, dx..dx + w]));
        }
    }
    out
}

/// Full 3×3, padding 1: im2col of the nine taps, one matmul.
fn full3x3<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>) -> Tensor<B, 4> {
    let [o, c, _, _] = weight.dims();
    let [b, _, h, w] = x.dims();
    // cols: [B, H, W, 9, C] → [BHW, 9C]; weight [O, C, 3, 3] → [O, 3, 3, C] → [9C, O].
    let cols = Tensor::stack::<5>(
        taps(x)
            .into_iter()
            .map(|t| t.permute([0, 2, 3, 1]))
            .collect(),
        3,
    )
    .reshape([b * h * w, 9 * c]);
    let wm = weight.permute([0, 2, 3, 1]).reshape([o, 9 * c]).transpose();
    cols.matmul(wm).reshape([b, h, w, o]).permute([0, 3, 1, 2])
}

/// Non-overlapping `p×p` patches with stride `p` (ViT patch embedding) as one matmul.
/// Pixels beyond the last full patch are dropped, as a strided conv does.
fn patchify<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, p: usize) -> Tensor<B, 4> {
    let [o, c, _, _] = weight.dims();
    let [b, _, h, w] = x.dims();
    let (gh, gw) = (h / p, w / p);
    let x = if gh * p != h || gw * p != w {
        x.slice([0..b, 0..c, 0..gh * p, 0..gw * p])
    } else {
        x
    };
    // [B, C, gh, p, gw, p] → [B, gh, gw, C, p, p] → [B·gh·gw, C·p·p]
    let patches = x
        .reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b * gh * gw, c * p * p]);
    let wm = weight.reshape([o, c * p * p]).transpose();
    patches
        .matmul(wm)
        .reshape([b, gh, gw, o])
        .permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    type B = NdArray;

    fn check(cfg: Conv2dConfig, x: [usize; 4]) {
        let d = Default::default();
        let conv = cfg.init::<B>(&d);
        let x = Tensor::<B, 4>::random(x, Distribution::Normal(0.0, 1.0), &d);
        let want = conv.forward(x.clone());
        let got = conv2d(&conv, x);
        assert_eq!(got.dims(), want.dims());
        let err: f32 = (got - want).abs().max().into_scalar();
        assert!(err < 1e-4, "{err}");
    }

    #[test]
    fn every_fast_path_equals_burn_conv() {
        let pad1 = PaddingConfig2d::Explicit(1, 1, 1, 1);
        check(Conv2dConfig::new([6, 5], [1, 1]), [2, 6, 7, 9]);
        check(
            Conv2dConfig::new([6, 6], [3, 3])
                .with_groups(6)
                .with_padding(pad1.clone()),
            [2, 6, 7, 9],
        );
        check(
            Conv2dConfig::new([4, 5], [3, 3]).with_padding(pad1.clone()),
            [2, 4, 7, 9],
        );
        check(
            Conv2dConfig::new([3, 8], [4, 4]).with_stride([4, 4]),
            [2, 3, 12, 18],
        );
        // A shape with no fast path falls back to Burn.
        check(
            Conv2dConfig::new([3, 4], [3, 3]).with_stride([2, 2]),
            [1, 3, 9, 9],
        );
    }
}
