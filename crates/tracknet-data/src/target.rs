//! Heatmap targets.
//!
//! Coordinate convention: a ball at original pixel `x` (frame width `W_orig`) maps to heatmap
//! coordinate `x * Wh / W_orig` (same for y). The Gaussian is evaluated at integer pixel
//! coordinates `0..Wh-1`, `0..Hh-1`: `exp(-((x-cx)² + (y-cy)²) / (2σ²))`, σ in heatmap pixels.
//! Invisible balls (visibility 0) get an all-zero heatmap and an all-zero mask; visible ones a
//! mask of ones.

/// Scales an original-pixel coordinate into heatmap pixels.
pub fn scale_to_heatmap(xy: (f32, f32), orig_size: (u32, u32), heatmap_wh: [u32; 2]) -> (f32, f32) {
    (
        xy.0 * heatmap_wh[0] as f32 / orig_size.0 as f32,
        xy.1 * heatmap_wh[1] as f32 / orig_size.1 as f32,
    )
}

/// Writes the Gaussian heatmap (`[Hh, Wh]` row-major) for a centre in heatmap pixels into
/// `out`, or zeros when `centre` is `None`. Returns the mask value (1 visible, 0 invisible).
pub fn gaussian_heatmap(
    out: &mut [f32],
    heatmap_wh: [u32; 2],
    centre: Option<(f32, f32)>,
    sigma: f32,
) -> f32 {
    let (w, h) = (heatmap_wh[0] as usize, heatmap_wh[1] as usize);
    debug_assert_eq!(out.len(), w * h);
    let Some((cx, cy)) = centre else {
        out.fill(0.0);
        return 0.0;
    };
    let inv = 1.0 / (2.0 * sigma * sigma);
    // Separable: exp(-(dx²+dy²)/2σ²) = exp(-dx²/2σ²) · exp(-dy²/2σ²).
    let gx: Vec<f32> = (0..w)
        .map(|x| (-(x as f32 - cx).powi(2) * inv).exp())
        .collect();
    for y in 0..h {
        let gy = (-(y as f32 - cy).powi(2) * inv).exp();
        for (o, g) in out[y * w..(y + 1) * w].iter_mut().zip(&gx) {
            *o = g * gy;
        }
    }
    1.0
}
