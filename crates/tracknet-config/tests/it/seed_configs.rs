//! The seed config files load unchanged, and the combined YAML / TOML forms agree with them.

use crate::common;

use common::{composed, configs};
use tracknet_config::*;

const QKVD: [&str; 4] = ["query", "key", "value", "dense"];

fn qkvd() -> TargetModules {
    TargetModules::List(QKVD.iter().map(|s| s.to_string()).collect())
}

fn check_data_and_training(cfg: &RunConfig) {
    let d = &cfg.data;
    assert_eq!(d.root, std::path::PathBuf::from("data/tracknet"));
    assert_eq!(d.split.train_games.len(), 9);
    assert_eq!(d.split.train_games[0], "game1");
    assert_eq!(d.split.train_games[8], "game9");
    assert_eq!(d.split.val_games, ["game10"]);
    assert_eq!(d.preprocess.resize, [512, 288]);
    assert!(d.preprocess.normalize);
    assert_eq!(d.preprocess.flip_prob, 0.0);
    assert_eq!(
        d.sequence,
        SequenceConfig {
            enabled: false,
            length: 1,
            stride: 1
        }
    );
    assert!(!d.strict);
    assert_eq!(d.synthetic, None);

    let t = &cfg.training;
    assert_eq!(t.seed, 42);
    assert_eq!(t.batch_size, 32);
    assert_eq!(t.epochs, 20);
    assert!(t.amp);
    assert_eq!(t.precision, Precision::Fp16);
    assert_eq!(t.grad_clip, Some(1.0));
    assert_eq!(t.grad_clip_norm, Some(1.0));
    assert_eq!(t.effective_grad_clip_norm(), Some(1.0));
    assert_eq!(t.backbone_freeze_epochs, 10);
    assert!(t.adaptive_micro_batch);
    assert_eq!(t.min_micro_batch_size, 4);
    assert_eq!(t.mb_backoff_factor, 2);
    assert_eq!(t.oom_retries, 3);
    assert_eq!(t.micro_batch_size, 0);
    assert_eq!(
        t.data_loader,
        DataLoaderConfig {
            num_workers: 4,
            pin_memory: Some(true),
            persistent_workers: Some(true),
            prefetch_factor: 2,
            drop_last: false
        }
    );
    assert_eq!(t.optimizer.name, OptimizerName::AdamW);
    assert_eq!(t.optimizer.lr, 5e-4);
    assert_eq!(t.optimizer.weight_decay, 0.05);
    assert_eq!(t.optimizer.betas, [0.9, 0.999]);
    assert_eq!(t.scheduler.name, SchedulerName::Cosine);
    assert_eq!(t.scheduler.warmup_epochs, 3);
    assert_eq!(t.scheduler.warmup_start_factor, 0.1);
    assert_eq!(t.output_dir, std::path::PathBuf::from("outputs"));
    // The original's keys that mean nothing here are read, and the run says so in one line
    // (mixed precision is the backend's question, said when a run starts).
    assert_eq!(t.log_dir, Some("outputs/logs".into()));
    assert_eq!(t.ckpt_dir, Some("outputs/checkpoints".into()));
    let w = cfg.warnings();
    let inert: Vec<&String> = w
        .iter()
        .filter(|l| l.starts_with("no effect here:"))
        .collect();
    assert_eq!(inert.len(), 1, "{w:?}");
    for key in [
        "model.backbone.device_map",
        "training.data_loader.pin_memory",
        "training.data_loader.persistent_workers",
        "training.log_dir",
        "training.ckpt_dir",
    ] {
        assert!(inert[0].contains(key), "{key} missing from {inert:?}");
    }
    // amp + fp16 is a valid request; whether the backend can run it is said by the trainer.
    assert!(t.mixed_precision(), "the seed asks for mixed precision");
    assert!(!w.iter().any(|l| l.contains("training.amp")), "{w:?}");
}

/// The seed's warnings apart from the one every seed gets (inert keys).
fn own_warnings(cfg: &RunConfig) -> Vec<String> {
    cfg.warnings()
        .into_iter()
        .filter(|l| !l.starts_with("no effect here:"))
        .collect()
}

/// The seed with the original's inert keys cleared (they default to unset).
const CLEAR_INERT: [&str; 5] = [
    "model.backbone.device_map=null",
    "training.data_loader.pin_memory=null",
    "training.data_loader.persistent_workers=null",
    "training.log_dir=null",
    "training.ckpt_dir=null",
];

