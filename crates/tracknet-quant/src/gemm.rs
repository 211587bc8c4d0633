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

#[cfg(test)]
mod tests {
    use super::*;

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
