//! Bad configs: every problem is reported, each named by its exact key path.

use crate::common;

use common::{issue_at, issues};
use tracknet_config::*;

/// (combined YAML, key path the error must name, text the message must contain,
///  expected did-you-mean)
const CASES: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "model: {lora: {lora_alpah: 8}}",
        "model.lora.lora_alpah",
        "unknown key",
        Some("model.lora.lora_alpha"),
    ),
    (
        "model: {lora: {r: 0}}",
        "model.lora.r",
        "expected an integer ≥ 1, got 0",
        None,
    ),
    (
        "model: {lora: {r: abc}}",
        "model.lora.r",
        "expected a non-negative integer",
        None,
    ),
    (
        "model: {lora: {r: -2}}",
        "model.lora.r",
        "expected a non-negative integer",
        None,
    ),
    (
        "model: {lora: {lora_dropout: 1.5}}",
        "model.lora.lora_dropout",
        "[0, 1)",
        None,
    ),
    (
        "model: {lora: {lora_dropout: -0.1}}",
        "model.lora.lora_dropout",
        "[0, 1)",
        None,
    ),
    (
        // 1.0 would zero every adapter input (NaN-free but a silent no-op adapter).
        "model: {lora: {lora_dropout: 1.0}}",
        "model.lora.lora_dropout",
        "[0, 1)",
        None,
    ),
    (
        "model: {lora: {lora_alpha: 0}}",
        "model.lora.lora_alpha",
        "> 0",
        None,
    ),
    (
        "model: {lora: {bias: some}}",
        "model.lora.bias",
        "`none`, `all`, `lora_only`",
        None,
    ),
    (
        "model: {lora: {target_modules: []}}",
        "model.lora.target_modules",
        "at least one",
        None,
    ),
    (
        "model: {lora: {target_modules: '(q|v'}}",
        "model.lora.target_modules",
        "invalid regex",
        None,
    ),
    (
        "model: {lora: {target_modules: 5}}",
        "model.lora.target_modules",
        "a list of module names",
        None,
    ),
    (
        "model: {heatmap: {sigma: 0}}",
        "model.heatmap.sigma",
        "> 0",
        None,
    ),
    (
        "model: {heatmap: {sigma: -1.5}}",
        "model.heatmap.sigma",
        "> 0",
        None,
    ),
    (
        "model: {heatmap: {size: [0, 144]}}",
        "model.heatmap.size",
        "≥ 1",
        None,
    ),
    (
        "model: {heatmap: {size: [1024, 144]}}",
        "model.heatmap.size",
        "larger than the input size",
        None,
    ),
    (
        "model: {heatmap: {size: [256, 144, 1]}}",
        "model.heatmap.size",
        "array of length 2",
        None,
    ),
    (
        "model: {quantization: {quant_type: nf8}}",
        "model.quantization.quant_type",
        "`nf4`, `fp4`",
        None,
    ),
    (
        "model: {quantization: {compute_dtype: float8}}",
        "model.quantization.compute_dtype",
        "`bfloat16`, `float16`, `float32`",
        None,
    ),
    (
        "model: {quantization: {compute_dtype: bf16}}",
        "model.quantization.compute_dtype",
        "`bfloat16`, `float16`, `float32`",
        None,
    ),
    (
        "model: {quantization: {blocksize: 100}}",
        "model.quantization.blocksize",
        "power of two in 32..=4096",
        None,
    ),
    (
        "model: {quantization: {blocksize: 8192}}",
        "model.quantization.blocksize",
        "power of two in 32..=4096",
        None,
    ),
    (
        "model: {quantization: {mode: auto}}",
        "model.quantization.mode",
        "`manual`, `hf`",
        None,
    ),
    (
        "model: {quantization: {bnb_4bit_quant_type: fp4}}",
        "model.quantization.bnb_4bit_quant_type",
        "mode: hf",
        Some("model.quantization.quant_type"),
    ),
    (
        "model: {decoder: {channels: [384]}}",
        "model.decoder.channels",
        "at least 2 entries",
        None,
    ),
    (
        "model: {decoder: {upsample: [2, 2, 2, 2]}}",
        "model.decoder.upsample",
        "at most 3 entries",
        None,
    ),
    (
        "model: {decoder: {upsample: [2, 0, 2]}}",
        "model.decoder.upsample[1]",
        "≥ 1, got 0",
        None,
    ),
    (
        "model: {decoder: {channels: [384, x]}}",
        "model.decoder.channels[1]",
        "non-negative integer",
        None,
    ),
    (
        "model: {decoder: {norm: ln}}",
        "model.decoder.norm",
        "`gn`, `bn`",
        None,
    ),
    (
        "model: {decoder: {activation: silu}}",
        "model.decoder.activation",
        "`gelu`, `relu`",
        None,
    ),
    (
        "model: {decoder: {dropout: 2}}",
        "model.decoder.dropout",
        "[0, 1)",
        None,
    ),
    (
        "model: {decoder: {dropout: 1.0}}",
        "model.decoder.dropout",
        "[0, 1)",
        None,
    ),
    (
        "model: {decoder: {upsample: [4096, 4096, 4096]}}",
        "model.decoder.upsample",
        "product is at most 4096",
        None,
    ),
    (
        "model: {decoder: {upsample: [4294967296, 4294967296, 4294967296]}}",
        "model.decoder.upsample",
        "product is at most 4096",
        None,
    ),
    (
        "model: {decoder: {channels: [384, 1000000, 128, 64]}}",
        "model.decoder.channels[1]",
        "at most 65536",
        None,
    ),
    (
        "model: {backbone: {num_hidden_layers: 100000000}}",
        "model.backbone.num_hidden_layers",
        "at most 65536",
        None,
    ),
    (
        "data: {preprocess: {resize: [1000000, 288]}}",
        "data.preprocess.resize",
        "≤ 16384",
        None,
    ),
    (
        "data: {synthetic: {size: [99999, 99999]}}",
        "data.synthetic.size",
        "≤ 16384",
        None,
    ),
    (
        "data: {synthetic: {frames: 100000000}}",
        "data.synthetic.frames",
        "at most 100000",
        None,
    ),
    (
        "training: {batch_size: 1000000000}",
        "training.batch_size",
        "at most 65536",
        None,
    ),
    (
        "training: {epochs: 18446744073709551615}",
        "training.epochs",
        "at most 1000000",
        None,
    ),
    (
        "training: {epochs: 1000000, steps_per_epoch: 18446744073709551615}",
        "training.steps_per_epoch",
        "epochs × steps_per_epoch",
        None,
    ),
    (
        "model: {backbone: {freez: true}}",
        "model.backbone.freez",
        "unknown key",
        Some("model.backbone.freeze"),
    ),
    (
        "model: {backbone: {family: dinov1}}",
        "model.backbone.family",
        "`dinov3`, `vit`, `dinov2`",
        None,
    ),
    (
        "model: {backbone: {family: dinov2, hidden_size: 384, intermediate_size: 1000}}",
        "model.backbone.intermediate_size",
        "multiple of hidden_size (384)",
        None,
    ),
    (
        "model: {backbone: {num_attention_heads: 5}}",
        "model.backbone.num_attention_heads",
        "divisor of hidden_size",
        None,
    ),
    (
        "model: {backbone: {freeze: 'yes'}}",
        "model.backbone.freeze",
        "a boolean",
        None,
    ),
    (
        "modle: {lora: {r: 4}}",
        "modle",
        "unknown key",
        Some("model"),
    ),
    (
        "backbone: {freeze: true}",
        "backbone",
        "load_composed",
        Some("model.backbone"),
    ),
    (
        // Random init: the config's patch size is the model's (a snapshot's own is checked when
        // the model is built: `hf_loading::input_size_is_checked_against_the_snapshots_patch_size_not_the_configs`).
        "{model: {backbone: {pretrained: false}}, data: {preprocess: {resize: [500, 288]}}}",
        "data.preprocess.resize",
        "divisible by model.backbone.patch_size (16)",
        None,
    ),
    (
        "data: {preprocess: {resize: [512]}}",
        "data.preprocess.resize",
        "array of length 2, got 1 entry",
        None,
    ),
    (
        "data: {preprocess: {flip_prob: 1.2}}",
        "data.preprocess.flip_prob",
        "[0, 1]",
        None,
    ),
    (
        "data: {split: {train_games: []}}",
        "data.split.train_games",
        "at least one game",
        None,
    ),
    (
        "data: {split: {val_games: []}}",
        "data.split.val_games",
        "at least one game",
        None,
    ),
    (
        "data: {split: {val_games: ['']}}",
        "data.split.val_games[0]",
        "non-empty",
        None,
    ),
    (
        "data: {split: {val_gmaes: [game10]}}",
        "data.split.val_gmaes",
        "unknown key",
        Some("data.split.val_games"),
    ),
    (
        "data: {synthetic: {games: 0}}",
        "data.synthetic.games",
        "≥ 1",
        None,
    ),
    (
        "data: {synthetic: {ball_scale: 20}}",
        "data.synthetic.ball_scale",
        "[0.25, 8]",
        None,
    ),
    (
        "data: {sequence: {length: 0}}",
        "data.sequence.length",
        "≥ 1",
        None,
    ),
    (
        "training: {optimizer: {lr: 0}}",
        "training.optimizer.lr",
        "> 0",
        None,
    ),
    (
        "training: {optimizer: {lr: -1.0e-3}}",
        "training.optimizer.lr",
        "> 0",
        None,
    ),
    (
        "training: {optimizer: {name: adam}}",
        "training.optimizer.name",
        "`adamw`, `sgd`",
        None,
    ),
    (
        "training: {optimizer: {betas: [0.9, 1.0]}}",
        "training.optimizer.betas[1]",
        "[0, 1)",
        None,
    ),
    (
        "training: {scheduler: {name: step}}",
        "training.scheduler.name",
        "`cosine`, `constant`",
        None,
    ),
    (
        "training: {batch_size: 0}",
        "training.batch_size",
        "≥ 1, got 0",
        None,
    ),
    (
        "training: {batch_size: 3.5}",
        "training.batch_size",
        "non-negative integer",
        None,
    ),
    (
        "training: {precision: fp8}",
        "training.precision",
        "`fp32`, `fp16`, `bf16`",
        None,
    ),
    (
        "training: {loss: {name: bce}}",
        "training.loss.name",
        "`mse`, `focal`",
        None,
    ),
    (
        "training: {device: gpu}",
        "training.device",
        "`cpu`, `cuda`, `cuda:N` or `wgpu`",
        None,
    ),
    (
        "training: {devise: cpu}",
        "training.devise",
        "unknown key",
        Some("training.device"),
    ),
    (
        "training: {best_metric: acc}",
        "training.best_metric",
        "`val_loss`, `f1`, `pck`, `l2`",
        None,
    ),
    (
        "training: {mb_backoff_factor: 1}",
        "training.mb_backoff_factor",
        "≥ 2",
        None,
    ),
    (
        "training: {steps_per_epoch: 0}",
        "training.steps_per_epoch",
        "≥ 1 or null",
        None,
    ),
    (
        "training: {grad_clip_norm: -1}",
        "training.grad_clip_norm",
        "≥ 0",
        None,
    ),
    (
        "training: {data_loader: {num_worker: 2}}",
        "training.data_loader.num_worker",
        "unknown key",
        Some("training.data_loader.num_workers"),
    ),
];

