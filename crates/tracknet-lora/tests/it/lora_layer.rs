//! Single `LoraLinear` layers on `Autodiff<NdArray>`: PEFT's math, init, what trains, merging.

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::prelude::*;
use tracknet_lora::{
    BaseLinear, LoraInit, LoraLinear, LoraLinearConfig, LoraSettings, PathVisitor,
};
use tracknet_quant::QuantBackend;
use tracknet_quant::linear::{CodeBooks, QuantSpec};

type B = Autodiff<NdArray<f32>>;

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// Deterministic, irregular values (no RNG needed).
pub(crate) fn vals(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.7311 + seed).sin() * 0.9) + 0.05 * (i % 3) as f32)
        .collect()
}

fn t2(v: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &dev())
}

pub(crate) fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Row-major `[n, k] · [k, m]` in f64.
fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k).map(|t| a[i * k + t] * b[t * m + j]).sum();
        }
    }
    out
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = a[i * cols + j];
        }
    }
    out
}

pub(crate) const N: usize = 4; // rows of x
pub(crate) const IN: usize = 5;
pub(crate) const OUT: usize = 3;
pub(crate) const R: usize = 2;

pub(crate) struct Case {
    pub x: Vec<f32>,    // [N, IN]
    pub w: Vec<f32>,    // [OUT, IN] (PyTorch)
    pub bias: Vec<f32>, // [OUT]
    pub a: Vec<f32>,    // [R, IN] (PEFT lora_A.weight)
    pub b: Vec<f32>,    // [OUT, R] (PEFT lora_B.weight)
}

pub(crate) fn case() -> Case {
    Case {
        x: vals(N * IN, 0.3),
        w: vals(OUT * IN, 1.1),
        bias: vals(OUT, 2.2),
        a: vals(R * IN, 3.3),
        b: vals(OUT * R, 4.4),
    }
}

/// `x·Wᵀ + b + x·Aᵀ·Bᵀ·scaling`, in f64 from the PyTorch-layout tensors.
pub(crate) fn reference(c: &Case, scaling: f64) -> Vec<f32> {
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (x, w, a, b) = (f(&c.x), f(&c.w), f(&c.a), f(&c.b));
    let base = matmul(&x, &transpose(&w, OUT, IN), N, IN, OUT);
    let xa = matmul(&x, &transpose(&a, R, IN), N, IN, R);
    let delta = matmul(&xa, &transpose(&b, OUT, R), N, R, OUT);
    (0..N * OUT)
        .map(|i| (base[i] + c.bias[i % OUT] as f64 + delta[i] * scaling) as f32)
        .collect()
}

fn adapted(c: &Case, settings: &LoraSettings) -> LoraLinear<B> {
    adapted_on(c, settings, &dev())
}

/// The case's layer with its adapter, on any backend.
pub(crate) fn adapted_on<Bk: QuantBackend>(
    c: &Case,
    settings: &LoraSettings,
    device: &Bk::Device,
) -> LoraLinear<Bk> {
    let base = LoraLinear::<Bk>::from_torch(
        tg(&c.w, [OUT, IN], device),
        Some(tg(&c.bias, [OUT], device)),
    );
    let mut layer = base.with_adapter(settings, device).unwrap();
    layer
        .set_adapter_weights(tg(&c.a, [R, IN], device), tg(&c.b, [OUT, R], device))
        .unwrap();
    layer
}

pub(crate) fn settings(alpha: f64, rslora: bool) -> LoraSettings {
    LoraSettings {
        r: R,
        alpha,
        use_rslora: rslora,
        ..Default::default()
    }
}

