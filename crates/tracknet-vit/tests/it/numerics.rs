//! The CPU backend's arithmetic that training relies on: divisions (and so every gradient through
//! a norm, a softmax or a log-sigmoid) are exact, whatever address a buffer happens to have.

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;

type A = Autodiff<NdArray>;

fn host<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

/// Positive values over several decades.
fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| 0.37 + i as f32 * 0.731).collect()
}

/// burn-ndarray's `simd` feature computes `recip` with the approximate `rcp` instruction
/// (12 bits, ~3e-4 relative) on the vector-aligned part of a buffer and exactly on its unaligned
/// head, and Burn's autodiff takes every division's gradient through `recip`: gradients were off
/// by up to 3e-4 and depended on heap addresses, so no two processes trained alike. The workspace
/// builds burn-ndarray without that feature (Cargo.toml); this fails if anything turns it back on.
#[test]
fn ndarray_reciprocal_and_the_gradients_of_divisions_are_exact() {
    let d = Default::default();
    let n = 4099;
    let xs = values(n);
    let want: Vec<f32> = xs.iter().map(|x| 1.0 / x).collect();
    // Fresh buffers of several lengths, owned and shared (the in-place and the copying path).
    for skip in 0..8 {
        let t =
            Tensor::<NdArray, 1>::from_data(TensorData::new(xs[skip..].to_vec(), [n - skip]), &d);
        assert_eq!(
            host(t.clone().recip()),
            want[skip..],
            "recip of an unshared buffer"
        );
        let kept = t.clone();
        assert_eq!(host(t.recip()), want[skip..], "recip of a shared buffer");
        drop(kept);
    }
    // d(a / b)/da = 1 / b.
    let a = Tensor::<A, 1>::ones([n], &d).require_grad();
    let b = Tensor::<A, 1>::from_data(TensorData::new(xs.clone(), [n]), &d);
    let grads = (a.clone() / b).sum().backward();
    assert_eq!(host(a.grad(&grads).expect("grad of a")), want);
}

/// What the focal loss's gradient goes through: d log σ(x)/dx = σ(−x) ∈ (0, 1), against f64.
/// Absolute error: Burn's formula `1 − (z − 1)/z` cancels for large |x| (a few 1e-8 here), which
/// is float precision for a gradient of this size; with `rcp` it was ~1e-4 around x = 0.
#[test]
fn log_sigmoid_gradient_matches_f64_to_float_precision() {
    let d = Default::default();
    let xs: Vec<f32> = (0..2051)
        .map(|i| -8.0 + i as f32 * (16.0 / 2050.0))
        .collect();
    let x = Tensor::<A, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &d).require_grad();
    let grads = log_sigmoid(x.clone()).sum().backward();
    let got = host(x.grad(&grads).expect("grad of x"));
    let worst = xs
        .iter()
        .zip(&got)
        .map(|(&x, &g)| {
            let want = 1.0 / (1.0 + (x as f64).exp());
            (g as f64 - want).abs()
        })
        .fold(0f64, f64::max);
    println!("worst absolute error {worst:e}");
    assert!(worst < 1e-6, "worst absolute error {worst:e}");
}
