//! Test helpers shared by the unit tests of the NdArray nodes (`dense`, `low_rank`).

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::DType;

pub type A = Autodiff<NdArray>;
pub type A64 = Autodiff<NdArray<f64>>;

/// Deterministic values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The same values as a tracked f32 leaf and a tracked f64 leaf (the reference).
pub fn leaf<const D: usize>(shape: [usize; D], seed: u64) -> (Tensor<A, D>, Tensor<A64, D>) {
    let v = values(shape.iter().product(), seed);
    let wide: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
    let d = Default::default();
    (
        Tensor::<A, D>::from_data(TensorData::new(v, shape), &d).require_grad(),
        Tensor::<A64, D>::from_data(TensorData::new(wide, shape), (&d, DType::F64)).require_grad(),
    )
}

pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().expect("f64")
}

/// Largest absolute difference relative to the largest magnitude of `truth`.
pub fn rel(got: &[f64], truth: &[f64]) -> f64 {
    let scale = truth.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(truth)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}
