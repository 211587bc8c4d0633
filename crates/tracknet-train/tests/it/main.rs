//! End to end on CPU with a tiny model, in one test binary: QLoRA (NF4 + double quant + LoRA)
//! training, checkpoints, resume equality, a kill in the middle of a checkpoint, eval, predict,
//! export, the CLI, and stops that lose nothing (signals, used run folders, warnings).

mod backends;
mod bench;
mod checkpoints;
mod cli;
mod common;
mod dinov2;
mod stops;
mod training;
