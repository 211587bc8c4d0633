//! `training.gradient_checkpointing`'s effect, measured: with recomputation per segment, a
//! training step's peak of live heap bytes (NdArray keeps every tensor on the heap) is a
//! fraction (≤ 45 %) of the plain step's, for a full fine-tuning and for QLoRA.
//!
//! A counting global allocator gives the real peak; the counter is the whole process's and the
//! other tests of this binary run on parallel threads, so the measurement runs in a child
//! process of its own (this binary, one test, one thread).

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use tracknet_config::RunConfig;
use tracknet_vit::model::{HeatmapModel, lora_settings, quant_spec};

#[global_allocator]
static GLOBAL: tracknet_testkit::CountingAlloc = tracknet_testkit::CountingAlloc;

type AD = Autodiff<NdArray>;

const CHILD: &str = "TRACKNET_RECOMPUTE_MEMORY_CHILD";

/// A small DINOv3 heatmap model whose activations, not weights, are the step's memory: 8
/// blocks over 128 tokens, a two-stage decoder up to 64×32.
fn model(qlora: bool) -> HeatmapModel<AD> {
    let mut keys: Vec<String> = [
        "model.backbone.pretrained=false",
        "model.pretrained_model_name=null",
        "model.backbone.hidden_size=64",
        "model.backbone.num_hidden_layers=8",
        "model.backbone.num_attention_heads=2",
        "model.backbone.intermediate_size=256",
        "model.backbone.num_register_tokens=0",
        "model.backbone.rope_augmentation=false",
        "model.decoder.channels=[64,32,16]",
        "model.decoder.upsample=[2,2]",
        "model.heatmap.size=[64,32]",
        "data.preprocess.resize=[256,128]",
        "model.lora.lora_dropout=0.0",
    ]
    .map(String::from)
    .to_vec();
    if !qlora {
        keys.push("model.backbone.freeze=false".into());
    }
    let c = RunConfig::default().with_overrides(&keys).unwrap().model;
    let device = Default::default();
    let mut m = HeatmapModel::<AD>::from_config(&c, &device).unwrap().0;
    if qlora {
        let spec = tracknet_quant::QuantSpec {
            double_quant: true,
            ..quant_spec(&c)
        };
        m = m.quantize_backbone(&spec, &[], &device).unwrap().0;
        m = m.add_lora(&lora_settings(&c), &device).unwrap().0;
    }
    m
}

fn images() -> Tensor<AD, 4> {
    let v: Vec<f32> = (0..2 * 3 * 128 * 256)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::<AD, 1>::from_floats(v.as_slice(), &Default::default()).reshape([2, 3, 128, 256])
}

/// Peak live bytes above the state at the call, over one forward + backward.
fn step_peak(m: &HeatmapModel<AD>, recompute: bool) -> usize {
    let x = images();
    let base = tracknet_testkit::reset_heap_peak();
    let loss = |y: Tensor<AD, 4>| y.powi_scalar(2).mean();
    let grads = if recompute {
        m.recomputed_grads(x, loss).1
    } else {
        burn::optim::GradientsParams::from_grads(loss(m.forward(x)).backward(), m)
    };
    assert!(!grads.is_empty());
    drop(grads);
    tracknet_testkit::heap_peak() - base
}

#[test]
fn recomputation_per_segment_cuts_the_step_peak() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "recompute_memory::child_measures_the_step_peaks",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the measuring child failed:\n{text}");
    assert!(
        text.matches("step peak above the model:").count() == 2,
        "the child measured nothing:\n{text}"
    );
}

/// The measurement, alone in its process (so ignored, and run by the test above).
#[test]
#[ignore = "the child process of recomputation_per_segment_cuts_the_step_peak"]
fn child_measures_the_step_peaks() {
    assert!(
        std::env::var_os(CHILD).is_some(),
        "run by recomputation_per_segment_cuts_the_step_peak in a process of its own"
    );
    for qlora in [false, true] {
        let m = model(qlora);
        // Second steps: the first one of each kind carries one-time allocations.
        let (_, plain) = (step_peak(&m, false), step_peak(&m, false));
        let (_, recomputed) = (step_peak(&m, true), step_peak(&m, true));
        let what = if qlora { "QLoRA" } else { "full" };
        println!(
            "{what}: step peak above the model: plain {:.2} MiB, recomputed {:.2} MiB ({:.0} %)",
            plain as f64 / 1048576.0,
            recomputed as f64 / 1048576.0,
            100.0 * recomputed as f64 / plain as f64
        );
        // Measured: 36 % (full) and 42 % (QLoRA); here the tail (the last decoder stage at the
        // heatmap's size, run once with its graph) is a larger share of the step than at the
        // seed's size, where the goal is ≤ 40 % of full fine-tuning (a bench figure).
        assert!(
            recomputed * 20 <= plain * 9,
            "{what}: recomputation kept {recomputed} bytes at its peak, plain {plain}: expected ≤ 45 %"
        );
    }
}
