//! The 4-bit dequantizer as one CubeCL kernel, for the CubeCL backends (wgpu, CUDA).
//!
//! Why: the generic tensor-op dequantizer (`ops::dequantize_generic`) unpacks through expanded
//! word, shift and code tensors — several full-size temporaries and a handful of launches per
//! 4-bit matmul, forward and backward. This kernel reads the packed words, the absmax and the
//! code book and writes the dense `[out, in]` weight once: one thread per weight, one launch.
//! It is what bitsandbytes' `dequantize_4bit` kernel does before its matmul.
//!
//! For a few rows (inference, a frame at a time) the dense weight is not worth writing at all:
//! [`dequant_matmul`] and [`dequant_matmul_grad`] decode each code where they multiply it, as
//! bitsandbytes' `gemv_4bit` does for a batch of one. For many rows (training batches) a tiled
//! matmul reuses each weight across rows and wins, so [`crate::FUSED_MAX_ROWS`] picks the path, as
//! bitsandbytes' `matmul_4bit` does.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// `out[e] = code[nibble(e)] · absmax[e / blocksize]`; element `8j + i` sits in bits
/// `28 - 4i .. 32 - 4i` of word `j` (bitsandbytes' byte and nibble order).
#[cube(launch)]
fn dequant4_kernel(
    packed: &Array<i32>,
    absmax: &Array<f32>,
    code: &Array<f32>,
    output: &mut Array<f32>,
    numel: usize,
    blocksize: usize,
) {
    let e = ABSOLUTE_POS;
    if e >= numel {
        terminate!();
    }
    let word = packed[e / 8];
    let shift = 28i32 - 4i32 * ((e % 8) as i32);
    // An arithmetic shift of a negative word sign-extends; the mask keeps the four code bits.
    let nibble = (word >> shift) & 15i32;
    output[e] = code[nibble as usize] * absmax[e / blocksize];
}

/// The weight `W[o, i]` of element `e = o·in + i` (its nibble times its block's absmax, in
/// f32) rounded to the compute dtype `F` and back to f32: the weight the dequantize-then-cast
/// path multiplies (bitsandbytes decodes into the compute dtype too).
#[cube]
fn weight_in<F: Float>(
    packed: &Array<i32>,
    absmax: &Array<f32>,
    code: &Array<f32>,
    e: usize,
    blocksize: usize,
) -> f32 {
    let word = packed[e / 8];
    let shift = 28i32 - 4i32 * ((e % 8) as i32);
    let nibble = (word >> shift) & 15i32;
    f32::cast_from(F::cast_from(code[nibble as usize] * absmax[e / blocksize]))
}

/// Rows one thread of the fused kernels multiplies: each decoded weight is used this many times.
const ROW_TILE: usize = 8;

