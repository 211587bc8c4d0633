//! The host GEMM behind the NdArray kernels (the dense and 4-bit linears here, the fused
//! attention, norms and convolutions of `tracknet-vit`), single-threaded per call (callers
//! split rows over rayon). Two implementations, chosen once per process ([`host`]):
//!
//! - the `gemm` crate, compiled in (the default): AVX-512 / AVX2+FMA / SSE kernels picked at
//!   run time; 2.0× NdArray's `matrixmultiply` on an AVX-512 Xeon, and OpenBLAS's rate on an
//!   AVX2 EPYC (docs/performance.md);
//! - OpenBLAS, with `TRACKNET_GEMM=openblas` (`openblas.rs`: loaded at run time, e.g. Debian's
//!   `libopenblas0`; a warning and the `gemm` crate when it cannot be loaded). `tracknet-bench
//!   gemm` measures both on the model's shapes, so a CPU where OpenBLAS is faster shows it.
//!
//! The choice is fixed for the process, so a run's bits do not change from one process to the
//! next on one machine.

mod openblas;

use std::sync::OnceLock;

/// The GEMM a process runs.
pub enum HostGemm {
    /// OpenBLAS, with what it says it is (version, build, kernel).
    OpenBlas(String),
    /// The `gemm` crate.
    Builtin,
}

impl std::fmt::Display for HostGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OpenBlas(name) => write!(f, "{name}"),
            Self::Builtin => write!(f, "gemm crate (built in)"),
        }
    }
}

/// The environment variable that picks the GEMM: `builtin` (unset) or `openblas`.
pub const GEMM_ENV: &str = "TRACKNET_GEMM";

struct Selected {
    blas: Option<openblas::OpenBlas>,
    host: HostGemm,
}

fn selected() -> &'static Selected {
    static SELECTED: OnceLock<Selected> = OnceLock::new();
    SELECTED.get_or_init(|| {
        let blas = match std::env::var(GEMM_ENV).unwrap_or_default().as_str() {
            "" | "builtin" => None,
            "openblas" => openblas::OpenBlas::load()
                .map_err(|why| {
                    tracing::warn!("{GEMM_ENV}=openblas: {why}; using the built-in GEMM");
                })
                .ok(),
            other => {
                tracing::warn!(
                    "{GEMM_ENV}={other:?} is not `builtin` or `openblas`; using the built-in GEMM"
                );
                None
            }
        };
        let host = match &blas {
            Some(b) => HostGemm::OpenBlas(b.name.clone()),
            None => HostGemm::Builtin,
        };
        Selected { blas, host }
    })
}

/// The GEMM this process runs (chosen on first use, from [`GEMM_ENV`]).
pub fn host() -> &'static HostGemm {
    &selected().host
}

/// A matrix operand: first element and `(row, column)` strides in elements.
pub type Operand<T> = (T, isize, isize);

/// `C (m×n) = α · A (m×k) · B (k×n) + β · C`; with `β = 0`, `C` is only written.
///
/// # Safety
/// Each pointer with its strides addresses valid memory for its shape; `c` is writable and
/// overlaps neither `a` nor `b`.
pub unsafe fn sgemm(
    dims: (usize, usize, usize),
    alpha: f32,
    a: Operand<*const f32>,
    b: Operand<*const f32>,
    beta: f32,
    c: Operand<*mut f32>,
) {
    let call = Call {
        dims,
        alpha,
        a,
        b,
        beta,
        c,
    };
    // SAFETY: forwarded from the caller.
    unsafe { product(selected().blas.as_ref(), call) }
}

/// One product's operands, as [`sgemm`] takes them.
#[derive(Clone, Copy)]
struct Call {
    dims: (usize, usize, usize),
    alpha: f32,
    a: Operand<*const f32>,
    b: Operand<*const f32>,
    beta: f32,
    c: Operand<*mut f32>,
}

