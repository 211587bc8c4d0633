//! Integration tests of `tracknet-vit` in one binary (one link of Burn instead of one per file): a
//! module per topic.

mod backends;
mod bnb_serialized;
mod common;
mod config_keys;
mod decoder;
mod export;
mod hf_loading;
mod hf_parity;
mod model_assembly;
mod numerics;
mod peft_namings;
mod peft_parity;
mod recompute_memory;