/// `output[r, c] = Σ_k input[r, k] · W(c, k)` with `W(c, k)` the weight element
/// `c·col_stride + k·inner_stride`: the forward `x · Wᵀ` (columns are output features:
/// `col_stride = in`, `inner_stride = 1`) and the input gradient `g · W` (columns are input
/// features: `col_stride = 1`, `inner_stride = in`). One thread per column and tile of
/// [`ROW_TILE`] rows, each weight decoded once per tile; `W` is never written.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn fused_tile_kernel<F: Float>(
    input: &Array<F>,
    packed: &Array<i32>,
    absmax: &Array<f32>,
    code: &Array<f32>,
    output: &mut Array<F>,
    rows: usize,
    cols: usize,
    inner: usize,
    col_stride: usize,
    inner_stride: usize,
    blocksize: usize,
) {
    let pos = ABSOLUTE_POS;
    let tile = pos / cols;
    if tile * 8 >= rows {
        terminate!();
    }
    let c = pos % cols;
    // Rows past the end repeat row r0 (always valid) and are not written.
    let r0 = tile * 8;
    let r1 = if r0 + 1 < rows { r0 + 1 } else { r0 };
    let r2 = if r0 + 2 < rows { r0 + 2 } else { r0 };
    let r3 = if r0 + 3 < rows { r0 + 3 } else { r0 };
    let r4 = if r0 + 4 < rows { r0 + 4 } else { r0 };
    let r5 = if r0 + 5 < rows { r0 + 5 } else { r0 };
    let r6 = if r0 + 6 < rows { r0 + 6 } else { r0 };
    let r7 = if r0 + 7 < rows { r0 + 7 } else { r0 };
    let mut acc0 = f32::new(0.0);
    let mut acc1 = f32::new(0.0);
    let mut acc2 = f32::new(0.0);
    let mut acc3 = f32::new(0.0);
    let mut acc4 = f32::new(0.0);
    let mut acc5 = f32::new(0.0);
    let mut acc6 = f32::new(0.0);
    let mut acc7 = f32::new(0.0);
    for k in 0..inner {
        let w = weight_in::<F>(
            packed,
            absmax,
            code,
            c * col_stride + k * inner_stride,
            blocksize,
        );
        acc0 += f32::cast_from(input[r0 * inner + k]) * w;
        acc1 += f32::cast_from(input[r1 * inner + k]) * w;
        acc2 += f32::cast_from(input[r2 * inner + k]) * w;
        acc3 += f32::cast_from(input[r3 * inner + k]) * w;
        acc4 += f32::cast_from(input[r4 * inner + k]) * w;
        acc5 += f32::cast_from(input[r5 * inner + k]) * w;
        acc6 += f32::cast_from(input[r6 * inner + k]) * w;
        acc7 += f32::cast_from(input[r7 * inner + k]) * w;
    }
    output[r0 * cols + c] = F::cast_from(acc0);
    if r0 + 1 < rows {
        output[r1 * cols + c] = F::cast_from(acc1);
    }
    if r0 + 2 < rows {
        output[r2 * cols + c] = F::cast_from(acc2);
    }
    if r0 + 3 < rows {
        output[r3 * cols + c] = F::cast_from(acc3);
    }
    if r0 + 4 < rows {
        output[r4 * cols + c] = F::cast_from(acc4);
    }
    if r0 + 5 < rows {
        output[r5 * cols + c] = F::cast_from(acc5);
    }
    if r0 + 6 < rows {
        output[r6 * cols + c] = F::cast_from(acc6);
    }
    if r0 + 7 < rows {
        output[r7 * cols + c] = F::cast_from(acc7);
    }
}

/// One row (`rows == 1`, a frame at a time): [`fused_tile_kernel`] without the row tile,
/// whose repeated rows would multiply every weight [`ROW_TILE`] times for nothing.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn fused_row_kernel<F: Float>(
    input: &Array<F>,
    packed: &Array<i32>,
    absmax: &Array<f32>,
    code: &Array<f32>,
    output: &mut Array<F>,
    rows: usize,
    cols: usize,
    inner: usize,
    col_stride: usize,
    inner_stride: usize,
    blocksize: usize,
) {
    let c = ABSOLUTE_POS;
    if c >= cols || rows != 1 {
        terminate!();
    }
    let mut acc = f32::new(0.0);
    for k in 0..inner {
        acc += f32::cast_from(input[k])
            * weight_in::<F>(
                packed,
                absmax,
                code,
                c * col_stride + k * inner_stride,
                blocksize,
            );
    }
    output[c] = F::cast_from(acc);
}

fn check_q4_inputs<R: CubeRuntime>(
    packed: &CubeTensor<R>,
    absmax: &CubeTensor<R>,
    code: &CubeTensor<R>,
) {
    assert_eq!(
        packed.dtype,
        DType::I32,
        "4-bit codes are packed in i32 words"
    );
    assert_eq!(absmax.dtype, DType::F32, "absmax is f32");
    assert_eq!(code.dtype, DType::F32, "the code book is f32");
}