fn check_common_model(m: &ModelConfig) {
    assert_eq!(m.model_name, "vit_heatmap");
    assert_eq!(
        m.pretrained_model_name.as_deref(),
        Some(DEFAULT_PRETRAINED_MODEL)
    );
    assert_eq!(m.backbone.device_map.as_deref(), Some("auto"));
    assert!(m.backbone.local_files_only);
    assert_eq!(m.backbone.patch_size, 16);
    assert_eq!(m.decoder, DecoderConfig::default());
    assert_eq!(m.decoder.channels, [384, 256, 128, 64]);
    assert_eq!(m.decoder.upsample, [2, 2, 2]);
    assert_eq!(m.decoder.norm, DecoderNorm::Gn);
    assert_eq!(m.decoder.activation, Activation::Gelu);
    assert!(m.decoder.use_depthwise);
    assert_eq!(
        m.heatmap,
        HeatmapConfig {
            size: [256, 144],
            sigma: 2.0
        }
    );
    assert!(m.uses_pretrained());
}

#[test]
fn vit_heatmap_seed() {
    let cfg = composed("vit_heatmap.yaml", &[]).unwrap();
    check_common_model(&cfg.model);
    check_data_and_training(&cfg);
    assert!(cfg.model.backbone.freeze);
    // No lora / quantization sections: both default to disabled.
    assert_eq!(cfg.model.lora, LoraConfig::default());
    assert!(!cfg.model.lora.enabled);
    assert_eq!(cfg.model.lora.target_modules, TargetModules::Auto);
    assert_eq!(cfg.model.quantization, QuantizationConfig::default());
    assert!(!cfg.model.quantization.enabled);
    // The defaults are the seed model file (less the inert keys, unset by default).
    let cleared = composed("vit_heatmap.yaml", &CLEAR_INERT).unwrap();
    assert_eq!(cleared.model, ModelConfig::default());
    assert_eq!(cfg.data, DataConfig::default());
    assert!(own_warnings(&cfg).is_empty(), "{:?}", cfg.warnings());
}

#[test]
fn vit_lora_heatmap_seed() {
    let cfg = composed("vit_lora_heatmap.yaml", &[]).unwrap();
    check_common_model(&cfg.model);
    check_data_and_training(&cfg);
    assert!(!cfg.model.backbone.freeze);
    let l = &cfg.model.lora;
    assert!(l.enabled);
    assert_eq!(l.r, 16);
    assert_eq!(l.lora_alpha, 32.0);
    assert_eq!(l.lora_dropout, 0.05);
    assert_eq!(l.target_modules, qkvd());
    assert_eq!(l.bias, LoraBias::None);
    assert_eq!(l.task_type.as_deref(), Some("FEATURE_EXTRACTION"));
    assert_eq!(l.scaling(), 2.0);
    let q = &cfg.model.quantization;
    assert!(!q.enabled);
    assert_eq!(q.quant_type, QuantKind::Nf4);
    assert_eq!(q.compute_dtype, ComputeDtype::Bfloat16);
    assert!(q.skip_modules.is_empty());
    assert_eq!(q.mode, QuantMode::Manual);
    assert_eq!(q.compress_statistics, Some(true));
    assert_eq!(q.use_double_quant, Some(true));
    assert!(q.double_quant());
    assert_eq!(q.blocksize, 64);
    // The seed asks for an unfrozen backbone with LoRA: the base stays frozen (PEFT), and the
    // run says so in one line.
    let w = own_warnings(&cfg);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("model.backbone.freeze is false but model.lora is enabled"));
}

#[test]
fn vit_qlora_heatmap_seed() {
    let cfg = composed("vit_qlora_heatmap.yaml", &[]).unwrap();
    check_common_model(&cfg.model);
    check_data_and_training(&cfg);
    assert!(cfg.model.lora.enabled);
    assert_eq!(cfg.model.lora.r, 16);
    assert_eq!(cfg.model.lora.target_modules, qkvd());
    let q = &cfg.model.quantization;
    assert!(q.enabled);
    assert_eq!(q.quant_type, QuantKind::Nf4);
    assert_eq!(q.compute_dtype, ComputeDtype::Bfloat16);
    assert!(q.double_quant());
    // Apart from `enabled`, the lora and qlora seeds are the same run.
    let lora = composed(
        "vit_lora_heatmap.yaml",
        &["model.quantization.enabled=true"],
    )
    .unwrap();
    assert_eq!(lora, cfg);
}

#[test]
fn training_defaults_match_seed_except_grad_clip_norm() {
    let mut ov = vec!["training.grad_clip_norm=null"];
    ov.extend(CLEAR_INERT);
    let cfg = composed("vit_heatmap.yaml", &ov).unwrap();
    assert_eq!(cfg.training, TrainingConfig::default());
}

