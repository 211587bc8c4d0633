//! Host kernels for the fused ops: plain `f32` slices in, contiguous buffers out, rayon across
//! rows / planes / groups. No Burn types here, so each kernel reads as the formula it computes.
//!
//! Statistics (means, variances, parameter-gradient sums) accumulate in `f64`; element values
//! stay `f32`. The backward passes recompute what they need from the saved input (the
//! normalised values, the activation's argument) instead of keeping it from the forward.

use rayon::prelude::*;

/// Elements per rayon task in element-wise kernels: large enough that scheduling is noise.
const CHUNK: usize = 1 << 15;

/// √2 and 1/√(2π), as f64.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// The activation applied after a group norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// None: the norm alone.
    Identity,
    /// Exact (erf) GELU, PyTorch's `nn.GELU()`.
    Gelu,
    /// ReLU.
    Relu,
}

impl Act {
    /// `act(z)`.
    #[inline]
    pub fn apply(self, z: f32) -> f32 {
        match self {
            Act::Identity => z,
            Act::Gelu => gelu(z),
            Act::Relu => z.max(0.0),
        }
    }

    /// `act'(z)`. ReLU's derivative at 0 is 0, as PyTorch's.
    #[inline]
    pub fn derivative(self, z: f32) -> f32 {
        match self {
            Act::Identity => 1.0,
            Act::Gelu => gelu_derivative(z),
            Act::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// `eˣ` in f32 with plain arithmetic the compiler vectorizes (no libm call): `x = n·ln2 + r`
/// with `n` rounded to nearest by the 1.5·2²³ trick and `ln 2` split in two, Cephes' degree-6
/// polynomial for `eʳ` on `|r| ≤ ln2/2`, and `2ⁿ` built in the exponent bits. Within 2 ulp of
/// the exact value on `[-87, 88]` (tested); below −87.3 it returns `e^−87.3` (≈ 1e−38, where
/// the softmax and GELU terms it feeds are negligible), above 88.7 `e^88.7` (f32's edge). NaN
/// stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let mut p = r * 1.987_569_1e-4 + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * z + r + 1.0;
    // n in [-126, 128]: 2ⁿ as (n + 127) in the exponent field; 2¹²⁸ as 2 · 2¹²⁷. n is read
    // from t = 1.5·2²³ + n's low mantissa bits: Rust's saturating float-to-int cast made
    // the vectorized loop 3× slower (0.82 against 0.27 ns per element, AVX-512).
    // Wrapping arithmetic: the values cannot overflow, and the dev profile's overflow checks
    // would keep the loop from vectorizing.
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let (n, twice) = if n > 127 { (127, 2.0) } else { (n, 1.0) };
    er * f32::from_bits((n.wrapping_add(127).max(1) as u32) << 23) * twice
}

/// erf in f32 as an odd/even rational function of `x` clamped to `[-4, 4]` (beyond it erf
/// is ±1 in f32): the float coefficients of Eigen's and XLA's `fast_erf`. Plain arithmetic
/// that the compiler vectorizes, no libm call; within 1e-6 of the f64 erf everywhere
/// (tested).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

/// `x · Φ(x)`, Φ the standard normal CDF through [`erf`].
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `Φ(x) + x · φ(x)`: the exact derivative (PyTorch's `gelu_backward` with
/// `approximate="none"`). Burn 0.21's autodiff differentiates its erf GELU with the tanh
/// approximation's derivative instead (≈ 1e-3 off near |x| ≈ 2).
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

/// Run `f` compiled for the widest vector unit the CPU has (AVX-512, AVX2, else the build's
/// baseline, SSE2 on x86-64), chosen at run time: the crates are built for baseline x86-64, so
/// the element-wise loops of [`exp`], [`erf`] and GELU would otherwise run 4 lanes wide. The
/// arithmetic is the same lane by lane (no FMA contraction), so the bits are too.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `row[i] = exp(row[i] − shift)` (the softmax's exponentials), vectorized by [`wide`].
pub fn exp_shifted(row: &mut [f32], shift: f32) {
    wide(
        #[inline(always)]
        || row.iter_mut().for_each(|x| *x = exp(*x - shift)),
    )
}

/// Element-wise GELU.
pub fn gelu_forward(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            wide(
                #[inline(always)]
                || y.iter_mut().zip(x).for_each(|(y, &x)| *y = gelu(x)),
            )
        });
    y
}

/// `dy · gelu'(x)`.
pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| {
            wide(
                #[inline(always)]
                || {
                    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                        *dx = dy * gelu_derivative(x);
                    }
                },
            )
        });
    dx
}

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

