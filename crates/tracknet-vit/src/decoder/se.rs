//! Squeeze-and-excitation channel gating.

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};

use super::DecoderError;
use super::init::kaiming_conv2d;

/// Configuration of [`SqueezeExcite`].
#[derive(Config, Debug)]
pub struct SqueezeExciteConfig {
    /// Channels of the gated feature map.
    pub channels: usize,
    /// Reduction `r`; the hidden width is `max(channels / r, 1)`.
    pub reduction: usize,
}

impl SqueezeExciteConfig {
    /// Hidden width of the bottleneck, at least 1 so tiny channel counts still work.
    pub fn hidden(&self) -> usize {
        (self.channels / self.reduction.max(1)).max(1)
    }

    /// Builds the two 1×1 convs (Kaiming fan_out, zero bias).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<SqueezeExcite<B>, DecoderError> {
        if self.reduction == 0 {
            return Err(DecoderError::ZeroSeReduction);
        }
        let hidden = self.hidden();
        Ok(SqueezeExcite {
            reduce: kaiming_conv2d([self.channels, hidden], 1, 1, device),
            expand: kaiming_conv2d([hidden, self.channels], 1, 1, device),
        })
    }
}

/// Global average pool → 1×1 conv `C → C/r` → ReLU → 1×1 conv `C/r → C` → sigmoid → scale.
#[derive(Module, Debug)]
pub struct SqueezeExcite<B: Backend> {
    /// 1×1 conv `C → hidden`.
    pub reduce: Conv2d<B>,
    /// 1×1 conv `hidden → C`.
    pub expand: Conv2d<B>,
}

impl<B: crate::fused::FusedBackend> SqueezeExcite<B> {
    /// `[batch, C, h, w]` → same shape, each channel scaled by a gate in `(0, 1)`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pooled = x.clone().mean_dim(3).mean_dim(2); // [batch, C, 1, 1]
        let gate = relu(crate::fastconv::conv2d(&self.reduce, pooled));
        let gate = sigmoid(crate::fastconv::conv2d(&self.expand, gate));
        x * gate
    }
}
