//! The decoder's convolutions: depthwise 3×3 and pointwise (1×1, a GEMM per image, rows
//! split over threads), forward and backward.

use rayon::prelude::*;

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
