//! The 4-bit layer on every backend in the build — NdArray always, wgpu (lavapipe in CI) and
//! CUDA with their features: the same bodies, instantiated per backend by `backend_tests!`.

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorPrimitive};
use safetensors::SafeTensors;
use tracknet_quant::ops::{Q4Weight, dequantize_generic};
use tracknet_quant::{
    Absmax, CodeBooks, ComputeDtype, QuantBackend, QuantSpec, QuantType, Quantized4,
    QuantizedLinear, dequantize_4bit, quantize_4bit,
};
use tracknet_testkit::read;

use crate::bnb_parity::{Tensors, bits, first_diff, load_cases};

tracknet_testkit::backend_tests!(
    bnb_codes_dequantize_bit_exact_on_the_device,
    the_backend_dequantizer_equals_the_generic_tensor_ops,
    forward_and_input_gradient_equal_the_dense_layer,
    bnb_weights_multiply_and_backpropagate_on_the_fused_and_the_tiled_path,
    half_compute_dtype_multiplies_in_half_where_the_backend_has_it,
    double_quant_absmax_is_decoded_once_where_the_backend_keeps_it,
    the_memory_probe_reads_this_threads_allocator_from_another_thread,
);

/// The GPU backends are Burn's kernel-fusion wrapper around the CubeCL backend (what users get
/// from Burn by default): the tests above ran the 4-bit kernels as custom operations in the
/// fusion stream (`tracknet_quant::ops` `fusion.rs`).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_is_the_fusion_wrapper() {
    let name = std::any::type_name::<burn::backend::Wgpu>();
    assert!(name.contains("Fusion<"), "{name}");
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_is_the_fusion_wrapper() {
    let name = std::any::type_name::<burn::backend::Cuda>();
    assert!(name.contains("Fusion<"), "{name}");
}

/// The bench's device-memory figure: a probe made on this thread, read from another thread
/// (as the bench's sampler does), counts this thread's tensors as they come and go. NdArray has
/// none: its tensors are on the heap.
fn the_memory_probe_reads_this_threads_allocator_from_another_thread<B: QuantBackend>(
    device: &B::Device,
) {
    let Some(probe) = B::memory_probe(device) else {
        assert!(
            B::name(device).to_lowercase().contains("ndarray"),
            "{}: a device backend without a memory probe",
            B::name(device)
        );
        return;
    };
    let read = || {
        B::sync(device).expect("sync");
        std::thread::scope(|s| s.spawn(&probe).join().expect("probe thread")).expect("a reading")
    };
    let before = read();
    // 16 MiB of f32 made here.
    let t = Tensor::<B, 2>::ones([2048, 2048], device) * 2.0;
    let with = read();
    assert!(
        with.in_use >= before.in_use + (16 << 20),
        "16 MiB tensor not counted: {before:?} → {with:?}"
    );
    assert!(with.reserved >= with.in_use, "{with:?}");
    assert_eq!(host(t.clone().slice([0..1, 0..2])), vec![2.0, 2.0]);
    drop(t);
    let after = read();
    assert!(
        after.in_use + (16 << 20) <= with.in_use,
        "freed tensor still counted: {with:?} → {after:?}"
    );
    // The pool keeps its pages until a cleanup: reserved is the high-water mark.
    assert!(after.reserved >= with.reserved, "{with:?} → {after:?}");
}

fn host<const D: usize, B: Backend>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

/// bitsandbytes' own codes and scales, uploaded and dequantized on the device (double
/// quantization undone there too), give bitsandbytes' dequantized tensor bit for bit.
fn bnb_codes_dequantize_bit_exact_on_the_device<B: QuantBackend>(device: &B::Device) {
    let books = CodeBooks::<B>::new(device);
    let cases = load_cases();
    assert!(!cases.is_empty(), "bnb/cases.json lists no cases");
    for case in cases {
        let bytes = read(&case.file);
        let t = Tensors {
            st: SafeTensors::deserialize(&bytes)
                .unwrap_or_else(|e| panic!("{}: not safetensors: {e}", case.file.display())),
            path: &case.file,
        };
        let layer = bnb_layer::<B>(&case, &t, &books, device);
        // `dequantize` is Burn's `[in, out]`; bitsandbytes' tensor is PyTorch's `[out, in]`.
        let ours = host(layer.dequantize().transpose());
        let (_, expected) = t.f32("dequantized");
        assert!(
            bits(&ours) == bits(&expected),
            "{}: device dequantization differs from bitsandbytes ({})",
            case.name,
            first_diff(&ours, &expected)
        );
    }
}

