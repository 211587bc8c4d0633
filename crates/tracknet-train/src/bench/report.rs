//! `report`: the tables, the memory-vs-batch chart and the goal checks of a bench file.

use std::path::Path;

use serde_json::Value;

use crate::error::{TrainError, io_err};

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

/// The peak-memory figures a backend's goal checks compare: the heap and the resident set on
/// NdArray (all tensors live on the heap), the device allocator on the CubeCL backends (the
/// host figures there hold no tensors).
fn memory_keys(backend: &str) -> [(&'static str, &'static str); 2] {
    if backend == "ndarray" {
        [
            ("peak RSS", "peak_rss_bytes"),
            ("peak heap", "peak_heap_bytes"),
        ]
    } else {
        [
            ("device peak in use", "device_peak_in_use_bytes"),
            ("device peak reserved", "device_peak_reserved_bytes"),
        ]
    }
}

/// `report FILE`: the tables and the goal checks of a file written by `cargo xtask bench`.
pub fn report(file: &Path) -> Result<(), TrainError> {
    let raw = std::fs::read_to_string(file).map_err(io_err(file))?;
    let doc: Value = serde_json::from_str(&raw).map_err(|e| TrainError::InvalidOption {
        option: "report FILE",
        message: format!("{}: not a bench JSON file ({e})", file.display()),
    })?;
    let empty = Vec::new();
    let cases = doc["cases"].as_array().unwrap_or(&empty);
    let m = &doc["machine"];
    let simd: Vec<&str> = m["simd"]
        .as_array()
        .map_or(Vec::new(), |v| v.iter().filter_map(Value::as_str).collect());
    println!(
        "machine: {} ({}; SIMD {}; {} threads), {}, commit {}",
        m["cpu"].as_str().unwrap_or("?"),
        m["cpu_id"].as_str().unwrap_or("?"),
        if simd.is_empty() {
            "?".into()
        } else {
            simd.join(" ")
        },
        m["nproc"],
        m["date"].as_str().unwrap_or("?"),
        m["commit"].as_str().unwrap_or("?")
    );
    println!();
    println!(
        "| case | backend | batch | bits/w | linear MB | trainable | peak RSS MB | RSS before MB | peak heap MB | heap before MB | device peak MB | device reserved MB | step median s | step min s | CPU cores | infer fps |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
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
            "| {} | {} | {} | {} | {} | {} ({}%) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            mb(&c["device_peak_in_use_bytes"]),
            mb(&c["device_peak_reserved_bytes"]),
            num(&c["step_seconds_median"], 3),
            num(&c["step_seconds_min"], 3),
            num(&c["step_cpu_cores"], 2),
            num(&c["inference_fps"], 2),
        );
    }
    vs_torch(cases);
    super::roofline::table(cases);
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
    for c in cases.iter().filter(|c| c["kind"] == "q4_matmul") {
        println!();
        println!(
            "4-bit matmul on {} ({}x{}, {}): as dispatched vs dequantize + matmul (median of {}; fused kernel up to {} rows on CubeCL backends)",
            c["backend"].as_str().unwrap_or("?"),
            c["out_features"],
            c["in_features"],
            c["quant"].as_str().unwrap_or("?"),
            c["runs"],
            c["fused_max_rows"]
        );
        println!(
            "{:>6} {:>12} {:>12} {:>7} {:>12} {:>12} {:>7}",
            "rows", "fwd s", "deq+mm s", "ratio", "grad s", "deq+mm s", "ratio"
        );
        for r in c["rows"].as_array().into_iter().flatten() {
            println!(
                "{:>6} {:>12} {:>12} {:>7} {:>12} {:>12} {:>7}",
                r["rows"],
                num(&r["forward_seconds"], 5),
                num(&r["forward_dequantize_matmul_seconds"], 5),
                num(&r["forward_ratio"], 2),
                num(&r["input_grad_seconds"], 5),
                num(&r["input_grad_dequantize_matmul_seconds"], 5),
                num(&r["input_grad_ratio"], 2)
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
    super::roofline::goals(cases);
    let backends = ["ndarray", "cuda", "wgpu"];
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
            for (what, key) in memory_keys(backend) {
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
        lean_step_goals(cases, backend);
    }
    Ok(())
}

/// The lean step's goals (`training.gradient_checkpointing`): QLoRA NF4+dq with recomputation
/// peaks at ≤ 40 % of full fine-tuning's peak and ≤ 50 % of PyTorch's QLoRA peak (same run),
/// for ≤ +35 % step time over the same QLoRA step without it.
fn lean_step_goals(cases: &[Value], backend: &str) {
    let (Some(r), Some(q)) = (
        find(cases, backend, "qlora-nf4-dq+ckpt"),
        find(cases, backend, "qlora-nf4-dq"),
    ) else {
        return;
    };
    if let Some(f) = find(cases, backend, "full") {
        for (what, key) in memory_keys(backend) {
            if let (Some(rb), Some(fb)) = (r[key].as_f64(), f[key].as_f64()) {
                println!(
                    "  [{}] {backend}: qlora-nf4-dq+ckpt {what} {:.1} MB = {:.0}% of full's {:.1} MB (goal <= 40%)",
                    verdict(rb <= 0.4 * fb),
                    rb / 1e6,
                    100.0 * rb / fb,
                    fb / 1e6
                );
            }
        }
    }
    let torch = cases
        .iter()
        .find(|c| c["kind"] == "torch" && c["mode"] == "qlora" && c["error"].is_null());
    // The peer runs on the CPU: only NdArray's resident set compares with its own.
    let rss = r["peak_rss_bytes"]
        .as_f64()
        .filter(|_| backend == "ndarray");
    if let (Some(t), Some(rb)) = (torch, rss) {
        let tb = t["anchor"]["peak_rss_mb"].as_f64().unwrap_or(f64::NAN) * 1e6;
        println!(
            "  [{}] {backend}: qlora-nf4-dq+ckpt peak RSS {:.1} MB = {:.0}% of PyTorch's QLoRA {:.1} MB (goal <= 50%)",
            verdict(rb <= 0.5 * tb),
            rb / 1e6,
            100.0 * rb / tb,
            tb / 1e6
        );
    }
    let (rt, qt) = (
        r["step_seconds_median"].as_f64().unwrap_or(f64::NAN),
        q["step_seconds_median"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "  [{}] {backend}: qlora-nf4-dq+ckpt step {rt:.3}s vs qlora-nf4-dq {qt:.3}s = {:.2}x (goal <= 1.35x)",
        verdict(rt <= 1.35 * qt),
        rt / qt
    );
}

/// The side-by-side table of `cargo xtask bench --vs-torch`: each peer run against our NdArray
/// case of the same mode, measured in the same bench run; ratio = ours / PyTorch (below 1: we
/// are faster or smaller). Inference is per frame (the peer times a batch of `batch` frames).
fn vs_torch(cases: &[Value]) {
    let peers: Vec<&Value> = cases.iter().filter(|c| c["kind"] == "torch").collect();
    if peers.is_empty() {
        return;
    }
    println!();
    println!("side by side with PyTorch + PEFT + bitsandbytes (same run; ratio = ours / PyTorch):");
    println!(
        "| mode | PyTorch s | ours s | time ratio | PyTorch peak RSS MB | ours peak RSS MB | RSS ratio | PyTorch threads | our CPU cores |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in peers {
        let mode = p["mode"].as_str().unwrap_or("?");
        let pair = p["pair"].as_str().unwrap_or("?");
        if !p["error"].is_null() {
            println!(
                "| {mode} | failed: {} |",
                p["error"].as_str().unwrap_or("?")
            );
            continue;
        }
        let a = &p["anchor"];
        let Some(ours) = find(cases, "ndarray", pair) else {
            println!("| {mode} | our case `{pair}` is missing or failed |");
            continue;
        };
        let infer = mode == "infer";
        let (theirs_s, ours_s) = if infer {
            let batch = a["batch"].as_f64().unwrap_or(f64::NAN);
            let ib = ours["inference_batch"].as_f64().unwrap_or(f64::NAN);
            (
                a["step_s_median"].as_f64().unwrap_or(f64::NAN) / batch,
                ours["inference_seconds_median"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
                    / ib,
            )
        } else {
            (
                a["step_s_median"].as_f64().unwrap_or(f64::NAN),
                ours["step_seconds_median"].as_f64().unwrap_or(f64::NAN),
            )
        };
        let theirs_rss = a["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        let ours_rss = ours["peak_rss_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6;
        let label = if infer {
            "infer (per frame)".to_string()
        } else {
            format!("{mode} step (ours: {pair})")
        };
        if infer {
            println!(
                "| {label} | {theirs_s:.3} | {ours_s:.3} | {:.2}x | {theirs_rss:.0} | - | - | {} | - |",
                ours_s / theirs_s,
                a["torch_threads"]
            );
        } else {
            println!(
                "| {label} | {theirs_s:.3} | {ours_s:.3} | {:.2}x | {theirs_rss:.0} | {ours_rss:.0} | {:.2}x | {} | {} |",
                ours_s / theirs_s,
                ours_rss / theirs_rss,
                a["torch_threads"],
                num(&ours["step_cpu_cores"], 2)
            );
        }
    }
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
/// (`cargo xtask bench --batches 1,2,4,8`), peak RSS (device reserved on the CubeCL backends) per batch, the per-image slope of a
/// least-squares line, and the largest batch that line puts under 16 and 24 GiB. The chart is
/// written to `png` (one line per case).
fn memory_vs_batch(cases: &[Value], png: &Path) -> Result<(), TrainError> {
    use std::collections::BTreeMap;
    use tracknet_data::viz::{Panel, Series, save_panels_png};
    let mut groups: BTreeMap<(String, String), BTreeMap<u64, f64>> = BTreeMap::new();
    for c in cases
        .iter()
        .filter(|c| c["kind"] == "case" && c["error"].is_null())
    {
        // What bounds the batch: the resident set on NdArray, the pages the device allocator
        // takes on the CubeCL backends.
        let key = match c["backend"].as_str() {
            Some("ndarray") | None => "peak_rss_bytes",
            Some(_) => "device_peak_reserved_bytes",
        };
        let (Some(batch), Some(peak)) = (c["sizes"]["batch"].as_u64(), c[key].as_f64()) else {
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
    println!(
        "memory vs batch (peak of a training step, MB: RSS on NdArray, device reserved on CUDA/wgpu; line fitted by least squares):"
    );
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
    save_panels_png(png, "", (900, 520), &[panel])?;
    println!("chart: {}", png.display());
    Ok(())
}

pub(super) fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}
