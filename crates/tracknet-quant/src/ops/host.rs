//! [`QuantBackend`] for NdArray: the 4-bit matmul, the dense linear and LoRA's update on the
//! host GEMM (`crate::gemm`), rows split over rayon tasks, reading f32 tensors in place where
//! they are contiguous.

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::ops::{FloatTensor, IntTensor};

use super::{Q4Layout, Q4Weight, QuantBackend, dequantize_range, host_vec};

/// A 4-bit weight's tensors on NdArray, read in place (the codes are 1/8 of the f32 size).
struct HostQ4 {
    packed: IntTensor<NdArray>,
    absmax: FloatTensor<NdArray>,
    code: FloatTensor<NdArray>,
}

impl HostQ4 {
    fn new(weight: Q4Weight<NdArray>) -> Self {
        Self {
            packed: weight.packed,
            absmax: weight.absmax,
            code: weight.code,
        }
    }

    /// Output rows `r0 .. r1` of the weight, `[r1 - r0, in]` row-major.
    fn rows_host(&self, layout: Q4Layout, r0: usize, r1: usize) -> Vec<f32> {
        dequantize_range(
            &host_i32(&self.packed),
            &host_f32(&self.absmax),
            &host_f32(&self.code),
            layout.blocksize,
            r0 * layout.in_features,
            (r1 - r0) * layout.in_features,
        )
    }

    /// Output rows `r0 .. r1` of the weight as a `[r1 - r0, in]` tensor.
    fn rows(&self, layout: Q4Layout, r0: usize, r1: usize) -> Tensor<NdArray, 2> {
        let vals = self.rows_host(layout, r0, r1);
        Tensor::from_data(
            TensorData::new(vals, [r1 - r0, layout.in_features]),
            &Default::default(),
        )
    }
}

/// Output rows per chunk so that a dequantized chunk stays around 1 Mi weights (4 MiB): the
/// full f32 weight never exists, forward or backward.
fn chunk_rows(layout: Q4Layout) -> usize {
    ((1usize << 20) / layout.in_features.max(1)).clamp(1, layout.out_features.max(1))
}

impl QuantBackend for NdArray {
    fn q4_supports(_: &Self::Device, _: burn::tensor::DType) -> bool {
        false
    }

    fn q4_dequantize(weight: Q4Weight<Self>, layout: Q4Layout) -> FloatTensor<Self> {
        HostQ4::new(weight)
            .rows(layout, 0, layout.out_features)
            .into_primitive()
            .tensor()
    }

    fn q4_matmul(
        x: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        let host = HostQ4::new(weight);
        let x = host_f32(&x);
        let (k, n) = (layout.in_features, layout.out_features);
        let rows = x.len() / k.max(1);
        let mut y = vec![0f32; rows * n];
        for r0 in (0..n).step_by(chunk_rows(layout)) {
            let r1 = (r0 + chunk_rows(layout)).min(n);
            let w = host.rows_host(layout, r0, r1); // [r1 - r0, in]
            // y[:, r0..r1] = x · wᵀ
            let w_t = Chunk {
                b: &w,
                strides: (1, k),
                n: r1 - r0,
            };
            row_parallel_gemm_with(
                crate::gemm::sgemm,
                &x,
                k,
                k,
                w_t,
                &mut y,
                (n, r0),
                (1.0, 0.0),
            );
        }
        owned_f32(y, [rows, n])
    }

    fn q4_matmul_grad(
        grad: FloatTensor<Self>,
        weight: Q4Weight<Self>,
        layout: Q4Layout,
    ) -> FloatTensor<Self> {
        let host = HostQ4::new(weight);
        let (k, n) = (layout.in_features, layout.out_features);
        let grad = host_f32(&grad);
        let rows = grad.len() / n.max(1);
        let mut dx = vec![0f32; rows * k];
        for r0 in (0..n).step_by(chunk_rows(layout)) {
            let r1 = (r0 + chunk_rows(layout)).min(n);
            let w = host.rows_host(layout, r0, r1); // [r1 - r0, in]
            // dx += grad[:, r0..r1] · w
            let g = &grad[r0..];
            let w = Chunk {
                b: &w,
                strides: (k, 1),
                n: k,
            };
            row_parallel_gemm_with(
                crate::gemm::sgemm,
                g,
                n,
                r1 - r0,
                w,
                &mut dx,
                (k, 0),
                (1.0, 1.0),
            );
        }
        owned_f32(dx, [rows, k])
    }

