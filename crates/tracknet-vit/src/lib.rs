//! Backbones (DINOv3, DINOv2, classic ViT) loaded from local Hugging Face snapshots, the upsampling
//! decoder and the heatmap head, assembled (with 4-bit quantization and LoRA) into
//! [`model::HeatmapModel`].

pub mod arch;
pub mod backbone;
pub mod decoder;
pub mod dinov2;
pub mod dinov3;
pub mod error;
pub mod export;
pub mod fastconv;
pub mod fused;
pub mod head;
pub mod hf;
pub mod layers;
pub mod model;
pub mod proj;
pub mod vit;

pub use fused::{FusedBackend, ModelBackend};
/// Random draws of the forward (shard streams); lives in tracknet-lora for LoRA dropout.
pub use tracknet_lora::rng;
