//! Upsampling decoder: turns the backbone's coarse patch grid into a full-resolution feature map
//! that the [heatmap head](crate::head::HeatmapHead) reduces to one channel.
//!
//! Stage `i` goes `channels[i] -> channels[i + 1]`: bilinear upsampling by `upsample[i]`, a 1×1
//! projection when the channel count changes, then `blocks_per_stage` residual blocks. A final
//! bilinear resize lands exactly on `heatmap_size`, whatever the patch grid was.

mod block;
mod init;
pub(crate) mod resize;
mod se;

pub use block::{DecoderNorm, ResidualBlock, ResidualBlockConfig, channel_dropout2d};
pub use init::{group_norm_groups, kaiming_conv2d};
pub use resize::bilinear_resize;
pub use se::{SqueezeExcite, SqueezeExciteConfig};

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Normalisation inside the residual blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderNormKind {
    /// GroupNorm with [`group_norm_groups`] groups: independent of the batch size, the default.
    #[serde(alias = "gn")]
    Group,
    /// BatchNorm2d (running statistics, updated only when autodiff is enabled).
    #[serde(alias = "bn")]
    Batch,
}

/// Activation inside the residual blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderActivation {
    /// Exact (erf) GELU, as PyTorch's `nn.GELU()`.
    Gelu,
    /// ReLU.
    Relu,
}

/// Why a decoder configuration cannot be built. Each message names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecoderError {
    /// `channels` needs the input width plus at least one stage.
    #[error("decoder.channels: expected at least 2 entries (input + one stage), got {got}")]
    TooFewChannels { got: usize },
    /// A channel count of zero.
    #[error("decoder.channels[{index}]: expected a positive channel count, got 0")]
    ZeroChannels { index: usize },
    /// More upsampling factors than stages.
    #[error("decoder.upsample: expected at most {stages} factors (one per stage), got {got}")]
    TooManyUpsample { stages: usize, got: usize },
    /// An upsampling factor of zero.
    #[error("decoder.upsample[{index}]: expected a factor >= 1, got 0")]
    ZeroUpsample { index: usize },
    /// An empty heatmap.
    #[error("decoder.heatmap_size: expected [width, height] both > 0, got [{width}, {height}]")]
    EmptyHeatmap { width: usize, height: usize },
    /// A squeeze-excitation reduction of zero.
    #[error("decoder.se_reduction: expected >= 1 when use_se is true, got 0")]
    ZeroSeReduction,
    /// A dropout probability outside `[0, 1)`.
    #[error("decoder.dropout: expected a probability in [0, 1), got {got}")]
    BadDropout { got: f64 },
}

/// Configuration of [`HeatmapDecoder`].
#[derive(Config, Debug)]
pub struct HeatmapDecoderConfig {
    /// Channel counts, input first: `[C0, C1, ..., Cn]` gives `n` stages (e.g. `[384, 256, 128, 64]`).
    pub channels: Vec<usize>,
    /// Upsampling factor per stage; padded with 1 when shorter than the number of stages.
    pub upsample: Vec<usize>,
    /// Output size `[width, height]` of the final bilinear resize.
    pub heatmap_size: [usize; 2],
    /// Residual blocks after each stage's upsampling/projection.
    #[config(default = 1)]
    pub blocks_per_stage: usize,
    /// Normalisation in the residual blocks.
    #[config(default = "DecoderNormKind::Group")]
    pub norm: DecoderNormKind,
    /// Activation in the residual blocks.
    #[config(default = "DecoderActivation::Gelu")]
    pub activation: DecoderActivation,
    /// Depthwise 3×3 (groups = channels) instead of a full 3×3 conv in the blocks.
    #[config(default = true)]
    pub use_depthwise: bool,
    /// Squeeze-excitation at the end of each block.
    #[config(default = false)]
    pub use_se: bool,
    /// Squeeze-excitation reduction `r`: hidden width is `max(C / r, 1)`.
    #[config(default = 8)]
    pub se_reduction: usize,
    /// Channel (dropout2d) probability in each block; active only when autodiff is enabled.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl HeatmapDecoderConfig {
    /// Number of stages, `channels.len() - 1` (0 for an invalid config).
    pub fn num_stages(&self) -> usize {
        self.channels.len().saturating_sub(1)
    }

    /// Upsampling factor of every stage, padded with 1.
    pub fn stage_factors(&self) -> Vec<usize> {
        (0..self.num_stages())
            .map(|i| self.upsample.get(i).copied().unwrap_or(1))
            .collect()
    }