#[test]
fn adapter_weights_round_trip_in_peft_layout() {
    let c = case();
    let layer = adapted(&c, &settings(4.0, false));
    // Burn stores the transposes.
    assert_eq!(layer.lora_a.as_ref().unwrap().weight.dims(), [IN, R]);
    assert_eq!(layer.lora_b.as_ref().unwrap().weight.dims(), [R, OUT]);
    let (a, b) = layer.adapter_weights().unwrap();
    assert_eq!(a.dims(), [R, IN]);
    assert_eq!(b.dims(), [OUT, R]);
    assert_eq!(host(a), c.a);
    assert_eq!(host(b), c.b);
    assert_eq!(layer.rank(), Some(R));
}

#[test]
fn fresh_adapter_changes_nothing_and_a_has_pytorch_init() {
    let (d_in, d_out, r) = (256, 64, 16);
    let base = LoraLinearConfig::new(d_in, d_out)
        .with_bias(true)
        .init::<B>(&dev());
    let x: Tensor<B, 2> = t2(&vals(3 * d_in, 0.9), [3, d_in]);
    let before = host(base.forward(x.clone()));
    let s = LoraSettings {
        r,
        alpha: 32.0,
        ..Default::default()
    };
    assert_eq!(s.init, LoraInit::PeftDefault);
    let layer = base.with_adapter(&s, &dev()).unwrap();
    let after = host(layer.forward(x));
    assert_eq!(before, after, "a fresh adapter (B = 0) must be a no-op");

    let (a, b) = layer.adapter_weights().unwrap();
    assert!(host(b).iter().all(|&v| v == 0.0), "B must start at zero");
    let a = host(a);
    assert_eq!(a.len(), r * d_in);
    // torch.nn.Linear / PEFT: kaiming_uniform(a=√5) on A [r, in] = U(±1/√in).
    let bound = 1.0 / (d_in as f32).sqrt();
    let max = a.iter().cloned().fold(f32::MIN, f32::max);
    let min = a.iter().cloned().fold(f32::MAX, f32::min);
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let std = (a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
    let want_std = bound / 3f32.sqrt();
    println!(
        "A init: bound {bound}, min {min}, max {max}, std {std} (uniform: {want_std}), mean {mean}"
    );
    assert!(
        max <= bound && min >= -bound,
        "A outside ±{bound}: [{min}, {max}]"
    );
    assert!(
        max > 0.9 * bound && min < -0.9 * bound,
        "A does not fill ±{bound}"
    );
    assert!(
        (std - want_std).abs() < 0.1 * want_std,
        "std {std} vs {want_std}"
    );
    assert!(mean.abs() < 0.1 * want_std, "mean {mean}");
}

#[test]
fn random_b_init_is_not_zero() {
    let s = LoraSettings {
        r: 4,
        init: LoraInit::RandomB,
        ..Default::default()
    };
    let layer = LoraLinearConfig::new(8, 6)
        .with_bias(false)
        .init::<B>(&dev())
        .with_adapter(&s, &dev())
        .unwrap();
    let b = host(layer.adapter_weights().unwrap().1);
    let bound = 1.0 / 2.0; // 1/√r
    assert!(b.iter().any(|&v| v != 0.0));
    assert!(b.iter().all(|&v| v.abs() <= bound));
}

/// Every float parameter as `(path, trainable)`.
pub(crate) fn param_paths<Bk: Backend, M: Module<Bk>>(m: &M) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    m.visit(&mut PathVisitor::new(|p: &str, _n: usize, t: bool| {
        out.push((p.to_string(), t))
    }));
    out
}

