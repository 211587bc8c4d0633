//! The layer type of every backbone projection (q/k/v/o, MLP).
//!
//! Every projection is a [`LoraLinear`]: a dense or 4-bit base with an optional LoRA adapter,
//! so quantizing and adapting a backbone never changes its type. Backbones build projections
//! only through these functions and call `.forward(x)` on them.

use burn::prelude::*;
use tracknet_lora::{LoraLinear, LoraLinearConfig};

/// A backbone projection. Input `[..., in]`, output `[..., out]`.
pub type Proj<B> = LoraLinear<B>;

/// Random init (as `torch.nn.Linear`), used when no pretrained snapshot is given.
pub fn proj_init<B: Backend>(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Proj<B> {
    LoraLinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .init(device)
}

/// Build from PyTorch tensors: `weight` is `[out, in]` (PyTorch layout), `bias` is `[out]`.
/// Burn stores `[in, out]`, so the weight is transposed here, once, at load time.
pub fn proj_from_torch<B: Backend>(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Proj<B> {
    LoraLinear::from_torch(weight, bias)
}
