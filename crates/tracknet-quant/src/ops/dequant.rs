//! Dequantization in Burn's tensor ops (any backend) and on host slices (the NdArray kernel's
//! serial and parallel paths).

use super::*;

/// [`QuantBackend::q4_decode_absmax`] in Burn's tensor ops (any backend; the reference).
pub fn decode_absmax_generic<B: Backend>(
    q: IntTensor<B>,
    nested: FloatTensor<B>,
    offset: FloatTensor<B>,
    map: FloatTensor<B>,
    nested_blocksize: usize,
    n: usize,
) -> FloatTensor<B> {
    let float = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let codes = unpack_words(Tensor::<B, 1, Int>::from_primitive(q), 8, n);
    let scales = expand_blocks(float(nested), nested_blocksize, n);
    (float(map).select(0, codes) * scales + float(offset))
        .into_primitive()
        .tensor()
}

/// Unpack `n` fields of `bits` bits (4 or 8) from big-endian-ordered int32 words with tensor
/// ops only, so it runs on any backend. Returns `[n]` int codes.
pub fn unpack_words<B: Backend>(
    words: Tensor<B, 1, Int>,
    bits: u32,
    n: usize,
) -> Tensor<B, 1, Int> {
    let per_word = (32 / bits) as usize;
    let [num_words] = words.dims();
    let device = words.device();
    let shifts: Vec<i32> = (0..per_word as u32)
        .map(|i| (32 - bits * (i + 1)) as i32)
        .collect();
    // Same int dtype as the words (int32), whatever the backend's default int is.
    let shifts = Tensor::<B, 1, Int>::from_data(
        TensorData::new(shifts, [per_word]),
        (&device, words.dtype()),
    )
    .reshape([1, per_word])
    .expand([num_words, per_word]);
    let mask = (1i64 << bits) - 1;
    words
        .reshape([num_words, 1])
        .expand([num_words, per_word])
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar(mask.elem())
        .reshape([num_words * per_word])
        .slice(0..n)
}

/// Repeat each block value over its block and cut to `numel`: `[num_blocks] → [numel]`.
pub fn expand_blocks<B: Backend>(
    values: Tensor<B, 1>,
    blocksize: usize,
    numel: usize,
) -> Tensor<B, 1> {
    let [num_blocks] = values.dims();
    values
        .reshape([num_blocks, 1])
        .expand([num_blocks, blocksize])
        .reshape([num_blocks * blocksize])
        .slice(0..numel)
}

/// Dequantization with generic tensor ops (the CUDA path and the reference for the others).
pub fn dequantize_generic<B: Backend>(weight: Q4Weight<B>, layout: Q4Layout) -> FloatTensor<B> {
    let numel = layout.numel();
    let packed = Tensor::<B, 1, Int>::from_primitive(weight.packed);
    let absmax = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(weight.absmax));
    let code = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(weight.code));
    let codes = unpack_words(packed, 4, numel);
    let values = code.select(0, codes);
    let scales = expand_blocks(absmax, layout.blocksize, numel);
    (values * scales)
        .reshape([layout.out_features, layout.in_features])
        .into_primitive()
        .tensor()
}

/// Host dequantizer over packed int32 words: elements `start .. start + len` of the flattened
/// `[out, in]` weight, split over rayon tasks when large.
pub fn dequantize_range(
    words: &[i32],
    absmax: &[f32],
    code: &[f32],
    blocksize: usize,
    start: usize,
    len: usize,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0.0f32; len];
    // Pieces of whole blocks (~16 Ki weights), so that each task runs the block loop.
    let piece = if len >= 1 << 16 {
        (1usize << 14).div_ceil(blocksize.max(1)) * blocksize.max(1)
    } else {
        len.max(1)
    };
    out.par_chunks_mut(piece)
        .enumerate()
        .for_each(|(p, chunk)| {
            dequantize_serial(words, absmax, code, blocksize, start + p * piece, chunk)
        });
    out
}

/// One thread's part of [`dequantize_range`]: per block, the code book scaled by the block's
/// absmax (the same `code[c] · absmax` product, so the same bits) and then a table lookup per
/// 4-bit code, eight codes per word, the first in the high nibble.
fn dequantize_serial(
    words: &[i32],
    absmax: &[f32],
    code: &[f32],
    blocksize: usize,
    start: usize,
    out: &mut [f32],
) {
    let blocksize = blocksize.max(1);
    let nibble = |i: usize| ((words[i / 8] as u32) >> (28 - 4 * (i % 8) as u32)) & 0xF;
    let end = start + out.len();
    let (mut i, mut o) = (start, 0);
    while i < end {
        let block = i / blocksize;
        let block_end = ((block + 1) * blocksize).min(end);
        let scale = absmax[block];
        let lut: [f32; 16] = std::array::from_fn(|c| code[c] * scale);
        while i < block_end && i % 8 != 0 {
            out[o] = lut[nibble(i) as usize];
            (i, o) = (i + 1, o + 1);
        }
        while i + 8 <= block_end {
            let w = words[i / 8] as u32;
            let dst = &mut out[o..o + 8];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = lut[((w >> (28 - 4 * j as u32)) & 0xF) as usize];
            }
            (i, o) = (i + 8, o + 8);
        }
        while i < block_end {
            out[o] = lut[nibble(i) as usize];
            (i, o) = (i + 1, o + 1);
        }
    }
}

/// The whole weight, `[out, in]` row-major.
pub fn dequantize_host(words: &[i32], absmax: &[f32], code: &[f32], layout: Q4Layout) -> Vec<f32> {
    dequantize_range(words, absmax, code, layout.blocksize, 0, layout.numel())
}
