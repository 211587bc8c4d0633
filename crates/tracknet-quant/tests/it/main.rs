//! Integration tests of `tracknet-quant` in one binary (one link of Burn instead of one per file): a
//! module per topic.

mod backends;
mod bnb_parity;
mod layer;
mod proptest_quant;
mod train_memory;
