//! Heatmap head: a 1×1 conv from the decoder's last channel count to one logit channel.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

/// Configuration of [`HeatmapHead`].
#[derive(Config, Debug)]
pub struct HeatmapHeadConfig {
    /// Channels of the decoder output (`channels.last()` of the decoder config).
    pub in_channels: usize,
}

impl HeatmapHeadConfig {
    /// Builds the 1×1 conv with small weights (normal, std 0.001, as CenterNet's heatmap head)
    /// and a zero bias. Kaiming fan_out would give a one-channel conv a std of √2 per weight
    /// and start training from logits in the tens, which a sigmoid/focal loss saturates on.
    pub fn init<B: Backend>(&self, device: &B::Device) -> HeatmapHead<B> {
        let mut conv = Conv2dConfig::new([self.in_channels, 1], [1, 1]).init(device);
        conv.weight = Param::from_tensor(Tensor::random(
            [1, self.in_channels, 1, 1],
            Distribution::Normal(0.0, 1e-3),
            device,
        ));
        conv.bias = Some(Param::from_tensor(Tensor::zeros([1], device)));
        HeatmapHead { conv }
    }
}

/// Per-pixel logits; no activation here, so the loss can apply sigmoid / softmax itself.
#[derive(Module, Debug)]
pub struct HeatmapHead<B: Backend> {
    /// 1×1 conv `C → 1`.
    pub conv: Conv2d<B>,
}

impl<B: crate::fused::FusedBackend> HeatmapHead<B> {
    /// `[batch, C, H, W]` → `[batch, 1, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::fastconv::conv2d(&self.conv, x)
    }
}
