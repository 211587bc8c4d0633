//! The decoder's residual block: `x + dropout2d(se(pw(act(norm(dw(x))))))`.

use burn::nn::activation::Activation;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig, Gelu, GroupNorm, GroupNormConfig, Relu};
use burn::prelude::*;

use super::init::{group_norm_groups, kaiming_conv2d};
use super::se::{SqueezeExcite, SqueezeExciteConfig};
use super::{DecoderActivation, DecoderError, DecoderNormKind};

/// Configuration of [`ResidualBlock`].
#[derive(Config, Debug)]
pub struct ResidualBlockConfig {
    /// Channels in and out (the block keeps the shape).
    pub channels: usize,
    /// Normalisation after the 3×3 conv.
    #[config(default = "DecoderNormKind::Group")]
    pub norm: DecoderNormKind,
    /// Activation after the norm.
    #[config(default = "DecoderActivation::Gelu")]
    pub activation: DecoderActivation,
    /// Depthwise 3×3 (groups = channels) instead of a full 3×3.
    #[config(default = true)]
    pub use_depthwise: bool,
    /// Squeeze-excitation after the pointwise conv.
    #[config(default = false)]
    pub use_se: bool,
    /// Squeeze-excitation reduction.
    #[config(default = 8)]
    pub se_reduction: usize,
    /// Channel dropout probability.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl ResidualBlockConfig {
    /// Builds the block: Kaiming fan_out convs with zero bias, norm weight 1 and bias 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<ResidualBlock<B>, DecoderError> {
        let c = self.channels;
        if c == 0 {
            return Err(DecoderError::ZeroChannels { index: 0 });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(DecoderError::BadDropout { got: self.dropout });
        }
        let groups = if self.use_depthwise { c } else { 1 };
        let norm = match self.norm {
            DecoderNormKind::Group => {
                DecoderNorm::Group(GroupNormConfig::new(group_norm_groups(c), c).init(device))
            }
            DecoderNormKind::Batch => DecoderNorm::Batch(BatchNormConfig::new(c).init(device)),
        };
        let act = match self.activation {
            DecoderActivation::Gelu => Activation::from(Gelu::new()),
            DecoderActivation::Relu => Activation::from(Relu::new()),
        };
        let se = if self.use_se {
            Some(SqueezeExciteConfig::new(c, self.se_reduction).init(device)?)
        } else {
            None
        };
        Ok(ResidualBlock {
            dw: kaiming_conv2d([c, c], 3, groups, device),
            norm,
            act,
            pw: kaiming_conv2d([c, c], 1, 1, device),
            se,
            dropout: self.dropout,
        })
    }
}

/// GroupNorm or BatchNorm2d, chosen by [`DecoderNormKind`].
#[derive(Module, Debug)]
pub enum DecoderNorm<B: Backend> {
    /// GroupNorm (batch-size independent).
    Group(GroupNorm<B>),
    /// BatchNorm2d.
    Batch(BatchNorm<B>),
}

impl<B: Backend> DecoderNorm<B> {
    /// `[batch, C, h, w]` → same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            DecoderNorm::Group(norm) => norm.forward(x),
            DecoderNorm::Batch(norm) => norm.forward(x),
        }
    }
}

/// Shape-preserving residual block at `C` channels.
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    /// 3×3 conv, depthwise (groups = C) or full; padding 1.
    pub dw: Conv2d<B>,
    /// Norm after `dw`.
    pub norm: DecoderNorm<B>,
    /// Activation after the norm.
    pub act: Activation<B>,
    /// Pointwise 1×1 conv mixing channels.
    pub pw: Conv2d<B>,
    /// Optional squeeze-excitation.
    pub se: Option<SqueezeExcite<B>>,
    /// Channel dropout probability (training only).
    pub dropout: f64,
}

impl<B: crate::fused::FusedBackend> ResidualBlock<B> {
    /// `[batch, C, h, w]` → `[batch, C, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = crate::fastconv::conv2d(&self.dw, x.clone());
        let y = self.norm_act(y);
        let y = crate::fastconv::conv2d(&self.pw, y);
        let y = match &self.se {
            Some(se) => se.forward(y),
            None => y,
        };
        x + channel_dropout2d(y, self.dropout)
    }
}

impl<B: crate::fused::FusedBackend> ResidualBlock<B> {
    /// `act(norm(y))`: GroupNorm and the activation as one fused op; BatchNorm as Burn's
    /// module. GELU is the exact one either way ([`crate::fused::gelu`]).
    fn norm_act(&self, y: Tensor<B, 4>) -> Tensor<B, 4> {
        use crate::fused::Act;
        let act = match &self.act {
            Activation::Gelu(_) => Some(Act::Gelu),
            Activation::Relu(_) => Some(Act::Relu),
            _ => None,
        };
        match (&self.norm, act) {
            (DecoderNorm::Group(norm), Some(act)) => crate::fused::group_norm_act(y, norm, act),
            (norm, Some(Act::Gelu)) => crate::fused::gelu(norm.forward(y)),
            (norm, _) => self.act.forward(norm.forward(y)),
        }
    }
}

/// PyTorch's `Dropout2d`: zeroes whole channels (a `[batch, C, 1, 1]` Bernoulli mask) and scales
/// the kept ones by `1 / (1 - p)`. Burn's `Dropout` drops single elements, which barely
/// regularises spatially correlated maps. Identity unless autodiff is enabled or when `p == 0`.
pub fn channel_dropout2d<B: Backend>(x: Tensor<B, 4>, p: f64) -> Tensor<B, 4> {
    let [batch, channels, _, _] = x.dims();
    crate::rng::dropout_shaped(x, p, [batch, channels, 1, 1])
}
