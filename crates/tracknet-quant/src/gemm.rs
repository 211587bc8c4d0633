//! The host GEMM behind the NdArray kernels (the 4-bit matmul here, the fused attention, norms
//! and convolutions of `tracknet-vit`): the `gemm` crate, single-threaded per call (callers
//! split rows over rayon). It picks AVX-512 / AVX2+FMA / SSE kernels at run time; measured
//! single-threaded on this project's shapes (e.g. `[581, 384] · [384, 1536]`) at 2.0× the
//! rate of `matrixmultiply`, NdArray's own GEMM, on an AVX-512 Xeon (docs/performance.md).

/// A matrix operand: first element and `(row, column)` strides in elements.
pub type Operand<T> = (T, isize, isize);

/// `C (m×n) = α · A (m×k) · B (k×n) + β · C`; with `β = 0`, `C` is only written.
///
/// # Safety
/// Each pointer with its strides addresses valid memory for its shape; `c` is writable and
/// overlaps neither `a` nor `b`.
pub unsafe fn sgemm(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: Operand<*const f32>,
    b: Operand<*const f32>,
    beta: f32,
    c: Operand<*mut f32>,
) {
    // SAFETY: forwarded from the caller. The crate's `alpha` scales the old C (read only
    // when `read_dst`), its `beta` the product.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.0,
            c.2,
            c.1,
            beta != 0.0,
            a.0,
            a.2,
            a.1,
            b.0,
            b.2,
            b.1,
            beta,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// [`sgemm`] for `B` a weight: the result's bits do not depend on `B`'s layout, so a model
/// gives the same output whether its weights were loaded row-major (a checkpoint, an optimizer
/// step) or as a transposed view (Hugging Face, PEFT). The crate's blocked kernel sums each
/// output in depth order whatever the strides; only its shortcuts for small products
/// (`m·n ≤ 256`, one row or column, depth `k ≤ 2`) choose a summation order by layout, so for
/// those a `B` that is not compact row-major is copied so first (at most 256 outputs' columns,
/// or a single row's product).
///
/// # Safety
/// As [`sgemm`].
pub unsafe fn sgemm_weight(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: Operand<*const f32>,
    b: Operand<*const f32>,
    beta: f32,
    c: Operand<*mut f32>,
) {
    let shortcut = m * n <= 256 || m <= 1 || n <= 1 || k <= 2;
    let compact_rows = (b.1 == n as isize || k <= 1) && (b.2 == 1 || n <= 1);
    if shortcut && !compact_rows && k > 0 && n > 0 {
        // SAFETY: the caller's B addresses k × n elements through its strides.
        let rows: Vec<f32> = (0..k)
            .flat_map(|p| (0..n).map(move |j| (p, j)))
            .map(|(p, j)| unsafe { *b.0.offset(p as isize * b.1 + j as isize * b.2) })
            .collect();
        // SAFETY: `rows` is B row-major (strides (n, 1)); the rest as the caller's.
        return unsafe { sgemm((m, k, n), alpha, a, (rows.as_ptr(), n as isize, 1), beta, c) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { sgemm((m, k, n), alpha, a, b, beta, c) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`sgemm_weight`]: `B` row-major, column-major or with padded rows gives the same bits,
    /// on shapes that take each of the crate's paths: the blocked kernel, the small-product
    /// kernel (`m·n ≤ 256`), the matrix-vector shortcuts (one row, one column) and depth 1–2.
    #[test]
    fn the_layout_of_b_does_not_change_the_bits() {
        let shapes = [
            (70, 300, 90),
            (9, 300, 70),
            (3, 300, 70),
            (4, 64, 8),
            (1, 384, 1536),
            (130, 384, 1),
            (1, 50, 1),
            (40, 2, 30),
            (40, 1, 30),
            (300, 8, 384),
            (16, 1162, 8),
        ];
        for (m, k, n) in shapes {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0)
                .collect();
            let b_cols: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let pad = n + 3;
            let b_padded: Vec<f32> = (0..k * pad)
                .map(|i| {
                    if i % pad < n {
                        b[(i / pad) * n + i % pad]
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            let run = |b: Operand<*const f32>| {
                let mut c = vec![0.5f32; m * n];
                unsafe {
                    sgemm_weight(
                        (m, k, n),
                        1.5,
                        (a.as_ptr(), k as isize, 1),
                        b,
                        0.25,
                        (c.as_mut_ptr(), n as isize, 1),
                    )
                };
                c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let rows = run((b.as_ptr(), n as isize, 1));
            let cols = run((b_cols.as_ptr(), 1, k as isize));
            let padded = run((b_padded.as_ptr(), pad as isize, 1));
            assert_eq!(rows, cols, "row- vs column-major B, shape {:?}", (m, k, n));
            assert_eq!(rows, padded, "padded B, shape {:?}", (m, k, n));
        }
    }

    /// Against the naive triple loop, with strided (transposed) operands and accumulation.
    #[test]
    fn strided_product_and_accumulation_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.25 - 1.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect(); // Bᵀ [n, k]
        let mut c = vec![1f32; m * n];
        // C = 2·A·B + 0.5·C, B read through Bᵀ's strides.
        unsafe {
            sgemm(
                (m, k, n),
                2.0,
                (a.as_ptr(), k as isize, 1),
                (bt.as_ptr(), 1, k as isize),
                0.5,
                (c.as_mut_ptr(), n as isize, 1),
            )
        };
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum();
                assert!((c[i * n + j] - (2.0 * dot + 0.5)).abs() < 1e-4);
            }
        }
    }
}