    fn q4_decode_absmax(
        q: IntTensor<Self>,
        nested: FloatTensor<Self>,
        offset: FloatTensor<Self>,
        map: FloatTensor<Self>,
        nested_blocksize: usize,
        n: usize,
    ) -> FloatTensor<Self> {
        if !all_f32([&nested, &offset, &map]) {
            return super::decode_absmax_generic::<Self>(
                q,
                nested,
                offset,
                map,
                nested_blocksize,
                n,
            );
        }
        let (words, nested, map) = (host_i32(&q), host_f32(&nested), host_f32(&map));
        let offset = host_f32(&offset).first().copied().unwrap_or(0.0);
        let nb = nested_blocksize.max(1);
        // The generic ops' order: the product rounded, then the offset added.
        let out: Vec<f32> = (0..n)
            .map(|i| {
                let code = ((words[i / 4] as u32) >> (24 - 8 * (i % 4) as u32)) & 0xFF;
                map[code as usize] * nested[i / nb] + offset
            })
            .collect();
        owned_f32_dims(out, &[n])
    }

    fn host_dense() -> bool {
        true
    }

    fn dense_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        use burn::tensor::TensorMetadata;
        if !all_f32([&x, &w, &bias]) {
            return crate::dense::composed::<Self>(x, w, bias);
        }
        let mut dims = x.shape().to_vec();
        let (k, n) = (w.shape()[0], w.shape()[1]);
        let (xs, bs) = (host_f32(&x), host_f32(&bias));
        let (ws, (rs, cs)) = weight_2d(&w);
        let rows = xs.len() / k.max(1);
        let mut y = vec![0f32; rows * n];
        for row in y.chunks_exact_mut(n.max(1)) {
            row.copy_from_slice(&bs);
        }
        row_parallel_gemm(&xs, k, &ws, (rs, cs), n, &mut y, (n, 0), 1.0);
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        owned_f32_dims(y, &dims)
    }

    fn dense_linear_backward(
        x: Option<FloatTensor<Self>>,
        w: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need: [bool; 3],
    ) -> crate::dense::DenseGrads<Self> {
        use burn::tensor::TensorMetadata;
        if !all_f32(x.as_ref().into_iter().chain([&w, &grad])) {
            return crate::dense::composed_backward::<Self>(x, w, grad, need);
        }
        let (k, n) = (w.shape()[0], w.shape()[1]);
        let dy = host_f32(&grad);
        let rows = dy.len() / n.max(1);
        // dx = dy · Wᵀ, rows split over rayon; the weight through its strides.
        let dx = need[0].then(|| {
            let (ws, (rs, cs)) = weight_2d(&w);
            let mut dx = vec![0f32; rows * k];
            row_parallel_gemm(&dy, n, &ws, (cs, rs), k, &mut dx, (k, 0), 0.0);
            let mut dims = grad.shape().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = k;
            }
            owned_f32_dims(dx, &dims)
        });
        // dW = xᵀ · dy, the rows of dW (input features) split over rayon. The input is kept
        // only when the weight trains (`x` is then present).
        let dw = match (need[1], x) {
            (true, Some(x)) => {
                let xs = host_f32(&x);
                let mut dw = vec![0f32; k * n];
                transposed_gemm(&xs, rows, k, &dy, n, &mut dw);
                Some(owned_f32(dw, [k, n]))
            }
            _ => None,
        };
        let db = need[2].then(|| {
            let mut db = vec![0f64; n];
            for row in dy.chunks_exact(n.max(1)) {
                db.iter_mut()
                    .zip(row)
                    .for_each(|(s, &v)| *s += f64::from(v));
            }
            owned_f32_dims(db.into_iter().map(|v| v as f32).collect(), &[n])
        });
        [dx, dw, db]
    }

    fn low_rank_forward(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scaling: f32,
        drop: Option<crate::low_rank::DropMask>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        use burn::tensor::TensorMetadata;
        if !all_f32([&y, &x, &a, &b]) {
            return crate::low_rank::composed::<Self>(y, x, a, b, scaling, drop);
        }
        let (k, r, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let xs = host_f32(&x);
        let rows = xs.len() / k.max(1);
        // The dropped input lives only for this call; the backward regenerates the mask.
        let dropped = drop.as_ref().map(|d| {
            let mut v = xs.to_vec();
            d.apply(&mut v);
            v
        });
        let input = dropped.as_deref().unwrap_or(&xs);
        // Both factors in place, through their strides: see `weight_2d`.
        let ((aw, a_st), (bw, b_st)) = (weight_2d(&a), weight_2d(&b));
        let mut t = vec![0f32; rows * r];
        row_parallel_gemm(input, k, &aw, a_st, r, &mut t, (r, 0), 0.0);
        // The update is added into y's own buffer when y is the only owner (the base layer's
        // fresh output, as a step gives it), else into a copy.
        let mut out = into_standard_f32(y);
        let out_rows = out.as_slice_mut().expect("an array in standard layout");
        row_parallel_gemm_scaled(&t, r, r, &bw, b_st, n, out_rows, (n, 0), (scaling, 1.0));
        (
            burn_ndarray::NdArrayTensor::from(out),
            owned_f32(t, [rows, r]),
        )
    }

    fn low_rank_backward(
        x: Option<FloatTensor<Self>>,
        t: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        (scaling, drop): (f32, Option<crate::low_rank::DropMask>),
        x_shape: burn::tensor::Shape,
        need: [bool; 3],
    ) -> crate::dense::DenseGrads<Self> {
        use burn::tensor::TensorMetadata;
        if !all_f32(x.as_ref().into_iter().chain([&t, &a, &b, &grad])) {
            return crate::low_rank::composed_backward::<Self>(
                x,
                t,
                a,
                b,
                grad,
                (scaling, drop),
                x_shape,
                need,
            );
        }
        let (k, r, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let (g, ts) = (host_f32(&grad), host_f32(&t));
        let rows = g.len() / n.max(1);
        let ((aw, a_st), (bw, b_st)) = (weight_2d(&a), weight_2d(&b));
        // dB = s · tᵀ · g
        let db = need[2].then(|| {
            let mut db = vec![0f32; r * n];
            transposed_gemm(&ts, rows, r, &g, n, &mut db);
            db.iter_mut().for_each(|v| *v *= scaling);
            owned_f32(db, [r, n])
        });
        // dt = s · g · Bᵀ, Bᵀ read through B's strides swapped.
        let mut dt = vec![0f32; rows * r];
        row_parallel_gemm_scaled(
            &g,
            n,
            n,
            &bw,
            (b_st.1, b_st.0),
            r,
            &mut dt,
            (r, 0),
            (scaling, 0.0),
        );
        // dA = drop(x)ᵀ · dt, the dropped input recomputed from the mask's stream position.
        let da = match (need[1], x) {
            (true, Some(x)) => {
                let xs = host_f32(&x);
                let dropped = drop.as_ref().map(|d| {
                    let mut v = xs.to_vec();
                    d.apply(&mut v);
                    v
                });
                let input = dropped.as_deref().unwrap_or(&xs);
                let mut da = vec![0f32; k * r];
                transposed_gemm(input, rows, k, &dt, r, &mut da);
                Some(owned_f32(da, [k, r]))
            }
            _ => None,
        };
        // dx = drop'(dt · Aᵀ)
        let dx = need[0].then(|| {
            let mut dx = vec![0f32; rows * k];
            row_parallel_gemm(&dt, r, &aw, (a_st.1, a_st.0), k, &mut dx, (k, 0), 0.0);
            if let Some(d) = &drop {
                d.apply(&mut dx);
            }
            owned_f32_dims(dx, &x_shape.to_vec())
        });
        [dx, da, db]
    }
}

/// `C [k, n] = Aᵀ · B` for `A [rows, k]` and `B [rows, n]`, both row-major: the rows of `C`
/// split over rayon tasks, each one single-threaded GEMM.
fn transposed_gemm(a: &[f32], rows: usize, k: usize, b: &[f32], n: usize, c: &mut [f32]) {
    use rayon::prelude::*;
    if k == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= rows * k && b.len() >= rows * n && c.len() >= k * n);
    let block = balanced_block(k, 16);
    c.par_chunks_mut(block * n).enumerate().for_each(|(i, c)| {
        let m = c.len() / n;
        let k0 = i * block;
        // SAFETY: Aᵀ's m rows are columns k0 .. k0 + m of `a` (strides 1 and k over `rows`
        // rows), B is `rows × n` in `b`, C is this task's m × n block: all inside the slices
        // by the assert above.
        unsafe {
            crate::gemm::sgemm(
                (m, rows, n),
                1.0,
                (a.as_ptr().add(k0), 1, k as isize),
                (b.as_ptr(), n as isize, 1),
                0.0,
                (c.as_mut_ptr(), n as isize, 1),
            )
        }
    });
}

