//! OpenBLAS's `cblas_sgemm`, loaded at run time (`dlopen`), so that a plain `cargo build`
//! needs nothing from the system and a machine with Debian's `libopenblas0` (what `cargo xtask`
//! installs) gets its kernels. On an AVX2 EPYC (Zen 3) its Haswell kernel multiplies the
//! model's shapes 15–40 % faster than the `gemm` crate (docs/performance.md, "Per CPU family").
//!
//! It runs single-threaded (`openblas_set_num_threads(1)`): the callers split rows over rayon,
//! and a fixed thread count keeps every result's bits the same from process to process.

use std::ffi::{CStr, c_char, c_int, c_void};

/// `cblas_sgemm(layout, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// A loaded OpenBLAS: its `cblas_sgemm` and what it says it is.
pub(crate) struct OpenBlas {
    sgemm: SgemmFn,
    /// `openblas_get_config()` and `openblas_get_corename()`, e.g. `OpenBLAS 0.3.21 DYNAMIC_ARCH
    /// NO_AFFINITY Zen MAX_THREADS=64 (kernel zen)`.
    pub(crate) name: String,
}

/// The file names tried, in order: the versioned runtime library first (all a Debian
/// `libopenblas0-*` package installs), then the development link.
const LIBRARIES: [&CStr; 2] = [c"libopenblas.so.0", c"libopenblas.so"];

impl OpenBlas {
    /// Load OpenBLAS and fix it at one thread; the error says what was missing.
    #[cfg(unix)]
    pub(crate) fn load() -> Result<Self, String> {
        let handle = LIBRARIES
            .iter()
            // SAFETY: a NUL-terminated name; the handle is never closed (the library stays
            // loaded for the process, as the function pointers taken from it require).
            .map(|name| unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) })
            .find(|h| !h.is_null())
            .ok_or_else(|| {
                format!(
                    "no OpenBLAS library ({}) on the loader's path",
                    LIBRARIES.map(|n| n.to_string_lossy()).join(", ")
                )
            })?;
        // SAFETY: `handle` is a live library handle and `name` NUL-terminated.
        let symbol = |name: &CStr| unsafe { libc::dlsym(handle, name.as_ptr()) };
        let sgemm = symbol(c"cblas_sgemm");
        let set_threads = symbol(c"openblas_set_num_threads");
        if sgemm.is_null() || set_threads.is_null() {
            return Err(
                "the OpenBLAS library has no cblas_sgemm / openblas_set_num_threads".into(),
            );
        }
        // SAFETY: OpenBLAS's documented signatures (cblas.h).
        let (sgemm, set_threads) = unsafe {
            (
                std::mem::transmute::<*mut c_void, SgemmFn>(sgemm),
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int)>(set_threads),
            )
        };
        // SAFETY: a plain call; it sets the count every later call runs with.
        unsafe { set_threads(1) };
        let text = |name: &CStr| {
            let f = symbol(name);
            if f.is_null() {
                return None;
            }
            // SAFETY: both getters return a static NUL-terminated string (cblas.h).
            unsafe {
                let f =
                    std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const c_char>(f);
                let s = f();
                (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().trim().to_string())
            }
        };
        let config = text(c"openblas_get_config").unwrap_or_else(|| "OpenBLAS".into());
        let name = match text(c"openblas_get_corename") {
            Some(core) => format!("{config} (kernel {core})"),
            None => config,
        };
        Ok(Self { sgemm, name })
    }

    /// Not on this platform: the built-in GEMM runs.
    #[cfg(not(unix))]
    pub(crate) fn load() -> Result<Self, String> {
        Err("OpenBLAS is loaded on Unix only".into())
    }

    /// `C (m×n) = α · A (m×k) · B (k×n) + β · C` as [`super::sgemm`]; `false` (nothing done)
    /// when an operand's strides are not a BLAS layout (neither stride 1, negative, or too
    /// large for a 32-bit BLAS), so the caller runs the built-in GEMM.
    ///
    /// # Safety
    /// As [`super::sgemm`].
    pub(crate) unsafe fn try_sgemm(&self, call: super::Call) -> bool {
        let super::Call {
            dims: (m, k, n),
            alpha,
            a,
            b,
            beta,
            c,
        } = call;
        let fits = |v: usize| c_int::try_from(v).is_ok();
        if m == 0 || n == 0 || k == 0 || !fits(m) || !fits(n) || !fits(k) {
            return false;
        }
        let (Some((ta, lda)), Some((tb, ldb)), Some((NO_TRANS, ldc))) = (
            layout(a.1, a.2, m, k),
            layout(b.1, b.2, k, n),
            layout(c.1, c.2, m, n),
        ) else {
            return false;
        };
        // SAFETY: the layouts address exactly the caller's elements (see `layout`), which the
        // caller guarantees valid; the dimensions fit a C int.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR, ta, tb, m as c_int, n as c_int, k as c_int, alpha, a.0, lda, b.0, ldb,
                beta, c.0, ldc,
            )
        };
        true
    }
}

/// A `rows × cols` operand with `(row, column)` strides as a row-major BLAS operand: not
/// transposed with leading dimension `ld` (element `(i, j)` at `i·ld + j`), or transposed
/// (at `j·ld + i`). A stride of a dimension of length 1 is never used, so it may be anything.
fn layout(rs: isize, cs: isize, rows: usize, cols: usize) -> Option<(c_int, c_int)> {
    let ld = |stride: isize, len: usize, other: usize| {
        let ld = if other == 1 { len as isize } else { stride };
        (ld >= len.max(1) as isize)
            .then(|| c_int::try_from(ld).ok())
            .flatten()
    };
    let plain = (cs == 1 || cols == 1).then(|| ld(rs, cols, rows)).flatten();
    let transposed = || (rs == 1 || rows == 1).then(|| ld(cs, rows, cols)).flatten();
    plain
        .map(|ld| (NO_TRANS, ld))
        .or_else(|| transposed().map(|ld| (TRANS, ld)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_map_to_blas_layouts_or_to_none() {
        // Row-major, padded rows, transposed, padded transposed.
        assert_eq!(layout(8, 1, 4, 8), Some((NO_TRANS, 8)));
        assert_eq!(layout(10, 1, 4, 8), Some((NO_TRANS, 10)));
        assert_eq!(layout(1, 4, 4, 8), Some((TRANS, 4)));
        assert_eq!(layout(1, 6, 4, 8), Some((TRANS, 6)));
        // One row or one column: the unused stride is anything.
        assert_eq!(layout(0, 1, 1, 8), Some((NO_TRANS, 8)));
        assert_eq!(layout(3, 99, 5, 1), Some((NO_TRANS, 3)));
        // Rows overlapping, negative or neither stride 1: not a BLAS layout.
        assert_eq!(layout(4, 1, 4, 8), None);
        assert_eq!(layout(-8, 1, 4, 8), None);
        assert_eq!(layout(16, 2, 4, 8), None);
    }
}
