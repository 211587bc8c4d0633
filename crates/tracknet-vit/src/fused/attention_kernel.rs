//! `softmax(q·kᵀ/√d)·v` and its backward on the host, per (batch, head) in parallel, with the
//! matmuls through the strided host GEMM (`tracknet_quant::gemm`).
//!
//! The GEMM reads q, k, v (and the output gradient) through their strides, so the
//! `[batch, tokens, heads, head_dim]` memory that `split_heads` views as
//! `[batch, heads, tokens, head_dim]` is used in place, and the results are written back in
//! that `[batch, tokens, heads, head_dim]` order — the layout the caller's swap + reshape to
//! `[batch, tokens, hidden]` wants, so neither direction copies. Probabilities live in one
//! `[tokens, tokens]` scratch per (batch, head) task and are recomputed in the backward.

use rayon::prelude::*;

/// A strided read-only `[batch, heads, tokens, head_dim]` view of f32 data that outlives the
/// kernel call.
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub shape: [usize; 4],
    pub strides: [isize; 4],
}

// SAFETY: the kernels only read through `ptr`, and the caller keeps the data alive and
// unmodified for the call.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// First element of the `(b, h)` matrix.
    fn at(&self, b: usize, h: usize) -> *const f32 {
        // SAFETY: b < shape[0], h < shape[1], so the offset stays inside the viewed data.
        unsafe {
            self.ptr
                .offset(b as isize * self.strides[0] + h as isize * self.strides[1])
        }
    }
}

/// A writable `[batch, tokens, heads, head_dim]` buffer shared by the tasks; each task writes
/// only its own (b, h) rows.
#[derive(Clone, Copy)]
struct Out(*mut f32);

// SAFETY: tasks write disjoint (batch, head) slices.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn at(self, b: usize, h: usize, [_, heads, tokens, d]: [usize; 4]) -> *mut f32 {
        // SAFETY: inside the buffer of batch · tokens · heads · d elements.
        unsafe { self.0.add((b * tokens * heads + h) * d) }
    }
}

/// `C = α · A · B` (`A: m×k`, `B: k×n`) with arbitrary strides.
///
/// # Safety
/// The pointers with these sizes and strides address valid memory; `c` is writable and not
/// aliased by `a` or `b`.
unsafe fn gemm(
    dims: (usize, usize, usize),
    alpha: f32,
    a: (*const f32, isize, isize),
    b: (*const f32, isize, isize),
    c: (*mut f32, isize, isize),
) {
    // SAFETY: forwarded from the caller.
    unsafe { tracknet_quant::gemm::sgemm(dims, alpha, a, b, 0.0, c) }
}

/// `P = softmax(scale · Q Kᵀ)` of pair (b, h) into `p` (`[tq, tk]`, row-major).
fn probs(q: &View, k: &View, b: usize, h: usize, scale: f32, p: &mut [f32]) {
    let (tq, tk, d) = (q.shape[2], k.shape[2], q.shape[3]);
    // SAFETY: the views are valid for the call; `p` holds tq · tk elements.
    unsafe {
        gemm(
            (tq, d, tk),
            scale,
            (q.at(b, h), q.strides[2], q.strides[3]),
            (k.at(b, h), k.strides[3], k.strides[2]),
            (p.as_mut_ptr(), tk as isize, 1),
        );
    }
    for row in p.chunks_exact_mut(tk) {
        super::kernels::wide(
            #[inline(always)]
            || softmax_row(row),
        );
    }
}

/// `row = softmax(row)` in place: the max and the f64 sum over 16 lanes (so that they
/// vectorize; the lane order is fixed, so the result is deterministic), the exponentials by
/// [`super::kernels::exp`].
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = chunks.remainder().iter().copied().fold(
        lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        f32::max,
    );
    row.iter_mut()
        .for_each(|x| *x = super::kernels::exp(*x - max));
    let mut sums = [0f64; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (s, &x) in sums.iter_mut().zip(c) {
            *s += f64::from(x);
        }
    }
    let sum = sums.iter().sum::<f64>()
        + chunks
            .remainder()
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>();
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|x| *x *= inv);
}

fn out_len(v: &View) -> usize {
    v.shape.iter().product()
}

/// The attention output in `[batch, tokens, heads, head_dim]` order.
pub fn forward(q: &View, k: &View, v: &View) -> Vec<f32> {
    let [bn, hn, tq, d] = q.shape;
    let tk = k.shape[2];
    let scale = (d as f32).powf(-0.5);
    let mut out = vec![0f32; bn * tq * hn * d];
    let o = Out(out.as_mut_ptr());
    (0..bn * hn).into_par_iter().for_each(|pair| {
        let (b, h) = (pair / hn, pair % hn);
        let mut p = vec![0f32; tq * tk];
        probs(q, k, b, h, scale, &mut p);
        // SAFETY: disjoint rows of `out` per pair; views valid for the call.
        unsafe {
            gemm(
                (tq, tk, d),
                1.0,
                (p.as_ptr(), tk as isize, 1),
                (v.at(b, h), v.strides[2], v.strides[3]),
                (o.at(b, h, q.shape), (hn * d) as isize, 1),
            );
        }
    });
    out
}

