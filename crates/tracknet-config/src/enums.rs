//! Small closed string vocabularies (`norm: gn`, `quant_type: nf4`, ...).
//!
//! Each enum serializes as its canonical lowercase spelling and deserializes from it (plus a few
//! documented aliases). A value outside the vocabulary is an error whose message lists every
//! accepted spelling, e.g. ``expected one of `gn`, `bn`, got `ln` ``.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Formats a vocabulary as ``one of `a`, `b`, `c` ``.
pub(crate) fn one_of(names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("one of {}", list.join(", "))
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident (case_insensitive = $ci:literal) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident => $canon:literal $(| $alias:literal)*
            ),+ $(,)?
        }
        default = $default:ident;
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Canonical spellings, in declaration order.
            pub const VARIANTS: &'static [&'static str] = &[$($canon),+];

            /// The canonical spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $canon, )+
                }
            }

            fn parse_str(s: &str) -> Option<Self> {
                let owned;
                let s = if $ci {
                    owned = s.to_ascii_lowercase();
                    owned.as_str()
                } else {
                    s
                };
                $(
                    if s == $canon $(|| s == $alias)* {
                        return Some(Self::$variant);
                    }
                )+
                None
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::$default
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse_str(s).ok_or_else(|| {
                    format!("expected {}, got `{}`", one_of(Self::VARIANTS), s)
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(&one_of($name::VARIANTS))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    };
}

string_enum! {
    /// Which ViT flavour the backbone is (`model.backbone.family`).
    pub enum BackboneFamily (case_insensitive = false) {
        /// transformers' `DINOv3ViTModel` (RoPE, register tokens, layer scale).
        Dinov3 => "dinov3",
        /// transformers' classic `ViTModel` (learned position embeddings, CLS token).
        Vit => "vit",
        /// transformers' `Dinov2Model` (learned position embeddings, layer scale), or
        /// `Dinov2WithRegistersModel` when `num_register_tokens` > 0.
        Dinov2 => "dinov2",
    }
    default = Dinov3;
}

string_enum! {
    /// Decoder normalization layer (`model.decoder.norm`).
    pub enum DecoderNorm (case_insensitive = false) {
        /// GroupNorm (alias `group`).
        Gn => "gn" | "group",
        /// BatchNorm (alias `batch`).
        Bn => "bn" | "batch",
    }
    default = Gn;
}

string_enum! {
    /// Decoder activation (`model.decoder.activation`).
    pub enum Activation (case_insensitive = false) {
        /// GELU (exact, erf-based).
        Gelu => "gelu",
        /// ReLU.
        Relu => "relu",
    }
    default = Gelu;
}

string_enum! {
    /// Which biases train with LoRA (PEFT's `bias`).
    pub enum LoraBias (case_insensitive = false) {
        /// No bias trains.
        None => "none",
        /// Every bias of the model trains.
        All => "all",
        /// Only the biases of LoRA-wrapped layers train.
        LoraOnly => "lora_only",
    }
    default = None;
}

string_enum! {
    /// 4-bit code book (bitsandbytes' `quant_type`).
    pub enum QuantKind (case_insensitive = false) {
        /// NormalFloat4.
        Nf4 => "nf4",
        /// bitsandbytes' FP4.
        Fp4 => "fp4",
    }
    default = Nf4;
}

string_enum! {
    /// Dtype the dequantized weights are computed in (`compute_dtype`).
    ///
    /// Only the canonical spellings are accepted here; in `mode: hf` the loader also maps
    /// `bf16`/`fp16`/`fp32` and torch names (`torch.bfloat16`, ...) onto these.
    pub enum ComputeDtype (case_insensitive = false) {
        /// bfloat16.
        Bfloat16 => "bfloat16",
        /// IEEE half precision.
        Float16 => "float16",
        /// IEEE single precision.
        Float32 => "float32",
    }
    default = Bfloat16;
}

string_enum! {
    /// How `model.quantization` is spelled: this project's keys (`manual`) or, additionally,
    /// transformers' `BitsAndBytesConfig` keys (`hf`).
    pub enum QuantMode (case_insensitive = false) {
        /// Only this project's key names.
        Manual => "manual",
        /// Also accept `load_in_4bit`, `bnb_4bit_*`, `llm_int8_skip_modules`.
        Hf => "hf",
    }
    default = Manual;
}

string_enum! {
    /// Training numeric precision (`training.precision`).
    pub enum Precision (case_insensitive = false) {
        /// Single precision everywhere.
        Fp32 => "fp32",
        /// Half precision compute (with `amp`).
        Fp16 => "fp16",
        /// bfloat16 compute (with `amp`).
        Bf16 => "bf16",
    }
    default = Fp16;
}

string_enum! {
    /// Optimizer (`training.optimizer.name`); case-insensitive like the Python project.
    pub enum OptimizerName (case_insensitive = true) {
        /// AdamW (decoupled weight decay).
        AdamW => "adamw",
        /// SGD with momentum.
        Sgd => "sgd",
    }
    default = AdamW;
}

string_enum! {
    /// Learning-rate schedule (`training.scheduler.name`); case-insensitive.
    pub enum SchedulerName (case_insensitive = true) {
        /// Optional linear warmup, then cosine decay to `min_lr` at the last epoch.
        Cosine => "cosine",
        /// Optional linear warmup, then constant `lr`.
        Constant => "constant",
    }
    default = Cosine;
}

string_enum! {
    /// Heatmap loss (`training.loss.name`); case-insensitive.
    pub enum LossName (case_insensitive = true) {
        /// Mean squared error against the Gaussian target.
        Mse => "mse",
        /// CornerNet-style penalty-reduced focal loss.
        Focal => "focal",
    }
    default = Mse;
}

/// Where training runs (`training.device`): `cpu`, `cuda` (= `cuda:0`), `cuda:N` or `wgpu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
    /// wgpu's default adapter (Vulkan/Metal/DX12; `CUBECL_WGPU_DEFAULT_DEVICE` picks another),
    /// through the same CubeCL kernels as CUDA.
    Wgpu,
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "wgpu" => Ok(Self::Wgpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| {
                    if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                        n.parse().ok()
                    } else {
                        None
                    }
                })
                .map(Self::Cuda)
                .ok_or_else(|| format!("expected `cpu`, `cuda`, `cuda:N` or `wgpu`, got `{s}`")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Wgpu => f.write_str("wgpu"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        assert_eq!("lora_only".parse::<LoraBias>().unwrap(), LoraBias::LoraOnly);
        assert_eq!(LoraBias::LoraOnly.to_string(), "lora_only");
        assert_eq!(
            "AdamW".parse::<OptimizerName>().unwrap(),
            OptimizerName::AdamW
        );
        assert!("NF4".parse::<QuantKind>().is_err());
        let e = "ln".parse::<DecoderNorm>().unwrap_err();
        assert_eq!(e, "expected one of `gn`, `bn`, got `ln`");
    }

    #[test]
    fn device_spec() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:".parse::<DeviceSpec>().is_err());
        assert!("cuda:+1".parse::<DeviceSpec>().is_err());
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert_eq!("wgpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Wgpu);
        assert_eq!(DeviceSpec::Wgpu.to_string(), "wgpu");
        assert!("wgpu:0".parse::<DeviceSpec>().is_err());
    }
}