/// The 4-bit layer holding bitsandbytes' own codes and scales of `case` (no bias).
fn bnb_layer<B: QuantBackend>(
    case: &crate::bnb_parity::Case,
    t: &Tensors,
    books: &CodeBooks<B>,
    device: &B::Device,
) -> QuantizedLinear<B> {
    let absmax = if case.double_quant {
        Absmax::Double {
            absmax_u8: t.u8("absmax_u8").1,
            nested_absmax: t.f32("nested_absmax").1,
            offset: t.f32("offset").1[0],
            nested_blocksize: case
                .nested_blocksize
                .unwrap_or_else(|| panic!("{}: dq case without nested_blocksize", case.name)),
        }
    } else {
        Absmax::Plain(t.f32("absmax").1)
    };
    let [out, inp] = case.shape[..] else {
        panic!("{}: expected a 2-D weight, got {:?}", case.name, case.shape)
    };
    let q = Quantized4 {
        quant_type: case.quant_type,
        blocksize: case.blocksize,
        numel: out * inp,
        packed: t.u8("packed").1,
        absmax,
    };
    QuantizedLinear::<B>::from_quantized(&q, inp, out, None, ComputeDtype::F32, books, device)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

/// `x · Wᵀ` and `g · W` with bitsandbytes' dequantized weight, in f64 on the host.
fn host_matmuls(
    x: &[f32],
    g: &[f32],
    w: &[f32],
    rows: usize,
    [out, inp]: [usize; 2],
) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; rows * out];
    let mut dx = vec![0f64; rows * inp];
    for r in 0..rows {
        for o in 0..out {
            for i in 0..inp {
                let wv = w[o * inp + i] as f64;
                y[r * out + o] += x[r * inp + i] as f64 * wv;
                dx[r * inp + i] += g[r * out + o] as f64 * wv;
            }
        }
    }
    (y, dx)
}

fn max_rel_f64(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs()))
        / scale
}

/// bitsandbytes' codes multiply like bitsandbytes' dequantized weight, forward and input
/// gradient, within 1e-4 (relative to the largest output), for a few rows — the fused kernels
/// on the CubeCL backends, which never write the dense weight — and for many rows (dequantize,
/// then the tiled matmul).
fn bnb_weights_multiply_and_backpropagate_on_the_fused_and_the_tiled_path<B: QuantBackend>(
    device: &B::Device,
) {
    let books = CodeBooks::<Autodiff<B>>::new(device);
    let cases = load_cases();
    assert!(!cases.is_empty(), "bnb/cases.json lists no cases");
    // One row (the matvec kernel), a partial and a full row tile, and the dequantize path.
    let row_counts = [
        1,
        5,
        tracknet_quant::FUSED_MAX_ROWS,
        tracknet_quant::FUSED_MAX_ROWS + 7,
    ];
    // The cases up to 384×384 elements (the host reference is slow), else the smallest one, so
    // that a fixture set of only large cases is still checked.
    let numel = |c: &&crate::bnb_parity::Case| c.shape.iter().product::<usize>();
    let mut small: Vec<_> = cases.iter().filter(|c| numel(c) <= 384 * 384).collect();
    if small.is_empty() {
        small.extend(cases.iter().min_by_key(numel));
    }
    for case in small {
        let bytes = read(&case.file);
        let t = Tensors {
            st: SafeTensors::deserialize(&bytes)
                .unwrap_or_else(|e| panic!("{}: not safetensors: {e}", case.file.display())),
            path: &case.file,
        };
        let [out, inp] = [case.shape[0], case.shape[1]];
        let layer = bnb_layer::<Autodiff<B>>(case, &t, &books, device);
        let (_, w) = t.f32("dequantized");
        for (k, &rows) in row_counts.iter().enumerate() {
            let x = weights(rows * inp, 10 + k as u64);
            let g = weights(rows * out, 20 + k as u64);
            let (want_y, want_dx) = host_matmuls(&x, &g, &w, rows, [out, inp]);
            let xt = Tensor::<Autodiff<B>, 1>::from_floats(x.as_slice(), device)
                .reshape([rows, inp])
                .require_grad();
            let y = layer.forward(xt.clone());
            let gt =
                Tensor::<Autodiff<B>, 1>::from_floats(g.as_slice(), device).reshape([rows, out]);
            let grads = (y.clone() * gt).sum().backward();
            let dx = xt.grad(&grads).expect("input gradient");
            let (ey, edx) = (
                max_rel_f64(&host(y.inner()), &want_y),
                max_rel_f64(&host(dx), &want_dx),
            );
            assert!(
                ey <= 1e-4 && edx <= 1e-4,
                "{} with {rows} rows: output {ey:e}, input gradient {edx:e} off bitsandbytes' weight",
                case.name
            );
        }
    }
}

/// Deterministic weights with outliers.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    super::layer::outlier_weights(n, seed, 397, 30.0)
}