/// Rows per block when `rows` rows are split over rayon for single-threaded GEMMs: at most
/// 256 (a block's A panel stays in cache), at least `min` (so B's packing pays), and as many
/// blocks as a multiple of the threads, of equal size, so that no thread is left running a
/// short tail alone. (Blocks of 256 split 581 rows as 256 + 256 + 69 on two threads: the
/// last block ran on one core while the other waited, ≈ 10 % of the product's time.)
fn balanced_block(rows: usize, min: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let blocks = rows.div_ceil(256).div_ceil(threads) * threads;
    rows.div_ceil(blocks.max(1)).max(min.min(rows)).max(1)
}

/// A weight's elements and its `(row, column)` strides in elements.
type Weight2d<'a> = (std::borrow::Cow<'a, [f32]>, (usize, usize));

/// A 2-D f32 NdArray weight `[k, n]` and its `(row, column)` strides in elements: in place
/// when its elements are one contiguous run, row-major (as a checkpoint loads it or an
/// optimizer step leaves it) or column-major (PyTorch's `[out, in]` row-major, as Hugging Face
/// and PEFT loading view it), copied row-major otherwise. The layout does not change the
/// result's bits: `crate::gemm::sgemm_weight` takes care of that.
fn weight_2d(t: &FloatTensor<NdArray>) -> Weight2d<'_> {
    use burn_ndarray::NdArrayTensor;
    if let NdArrayTensor::F32(storage) = t {
        let view = storage.view();
        if view.ndim() == 2 {
            let (k, n) = (view.shape()[0], view.shape()[1]);
            let strides = match view.strides() {
                _ if k * n <= 1 => Some((n, 1)),
                [1, s] if *s == k as isize => Some((1, k)),
                [s, 1] if *s == n as isize => Some((n, 1)),
                _ => None,
            };
            if let Some(strides) = strides {
                // SAFETY: strides (1, k) or (n, 1) over k × n elements: exactly k·n consecutive
                // f32 from the first element, owned by the storage `t` keeps alive.
                let data = unsafe { std::slice::from_raw_parts(view.as_ptr(), k * n) };
                return (std::borrow::Cow::Borrowed(data), strides);
            }
            return (view.iter().copied().collect(), (n, 1));
        }
    }
    let t = Tensor::<NdArray, 2>::from_primitive(TensorPrimitive::Float(t.clone()));
    let n = t.dims()[1];
    (
        std::borrow::Cow::Owned(host_vec::<f32>(t.into_data())),
        (n, 1),
    )
}

