//! bitsandbytes-exact 4-bit quantization (NF4 / FP4, blockwise absmax, double quantization)
//! and a frozen 4-bit linear layer for Burn whose backward re-dequantizes instead of storing
//! a full-precision weight.
//!
//! - [`codebook`], [`blockwise`]: the formats, on host slices, byte-identical to bitsandbytes.
//! - [`ops`]: `QuantBackend`, the 4-bit matmul with its own backward.
//! - [`linear`]: `QuantizedLinear`, holding codes on the device eight per 32-bit word.
//! - [`bnb`]: bitsandbytes' serialization of 4-bit layers (what transformers saves).
//! - [`autocast`]: mixed precision regions (`torch.autocast`) for the model's matrix ops.
//! - [`model`]: which layers of a model to quantize, and a measured memory report.

pub mod autocast;
pub mod blockwise;
pub mod bnb;
pub mod codebook;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
pub mod dense;
pub mod error;
pub mod gemm;
pub mod linear;
pub mod low_rank;
pub mod model;
pub mod ops;
#[cfg(test)]
mod test_util;

pub use blockwise::{
    Absmax, Quantized4, aten_sum_f32, dequantize_4bit, quantize_4bit, torch_mean_f32,
};
pub use bnb::{BnbConfig, BnbLayer, StoredTensor};
pub use codebook::QuantType;
pub use error::QuantError;
pub use linear::{CodeBooks, QuantSpec, QuantizedLinear, QuantizedLinearConfig, torch_linear};
pub use model::{KeepReason, LayerMemory, LinearInfo, MemoryReport, QuantPlan, segment_match};
pub use ops::{ComputeDtype, DeviceMemory, FUSED_MAX_ROWS, MemoryProbe, Q4Layout, QuantBackend};
