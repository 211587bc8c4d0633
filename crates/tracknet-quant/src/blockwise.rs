//! Blockwise 4-bit quantization (NF4 / FP4) with optional double quantization, reproducing
//! bitsandbytes 0.50.2's `quantize_4bit` / `dequantize_4bit` byte for byte.
//!
//! Which bitsandbytes code path is reproduced (it matters for values on a decision boundary):
//! - 4-bit codes: the CPU path (`backends/default/ops.py`): full blocks are scaled by
//!   `x * (1 / max(absmax, 1e-38))`, the final partial block by `x / max(absmax, 1e-38)`, the
//!   result is clamped to [-1, 1] and mapped with `torch.bucketize` on the midpoints of the sorted
//!   code book. The CUDA kernel's decision tree (`dQuantizeFP4`) gives FP4 values near zero the
//!   other zero code (0 vs 8), and the reference fixtures follow the CPU path.
//! - Double quantization: offset = mean of the f32 absmax, `absmax - offset` quantized with
//!   bitsandbytes' native CPU 8-bit kernel (`quantize_cpu_impl`: 65536-bin look-up table over
//!   [-1, 1], index `fma((x + 1) / 2, 65535, 0.5)` truncated), nested block size 256.

use std::sync::OnceLock;

use crate::codebook::{Bounds4, QuantType, codebook, dynamic_map_signed};
use crate::error::QuantError;

/// Block size bitsandbytes uses for the nested (double) quantization of the absmax values.
pub const NESTED_BLOCKSIZE: usize = 256;

/// Smallest 4-bit block size bitsandbytes accepts.
pub const MIN_BLOCKSIZE: usize = 32;

/// Largest 4-bit block size bitsandbytes accepts.
pub const MAX_BLOCKSIZE: usize = 4096;

/// bitsandbytes clamps the divisor to this so that all-zero blocks do not divide by zero.
const ABSMAX_FLOOR: f32 = 1e-38;

/// Number of bins of bitsandbytes' CPU 8-bit look-up table.
const LUT_SIZE: usize = 65536;

/// The per-block scales of a 4-bit tensor, plain or double-quantized.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 absmax per block (`compress_statistics=False`).
    Plain(Vec<f32>),
    /// bitsandbytes' double quantization (`compress_statistics=True`).
    Double {
        /// `absmax - offset`, 8-bit codes into [`dynamic_map_signed`], one per 4-bit block.
        absmax_u8: Vec<u8>,
        /// One f32 scale per `nested_blocksize` entries of `absmax_u8`.
        nested_absmax: Vec<f32>,
        /// Mean of the f32 absmax values, added back after dequantization.
        offset: f32,
        /// Entries of `absmax_u8` per nested block (256 in bitsandbytes).
        nested_blocksize: usize,
    },
}

impl Absmax {
    /// Number of 4-bit blocks these scales cover.
    pub fn len(&self) -> usize {
        match self {
            Absmax::Plain(v) => v.len(),
            Absmax::Double { absmax_u8, .. } => absmax_u8.len(),
        }
    }

    /// True when there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the scales occupy in memory (double quant: u8 codes, f32 nested scales and the
    /// f32 offset; the 256-entry map is a shared constant and not counted).
    pub fn stored_bytes(&self) -> usize {
        match self {
            Absmax::Plain(v) => v.len() * size_of::<f32>(),
            Absmax::Double {
                absmax_u8,
                nested_absmax,
                ..
            } => absmax_u8.len() + (nested_absmax.len() + 1) * size_of::<f32>(),
        }
    }

