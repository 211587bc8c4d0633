//! `tracknet-bench`: measurements behind `cargo xtask bench` and docs/performance.md.
//!
//! - `case --mode <full|lora|qlora-nf4|qlora-nf4-dq|qlora-fp4> [--grad-ckpt] [sizes]`: one
//!   training configuration; prints ONE JSON object (weight storage, trainable parameters, peak
//!   memory of a training step, step time, inference frames/s). Run each case in its own process
//!   (the xtask does) so that the peak memory is its own.
//! - `data`: decode + preprocess throughput of 1280×720 synthetic frames to 512×288.
//! - `quality`: the same short training for every mode; validation F1 / PCK / L2 side by side.
//! - `report FILE`: the table and the goal checks for a file written by `cargo xtask bench`.
//!
//! Memory: a counting global allocator gives the exact live-heap high-water mark (all NdArray
//! tensors live on the heap); the kernel's VmHWM (reset through `/proc/self/clear_refs`) gives the
//! peak resident set, allocator slack included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tracknet_config::RunConfig;
use tracknet_data::{Batch, DatasetIndex, LoaderOptions, SampleMeta, SynthOptions};
use tracknet_quant::QuantBackend;
use tracknet_train::eval::loss_from_config;
use tracknet_train::optim::{OptimKind, Optimizer, clip_grads, grad_norm};
use tracknet_train::trainer::step_grads;
use tracknet_train::{QUICKSTART_CONFIG, QUICKSTART_PRETRAIN_CONFIG, TrainOptions};
use tracknet_vit::model::HeatmapModel;

// ---------------------------------------------------------------------------------------------
// Counting allocator

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrink(n: usize) {
    LIVE.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap bytes now.
fn heap_live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Live heap high-water mark since the last [`reset_peaks`].
fn heap_peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only releases free memory back to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_trim() {}

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Give free memory back, reset the kernel's and the allocator's high-water marks; returns
/// whether the kernel's could be reset.
fn reset_peaks() -> bool {
    malloc_trim();
    let ok = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    PEAK.store(heap_live(), Ordering::Relaxed);
    ok
}

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Parser, Debug)]
#[command(
    name = "tracknet-bench",
    about = "Memory / speed / quality measurements (one JSON object on stdout)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One training configuration: storage, params, step memory and time, inference speed.
    Case(Box<CaseArgs>),
    /// Decode + preprocess throughput (1280x720 JPEG → 512x288) with 1 and 2 workers.
    Data(DataArgs),
    /// Short training per mode on synthetic clips; validation F1 / PCK / L2.
    Quality(QualityArgs),
    /// Table and goal checks of a file written by `cargo xtask bench`.
    Report(ReportArgs),
}