/// Checks `dL/d(Aᵀ)` and `dL/d(Bᵀ)` for `L = sum(y)` against the closed forms
/// `s·colsum(x) ⊗ rowsum(Bᵀ)` and `s·colsum(x·Aᵀ) ⊗ 1`.
pub(crate) fn check_adapter_grads<I: QuantBackend>(
    layer: &LoraLinear<Autodiff<I>>,
    c: &Case,
    scaling: f64,
    device: &I::Device,
) {
    let x = tg(&c.x, [N, IN], device);
    let grads = layer.forward(x).sum().backward();
    let ga = host(
        layer
            .lora_a
            .as_ref()
            .unwrap()
            .weight
            .grad(&grads)
            .expect("A has a gradient"),
    );
    let gb = host(
        layer
            .lora_b
            .as_ref()
            .unwrap()
            .weight
            .grad(&grads)
            .expect("B has a gradient"),
    );
    let colsum_x: Vec<f64> = (0..IN)
        .map(|j| (0..N).map(|i| c.x[i * IN + j] as f64).sum())
        .collect();
    // rowsum of Bᵀ [R, OUT] over OUT = for each r, sum_o B[o, r].
    let b_sum: Vec<f64> = (0..R)
        .map(|k| (0..OUT).map(|o| c.b[o * R + k] as f64).sum())
        .collect();
    let want_ga: Vec<f32> = (0..IN * R)
        .map(|idx| (scaling * colsum_x[idx / R] * b_sum[idx % R]) as f32)
        .collect();
    // colsum of x·Aᵀ: for each r, sum_j colsum_x[j]·A[r, j].
    let xa_sum: Vec<f64> = (0..R)
        .map(|k| (0..IN).map(|j| colsum_x[j] * c.a[k * IN + j] as f64).sum())
        .collect();
    let want_gb: Vec<f32> = (0..R * OUT)
        .map(|idx| (scaling * xa_sum[idx / OUT]) as f32)
        .collect();
    let (ea, eb) = (max_abs_diff(&ga, &want_ga), max_abs_diff(&gb, &want_gb));
    println!("grad A err {ea:e}, grad B err {eb:e}");
    assert!(ea < 1e-4 && eb < 1e-4, "{ea} {eb}");
    assert!(ga.iter().any(|v| v.abs() > 1e-3) && gb.iter().any(|v| v.abs() > 1e-3));
}

/// The merge tests run on the plain backend (inference after training) and on the autodiff
/// backend the model trains on (merging right after training, without a backend switch).
pub(crate) fn tg<Bk: Backend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
    device: &Bk::Device,
) -> Tensor<Bk, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

pub(crate) fn merge_then_unmerge<Bk: QuantBackend>(device: &Bk::Device) {
    let c = case();
    let mut layer = LoraLinear::<Bk>::from_torch(
        tg(&c.w, [OUT, IN], device),
        Some(tg(&c.bias, [OUT], device)),
    )
    .with_adapter(&settings(6.0, false), device)
    .unwrap();
    layer
        .set_adapter_weights(tg(&c.a, [R, IN], device), tg(&c.b, [OUT, R], device))
        .unwrap();
    let x: Tensor<Bk, 2> = tg(&c.x, [N, IN], device);
    let unmerged = host(layer.forward(x.clone()));
    let BaseLinear::Dense(l) = &layer.base else {
        panic!()
    };
    let w0 = host(l.weight.val());

    layer.merge().unwrap();
    assert!(layer.merged);
    let merged = host(layer.forward(x.clone()));
    let e = max_abs_diff(&merged, &unmerged);
    println!("merged vs unmerged forward: {e:e}");
    assert!(e < 1e-5, "{e}");
    let BaseLinear::Dense(l) = &layer.base else {
        panic!()
    };
    assert!(
        !l.weight.val().is_require_grad(),
        "the merged base weight stays frozen"
    );
    let w_merged = host(l.weight.val());
    assert!(
        max_abs_diff(&w_merged, &w0) > 1e-2,
        "merge must change the base weight"
    );
    // Merging twice is a no-op.
    layer.merge().unwrap();
    assert_eq!(host(layer.forward(x.clone())), merged);

    layer.unmerge();
    assert!(!layer.merged);
    let BaseLinear::Dense(l) = &layer.base else {
        panic!()
    };
    let e_w = max_abs_diff(&host(l.weight.val()), &w0);
    println!("unmerge restores the weight within {e_w:e}");
    assert!(e_w < 1e-6, "{e_w}");
    assert!(max_abs_diff(&host(layer.forward(x)), &unmerged) < 1e-5);
}

