//! The code books of bitsandbytes: the 4-bit NF4 and FP4 tables and the signed dynamic 8-bit
//! map used for double quantization.
//!
//! The values are bitsandbytes' own (`get_4bit_type`, `create_dynamic_map(signed=True)`), bit
//! for bit, so that packed weights written here and by bitsandbytes are interchangeable.

use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::QuantError;

/// Which 4-bit data type the codes index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantType {
    /// NormalFloat4: quantiles of N(0, 1), sorted ascending, code 7 is exactly 0.
    Nf4,
    /// bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit), in bit-pattern order, scaled to
    /// [-1, 1] by dividing by 12.
    Fp4,
}

impl QuantType {
    /// The name bitsandbytes uses (`"nf4"` / `"fp4"`).
    pub fn as_str(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuantType {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Ok(QuantType::Nf4),
            "fp4" => Ok(QuantType::Fp4),
            _ => Err(QuantError::UnknownQuantType { name: s.to_owned() }),
        }
    }
}

/// bitsandbytes' NF4 table (`get_4bit_type("nf4")`); already normalised to [-1, 1].
// The literals are bitsandbytes' own digits (f64 prints of f32 values), kept greppable.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// FP4 values before normalisation, in bit-pattern order (bit 3 is the sign). The Python
/// source writes `-0` as an integer, so entry 8 is +0.0, not -0.0.
const FP4_RAW: [f32; 16] = [
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
];

/// bitsandbytes' FP4 table: `FP4_RAW / 12` in f32, exactly as `data.div_(data.abs().max())`.
pub const FP4_CODE: [f32; 16] = fp4_code();

const fn fp4_code() -> [f32; 16] {
    let mut out = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = FP4_RAW[i] / 12.0;
        i += 1;
    }
    out
}

/// The 16-entry code book of a 4-bit type, indexed by the 4-bit code.
pub fn codebook(quant_type: QuantType) -> [f32; 16] {
    match quant_type {
        QuantType::Nf4 => NF4_CODE,
        QuantType::Fp4 => FP4_CODE,
    }
}

/// Decision boundaries of bitsandbytes' CPU (`default` backend) 4-bit quantizer.
///
/// bitsandbytes sorts the code book (`torch.argsort`, which keeps FP4's two zeros in index
/// order), takes the f32 midpoints of neighbours as boundaries and maps a normalised value `x`
/// to `order[#boundaries < x]` (`torch.bucketize`, `right=False`): ties go to the lower code.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds4 {
    /// Ascending midpoints between neighbouring sorted codes.
    pub(crate) bounds: [f32; 15],
    /// `order[k]` is the 4-bit code of the k-th smallest code book value.
    pub(crate) order: [u8; 16],
}

impl Bounds4 {
    pub(crate) fn new(quant_type: QuantType) -> Self {
        let code = codebook(quant_type);
        let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
        // Stable sort: FP4's +0.0 at codes 0 and 8 keep their index order, as bitsandbytes'.
        order.sort_by(|&a, &b| {
            code[usize::from(a)]
                .partial_cmp(&code[usize::from(b)])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let bounds = std::array::from_fn(|k| {
            (code[usize::from(order[k])] + code[usize::from(order[k + 1])]) / 2.0
        });
        Self { bounds, order }
    }

    /// The 4-bit code of a value already normalised and clamped to [-1, 1].
    #[inline]
    pub(crate) fn quantize(&self, x: f32) -> u8 {
        let k = self.bounds.partition_point(|&b| b < x);
        self.order[k]
    }
}

/// bitsandbytes' `create_dynamic_map(signed=True)` (7 exponent bits, 8 bits in total): the
/// signed dynamic 8-bit map that double quantization uses for the absmax values. Sorted
/// ascending; entry 127 is 0.0 and entry 255 is 1.0.
pub fn dynamic_map_signed() -> [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    *MAP.get_or_init(build_dynamic_map_signed)
}

fn build_dynamic_map_signed() -> [f32; 256] {
    const MAX_EXPONENT_BITS: i32 = 7;
    // Python's `10 ** (i - 6)` as f64, i = 0..7.
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXPONENT_BITS {
        // Signed: 2^i fraction intervals per decade, i.e. 2^i + 1 boundaries.
        let fraction_items = (1usize << i) + 1;
        let boundaries = torch_linspace_f32(0.1, 1.0, fraction_items);
        // torch multiplies the f32 tensor by the Python scalar in f32.
        let scale = DECADES[i as usize] as f32;
        let means: Vec<f32> = boundaries
            .windows(2)
            .map(|w| scale * ((w[0] + w[1]) / 2.0))
            .collect();
        data.extend(means.iter().copied());
        data.extend(means.iter().map(|m| -m));
    }
    data.push(0.0);
    data.push(1.0);
    // 2 * 127 + 2 = 256 entries, so bitsandbytes' zero padding adds nothing.
    data.resize(256, 0.0);
    data.sort_by(f32::total_cmp);
    let mut out = [0.0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the first half counts up from
/// `start`, the second half down from `end`, each value with one fused multiply-add (that is
/// what reproduces torch's table bit for bit).
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|idx| {
            if idx < halfway {
                step.mul_add(idx as f32, start)
            } else {
                (-step).mul_add((steps - idx - 1) as f32, end)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_is_sorted_with_exact_zero_and_ones() {
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(NF4_CODE[7], 0.0);
        assert_eq!(NF4_CODE[0], -1.0);
        assert_eq!(NF4_CODE[15], 1.0);
    }

    #[test]
    fn fp4_sign_bit_mirrors_magnitudes() {
        for i in 0..8 {
            assert_eq!(FP4_CODE[i + 8], -FP4_CODE[i]);
        }
        assert_eq!(FP4_CODE[3], 1.0);
        assert_eq!(
            FP4_CODE[8].to_bits(),
            0,
            "entry 8 is +0.0 as in bitsandbytes"
        );
    }

    #[test]
    fn fp4_bounds_send_small_negatives_to_code_0_and_small_positives_to_code_8() {
        let b = Bounds4::new(QuantType::Fp4);
        assert_eq!(b.order[7], 0);
        assert_eq!(b.order[8], 8);
        assert_eq!(b.quantize(-1e-4), 0);
        assert_eq!(b.quantize(0.0), 0);
        assert_eq!(b.quantize(1e-4), 8);
        assert_eq!(b.quantize(1.0), 3);
        assert_eq!(b.quantize(-1.0), 11);
    }

    #[test]
    fn dynamic_map_shape() {
        let m = dynamic_map_signed();
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m[127], 0.0);
        assert_eq!(m[255], 1.0);
        assert!(m[0] > -1.0 && m[0] < -0.99);
    }

    #[test]
    fn quant_type_parses_case_insensitively() {
        assert_eq!("NF4".parse::<QuantType>(), Ok(QuantType::Nf4));
        assert_eq!("fp4".parse::<QuantType>(), Ok(QuantType::Fp4));
        assert!(matches!(
            "int4".parse::<QuantType>(),
            Err(QuantError::UnknownQuantType { .. })
        ));
    }
}
