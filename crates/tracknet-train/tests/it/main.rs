//! End to end on CPU with a tiny model, in one test binary: QLoRA (NF4 + double quant + LoRA)
//! training, checkpoints, resume equality, a kill in the middle of a checkpoint, eval, predict,
//! export and the CLI.

mod backends;
mod checkpoints;
mod cli;
mod common;
mod training;