    /// The f32 absmax per block. Double quant is undone as bitsandbytes does it:
    /// `code[u8] * nested_absmax[i / nested_blocksize]`, rounded to f32, then `+ offset`.
    /// Entries whose nested scale is missing (malformed data) come out NaN; use
    /// [`Absmax::validate`] first when the data was not made by [`quantize_4bit`].
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(v) => v.clone(),
            Absmax::Double {
                absmax_u8,
                nested_absmax,
                offset,
                nested_blocksize,
            } => {
                let map = dynamic_map_signed();
                absmax_u8
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| {
                        let scale = i
                            .checked_div(*nested_blocksize)
                            .and_then(|b| nested_absmax.get(b))
                            .copied()
                            .unwrap_or(f32::NAN);
                        map[usize::from(q)] * scale + offset
                    })
                    .collect()
            }
        }
    }

    /// Checks that the scales cover `blocks` 4-bit blocks and, for double quant, that the
    /// nested scales match the nested block size.
    pub fn validate(&self, blocks: usize) -> Result<(), QuantError> {
        check_len("absmax", blocks, self.len())?;
        if let Absmax::Double {
            nested_absmax,
            nested_blocksize,
            ..
        } = self
        {
            if *nested_blocksize == 0 {
                return Err(QuantError::InvalidBlocksize8bit {
                    blocksize: *nested_blocksize,
                });
            }
            check_len(
                "nested_absmax",
                blocks.div_ceil(*nested_blocksize),
                nested_absmax.len(),
            )?;
        }
        Ok(())
    }
}

/// A tensor quantized to 4 bits, laid out exactly as bitsandbytes stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized4 {
    /// NF4 or FP4.
    pub quant_type: QuantType,
    /// Consecutive elements of the flattened tensor that share one absmax.
    pub blocksize: usize,
    /// Number of elements of the original tensor.
    pub numel: usize,
    /// Two codes per byte, element `2k` in the high nibble, `2k + 1` in the low nibble;
    /// `ceil(numel / 2)` bytes.
    pub packed: Vec<u8>,
    /// One scale per block, `ceil(numel / blocksize)` of them.
    pub absmax: Absmax,
}

impl Quantized4 {
    /// Number of blocks, `ceil(numel / blocksize)` (0 for a zero block size).
    pub fn num_blocks(&self) -> usize {
        if self.blocksize == 0 {
            0
        } else {
            self.numel.div_ceil(self.blocksize)
        }
    }

    /// Bytes of quantized storage: packed codes plus the scales. The code books are shared
    /// constants and not counted.
    pub fn stored_bytes(&self) -> usize {
        self.packed.len() + self.absmax.stored_bytes()
    }

    /// Checks block size and buffer lengths, so that dequantization cannot read past the data.
    pub fn validate(&self) -> Result<(), QuantError> {
        check_blocksize(self.blocksize)?;
        check_len("packed", self.numel.div_ceil(2), self.packed.len())?;
        self.absmax.validate(self.num_blocks())
    }
}

/// Quantizes `weights` (the row-major flattened tensor) to 4 bits in blocks of `blocksize`
/// consecutive elements, exactly as bitsandbytes' `quantize_4bit(A, blocksize=blocksize,
/// quant_type=..., compress_statistics=double_quant)` on the CPU.
pub fn quantize_4bit(
    weights: &[f32],
    quant_type: QuantType,
    blocksize: usize,
    double_quant: bool,
) -> Result<Quantized4, QuantError> {
    check_blocksize(blocksize)?;
    if weights.is_empty() {
        return Err(QuantError::EmptyInput { what: "weight" });
    }
    check_finite("weight", weights)?;

    let bounds = Bounds4::new(quant_type);
    let numel = weights.len();
    let full_blocks = numel / blocksize;
    let mut absmax = Vec::with_capacity(numel.div_ceil(blocksize));
    let mut codes = Vec::with_capacity(numel + 1);
    for (b, block) in weights.chunks(blocksize).enumerate() {
        let amax = block_absmax(block);
        let divisor = amax.max(ABSMAX_FLOOR);
        if b < full_blocks {
            // Full blocks: multiply by the f32 reciprocal; the stored absmax is unclamped.
            absmax.push(amax);
            let inv = 1.0 / divisor;
            codes.extend(
                block
                    .iter()
                    .map(|&x| bounds.quantize((x * inv).clamp(-1.0, 1.0))),
            );
        } else {
            // The final partial block: true division, and the clamped absmax is stored.
            absmax.push(divisor);
            codes.extend(
                block
                    .iter()
                    .map(|&x| bounds.quantize((x / divisor).clamp(-1.0, 1.0))),
            );
        }
    }
    if codes.len() % 2 == 1 {
        // bitsandbytes pads the normalised values with 0.0 and quantizes the pad too.
        codes.push(bounds.quantize(0.0));
    }
    let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();

    let absmax = if double_quant {
        double_quantize(&absmax)?
    } else {
        Absmax::Plain(absmax)
    };
    Ok(Quantized4 {
        quant_type,
        blocksize,
        numel,
        packed,
        absmax,
    })
}

