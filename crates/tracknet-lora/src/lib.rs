//! PEFT-exact LoRA for Burn: a `LoraLinear` that wraps a dense or 4-bit base layer,
//! PEFT's module targeting rules, trainable-parameter bookkeeping, and PEFT adapter files
//! (`adapter_config.json` + `adapter_model.safetensors`).
//!
//! Kept apart as PEFT does: [`config`] (what to adapt), [`layer`] (the wrapped layer),
//! [`target`] (which modules), [`params`] (what trains), [`peft`] (files).

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod layer;
pub mod params;
pub mod peft;
pub mod rng;
pub mod target;

pub use config::{BiasMode, LoraInit, LoraSettings, TargetSpec};
pub use error::LoraError;
pub use layer::{BaseLinear, LoraLinear, LoraLinearConfig};
pub use params::{
    ParamMismatch, ParamReport, PathVisitor, load_params, param_report, set_trainable,
};
pub use target::{auto_targets, saved_module_match, select_targets};
