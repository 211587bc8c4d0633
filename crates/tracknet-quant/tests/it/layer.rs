//! QuantizedLinear on NdArray and Autodiff<NdArray>: forward, backward, storage.

use burn::backend::{Autodiff, NdArray};
use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use tracknet_quant::{
    CodeBooks, ComputeDtype, QuantSpec, QuantType, QuantizedLinear, dequantize_4bit, quantize_4bit,
};

type B = NdArray;
type AD = Autodiff<NdArray>;

fn max_abs<const D: usize, BB: Backend>(a: Tensor<BB, D>, b: Tensor<BB, D>) -> f32 {
    (a - b).abs().max().into_scalar().elem::<f32>()
}

fn weights(out: usize, inp: usize, seed: u64) -> Vec<f32> {
    outlier_weights(out * inp, seed, 997, 40.0)
}

/// Deterministic weights in ±0.1 with every `every`-th one `scale` times larger (outliers put
/// absmax blocks on very different scales); shared by the tests of this binary.
pub(crate) fn outlier_weights(n: usize, seed: u64, every: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = ((i as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(seed)
                >> 33) as f32
                / (1u64 << 31) as f32;
            let v = (x - 0.5) * 0.2;
            if i % every == 0 { v * scale } else { v }
        })
        .collect()
}

fn specs() -> Vec<QuantSpec> {
    let mut v = Vec::new();
    for qt in [QuantType::Nf4, QuantType::Fp4] {
        for dq in [false, true] {
            v.push(QuantSpec {
                quant_type: qt,
                blocksize: 64,
                double_quant: dq,
                compute: ComputeDtype::F32,
            });
        }
    }
    v
}

#[test]
fn forward_equals_dense_matmul_with_host_dequantized_weight() {
    let device = Default::default();
    let books = CodeBooks::<B>::new(&device);
    // 37 x 45 = 1665 weights: a partial final block.
    let (out, inp) = (37, 45);
    let w = weights(out, inp, 1);
    for spec in specs() {
        let bias = Tensor::<B, 1>::random([out], Distribution::Normal(0.0, 1.0), &device);
        let layer =
            QuantizedLinear::<B>::from_torch_weight(&w, inp, out, Some(bias.clone()), spec, &books)
                .unwrap();
        let host =
            dequantize_4bit(&quantize_4bit(&w, spec.quant_type, 64, spec.double_quant).unwrap());
        let dense = Tensor::<B, 1>::from_floats(host.as_slice(), &device).reshape([out, inp]);
        let x = Tensor::<B, 3>::random([2, 5, inp], Distribution::Normal(0.0, 1.0), &device);
        let want = x.clone().matmul(dense.clone().transpose().unsqueeze::<3>())
            + bias.clone().unsqueeze::<3>();
        let got = layer.forward(x);
        assert_eq!(got.dims(), [2, 5, out]);
        let err = max_abs(got, want);
        assert!(err < 1e-5, "{spec:?}: forward error {err}");
        // The on-device dequantization matches the host one to the bit pattern's precision.
        let err = max_abs(layer.dequantize(), dense.transpose());
        assert!(err < 1e-6, "{spec:?}: dequantize error {err}");
    }
}