/// Launches one of the two fused kernels over `rows × cols` outputs.
#[allow(clippy::too_many_arguments)]
fn launch_fused<R: CubeRuntime>(
    grad: bool,
    input: CubeTensor<R>,
    packed: CubeTensor<R>,
    absmax: CubeTensor<R>,
    code: CubeTensor<R>,
    [out_features, in_features]: [usize; 2],
    blocksize: usize,
) -> CubeTensor<R> {
    check_q4_inputs(&packed, &absmax, &code);
    let dtype = input.dtype;
    assert!(
        matches!(dtype, DType::F32 | DType::F16 | DType::BF16),
        "the fused 4-bit matmul runs in f32, f16 or bf16, not {dtype:?}"
    );
    // Forward: columns are output features; gradient: input features (see the kernels).
    let (inner, cols, col_stride, inner_stride) = if grad {
        (out_features, in_features, 1, in_features)
    } else {
        (in_features, out_features, in_features, 1)
    };
    let dims = input.meta.shape().dims::<2>();
    assert_eq!(
        dims[1], inner,
        "4-bit matmul: input has {} features, expected {inner}",
        dims[1]
    );
    let rows = dims[0];
    let input = into_contiguous(input);
    let (packed, absmax, code) = (
        into_contiguous(packed),
        into_contiguous(absmax),
        into_contiguous(code),
    );
    let client = input.client.clone();
    let output = empty_device_contiguous_dtype::<R>(
        client.clone(),
        input.device.clone(),
        Shape::new([rows, cols]),
        dtype,
    );
    if rows * cols == 0 {
        return output;
    }
    let threads = rows.div_ceil(ROW_TILE) * cols;
    let cube_dim = CubeDim::new(&client, threads);
    let cube_count = calculate_cube_count_elemwise(&client, threads, cube_dim);
    macro_rules! launch_as {
        ($f:ty) => {
            if rows == 1 {
                fused_row_kernel::launch::<$f, R>
            } else {
                fused_tile_kernel::launch::<$f, R>
            }
        };
    }
    let launch = match dtype {
        DType::F16 => launch_as!(half::f16),
        DType::BF16 => launch_as!(half::bf16),
        _ => launch_as!(f32),
    };
    launch(
        &client,
        cube_count,
        cube_dim,
        input.into_array_arg(),
        packed.into_array_arg(),
        absmax.into_array_arg(),
        code.into_array_arg(),
        output.clone().into_array_arg(),
        rows,
        cols,
        inner,
        col_stride,
        inner_stride,
        blocksize,
    );
    output
}

/// `x [rows, in] → x · Wᵀ [rows, out]` with each 4-bit weight decoded where it is multiplied
/// (never a dense `W`), in `x`'s dtype (f32, f16 or bf16: the weight rounded to it, products
/// summed in f32, as bitsandbytes' `gemv_4bit` sums).
pub fn dequant_matmul<R: CubeRuntime>(
    x: CubeTensor<R>,
    packed: CubeTensor<R>,
    absmax: CubeTensor<R>,
    code: CubeTensor<R>,
    shape: [usize; 2],
    blocksize: usize,
) -> CubeTensor<R> {
    launch_fused(false, x, packed, absmax, code, shape, blocksize)
}

/// `grad [rows, out] → grad · W [rows, in]`, the input gradient of [`dequant_matmul`].
pub fn dequant_matmul_grad<R: CubeRuntime>(
    grad: CubeTensor<R>,
    packed: CubeTensor<R>,
    absmax: CubeTensor<R>,
    code: CubeTensor<R>,
    shape: [usize; 2],
    blocksize: usize,
) -> CubeTensor<R> {
    launch_fused(true, grad, packed, absmax, code, shape, blocksize)
}

/// The dense `[out_features, in_features]` f32 weight of packed 4-bit codes in blocks of
/// `blocksize` consecutive weights.
///
/// # Shapes
/// - packed: `[num_words]` i32, absmax: `[num_blocks]` f32 (already de-double-quantized),
///   code: `[16]` f32
/// - output: `[out_features, in_features]` f32
pub fn dequantize<R: CubeRuntime>(
    packed: CubeTensor<R>,
    absmax: CubeTensor<R>,
    code: CubeTensor<R>,
    [out_features, in_features]: [usize; 2],
    blocksize: usize,
) -> CubeTensor<R> {
    check_q4_inputs(&packed, &absmax, &code);
    let numel = out_features * in_features;
    let packed = into_contiguous(packed);
    let absmax = into_contiguous(absmax);
    let code = into_contiguous(code);
    let client = packed.client.clone();
    let output = empty_device_contiguous_dtype::<R>(
        client.clone(),
        packed.device.clone(),
        Shape::new([out_features, in_features]),
        DType::F32,
    );
    if numel == 0 {
        return output;
    }
    let cube_dim = CubeDim::new(&client, numel);
    let cube_count = calculate_cube_count_elemwise(&client, numel, cube_dim);
    dequant4_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        packed.into_array_arg(),
        absmax.into_array_arg(),
        code.into_array_arg(),
        output.clone().into_array_arg(),
        numel,
        blocksize,
    );
    output
}
