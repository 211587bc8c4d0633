//! `adapter_config.json`: what we read of it, what we write (PEFT's defaults for the rest), and
//! the PEFT features refused because they would change the math.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{BiasMode, LoraInit, LoraSettings, TargetSpec};
use crate::error::LoraError;

/// The parts of `adapter_config.json` this crate reads (PEFT writes many more; unknown keys
/// are ignored on load and written with PEFT's defaults on save).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always `LORA`.
    pub peft_type: String,
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub lora_alpha: f64,
    /// Dropout.
    #[serde(default)]
    pub lora_dropout: f64,
    /// A list of names, or a regex string.
    pub target_modules: Value,
    /// `none` | `all` | `lora_only`.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA is not supported; must be false.
    #[serde(default)]
    pub use_dora: bool,
    /// Must be false (weights are `[out, in]`).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Modules trained fully.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// The base model (a path relative to the adapter folder, or a hub name).
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// PEFT task type.
    #[serde(default)]
    pub task_type: Option<String>,
    /// `true` (PEFT default init) or `false` (random B); PEFT also allows strings.
    #[serde(default = "default_init")]
    pub init_lora_weights: Value,
    /// PEFT keys that change the math of a saved adapter. Read so that an adapter using them
    /// is refused by name ([`AdapterConfig::to_settings`]) instead of loaded with wrong scaling;
    /// not written by [`AdapterConfig::to_peft_json`] other than as PEFT's defaults.
    #[serde(default, skip_serializing)]
    pub rank_pattern: Value,
    /// Per-module `lora_alpha`.
    #[serde(default, skip_serializing)]
    pub alpha_pattern: Value,
    /// Layer indices the adapter is restricted to.
    #[serde(default, skip_serializing)]
    pub layers_to_transform: Value,
    /// The module-list name `layers_to_transform` indexes.
    #[serde(default, skip_serializing)]
    pub layers_pattern: Value,
    /// Modules excluded from `target_modules`.
    #[serde(default, skip_serializing)]
    pub exclude_modules: Value,
    /// A bias on `lora_B`.
    #[serde(default, skip_serializing)]
    pub lora_bias: bool,
    /// QALoRA pooling.
    #[serde(default, skip_serializing)]
    pub use_qalora: bool,
    /// LoRA on parameters instead of modules.
    #[serde(default, skip_serializing)]
    pub target_parameters: Value,
    /// Trainable embedding rows.
    #[serde(default, skip_serializing)]
    pub trainable_token_indices: Value,
    /// Layer duplication before adapting.
    #[serde(default, skip_serializing)]
    pub layer_replication: Value,
}

/// Whether a PEFT config value is unset: `null`, `{}`, `[]` or `""`.
fn unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn default_bias() -> String {
    "none".into()
}
fn default_init() -> Value {
    Value::Bool(true)
}

impl AdapterConfig {
    /// From our settings.
    pub fn from_settings(s: &LoraSettings, targets: &[String], base_model: Option<String>) -> Self {
        let target_modules = match &s.targets {
            TargetSpec::Regex(r) => Value::String(r.clone()),
            // PEFT stores the resolved names; for auto we store the names that matched.
            TargetSpec::List(n) => json!(n),
            TargetSpec::Auto => json!(crate::target::auto_targets(targets)),
        };
        Self {
            peft_type: "LORA".into(),
            r: s.r,
            lora_alpha: s.alpha,
            lora_dropout: s.dropout,
            target_modules,
            bias: s.bias.as_str().into(),
            use_rslora: s.use_rslora,
            use_dora: false,
            fan_in_fan_out: false,
            modules_to_save: (!s.modules_to_save.is_empty()).then(|| s.modules_to_save.clone()),
            base_model_name_or_path: base_model,
            task_type: s.task_type.clone(),
            init_lora_weights: Value::Bool(s.init == LoraInit::PeftDefault),
            // PEFT's defaults, as `to_peft_json` writes them (and a load reads them back).
            rank_pattern: json!({}),
            alpha_pattern: json!({}),
            layers_to_transform: Value::Null,
            layers_pattern: Value::Null,
            exclude_modules: Value::Null,
            lora_bias: false,
            use_qalora: false,
            target_parameters: Value::Null,
            trainable_token_indices: Value::Null,
            layer_replication: Value::Null,
        }
    }