#[derive(Args, Debug, Clone)]
struct CaseArgs {
    /// full | lora | qlora-nf4 | qlora-nf4-dq | qlora-fp4
    #[arg(long)]
    mode: String,
    /// ndarray | cuda
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Gradient checkpointing (Burn's BalancedCheckpointing).
    #[arg(long)]
    grad_ckpt: bool,
    /// A tiny model that runs in seconds (explicit size flags still win).
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    mlp: Option<usize>,
    #[arg(long)]
    registers: Option<usize>,
    /// Patch size (ViT-S/16: 16).
    #[arg(long)]
    patch: Option<usize>,
    /// Input width.
    #[arg(long)]
    width: Option<usize>,
    /// Input height.
    #[arg(long)]
    height: Option<usize>,
    /// Heatmap `WxH`.
    #[arg(long)]
    heatmap: Option<String>,
    /// Decoder channels, comma separated (the first must equal --hidden).
    #[arg(long)]
    decoder: Option<String>,
    #[arg(long)]
    rank: Option<usize>,
    #[arg(long)]
    alpha: Option<usize>,
    /// LoRA dropout (the original's model config uses 0.05).
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// float32 | bfloat16 | float16 (4-bit modes).
    #[arg(long, default_value = "float32")]
    compute_dtype: String,
    #[arg(long)]
    batch: Option<usize>,
    /// Measured training steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Untimed steps first (optimizer state, caches).
    #[arg(long)]
    warmup: Option<usize>,
    /// Inference batch.
    #[arg(long, default_value_t = 1)]
    infer_batch: usize,
    /// Timed inference runs.
    #[arg(long)]
    infer_runs: Option<usize>,
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    device_index: usize,
}

#[derive(Args, Debug, Clone)]
struct DataArgs {
    #[arg(long)]
    quick: bool,
    /// Frames generated (1280x720).
    #[arg(long)]
    frames: Option<usize>,
    /// Repeats per worker count (median reported).
    #[arg(long)]
    repeats: Option<usize>,
}

#[derive(Args, Debug, Clone)]
struct QualityArgs {
    #[arg(long)]
    quick: bool,
    /// Fine-tuning epochs per mode (default 3; quick 1).
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs of the shared full pre-training every mode starts from (default 4; quick 1).
    #[arg(long)]
    pretrain_epochs: Option<usize>,
    /// Modes, comma separated.
    #[arg(long, default_value = "full,lora,qlora-nf4,qlora-nf4-dq,qlora-fp4")]
    modes: String,
    /// Extra `key=value` overrides for every run.
    #[arg(long = "set")]
    set: Vec<String>,
}

#[derive(Args, Debug, Clone)]
struct ReportArgs {
    /// bench.json written by `cargo xtask bench`.
    file: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    tracknet_train::log::init(false);
    let result = match cli.command {
        Cmd::Case(a) => case(&a),
        Cmd::Data(a) => data(&a),
        Cmd::Quality(a) => quality(&a),
        Cmd::Report(a) => report(&a.file).map(|()| Value::Null),
    };
    match result {
        Ok(Value::Null) => {}
        Ok(v) => println!("{v}"),
        Err(e) => {
            tracing::error!("tracknet-bench: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

const MODES: [&str; 5] = ["full", "lora", "qlora-nf4", "qlora-nf4-dq", "qlora-fp4"];

/// Config overrides selecting a mode (on top of the quickstart QLoRA config).
fn mode_overrides(mode: &str) -> Result<Vec<String>, String> {
    let v: &[&str] = match mode {
        "full" => &[
            "model.quantization.enabled=false",
            "model.lora.enabled=false",
            "model.backbone.freeze=false",
        ],
        "lora" => &[
            "model.quantization.enabled=false",
            "model.lora.enabled=true",
        ],
        "qlora-nf4" => &[
            "model.quantization.enabled=true",
            "model.quantization.quant_type=nf4",
            "model.quantization.use_double_quant=false",
            "model.lora.enabled=true",
        ],
        "qlora-nf4-dq" => &[
            "model.quantization.enabled=true",
            "model.quantization.quant_type=nf4",
            "model.quantization.use_double_quant=true",
            "model.lora.enabled=true",
        ],
        "qlora-fp4" => &[
            "model.quantization.enabled=true",
            "model.quantization.quant_type=fp4",
            "model.quantization.use_double_quant=false",
            "model.lora.enabled=true",
        ],
        other => {
            return Err(format!(
                "unknown mode `{other}`; expected one of {}",
                MODES.join(", ")
            ));
        }
    };
    Ok(v.iter().map(|s| s.to_string()).collect())
}

/// Resolved sizes of a case.
#[derive(Debug, Clone)]
struct Sizes {
    hidden: usize,
    layers: usize,
    heads: usize,
    mlp: usize,
    registers: usize,
    patch: usize,
    width: usize,
    height: usize,
    heatmap: (usize, usize),
    decoder: Vec<usize>,
    rank: usize,
    alpha: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    infer_runs: usize,
}

fn parse_wxh(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WxH, got `{s}`"))?;
    Ok((
        w.trim().parse().map_err(|e| format!("`{s}`: {e}"))?,
        h.trim().parse().map_err(|e| format!("`{s}`: {e}"))?,
    ))
}

fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|x| x.trim().parse().map_err(|e| format!("`{s}`: {e}")))
        .collect()
}

impl Sizes {
    fn resolve(a: &CaseArgs) -> Result<Self, String> {
        // Defaults: DINOv3 ViT-S/16 at the original's 512x288 input, 256x144 heatmap, LoRA
        // r16/alpha32, batch 2. Quick: a toy of the same shape family.
        let q = a.quick;
        let hidden = a.hidden.unwrap_or(if q { 64 } else { 384 });
        let decoder = match &a.decoder {
            Some(s) => parse_list(s)?,
            None if q => vec![hidden, 32, 16, 8],
            None => vec![hidden, 256, 128, 64],
        };
        Ok(Self {
            hidden,
            layers: a.layers.unwrap_or(if q { 2 } else { 12 }),
            heads: a.heads.unwrap_or(if q { 2 } else { 6 }),
            mlp: a.mlp.unwrap_or(if q { 256 } else { 1536 }),
            registers: a.registers.unwrap_or(4),
            patch: a.patch.unwrap_or(16),
            width: a.width.unwrap_or(if q { 128 } else { 512 }),
            height: a.height.unwrap_or(if q { 64 } else { 288 }),
            heatmap: match &a.heatmap {
                Some(s) => parse_wxh(s)?,
                None if q => (64, 32),
                None => (256, 144),
            },
            decoder,
            rank: a.rank.unwrap_or(if q { 4 } else { 16 }),
            alpha: a.alpha.unwrap_or(if q { 8 } else { 32 }),
            batch: a.batch.unwrap_or(2).max(1),
            steps: a.steps.unwrap_or(if q { 3 } else { 5 }).max(1),
            warmup: a.warmup.unwrap_or(1),
            infer_runs: a.infer_runs.unwrap_or(if q { 3 } else { 5 }).max(1),
        })
    }

    fn overrides(&self, a: &CaseArgs) -> Vec<String> {
        let list = |v: &[usize]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let ups = vec![2; self.decoder.len().saturating_sub(1)];
        vec![
            format!("model.backbone.hidden_size={}", self.hidden),
            format!("model.backbone.num_hidden_layers={}", self.layers),
            format!("model.backbone.num_attention_heads={}", self.heads),
            format!("model.backbone.intermediate_size={}", self.mlp),
            format!("model.backbone.num_register_tokens={}", self.registers),
            // Explicit: the base config (the quick-start's) has its own patch size.
            format!("model.backbone.patch_size={}", self.patch),
            format!("model.decoder.channels={}", list(&self.decoder)),
            format!("model.decoder.upsample={}", list(&ups)),
            format!("model.heatmap.size=[{},{}]", self.heatmap.0, self.heatmap.1),
            format!("model.lora.r={}", self.rank),
            format!("model.lora.lora_alpha={}", self.alpha),
            format!("model.lora.lora_dropout={}", a.lora_dropout),
            format!("model.quantization.compute_dtype={}", a.compute_dtype),
            format!("data.preprocess.resize=[{},{}]", self.width, self.height),
            format!("training.batch_size={}", self.batch),
        ]
    }

    fn to_json(&self) -> Value {
        json!({
            "hidden": self.hidden, "layers": self.layers, "heads": self.heads, "mlp": self.mlp,
            "registers": self.registers, "patch": self.patch, "width": self.width, "height": self.height,
            "heatmap": [self.heatmap.0, self.heatmap.1], "decoder": self.decoder,
            "rank": self.rank, "alpha": self.alpha, "batch": self.batch,
            "steps": self.steps, "warmup": self.warmup,
        })
    }
}

fn quickstart_with(overrides: &[String]) -> Result<RunConfig, String> {
    let base = RunConfig::from_yaml_str(QUICKSTART_CONFIG).map_err(|e| e.to_string())?;
    let cfg = base.with_overrides(overrides).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// `case`

fn case(a: &CaseArgs) -> Result<Value, String> {
    let sizes = Sizes::resolve(a)?;
    let mut overrides = mode_overrides(&a.mode)?;
    overrides.extend(sizes.overrides(a));
    let cfg = quickstart_with(&overrides)?;
    match (a.backend.as_str(), a.grad_ckpt) {
        ("ndarray" | "cpu", false) => {
            run_case::<Autodiff<NdArray>>(a, &sizes, &cfg, &Default::default())
        }
        ("ndarray" | "cpu", true) => run_case::<Autodiff<NdArray, BalancedCheckpointing>>(
            a,
            &sizes,
            &cfg,
            &Default::default(),
        ),
        ("cuda", ckpt) => cuda_case(a, &sizes, &cfg, ckpt),
        (other, _) => Err(format!("unknown backend `{other}`; expected ndarray|cuda")),
    }
}

#[cfg(feature = "cuda")]
fn cuda_case(a: &CaseArgs, sizes: &Sizes, cfg: &RunConfig, ckpt: bool) -> Result<Value, String> {
    use burn::backend::Cuda;
    let device = burn::backend::cuda::CudaDevice::new(a.device_index);
    if ckpt {
        run_case::<Autodiff<Cuda, BalancedCheckpointing>>(a, sizes, cfg, &device)
    } else {
        run_case::<Autodiff<Cuda>>(a, sizes, cfg, &device)
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_case(_: &CaseArgs, _: &Sizes, _: &RunConfig, _: bool) -> Result<Value, String> {
    Err("this build has no CUDA backend; build with `--features cuda`".into())
}

/// A small deterministic generator for the random inputs (no dependence on the backend's RNG).
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }
}

/// Random normalised images and a Gaussian ball target per sample, as the loader delivers them.
fn random_batch(s: &Sizes, n: usize, seed: u64) -> Batch {
    let mut rng = Lcg(seed);
    let (h, w) = (s.height, s.width);
    let (hw, hh) = s.heatmap;
    let images: Vec<f32> = (0..n * 3 * h * w)
        .map(|_| (rng.next_f32() - 0.5) * 4.0)
        .collect();
    let mut heatmaps = vec![0f32; n * hh * hw];
    let mut meta = Vec::with_capacity(n);
    for i in 0..n {
        let cx = rng.next_f32() * hw as f32;
        let cy = rng.next_f32() * hh as f32;
        for y in 0..hh {
            for x in 0..hw {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                heatmaps[i * hh * hw + y * hw + x] = (-d2 / (2.0 * 2.0 * 2.0)).exp();
            }
        }
        meta.push(SampleMeta {
            index: i,
            path: PathBuf::from(format!("random-{i}")),
            inputs: vec![PathBuf::from(format!("random-{i}"))],
            visibility: 1,
            xy_orig: Some((cx, cy)),
            xy_heatmap: Some((cx, cy)),
            orig_size: (w as u32, h as u32),
            flipped: false,
        });
    }
    Batch {
        images,
        channels: 3,
        heatmaps,
        masks: vec![1.0; n * hh * hw],
        batch_size: n,
        image_hw: (h, w),
        heatmap_hw: (hh, hw),
        meta,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn run_case<B>(
    a: &CaseArgs,
    s: &Sizes,
    cfg: &RunConfig,
    device: &B::Device,
) -> Result<Value, String>
where
    B: AutodiffBackend + QuantBackend,
    B::InnerBackend: QuantBackend,
{
    let label = format!(
        "{}{} on {}",
        a.mode,
        if a.grad_ckpt { " +grad-ckpt" } else { "" },
        a.backend
    );
    let rss_start = proc_status_bytes("VmRSS");
    B::seed(device, 42);
    let t0 = Instant::now();
    let (mut model, _build) =
        HeatmapModel::<B>::from_config_frames(&cfg.model, cfg.data.sequence.frames(), device)
            .map_err(|e| e.to_string())?;
    let build_seconds = t0.elapsed().as_secs_f64();
    let mem = model.memory_report();
    let params = model.param_report();
    let quantized = mem.quantized_params();
    tracing::info!(
        "{label}: built in {build_seconds:.2}s; {} backbone linear weights in {} bytes; {params}",
        mem.total_params(),
        mem.total_stored_bytes()
    );

    let loss_fn = loss_from_config(cfg);
    // The quick-start config's AdamW (weight decay 0.01), at a constant lr of 1e-4.
    let mut opt =
        Optimizer::<B::InnerBackend>::new(OptimKind::from_config(&cfg.training.optimizer));
    let batch = random_batch(s, s.batch, 7);
    let clip = Some(1.0);
    let mut losses = Vec::new();
    let mut step = |model: HeatmapModel<B>| -> (HeatmapModel<B>, f64, f64) {
        let t = Instant::now();
        let (loss, grads) = step_grads(&model, &loss_fn, &batch, s.batch, device);
        let gnorm = grad_norm::<B, _>(&model, &grads);
        let grads = clip_grads::<B, _>(&model, grads, gnorm, clip);
        let model = opt.step(model, grads, 1e-4);
        let _ = B::sync(device);
        (model, loss, t.elapsed().as_secs_f64())
    };
    let mut warmup_seconds = Vec::new();
    let mut seconds = Vec::new();
    // Peaks are reset after the warm-up steps, so they are the timed steps' own.
    let (mut clear_refs_ok, mut rss_before, mut heap_before) = (false, None, 0);
    for i in 0..s.warmup + s.steps {
        if i == s.warmup {
            clear_refs_ok = reset_peaks();
            rss_before = proc_status_bytes("VmRSS");
            heap_before = heap_live();
        }
        let (m, loss, secs) = step(model);
        model = m;
        losses.push(loss);
        if i < s.warmup {
            warmup_seconds.push(secs);
            tracing::info!("{label}: warmup step {secs:.3}s loss {loss:.5}");
        } else {
            seconds.push(secs);
            let n = i - s.warmup + 1;
            tracing::info!("{label}: step {n}/{} {secs:.3}s loss {loss:.5}", s.steps);
        }
    }
    let peak_rss = if clear_refs_ok {
        proc_status_bytes("VmHWM")
    } else {
        None
    };
    let peak_heap = heap_peak();

    // Inference: no autodiff graph, the inner backend.
    let infer = model.valid();
    let x = random_batch(s, a.infer_batch.max(1), 11);
    let images = || {
        Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(
                x.images.clone(),
                [x.batch_size, 3, x.image_hw.0, x.image_hw.1],
            ),
            device,
        )
    };
    let run_infer = || {
        let input = images();
        let t = Instant::now();
        let out = infer.forward(input);
        let _ = out.into_data();
        t.elapsed().as_secs_f64()
    };
    let _ = run_infer();
    let infer_seconds: Vec<f64> = (0..s.infer_runs).map(|_| run_infer()).collect();
    let infer_median = median(&infer_seconds);

    let f32_quantized = quantized * 4;
    let sub = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a as i64 - b as i64),
        _ => None,
    };
    Ok(json!({
        "kind": "case",
        "case": format!("{}{}", a.mode, if a.grad_ckpt { "+ckpt" } else { "" }),
        "mode": a.mode,
        "backend": a.backend,
        "grad_ckpt": a.grad_ckpt,
        "quick": a.quick,
        "compute_dtype": a.compute_dtype,
        "lora_dropout": if cfg.model.lora.enabled { Some(a.lora_dropout) } else { None },
        "sizes": s.to_json(),
        "build_seconds": build_seconds,
        "rss_at_start_bytes": rss_start,
        "backbone_linear_params": mem.total_params(),
        "backbone_linear_stored_bytes": mem.total_stored_bytes(),
        "quantized_params": quantized,
        "quantized_stored_bytes": mem.quantized_stored_bytes(),
        "quantized_f32_bytes": f32_quantized,
        "code_book_bytes": mem.shared_bytes,
        "bits_per_weight": if quantized > 0 { mem.quantized_bits_per_param() } else { 32.0 },
        "trainable_params": params.trainable,
        "total_params": params.all,
        "trainable_percent": params.percent(),
        "resident_before_step_bytes": rss_before,
        "peak_rss_bytes": peak_rss,
        "step_rss_increase_bytes": sub(peak_rss, rss_before),
        "heap_before_step_bytes": heap_before,
        "peak_heap_bytes": peak_heap,
        "step_heap_increase_bytes": peak_heap as i64 - heap_before as i64,
        "memory_note": if a.backend == "cuda" { "host memory only; GPU memory not measured" } else { "NdArray: all tensors on the heap" },
        "warmup_seconds": warmup_seconds,
        "step_seconds": seconds,
        "step_seconds_median": median(&seconds),
        "step_seconds_min": min(&seconds),
        "losses": losses,
        "inference_batch": x.batch_size,
        "inference_seconds": infer_seconds,
        "inference_seconds_median": infer_median,
        "inference_fps": x.batch_size as f64 / infer_median,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }))
}

// ---------------------------------------------------------------------------------------------
// `data`

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "tracknet-bench-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data(a: &DataArgs) -> Result<Value, String> {
    let frames = a.frames.unwrap_or(if a.quick { 16 } else { 96 }).max(1);
    let repeats = a.repeats.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let clips = frames.div_ceil(32).max(1);
    let per_clip = frames.div_ceil(clips);
    let tmp = TempDir::new("data")?;
    let root = tmp.0.join("synthetic");
    let t = Instant::now();
    let summary = tracknet_data::generate(
        &root,
        &SynthOptions {
            games: 1,
            clips,
            frames: per_clip,
            size: (1280, 720),
            seed: 3,
            overwrite: false,
            jpeg_quality: 90,
            ball_scale: 1.0,
            distractors: 2,
        },
    )
    .map_err(|e| e.to_string())?;
    let gen_seconds = t.elapsed().as_secs_f64();
    tracing::info!(
        "data: generated {} frames at 1280x720 in {gen_seconds:.1}s",
        summary.frames
    );
    let (index, _) =
        DatasetIndex::scan(&root, &["game1".to_string()], false).map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for workers in [1usize, 2] {
        let opts = LoaderOptions {
            batch_size: 8,
            shuffle: false,
            num_workers: workers,
            prefetch: 2 * workers,
            resize: [512, 288],
            normalize: true,
            flip_prob: 0.5,
            heatmap_size: [256, 144],
            sigma: 2.0,
            ..LoaderOptions::default()
        };
        let mut fps = Vec::new();
        let mut n = 0;
        for _ in 0..repeats {
            let r = tracknet_data::measure_throughput(&index, &opts, usize::MAX)
                .map_err(|e| e.to_string())?;
            n = r.frames;
            fps.push(r.frames_per_sec);
        }
        tracing::info!(
            "data: {workers} worker(s): {:.1} frames/s (median)",
            median(&fps)
        );
        rows.push(json!({
            "workers": workers,
            "frames": n,
            "frames_per_sec": fps,
            "frames_per_sec_median": median(&fps),
        }));
    }
    Ok(json!({
        "kind": "data",
        "case": "data",
        "quick": a.quick,
        "source_size": [1280, 720],
        "target_size": [512, 288],
        "heatmap_size": [256, 144],
        "frames": summary.frames,
        "generate_seconds": gen_seconds,
        "workers": rows,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }))
}

// ---------------------------------------------------------------------------------------------
// `quality`

fn quality(a: &QualityArgs) -> Result<Value, String> {
    // The quick-start's two domains: one full pre-training (stage 1) shared by every mode,
    // then each mode fine-tunes from its exported backbone, decoder and head on the second
    // domain with the same seed, data and steps — what 4-bit costs against f32 LoRA and full
    // fine-tuning from the same start.
    let tmp = TempDir::new("quality")?;
    let epochs = a.epochs.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let pre_epochs = a
        .pretrain_epochs
        .unwrap_or(if a.quick { 1 } else { 4 })
        .max(1);
    let mut common = vec!["training.preview_frames=0".to_string()];
    if a.quick {
        common.extend([
            "data.synthetic.clips=1".to_string(),
            "data.synthetic.frames=16".to_string(),
        ]);
    }
    common.extend(a.set.iter().cloned());

    let mut pre_o = common.clone();
    pre_o.extend([
        format!("data.root={}", tmp.0.join("data-pre").display()),
        format!("training.epochs={pre_epochs}"),
    ]);
    let pre = RunConfig::from_yaml_str(QUICKSTART_PRETRAIN_CONFIG)
        .and_then(|c| c.with_overrides(&pre_o))
        .map_err(|e| e.to_string())?;
    let pre_dir = tmp.0.join("run-pretrain");
    tracing::info!("quality: shared full pre-training for {pre_epochs} epoch(s)");
    let t = Instant::now();
    let pre_summary = tracknet_train::train::<Autodiff<NdArray>>(
        &pre,
        &TrainOptions {
            run_dir: pre_dir.clone(),
            resume: false,
            stop_after_epoch: None,
            quiet: true,
            init_from: None,
        },
        &Default::default(),
    )
    .map_err(|e| format!("pre-training: {e}"))?;
    let pre_secs = t.elapsed().as_secs_f64();
    let ckpt =
        tracknet_train::predict::checkpoint_dir(&pre_dir, "best").map_err(|e| e.to_string())?;
    let snapshot = pre_dir.join("backbone");
    tracknet_train::predict::export_backbone(&pre, &ckpt, &snapshot).map_err(|e| e.to_string())?;

    common.extend([
        format!("data.root={}", tmp.0.join("data-fine").display()),
        format!("training.epochs={epochs}"),
        format!("model.backbone.weights={}", snapshot.display()),
    ]);
    let mut rows = Vec::new();
    for mode in a.modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let mut o = mode_overrides(mode)?;
        o.extend(common.iter().cloned());
        let cfg = quickstart_with(&o)?;
        let run_dir = tmp.0.join(format!("run-{mode}"));
        let opts = TrainOptions {
            run_dir: run_dir.clone(),
            resume: false,
            stop_after_epoch: None,
            quiet: true,
            init_from: Some(ckpt.clone()),
        };
        tracing::info!("quality: fine-tuning {mode} for {epochs} epoch(s)");
        let t = Instant::now();
        let summary = tracknet_train::train::<Autodiff<NdArray>>(&cfg, &opts, &Default::default())
            .map_err(|e| format!("{mode}: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        let last = summary.history.last().cloned().unwrap_or_default();
        let get = |k: &str| last.get(k).copied();
        let base = |k: &str| summary.baseline.as_ref().and_then(|b| b.get(k).copied());
        tracing::info!(
            "quality: {mode}: F1 {:?} PCK {:?} L2 {:?} in {secs:.0}s",
            get("f1"),
            get("pck"),
            get("l2")
        );
        rows.push(json!({
            "mode": mode,
            "epochs": epochs,
            "seconds": secs,
            "f1": get("f1"), "pck": get("pck"), "l2": get("l2"),
            "precision": get("precision"), "recall": get("recall"),
            "val_loss": get("val_loss"), "train_loss": get("train_loss"),
            "start_f1": base("f1"), "start_pck": base("pck"), "start_l2": base("l2"),
        }));
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let pre_last = pre_summary.history.last().cloned().unwrap_or_default();
    Ok(json!({
        "kind": "quality",
        "case": "quality",
        "quick": a.quick,
        "config": "configs/quickstart_pretrain.yaml, then configs/quickstart.yaml per mode",
        "pretrain": {
            "epochs": pre_epochs, "seconds": pre_secs,
            "f1": pre_last.get("f1"), "pck": pre_last.get("pck"), "l2": pre_last.get("l2"),
        },
        "overrides": common.iter().filter(|o| !o.starts_with("data.root=") && !o.starts_with("model.backbone.weights=")).collect::<Vec<_>>(),
        "rows": rows,
    }))
}

// ---------------------------------------------------------------------------------------------
// `report`

fn mb(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |b| format!("{:.1}", b / 1e6))
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn find<'a>(cases: &'a [Value], backend: &str, case: &str) -> Option<&'a Value> {
    cases.iter().find(|c| {
        c["kind"] == "case" && c["backend"] == backend && c["case"] == case && c["error"].is_null()
    })
}

fn report(file: &Path) -> Result<(), String> {
    let raw = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let doc: Value = serde_json::from_str(&raw).map_err(|e| format!("{}: {e}", file.display()))?;
    let empty = Vec::new();
    let cases = doc["cases"].as_array().unwrap_or(&empty);
    let m = &doc["machine"];
    println!(
        "machine: {} ({} threads), {}, commit {}",
        m["cpu"].as_str().unwrap_or("?"),
        m["nproc"],
        m["date"].as_str().unwrap_or("?"),
        m["commit"].as_str().unwrap_or("?")
    );
    println!();
    println!(
        "| case | backend | batch | bits/w | linear MB | trainable | peak RSS MB | RSS before MB | peak heap MB | heap before MB | step median s | step min s | infer fps |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in cases.iter().filter(|c| c["kind"] == "case") {
        if !c["error"].is_null() {
            println!(
                "| {} | {} | failed: {} |",
                c["case"].as_str().unwrap_or("?"),
                c["backend"].as_str().unwrap_or("?"),
                c["error"].as_str().unwrap_or("?")
            );
            continue;
        }
        println!(
            "| {} | {} | {} | {} | {} | {} ({}%) | {} | {} | {} | {} | {} | {} | {} |",
            c["case"].as_str().unwrap_or("?"),
            c["backend"].as_str().unwrap_or("?"),
            c["sizes"]["batch"],
            num(&c["bits_per_weight"], 3),
            mb(&c["backbone_linear_stored_bytes"]),
            c["trainable_params"],
            num(&c["trainable_percent"], 2),
            mb(&c["peak_rss_bytes"]),
            mb(&c["resident_before_step_bytes"]),
            mb(&c["peak_heap_bytes"]),
            mb(&c["heap_before_step_bytes"]),
            num(&c["step_seconds_median"], 3),
            num(&c["step_seconds_min"], 3),
            num(&c["inference_fps"], 2),
        );
    }
    memory_vs_batch(cases, &file.with_file_name("memory-vs-batch.png"))?;
    for c in cases.iter().filter(|c| c["kind"] == "data") {
        println!();
        println!(
            "data: {} frames 1280x720 JPEG → 512x288 (+ 256x144 heatmap)",
            c["frames"]
        );
        for w in c["workers"].as_array().unwrap_or(&empty) {
            println!(
                "  {} worker(s): {} frames/s (median)",
                w["workers"],
                num(&w["frames_per_sec_median"], 1)
            );
        }
    }
    for c in cases.iter().filter(|c| c["kind"] == "quality") {
        println!();
        println!("quality ({}):", c["overrides"]);
        let p = &c["pretrain"];
        println!(
            "shared pre-training: {} epoch(s), {} s: F1 {} PCK {} L2 {} (its own domain)",
            p["epochs"],
            num(&p["seconds"], 0),
            num(&p["f1"], 3),
            num(&p["pck"], 3),
            num(&p["l2"], 2)
        );
        println!(
            "| mode | F1 | PCK | L2 px | val loss | start F1 | start PCK | start L2 px | seconds |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in c["rows"].as_array().unwrap_or(&empty) {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r["mode"].as_str().unwrap_or("?"),
                num(&r["f1"], 3),
                num(&r["pck"], 3),
                num(&r["l2"], 2),
                num(&r["val_loss"], 4),
                num(&r["start_f1"], 3),
                num(&r["start_pck"], 3),
                num(&r["start_l2"], 2),
                num(&r["seconds"], 0)
            );
        }
    }
    for c in cases.iter().filter(|c| !c["error"].is_null()) {
        println!(
            "failed: {} ({}): {}",
            c["case"].as_str().unwrap_or("?"),
            c["backend"].as_str().unwrap_or("?"),
            c["error"].as_str().unwrap_or("?")
        );
    }

