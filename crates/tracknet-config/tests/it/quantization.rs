//! `model.quantization`: BitsAndBytesConfig names in `mode: hf`, double-quant precedence.

use crate::common;

use common::{issue_at, issues};
use tracknet_config::*;

#[test]
fn hf_mode_accepts_bitsandbytes_names() {
    let cfg = RunConfig::from_yaml_str(
        "
model:
  quantization:
    mode: hf
    load_in_4bit: true
    bnb_4bit_quant_type: fp4
    bnb_4bit_compute_dtype: torch.float16
    bnb_4bit_use_double_quant: false
    llm_int8_skip_modules: [decoder, head]
",
    )
    .unwrap();
    let q = &cfg.model.quantization;
    assert_eq!(q.mode, QuantMode::Hf);
    assert!(q.enabled);
    assert_eq!(q.quant_type, QuantKind::Fp4);
    assert_eq!(q.compute_dtype, ComputeDtype::Float16);
    assert_eq!(q.use_double_quant, Some(false));
    assert!(!q.double_quant());
    assert_eq!(q.skip_modules, ["decoder", "head"]);
    // Serialized with this project's names; loads back equal.
    let yaml = cfg.to_yaml_string();
    assert!(!yaml.contains("bnb_4bit"));
    assert_eq!(RunConfig::from_yaml_str(&yaml).unwrap(), cfg);
}

#[test]
fn hf_mode_dtype_spellings() {
    for (s, want) in [
        ("bf16", ComputeDtype::Bfloat16),
        ("torch.bfloat16", ComputeDtype::Bfloat16),
        ("bfloat16", ComputeDtype::Bfloat16),
        ("fp16", ComputeDtype::Float16),
        ("torch.float16", ComputeDtype::Float16),
        ("fp32", ComputeDtype::Float32),
        ("torch.float32", ComputeDtype::Float32),
    ] {
        for key in ["bnb_4bit_compute_dtype", "compute_dtype"] {
            let yaml = format!("model: {{quantization: {{mode: hf, {key}: '{s}'}}}}");
            let cfg = RunConfig::from_yaml_str(&yaml).unwrap();
            assert_eq!(cfg.model.quantization.compute_dtype, want, "{yaml}");
        }
    }
    let all = issues(RunConfig::from_yaml_str(
        "model: {quantization: {mode: hf, bnb_4bit_compute_dtype: float8}}",
    ));
    let i = issue_at(&all, "model.quantization.compute_dtype");
    assert!(
        i.message.contains("`bfloat16`, `float16`, `float32`"),
        "{i}"
    );
}

#[test]
fn hf_mode_in_toml() {
    let cfg = RunConfig::from_toml_str(
        "[model.quantization]\nmode = \"hf\"\nload_in_4bit = true\nbnb_4bit_compute_dtype = \"bf16\"\n",
    )
    .unwrap();
    assert!(cfg.model.quantization.enabled);
    assert_eq!(cfg.model.quantization.compute_dtype, ComputeDtype::Bfloat16);
}

#[test]
fn hf_and_own_name_agreeing_is_fine_disagreeing_is_an_error() {
    let cfg = RunConfig::from_yaml_str(
        "model: {quantization: {mode: hf, quant_type: fp4, bnb_4bit_quant_type: fp4}}",
    )
    .unwrap();
    assert_eq!(cfg.model.quantization.quant_type, QuantKind::Fp4);
    let all = issues(RunConfig::from_yaml_str(
        "model: {quantization: {mode: hf, enabled: false, load_in_4bit: true}}",
    ));
    let i = issue_at(&all, "model.quantization.load_in_4bit");
    assert!(i.message.contains("conflicts with `enabled`"), "{i}");
}

#[test]
fn bitsandbytes_names_in_manual_mode_are_errors() {
    let all = issues(RunConfig::from_yaml_str(
        "model: {quantization: {load_in_4bit: true, bnb_4bit_use_double_quant: true}}",
    ));
    assert_eq!(all.len(), 2, "{all:?}");
    let i = issue_at(&all, "model.quantization.load_in_4bit");
    assert!(i.message.contains("mode: hf"), "{i}");
    assert_eq!(i.suggestion.as_deref(), Some("model.quantization.enabled"));
    let i = issue_at(&all, "model.quantization.bnb_4bit_use_double_quant");
    assert_eq!(
        i.suggestion.as_deref(),
        Some("model.quantization.use_double_quant")
    );
}

#[test]
fn double_quant_precedence() {
    let q = |c: Option<bool>, u: Option<bool>| QuantizationConfig {
        compress_statistics: c,
        use_double_quant: u,
        ..Default::default()
    };
    assert!(q(None, None).double_quant(), "default is on");
    assert!(!q(Some(false), None).double_quant());
    assert!(!q(None, Some(false)).double_quant());
    assert!(q(Some(true), Some(true)).double_quant());
    // Disagreeing: use_double_quant wins, with a warning.
    assert!(q(Some(false), Some(true)).double_quant());
    assert!(!q(Some(true), Some(false)).double_quant());
    assert!(q(Some(true), Some(true)).warnings().is_empty());
    let w = q(Some(true), Some(false)).warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("use_double_quant wins"), "{w:?}");

    let cfg = RunConfig::from_yaml_str(
        "model: {quantization: {enabled: true, compress_statistics: true, use_double_quant: false}}",
    )
    .unwrap();
    assert!(!cfg.model.quantization.double_quant());
    assert!(
        cfg.warnings()
            .iter()
            .any(|w| w.contains("use_double_quant wins"))
    );
}

#[test]
fn null_lists_are_empty() {
    let cfg = RunConfig::from_yaml_str(
        "model: {quantization: {skip_modules: null}, lora: {modules_to_save: ~}}",
    )
    .unwrap();
    assert!(cfg.model.quantization.skip_modules.is_empty());
    assert!(cfg.model.lora.modules_to_save.is_empty());
}
