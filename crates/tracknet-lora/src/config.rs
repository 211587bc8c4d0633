//! What to adapt and how: PEFT's `LoraConfig`, reduced to what the math and files need.

use serde::{Deserialize, Serialize};

/// Which biases train (PEFT's `bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BiasMode {
    /// No bias trains.
    #[default]
    None,
    /// Every bias of the wrapped model trains.
    All,
    /// Biases of LoRA-wrapped layers train.
    LoraOnly,
}

impl BiasMode {
    /// PEFT's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::All => "all",
            Self::LoraOnly => "lora_only",
        }
    }
}

/// Which modules get an adapter (PEFT's `target_modules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetSpec {
    /// A module matches when its path equals a name or ends with `.` + name.
    List(Vec<String>),
    /// The whole path must match this regular expression.
    Regex(String),
    /// The backbone's attention and MLP projections (see [`crate::target::auto_targets`]).
    Auto,
}

/// How adapters are initialised (PEFT's `init_lora_weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraInit {
    /// PEFT's default: A Kaiming-uniform as `torch.nn.Linear` (a = √5), B zeros, so a fresh
    /// adapter changes nothing.
    #[default]
    PeftDefault,
    /// `init_lora_weights=False`: A and B both as `torch.nn.Linear` (B not zero; for tests).
    RandomB,
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Dropout on the adapter's input.
    pub dropout: f64,
    /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Which biases train.
    pub bias: BiasMode,
    /// Which modules get adapters.
    pub targets: TargetSpec,
    /// Whole modules (by path segment) that train fully and are saved with the adapter.
    pub modules_to_save: Vec<String>,
    /// Initialisation.
    pub init: LoraInit,
    /// PEFT's `task_type` (written to `adapter_config.json`).
    pub task_type: Option<String>,
}

impl Default for LoraSettings {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
            bias: BiasMode::None,
            targets: TargetSpec::Auto,
            modules_to_save: Vec::new(),
            init: LoraInit::PeftDefault,
            task_type: None,
        }
    }
}

impl LoraSettings {
    /// The factor the adapter output is multiplied by.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Check ranges, naming the config key.
    pub fn validate(&self) -> Result<(), crate::LoraError> {
        let bad = |key: &str, message: String| {
            Err(crate::LoraError::Invalid {
                key: key.into(),
                message,
            })
        };
        if self.r == 0 {
            return bad("lora.r", "expected an integer ≥ 1, got 0".into());
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad(
                "lora.lora_alpha",
                format!("expected a number > 0, got {}", self.alpha),
            );
        }
        if !(0.0..=1.0).contains(&self.dropout) {
            return bad(
                "lora.lora_dropout",
                format!("expected a number in [0, 1], got {}", self.dropout),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_plain_and_rslora() {
        let s = LoraSettings {
            r: 16,
            alpha: 32.0,
            ..Default::default()
        };
        assert_eq!(s.scaling(), 2.0);
        let s = LoraSettings {
            use_rslora: true,
            ..s
        };
        assert_eq!(s.scaling(), 8.0);
    }

    #[test]
    fn validation_names_the_key() {
        let e = LoraSettings {
            r: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("lora.r:"));
        let e = LoraSettings {
            dropout: 1.5,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("lora.lora_dropout:"));
        let e = LoraSettings {
            alpha: 0.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("lora.lora_alpha:"));
    }
}