/// Shape of a depthwise input: `planes = batch · channels` planes of `h × w`.
#[derive(Debug, Clone, Copy)]
pub struct PlaneShape {
    pub batch: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
}

/// `y += Σ_k w[k] · x[· + offset_k]` for one `h × w` plane, zero padding 1 (cross-correlation
/// with a 3×3 kernel, as conv2d computes).
fn correlate3x3(x: &[f32], k: &[f32; 9], y: &mut [f32], h: usize, w: usize) {
    for i in 0..h {
        let out = &mut y[i * w..(i + 1) * w];
        for dy in 0..3 {
            let Some(r) = (i + dy).checked_sub(1).filter(|&r| r < h) else {
                continue;
            };
            let row = &x[r * w..(r + 1) * w];
            let (k0, k1, k2) = (k[dy * 3], k[dy * 3 + 1], k[dy * 3 + 2]);
            if w == 1 {
                out[0] += k1 * row[0];
                continue;
            }
            out[0] += k1 * row[0] + k2 * row[1];
            for j in 1..w - 1 {
                out[j] += k0 * row[j - 1] + k1 * row[j] + k2 * row[j + 1];
            }
            out[w - 1] += k0 * row[w - 2] + k1 * row[w - 1];
        }
    }
}

/// Depthwise 3×3 conv, stride 1, padding 1: `x [batch, C, h, w]`, `weight [C, 9]`,
/// `bias [C]`.
pub fn depthwise3x3_forward(
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    shape: PlaneShape,
) -> Vec<f32> {
    let plane = shape.h * shape.w;
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(p, (y, x))| {
            let c = p % shape.channels;
            let k: [f32; 9] = weight[c * 9..c * 9 + 9].try_into().expect("9 taps");
            y.fill(bias[c]);
            correlate3x3(x, &k, y, shape.h, shape.w);
        });
    y
}

/// Gradients of [`depthwise3x3_forward`]: `dx` is the correlation of `dy` with the kernel
/// rotated by 180°; `dw[c, k] = Σ_{n,i,j} dy · x shifted by tap k`; `dbias[c] = Σ dy`.
pub fn depthwise3x3_backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    shape: PlaneShape,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (h, w) = (shape.h, shape.w);
    let plane = h * w;
    let dx = need_dx.then(|| {
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(plane)
            .zip(dy.par_chunks(plane))
            .enumerate()
            .for_each(|(p, (dx, dy))| {
                let c = p % shape.channels;
                let mut k = [0f32; 9];
                for (t, k) in k.iter_mut().enumerate() {
                    *k = weight[c * 9 + 8 - t];
                }
                correlate3x3(dy, &k, dx, h, w);
            });
        dx
    });
    let per_plane: Vec<([f64; 9], f64)> = x
        .par_chunks(plane)
        .zip(dy.par_chunks(plane))
        .map(|(x, dy)| {
            let sum = dy.iter().map(|&v| f64::from(v)).sum::<f64>();
            let mut acc = [0f64; 9];
            for (t, acc) in acc.iter_mut().enumerate() {
                let (oy, ox) = (t / 3, t % 3);
                // Output pixels (i, j) whose input pixel (i + oy − 1, j + ox − 1) is inside.
                let (i0, i1) = (1usize.saturating_sub(oy), (h + 1 - oy).min(h));
                let (j0, j1) = (1usize.saturating_sub(ox), (w + 1 - ox).min(w));
                let mut s = 0f64;
                for i in i0..i1 {
                    let r = i + oy - 1;
                    let d = &dy[i * w + j0..i * w + j1];
                    let v = &x[r * w + j0 + ox - 1..r * w + j1 + ox - 1];
                    s += f64::from(d.iter().zip(v).map(|(a, b)| a * b).sum::<f32>());
                }
                *acc = s;
            }
            (acc, sum)
        })
        .collect();
    let mut dw = vec![0f64; shape.channels * 9];
    let mut db = vec![0f64; shape.channels];
    for (p, (acc, sum)) in per_plane.iter().enumerate() {
        let c = p % shape.channels;
        for t in 0..9 {
            dw[c * 9 + t] += acc[t];
        }
        db[c] += sum;
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (dx, f32s(dw), f32s(db))
}

