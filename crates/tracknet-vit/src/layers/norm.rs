//! LayerNorm through the fused op.

use burn::module::Param;
use burn::prelude::*;

/// LayerNorm over the last axis with Burn's field names (`gamma`, `beta`, `epsilon`), so its
/// record and parameter paths are those of `burn::nn::LayerNorm` (HF `weight`/`bias` map the
/// same way), while the forward is [`crate::fused::layer_norm`]: one host kernel with its own
/// backward on NdArray, Burn's op elsewhere.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale `[d]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift `[d]`.
    pub beta: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: crate::fused::FusedBackend> LayerNorm<B> {
    /// `[..., d]` → `[..., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.beta {
            Some(beta) => crate::fused::layer_norm(x, self.gamma.val(), beta.val(), self.epsilon),
            None => {
                let d = self.gamma.dims()[0];
                let zeros = Tensor::zeros([d], &x.device());
                crate::fused::layer_norm(x, self.gamma.val(), zeros, self.epsilon)
            }
        }
    }
}