#[test]
fn combined_yaml_toml_and_composed_agree() {
    let c = configs().join("combined");
    let yaml = RunConfig::load_combined(&c.join("vit_lora_heatmap.yaml"), &[]).unwrap();
    let toml = RunConfig::load_combined(&c.join("vit_lora_heatmap.toml"), &[]).unwrap();
    assert_eq!(yaml, toml);
    assert_eq!(yaml, composed("vit_lora_heatmap.yaml", &[]).unwrap());
    // Overrides work the same on both.
    let ov = [
        "model.lora.r=8".to_string(),
        "training.optimizer.lr=1e-4".to_string(),
    ];
    let yaml = RunConfig::load_combined(&c.join("vit_lora_heatmap.yaml"), &ov).unwrap();
    let toml = RunConfig::load_combined(&c.join("vit_lora_heatmap.toml"), &ov).unwrap();
    assert_eq!(yaml, toml);
    assert_eq!(yaml.model.lora.r, 8);
}

#[test]
fn smoke_config_is_valid() {
    let cfg =
        RunConfig::load_combined(&configs().join("combined/smoke_synthetic.yaml"), &[]).unwrap();
    assert!(!cfg.model.uses_pretrained());
    assert_eq!(cfg.model.backbone.hidden_size, 64);
    let s = cfg.data.synthetic.as_ref().unwrap();
    assert_eq!(
        (s.games, s.clips, s.frames, s.size, s.seed),
        (3, 1, 8, [256, 144], 0)
    );
    assert_eq!(cfg.training.device_spec(), Some(DeviceSpec::Cpu));
    assert!(cfg.warnings().is_empty(), "{:?}", cfg.warnings());
}

#[test]
fn yaml_and_toml_serializations_round_trip() {
    for model in [
        "vit_heatmap.yaml",
        "vit_lora_heatmap.yaml",
        "vit_qlora_heatmap.yaml",
    ] {
        let cfg = composed(model, &[]).unwrap();
        assert_eq!(
            RunConfig::from_yaml_str(&cfg.to_yaml_string()).unwrap(),
            cfg
        );
        assert_eq!(
            RunConfig::from_toml_str(&cfg.to_toml_string()).unwrap(),
            cfg
        );
    }
    let mut cfg = RunConfig::default();
    cfg.data.synthetic = Some(SyntheticConfig::default());
    cfg.model.lora.target_modules = TargetModules::Regex(r".*\.(q|v)_proj".into());
    assert_eq!(
        RunConfig::from_yaml_str(&cfg.to_yaml_string()).unwrap(),
        cfg
    );
    assert_eq!(
        RunConfig::from_toml_str(&cfg.to_toml_string()).unwrap(),
        cfg
    );
}

#[test]
fn save_and_reload() {
    let dir = std::env::temp_dir().join(format!("tracknet-config-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = composed("vit_qlora_heatmap.yaml", &["model.lora.r=4"]).unwrap();
    for name in ["run.yaml", "run.toml"] {
        let p = dir.join(name);
        cfg.save(&p).unwrap();
        assert_eq!(RunConfig::load_combined(&p, &[]).unwrap(), cfg);
    }
    assert!(matches!(
        cfg.save(&dir.join("run.json")),
        Err(ConfigError::Parse { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn section_files_may_be_wrapped_in_their_section_key() {
    let dir = std::env::temp_dir().join(format!("tracknet-config-wrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.toml"), "[model.lora]\nenabled = true\nr = 4\n").unwrap();
    std::fs::write(dir.join("d.yaml"), "").unwrap();
    std::fs::write(dir.join("t.yml"), "training:\n  epochs: 3\n").unwrap();
    let cfg = RunConfig::load_composed(
        &dir.join("m.toml"),
        &dir.join("d.yaml"),
        &dir.join("t.yml"),
        &[],
    )
    .unwrap();
    assert_eq!(cfg.model.lora.r, 4);
    assert_eq!(cfg.training.epochs, 3);
    assert_eq!(cfg.data, DataConfig::default());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_errors() {
    let c = configs();
    let e = RunConfig::load_combined(&c.join("does-not-exist.yaml"), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    let e = RunConfig::load_combined(&c.join("README.json"), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    let e = RunConfig::from_yaml_str("model: [unclosed").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    let e = RunConfig::from_toml_str("[model\n").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    let e = RunConfig::from_yaml_str("- a\n- b\n").unwrap_err();
    assert_eq!(e.issues()[0].path, "<root>");
}