/// Dequantizes to f32 (`code[q] * absmax[i / blocksize]`, as bitsandbytes' `dequantize_4bit`).
///
/// Never panics: on malformed data (see [`Quantized4::validate`]) the elements whose code or
/// scale is missing come out NaN. Use [`try_dequantize_4bit`] for data from outside.
pub fn dequantize_4bit(q: &Quantized4) -> Vec<f32> {
    let code = codebook(q.quant_type);
    let absmax = q.absmax.to_f32();
    (0..q.numel)
        .map(|i| {
            let nibble = q
                .packed
                .get(i / 2)
                .map(|&byte| if i % 2 == 0 { byte >> 4 } else { byte & 0x0f });
            let scale = i
                .checked_div(q.blocksize)
                .and_then(|b| absmax.get(b))
                .copied();
            match (nibble, scale) {
                (Some(n), Some(s)) => code[usize::from(n)] * s,
                _ => f32::NAN,
            }
        })
        .collect()
}

/// [`dequantize_4bit`] after [`Quantized4::validate`].
pub fn try_dequantize_4bit(q: &Quantized4) -> Result<Vec<f32>, QuantError> {
    q.validate()?;
    Ok(dequantize_4bit(q))
}

/// Blockwise 8-bit quantization result: one code per value, one f32 absmax per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized8 {
    /// Index into the code book per value.
    pub codes: Vec<u8>,
    /// Largest magnitude per block (0 for an all-zero block, whose codes are all 0).
    pub absmax: Vec<f32>,
    /// Values per block.
    pub blocksize: usize,
}

/// bitsandbytes' `quantize_blockwise(values, code, blocksize)` as its native CPU kernel does
/// it: per block `x * (1 / absmax)` clamped to [-1, 1], then a 65536-bin look-up table over
/// [-1, 1] that maps each bin to the code whose midpoint interval holds the bin's left edge.
/// `code` must be sorted ascending (as the dynamic map is).
pub fn quantize_blockwise_8bit(
    values: &[f32],
    code: &[f32; 256],
    blocksize: usize,
) -> Result<Quantized8, QuantError> {
    if blocksize == 0 {
        return Err(QuantError::InvalidBlocksize8bit { blocksize });
    }
    check_finite("8-bit input", values)?;
    if let Some(i) = (1..code.len()).find(|&i| code[i - 1] > code[i]) {
        return Err(QuantError::UnsortedCode {
            index: i,
            prev: code[i - 1],
            next: code[i],
        });
    }

    let built;
    let lut: &[u8] = if *code == dynamic_map_signed() {
        dynamic_map_lut()
    } else {
        built = build_lut(code);
        &built
    };

    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    for block in values.chunks(blocksize) {
        let amax = block_absmax(block);
        absmax.push(amax);
        if amax == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0 / amax;
        codes.extend(block.iter().map(|&x| lut[lut_index(x * inv)]));
    }
    Ok(Quantized8 {
        codes,
        absmax,
        blocksize,
    })
}

