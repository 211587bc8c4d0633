//! Host kernels for the fused ops: plain `f32` slices in, contiguous buffers out, rayon across
//! rows / planes / groups. No Burn types here, so each kernel reads as the formula it computes.
//!
//! Statistics (means, variances, parameter-gradient sums) accumulate in `f64`; element values
//! stay `f32`. The backward passes recompute what they need from the saved input (the
//! normalised values, the activation's argument) instead of keeping it from the forward.

use rayon::prelude::*;

mod conv;
mod norm;
mod resize;

pub use conv::*;
pub use norm::*;
pub use resize::*;

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