fn max_rel<const D: usize, B: Backend>(got: Tensor<B, D>, want: Tensor<B, D>) -> f32 {
    let scale = want
        .clone()
        .abs()
        .max()
        .into_scalar()
        .elem::<f32>()
        .max(1e-6);
    (got - want).abs().max().into_scalar().elem::<f32>() / scale
}

/// Under autodiff, the 4-bit layer's output and input gradient equal those of a dense layer
/// holding the dequantized weight (which also matches the host dequantizer), for NF4/FP4 with
/// and without double quantization, on a weight whose last absmax block is partial.
fn forward_and_input_gradient_equal_the_dense_layer<B: QuantBackend>(device: &B::Device) {
    let books = CodeBooks::<Autodiff<B>>::new(device);
    let (out, inp) = (37, 45);
    let w = weights(out * inp, 3);
    for quant_type in [QuantType::Nf4, QuantType::Fp4] {
        for double_quant in [false, true] {
            let spec = QuantSpec {
                quant_type,
                blocksize: 64,
                double_quant,
                compute: ComputeDtype::F32,
            };
            let bias = Tensor::<Autodiff<B>, 1>::random([out], Distribution::Default, device);
            let layer = QuantizedLinear::<Autodiff<B>>::from_torch_weight(
                &w,
                inp,
                out,
                Some(bias.clone()),
                spec,
                &books,
            )
            .unwrap();
            let dense = layer.dequantize();
            let want_w = dequantize_4bit(&quantize_4bit(&w, quant_type, 64, double_quant).unwrap());
            let host_w = Tensor::<Autodiff<B>, 1>::from_floats(want_w.as_slice(), device)
                .reshape([out, inp])
                .transpose();
            assert!(
                bits(&host(dense.clone())) == bits(&host(host_w)),
                "{spec:?}: device dequantization differs from the host's"
            );

            let x0 = Tensor::<Autodiff<B>, 3>::random(
                [2, 5, inp],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let g = Tensor::<Autodiff<B>, 3>::random(
                [2, 5, out],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let x = x0.clone().require_grad();
            let y = layer.forward(x.clone());
            assert_eq!(y.dims(), [2, 5, out]);
            let grads = (y.clone() * g.clone()).sum().backward();
            let dx = x.grad(&grads).expect("input gradient");

            let xr = x0.require_grad();
            let yr = xr.clone().matmul(dense.unsqueeze::<3>()) + bias.clone().unsqueeze::<3>();
            let grads_r = (yr.clone() * g).sum().backward();
            let dxr = xr.grad(&grads_r).expect("reference input gradient");

            let e = max_rel(y.inner(), yr.inner());
            assert!(e < 1e-5, "{spec:?}: forward differs by {e} (relative)");
            let e = max_rel(dx, dxr);
            assert!(
                e < 1e-5,
                "{spec:?}: input gradient differs by {e} (relative)"
            );
            assert!(
                layer
                    .bias
                    .as_ref()
                    .and_then(|b| b.val().grad(&grads))
                    .is_none(),
                "{spec:?}: the frozen bias got a gradient"
            );
        }
    }
}

/// The backend's own dequantizer (NdArray's host kernel, the CubeCL kernel on wgpu and CUDA)
/// gives exactly what the generic tensor-op dequantizer gives, for every format.
fn the_backend_dequantizer_equals_the_generic_tensor_ops<B: QuantBackend>(device: &B::Device) {
    let books = CodeBooks::<B>::new(device);
    // 2310 weights: not a multiple of 64 (a partial last block) nor of 8 (a partial last word).
    let (out, inp) = (33, 70);
    let w = weights(out * inp, 2);
    for quant_type in [QuantType::Nf4, QuantType::Fp4] {
        for double_quant in [false, true] {
            let spec = QuantSpec {
                quant_type,
                blocksize: 64,
                double_quant,
                compute: ComputeDtype::F32,
            };
            let layer =
                QuantizedLinear::<B>::from_torch_weight(&w, inp, out, None, spec, &books).unwrap();
            let q = Q4Weight::<B> {
                packed: layer.packed.clone().into_primitive(),
                absmax: layer.absmax_f32().into_primitive().tensor(),
                code: layer.code.clone().into_primitive().tensor(),
            };
            let generic = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
                dequantize_generic::<B>(q.clone(), layer.layout),
            ));
            let fast = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(B::q4_dequantize(
                q,
                layer.layout,
            )));
            assert_eq!(fast.dims(), [out, inp], "{spec:?}");
            assert!(bits(&host(generic)) == bits(&host(fast)), "{spec:?}");
        }
    }
}

