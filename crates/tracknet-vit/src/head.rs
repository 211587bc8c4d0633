//! Heatmap head: a 1×1 conv from the decoder's last channel count to one logit channel.

use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::decoder::kaiming_conv2d;

/// Configuration of [`HeatmapHead`].
#[derive(Config, Debug)]
pub struct HeatmapHeadConfig {
    /// Channels of the decoder output (`channels.last()` of the decoder config).
    pub in_channels: usize,
}

impl HeatmapHeadConfig {
    /// Builds the 1×1 conv with Kaiming-normal (fan_out) weights and a zero bias.
    pub fn init<B: Backend>(&self, device: &B::Device) -> HeatmapHead<B> {
        HeatmapHead {
            conv: kaiming_conv2d([self.in_channels, 1], 1, 1, device),
        }
    }
}

/// Per-pixel logits; no activation here, so the loss can apply sigmoid / softmax itself.
#[derive(Module, Debug)]
pub struct HeatmapHead<B: Backend> {
    /// 1×1 conv `C → 1`.
    pub conv: Conv2d<B>,
}

impl<B: Backend> HeatmapHead<B> {
    /// `[batch, C, H, W]` → `[batch, 1, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::fastconv::conv2d(&self.conv, x)
    }
}