/// `C (m×n) = A (m×k) · B (k×n) + β · C`, all row-major and contiguous unless a stride pair
/// says otherwise (`(row stride, column stride)` per operand).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
) {
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= m * n);
    if k > 0 {
        assert!(a.len() > last(rsa, csa, m, k) && b.len() > last(rsb, csb, k, n));
    }
    // SAFETY: the asserts above keep every access of the m×k, k×n and m×n operands inside
    // the slices; `c` is a unique borrow, so it aliases neither input.
    unsafe {
        tracknet_quant::gemm::sgemm(
            (m, k, n),
            1.0,
            (a.as_ptr(), rsa as isize, csa as isize),
            (b.as_ptr(), rsb as isize, csb as isize),
            beta,
            (c.as_mut_ptr(), n as isize, 1),
        )
    }
}

/// Rows of a product per rayon task when `images` images each have `rows` output rows: the
/// rows split so that there are at least as many tasks as threads (one image, a 1×1 conv's
/// channels, would otherwise run on one core). A row's sum does not depend on the split.
fn gemm_rows_per_task(rows: usize, images: usize) -> usize {
    let per_image = rayon::current_num_threads().div_ceil(images.max(1)).max(1);
    rows.div_ceil(per_image).max(1)
}

/// 1×1 conv on NCHW: `y_b = W · x_b + bias` per image, `x: [batch, C, hw]`, `W: [O, C]`;
/// the output channels of each image split over rayon.
pub fn pointwise_forward(x: &[f32], w: &[f32], bias: &[f32], (c, hw): (usize, usize)) -> Vec<f32> {
    let o = bias.len();
    let images = x.len() / (c * hw).max(1);
    let mut y = vec![0f32; images * o * hw];
    if o == 0 || hw == 0 {
        return y;
    }
    let rows = gemm_rows_per_task(o, images);
    y.par_chunks_mut(o * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(y, x)| {
            y.par_chunks_mut(rows * hw).enumerate().for_each(|(t, y)| {
                let r0 = t * rows;
                for (row, &b) in y.chunks_exact_mut(hw).zip(&bias[r0..]) {
                    row.fill(b);
                }
                let m = y.len() / hw;
                sgemm((m, c, hw), &w[r0 * c..], (c, 1), x, (hw, 1), 1.0, y);
            })
        });
    y
}

