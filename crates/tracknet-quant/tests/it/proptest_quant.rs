//! Property tests of the 4-bit formats: packing, error bounds, degenerate blocks, double quant.

use proptest::prelude::*;
use tracknet_quant::blockwise::{MAX_BLOCKSIZE, MIN_BLOCKSIZE, NESTED_BLOCKSIZE};
use tracknet_quant::codebook::{codebook, dynamic_map_signed};
use tracknet_quant::{Absmax, QuantType, Quantized4, dequantize_4bit, quantize_4bit};

fn quant_type() -> impl Strategy<Value = QuantType> {
    prop_oneof![Just(QuantType::Nf4), Just(QuantType::Fp4)]
}

fn blocksize() -> impl Strategy<Value = usize> {
    (MIN_BLOCKSIZE.trailing_zeros()..=MAX_BLOCKSIZE.trailing_zeros()).prop_map(|s| 1usize << s)
}

/// Half the largest gap between neighbouring values of the sorted code book: the worst
/// normalised rounding error of a nearest-code quantizer on [-1, 1].
fn half_max_gap(q: QuantType) -> f32 {
    let mut code = codebook(q).to_vec();
    code.sort_by(f32::total_cmp);
    code.windows(2).map(|w| w[1] - w[0]).fold(0.0, f32::max) / 2.0
}

fn unpack(q: &Quantized4) -> Vec<u8> {
    q.packed
        .iter()
        .flat_map(|&b| [b >> 4, b & 0x0f])
        .take(q.numel)
        .collect()
}