#[test]
fn backward_gives_input_gradient_and_no_weight_gradient() {
    let device = Default::default();
    let books = CodeBooks::<AD>::new(&device);
    let (out, inp) = (48, 64);
    let w = weights(out, inp, 3);
    let spec = QuantSpec::default();
    let bias = Tensor::<AD, 1>::zeros([out], &device);
    let mut layer =
        QuantizedLinear::<AD>::from_torch_weight(&w, inp, out, Some(bias), spec, &books).unwrap();
    // Train the bias (LoRA's bias: all), never the weight.
    layer.bias = layer.bias.map(|b| b.set_require_grad(true));
    let x =
        Tensor::<AD, 2>::random([6, inp], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let y = layer.forward(x.clone());
    let loss = (y.clone() * y).sum();
    let grads = loss.backward();
    let gx = x.grad(&grads).unwrap();

    // Reference: the same through a dense layer holding the dequantized weight.
    let dense_w = layer.dequantize().inner();
    let x_ref = Tensor::<AD, 2>::from_inner(x.clone().inner()).require_grad();
    let y_ref = x_ref.clone().matmul(Tensor::from_inner(dense_w));
    let g_ref = (y_ref.clone() * y_ref).sum().backward();
    let gx_ref = x_ref.grad(&g_ref).unwrap();
    let err = max_abs(gx, gx_ref);
    assert!(err < 1e-4, "input gradient error {err}");
    let gb = layer.bias.as_ref().unwrap().val().grad(&grads);
    assert!(gb.is_some(), "a trainable bias gets a gradient");
    // The 4-bit tensors are constants: nothing to differentiate.
    assert!(!layer.absmax_f32().is_require_grad());
}

#[test]
fn storage_meets_the_bit_budgets() {
    let device = Default::default();
    let books = CodeBooks::<B>::new(&device);
    let (out, inp) = (384, 384);
    let w = weights(out, inp, 4);
    let mut spec = QuantSpec::default();
    let dq = QuantizedLinear::<B>::from_torch_weight(&w, inp, out, None, spec, &books).unwrap();
    spec.double_quant = false;
    let plain = QuantizedLinear::<B>::from_torch_weight(&w, inp, out, None, spec, &books).unwrap();
    println!(
        "bits/weight: nf4+dq {:.4}, nf4 {:.4}",
        dq.bits_per_weight(),
        plain.bits_per_weight()
    );
    assert!(dq.bits_per_weight() <= 4.13, "{}", dq.bits_per_weight());
    assert!(
        plain.bits_per_weight() <= 4.52,
        "{}",
        plain.bits_per_weight()
    );
    // Codes really are 4-bit on the device: one int32 word per eight weights.
    assert_eq!(dq.packed.dims()[0] * 8, out * inp);
    assert_eq!(dq.packed.dtype(), burn::tensor::DType::I32);
}

#[test]
fn from_linear_reads_burn_layout_and_rejects_bad_shapes() {
    let device = Default::default();
    let books = CodeBooks::<B>::new(&device);
    let lin = LinearConfig::new(64, 32).init::<B>(&device);
    let q = QuantizedLinear::from_linear(&lin, QuantSpec::default(), &books).unwrap();
    // Blocks run over PyTorch's `[out, in]` order: the dequantized weight is the host round
    // trip of the transposed Burn weight.
    let torch: Vec<f32> = lin.weight.val().transpose().into_data().into_vec().unwrap();
    let host = tracknet_quant::linear::host_roundtrip(&torch, QuantSpec::default()).unwrap();
    let got: Vec<f32> = q.dequantize().transpose().into_data().into_vec().unwrap();
    assert_eq!(got, host);
    let e = QuantizedLinear::<B>::from_torch_weight(
        &[0.0; 10],
        4,
        4,
        None,
        QuantSpec::default(),
        &books,
    )
    .unwrap_err();
    assert!(e.to_string().contains("weight"), "{e}");
    let bad_bias = Tensor::<B, 1>::zeros([5], &device);
    let e = QuantizedLinear::<B>::from_torch_weight(
        &[0.0; 16],
        4,
        4,
        Some(bad_bias),
        QuantSpec::default(),
        &books,
    )
    .unwrap_err();
    assert!(e.to_string().contains("bias"), "{e}");
}

#[test]
fn to_quantized_gives_back_the_bytes_the_layer_was_built_from() {
    let device = Default::default();
    let books = CodeBooks::<B>::new(&device);
    // 7 × 75 = 525 weights: an odd count, a partial last block and a partial last word.
    let (out, inp) = (7, 75);
    let w = weights(out, inp, 11);
    for spec in specs() {
        let q = quantize_4bit(&w, spec.quant_type, 64, spec.double_quant).unwrap();
        let layer =
            QuantizedLinear::<B>::from_quantized(&q, inp, out, None, spec.compute, &books, &device)
                .unwrap();
        assert_eq!(layer.to_quantized(), q, "{spec:?}");
    }
}

#[test]
fn config_init_quantizes_a_torch_initialised_weight_with_the_configs_format() {
    use tracknet_quant::QuantizedLinearConfig;
    let device = Default::default();
    let cfg = QuantizedLinearConfig::new(128, 16);
    assert_eq!(
        cfg.spec(),
        QuantSpec::default(),
        "bitsandbytes' defaults: NF4, 64, DQ"
    );
    let layer = cfg.init::<B>(&device).unwrap();
    assert_eq!(layer.num_weights(), 128 * 16);
    // NF4 + double quant: 4 bits + 8-bit absmax per 64 + nested fp32 per 256 blocks.
    let bits = layer.bits_per_weight();
    assert!((4.0..4.2).contains(&bits), "{bits}");
    let fp4 = cfg
        .clone()
        .with_quant_type(QuantType::Fp4)
        .with_double_quant(false)
        .with_bias(false)
        .init::<B>(&device)
        .unwrap();
    assert!(
        fp4.bits_per_weight() > bits,
        "f32 absmax costs more than 8-bit"
    );
    assert_eq!(fp4.to_quantized().quant_type, QuantType::Fp4);
    // The weight is U(±1/√128) before quantization: dequantized, within that bound (plus the
    // 8-bit double quantization's rounding of the block scale, under 1 %).
    let w = layer.dequantize();
    let max = w.abs().max().into_scalar().elem::<f32>();
    assert!(max <= 1.01 / 128f32.sqrt() && max > 0.07, "{max}");
    let x = Tensor::<B, 3>::ones([2, 3, 128], &device);
    assert_eq!(layer.forward(x).dims(), [2, 3, 16]);
}
