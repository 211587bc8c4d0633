//! `case`: the memory and speed of one training configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde_json::{Value, json};
use tracknet_config::{DeviceSpec, RunConfig};
use tracknet_data::{Batch, SampleMeta};
use tracknet_vit::ModelBackend;
use tracknet_vit::model::HeatmapModel;

use super::args::CaseArgs;
use super::config::{Sizes, mode_overrides, quickstart_with};
use super::memory::{
    DevicePeaks, DeviceSampler, cpu_seconds, heap_live, heap_peak, proc_status_bytes, reset_peaks,
};
use crate::backend::{AutodiffJob, with_autodiff};
use crate::error::TrainError;
use crate::eval::loss_from_config;
use crate::optim::{OptimKind, Optimizer};
use crate::trainer::{StepPlan, parallel_shards, train_step};

/// `case`: one training configuration; ONE JSON object (weight storage, trainable
/// parameters, peak memory of a training step, step time, inference frames/s). Run each case
/// in its own process (the xtask does) so that the peak memory is its own.
pub fn case(a: &CaseArgs) -> Result<Value, TrainError> {
    // `TRACKNET_HEAP_TRACE=1`: print what is alive at the timed steps' heap peak (slow).
    if std::env::var_os("TRACKNET_HEAP_TRACE").is_some() {
        super::memory::trace::enable();
    }
    let sizes = Sizes::resolve(a)?;
    let mut overrides = mode_overrides(&a.mode)?;
    overrides.extend(sizes.overrides(a));
    let cfg = quickstart_with(&overrides)?;
    let spec = match a.backend.as_str() {
        "ndarray" | "cpu" => DeviceSpec::Cpu,
        "cuda" => DeviceSpec::Cuda(a.device_index),
        "wgpu" => DeviceSpec::Wgpu,
        other => {
            return Err(TrainError::InvalidOption {
                option: "--backend",
                message: format!("unknown backend `{other}`; expected ndarray|cuda|wgpu"),
            });
        }
    };
    let job = Case {
        a,
        sizes: &sizes,
        cfg: &cfg,
    };
    with_autodiff(spec, job)
}

struct Case<'a> {
    a: &'a CaseArgs,
    sizes: &'a Sizes,
    cfg: &'a RunConfig,
}

impl AutodiffJob for Case<'_> {
    type Output = Value;
    fn run<B>(self, device: &B::Device) -> Result<Value, TrainError>
    where
        B: AutodiffBackend + ModelBackend,
        B::InnerBackend: ModelBackend,
    {
        run_case::<B>(self.a, self.sizes, self.cfg, device)
    }
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