/// Inverse of [`quantize_blockwise_8bit`]: `code[q] * absmax[i / blocksize]`.
pub fn dequantize_blockwise_8bit(
    q: &Quantized8,
    code: &[f32; 256],
) -> Result<Vec<f32>, QuantError> {
    if q.blocksize == 0 {
        return Err(QuantError::InvalidBlocksize8bit {
            blocksize: q.blocksize,
        });
    }
    check_len(
        "8-bit absmax",
        q.codes.len().div_ceil(q.blocksize),
        q.absmax.len(),
    )?;
    Ok(q.codes
        .iter()
        .enumerate()
        .map(|(i, &c)| code[usize::from(c)] * q.absmax[i / q.blocksize])
        .collect())
}

/// bitsandbytes' `compress_statistics=True`: subtract the mean, quantize blockwise (256) to the
/// signed dynamic map.
fn double_quantize(absmax: &[f32]) -> Result<Absmax, QuantError> {
    let offset = torch_mean_f32(absmax);
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let nested = quantize_blockwise_8bit(&centered, &dynamic_map_signed(), NESTED_BLOCKSIZE)?;
    Ok(Absmax::Double {
        absmax_u8: nested.codes,
        nested_absmax: nested.absmax,
        offset,
        nested_blocksize: NESTED_BLOCKSIZE,
    })
}

/// `tensor.mean()` of a contiguous 1-D f32 tensor on the CPU, bit for bit as PyTorch computes
/// it: ATen's CPU `mean` is `sum(x) / numel` in f32, and the f32 sum runs in the order of
/// ATen's cascade-sum kernel ([`aten_sum_f32`]).
pub fn torch_mean_f32(values: &[f32]) -> f32 {
    aten_sum_f32(values) / (values.len() as f32)
}

/// f32 lanes of the `Vectorized<float>` ATen's sum kernel runs with: 8 (256-bit vectors).
/// PyTorch does not dispatch its sum kernel to AVX-512, so the order is the same with CPU
/// capability `default`, `avx2` and `avx512` (measured with torch 2.15 under each
/// `ATEN_CPU_CAPABILITY`, `tests/data/torch_sums.safetensors`).
pub const ATEN_SUM_LANES: usize = 8;

/// The f32 sum of a contiguous 1-D tensor in the order of ATen's CPU `cascade_sum`
/// (`ReduceOps/SumKernel.cpp`):
///
/// - `len >= 8`: the input is read as `len / 8` vectors of [`ATEN_SUM_LANES`]; [`row_sum`] of
///   those vectors (four interleaved accumulators, each a [`multi_row_sum`] cascade), then a
///   scalar accumulator starting at 0 takes the `len % 8` tail elements in order and then the
///   vector's lanes in order (`vectorized_inner_sum`).
/// - `len < 8`: [`row_sum`] of the scalars (`scalar_inner_sum`).
///
/// Below 32768 elements (ATen's grain size) PyTorch reduces on one thread, so this order holds
/// for any thread count; above it PyTorch splits the sum across its threads, and this is the
/// order of a single-threaded PyTorch. (bitsandbytes sums one absmax per 64 weights: up to
/// 2,097,152-element weights reduce on one thread.)
pub fn aten_sum_f32(values: &[f32]) -> f32 {
    let lanes = ATEN_SUM_LANES;
    if values.len() < lanes {
        return row_sum(values.len(), 1, |i, _| values[i])[0];
    }
    let vectors = values.len() / lanes;
    let vec = row_sum(vectors, lanes, |i, lane| values[i * lanes + lane]);
    let mut acc = 0.0f32;
    for &x in &values[vectors * lanes..] {
        acc += x;
    }
    for lane in vec {
        acc += lane;
    }
    acc
}

/// ATen's `row_sum`: `size` elements (each `lanes` wide; `load(i, lane)`) read as rows of
/// four, summed by [`multi_row_sum`]; the remaining elements go into the first accumulator,
/// then accumulators 1..3 are added to it.
fn row_sum(size: usize, lanes: usize, load: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    const ILP: usize = 4;
    let rows = size / ILP;
    // Accumulator `k` of a row is element `row * 4 + k`; `j = k * lanes + lane`.
    let partial = multi_row_sum(rows, ILP * lanes, |row, j| {
        load(row * ILP + j / lanes, j % lanes)
    });
    let (first, rest) = partial.split_at(lanes);
    let mut out = first.to_vec();
    for i in rows * ILP..size {
        for (lane, o) in out.iter_mut().enumerate() {
            *o += load(i, lane);
        }
    }
    for k in rest.chunks_exact(lanes) {
        for (o, &v) in out.iter_mut().zip(k) {
            *o += v;
        }
    }
    out
}

