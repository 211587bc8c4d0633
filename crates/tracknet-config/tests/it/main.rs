//! Integration tests of `tracknet-config` in one binary (one link of Burn instead of one per file): a
//! module per topic.

mod common;
mod errors;
mod overrides;
mod proptests;
mod quantization;
mod seed_configs;
