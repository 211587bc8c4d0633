//! LoRA layers on every backend in the build — NdArray always, wgpu (lavapipe in CI) and CUDA
//! with their features: PEFT's forward math, which parameters get gradients (dense and 4-bit
//! bases), and merging. The same bodies run on each backend (`backend_tests!`).

use burn::backend::Autodiff;
use tracknet_lora::{BaseLinear, LoraLinear};
use tracknet_quant::QuantBackend;
use tracknet_quant::linear::{CodeBooks, QuantSpec};

use crate::lora_layer::{
    IN, N, R, adapted_on, case, check_adapter_grads, host, max_abs_diff, merge_4bit,
    merge_then_unmerge, param_paths, reference, settings, tg, vals,
};

tracknet_testkit::backend_tests!(
    forward_is_peft_math_plain_scaling,
    forward_is_peft_math_rslora_scaling,
    gradients_reach_a_and_b_never_the_dense_base_weight,
    gradients_on_a_4bit_base_reach_only_the_adapter,
    merge_then_unmerge_on_a_dense_base,
    merge_on_4bit_errors_and_merge_and_unload_is_dense_and_equal,
);

fn forward_is_peft_math_plain_scaling<B: QuantBackend>(device: &B::Device) {
    let c = case();
    let s = settings(6.0, false);
    assert_eq!(s.scaling(), 3.0); // alpha / r
    let layer = adapted_on::<B>(&c, &s, device);
    assert_eq!(layer.scaling, 3.0);
    let y = host(layer.forward(tg::<B, 2>(&c.x, [N, IN], device)));
    let err = max_abs_diff(&y, &reference(&c, 3.0));
    println!("plain scaling: max abs error vs hand computation {err:e}");
    assert!(err < 1e-5, "{err}");
    // The adapter really contributes (a wrong scaling would be caught).
    assert!(max_abs_diff(&y, &reference(&c, 0.0)) > 1e-2);
    assert!(max_abs_diff(&y, &reference(&c, 1.5)) > 1e-2);
}

fn forward_is_peft_math_rslora_scaling<B: QuantBackend>(device: &B::Device) {
    let c = case();
    let s = settings(6.0, true);
    let expected = 6.0 / (R as f64).sqrt(); // alpha / sqrt(r)
    assert!((s.scaling() - expected).abs() < 1e-12);
    let layer = adapted_on::<B>(&c, &s, device);
    let y = host(layer.forward(tg::<B, 2>(&c.x, [N, IN], device)));
    let err = max_abs_diff(&y, &reference(&c, expected));
    println!("rsLoRA scaling: max abs error vs hand computation {err:e}");
    assert!(err < 1e-5, "{err}");
    assert!(max_abs_diff(&y, &reference(&c, 3.0)) > 1e-2);
}

fn gradients_reach_a_and_b_never_the_dense_base_weight<B: QuantBackend>(device: &B::Device) {
    let c = case();
    let layer = adapted_on::<Autodiff<B>>(&c, &settings(4.0, false), device);
    let grads = layer
        .forward(tg::<Autodiff<B>, 2>(&c.x, [N, IN], device))
        .sum()
        .backward();
    let BaseLinear::Dense(base) = &layer.base else {
        panic!("dense base expected")
    };
    assert!(
        base.weight.grad(&grads).is_none(),
        "the base weight must stay frozen"
    );
    assert!(!base.weight.val().is_require_grad());
    check_adapter_grads::<B>(&layer, &c, 2.0, device);
    let trainable: Vec<String> = param_paths::<Autodiff<B>, _>(&layer)
        .into_iter()
        .filter(|(_, t)| *t)
        .map(|(p, _)| p)
        .collect();
    // The bias is left to the bias mode (the model freezes it unless asked); the weight never trains.
    assert!(
        !trainable.iter().any(|p| p == "base.weight"),
        "{trainable:?}"
    );
    assert!(
        trainable.iter().any(|p| p == "lora_a.weight"),
        "{trainable:?}"
    );
    assert!(
        trainable.iter().any(|p| p == "lora_b.weight"),
        "{trainable:?}"
    );
}

fn gradients_on_a_4bit_base_reach_only_the_adapter<B: QuantBackend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    // QLoRA order: quantize the dense layer, then wrap it.
    let (d_in, d_out) = (64, 32);
    let w = vals(d_out * d_in, 0.5);
    let base = LoraLinear::<A<B>>::from_torch(tg(&w, [d_out, d_in], device), None)
        .quantize(QuantSpec::default(), &CodeBooks::new(device))
        .unwrap();
    assert!(base.base.is_quantized());
    let mut layer = base.with_adapter(&settings(4.0, false), device).unwrap();
    let a = vals(R * d_in, 7.0);
    let b = vals(d_out * R, 8.0);
    layer
        .set_adapter_weights(tg(&a, [R, d_in], device), tg(&b, [d_out, R], device))
        .unwrap();
    let params = param_paths::<A<B>, _>(&layer);
    let names: Vec<&str> = params.iter().map(|(p, _)| p.as_str()).collect();
    // No weight parameter at all: the 4-bit codes are constants.
    assert_eq!(names, ["lora_a.weight", "lora_b.weight"], "{params:?}");
    assert!(params.iter().all(|(_, t)| *t));

    let x = tg::<A<B>, 2>(&vals(N * d_in, 0.1), [N, d_in], device);
    let grads = layer.forward(x).sum().backward();
    let ga = host(layer.lora_a.as_ref().unwrap().weight.grad(&grads).unwrap());
    let gb = host(layer.lora_b.as_ref().unwrap().weight.grad(&grads).unwrap());
    assert!(ga.iter().any(|v| v.abs() > 1e-3));
    assert!(gb.iter().any(|v| v.abs() > 1e-3));
}

/// On the plain backend (inference after training) and on the autodiff backend the model
/// trains on (merging right after training, without a backend switch).
fn merge_then_unmerge_on_a_dense_base<B: QuantBackend>(device: &B::Device) {
    merge_then_unmerge::<B>(device);
    merge_then_unmerge::<Autodiff<B>>(device);
}

fn merge_on_4bit_errors_and_merge_and_unload_is_dense_and_equal<B: QuantBackend>(
    device: &B::Device,
) {
    merge_4bit::<B>(device);
    merge_4bit::<Autodiff<B>>(device);
}
