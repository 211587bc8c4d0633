//! `gemm`: the dense GEMM rate of the NdArray backend on the model's own shapes — the dense
//! linear as the model calls it (`QuantBackend::dense_linear`: rows split over rayon, one
//! single-threaded GEMM call each, on the process's `tracknet_quant::gemm::host()`) — on 1
//! and 2 threads. The report's roofline divides a mode's FLOPs by the best of these rates;
//! `--alternative` measures OpenBLAS beside it (`cargo xtask bench` runs it where installed).

use burn::backend::NdArray;
use burn::prelude::*;
use serde_json::{Value, json};
use tracknet_quant::ops::QuantBackend;

use super::args::GemmArgs;
use crate::error::TrainError;

/// `[m, k, n]` of the seed model's linears at batch 2 and 1 (ViT-S/16 at 512×288: 581 tokens a
/// frame): attention projections, MLP up and down.
pub const MODEL_SHAPES: [[usize; 3]; 6] = [
    [1162, 384, 384],
    [1162, 384, 1536],
    [1162, 1536, 384],
    [581, 384, 384],
    [581, 384, 1536],
    [581, 1536, 384],
];

pub fn gemm(a: &GemmArgs) -> Result<Value, TrainError> {
    let threads: Vec<usize> = a
        .threads
        .split(',')
        .map(|t| t.trim().parse::<usize>().ok().filter(|t| *t > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| TrainError::InvalidOption {
            option: "--threads",
            message: format!("expected thread counts like 1,2, got `{}`", a.threads),
        })?;
    let host = tracknet_quant::gemm::host();
    if a.alternative && !matches!(host, tracknet_quant::gemm::HostGemm::OpenBlas(_)) {
        return Err(TrainError::InvalidOption {
            option: "--alternative",
            message: format!(
                "OpenBLAS did not load (set {}=openblas and install libopenblas0)",
                tracknet_quant::gemm::GEMM_ENV
            ),
        });
    }
    let device = Default::default();
    let mut rows = Vec::new();
    let mut best = serde_json::Map::new();
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .map_err(|e| TrainError::InvalidOption {
                option: "--threads",
                message: e.to_string(),
            })?;
        let mut top: f64 = 0.0;
        for [m, k, n] in MODEL_SHAPES {
            let x =
                Tensor::<NdArray, 2>::random([m, k], burn::tensor::Distribution::Default, &device);
            let w =
                Tensor::<NdArray, 2>::random([k, n], burn::tensor::Distribution::Default, &device);
            let b = Tensor::<NdArray, 1>::zeros([n], &device);
            let prim = |t: Tensor<NdArray, 2>| t.into_primitive().tensor();
            let times = pool.install(|| {
                super::timings(a.runs, || {
                    let _ = NdArray::dense_linear(
                        prim(x.clone()),
                        prim(w.clone()),
                        b.clone().into_primitive().tensor(),
                    );
                })
            });
            let flops = 2.0 * (m * k * n) as f64;
            let (median, fastest) = (times[times.len() / 2], times[0]);
            top = top.max(flops / median / 1e9);
            rows.push(json!({
                "m": m, "k": k, "n": n, "threads": t,
                "gflops_median": flops / median / 1e9,
                "gflops_best": flops / fastest / 1e9,
            }));
        }
        best.insert(t.to_string(), json!(top));
    }
    Ok(json!({
        "kind": "gemm",
        "impl": format!(
            "{} (NdArray dense linear: {host}, rows over rayon)",
            if a.alternative { "alternative" } else { "ours" }
        ),
        "runs": a.runs,
        "rates": rows,
        "best_gflops_by_threads": best,
    }))
}