/// `(dq, dk, dv)`, each in `[batch, tokens, heads, head_dim]` order, `None` where not needed.
pub fn backward(
    q: &View,
    k: &View,
    v: &View,
    dout: &View,
    need: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let [bn, hn, tq, d] = q.shape;
    let tk = k.shape[2];
    let scale = (d as f32).powf(-0.5);
    let mut dq = need[0].then(|| vec![0f32; out_len(q)]);
    let mut dk = need[1].then(|| vec![0f32; out_len(k)]);
    let mut dv = need[2].then(|| vec![0f32; out_len(v)]);
    let ptr = |g: &mut Option<Vec<f32>>| g.as_mut().map(|g| Out(g.as_mut_ptr()));
    let (oq, ok, ov) = (ptr(&mut dq), ptr(&mut dk), ptr(&mut dv));
    let dstride = (hn * d) as isize;
    (0..bn * hn).into_par_iter().for_each(|pair| {
        let (b, h) = (pair / hn, pair % hn);
        let mut p = vec![0f32; tq * tk];
        probs(q, k, b, h, scale, &mut p);
        let g = (dout.at(b, h), dout.strides[2], dout.strides[3]);
        // SAFETY (every gemm below): views valid for the call, each pair writes only its own
        // rows of the gradient buffers, scratch buffers sized tq · tk.
        if let Some(ov) = ov {
            // dV = Pᵀ · dO
            unsafe {
                gemm(
                    (tk, tq, d),
                    1.0,
                    (p.as_ptr(), 1, tk as isize),
                    g,
                    (ov.at(b, h, v.shape), dstride, 1),
                );
            }
        }
        if oq.is_none() && ok.is_none() {
            return;
        }
        // dP = dO · Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale in place.
        let mut ds = vec![0f32; tq * tk];
        unsafe {
            gemm(
                (tq, d, tk),
                1.0,
                g,
                (v.at(b, h), v.strides[3], v.strides[2]),
                (ds.as_mut_ptr(), tk as isize, 1),
            );
        }
        for (ds, p) in ds.chunks_exact_mut(tk).zip(p.chunks_exact(tk)) {
            let r: f64 = ds
                .iter()
                .zip(p)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let r = r as f32;
            for (ds, &p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - r) * scale;
            }
        }
        if let Some(oq) = oq {
            // dQ = dS · K
            unsafe {
                gemm(
                    (tq, tk, d),
                    1.0,
                    (ds.as_ptr(), tk as isize, 1),
                    (k.at(b, h), k.strides[2], k.strides[3]),
                    (oq.at(b, h, q.shape), dstride, 1),
                );
            }
        }
        if let Some(ok) = ok {
            // dK = dSᵀ · Q
            unsafe {
                gemm(
                    (tk, tq, d),
                    1.0,
                    (ds.as_ptr(), 1, tk as isize),
                    (q.at(b, h), q.strides[2], q.strides[3]),
                    (ok.at(b, h, k.shape), dstride, 1),
                );
            }
        }
    });
    [dq, dk, dv]
}

/// 2-D RoPE on the last `cos.len() / d` tokens of `x` (`[batch, heads, tokens, d]`, strided),
/// written in `[batch, tokens, heads, d]` order: `y = x · cos + rot(x) · sin` with
/// `rot(x1, x2) = (−x2, x1)` (halves of the head dimension); the leading tokens are copied.
/// With `transpose`, the adjoint: `x · cos + rotᵀ(x · sin)`, `rotᵀ(g1, g2) = (g2, −g1)`.
pub fn rope(x: &View, cos: &[f32], sin: &[f32], transpose: bool) -> Vec<f32> {
    let [bn, hn, t, d] = x.shape;
    let patches = cos.len() / d;
    let prefix = t - patches;
    let half = d / 2;
    let mut out = vec![0f32; bn * t * hn * d];
    out.par_chunks_mut(hn * d)
        .enumerate()
        .for_each(|(bt, out)| {
            let (b, tok) = (bt / t, bt % t);
            for (h, y) in out.chunks_exact_mut(d).enumerate() {
                // SAFETY: (b, h, tok, j) is inside the view for j < d.
                let at = |j: usize| unsafe {
                    *x.at(b, h)
                        .offset(tok as isize * x.strides[2] + j as isize * x.strides[3])
                };
                if tok < prefix {
                    y.iter_mut().enumerate().for_each(|(j, y)| *y = at(j));
                    continue;
                }
                let p = (tok - prefix) * d;
                let (c, s) = (&cos[p..p + d], &sin[p..p + d]);
                for j in 0..half {
                    let (x1, x2) = (at(j), at(j + half));
                    if transpose {
                        y[j] = x1 * c[j] + x2 * s[j + half];
                        y[j + half] = x2 * c[j + half] - x1 * s[j];
                    } else {
                        y[j] = x1 * c[j] - x2 * s[j];
                        y[j + half] = x2 * c[j + half] + x1 * s[j + half];
                    }
                }
            }
        });
    out
}