/// `compute_dtype: float16` / `bfloat16`: the 4-bit matmul and its input gradient run in that
/// dtype where the backend has its arithmetic (f16 on wgpu/lavapipe and CUDA, bf16 on CUDA),
/// within that dtype's rounding of the f32 layer but not equal to it; elsewhere (NdArray, bf16
/// on wgpu) the layer is made with f32 compute and gives the f32 numbers bit for bit. For a
/// few rows the CubeCL backends run the fused kernels in that dtype, for more the tiled path.
fn half_compute_dtype_multiplies_in_half_where_the_backend_has_it<B: QuantBackend>(
    device: &B::Device,
) {
    let books = CodeBooks::<Autodiff<B>>::new(device);
    let (out, inp) = (48, 64);
    let w = weights(out * inp, 5);
    let layer = |compute| {
        let spec = QuantSpec {
            quant_type: QuantType::Nf4,
            blocksize: 64,
            double_quant: true,
            compute,
        };
        QuantizedLinear::<Autodiff<B>>::from_torch_weight(&w, inp, out, None, spec, &books).unwrap()
    };
    // 1 and 5 rows take the fused kernels on the CubeCL backends, 16 the tiled matmul.
    for rows in [1, 5, 16] {
        let x0 =
            Tensor::<Autodiff<B>, 2>::random([rows, inp], Distribution::Normal(0.0, 1.0), device);
        let run = |l: &QuantizedLinear<Autodiff<B>>| {
            let x = x0.clone().require_grad();
            let y = l.forward(x.clone());
            assert_eq!(y.dtype(), burn::tensor::DType::F32);
            let gx = x.grad(&y.clone().sum().backward()).unwrap();
            assert_eq!(gx.dtype(), burn::tensor::DType::F32);
            (host(y.inner()), host(gx))
        };
        let (y32, g32) = run(&layer(ComputeDtype::F32));
        for (compute, dtype, tol) in [
            (ComputeDtype::F16, burn::tensor::DType::F16, 2e-3),
            (ComputeDtype::BF16, burn::tensor::DType::BF16, 2e-2),
        ] {
            let l = layer(compute);
            let (y, g) = run(&l);
            if !B::q4_supports(device, dtype) {
                assert_eq!(l.layout.compute, ComputeDtype::F32, "{compute:?}");
                assert!(
                    bits(&y) == bits(&y32) && bits(&g) == bits(&g32),
                    "{compute:?}"
                );
                continue;
            }
            assert_eq!(l.layout.compute, compute);
            let rel = |a: &[f32], b: &[f32]| {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                a.iter()
                    .zip(b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max)
                    / scale
            };
            let (ey, eg) = (rel(&y, &y32), rel(&g, &g32));
            println!(
                "{compute:?}, {rows} rows: output off by {ey:e}, input gradient by {eg:e} (relative)"
            );
            assert!(
                ey > 0.0 && ey < tol,
                "{compute:?}, {rows} rows: output off by {ey}"
            );
            assert!(
                eg > 0.0 && eg < tol,
                "{compute:?}, {rows} rows: input gradient off by {eg}"
            );
        }
    }
}

/// Double quantization on the CubeCL backends keeps the f32 absmax decoded at construction
/// (no decode per forward); NdArray keeps only bitsandbytes' compressed form. Where kept, it
/// is the per-call decode bit for bit, the layer multiplies to the same bits, and its bytes
/// count in the layer's storage.
fn double_quant_absmax_is_decoded_once_where_the_backend_keeps_it<B: QuantBackend>(
    device: &B::Device,
) {
    let books = CodeBooks::<B>::new(device);
    let (out, inp) = (40, 96);
    let w = weights(out * inp, 9);
    let spec = QuantSpec {
        quant_type: QuantType::Nf4,
        blocksize: 64,
        double_quant: true,
        compute: ComputeDtype::F32,
    };
    let layer = QuantizedLinear::<B>::from_torch_weight(&w, inp, out, None, spec, &books).unwrap();
    let cube = B::name(device) != "ndarray";
    assert_eq!(B::q4_cache_absmax(), cube, "{}", B::name(device));
    assert_eq!(layer.absmax_decoded.is_some(), cube);
    let uncached = QuantizedLinear {
        absmax_decoded: None,
        ..layer.clone()
    };
    let nb = out * inp / 64;
    assert_eq!(
        layer.stored_weight_bytes() - uncached.stored_weight_bytes(),
        if cube { nb * 4 } else { 0 }
    );
    assert!(bits(&host(layer.absmax_f32())) == bits(&host(uncached.absmax_f32())));
    let x = Tensor::<B, 2>::random([3, inp], Distribution::Normal(0.0, 1.0), device);
    let (a, b) = (host(layer.forward(x.clone())), host(uncached.forward(x)));
    assert!(
        bits(&a) == bits(&b),
        "cached and decoded absmax multiply differently"
    );
}