/// ATen's `multi_row_sum`: `width` independent accumulators (`load(row, j)`) over `size` rows
/// with a four-level cascade, level `j` taking level `j - 1` every `2^(level_power * j)` rows.
fn multi_row_sum(size: usize, width: usize, load: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    const LEVELS: usize = 4;
    let level_power = (ceil_log2(size) / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = vec![vec![0.0f32; width]; LEVELS];
    let add_row = |acc0: &mut [f32], i: usize| {
        for (j, a) in acc0.iter_mut().enumerate() {
            *a += load(i, j);
        }
    };
    let mut i = 0usize;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (hi, lo) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *hi += *lo;
                *lo = 0.0;
            }
            let mask = level_mask
                .checked_shl((j * level_power) as u32)
                .unwrap_or(0);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        add_row(&mut acc[0], i);
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, &v) in first[0].iter_mut().zip(level) {
            *a += v;
        }
    }
    acc.swap_remove(0)
}

/// c10's `CeilLog2`: 1 for `x <= 2`, else `ceil(log2(x))`.
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, &x| m.max(x.abs()))
}

/// `norm_to_lut_index` of bitsandbytes' CPU kernel; the multiply-add is fused because the
/// kernel is compiled with FMA enabled and GCC contracts it.
#[inline]
fn lut_index(x: f32) -> usize {
    let t = (x.clamp(-1.0, 1.0) + 1.0) * 0.5;
    // In [0.5, 65535.5]; truncation as C's float -> uint16_t conversion.
    t.mul_add((LUT_SIZE - 1) as f32, 0.5) as u16 as usize
}

/// `build_quantize_lut` of bitsandbytes' CPU kernel.
fn build_lut(code: &[f32; 256]) -> Vec<u8> {
    let mids: [f32; 255] = std::array::from_fn(|i| 0.5 * (code[i] + code[i + 1]));
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut idx = 0usize;
    for i in 0..LUT_SIZE {
        let val = -1.0 + (2.0 * i as f32) / (LUT_SIZE - 1) as f32;
        while idx < mids.len() && mids[idx] < val {
            idx += 1;
        }
        // idx <= 255 by the loop bound.
        lut.push(idx as u8);
    }
    lut
}

fn dynamic_map_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| build_lut(&dynamic_map_signed()))
}

fn check_blocksize(blocksize: usize) -> Result<(), QuantError> {
    if blocksize.is_power_of_two() && (MIN_BLOCKSIZE..=MAX_BLOCKSIZE).contains(&blocksize) {
        Ok(())
    } else {
        Err(QuantError::InvalidBlocksize { blocksize })
    }
}