pub(crate) fn merge_4bit<Bk: QuantBackend>(device: &Bk::Device) {
    let (d_in, d_out) = (64, 32);
    // Weights at a realistic scale (≈ U(±1/√in)), so that 1e-5 is a meaningful bound.
    let w: Vec<f32> = vals(d_out * d_in, 0.5).iter().map(|v| v * 0.125).collect();
    let mut layer = LoraLinear::<Bk>::from_torch(
        tg(&w, [d_out, d_in], device),
        Some(tg(&vals(d_out, 0.25), [d_out], device)),
    )
    .quantize(QuantSpec::default(), &CodeBooks::new(device))
    .unwrap()
    .with_adapter(&settings(4.0, false), device)
    .unwrap();
    layer
        .set_adapter_weights(
            tg(
                &vals(R * d_in, 7.0)
                    .iter()
                    .map(|v| v * 0.125)
                    .collect::<Vec<_>>(),
                [R, d_in],
                device,
            ),
            tg(
                &vals(d_out * R, 8.0)
                    .iter()
                    .map(|v| v * 0.1)
                    .collect::<Vec<_>>(),
                [d_out, R],
                device,
            ),
        )
        .unwrap();
    let x: Tensor<Bk, 2> = tg(&vals(N * d_in, 0.1), [N, d_in], device);
    let y = host(layer.forward(x.clone()));

    let err = layer.merge().unwrap_err().to_string();
    assert!(err.contains("merge_and_unload"), "{err}");
    assert!(!layer.merged);
    assert_eq!(
        host(layer.forward(x.clone())),
        y,
        "a failed merge must change nothing"
    );

    let dense = layer.merge_and_unload();
    assert_eq!(dense.weight.dims(), [d_in, d_out]);
    assert!(dense.bias.is_some());
    let e = max_abs_diff(&host(dense.forward(x)), &y);
    let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("merge_and_unload (4-bit → f32) forward diff {e:e} (max |y| {scale})");
    assert!(e < 1e-5, "{e}");
}

#[test]
fn adapter_weights_of_a_trained_layer_load_into_another() {
    // Copying adapters between models on the training backend (e.g. reloading a checkpoint's
    // adapters into a fresh model): the source tensors are tracked.
    let c = case();
    let src = adapted(&c, &settings(4.0, false));
    let (a, b) = src.adapter_weights().unwrap();
    let mut dst = LoraLinearConfig::new(IN, OUT)
        .with_bias(true)
        .init::<B>(&dev())
        .with_adapter(&settings(4.0, false), &dev())
        .unwrap();
    dst.set_adapter_weights(a, b).unwrap();
    let (a2, b2) = dst.adapter_weights().unwrap();
    assert_eq!((host(a2), host(b2)), (c.a.clone(), c.b.clone()));
    assert!(dst.lora_a.as_ref().unwrap().weight.val().is_require_grad());
}