#[test]
fn each_bad_config_names_its_key() {
    assert!(CASES.len() >= 15);
    for &(yaml, path, text, suggestion) in CASES {
        let all = issues(RunConfig::from_yaml_str(yaml));
        let issue = issue_at(&all, path);
        assert!(
            issue.message.contains(text),
            "{yaml}: message `{}` lacks `{text}`",
            issue.message
        );
        assert_eq!(issue.suggestion.as_deref(), suggestion, "{yaml}: {issue}");
        assert_eq!(
            all.len(),
            1,
            "{yaml}: expected exactly one issue, got {all:?}"
        );
        // The same problem is found in TOML, where the value is representable.
        if let Ok(value) = serde_yaml::from_str::<serde_json::Value>(yaml)
            && let Ok(text) = toml::to_string(&value)
            && let Err(e) = RunConfig::from_toml_str(&text)
        {
            issue_at(e.issues(), path);
        }
    }
}

#[test]
fn display_is_one_issue_per_line() {
    let e = RunConfig::from_yaml_str("model: {lora: {r: 0}}").unwrap_err();
    assert_eq!(
        e.to_string(),
        "model.lora.r: expected an integer ≥ 1, got 0"
    );
    let e = RunConfig::from_yaml_str("model: {lora: {lora_alpah: 3, r: 0}}").unwrap_err();
    let text = e.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.contains(&"model.lora.r: expected an integer ≥ 1, got 0"));
    assert!(lines.contains(
        &"model.lora.lora_alpah: unknown key `lora_alpah` (did you mean `model.lora.lora_alpha`?)"
    ));
}

