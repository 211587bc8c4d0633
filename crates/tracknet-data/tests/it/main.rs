//! Integration tests of `tracknet-data` in one binary (one link of Burn instead of one per file): a
//! module per topic.

mod common;
mod fuzz_csv;
mod io_viz;
mod metrics;
mod scan;
mod synth;
mod targets_loader;