/// An f32 NdArray tensor as a row-major (standard layout) array: its own buffer when it is
/// one (owned, in standard layout), a copy otherwise. Writing through `as_slice_mut` copies
/// first only while another tensor shares the buffer.
fn into_standard_f32(t: FloatTensor<NdArray>) -> ndarray::ArcArray<f32, ndarray::IxDyn> {
    use burn::tensor::TensorMetadata;
    match t {
        burn_ndarray::NdArrayTensor::F32(storage) => {
            let array = storage.into_owned();
            if array.is_standard_layout() {
                array
            } else {
                array.as_standard_layout().into_owned().into_shared()
            }
        }
        other => {
            let dims = other.shape().to_vec();
            let data = host_f32(&other).into_owned();
            ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(&dims), data)
                .expect("a tensor's elements fill its shape")
        }
    }
}

/// Whether every tensor is f32, the host kernels' only type (otherwise the composed ops run).
fn all_f32<'a>(ts: impl IntoIterator<Item = &'a FloatTensor<NdArray>>) -> bool {
    ts.into_iter()
        .all(|t| matches!(t, burn_ndarray::NdArrayTensor::F32(_)))
}

/// An f32 NdArray tensor of `dims` owning `data` (no copy).
fn owned_f32_dims(data: Vec<f32>, dims: &[usize]) -> FloatTensor<NdArray> {
    let array = ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(dims), data)
        .expect("the GEMM output has its shape's length");
    burn_ndarray::NdArrayTensor::from(array)
}