    /// To our settings; unsupported PEFT features are errors, not silently ignored.
    pub fn to_settings(&self, path: &Path) -> Result<LoraSettings, LoraError> {
        let fmt_err = |message: String| LoraError::Format {
            path: path.to_path_buf(),
            message,
        };
        if self.peft_type != "LORA" {
            return Err(fmt_err(format!(
                "peft_type is {}, only LORA is supported",
                self.peft_type
            )));
        }
        if self.use_dora {
            return Err(fmt_err("use_dora: true is not supported".into()));
        }
        if self.fan_in_fan_out {
            return Err(fmt_err(
                "fan_in_fan_out: true is not supported (weights are [out, in])".into(),
            ));
        }
        // Keys that change which layers are adapted or how they are scaled: refused by name,
        // never loaded with the wrong math.
        let refused: [(&str, &Value, &str); 8] = [
            (
                "rank_pattern",
                &self.rank_pattern,
                "per-module ranks are not supported; save the adapter with one `r`",
            ),
            (
                "alpha_pattern",
                &self.alpha_pattern,
                "per-module lora_alpha is not supported; save the adapter with one `lora_alpha`",
            ),
            (
                "layers_to_transform",
                &self.layers_to_transform,
                "restricting LoRA to some layers is not supported; list the modules in target_modules instead",
            ),
            (
                "layers_pattern",
                &self.layers_pattern,
                "is only used with layers_to_transform, which is not supported",
            ),
            (
                "exclude_modules",
                &self.exclude_modules,
                "is not supported; list the modules to adapt in target_modules instead",
            ),
            (
                "target_parameters",
                &self.target_parameters,
                "LoRA on parameters is not supported",
            ),
            (
                "trainable_token_indices",
                &self.trainable_token_indices,
                "trainable tokens are not supported",
            ),
            (
                "layer_replication",
                &self.layer_replication,
                "layer replication is not supported",
            ),
        ];
        if let Some((key, value, why)) = refused.iter().find(|(_, v, _)| !unset(v)) {
            return Err(fmt_err(format!("{key}: {value} — {why}")));
        }
        if self.lora_bias {
            return Err(fmt_err(
                "lora_bias: true (a bias on lora_B) is not supported".into(),
            ));
        }
        if self.use_qalora {
            return Err(fmt_err("use_qalora: true is not supported".into()));
        }
        // Initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ): the
        // adapter only fits the modified base, which is not what a base snapshot holds.
        if let Value::String(init) = &self.init_lora_weights {
            let base_changing = ["pissa", "olora", "corda", "loftq"];
            if base_changing
                .iter()
                .any(|p| init.to_ascii_lowercase().starts_with(p))
            {
                return Err(fmt_err(format!(
                    "init_lora_weights: `{init}` changes the base weights along with the adapter; \
                     convert the adapter to plain LoRA in PEFT first"
                )));
            }
        }
        let targets = match &self.target_modules {
            Value::String(s) => TargetSpec::Regex(s.clone()),
            Value::Array(a) => TargetSpec::List(
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            ),
            Value::Null => TargetSpec::Auto,
            other => {
                return Err(fmt_err(format!(
                    "target_modules: expected a list or a string, got {other}"
                )));
            }
        };
        let bias = match self.bias.as_str() {
            "none" => BiasMode::None,
            "all" => BiasMode::All,
            "lora_only" => BiasMode::LoraOnly,
            b => {
                return Err(fmt_err(format!(
                    "bias: expected none|all|lora_only, got {b}"
                )));
            }
        };
        Ok(LoraSettings {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            bias,
            targets,
            modules_to_save: self.modules_to_save.clone().unwrap_or_default(),
            init: if self.init_lora_weights == Value::Bool(false) {
                LoraInit::RandomB
            } else {
                LoraInit::PeftDefault
            },
            task_type: self.task_type.clone(),
        })
    }

    /// The full JSON PEFT 0.21 writes (every key, defaults for the ones we do not use).
    pub fn to_peft_json(&self) -> Value {
        json!({
            "alora_invocation_tokens": null,
            "alpha_pattern": {},
            "arrow_config": null,
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": self.bias,
            "corda_config": null,
            "ensure_weight_tying": false,
            "eva_config": null,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": self.init_lora_weights,
            "kasa_config": null,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "loftq_config": {},
            "lora_alpha": self.lora_alpha,
            "lora_bias": false,
            "lora_dropout": self.lora_dropout,
            "lora_ga_config": null,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": self.modules_to_save,
            "monteclora_config": null,
            "peft_type": "LORA",
            "qalora_group_size": 16,
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.target_modules,
            "target_parameters": null,
            "task_type": self.task_type,
            "trainable_token_indices": null,
            "use_bdlora": null,
            "use_dora": false,
            "use_qalora": false,
            "use_rslora": self.use_rslora,
            "velora_config": null,
        })
    }
}
