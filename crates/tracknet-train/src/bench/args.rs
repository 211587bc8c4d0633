//! `tracknet-bench`'s command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tracknet-bench",
    about = "Memory / speed / quality measurements (one JSON object on stdout)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// One training configuration: storage, params, step memory and time, inference speed.
    Case(Box<CaseArgs>),
    /// Decode + preprocess throughput (1280x720 JPEG → 512x288) with 1 and 2 workers.
    Data(DataArgs),
    /// Short training per mode on synthetic clips; validation F1 / PCK / L2.
    Quality(QualityArgs),
    /// Table and goal checks of a file written by `cargo xtask bench`.
    Report(ReportArgs),
    /// The 4-bit matmul as dispatched (fused on CubeCL backends for few rows) against
    /// dequantize + matmul on the same backend, per row count.
    #[command(name = "q4-matmul")]
    Q4Matmul(Q4Args),
    /// The dense GEMM rate on the model's shapes (GFLOP/s, 1 and 2 threads): the roofline's
    /// denominator.
    Gemm(GemmArgs),
}

#[derive(Args, Debug, Clone)]
pub struct GemmArgs {
    /// Thread counts, comma separated.
    #[arg(long, default_value = "1,2")]
    pub threads: String,
    /// Timed runs per shape (median).
    #[arg(long, default_value_t = 15)]
    pub runs: usize,
    /// Measure OpenBLAS as the alternative to the GEMM the cases ran (`impl` "alternative …");
    /// the process must run with `TRACKNET_GEMM=openblas`.
    #[arg(long)]
    pub alternative: bool,
}

#[derive(Args, Debug, Clone)]
pub struct Q4Args {
    /// cpu | wgpu | cuda[:N]
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Row counts, comma separated.
    #[arg(long, default_value = "1,4,16,64")]
    pub rows: String,
    /// ViT-S/16's MLP up projection by default.
    #[arg(long, default_value_t = 1536)]
    pub out_features: usize,
    #[arg(long, default_value_t = 384)]
    pub in_features: usize,
    /// Timed runs per measurement (median).
    #[arg(long, default_value_t = 9)]
    pub runs: usize,
}

#[derive(Args, Debug, Clone)]
pub struct CaseArgs {
    /// full | lora | qlora-nf4 | qlora-nf4-dq | qlora-fp4
    #[arg(long)]
    pub mode: String,
    /// ndarray | cuda | wgpu
    #[arg(long, default_value = "ndarray")]
    pub backend: String,
    /// Recomputation per segment (`training.gradient_checkpointing`).
    #[arg(long)]
    pub grad_ckpt: bool,
    /// A tiny model that runs in seconds (explicit size flags still win).
    #[arg(long)]
    pub quick: bool,
    #[arg(long)]
    pub hidden: Option<usize>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub mlp: Option<usize>,
    #[arg(long)]
    pub registers: Option<usize>,
    /// Patch size (ViT-S/16: 16).
    #[arg(long)]
    pub patch: Option<usize>,
    /// Input width.
    #[arg(long)]
    pub width: Option<usize>,
    /// Input height.
    #[arg(long)]
    pub height: Option<usize>,
    /// Heatmap `WxH`.
    #[arg(long)]
    pub heatmap: Option<String>,
    /// Decoder channels, comma separated (the first must equal --hidden).
    #[arg(long)]
    pub decoder: Option<String>,
    #[arg(long)]
    pub rank: Option<usize>,
    #[arg(long)]
    pub alpha: Option<usize>,
    /// LoRA dropout (the original's model config uses 0.05).
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// float32 | bfloat16 | float16 (4-bit modes).
    #[arg(long, default_value = "float32")]
    pub compute_dtype: String,
    /// Mixed precision: `training.amp: true` with this `training.precision` (fp16 | bf16);
    /// f32 where the backend lacks the dtype, as training does (the JSON's `amp` says which).
    #[arg(long)]
    pub amp: Option<String>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// Measured training steps (at least one: 0 runs one, as the medians need a step).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Untimed steps first (optimizer state, caches).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Inference batch.
    #[arg(long, default_value_t = 1)]
    pub infer_batch: usize,
    /// Timed inference runs.
    #[arg(long)]
    pub infer_runs: Option<usize>,
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    pub device_index: usize,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    #[arg(long)]
    pub quick: bool,
    /// Frames generated (1280x720).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Repeats per worker count (median reported).
    #[arg(long)]
    pub repeats: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct QualityArgs {
    #[arg(long)]
    pub quick: bool,
    /// Fine-tuning epochs per mode (default: configs/quickstart.yaml's; quick 1).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Epochs of the shared full pre-training every mode starts from (default:
    /// configs/quickstart_pretrain.yaml's; quick 1).
    #[arg(long)]
    pub pretrain_epochs: Option<usize>,
    /// Modes, comma separated.
    #[arg(long, default_value = "full,lora,qlora-nf4,qlora-nf4-dq,qlora-fp4")]
    pub modes: String,
    /// Extra `key=value` overrides for every run.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// bench.json written by `cargo xtask bench`.
    pub file: PathBuf,
}
