//! The measurements behind `cargo xtask bench` and docs/performance.md, as a library module
//! with a thin binary (`src/bin/tracknet-bench.rs`, which installs the counting allocator):
//!
//! - `case --mode <full|lora|qlora-nf4|qlora-nf4-dq|qlora-fp4> [--grad-ckpt] [sizes]`: one
//!   training configuration on the trainer's own step ([`case`]); the memory probe is
//!   [`memory`].
//! - `data`: decode + preprocess throughput ([`data`]).
//! - `quality`: the quick-start's stages per mode ([`quality`]).
//! - `report FILE`: tables, the memory-vs-batch chart and the goal checks ([`report`]).
//! - `q4-matmul [--backend B]`: the 4-bit matmul as dispatched vs dequantize + matmul ([`q4`]).
//! - `gemm`: the dense GEMM rate on the model's shapes, the roofline's denominator ([`gemm`],
//!   [`flops`], [`roofline`]).

pub mod args;
pub mod case;
pub mod config;
pub mod data;
pub mod flops;
pub mod gemm;
pub mod memory;
pub mod q4;
pub mod quality;
pub mod report;
pub mod roofline;

use serde_json::Value;

use crate::error::TrainError;
pub use args::{Cli, Cmd};

/// Seconds of `runs` (at least one) calls of `f` after one untimed call, fastest first.
pub(crate) fn timings(runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = std::time::Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// Runs one bench command; `Value::Null` when it printed its own output (`report`).
pub fn run(cli: Cli) -> Result<Value, TrainError> {
    match cli.command {
        Cmd::Case(a) => case::case(&a),
        Cmd::Data(a) => data::data(&a),
        Cmd::Quality(a) => quality::quality(&a),
        Cmd::Report(a) => report::report(&a.file).map(|()| Value::Null),
        Cmd::Q4Matmul(a) => q4::q4_matmul(&a),
        Cmd::Gemm(a) => gemm::gemm(&a),
    }
}