#[test]
fn set_adapter_weights_rejects_wrong_shapes() {
    let c = case();
    let mut layer = adapted(&c, &settings(4.0, false));
    // A with the wrong input width.
    let e = layer
        .set_adapter_weights(t2(&vals(R * 4, 0.0), [R, 4]), t2(&c.b, [OUT, R]))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("lora_A [r, {IN}]")), "{e}");
    assert!(e.contains(&format!("lora_B [{OUT}, r]")), "{e}");
    assert!(e.contains("[2, 4]"), "{e}");
    // B transposed (PyTorch vs Burn layout mix-up).
    let e = layer
        .set_adapter_weights(t2(&c.a, [R, IN]), t2(&c.b, [R, OUT]))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("lora_B [{OUT}, r]")), "{e}");
    // A rank different from the layer's.
    let e = layer
        .set_adapter_weights(
            t2(&vals(3 * IN, 0.0), [3, IN]),
            t2(&vals(OUT * 3, 0.0), [OUT, 3]),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rank 3") && e.contains(&format!("rank {R}")),
        "{e}"
    );
    // The layer is untouched by the failed calls.
    let (a, b) = layer.adapter_weights().unwrap();
    assert_eq!((host(a), host(b)), (c.a.clone(), c.b.clone()));
    // A layer without an adapter says so.
    let mut plain = LoraLinearConfig::new(IN, OUT)
        .with_bias(false)
        .init::<B>(&dev());
    let e = plain
        .set_adapter_weights(t2(&c.a, [R, IN]), t2(&c.b, [OUT, R]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no adapter"), "{e}");
}

#[test]
fn config_init_gives_a_torch_initialised_dense_base_without_adapter() {
    let cfg = LoraLinearConfig::new(64, 12);
    assert!(cfg.bias, "a bias by default, as torch.nn.Linear");
    let layer = cfg.init::<B>(&dev());
    assert_eq!(layer.dims(), (64, 12));
    assert!(!layer.has_adapter() && !layer.base.is_quantized());
    // U(±1/√in): every weight within 1/8, and spread over it.
    let w = match &layer.base {
        BaseLinear::Dense(l) => l.weight.val(),
        BaseLinear::Quant(_) => unreachable!(),
    };
    let max = w.clone().abs().max().into_scalar();
    assert!(max <= 0.125 && max > 0.1, "{max}");
    let no_bias = LoraLinearConfig::new(8, 4)
        .with_bias(false)
        .init::<B>(&dev());
    assert!(no_bias.base.bias().is_none());
    // A config round-trips through its JSON like every Burn config.
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains("\"d_input\":64"), "{json}");
}

/// With LoRA dropout inside a shard's stream, the one-node update (NdArray) draws the same
/// mask as Burn's ops with `rng::dropout` would: the same output and gradients, and the
/// stream left where the composed path leaves it.
#[test]
fn fused_update_with_dropout_matches_the_composed_ops_in_a_stream() {
    use tracknet_lora::rng;
    let c = case();
    let s = LoraSettings {
        dropout: 0.4,
        ..settings(4.0, false)
    };
    let run = |fused: bool| {
        let layer = adapted(&c, &s);
        let x = t2(&c.x, [N, IN]).require_grad();
        rng::with_stream(7, || {
            let y = if fused {
                layer.forward(x.clone())
            } else {
                let (a, b) = (
                    layer.lora_a.as_ref().unwrap(),
                    layer.lora_b.as_ref().unwrap(),
                );
                let xd = rng::dropout(x.clone(), 0.4);
                layer.base.forward(x.clone())
                    + xd.matmul(a.weight.val())
                        .matmul(b.weight.val())
                        .mul_scalar(layer.scaling)
            };
            let next = host(rng::uniform::<B, 1>([3], 0.0, 1.0, &dev()));
            let weights = t2(&vals(N * OUT, 9.9), [N, OUT]);
            let g = (y.clone() * weights).sum().backward();
            let ga = layer.lora_a.as_ref().unwrap().weight.grad(&g).unwrap();
            let gb = layer.lora_b.as_ref().unwrap().weight.grad(&g).unwrap();
            (host(y), host(x.grad(&g).unwrap()), host(ga), host(gb), next)
        })
    };
    let (fused, composed) = (run(true), run(false));
    assert_eq!(fused.4, composed.4, "the stream moved on differently");
    for (name, f, c) in [
        ("y", &fused.0, &composed.0),
        ("dx", &fused.1, &composed.1),
        ("dA", &fused.2, &composed.2),
        ("dB", &fused.3, &composed.3),
    ] {
        let err = max_abs_diff(f, c);
        assert!(err < 1e-5, "{name}: {err}");
    }
    // The mask did drop something: without dropout the output differs.
    let plain = host(adapted(&c, &settings(4.0, false)).forward(t2(&c.x, [N, IN])));
    assert!(max_abs_diff(&plain, &fused.0) > 1e-3);
}