#[test]
fn three_problems_are_all_reported() {
    // A type error, an unknown key and an out-of-range value, in different sections.
    let yaml = "
model:
  lora:
    r: sixteen
data:
  preprocess:
    flip_prob: 1.5
training:
  optimiser: {lr: 1.0e-3}
";
    let all = issues(RunConfig::from_yaml_str(yaml));
    assert_eq!(all.len(), 3, "{all:?}");
    issue_at(&all, "model.lora.r");
    issue_at(&all, "data.preprocess.flip_prob");
    let u = issue_at(&all, "training.optimiser");
    assert_eq!(u.suggestion.as_deref(), Some("training.optimizer"));
}

#[test]
fn several_type_errors_are_all_reported() {
    let yaml = "
model:
  lora: {r: x, lora_alpha: y, bias: z}
  decoder: {norm: q}
training: {batch_size: many, optimizer: {lr: fast}}
";
    let all = issues(RunConfig::from_yaml_str(yaml));
    for p in [
        "model.lora.r",
        "model.lora.lora_alpha",
        "model.lora.bias",
        "model.decoder.norm",
        "training.batch_size",
        "training.optimizer.lr",
    ] {
        issue_at(&all, p);
    }
    assert_eq!(all.len(), 6, "{all:?}");
}

#[test]
fn every_unknown_key_is_reported() {
    let yaml = "
model: {lora: {rank: 4, alpha: 8}, extra: 1}
data: {foo: {bar: 1}}
training: {optimizer: {learning_rate: 0.1}}
";
    let all = issues(RunConfig::from_yaml_str(yaml));
    for p in [
        "model.lora.rank",
        "model.lora.alpha",
        "model.extra",
        "data.foo",
        "training.optimizer.learning_rate",
    ] {
        let i = issue_at(&all, p);
        assert!(i.message.starts_with("unknown key"), "{i}");
    }
    assert_eq!(all.len(), 5, "{all:?}");
}