/// Gradients of [`pointwise_forward`]: `(dx, dW, dbias)` with `dx_b = Wᵀ · dy_b`,
/// `dW = Σ_b dy_b · x_bᵀ`, `dbias = Σ_{b, hw} dy`; `dx` only when `need_dx`. Rows of each
/// result split over rayon; `dW` sums the images in order, as one thread would.
pub fn pointwise_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (c, o, hw): (usize, usize, usize),
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let images = x.len() / (c * hw).max(1);
    let mut dx = need_dx.then(|| vec![0f32; x.len()]);
    let mut dw = vec![0f32; o * c];
    let mut db = vec![0f32; o];
    if o == 0 || c == 0 || hw == 0 {
        return (dx, dw, db);
    }
    if let Some(dx) = dx.as_mut() {
        let rows = gemm_rows_per_task(c, images);
        dx.par_chunks_mut(c * hw)
            .zip(dy.par_chunks(o * hw))
            .for_each(|(dx, dy)| {
                dx.par_chunks_mut(rows * hw)
                    .enumerate()
                    .for_each(|(t, dx)| {
                        let m = dx.len() / hw;
                        // Rows r0.. of Wᵀ: columns r0.. of W.
                        sgemm((m, o, hw), &w[t * rows..], (1, c), dy, (hw, 1), 0.0, dx);
                    })
            });
    }
    let rows = gemm_rows_per_task(o, 1);
    dw.par_chunks_mut(rows * c)
        .zip(db.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(t, (dw, db))| {
            let (r0, m) = (t * rows, db.len());
            let mut sums = vec![0f64; m];
            for (x, dy) in x.chunks_exact(c * hw).zip(dy.chunks_exact(o * hw)) {
                let dy = &dy[r0 * hw..(r0 + m) * hw];
                sgemm((m, hw, c), dy, (hw, 1), x, (1, hw), 1.0, dw);
                for (sum, row) in sums.iter_mut().zip(dy.chunks_exact(hw)) {
                    *sum += row.iter().map(|&v| f64::from(v)).sum::<f64>();
                }
            }
            for (db, sum) in db.iter_mut().zip(sums) {
                *db = sum as f32;
            }
        });
    (dx, dw, db)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 exp within 2 ulp of the f64 exp over its range, and its edges.
    #[test]
    fn exp_is_within_2_ulp() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * want;
            worst = worst.max((f64::from(exp(x)) - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(100.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    /// The f32 rational erf against the f64 erf over [-6, 6] in steps of 1e-4, and GELU and
    /// its derivative against the f64 formulas.
    #[test]
    fn erf_and_gelu_are_within_1e_6_of_f64() {
        let (mut erf_err, mut gelu_err, mut deriv_err) = (0f64, 0f64, 0f64);
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let xd = f64::from(x);
            erf_err = erf_err.max((f64::from(erf(x)) - libm::erf(xd)).abs());
            let cdf = 0.5 * (1.0 + libm::erf(xd / std::f64::consts::SQRT_2));
            gelu_err = gelu_err.max((f64::from(gelu(x)) - xd * cdf).abs() / xd.abs().max(1.0));
            let d = cdf + xd * (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            deriv_err = deriv_err.max((f64::from(gelu_derivative(x)) - d).abs());
        }
        assert!(erf_err < 1e-6, "erf {erf_err:e}");
        assert!(gelu_err < 1e-6, "gelu {gelu_err:e}");
        assert!(deriv_err < 1e-6, "gelu' {deriv_err:e}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(100.0), erf(4.0));
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let h = (i ^ (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                ((h >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// `Σ c·f(x)` by central differences in f64 around each input, against the kernel's
    /// `dx` for the cotangent `c`.
    fn check_dx(f: impl Fn(&[f32]) -> Vec<f32>, x: &[f32], c: &[f32], dx: &[f32], tol: f64) {
        let loss = |x: &[f32]| -> f64 {
            f(x).iter()
                .zip(c)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let h = 1e-2f32;
        let scale = dx.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
        for i in (0..x.len()).step_by(7) {
            let (mut p, mut m) = (x.to_vec(), x.to_vec());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * f64::from(h));
            let err = (fd - f64::from(dx[i])).abs() / scale;
            assert!(
                err < tol,
                "dx[{i}]: finite difference {fd}, kernel {}",
                dx[i]
            );
        }
    }

    #[test]
    fn depthwise_backward_is_the_forwards_adjoint() {
        let shape = PlaneShape {
            batch: 2,
            channels: 3,
            h: 5,
            w: 4,
        };
        let n = 2 * 3 * 5 * 4;
        let (x, w, c) = (values(n, 1), values(27, 2), values(n, 3));
        let (dx, dw, db) = depthwise3x3_backward(&x, &w, &c, shape, true);
        // Linear in x and in w: ⟨c, f(x)⟩ = ⟨dx, x⟩ = ⟨dw, w⟩ exactly (up to rounding).
        let y = depthwise3x3_forward(&x, &w, &[0.0; 3], shape);
        let bias = values(3, 14);
        let yb = depthwise3x3_forward(&x, &w, &bias, shape);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let lhs = dot(&c, &y);
        assert!((lhs - dot(&dx.unwrap(), &x)).abs() < 1e-4 * lhs.abs().max(1.0));
        assert!((lhs - dot(&dw, &w)).abs() < 1e-4 * lhs.abs().max(1.0));
        let with_bias = dot(&c, &yb) - lhs;
        assert!((with_bias - dot(&db, &bias)).abs() < 1e-4 * with_bias.abs().max(1.0));
    }

    #[test]
    fn bilinear_backward_is_the_forwards_adjoint() {
        let taps = |n: usize, m: usize| -> Vec<(usize, usize, f32)> {
            (0..m)
                .map(|o| {
                    let s = ((o as f64 + 0.5) * n as f64 / m as f64 - 0.5).max(0.0);
                    let a = (s.floor() as usize).min(n - 1);
                    (a, (a + 1).min(n - 1), (s - a as f64) as f32)
                })
                .collect()
        };
        let (ty, tx) = (taps(3, 7), taps(5, 9));
        let x = values(2 * 3 * 5, 20);
        let c = values(2 * 7 * 9, 21);
        let y = bilinear_forward(&x, (3, 5), &ty, &tx);
        let dx = bilinear_backward(&c, (3, 5), &ty, &tx);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let (lhs, rhs) = (dot(&c, &y), dot(&dx, &x));
        assert!(
            (lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    #[test]
    fn pointwise_backward_is_the_forwards_adjoint() {
        let (b, c, o, hw) = (2, 3, 4, 5);
        let (x, w, bias, g) = (
            values(b * c * hw, 30),
            values(o * c, 31),
            values(o, 32),
            values(b * o * hw, 33),
        );
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        let zero = vec![0f32; o];
        let y = pointwise_forward(&x, &w, &zero, (c, hw));
        let (dx, dw, db) = pointwise_backward(&x, &w, &g, (c, o, hw), true);
        // Bilinear in (x, W): ⟨g, y⟩ = ⟨dx, x⟩ = ⟨dW, W⟩; the bias adds ⟨db, bias⟩.
        let lhs = dot(&g, &y);
        assert!((lhs - dot(&dx.unwrap(), &x)).abs() < 1e-4 * lhs.abs().max(1.0));
        assert!((lhs - dot(&dw, &w)).abs() < 1e-4 * lhs.abs().max(1.0));
        let yb = pointwise_forward(&x, &w, &bias, (c, hw));
        let with_bias = dot(&g, &yb) - lhs;
        assert!((with_bias - dot(&db, &bias)).abs() < 1e-4 * with_bias.abs().max(1.0));
    }

    /// The 1×1 conv split over threads gives one thread's bits, for one image (its channels
    /// split) and for three (images and channels split).
    #[test]
    fn pointwise_split_over_threads_gives_one_threads_bits() {
        let (c, o, hw) = (7, 6, 33);
        let run = |threads: usize, b: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (x, w, bias, g) = (
                values(b * c * hw, 40),
                values(o * c, 41),
                values(o, 42),
                values(b * o * hw, 43),
            );
            pool.install(|| {
                let y = pointwise_forward(&x, &w, &bias, (c, hw));
                let (dx, dw, db) = pointwise_backward(&x, &w, &g, (c, o, hw), true);
                [y, dx.unwrap(), dw, db].map(|v| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            })
        };
        for b in [1, 3] {
            let one = run(1, b);
            for threads in [2, 4] {
                assert_eq!(run(threads, b), one, "{b} images on {threads} threads");
            }
        }
    }

    #[test]
    fn norm_and_gelu_gradients_match_finite_differences() {
        let (rows, d) = (3, 16);
        let (x, g, b, c) = (
            values(rows * d, 4),
            values(d, 5),
            values(d, 6),
            values(rows * d, 7),
        );
        let (dx, _, _) = layer_norm_backward(&x, &g, &c, 1e-5);
        check_dx(
            |x| layer_norm_forward(x, &g, Some(&b), 1e-5),
            &x,
            &c,
            &dx,
            2e-3,
        );

        let shape = GroupShape {
            batch: 2,
            channels: 4,
            spatial: 6,
            groups: 2,
        };
        let n = 2 * 4 * 6;
        let (x, g, b, c) = (values(n, 8), values(4, 9), values(4, 10), values(n, 11));
        for act in [Act::Identity, Act::Gelu] {
            let (dx, _, _) = group_norm_act_backward(&x, Some((&g, &b)), &c, shape, 1e-5, act);
            let f = |x: &[f32]| group_norm_act_forward(x, Some((&g, &b)), shape, 1e-5, act);
            check_dx(f, &x, &c, &dx, 2e-3);
        }

        let x = values(64, 12);
        let c = values(64, 13);
        check_dx(gelu_forward, &x, &c, &gelu_backward(&x, &c), 1e-3);
    }
}
