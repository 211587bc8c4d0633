//! Bilinear resize (`align_corners = false`) built from `select` and element-wise ops.
//!
//! Burn's `interpolate` has no bilinear backward on the ndarray backend (it panics), so the
//! decoder would not train on CPU. Resizing one axis at a time as
//! `x[i0] + (x[i1] - x[i0]) * λ` (two gathers) is differentiable on every backend, costs
//! O(output), and gives PyTorch's `F.interpolate(..., mode="bilinear", align_corners=False)`.

use burn::prelude::*;

/// Resizes `[batch, channels, h, w]` to `[batch, channels, size[0], size[1]]` (`size` is
/// `[height, width]`). Returns the input unchanged when it already has that size.
pub fn bilinear_resize<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let x = resize_axis(x, 3, size[1]);
    resize_axis(x, 2, size[0])
}

/// Linear interpolation of `x` along `dim` (2 or 3) to `len_out` samples.
fn resize_axis<B: Backend>(x: Tensor<B, 4>, dim: usize, len_out: usize) -> Tensor<B, 4> {
    let len_in = x.dims()[dim];
    if len_in == len_out || len_in == 0 {
        return x;
    }
    let device = x.device();
    let dtype = x.dtype();
    // The taps on the device, made once per (sizes, axis, dtype).
    let key = format!("resize {len_in}->{len_out} dim {dim} {dtype:?}");
    let (i0, i1, lambda) = crate::layers::consts::cached::<B, _>(key, &device, || {
        let taps = source_taps(len_in, len_out);
        let index = |pick: fn(&(usize, usize, f32)) -> usize| {
            let data: Vec<i64> = taps.iter().map(|t| pick(t) as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(data, [len_out]), &device)
        };
        let mut shape = [1; 4];
        shape[dim] = len_out;
        let lambda: Vec<f32> = taps.iter().map(|t| t.2).collect();
        let lambda = Tensor::<B, 4>::from_data(TensorData::new(lambda, shape), (&device, dtype));
        (index(|t| t.0), index(|t| t.1), lambda)
    });
    let lo = x.clone().select(dim, i0);
    let hi = x.select(dim, i1);
    lo.clone() + (hi - lo) * lambda
}

/// For each output sample `o`: source `s = max((o + 0.5) * in / out - 0.5, 0)`, taps
/// `floor(s)` and `min(floor(s) + 1, in - 1)`, weight `λ = s - floor(s)` of the upper tap,
/// exactly PyTorch's `area_pixel_compute_source_index` for linear modes.
fn source_taps(len_in: usize, len_out: usize) -> Vec<(usize, usize, f32)> {
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