fn check_finite(what: &'static str, values: &[f32]) -> Result<(), QuantError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<(), QuantError> {
    if expected == actual {
        Ok(())
    } else {
        Err(QuantError::LengthMismatch {
            what,
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_blocksizes_and_accepts_good_ones() {
        for bs in [0, 16, 48, 100, 8192] {
            assert_eq!(
                quantize_4bit(&[1.0; 64], QuantType::Nf4, bs, false),
                Err(QuantError::InvalidBlocksize { blocksize: bs })
            );
        }
        for bs in [32, 64, 128, 256, 512, 1024, 2048, 4096] {
            assert!(quantize_4bit(&[1.0; 64], QuantType::Nf4, bs, false).is_ok());
        }
    }

    #[test]
    fn rejects_non_finite_with_index() {
        let mut w = vec![0.5f32; 70];
        w[67] = f32::NAN;
        let err = quantize_4bit(&w, QuantType::Fp4, 64, false).unwrap_err();
        assert!(
            matches!(err, QuantError::NonFinite { index: 67, .. }),
            "{err}"
        );
        w[67] = f32::NEG_INFINITY;
        w[3] = f32::INFINITY;
        let err = quantize_4bit(&w, QuantType::Nf4, 64, true).unwrap_err();
        assert!(
            matches!(err, QuantError::NonFinite { index: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("index 3"));
    }

    #[test]
    fn rejects_empty_input() {
        assert_eq!(
            quantize_4bit(&[], QuantType::Nf4, 64, false),
            Err(QuantError::EmptyInput { what: "weight" })
        );
    }

    #[test]
    fn odd_count_pads_with_the_code_of_zero() {
        let q = quantize_4bit(&[1.0, -1.0, 1.0], QuantType::Nf4, 64, false).unwrap();
        // 1.0 -> 15, -1.0 -> 0, pad 0.0 -> 7.
        assert_eq!(q.packed, vec![0xf0, 0xf7]);
        let q = quantize_4bit(&[1.0, -1.0, 1.0], QuantType::Fp4, 64, false).unwrap();
        assert_eq!(q.packed, vec![0x3b, 0x30]);
        assert_eq!(dequantize_4bit(&q), vec![1.0, -1.0, 1.0]);
    }

    #[test]
    fn partial_zero_block_stores_the_floor_and_full_zero_block_stores_zero() {
        let q = quantize_4bit(&[0.0; 96], QuantType::Nf4, 64, false).unwrap();
        assert_eq!(q.absmax, Absmax::Plain(vec![0.0, 1e-38]));
        assert!(q.packed.iter().all(|&b| b == 0x77));
        assert!(dequantize_4bit(&q).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn validate_catches_truncated_buffers_and_dequantize_does_not_panic() {
        let mut q = quantize_4bit(&[0.25; 130], QuantType::Nf4, 64, true).unwrap();
        assert_eq!(q.validate(), Ok(()));
        q.packed.truncate(10);
        assert!(matches!(
            q.validate(),
            Err(QuantError::LengthMismatch {
                what: "packed",
                expected: 65,
                actual: 10
            })
        ));
        let d = dequantize_4bit(&q);
        assert_eq!(d.len(), 130);
        assert!(d[19].is_finite() && d[20].is_nan());
        assert!(try_dequantize_4bit(&q).is_err());
    }

    #[test]
    fn lut_index_covers_the_table() {
        assert_eq!(lut_index(-1.0), 0);
        assert_eq!(lut_index(1.0), LUT_SIZE - 1);
        assert_eq!(lut_index(7.0), LUT_SIZE - 1);
    }

    #[test]
    fn eight_bit_round_trip_and_zero_block() {
        let map = dynamic_map_signed();
        let mut v: Vec<f32> = (0..300).map(|i| (i as f32 - 150.0) / 37.0).collect();
        v.extend([0.0; 256]);
        let q = quantize_blockwise_8bit(&v, &map, 256).unwrap();
        assert_eq!(q.absmax.len(), 3);
        assert_eq!(q.absmax[2], 0.0);
        let d = dequantize_blockwise_8bit(&q, &map).unwrap();
        // Nearest code up to one look-up-table bin; the ends of [-1, 1] count as gaps too.
        let half_gap = map.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0;
        let tol = half_gap.max(1.0 + map[0]) + 2.0 / 65535.0;
        assert!(tol < 0.0071, "{tol}");
        for (i, (&x, &y)) in v.iter().zip(&d).enumerate() {
            assert!(
                (x - y).abs() <= tol * q.absmax[i / 256] + 1e-6,
                "{i}: {x} vs {y}"
            );
        }
        let mut bad = map;
        bad.swap(3, 4);
        assert!(matches!(
            quantize_blockwise_8bit(&v, &bad, 256),
            Err(QuantError::UnsortedCode { index: 4, .. })
        ));
    }
}