/// [`sgemm`] on OpenBLAS when given one and the strides are a BLAS layout, else on the `gemm`
/// crate.
///
/// # Safety
/// As [`sgemm`].
unsafe fn product(blas: Option<&openblas::OpenBlas>, call: Call) {
    if let Some(blas) = blas {
        // SAFETY: forwarded from the caller.
        if unsafe { blas.try_sgemm(call) } {
            return;
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { builtin(call) }
}

/// [`sgemm`] on the `gemm` crate.
///
/// # Safety
/// As [`sgemm`].
unsafe fn builtin(call: Call) {
    let Call {
        dims: (m, k, n),
        alpha,
        a,
        b,
        beta,
        c,
    } = call;
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
/// step) or as a transposed view (Hugging Face, PEFT). OpenBLAS packs `B` into the same
/// panels from either layout; the `gemm` crate's blocked kernel sums each output in depth
/// order whatever the strides, and only its shortcuts for small products
/// (`m·n ≤ 256`, one row or column, depth `k ≤ 2`) choose a summation order by layout, so for
/// those a `B` that is not compact row-major is copied so first (at most 256 outputs' columns,
/// or a single row's product).
///
/// # Safety
/// As [`sgemm`].
pub unsafe fn sgemm_weight(
    dims: (usize, usize, usize),
    alpha: f32,
    a: Operand<*const f32>,
    b: Operand<*const f32>,
    beta: f32,
    c: Operand<*mut f32>,
) {
    let call = Call {
        dims,
        alpha,
        a,
        b,
        beta,
        c,
    };
    // SAFETY: forwarded from the caller.
    unsafe { weight_product(selected().blas.as_ref(), call) }
}

/// [`sgemm_weight`] on the GEMM given (as [`product`]).
///
/// # Safety
/// As [`sgemm`].
unsafe fn weight_product(blas: Option<&openblas::OpenBlas>, call: Call) {
    let Call {
        dims: (m, k, n), b, ..
    } = call;
    let shortcut = m * n <= 256 || m <= 1 || n <= 1 || k <= 2;
    let compact_rows = (b.1 == n as isize || k <= 1) && (b.2 == 1 || n <= 1);
    if shortcut && !compact_rows && k > 0 && n > 0 {
        // SAFETY: the caller's B addresses k × n elements through its strides.
        let rows: Vec<f32> = (0..k)
            .flat_map(|p| (0..n).map(move |j| (p, j)))
            .map(|(p, j)| unsafe { *b.0.offset(p as isize * b.1 + j as isize * b.2) })
            .collect();
        let b = (rows.as_ptr(), n as isize, 1);
        // SAFETY: `rows` is B row-major (strides (n, 1)); the rest as the caller's.
        return unsafe { product(blas, Call { b, ..call }) };
    }
    // SAFETY: forwarded from the caller.
    unsafe { product(blas, call) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GEMMs to test: the `gemm` crate, and OpenBLAS where it loads. Where
    /// `TRACKNET_TEST_OPENBLAS=1` (as `cargo xtask test` sets it, after installing the
    /// library), OpenBLAS must load: its path is then tested, not skipped.
    fn each_gemm() -> Vec<(&'static str, Option<openblas::OpenBlas>)> {
        let mut all = vec![("builtin", None)];
        match openblas::OpenBlas::load() {
            Ok(blas) => all.push(("openblas", Some(blas))),
            Err(why) => assert!(
                std::env::var("TRACKNET_TEST_OPENBLAS").as_deref() != Ok("1"),
                "TRACKNET_TEST_OPENBLAS=1 but OpenBLAS did not load: {why}"
            ),
        }
        all
    }

    #[test]
    fn the_process_runs_the_gemm_the_environment_asks_for() {
        let host = host();
        match std::env::var(GEMM_ENV).as_deref() {
            Ok("openblas") if openblas::OpenBlas::load().is_ok() => {
                assert!(
                    matches!(host, HostGemm::OpenBlas(n) if n.contains("OpenBLAS")),
                    "{host}"
                )
            }
            _ => assert!(matches!(host, HostGemm::Builtin), "{host}"),
        }
    }

    /// [`sgemm_weight`]: `B` row-major, column-major or with padded rows gives the same bits,
    /// on shapes that take each of the `gemm` crate's paths: the blocked kernel, the
    /// small-product kernel (`m·n ≤ 256`), the matrix-vector shortcuts (one row, one column)
    /// and depth 1–2; on each GEMM.
    #[test]
    fn the_layout_of_b_does_not_change_the_bits() {
        for (name, blas) in each_gemm() {
            layout_of_b_does_not_change_the_bits(name, blas.as_ref());
        }
    }

    fn layout_of_b_does_not_change_the_bits(name: &str, blas: Option<&openblas::OpenBlas>) {
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
                    weight_product(
                        blas,
                        Call {
                            dims: (m, k, n),
                            alpha: 1.5,
                            a: (a.as_ptr(), k as isize, 1),
                            b,
                            beta: 0.25,
                            c: (c.as_mut_ptr(), n as isize, 1),
                        },
                    )
                };
                c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let rows = run((b.as_ptr(), n as isize, 1));
            let cols = run((b_cols.as_ptr(), 1, k as isize));
            let padded = run((b_padded.as_ptr(), pad as isize, 1));
            let shape = (m, k, n);
            assert_eq!(
                rows, cols,
                "{name}: row- vs column-major B, shape {shape:?}"
            );
            assert_eq!(rows, padded, "{name}: padded B, shape {shape:?}");
        }
    }

    /// Against the naive triple loop (in f64), on each GEMM: A and B row-major, transposed,
    /// with padded rows, or in strides no BLAS takes (the `gemm` crate runs those); β = 0
    /// writes C without reading it (NaN there stays out), β ≠ 0 accumulates.
    #[test]
    fn every_layout_and_accumulation_match_the_definition() {
        let (m, k, n) = (37, 70, 23);
        // Element (i, j) of a rows × cols operand stored in each layout: (data, rs, cs).
        let store = |rows: usize, cols: usize, f: &dyn Fn(usize, usize) -> f32| {
            let row_major: Vec<f32> = (0..rows * cols).map(|x| f(x / cols, x % cols)).collect();
            let col_major: Vec<f32> = (0..rows * cols).map(|x| f(x % rows, x / rows)).collect();
            let pad = cols + 5;
            let padded: Vec<f32> = (0..rows * pad)
                .map(|x| {
                    if x % pad < cols {
                        f(x / pad, x % pad)
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            // Every other element: strides (2·cols, 2), neither of them 1.
            let sparse: Vec<f32> = (0..rows * cols * 2)
                .map(|x| {
                    if x % 2 == 0 {
                        f((x / 2) / cols, (x / 2) % cols)
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            vec![
                (row_major, cols as isize, 1),
                (col_major, 1, rows as isize),
                (padded, pad as isize, 1),
                (sparse, 2 * cols as isize, 2),
            ]
        };
        let fa = |i: usize, p: usize| ((i * 7 + p * 3) % 13) as f32 * 0.25 - 1.5;
        let fb = |p: usize, j: usize| ((p * 5 + j * 11) % 17) as f32 * 0.125 - 1.0;
        let old = |i: usize, j: usize| (i + 2 * j) as f32 * 0.5;
        for (name, blas) in each_gemm() {
            for (a, rsa, csa) in store(m, k, &fa) {
                for (b, rsb, csb) in store(k, n, &fb) {
                    for beta in [0.0f32, 0.5] {
                        let mut c: Vec<f32> = (0..m * n)
                            .map(|x| {
                                if beta == 0.0 {
                                    f32::NAN
                                } else {
                                    old(x / n, x % n)
                                }
                            })
                            .collect();
                        // SAFETY: each operand's strides address its own vector.
                        unsafe {
                            product(
                                blas.as_ref(),
                                Call {
                                    dims: (m, k, n),
                                    alpha: 2.0,
                                    a: (a.as_ptr(), rsa, csa),
                                    b: (b.as_ptr(), rsb, csb),
                                    beta,
                                    c: (c.as_mut_ptr(), n as isize, 1),
                                },
                            )
                        };
                        for (x, got) in c.iter().enumerate() {
                            let (i, j) = (x / n, x % n);
                            let dot: f64 = (0..k)
                                .map(|p| f64::from(fa(i, p)) * f64::from(fb(p, j)))
                                .sum();
                            let mut want = 2.0 * dot;
                            if beta != 0.0 {
                                want += f64::from(beta) * f64::from(old(i, j));
                            }
                            let strides = ((rsa, csa), (rsb, csb), beta);
                            assert!(
                                (f64::from(*got) - want).abs() < 1e-3,
                                "{name} {strides:?}: C[{i}, {j}] = {got}, expected {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