    println!();
    println!("goals:");
    let backends = ["ndarray", "cuda"];
    for backend in backends {
        let pairs = [("qlora-nf4-dq", "lora"), ("qlora-nf4-dq+ckpt", "lora+ckpt")];
        if find(cases, backend, "lora").is_none() {
            continue;
        }
        if let Some(q) = find(cases, backend, "qlora-nf4-dq") {
            let bits = q["bits_per_weight"].as_f64().unwrap_or(f64::NAN);
            println!(
                "  [{}] {backend}: NF4+dq bits/weight {bits:.3} <= 4.13",
                verdict(bits <= 4.13)
            );
        }
        for (qc, lc) in pairs {
            let (Some(q), Some(l)) = (find(cases, backend, qc), find(cases, backend, lc)) else {
                continue;
            };
            let f32_bytes = q["quantized_f32_bytes"].as_f64().unwrap_or(f64::NAN);
            let need = 0.8 * f32_bytes;
            for (what, key) in [
                ("peak RSS", "peak_rss_bytes"),
                ("peak heap", "peak_heap_bytes"),
            ] {
                let (Some(qb), Some(lb)) = (q[key].as_f64(), l[key].as_f64()) else {
                    println!("  [n/a ] {backend}: {qc} vs {lc}: {what} not measured");
                    continue;
                };
                let saved = lb - qb;
                println!(
                    "  [{}] {backend}: {qc} {what} {:.1} MB vs {lc} {:.1} MB: saves {:.1} MB = {:.0}% of the {:.1} MB f32 quantized weights (goal >= 80%)",
                    verdict(saved >= need),
                    qb / 1e6,
                    lb / 1e6,
                    saved / 1e6,
                    100.0 * saved / f32_bytes,
                    f32_bytes / 1e6
                );
            }
            let (qt, lt) = (
                q["step_seconds_median"].as_f64().unwrap_or(f64::NAN),
                l["step_seconds_median"].as_f64().unwrap_or(f64::NAN),
            );
            println!(
                "  [{}] {backend}: {qc} step {qt:.3}s vs {lc} {lt:.3}s = {:.2}x (goal <= 1.15x)",
                verdict(qt <= 1.15 * lt),
                qt / lt
            );
        }
    }
    Ok(())
}

/// Least-squares line `y = a + b·x` through `points` (at least two distinct x).
fn line_fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x / n, sy + y / n));
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    (my - slope * mx, slope)
}