fn block_absmax(q: &Quantized4) -> Vec<f32> {
    q.absmax.to_f32()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Packed codes unpack (high nibble first) to exactly the codes that dequantize to the
    /// output, and re-packing them reproduces the bytes.
    #[test]
    fn pack_unpack_round_trip(
        w in prop::collection::vec(-4.0f32..4.0, 1..700),
        qt in quant_type(),
        bs in blocksize(),
    ) {
        let q = quantize_4bit(&w, qt, bs, false).unwrap();
        prop_assert_eq!(q.packed.len(), w.len().div_ceil(2));
        let codes = unpack(&q);
        prop_assert_eq!(codes.len(), w.len());
        let mut repacked: Vec<u8> = codes.chunks(2)
            .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0))
            .collect();
        if w.len() % 2 == 1 {
            // The pad nibble is the code of 0.0; restore it for the byte comparison.
            let last = repacked.len() - 1;
            repacked[last] |= q.packed[last] & 0x0f;
        }
        prop_assert_eq!(&repacked, &q.packed);
        let code = codebook(qt);
        let absmax = block_absmax(&q);
        let deq = dequantize_4bit(&q);
        for (i, (&c, &d)) in codes.iter().zip(&deq).enumerate() {
            prop_assert_eq!(d.to_bits(), (code[usize::from(c)] * absmax[i / bs]).to_bits());
        }
    }

    /// Each element is within half the largest code gap of its block's absmax, whatever the
    /// size (including sizes that are not multiples of 64 and a final partial block).
    #[test]
    fn dequant_error_is_at_most_half_the_largest_gap(
        w in prop::collection::vec(-10.0f32..10.0, 1..1000),
        qt in quant_type(),
        bs in blocksize(),
    ) {
        let q = quantize_4bit(&w, qt, bs, false).unwrap();
        let Absmax::Plain(absmax) = &q.absmax else { panic!("plain absmax expected") };
        prop_assert_eq!(absmax.len(), w.len().div_ceil(bs));
        let half = half_max_gap(qt);
        let deq = dequantize_4bit(&q);
        prop_assert_eq!(deq.len(), w.len());
        for (i, (&x, &y)) in w.iter().zip(&deq).enumerate() {
            let am = absmax[i / bs];
            let bound = half * am + 4.0 * f32::EPSILON * am;
            prop_assert!((x - y).abs() <= bound, "i={} x={} y={} bound={}", i, x, y, bound);
        }
    }

    /// Constant blocks come back exactly (both code books hold +-1), all-zero blocks come back
    /// as zeros.
    #[test]
    fn constant_and_zero_blocks_are_exact(
        (mantissa, exp, negative) in (1.0f32..2.0, -30i32..30, any::<bool>()),
        blocks in 1usize..4,
        tail in 0usize..64,
        qt in quant_type(),
        bs in blocksize(),
        dq in any::<bool>(),
    ) {
        let c = if negative { -1.0 } else { 1.0 } * mantissa * 2f32.powi(exp);
        let n = blocks * bs + tail;
        let mut w = vec![c; n];
        // One block of zeros in the middle.
        let zero_block = blocks / 2;
        w[zero_block * bs..(zero_block + 1) * bs].fill(0.0);
        let q = quantize_4bit(&w, qt, bs, dq).unwrap();
        let deq = dequantize_4bit(&q);
        for (i, (&x, &y)) in w.iter().zip(&deq).enumerate() {
            if x == 0.0 {
                prop_assert_eq!(y, 0.0, "zero block element {}", i);
            } else if !dq {
                prop_assert_eq!(y, x, "constant element {}", i);
            } else {
                // With double quant the block scale itself is 8-bit: check the sign and the
                // nested bound instead.
                prop_assert!(y.signum() == x.signum() || y == 0.0, "element {}", i);
            }
        }
    }

    /// Double quant: the recovered f32 absmax is within half the largest gap of the signed
    /// dynamic map (plus one look-up-table bin) times the nested absmax of the true one, and
    /// the 4-bit codes are the same as without double quant.
    #[test]
    fn double_quant_absmax_error_bound(
        w in prop::collection::vec(-3.0f32..3.0, 32..6000),
        qt in quant_type(),
        bs in blocksize(),
    ) {
        let plain = quantize_4bit(&w, qt, bs, false).unwrap();
        let dq = quantize_4bit(&w, qt, bs, true).unwrap();
        prop_assert_eq!(&plain.packed, &dq.packed);
        let Absmax::Plain(exact) = &plain.absmax else { panic!("plain absmax expected") };
        let Absmax::Double { absmax_u8, nested_absmax, offset, nested_blocksize } = &dq.absmax
        else { panic!("double absmax expected") };
        prop_assert_eq!(*nested_blocksize, NESTED_BLOCKSIZE);
        prop_assert_eq!(absmax_u8.len(), exact.len());
        prop_assert_eq!(nested_absmax.len(), exact.len().div_ceil(NESTED_BLOCKSIZE));
        let mean = exact.iter().map(|&a| f64::from(a)).sum::<f64>() / exact.len() as f64;
        prop_assert!((f64::from(*offset) - mean).abs() <= 1e-6 * mean.abs().max(1.0));
        let map = dynamic_map_signed();
        let half = map.windows(2).map(|p| p[1] - p[0]).fold(0.0, f32::max) / 2.0;
        let tol = half.max(1.0 + map[0]) + 2.0 / 65535.0;
        let recovered = dq.absmax.to_f32();
        for (i, (&a, &r)) in exact.iter().zip(&recovered).enumerate() {
            let nested = nested_absmax[i / NESTED_BLOCKSIZE];
            let bound = tol * nested + 4.0 * f32::EPSILON * (a.abs() + nested);
            prop_assert!((a - r).abs() <= bound, "block {}: {} vs {} (bound {})", i, a, r, bound);
        }
        prop_assert!(dq.stored_bytes() < plain.stored_bytes() || exact.len() < 3);
    }
}

#[test]
fn memory_math_matches_the_documented_bits_per_weight() {
    let n = 64 * 256 * 4;
    let w: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let plain = quantize_4bit(&w, QuantType::Nf4, 64, false).unwrap();
    let dq = quantize_4bit(&w, QuantType::Nf4, 64, true).unwrap();
    let bits = |bytes: usize| bytes as f64 * 8.0 / n as f64;
    // 4 + 32/64 bits.
    assert_eq!(bits(plain.stored_bytes()), 4.5);
    // 4 + 8/64 + 32/(64*256) bits, plus the one f32 offset.
    let expected = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0) + 32.0 / n as f64;
    assert!(
        (bits(dq.stored_bytes()) - expected).abs() < 1e-12,
        "{}",
        bits(dq.stored_bytes())
    );
}
