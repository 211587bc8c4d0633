//! The report's roofline: each mode's FLOPs (counted from the model's shapes,
//! [`super::flops`]) ÷ the best GEMM rate measured in the same run on the model's own shapes
//! (`tracknet-bench gemm`, and the peer's `a @ b` with `--vs-torch`) is the time no f32
//! implementation on this CPU goes under; a time as a multiple of it says how much is left.
//! Also the speed goals against the peer (same run): inference ≤ 0.7×, steps ≤ 0.8×, and
//! inference ≤ 1.6× its roofline.

use serde_json::Value;

/// Our cases and the peer's anchor modes: (label, our case, the anchor's mode, inference).
const MODES: [(&str, &str, &str, bool); 4] = [
    ("inference, per frame", "full", "infer", true),
    ("full step", "full", "full", false),
    ("LoRA step", "lora", "lora", false),
    ("QLoRA NF4+dq step", "qlora-nf4-dq", "qlora", false),
];

/// The best GEMM rate (GFLOP/s, any thread count) of the `gemm` object whose `impl` starts
/// with `who`.
fn best_rate(cases: &[Value], who: &str) -> Option<f64> {
    cases
        .iter()
        .filter(|c| c["kind"] == "gemm" && c["impl"].as_str().is_some_and(|i| i.starts_with(who)))
        .flat_map(|c| {
            c["best_gflops_by_threads"]
                .as_object()
                .into_iter()
                .flatten()
        })
        .filter_map(|(_, v)| v.as_f64())
        .reduce(f64::max)
}

/// One mode's figures: FLOPs, our seconds and the peer's (per frame for inference).
struct Row {
    label: &'static str,
    inference: bool,
    flops: f64,
    ours: f64,
    theirs: Option<f64>,
}

fn rows(cases: &[Value]) -> Vec<Row> {
    MODES
        .iter()
        .filter_map(|&(label, case, anchor, inference)| {
            let c = cases.iter().find(|c| {
                c["kind"] == "case"
                    && c["backend"] == "ndarray"
                    && c["case"] == case
                    && c["error"].is_null()
            })?;
            let f = |k: &str| c[k].as_f64();
            let (flops, ours) = if inference {
                (
                    f("forward_flops_per_frame")?,
                    f("inference_seconds_median")? / f("inference_batch")?,
                )
            } else {
                (f("step_flops")?, f("step_seconds_median")?)
            };
            let theirs = cases
                .iter()
                .find(|t| t["kind"] == "torch" && t["mode"] == anchor && t["error"].is_null())
                .and_then(|t| {
                    let a = &t["anchor"];
                    let s = a["step_s_median"].as_f64()?;
                    Some(if inference {
                        s / a["batch"].as_f64()?
                    } else {
                        s
                    })
                });
            Some(Row {
                label,
                inference,
                flops,
                ours,
                theirs,
            })
        })
        .collect()
}

/// The roofline table; nothing when the run measured no GEMM rate or no NdArray case.
pub fn table(cases: &[Value]) {
    let Some(ours_rate) = best_rate(cases, "ours") else {
        return;
    };
    let rows = rows(cases);
    if rows.is_empty() {
        return;
    }
    let peer_rate = best_rate(cases, "torch");
    if let Some(alt) = best_rate(cases, "alternative") {
        println!();
        println!(
            "GEMM alternative measured in this run: OpenBLAS {alt:.1} GFLOP/s against ours {ours_rate:.1} \
             (TRACKNET_GEMM=openblas runs it)"
        );
    }
    println!();
    println!(
        "roofline (FLOPs of the matrix products and convolutions, counted from the model's shapes, \
         ÷ the best GEMM rate on its shapes in this run: ours {ours_rate:.1} GFLOP/s{}):",
        peer_rate.map_or(String::new(), |r| format!(", PyTorch {r:.1} GFLOP/s"))
    );
    println!(
        "| mode | GFLOP | floor s (our rate) | ours s | ours × floor | PyTorch s | PyTorch × floor (its rate) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let floor = r.flops / (ours_rate * 1e9);
        let theirs = match (r.theirs, peer_rate) {
            (Some(t), Some(p)) => format!("{t:.3} | {:.2}x", t / (r.flops / (p * 1e9))),
            (Some(t), None) => format!("{t:.3} | -"),
            _ => "- | -".into(),
        };
        println!(
            "| {} | {:.1} | {floor:.3} | {:.3} | {:.2}x | {theirs} |",
            r.label,
            r.flops / 1e9,
            r.ours,
            r.ours / floor
        );
    }
}

/// The speed goals: against the peer in the same run, and inference against its roofline.
pub fn goals(cases: &[Value]) {
    let rate = best_rate(cases, "ours");
    for r in rows(cases) {
        if let Some(t) = r.theirs {
            let goal = if r.inference { 0.7 } else { 0.8 };
            println!(
                "  [{}] ndarray: {} {:.3}s vs PyTorch {t:.3}s = {:.2}x (goal <= {goal}x)",
                super::report::verdict(r.ours <= goal * t),
                r.label,
                r.ours,
                r.ours / t
            );
        }
        if let (true, Some(rate)) = (r.inference, rate) {
            let floor = r.flops / (rate * 1e9);
            println!(
                "  [{}] ndarray: {} {:.3}s = {:.2}x its roofline {floor:.3}s (goal <= 1.6x)",
                super::report::verdict(r.ours <= 1.6 * floor),
                r.label,
                r.ours,
                r.ours / floor
            );
        }
    }
}
