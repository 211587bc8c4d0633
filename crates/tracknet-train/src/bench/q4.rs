//! `q4-matmul`: the 4-bit matmul the backend dispatches to (on CubeCL backends the fused
//! kernel for up to [`FUSED_MAX_ROWS`] rows) against dequantize-then-matmul on the same
//! backend, forward and input gradient, per row count. Times include reading the result back
//! (a few rows × features), which is what makes a device backend finish its queue.

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use serde_json::{Value, json};
use tracknet_quant::ops::{Q4Weight, dequantize_then_matmul, dequantize_then_matmul_grad};
use tracknet_quant::{
    CodeBooks, ComputeDtype, FUSED_MAX_ROWS, QuantSpec, QuantType, QuantizedLinear,
};
use tracknet_vit::ModelBackend;

use super::args::Q4Args;
use crate::backend::{InferenceJob, with_inference};
use crate::error::TrainError;
use tracknet_config::DeviceSpec;

pub fn q4_matmul(a: &Q4Args) -> Result<Value, TrainError> {
    let spec: DeviceSpec = a
        .backend
        .parse()
        .map_err(|message| TrainError::InvalidOption {
            option: "--backend",
            message,
        })?;
    let rows = a
        .rows
        .split(',')
        .map(|r| r.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrainError::InvalidOption {
            option: "--rows",
            message: format!("`{}`: {e}", a.rows),
        })?;
    with_inference(spec, Job { a, rows })
}

struct Job<'a> {
    a: &'a Q4Args,
    rows: Vec<usize>,
}

/// Median of `runs` timings of `f` after one untimed call.
fn median_seconds(runs: usize, f: impl FnMut()) -> f64 {
    let t = super::timings(runs, f);
    t[t.len() / 2]
}

fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ (seed << 32))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(17);
            (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

impl InferenceJob for Job<'_> {
    type Output = Value;
    fn run<B: ModelBackend>(self, device: &B::Device) -> Result<Value, TrainError> {
        let (out, inp) = (self.a.out_features, self.a.in_features);
        let books = CodeBooks::<B>::new(device);
        let spec = QuantSpec {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
            compute: ComputeDtype::F32,
        };
        let layer = QuantizedLinear::<B>::from_torch_weight(
            &pseudo(out * inp, 1),
            inp,
            out,
            None,
            spec,
            &books,
        )
        .map_err(tracknet_vit::model::ModelError::from)?;
        let weight = || -> Q4Weight<B> { layer.q4_weight() };
        let float = |t: burn::tensor::ops::FloatTensor<B>| {
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(t))
        };
        let mut table = Vec::new();
        for &rows in &self.rows {
            let x = Tensor::<B, 1>::from_floats(pseudo(rows * inp, 2).as_slice(), device)
                .reshape([rows, inp]);
            let g = Tensor::<B, 1>::from_floats(pseudo(rows * out, 3).as_slice(), device)
                .reshape([rows, out]);
            let prim = |t: &Tensor<B, 2>| t.clone().into_primitive().tensor();
            let sync = |t: Tensor<B, 2>| {
                let _ = t.into_data();
            };
            let runs = self.a.runs;
            let fwd = median_seconds(runs, || {
                sync(float(B::q4_matmul(prim(&x), weight(), layer.layout)))
            });
            let fwd_dense = median_seconds(runs, || {
                sync(float(dequantize_then_matmul::<B>(
                    prim(&x),
                    weight(),
                    layer.layout,
                )))
            });
            let bwd = median_seconds(runs, || {
                sync(float(B::q4_matmul_grad(prim(&g), weight(), layer.layout)))
            });
            let bwd_dense = median_seconds(runs, || {
                sync(float(dequantize_then_matmul_grad::<B>(
                    prim(&g),
                    weight(),
                    layer.layout,
                )))
            });
            table.push(json!({
                "rows": rows,
                "dispatched_path": if rows <= FUSED_MAX_ROWS { "fused on CubeCL backends" } else { "dequantize + matmul" },
                "forward_seconds": fwd,
                "forward_dequantize_matmul_seconds": fwd_dense,
                "forward_ratio": fwd / fwd_dense,
                "input_grad_seconds": bwd,
                "input_grad_dequantize_matmul_seconds": bwd_dense,
                "input_grad_ratio": bwd / bwd_dense,
            }));
        }
        Ok(json!({
            "kind": "q4_matmul",
            "backend": self.a.backend,
            "out_features": out,
            "in_features": inp,
            "quant": "nf4 + double quant, blocksize 64",
            "fused_max_rows": FUSED_MAX_ROWS,
            "runs": self.a.runs,
            "rows": table,
        }))
    }
}
