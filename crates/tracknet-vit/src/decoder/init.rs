//! Weight initialisation matching the original PyTorch decoder.

use burn::module::Initializer;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

/// GroupNorm group count: the largest power of two ≤ 32 dividing `channels`
/// (64 → 32, 48 → 16, 24 → 8, 3 → 1), so any channel count gets a valid GroupNorm.
pub fn group_norm_groups(channels: usize) -> usize {
    let mut groups = 32;
    while groups > 1 && !channels.is_multiple_of(groups) {
        groups /= 2;
    }
    groups
}

/// A square `kernel`×`kernel` conv (stride 1, "same" padding for odd kernels) with
/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")` weights and a zero bias.
///
/// The std is `sqrt(2 / fan_out)` with `fan_out = out_channels * kernel²` exactly as PyTorch's
/// `_calculate_fan_in_and_fan_out` computes it, i.e. *not* divided by `groups` (Burn's own
/// `KaimingNormal` divides by groups, which would give depthwise convs a ~C× larger std).
///
/// `channels` is `[in, out]`; `groups` must divide both (the decoder config guarantees it).
pub fn kaiming_conv2d<B: Backend>(
    channels: [usize; 2],
    kernel: usize,
    groups: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let fan_out = (channels[1] * kernel * kernel).max(1);
    let std = (2.0 / fan_out as f64).sqrt();
    let pad = kernel / 2;
    let mut conv = Conv2dConfig::new(channels, [kernel, kernel])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    // A fresh zero tensor is a new leaf: keep it trainable like the weight.
    conv.bias = conv.bias.map(|bias| {
        bias.map(|b| {
            if b.is_require_grad() {
                b.zeros_like().require_grad()
            } else {
                b.zeros_like()
            }
        })
    });
    conv
}
