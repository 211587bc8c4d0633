//! transformers' `hidden_act` activations.

use burn::prelude::*;
use burn::tensor::activation;

/// Activation named by `hidden_act` in a transformers config (`ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: tanh approximation.
    GeluTanh,
    /// `silu` / `swish`.
    Silu,
    /// `relu`.
    Relu,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl HiddenAct {
    /// Parse a transformers activation name; `None` when unsupported.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => HiddenAct::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => HiddenAct::GeluTanh,
            "silu" | "swish" => HiddenAct::Silu,
            "relu" => HiddenAct::Relu,
            "quick_gelu" => HiddenAct::QuickGelu,
            _ => return None,
        })
    }

    /// Exact GELU goes through [`crate::fused::gelu`] (PyTorch's derivative).
    pub fn forward<const D: usize, B: crate::fused::FusedBackend>(
        &self,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self {
            HiddenAct::Gelu => crate::fused::gelu(x),
            HiddenAct::GeluTanh => activation::gelu_approximate(x),
            HiddenAct::Silu => activation::silu(x),
            HiddenAct::Relu => activation::relu(x),
            HiddenAct::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
        }
    }
}
