//! Learned position embeddings resized to another patch grid, as transformers'
//! `interpolate_pos_encoding` does it: PyTorch's bicubic `interpolate` (`align_corners=False`),
//! plain (ViT, DINOv2) or with `antialias=True` (DINOv2 with registers). Both are separable, so a
//! resize is two small matrix products, with the matrices made once per grid.

use burn::prelude::*;
use burn::tensor::TensorData;

/// Which of PyTorch's two bicubic resizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bicubic {
    /// `mode="bicubic"`: cubic convolution with A = -0.75, border taps clamped.
    Plain,
    /// `mode="bicubic", antialias=True`: Keys' kernel with A = -0.5 (PIL's), stretched by the
    /// scale when downsampling, taps outside the input dropped and the weights renormalised.
    Antialias,
}

impl Bicubic {
    /// Row-major `[n_out, n_in]` weights of the 1-D resize.
    pub fn matrix(self, n_in: usize, n_out: usize) -> Vec<f32> {
        match self {
            Bicubic::Plain => bicubic_matrix(n_in, n_out),
            Bicubic::Antialias => bicubic_aa_matrix(n_in, n_out),
        }
    }
}

/// Cubic convolution kernel with parameter `a` (`|x| < 2`, else 0).
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// Row-major `[n_out, n_in]` weights of PyTorch's 1-D bicubic resize (`align_corners=False`,
/// output size given, cubic convolution with A = -0.75, border indices clamped).
pub fn bicubic_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let scale = n_in as f64 / n_out as f64;
    let mut m = vec![0.0f64; n_out * n_in];
    for o in 0..n_out {
        let src = scale * (o as f64 + 0.5) - 0.5;
        let base = src.floor();
        let t = src - base;
        let weights = [
            cubic(t + 1.0, A),
            cubic(t, A),
            cubic(1.0 - t, A),
            cubic(2.0 - t, A),
        ];
        for (k, w) in weights.iter().enumerate() {
            let idx = (base as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + idx] += w;
        }
    }
    m.into_iter().map(|w| w as f32).collect()
}

/// Row-major `[n_out, n_in]` weights of PyTorch's antialiased 1-D bicubic resize
/// (`_upsample_bicubic2d_aa`, `align_corners=False`): support 2 input pixels, times the scale
/// when downsampling; taps outside the input are dropped and the rest renormalised to sum 1.
pub fn bicubic_aa_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f64 = -0.5;
    let scale = n_in as f64 / n_out as f64;
    let (support, inv) = if scale >= 1.0 {
        (2.0 * scale, 1.0 / scale)
    } else {
        (2.0, 1.0)
    };
    let mut m = vec![0.0f64; n_out * n_in];
    for o in 0..n_out {
        let center = scale * (o as f64 + 0.5);
        // PyTorch truncates these towards zero (`int64_t` casts).
        let lo = ((center - support + 0.5) as i64).max(0);
        let hi = ((center + support + 0.5) as i64).min(n_in as i64);
        let row = &mut m[o * n_in..(o + 1) * n_in];
        let mut total = 0.0;
        for j in lo..hi {
            let w = cubic((j as f64 - center + 0.5) * inv, A);
            row[j as usize] = w;
            total += w;
        }
        if total != 0.0 {
            row.iter_mut().for_each(|w| *w /= total);
        }
    }
    m.into_iter().map(|w| w as f32).collect()
}

/// Position embeddings `pos [1, 1 + th * tw, hidden]` (CLS first, then the `trained` grid
/// row-major) for a `grid` of patches: as they are when the grids agree, else the patch part
/// resized with `kind` (the CLS position is kept as is).
pub fn resize_position_embeddings<B: Backend>(
    pos: Tensor<B, 3>,
    trained: (usize, usize),
    grid: (usize, usize),
    kind: Bicubic,
) -> Tensor<B, 3> {
    let ((th, tw), (gh, gw)) = (trained, grid);
    if (gh, gw) == (th, tw) {
        return pos;
    }
    let [_, t, c] = pos.dims();
    let device = pos.device();
    let cls = pos.clone().slice([0..1, 0..1, 0..c]);
    let patches = pos.slice([0..1, 1..t, 0..c]).reshape([th, tw * c]);
    // The interpolation matrices are made once per grid and kept on the device.
    let matrix = |from: usize, to: usize| {
        crate::layers::consts::cached::<B, Tensor<B, 2>>(
            format!("bicubic {kind:?} {from}->{to}"),
            &device,
            || Tensor::from_data(TensorData::new(kind.matrix(from, to), [to, from]), &device),
        )
    };
    // rows: [gh, th] x [th, tw*c] -> [gh, tw, c]
    let patches = matrix(th, gh)
        .matmul(patches)
        .reshape([gh, tw, c])
        .swap_dims(0, 1)
        .reshape([tw, gh * c]);
    // cols: [gw, tw] x [tw, gh*c] -> [gw, gh, c] -> [gh, gw, c]
    let patches = matrix(tw, gw)
        .matmul(patches)
        .reshape([gw, gh, c])
        .swap_dims(0, 1)
        .reshape([1, gh * gw, c]);
    Tensor::cat(vec![cls, patches], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn antialiased_rows_sum_to_one_and_equal_sizes_are_the_identity() {
        for (n_in, n_out) in [(4, 3), (4, 7), (37, 20), (16, 37), (5, 5)] {
            let m = bicubic_aa_matrix(n_in, n_out);
            for o in 0..n_out {
                let s: f32 = m[o * n_in..(o + 1) * n_in].iter().sum();
                assert!(
                    (s - 1.0).abs() < 1e-6,
                    "{n_in}->{n_out} row {o} sums to {s}"
                );
            }
        }
        let m = bicubic_aa_matrix(5, 5);
        for o in 0..5 {
            for i in 0..5 {
                assert_eq!(m[o * 5 + i], f32::from(o == i));
            }
        }
    }

    #[test]
    fn antialiased_downsampling_widens_the_kernel_and_upsampling_uses_keys_a() {
        // 4 -> 2: scale 2, support 4, taps at distance (j - center + 0.5) / 2.
        let m = bicubic_aa_matrix(4, 2);
        let raw: Vec<f64> = (0..4)
            .map(|j| cubic((j as f64 - 1.0 + 0.5) / 2.0, -0.5))
            .collect();
        let total: f64 = raw.iter().sum();
        for j in 0..4 {
            assert!((f64::from(m[j]) - raw[j] / total).abs() < 1e-7);
        }
        // 2 -> 4: output 1 sits at source 0.25 from pixel 0; a = -0.5 (not -0.75).
        let m = bicubic_aa_matrix(2, 4);
        let w0 = cubic(0.25, -0.5);
        let w1 = cubic(0.75, -0.5);
        let w_1 = cubic(1.25, -0.5); // the tap left of the input, dropped
        assert!(w_1 != 0.0);
        assert!((f64::from(m[2]) - w0 / (w0 + w1)).abs() < 1e-7);
        assert_ne!(bicubic_matrix(2, 4)[2], m[2]);
    }
}
