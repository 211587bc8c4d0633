//! Separable bilinear resize by precomputed taps, forward and backward.

use rayon::prelude::*;

/// Linear-interpolation taps of one axis: per output sample `(lower, upper, weight of upper)`.
pub type Taps = [(usize, usize, f32)];

/// Bilinear resize of `planes` planes of `h × w` to `taps_y.len() × taps_x.len()`: the width
/// first, then the height, each as `lo + (hi − lo) · λ` (the composed op's order and
/// rounding).
pub fn bilinear_forward(x: &[f32], (h, w): (usize, usize), ty: &Taps, tx: &Taps) -> Vec<f32> {
    let (oh, ow) = (ty.len(), tx.len());
    let mut y = vec![0f32; x.len() / (h * w) * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(y, x)| {
            let mut rows = vec![0f32; h * ow];
            for (row, x) in rows.chunks_exact_mut(ow).zip(x.chunks_exact(w)) {
                for (r, &(a, b, l)) in row.iter_mut().zip(tx) {
                    *r = x[a] + (x[b] - x[a]) * l;
                }
            }
            for (out, &(a, b, l)) in y.chunks_exact_mut(ow).zip(ty) {
                let (lo, hi) = (&rows[a * ow..(a + 1) * ow], &rows[b * ow..(b + 1) * ow]);
                for ((o, &lo), &hi) in out.iter_mut().zip(lo).zip(hi) {
                    *o = lo + (hi - lo) * l;
                }
            }
        });
    y
}

/// The adjoint of [`bilinear_forward`]: each output gradient goes back to its two taps per
/// axis, `(1 − λ)` to the lower and `λ` to the upper.
pub fn bilinear_backward(dy: &[f32], (h, w): (usize, usize), ty: &Taps, tx: &Taps) -> Vec<f32> {
    let (oh, ow) = (ty.len(), tx.len());
    let mut dx = vec![0f32; dy.len() / (oh * ow) * h * w];
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dx, dy)| {
            let mut rows = vec![0f32; h * ow];
            for (g, &(a, b, l)) in dy.chunks_exact(ow).zip(ty) {
                for (j, &g) in g.iter().enumerate() {
                    let hi = g * l;
                    rows[a * ow + j] += g - hi;
                    rows[b * ow + j] += hi;
                }
            }
            for (dx, row) in dx.chunks_exact_mut(w).zip(rows.chunks_exact(ow)) {
                for (&g, &(a, b, l)) in row.iter().zip(tx) {
                    let hi = g * l;
                    dx[a] += g - hi;
                    dx[b] += hi;
                }
            }
        });
    dx
}
