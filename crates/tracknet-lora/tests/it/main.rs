//! Integration tests of `tracknet-lora` in one binary (one link of Burn instead of one per file): a
//! module per topic.

mod backends;
mod lora_layer;
mod peft_files;
