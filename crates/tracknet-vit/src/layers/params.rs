//! One construction path for random and pretrained backbones.
//!
//! Model builders ask a [`ParamSource`] for every tensor by its canonical Hugging Face name, so the
//! random initialiser and the checkpoint loader share the exact same model-building code.

use super::LayerNorm;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

use tracknet_lora::LoraLinear;
use tracknet_quant::{CodeBooks, ComputeDtype, QuantBackend, Quantized4, QuantizedLinear};

use crate::proj::{Proj, proj_from_torch};

/// How a tensor is initialised when no checkpoint provides it (transformers' `_init_weights`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// Normal(0, std) truncated to [-2, 2] (absolute bounds, as `nn.init.trunc_normal_`).
    TruncNormal(f64),
    Zeros,
    Ones,
    Constant(f64),
}

/// Hands out the tensors of a model, by canonical (transformers 5) name.
pub(crate) trait ParamSource<B: Backend> {
    fn device(&self) -> B::Device;
    /// The tensor `key` of shape `shape` (PyTorch layout).
    fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D], init: Init) -> Tensor<B, D>;
    /// The 4-bit layer stored for the weight `key` (`[out, in]` = `shape`) with the shared code
    /// books, when the source holds it quantized (a bitsandbytes snapshot).
    fn quantized(&mut self, _key: &str, _shape: [usize; 2]) -> Option<(Quantized4, CodeBooks<B>)> {
        None
    }
}

/// Random initialisation as transformers does it for a fresh model.
pub(crate) struct RandomInit<B: Backend> {
    pub device: B::Device,
}

impl<B: Backend> ParamSource<B> for RandomInit<B> {
    fn device(&self) -> B::Device {
        self.device.clone()
    }

    fn tensor<const D: usize>(
        &mut self,
        _key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Tensor<B, D> {
        match init {
            Init::TruncNormal(std) => {
                Tensor::random(shape, Distribution::Normal(0.0, std), &self.device).clamp(-2.0, 2.0)
            }
            Init::Zeros => Tensor::zeros(shape, &self.device),
            Init::Ones => Tensor::ones(shape, &self.device),
            Init::Constant(v) => Tensor::full(shape, v, &self.device),
        }
    }
}

/// A projection `key` (`key.weight` `[d_out, d_in]`, optional `key.bias` `[d_out]`). A weight
/// the source holds in 4 bits becomes a 4-bit base as stored (no dequantization).
pub(crate) fn linear<B: QuantBackend>(
    src: &mut impl ParamSource<B>,
    key: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
) -> Proj<B> {
    if let Some((q, books)) = src.quantized(&format!("{key}.weight"), [d_out, d_in]) {
        let b = bias.then(|| src.tensor(&format!("{key}.bias"), [d_out], Init::Zeros));
        let device = src.device();
        // The shape was checked by the source, so this cannot fail.
        if let Ok(layer) =
            QuantizedLinear::from_quantized(&q, d_in, d_out, b, ComputeDtype::F32, &books, &device)
        {
            return LoraLinear::quantized(layer);
        }
    }
    let weight = src.tensor(
        &format!("{key}.weight"),
        [d_out, d_in],
        Init::TruncNormal(std),
    );
    let bias = bias.then(|| src.tensor(&format!("{key}.bias"), [d_out], Init::Zeros));
    proj_from_torch(weight, bias)
}

/// A LayerNorm `key` (`key.weight`, `key.bias`, both `[d]`).
pub(crate) fn layer_norm<B: Backend>(
    src: &mut impl ParamSource<B>,
    key: &str,
    d: usize,
    eps: f64,
) -> LayerNorm<B> {
    LayerNorm {
        gamma: Param::from_tensor(src.tensor(&format!("{key}.weight"), [d], Init::Ones)),
        beta: Some(Param::from_tensor(src.tensor(
            &format!("{key}.bias"),
            [d],
            Init::Zeros,
        ))),
        epsilon: eps,
    }
}

/// The non-overlapping patch convolution `key`: weight `[d_out, c_in, p, p]`, bias `[d_out]`.
pub(crate) fn patch_conv<B: Backend>(
    src: &mut impl ParamSource<B>,
    key: &str,
    c_in: usize,
    d_out: usize,
    patch: usize,
    std: f64,
) -> Conv2d<B> {
    let mut conv = Conv2dConfig::new([c_in, d_out], [patch, patch])
        .with_stride([patch, patch])
        .init(&src.device());
    conv.weight = Param::from_tensor(src.tensor(
        &format!("{key}.weight"),
        [d_out, c_in, patch, patch],
        Init::TruncNormal(std),
    ));
    conv.bias = Some(Param::from_tensor(src.tensor(
        &format!("{key}.bias"),
        [d_out],
        Init::Zeros,
    )));
    conv
}

/// Multi-frame input for a patch convolution: its `[d_out, c, p, p]` kernel repeated over
/// `frames` stacked frames and divided by `frames` (`[d_out, c·frames, p, p]`), so a still
/// sequence embeds as the single frame did. The bias is unchanged; the parameter keeps its id.
pub(crate) fn inflate_conv<B: Backend>(mut conv: Conv2d<B>, frames: usize) -> Conv2d<B> {
    if frames > 1 {
        conv.weight = conv.weight.map(|w| {
            // Through host data: the result is a fresh leaf (a tracked op's output cannot
            // become a parameter). Once per model build.
            let (trains, device) = (w.is_require_grad(), w.device());
            let copies = vec![w.detach().div_scalar(frames as f64); frames];
            Tensor::from_data(Tensor::cat(copies, 1).into_data(), &device).set_require_grad(trains)
        });
    }
    conv
}
