//! The architecture of a backbone, read from a Hugging Face `config.json`.

use std::path::Path;

use crate::dinov2::Dinov2Config;
use crate::dinov3::Dinov3Config;
use crate::error::VitError;
use crate::vit::VitConfig;

/// The architecture of a backbone, read from a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum BackboneArch {
    /// `model_type: "dinov3_vit"`.
    Dinov3(Dinov3Config),
    /// `model_type: "vit"`.
    Vit(VitConfig),
    /// `model_type: "dinov2"` or `"dinov2_with_registers"`.
    Dinov2(Dinov2Config),
}

/// The three backbone families: what decides the checkpoint and PEFT module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Dinov3,
    Vit,
    Dinov2,
}

impl BackboneArch {
    /// Parse a transformers `config.json`, dispatching on `model_type`. Absent keys take
    /// transformers' defaults; unknown keys are ignored (HF configs carry many unrelated ones).
    pub fn from_config_file(path: &Path) -> Result<Self, VitError> {
        let text = std::fs::read_to_string(path).map_err(|source| VitError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_config_str(&text, path)
    }

    /// As [`Self::from_config_file`], from the JSON text; `path` is only used in errors.
    pub fn from_config_str(text: &str, path: &Path) -> Result<Self, VitError> {
        let json_err = |e: serde_json::Error| VitError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let arch = match model_type.to_ascii_lowercase().as_str() {
            "dinov3_vit" | "dinov3vit" => {
                BackboneArch::Dinov3(serde_json::from_value(value).map_err(json_err)?)
            }
            "vit" => BackboneArch::Vit(serde_json::from_value(value).map_err(json_err)?),
            "dinov2" => {
                BackboneArch::Dinov2(Dinov2Config::from_json(value, false).map_err(json_err)?)
            }
            "dinov2_with_registers" => {
                BackboneArch::Dinov2(Dinov2Config::from_json(value, true).map_err(json_err)?)
            }
            other => {
                return Err(VitError::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "model_type `{other}` is not supported; expected `dinov3_vit`, `dinov2`, `dinov2_with_registers` or `vit`"
                    ),
                });
            }
        };
        arch.validate(path)?;
        Ok(arch)
    }

    /// Checks the sizes this crate relies on (heads divide the hidden size, ...).
    pub fn validate(&self, path: &Path) -> Result<(), VitError> {
        match self {
            BackboneArch::Dinov3(c) => c.validate(path),
            BackboneArch::Vit(c) => c.validate(path),
            BackboneArch::Dinov2(c) => c.validate(path),
        }
    }

    /// The family, which decides the checkpoint's and PEFT's module names.
    pub fn family(&self) -> Family {
        match self {
            BackboneArch::Dinov3(_) => Family::Dinov3,
            BackboneArch::Vit(_) => Family::Vit,
            BackboneArch::Dinov2(_) => Family::Dinov2,
        }
    }
}
