//! LayerNorm and GroupNorm (+ activation): forward and backward, statistics in f64.

use rayon::prelude::*;

use super::{Act, CHUNK, gelu, wide};

/// Mean and `1/√(var + eps)` (biased variance, two passes in f64) of one slice.
#[inline]
fn moments(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| {
            let d = f64::from(v) - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// Rows per rayon task for a row length `d`.
fn rows_per_task(d: usize) -> usize {
    (CHUNK / d.max(1)).max(1)
}

/// LayerNorm over the last axis: `y = (x − μ)/√(σ² + eps) · γ + β` per row of length `d`.
pub fn layer_norm_forward(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f64) -> Vec<f32> {
    let d = gamma.len();
    let mut y = vec![0f32; x.len()];
    let rows = rows_per_task(d);
    y.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                let (mean, rstd) = moments(x, eps);
                for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                    let b = beta.map_or(0.0, |b| b[j]);
                    *y = (x - mean) * rstd * gamma[j] + b;
                }
            }
        });
    y
}

/// Gradients of [`layer_norm_forward`]: `(dx, dγ, dβ)`, with
/// `dx = r · (g − mean(g) − x̂ · mean(g · x̂))`, `g = dy · γ`, `r = 1/√(σ² + eps)`.
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    dy: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let mut dx = vec![0f32; x.len()];
    let rows = rows_per_task(d);
    let partial = dx
        .par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d).zip(dy.par_chunks(rows * d)))
        .map(|(dx, (x, dy))| {
            let mut dgamma = vec![0f64; d];
            let mut dbeta = vec![0f64; d];
            let mut xhat = vec![0f32; d];
            for ((dx, x), dy) in dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(dy.chunks_exact(d))
            {
                let (mean, rstd) = moments(x, eps);
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for j in 0..d {
                    xhat[j] = (x[j] - mean) * rstd;
                    let g = f64::from(dy[j] * gamma[j]);
                    sum_g += g;
                    sum_gx += g * f64::from(xhat[j]);
                    dgamma[j] += f64::from(dy[j]) * f64::from(xhat[j]);
                    dbeta[j] += f64::from(dy[j]);
                }
                let (mean_g, mean_gx) = ((sum_g / d as f64) as f32, (sum_gx / d as f64) as f32);
                for j in 0..d {
                    dx[j] = rstd * (dy[j] * gamma[j] - mean_g - xhat[j] * mean_gx);
                }
            }
            (dgamma, dbeta)
        })
        .collect::<Vec<_>>();
    let (dgamma, dbeta) = sum_partials(partial, d);
    (dx, dgamma, dbeta)
}

/// Sums per-task `(a, b)` partial vectors of length `n` into f32.
fn sum_partials(partial: Vec<(Vec<f64>, Vec<f64>)>, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut a = vec![0f64; n];
    let mut b = vec![0f64; n];
    for (pa, pb) in partial {
        a.iter_mut().zip(pa).for_each(|(s, v)| *s += v);
        b.iter_mut().zip(pb).for_each(|(s, v)| *s += v);
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (f(a), f(b))
}

/// Shape of a group-norm input: `[batch, channels, spatial]`, `groups` dividing `channels`.
#[derive(Debug, Clone, Copy)]
pub struct GroupShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
}

impl GroupShape {
    fn per_group(&self) -> usize {
        self.channels / self.groups
    }
}

/// `act(GroupNorm(x) · γ + β)` on NCHW data (`γ`, `β` per channel; `None` when not affine).
pub fn group_norm_act_forward(
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    shape: GroupShape,
    eps: f64,
    act: Act,
) -> Vec<f32> {
    let (cg, hw) = (shape.per_group(), shape.spatial);
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw))
        .enumerate()
        .for_each(|(block, (y, x))| {
            let (mean, rstd) = moments(x, eps);
            let c0 = (block % shape.groups) * cg;
            for (i, (y, x)) in y.chunks_exact_mut(hw).zip(x.chunks_exact(hw)).enumerate() {
                let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[c0 + i], b[c0 + i]));
                norm_act_row(y, x, (mean, rstd, g, b), act);
            }
        });
    y
}

/// `y = act((x − mean) · rstd · g + b)` over one channel's row, the activation chosen once
/// outside the loop and the loop run [`wide`].
#[inline(always)]
fn norm_act_row(y: &mut [f32], x: &[f32], (mean, rstd, g, b): (f32, f32, f32, f32), act: Act) {
    macro_rules! run {
        ($f:expr) => {
            wide(
                #[inline(always)]
                || {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = $f((x - mean) * rstd * g + b);
                    }
                },
            )
        };
    }
    match act {
        Act::Identity => run!(|z: f32| z),
        Act::Gelu => run!(gelu),
        Act::Relu => run!(|z: f32| z.max(0.0)),
    }
}

/// Gradients of [`group_norm_act_forward`]: `(dx, dγ, dβ)` (the last two per channel, zeros
/// when not affine).
pub fn group_norm_act_backward(
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    dy: &[f32],
    shape: GroupShape,
    eps: f64,
    act: Act,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (cg, hw) = (shape.per_group(), shape.spatial);
    let n = (cg * hw) as f64;
    let mut dx = vec![0f32; x.len()];
    let partial = dx
        .par_chunks_mut(cg * hw)
        .zip(x.par_chunks(cg * hw).zip(dy.par_chunks(cg * hw)))
        .enumerate()
        .map(|(block, (dx, (x, dy)))| {
            let (mean, rstd) = moments(x, eps);
            let c0 = (block % shape.groups) * cg;
            let mut dgamma = vec![0f64; shape.channels];
            let mut dbeta = vec![0f64; shape.channels];
            // dz = dy · act'(z), kept in dx until the normalisation's backward overwrites it.
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for (i, ((dx, x), dy)) in dx
                .chunks_exact_mut(hw)
                .zip(x.chunks_exact(hw))
                .zip(dy.chunks_exact(hw))
                .enumerate()
            {
                let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[c0 + i], b[c0 + i]));
                let (mut s_dz, mut s_dzx) = (0f64, 0f64);
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    let xhat = (x - mean) * rstd;
                    let dz = dy * act.derivative(xhat * g + b);
                    *dx = dz * g;
                    s_dz += f64::from(dz);
                    s_dzx += f64::from(dz) * f64::from(xhat);
                }
                dgamma[c0 + i] = s_dzx;
                dbeta[c0 + i] = s_dz;
                sum_g += s_dz * f64::from(g);
                sum_gx += s_dzx * f64::from(g);
            }
            let (mean_g, mean_gx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
            for (dx, &x) in dx.iter_mut().zip(x) {
                let xhat = (x - mean) * rstd;
                *dx = rstd * (*dx - mean_g - xhat * mean_gx);
            }
            (dgamma, dbeta)
        })
        .collect::<Vec<_>>();
    let (dgamma, dbeta) = sum_partials(partial, shape.channels);
    (dx, dgamma, dbeta)
}