/// An NdArray float tensor's elements in row-major order as f32: in place when it is a
/// contiguous f32 array (no copy of the activation), gathered otherwise.
fn host_f32(t: &FloatTensor<NdArray>) -> std::borrow::Cow<'_, [f32]> {
    use burn_ndarray::NdArrayTensor;
    if let NdArrayTensor::F32(storage) = t {
        let view = storage.view();
        if let Some(s) = view.to_slice() {
            return std::borrow::Cow::Borrowed(s);
        }
        return std::borrow::Cow::Owned(view.iter().copied().collect());
    }
    let t = Tensor::<NdArray, 1>::from_primitive(TensorPrimitive::Float(t.clone()));
    std::borrow::Cow::Owned(host_vec::<f32>(t.flatten::<1>(0, 0).into_data()))
}

/// The packed words as i32: in place when NdArray holds them as contiguous i32, converted
/// element by element otherwise (its default int type is i64).
fn host_i32(t: &IntTensor<NdArray>) -> std::borrow::Cow<'_, [i32]> {
    use burn_ndarray::NdArrayTensor;
    match t {
        NdArrayTensor::I32(storage) => {
            let view = storage.view();
            match view.to_slice() {
                Some(s) => std::borrow::Cow::Borrowed(s),
                None => std::borrow::Cow::Owned(view.iter().copied().collect()),
            }
        }
        // The words are 32-bit patterns stored widened: truncation gives them back.
        NdArrayTensor::I64(storage) => {
            std::borrow::Cow::Owned(storage.view().iter().map(|&w| w as i32).collect())
        }
        other => {
            let t = Tensor::<NdArray, 1, Int>::from_primitive(other.clone());
            std::borrow::Cow::Owned(host_vec::<i32>(t.flatten::<1>(0, 0).into_data()))
        }
    }
}

/// A `[rows, cols]` f32 NdArray tensor owning `data` (no copy).
fn owned_f32(data: Vec<f32>, shape: [usize; 2]) -> FloatTensor<NdArray> {
    let array = ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(&shape), data)
        .expect("the GEMM output has its shape's length");
    burn_ndarray::NdArrayTensor::from(array)
}

/// `C[:, c0 .. c0 + n] = A · B + β · C[:, c0 .. c0 + n]` with `A: [rows, k]` contiguous, `B`
/// (`k × n`) by its `(row, column)` strides and `C` rows of `ldc` elements; the rows are split
/// over rayon tasks, each one single-threaded GEMM (the cores are shared with the training
/// step's shards; see `tracknet_train::backend::single_threaded_host_gemm`).
#[allow(clippy::too_many_arguments)]
fn row_parallel_gemm(
    a: &[f32],
    k: usize,
    b: &[f32],
    b_strides: (usize, usize),
    n: usize,
    c: &mut [f32],
    (ldc, c0): (usize, usize),
    beta: f32,
) {
    row_parallel_gemm_scaled(a, k, k, b, b_strides, n, c, (ldc, c0), (1.0, beta))
}

