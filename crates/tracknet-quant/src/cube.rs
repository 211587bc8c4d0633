//! The 4-bit dequantizer as one CubeCL kernel, for the CubeCL backends (wgpu, CUDA).
//!
//! Why: the generic tensor-op dequantizer (`ops::dequantize_generic`) unpacks through expanded
//! word, shift and code tensors — several full-size temporaries and a handful of launches per
//! 4-bit matmul, forward and backward. This kernel reads the packed words, the absmax and the
//! code book and writes the dense `[out, in]` weight once: one thread per weight, one launch.
//! It is what bitsandbytes' `dequantize_4bit` kernel does before its matmul.

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
    assert_eq!(
        packed.dtype,
        DType::I32,
        "4-bit codes are packed in i32 words"
    );
    assert_eq!(absmax.dtype, DType::F32, "absmax is f32");
    assert_eq!(code.dtype, DType::F32, "the code book is f32");
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