    /// Checks every field; [`init`](Self::init) calls it first.
    pub fn validate(&self) -> Result<(), DecoderError> {
        if self.channels.len() < 2 {
            return Err(DecoderError::TooFewChannels {
                got: self.channels.len(),
            });
        }
        if let Some(index) = self.channels.iter().position(|&c| c == 0) {
            return Err(DecoderError::ZeroChannels { index });
        }
        if self.upsample.len() > self.num_stages() {
            return Err(DecoderError::TooManyUpsample {
                stages: self.num_stages(),
                got: self.upsample.len(),
            });
        }
        if let Some(index) = self.upsample.iter().position(|&f| f == 0) {
            return Err(DecoderError::ZeroUpsample { index });
        }
        let [width, height] = self.heatmap_size;
        if width == 0 || height == 0 {
            return Err(DecoderError::EmptyHeatmap { width, height });
        }
        if self.use_se && self.se_reduction == 0 {
            return Err(DecoderError::ZeroSeReduction);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(DecoderError::BadDropout { got: self.dropout });
        }
        Ok(())
    }

    /// Validates, then builds the decoder with Kaiming-normal (fan_out) convs and unit norms.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<HeatmapDecoder<B>, DecoderError> {
        self.validate()?;
        let stages = self
            .channels
            .windows(2)
            .zip(self.stage_factors())
            .map(|(pair, factor)| self.init_stage(pair[0], pair[1], factor, device))
            .collect::<Result<Vec<_>, _>>()?;
        let [width, height] = self.heatmap_size;
        Ok(HeatmapDecoder {
            stages,
            output_size: [height, width],
        })
    }

    fn init_stage<B: Backend>(
        &self,
        c_in: usize,
        c_out: usize,
        upsample: usize,
        device: &B::Device,
    ) -> Result<DecoderStage<B>, DecoderError> {
        let proj = (c_in != c_out).then(|| kaiming_conv2d([c_in, c_out], 1, 1, device));
        let block = ResidualBlockConfig::new(c_out)
            .with_norm(self.norm)
            .with_activation(self.activation)
            .with_use_depthwise(self.use_depthwise)
            .with_use_se(self.use_se)
            .with_se_reduction(self.se_reduction)
            .with_dropout(self.dropout);
        let blocks = (0..self.blocks_per_stage)
            .map(|_| block.init(device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DecoderStage {
            upsample,
            proj,
            blocks,
        })
    }
}

/// One decoder stage: upsample → optional 1×1 projection → residual blocks.
#[derive(Module, Debug)]
pub struct DecoderStage<B: Backend> {
    /// Integer bilinear upsampling factor (1 = none).
    pub upsample: usize,
    /// 1×1 conv `C_in -> C_out`, present only when the channel count changes.
    pub proj: Option<Conv2d<B>>,
    /// Residual blocks at `C_out`.
    pub blocks: Vec<ResidualBlock<B>>,
}

impl<B: crate::fused::FusedBackend> DecoderStage<B> {
    /// `[batch, C_in, h, w]` → `[batch, C_out, h * upsample, w * upsample]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let x = bilinear_resize(x, [h * self.upsample, w * self.upsample]);
        let x = match &self.proj {
            Some(proj) => crate::fastconv::conv2d(proj, x),
            None => x,
        };
        self.blocks.iter().fold(x, |x, block| block.forward(x))
    }
}

/// The upsampling decoder. Build it with [`HeatmapDecoderConfig::init`].
#[derive(Module, Debug)]
pub struct HeatmapDecoder<B: Backend> {
    /// Stages in order, named `stages.0`, `stages.1`, ...
    pub stages: Vec<DecoderStage<B>>,
    /// Final size `[height, width]` (note: the config says `[width, height]`).
    pub output_size: [usize; 2],
}

impl<B: crate::fused::FusedBackend> HeatmapDecoder<B> {
    /// `[batch, C0, h, w]` (channels-first patch grid) → `[batch, C_last, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.stages.iter().fold(x, |x, stage| stage.forward(x));
        bilinear_resize(x, self.output_size)
    }

    /// Whether any block normalises with BatchNorm (running statistics updated per forward).
    pub fn has_batch_norm(&self) -> bool {
        self.stages
            .iter()
            .flat_map(|s| &s.blocks)
            .any(|b| matches!(b.norm, DecoderNorm::Batch(_)))
    }
}