#[test]
fn type_error_does_not_cause_follow_up_range_errors() {
    // The bad list is dropped (default used) and no "empty list" error follows.
    let all = issues(RunConfig::from_yaml_str(
        "data: {split: {train_games: game1}}",
    ));
    assert_eq!(all.len(), 1, "{all:?}");
    issue_at(&all, "data.split.train_games");
}

#[test]
fn validate_checks_configs_built_in_code() {
    let mut cfg = RunConfig::default();
    assert!(cfg.validate().is_ok());
    cfg.model.lora.r = 0;
    cfg.training.optimizer.lr = 0.0;
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.issues().len(), 2);
    issue_at(e.issues(), "model.lora.r");
    issue_at(e.issues(), "training.optimizer.lr");
}

#[test]
fn warnings_for_suspicious_settings() {
    let cfg = RunConfig::from_yaml_str(
        "
model: {heatmap: {size: [128, 72]}}
data: {split: {train_games: [game1, game2], val_games: [game2]}}
training: {grad_clip: 0.5, grad_clip_norm: 2.0, amp: true, precision: fp32}
",
    )
    .unwrap();
    let w = cfg.warnings().join("\n");
    assert!(w.contains("decoder output [256, 144]"), "{w}");
    assert!(w.contains("game2"), "{w}");
    assert!(w.contains("grad_clip (0.5) is ignored"), "{w}");
    assert!(w.contains("amp has no effect"), "{w}");

    assert_eq!(cfg.training.effective_grad_clip_norm(), Some(2.0));
    assert!(!cfg.training.mixed_precision());
    assert!(!w.contains("base backbone stays"), "{w}");
    // LoRA with an unfrozen backbone: the base stays frozen all the same, and says so.
    let cfg = RunConfig::from_yaml_str("model: {backbone: {freeze: false}, lora: {enabled: true}}")
        .unwrap();
    let w = cfg.warnings().join("\n");
    assert!(
        w.contains("model.backbone.freeze is false but model.lora is enabled"),
        "{w}"
    );
    // A sequence length without `enabled`: single frames, and the run says so.
    let cfg = RunConfig::from_yaml_str("data: {sequence: {length: 3}}").unwrap();
    assert_eq!(cfg.data.sequence.frames(), 1);
    let w = cfg.warnings().join("\n");
    assert!(
        w.contains("data.sequence.length (3) / stride (1) have no effect while data.sequence.enabled is false"),
        "{w}"
    );
    let on = RunConfig::from_yaml_str("data: {sequence: {enabled: true, length: 3}}").unwrap();
    assert_eq!(on.data.sequence.frames(), 3);
    assert!(!on.warnings().iter().any(|l| l.contains("data.sequence")));
}

#[test]
fn grad_clip_fallback() {
    let cfg = RunConfig::from_yaml_str("training: {grad_clip: 0.5}").unwrap();
    assert_eq!(cfg.training.effective_grad_clip_norm(), Some(0.5));
    let cfg = RunConfig::from_yaml_str("training: {grad_clip: 0.5, grad_clip_norm: 0}").unwrap();
    assert_eq!(cfg.training.effective_grad_clip_norm(), None);
    let cfg = RunConfig::from_yaml_str("training: {grad_clip: null}").unwrap();
    assert_eq!(cfg.training.effective_grad_clip_norm(), None);
}

#[test]
fn python_loss_key_names_are_accepted() {
    let cfg =
        RunConfig::from_yaml_str("training: {loss: {name: Focal, alpha: 1.5, beta: 3}}").unwrap();
    assert_eq!(cfg.training.loss.name, LossName::Focal);
    assert_eq!(cfg.training.loss.focal_alpha, 1.5);
    assert_eq!(cfg.training.loss.focal_beta, 3.0);
    let all = issues(RunConfig::from_yaml_str(
        "training: {loss: {alpha: 1, focal_alpha: 2}}",
    ));
    assert!(all[0].path.starts_with("training.loss"), "{all:?}");
}