/// `C[:, c0 .. c0 + n] = α · A · B + β · C[:, c0 .. c0 + n]`, otherwise as
/// [`row_parallel_gemm`]: `A`'s rows `lda` elements apart (its first `k` columns used), `B`
/// a weight (its layout does not change the bits: `crate::gemm::sgemm_weight`).
#[allow(clippy::too_many_arguments)]
fn row_parallel_gemm_scaled(
    a: &[f32],
    lda: usize,
    k: usize,
    b: &[f32],
    strides: (usize, usize),
    n: usize,
    c: &mut [f32],
    c_cols: (usize, usize),
    alpha_beta: (f32, f32),
) {
    let b = Chunk { b, strides, n };
    row_parallel_gemm_with(
        crate::gemm::sgemm_weight,
        a,
        lda,
        k,
        b,
        c,
        c_cols,
        alpha_beta,
    )
}

/// `B` of a product: `k × n` elements by their `(row, column)` strides.
struct Chunk<'a> {
    b: &'a [f32],
    strides: (usize, usize),
    n: usize,
}

/// The GEMM function a product runs: `sgemm_weight` for a weight, whose bits must not depend
/// on how it was loaded, plain `sgemm` for the 4-bit path's freshly dequantized chunks (always
/// the same layout, and a copy for one row would cost more than the product).
type Gemm = unsafe fn(
    (usize, usize, usize),
    f32,
    crate::gemm::Operand<*const f32>,
    crate::gemm::Operand<*const f32>,
    f32,
    crate::gemm::Operand<*mut f32>,
);

/// [`row_parallel_gemm_scaled`] with the GEMM function given.
#[allow(clippy::too_many_arguments)]
fn row_parallel_gemm_with(
    gemm: Gemm,
    a: &[f32],
    lda: usize,
    k: usize,
    Chunk {
        b,
        strides: (rsb, csb),
        n,
    }: Chunk<'_>,
    c: &mut [f32],
    (ldc, c0): (usize, usize),
    (alpha, beta): (f32, f32),
) {
    use rayon::prelude::*;
    let rows = c.len() / ldc.max(1);
    if rows == 0 || n == 0 {
        return;
    }
    assert!(c0 + n <= ldc && (rows - 1) * lda + k <= a.len().max(k));
    assert!(k == 0 || (k - 1) * rsb + (n - 1) * csb < b.len());
    let block = balanced_block(rows, 64);
    c.par_chunks_mut(block * ldc)
        .enumerate()
        .for_each(|(i, c)| {
            let m = c.len() / ldc;
            let a = &a[i * block * lda..];
            // SAFETY: the asserts bound every access: A's m rows of k within `a`, B's k × n by
            // its strides within `b`, C's m rows of n columns from c0 within this task's `c`.
            unsafe {
                gemm(
                    (m, k, n),
                    alpha,
                    (a.as_ptr(), lda as isize, 1),
                    (b.as_ptr(), rsb as isize, csb as isize),
                    beta,
                    (c.as_mut_ptr().add(c0), ldc as isize, 1),
                )
            }
        });
}

#[cfg(test)]
mod tests {
    /// On two threads, blocks come in pairs of equal size, at most 256 rows, at least the
    /// minimum: the model's 581 and 1162 token rows, a weight gradient's 1152 and 1536.
    #[test]
    fn rows_split_into_equal_blocks_a_multiple_of_the_threads() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            for (rows, min, block, blocks) in [
                (581, 64, 146, 4),
                (1162, 64, 194, 6),
                (1152, 16, 192, 6),
                (1536, 16, 256, 6),
                (384, 16, 192, 2),
                (100, 64, 64, 2),
                (40, 64, 40, 1),
            ] {
                let b = super::balanced_block(rows, min);
                assert_eq!((b, rows.div_ceil(b)), (block, blocks), "{rows} rows");
            }
        });
    }
}