/// The memory-vs-batch table and chart: for every case measured at two or more batch sizes
/// (`cargo xtask bench --batches 1,2,4,8`), peak RSS per batch, the per-image slope of a
/// least-squares line, and the largest batch that line puts under 16 and 24 GiB. The chart is
/// written to `png` (one line per case).
fn memory_vs_batch(cases: &[Value], png: &Path) -> Result<(), String> {
    use std::collections::BTreeMap;
    use tracknet_data::viz::{Panel, Series, save_panels_png};
    let mut groups: BTreeMap<(String, String), BTreeMap<u64, f64>> = BTreeMap::new();
    for c in cases
        .iter()
        .filter(|c| c["kind"] == "case" && c["error"].is_null())
    {
        let (Some(batch), Some(peak)) =
            (c["sizes"]["batch"].as_u64(), c["peak_rss_bytes"].as_f64())
        else {
            continue;
        };
        let key = (
            c["backend"].as_str().unwrap_or("?").to_string(),
            c["case"].as_str().unwrap_or("?").to_string(),
        );
        // The first measurement of a (case, batch) wins, as in the main table.
        groups.entry(key).or_default().entry(batch).or_insert(peak);
    }
    groups.retain(|_, by_batch| by_batch.len() >= 2);
    if groups.is_empty() {
        return Ok(());
    }
    let batches: std::collections::BTreeSet<u64> =
        groups.values().flat_map(|g| g.keys().copied()).collect();
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    println!();
    println!("memory vs batch (peak RSS of a training step, MB; line fitted by least squares):");
    let head: Vec<String> = batches.iter().map(|b| format!("batch {b}")).collect();
    println!(
        "| case | backend | {} | MB per image | MB at batch 0 | max batch in 16 GiB | max batch in 24 GiB |",
        head.join(" | ")
    );
    println!(
        "|---|---|{}---:|---:|---:|---:|",
        "---:|".repeat(batches.len())
    );
    let mut panel = Panel::new(
        "Peak memory of one training step",
        "batch (images)",
        "peak RSS (MB)",
    )
    .integer_x();
    let several_backends = groups
        .keys()
        .map(|(b, _)| b)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    for ((backend, case), by_batch) in &groups {
        let points: Vec<(f64, f64)> = by_batch.iter().map(|(b, m)| (*b as f64, *m)).collect();
        let (base, slope) = line_fit(&points);
        let fits = |limit: f64| {
            if slope > 0.0 {
                (((limit - base) / slope).floor().max(0.0) as u64).to_string()
            } else {
                "-".to_string()
            }
        };
        let cells: Vec<String> = batches
            .iter()
            .map(|b| {
                by_batch
                    .get(b)
                    .map_or("-".into(), |m| format!("{:.1}", m / 1e6))
            })
            .collect();
        println!(
            "| {case} | {backend} | {} | {:.1} | {:.1} | {} | {} |",
            cells.join(" | "),
            slope / 1e6,
            base / 1e6,
            fits(16.0 * GIB),
            fits(24.0 * GIB)
        );
        let name = if several_backends {
            format!("{case} ({backend}), {:.0} MB/image", slope / 1e6)
        } else {
            format!("{case}, {:.0} MB/image", slope / 1e6)
        };
        let pts = points
            .iter()
            .map(|(b, m)| (*b as f32, (*m / 1e6) as f32))
            .collect();
        panel = panel.with(Series::new(name, pts));
    }
    save_panels_png(png, "", (900, 520), &[panel]).map_err(|e| e.to_string())?;
    println!("chart: {}", png.display());
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}
