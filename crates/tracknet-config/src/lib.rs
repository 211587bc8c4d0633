//! Typed configuration for tracknet-rs.
//!
//! Reads the original Python project's YAML configs unchanged (and the same schema written in
//! TOML) into [`RunConfig`] = [`ModelConfig`] + [`DataConfig`] + [`TrainingConfig`].
//!
//! * [`RunConfig::load_composed`]: three flat section files (`configs/model/*.yaml`,
//!   `configs/data/*.yaml`, `configs/training/*.yaml`) plus overrides.
//! * [`RunConfig::load_combined`]: one file with top-level `model:`, `data:`, `training:`.
//! * Overrides are `dotted.key=value` strings (`training.optimizer.lr=1e-4`,
//!   `model.lora.target_modules=[q_proj,v_proj]`); the value is read as YAML and applied to the
//!   merged tree before deserialization, so it is typed and validated like a file value.
//!
//! Loading reports *every* problem at once ([`ConfigError::Invalid`]): unknown keys (with a
//! did-you-mean), wrong types and out-of-range values, each named by its key path. Legal but
//! suspicious settings are listed by [`RunConfig::warnings`]. Every key is documented in
//! `docs/configuration.md`.
//!
//! ```
//! let cfg = tracknet_config::RunConfig::from_yaml_str(
//!     "model: {lora: {enabled: true, r: 8}}\ntraining: {optimizer: {lr: 1.0e-4}}",
//! )
//! .unwrap();
//! assert_eq!(cfg.model.lora.r, 8);
//! assert_eq!(cfg.training.optimizer.lr, 1e-4);
//! ```

#![forbid(unsafe_code)]

mod data;
mod enums;
mod error;
mod load;
mod model;
mod training;
mod validate;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use data::{DataConfig, PreprocessConfig, SequenceConfig, SplitConfig, SyntheticConfig};
pub use enums::{
    Activation, BackboneFamily, ComputeDtype, DecoderNorm, DeviceSpec, LoraBias, LossName,
    OptimizerName, Precision, QuantKind, QuantMode, SchedulerName,
};
pub use error::{ConfigError, ConfigIssue};
pub use load::{HF_QUANT_ALIASES, parse_override};
pub use model::{
    BackboneConfig, DEFAULT_PRETRAINED_MODEL, DecoderConfig, HeatmapConfig, LoraConfig,
    ModelConfig, QuantizationConfig, TargetModules,
};
pub use training::{
    BEST_METRICS, DataLoaderConfig, EvalConfig, LossConfig, OptimizerConfig, SchedulerConfig,
    TrainingConfig,
};

/// A whole run: `model`, `data` and `training` sections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct RunConfig {
    /// The network.
    pub model: ModelConfig,
    /// The dataset.
    pub data: DataConfig,
    /// The optimization run.
    pub training: TrainingConfig,
}

impl RunConfig {
    /// Loads three flat section files (YAML or TOML, by extension), applies `overrides`,
    /// and validates.
    ///
    /// A section file's top-level keys are that section's keys; a file whose only key is the
    /// section name (`model: {...}`) is accepted too. Override keys start with the section
    /// (`model.lora.r=8`).
    pub fn load_composed(
        model: &Path,
        data: &Path,
        training: &Path,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let mut root = Map::new();
        for (section, path) in load::SECTIONS.iter().zip([model, data, training]) {
            let v = load::section_body(load::read_file(path)?, section);
            root.insert((*section).to_owned(), v);
        }
        load::build(Value::Object(root), overrides)
    }

    /// Loads one combined file (top-level `model:`, `data:`, `training:`; YAML or TOML by
    /// extension), applies `overrides`, and validates. Missing sections and keys take their
    /// defaults.
    pub fn load_combined(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        load::build(load::read_file(path)?, overrides)
    }

    /// Parses and validates a combined YAML document.
    pub fn from_yaml_str(s: &str) -> Result<Self, ConfigError> {
        load::build(load::parse_yaml(s, "<string>")?, &[])
    }

    /// Parses and validates a combined TOML document.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        load::build(load::parse_toml(s, "<string>")?, &[])
    }

    /// Deserializes and validates a combined tree.
    pub fn from_value(value: Value) -> Result<Self, ConfigError> {
        load::build(value, &[])
    }

    /// Applies `overrides` to a combined tree, then deserializes and validates it.
    pub fn from_value_with_overrides(
        value: Value,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        load::build(value, overrides)
    }

    /// A copy of this config with `overrides` applied (and everything re-validated).
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self, ConfigError> {
        load::build(self.to_value(), overrides)
    }

    /// This config as a JSON tree (options as `null`).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("RunConfig serializes to JSON")
    }

    /// Every range / consistency problem (an already-typed config can still be out of range,
    /// e.g. one built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let issues = validate::issues(self);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Non-fatal notes: legal settings that are probably not what was meant (e.g.
    /// `compress_statistics` and `use_double_quant` disagreeing).
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }

    /// The combined YAML form (loads back to an equal config).
    pub fn to_yaml_string(&self) -> String {
        serde_yaml::to_string(self).expect("RunConfig serializes to YAML")
    }

    /// The combined TOML form (`null` options are left out; loads back to an equal config).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("RunConfig serializes to TOML")
    }

    /// Writes the combined form to `path`, YAML or TOML by extension.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let text = match ext.as_deref() {
            Some("yaml" | "yml") => self.to_yaml_string(),
            Some("toml") => self.to_toml_string(),
            _ => {
                return Err(ConfigError::Parse {
                    file: path.display().to_string(),
                    message: "unsupported file extension; expected .yaml, .yml or .toml".into(),
                });
            }
        };
        std::fs::write(path, text).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
