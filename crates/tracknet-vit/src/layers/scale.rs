//! LayerScale: a learned per-channel scale on a residual branch (DINOv2, DINOv3).

use burn::module::Param;
use burn::prelude::*;

use crate::layers::params::{Init, ParamSource};

/// Per-channel residual-branch scale (`layer_scale1` / `layer_scale2` in transformers).
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    /// `[hidden]`.
    pub lambda1: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    /// `[batch, tokens, hidden]` scaled channel by channel.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x * self.lambda1.val().unsqueeze::<3>()
    }
}

/// `{key}.lambda1` of width `d`, `value` everywhere at random init.
pub(crate) fn layer_scale<B: Backend>(
    src: &mut impl ParamSource<B>,
    key: &str,
    d: usize,
    value: f64,
) -> LayerScale<B> {
    let lambda1 = src.tensor(&format!("{key}.lambda1"), [d], Init::Constant(value));
    LayerScale {
        lambda1: Param::from_tensor(lambda1),
    }
}