pub(crate) fn median(v: &[f64]) -> f64 {
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
) -> Result<Value, TrainError>
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
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
        HeatmapModel::<B>::from_config_frames(&cfg.model, cfg.data.sequence.frames(), device)?;
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
    // The trainer's split: `training.parallel_shards` of the quick-start config (2), as this
    // model and backend allow it.
    let (shards, note) = parallel_shards(cfg.training.parallel_shards, &model);
    if let Some(note) = note {
        tracing::info!("{label}: {note}");
    }
    // `training.amp` as the trainer takes it on this backend, with fp16's loss scaler.
    let (dtype, note) = crate::amp::step_dtype::<B>(&cfg.training, device);
    if let Some(note) = note {
        tracing::info!("{label}: {note}");
    }
    let mut scaler = crate::amp::LossScaler::for_dtype(dtype);
    let mut losses = Vec::new();
    // The trainer's own step: forward + backward, global-norm clipping, AdamW; with fp16 an
    // overflow halves the scale and skips the update, as the training loop does.
    let plan = StepPlan {
        micro: s.batch,
        recompute: a.grad_ckpt,
        shards,
        precision: crate::amp::StepPrecision {
            dtype,
            loss_scale: 1.0,
        },
    };
    let mut step = |model: HeatmapModel<B>| -> (HeatmapModel<B>, f64, f64, bool) {
        let t = Instant::now();
        let (model, loss, _, taken) = train_step(
            model,
            &mut opt,
            &loss_fn,
            &batch,
            plan,
            scaler.as_mut(),
            clip,
            1e-4,
            device,
        );
        let _ = B::sync(device);
        (model, loss, t.elapsed().as_secs_f64(), taken)
    };
    let mut warmup_seconds = Vec::new();
    // The warm-up counts taken steps only, so that fp16's scaler has found its scale (from
    // 65536, a few halvings) before the timed steps; at most 32 skips.
    let (mut warm, mut skips) = (0, 0);
    while warm < s.warmup && skips <= 32 {
        let (m, loss, secs, taken) = step(model);
        model = m;
        losses.push(loss);
        warmup_seconds.push(secs);
        if taken {
            warm += 1;
        } else {
            skips += 1;
        }
        tracing::info!(
            "{label}: warmup step {secs:.3}s loss {loss:.5}{}",
            if taken {
                ""
            } else {
                " (overflow: skipped, loss scale halved)"
            }
        );
    }
    // Peaks are reset after the warm-up steps, so they are the timed steps' own.
    let clear_refs_ok = reset_peaks();
    let rss_before = proc_status_bytes("VmRSS");
    let heap_before = heap_live();
    let cpu_before = cpu_seconds();
    let mut seconds = Vec::new();
    let mut skipped = 0;
    for n in 1..=s.steps {
        let (m, loss, secs, taken) = step(model);
        model = m;
        losses.push(loss);
        seconds.push(secs);
        skipped += usize::from(!taken);
        tracing::info!("{label}: step {n}/{} {secs:.3}s loss {loss:.5}", s.steps);
    }
    let peak_rss = if clear_refs_ok {
        proc_status_bytes("VmHWM")
    } else {
        None
    };
    let peak_heap = heap_peak();
    if std::env::var_os("TRACKNET_HEAP_TRACE").is_some() {
        super::memory::trace::report(6);
    }
    // Cores kept busy through the timed steps: (user + system CPU time) / wall time.
    let step_cpu_cores = match (cpu_before, cpu_seconds()) {
        (Some(b), Some(e)) if !seconds.is_empty() => Some((e - b) / seconds.iter().sum::<f64>()),
        _ => None,
    };

    // The CubeCL backends: the allocator of this thread's stream, which the step allocates in
    // (the backend runs the batch as one shard, on this thread). Sampled through one more,
    // untimed step: each reading flushes the stream's queue (≈ 20 % slower steps on lavapipe
    // at 1 ms).
    let probe = <B as tracknet_quant::QuantBackend>::memory_probe(device).map(Arc::new);
    let (mut device_before, mut device_peaks) = (None, None);
    if let Some(probe) = &probe {
        // Pages left free go back, so `reserved` grows from here to this step's own
        // high-water mark (the pools keep their pages until a cleanup).
        let _ = B::sync(device);
        B::memory_cleanup(device);
        device_before = probe();
        let sampler = DeviceSampler::start(probe.clone(), std::time::Duration::from_millis(1));
        // The model moves through the step as in the timed ones (a clone kept alive would add
        // a copy of every updated parameter).
        let (m, _, _, _) = step(model);
        model = m;
        let mut peaks = sampler.finish();
        // The step ended with a sync: one reading after it, and the one before.
        for m in [device_before, probe()].into_iter().flatten() {
            peaks.add(m);
        }
        device_peaks = Some(peaks);
    }

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
    let memory_note = if probe.is_some() {
        "tensors in the device allocator (device_*: CubeCL's counters for the step's stream \
         through one more, untimed step; peak in use sampled every 1 ms, a lower bound; \
         reserved: the pools' high-water mark since a cleanup before that step); RSS and heap \
         are the host's, over the timed steps"
    } else {
        "NdArray: all tensors on the heap"
    };
    let flops = super::flops::count(s, &a.mode, a.grad_ckpt, cfg.model.decoder.blocks_per_stage);
    let mut out = json!({
        "kind": "case",
        "case": format!(
            "{}{}{}",
            a.mode,
            if a.grad_ckpt { "+ckpt" } else { "" },
            a.amp.as_ref().map_or(String::new(), |p| format!("+amp-{p}"))
        ),
        "mode": a.mode,
        "backend": a.backend,
        "grad_ckpt": a.grad_ckpt,
        "parallel_shards": shards,
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
        "memory_note": memory_note,
        "warmup_seconds": warmup_seconds,
        "step_seconds": seconds,
        "step_seconds_median": median(&seconds),
        "step_seconds_min": min(&seconds),
        "step_cpu_cores": step_cpu_cores,
        "losses": losses,
        "inference_batch": x.batch_size,
        "inference_seconds": infer_seconds,
        "inference_seconds_median": infer_median,
        "inference_fps": x.batch_size as f64 / infer_median,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    // `null` on NdArray, whose tensors the heap figures above count; the half dtype under
    // `--amp` where the backend has it (`null`: f32), fp16's scale after the timed steps and
    // the timed steps that overflowed.
    let more = json!({
        "forward_flops_per_frame": flops.forward_per_frame,
        "step_flops": flops.step,
        "amp": dtype.map(|d| format!("{d:?}").to_lowercase()),
        "loss_scale": scaler.map(|s| s.scale),
        "skipped_steps": skipped,
        "device_in_use_before_step_bytes": device_before.map(|m| m.in_use),
        "device_reserved_before_step_bytes": device_before.map(|m| m.reserved),
        "device_peak_in_use_bytes": device_peaks.map(|p: DevicePeaks| p.in_use),
        "device_peak_reserved_bytes": device_peaks.map(|p| p.reserved),
        "device_memory_samples": device_peaks.map(|p| p.samples),
    });
    if let (Some(out), Value::Object(more)) = (out.as_object_mut(), more) {
        out.extend(more);
    }
    Ok(out)
}
