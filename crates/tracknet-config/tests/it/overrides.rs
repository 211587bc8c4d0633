//! `dotted.key=value` overrides: typed, validated, unknown keys named.

use crate::common;

use common::{composed, issue_at, issues};
use tracknet_config::*;

#[test]
fn overrides_are_typed() {
    let cfg = composed(
        "vit_lora_heatmap.yaml",
        &[
            "training.optimizer.lr=1e-4",
            "model.lora.r=8",
            "model.lora.target_modules=[q_proj,v_proj]",
            "data.split.val_games=[game10]",
            "training.amp=false",
            "training.device=cuda:1",
            "model.pretrained_model_name=null",
        ],
    )
    .unwrap();
    assert_eq!(cfg.training.optimizer.lr, 1e-4_f64);
    assert_eq!(cfg.model.lora.r, 8);
    assert_eq!(
        cfg.model.lora.target_modules,
        TargetModules::List(vec!["q_proj".into(), "v_proj".into()])
    );
    assert_eq!(cfg.data.split.val_games, ["game10"]);
    assert!(!cfg.training.amp);
    assert_eq!(cfg.training.device_spec(), Some(DeviceSpec::Cuda(1)));
    assert_eq!(cfg.model.pretrained_model_name, None);
}

#[test]
fn override_type_error_names_the_key() {
    let all = issues(composed("vit_lora_heatmap.yaml", &["model.lora.r=abc"]));
    assert_eq!(all.len(), 1, "{all:?}");
    let i = issue_at(&all, "model.lora.r");
    assert!(i.message.contains("got string \"abc\""), "{i}");
}

#[test]
fn override_values_are_validated() {
    let all = issues(composed(
        "vit_lora_heatmap.yaml",
        &["model.lora.r=0", "training.batch_size=0"],
    ));
    issue_at(&all, "model.lora.r");
    issue_at(&all, "training.batch_size");
}

#[test]
fn unknown_override_key_is_an_error() {
    let all = issues(composed("vit_heatmap.yaml", &["model.lora.lora_alpah=3"]));
    let i = issue_at(&all, "model.lora.lora_alpah");
    assert!(i.message.contains("unknown key"), "{i}");
    assert_eq!(i.suggestion.as_deref(), Some("model.lora.lora_alpha"));

    let all = issues(composed("vit_heatmap.yaml", &["trainig.epochs=3"]));
    assert_eq!(
        issue_at(&all, "trainig.epochs").suggestion.as_deref(),
        Some("training")
    );

    let all = issues(composed("vit_heatmap.yaml", &["model.lora.r.x=3"]));
    issue_at(&all, "model.lora.r.x");

    let all = issues(composed("vit_heatmap.yaml", &["model.lora.r"]));
    issue_at(&all, "model.lora.r");

    let all = issues(composed("vit_heatmap.yaml", &["model..r=1"]));
    issue_at(&all, "model..r=1");
}

#[test]
fn overrides_add_sections_the_files_lack() {
    // vit_heatmap.yaml has no lora / quantization / synthetic sections.
    let cfg = composed(
        "vit_heatmap.yaml",
        &[
            "model.lora.enabled=true",
            "model.quantization.enabled=true",
            "data.synthetic.games=3",
        ],
    )
    .unwrap();
    assert!(cfg.model.lora.enabled);
    assert!(cfg.model.quantization.enabled);
    assert_eq!(
        cfg.data.synthetic,
        Some(SyntheticConfig {
            games: 3,
            ..SyntheticConfig::default()
        })
    );
}

#[test]
fn mapping_override_merges_and_later_wins() {
    let cfg = composed(
        "vit_lora_heatmap.yaml",
        &["model.lora={r: 4, use_rslora: true}", "model.lora.r=2"],
    )
    .unwrap();
    assert!(
        cfg.model.lora.enabled,
        "untouched keys survive a mapping override"
    );
    assert_eq!(
        cfg.model.lora.target_modules.clone(),
        composed("vit_lora_heatmap.yaml", &[])
            .unwrap()
            .model
            .lora
            .target_modules
    );
    assert!(cfg.model.lora.use_rslora);
    assert_eq!(cfg.model.lora.r, 2);
}

#[test]
fn regex_and_auto_target_modules() {
    let cfg = composed(
        "vit_lora_heatmap.yaml",
        &[r"model.lora.target_modules='.*\.(q|v)_proj'"],
    )
    .unwrap();
    assert_eq!(
        cfg.model.lora.target_modules,
        TargetModules::Regex(r".*\.(q|v)_proj".into())
    );
    let cfg = composed("vit_lora_heatmap.yaml", &["model.lora.target_modules="]).unwrap();
    assert_eq!(cfg.model.lora.target_modules, TargetModules::Auto);
}

#[test]
fn with_overrides_on_a_loaded_config() {
    let base = composed("vit_lora_heatmap.yaml", &[]).unwrap();
    let cfg = base.with_overrides(&["training.epochs=1".into()]).unwrap();
    assert_eq!(cfg.training.epochs, 1);
    assert_eq!(cfg.model, base.model);
    assert!(base.with_overrides(&["training.epochs=-1".into()]).is_err());
}

#[test]
fn hf_aliases_are_overridable() {
    let cfg = composed(
        "vit_qlora_heatmap.yaml",
        &[
            "model.quantization.mode=hf",
            "model.quantization.bnb_4bit_quant_type=fp4",
        ],
    )
    .unwrap();
    assert_eq!(cfg.model.quantization.quant_type, QuantKind::Fp4);
    // ... and the other way round; the Python loss names too.
    let cfg = RunConfig::from_yaml_str(
        "model: {quantization: {mode: hf, load_in_4bit: true}}\ntraining: {loss: {alpha: 1}}",
    )
    .unwrap()
    .with_overrides(&[
        "model.quantization.enabled=false".into(),
        "training.loss.focal_alpha=3".into(),
    ])
    .unwrap();
    assert!(!cfg.model.quantization.enabled);
    assert_eq!(cfg.training.loss.focal_alpha, 3.0);
    let cfg = RunConfig::from_yaml_str("training: {loss: {focal_alpha: 1}}")
        .unwrap()
        .with_overrides(&["training.loss.alpha=5".into()])
        .unwrap();
    assert_eq!(cfg.training.loss.focal_alpha, 5.0);
}
