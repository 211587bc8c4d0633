//! Bilinear resize (`align_corners = false`) built from `select` and element-wise ops, for any
//! backend: resizing one axis at a time as `x[i0] + (x[i1] - x[i0]) * λ` (two gathers) is
//! differentiable by every autodiff, costs O(output), and gives PyTorch's values. Also the taps
//! the NdArray host kernel runs on.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

/// The resize in Burn's ops (two gathers and element-wise ops per axis), differentiable by any
/// autodiff backend.
pub(crate) fn composed<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let x = resize_axis(x, 3, size[1]);
    resize_axis(x, 2, size[0])
}

/// The adjoint of [`composed`] for the output gradient `grad`: `[batch, channels, in_hw]`.
pub(crate) fn composed_backward<B: Backend>(grad: Tensor<B, 4>, in_hw: [usize; 2]) -> Tensor<B, 4> {
    let g = resize_axis_adjoint(grad, 2, in_hw[0]);
    resize_axis_adjoint(g, 3, in_hw[1])
}

/// The taps of one axis on the device, made once per (sizes, axis, dtype).
#[allow(clippy::type_complexity)]
fn device_taps<B: Backend>(
    len_in: usize,
    len_out: usize,
    dim: usize,
    device: &B::Device,
    dtype: burn::tensor::DType,
) -> (Tensor<B, 1, Int>, Tensor<B, 1, Int>, Tensor<B, 4>) {
    let key = format!("resize {len_in}->{len_out} dim {dim} {dtype:?}");
    crate::layers::consts::cached::<B, _>(key, device, || {
        let taps = source_taps(len_in, len_out);
        let index = |pick: fn(&(usize, usize, f32)) -> usize| {
            let data: Vec<i64> = taps.iter().map(|t| pick(t) as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(data, [len_out]), device)
        };
        let mut shape = [1; 4];
        shape[dim] = len_out;
        let lambda: Vec<f32> = taps.iter().map(|t| t.2).collect();
        let lambda = Tensor::<B, 4>::from_data(TensorData::new(lambda, shape), (device, dtype));
        (index(|t| t.0), index(|t| t.1), lambda)
    })
}

/// Linear interpolation of `x` along `dim` (2 or 3) to `len_out` samples.
fn resize_axis<B: Backend>(x: Tensor<B, 4>, dim: usize, len_out: usize) -> Tensor<B, 4> {
    let len_in = x.dims()[dim];
    if len_in == len_out || len_in == 0 {
        return x;
    }
    let (i0, i1, lambda) = device_taps::<B>(len_in, len_out, dim, &x.device(), x.dtype());
    let lo = x.clone().select(dim, i0);
    let hi = x.select(dim, i1);
    lo.clone() + (hi - lo) * lambda
}

/// The adjoint of [`resize_axis`]: `grad` (with `len_out` samples along `dim`) back onto the
/// `len_in` source samples.
fn resize_axis_adjoint<B: Backend>(grad: Tensor<B, 4>, dim: usize, len_in: usize) -> Tensor<B, 4> {
    let len_out = grad.dims()[dim];
    if len_in == len_out || len_in == 0 {
        return grad;
    }
    let (i0, i1, lambda) = device_taps::<B>(len_in, len_out, dim, &grad.device(), grad.dtype());
    let hi = grad.clone() * lambda;
    let lo = grad.clone() - hi.clone();
    let mut shape = grad.dims();
    shape[dim] = len_in;
    Tensor::zeros(shape, (&grad.device(), grad.dtype()))
        .select_assign(dim, i0, lo, IndexingUpdateOp::Add)
        .select_assign(dim, i1, hi, IndexingUpdateOp::Add)
}

/// For each output sample `o`: source `s = max((o + 0.5) * in / out - 0.5, 0)`, taps
/// `floor(s)` and `min(floor(s) + 1, in - 1)`, weight `λ = s - floor(s)` of the upper tap,
/// exactly PyTorch's `area_pixel_compute_source_index` for linear modes.
pub(crate) fn source_taps(len_in: usize, len_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = len_in as f64 / len_out as f64;
    (0..len_out)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(len_in - 1);
            let i1 = (i0 + 1).min(len_in - 1);
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    /// The composed adjoint is the composed resize's transpose: ⟨g, R x⟩ = ⟨Rᵀ g, x⟩.
    #[test]
    fn composed_backward_is_the_adjoint() {
        let d = Default::default();
        let x = Tensor::<NdArray, 4>::random([2, 3, 5, 4], burn::tensor::Distribution::Default, &d);
        let g =
            Tensor::<NdArray, 4>::random([2, 3, 9, 11], burn::tensor::Distribution::Default, &d);
        let lhs: f32 = (composed(x.clone(), [9, 11]) * g.clone())
            .sum()
            .into_scalar();
        let rhs: f32 = (composed_backward(g, [5, 4]) * x).sum().into_scalar();
        assert!(
            (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    #[test]
    fn taps_match_pytorch_half_pixel_mapping() {
        // in = 2, out = 4: sources 0 (clamped from -0.25), 0.25, 0.75, 1.25.
        let taps = source_taps(2, 4);
        assert_eq!(
            taps,
            vec![(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.25)]
        );
    }
}
