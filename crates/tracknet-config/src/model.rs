//! The `model` section: backbone, decoder, heatmap, LoRA and 4-bit quantization.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::enums::{
    Activation, BackboneFamily, ComputeDtype, DecoderNorm, LoraBias, QuantKind, QuantMode,
};

/// The Hugging Face id the seed configs use.
pub const DEFAULT_PRETRAINED_MODEL: &str = "facebook/dinov3-vits16-pretrain-lvd1689m";

/// Deserializes `null` as `T::default()` (PEFT and bitsandbytes write `None` for empty lists).
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `model:` — the whole network: ViT backbone, convolutional decoder, heatmap target,
/// and the optional LoRA / 4-bit quantization of the backbone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct ModelConfig {
    /// Architecture name; `vit_heatmap` is the only one.
    pub model_name: String,
    /// Hugging Face model id of the pretrained backbone, resolved in the local HF cache
    /// (`backbone.weights` overrides it). `null`: no pretrained weights.
    pub pretrained_model_name: Option<String>,
    /// The ViT backbone.
    pub backbone: BackboneConfig,
    /// The upsampling decoder.
    pub decoder: DecoderConfig,
    /// The heatmap the model predicts.
    pub heatmap: HeatmapConfig,
    /// LoRA adapters on the backbone (off by default).
    pub lora: LoraConfig,
    /// 4-bit (QLoRA-style) quantization of the frozen backbone weights (off by default).
    pub quantization: QuantizationConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            model_name: "vit_heatmap".into(),
            pretrained_model_name: Some(DEFAULT_PRETRAINED_MODEL.into()),
            backbone: BackboneConfig::default(),
            decoder: DecoderConfig::default(),
            heatmap: HeatmapConfig::default(),
            lora: LoraConfig::default(),
            quantization: QuantizationConfig::default(),
        }
    }
}

impl ModelConfig {
    /// Whether the backbone comes from a snapshot (`weights`, or `pretrained` with
    /// `pretrained_model_name`): its `config.json`, not the architecture fields, then decides
    /// the patch size and widths.
    pub fn loads_snapshot(&self) -> bool {
        self.backbone.weights.is_some()
            || (self.backbone.pretrained && self.pretrained_model_name.is_some())
    }

    /// Whether pretrained weights are to be loaded: `backbone.pretrained` and either
    /// `backbone.weights` or `pretrained_model_name` is set.
    pub fn uses_pretrained(&self) -> bool {
        self.backbone.pretrained
            && (self.backbone.weights.is_some() || self.pretrained_model_name.is_some())
    }
}

/// `model.backbone:` — the ViT encoder.
///
/// The architecture fields (`family` .. `layer_norm_eps`) are used only when no pretrained
/// snapshot is loaded (`pretrained: false`, or no `weights`/`pretrained_model_name`); a snapshot
/// brings its own `config.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct BackboneConfig {
    /// Freeze the backbone weights (only decoder / LoRA parameters train).
    pub freeze: bool,
    /// transformers' `device_map`. Accepted for compatibility and has no effect (a warning
    /// says so): the whole model runs on `training.device`.
    pub device_map: Option<String>,
    /// Never download: resolve `pretrained_model_name` in the local HF cache only.
    pub local_files_only: bool,
    /// Patch size in pixels; the input resize must be divisible by it.
    pub patch_size: usize,
    /// A local Hugging Face snapshot directory (`config.json` + `model.safetensors`);
    /// overrides `pretrained_model_name` resolution.
    pub weights: Option<PathBuf>,
    /// Which ViT flavour to build for random init.
    pub family: BackboneFamily,
    /// Token width.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block (`hidden_size` must be divisible by it).
    pub num_attention_heads: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// DINOv3 / DINOv2 register tokens (DINOv2 with registers when > 0).
    pub num_register_tokens: usize,
    /// DINOv3 / DINOv2 gated (SwiGLU) MLP instead of GELU MLP.
    pub use_gated_mlp: bool,
    /// DINOv3 / DINOv2 layer-scale initial value.
    pub layerscale_value: f64,
    /// DINOv3 RoPE base period.
    pub rope_theta: f64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// DINOv3's training-time RoPE coordinate augmentation (the architecture's
    /// `pos_embed_shift` / `pos_embed_jitter` / `pos_embed_rescale`, as transformers applies in
    /// train mode). `false` trains on the fixed patch coordinates inference uses.
    pub rope_augmentation: bool,
    /// `true`: load pretrained weights when `weights` or `pretrained_model_name` is set;
    /// `false`: random init from the architecture fields.
    pub pretrained: bool,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self {
            freeze: true,
            device_map: None,
            local_files_only: true,
            patch_size: 16,
            weights: None,
            family: BackboneFamily::Dinov3,
            hidden_size: 384,
            num_hidden_layers: 12,
            num_attention_heads: 6,
            intermediate_size: 1536,
            num_register_tokens: 4,
            use_gated_mlp: false,
            layerscale_value: 1.0,
            rope_theta: 100.0,
            layer_norm_eps: 1e-5,
            rope_augmentation: true,
            pretrained: true,
        }
    }
}

impl BackboneConfig {
    /// Per-head width (`hidden_size / num_attention_heads`), 0 when heads is 0.
    pub fn head_dim(&self) -> usize {
        self.hidden_size
            .checked_div(self.num_attention_heads)
            .unwrap_or(0)
    }
}

/// `model.decoder:` — turns the patch-token grid into a heatmap.
///
/// Stage `i` maps `channels[i]` to `channels[i+1]` features; the first `upsample.len()` stages
/// end with an upsampling by `upsample[i]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct DecoderConfig {
    /// Feature widths, from the projected backbone output to the last stage (≥ 2 entries).
    pub channels: Vec<usize>,
    /// Upsampling factor per stage (at most `channels.len() - 1` entries, each ≥ 1).
    pub upsample: Vec<usize>,
    /// Conv blocks per stage.
    pub blocks_per_stage: usize,
    /// Normalization layer.
    pub norm: DecoderNorm,
    /// Activation.
    pub activation: Activation,
    /// Depthwise-separable convolutions.
    pub use_depthwise: bool,
    /// Squeeze-and-excitation after each block.
    pub use_se: bool,
    /// SE channel reduction ratio.
    pub se_reduction: usize,
    /// Dropout probability in the decoder blocks, in [0, 1) (1 would zero every feature).
    pub dropout: f64,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            channels: vec![384, 256, 128, 64],
            upsample: vec![2, 2, 2],
            blocks_per_stage: 1,
            norm: DecoderNorm::Gn,
            activation: Activation::Gelu,
            use_depthwise: true,
            use_se: false,
            se_reduction: 8,
            dropout: 0.0,
        }
    }
}

impl DecoderConfig {
    /// Product of the upsampling factors (saturating: validation refuses products above
    /// 4096, so an overflowing one never reaches a model).
    pub fn total_upsample(&self) -> usize {
        self.upsample
            .iter()
            .fold(1usize, |acc, &f| acc.saturating_mul(f))
    }
}

/// `model.heatmap:` — the target / prediction heatmap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct HeatmapConfig {
    /// `[W, H]` in pixels.
    pub size: [usize; 2],
    /// Gaussian standard deviation in heatmap pixels.
    pub sigma: f64,
}

impl Default for HeatmapConfig {
    fn default() -> Self {
        Self {
            size: [256, 144],
            sigma: 2.0,
        }
    }
}

impl HeatmapConfig {
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.size[0]
    }
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.size[1]
    }
}

/// PEFT's `target_modules`.
///
/// * YAML list → [`TargetModules::List`]: a module matches when its name equals an entry or
///   ends with `.` + entry.
/// * YAML string → [`TargetModules::Regex`]: PEFT full-matches a single string as a regex
///   against the module path.
/// * `null` / absent → [`TargetModules::Auto`]: the backbone's default projections.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TargetModules {
    /// Module-name suffixes.
    List(Vec<String>),
    /// A regular expression that must match the whole module path.
    Regex(String),
    /// Let the model choose.
    #[default]
    Auto,
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::List(v) => v.serialize(s),
            Self::Regex(r) => s.serialize_str(r),
            Self::Auto => s.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetModules;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of module names, a regex string, or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<TargetModules, E> {
                Ok(TargetModules::Auto)
            }
            fn visit_none<E: de::Error>(self) -> Result<TargetModules, E> {
                Ok(TargetModules::Auto)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TargetModules, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetModules, E> {
                Ok(TargetModules::Regex(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TargetModules, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(TargetModules::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `model.lora:` — PEFT `LoraConfig` on the backbone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct LoraConfig {
    /// Wrap the target modules with LoRA adapters.
    pub enabled: bool,
    /// Rank (≥ 1).
    pub r: usize,
    /// Scaling numerator (> 0): the adapter output is multiplied by `lora_alpha / r`
    /// (`lora_alpha / sqrt(r)` with `use_rslora`).
    pub lora_alpha: f64,
    /// Dropout on the adapter input, in [0, 1) (1 would zero every adapter input).
    pub lora_dropout: f64,
    /// Which modules get adapters.
    pub target_modules: TargetModules,
    /// Which biases train.
    pub bias: LoraBias,
    /// PEFT task type, written to `adapter_config.json`.
    pub task_type: Option<String>,
    /// rsLoRA scaling (`alpha / sqrt(r)`).
    pub use_rslora: bool,
    /// Whole modules that train fully and are saved with the adapter.
    #[serde(deserialize_with = "null_as_default")]
    pub modules_to_save: Vec<String>,
    /// `true`: PEFT default init (B = 0, so a fresh adapter is a no-op); `false`: random B.
    pub init_lora_weights: bool,
    /// A PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`, e.g. saved
    /// by Python) to start from: its settings replace the ones above, its weights the init.
    pub adapter_path: Option<PathBuf>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            target_modules: TargetModules::Auto,
            bias: LoraBias::None,
            task_type: None,
            use_rslora: false,
            modules_to_save: Vec::new(),
            init_lora_weights: true,
            adapter_path: None,
        }
    }
}

impl LoraConfig {
    /// The factor the adapter output is multiplied by.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }
}

/// `model.quantization:` — bitsandbytes-compatible 4-bit quantization of the backbone's
/// linear weights.
///
/// In `mode: hf` the `BitsAndBytesConfig` names are accepted too (`load_in_4bit`,
/// `bnb_4bit_quant_type`, `bnb_4bit_compute_dtype`, `bnb_4bit_use_double_quant`,
/// `llm_int8_skip_modules`); they are mapped onto these fields while loading.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct QuantizationConfig {
    /// Quantize the backbone.
    pub enabled: bool,
    /// Code book.
    pub quant_type: QuantKind,
    /// Dtype the matmuls run in after dequantization.
    pub compute_dtype: ComputeDtype,
    /// Module-name suffixes that stay unquantized.
    #[serde(deserialize_with = "null_as_default")]
    pub skip_modules: Vec<String>,
    /// Key spelling (`manual` or `hf`).
    pub mode: QuantMode,
    /// bitsandbytes' `compress_statistics` (double quantization of the absmax).
    pub compress_statistics: Option<bool>,
    /// `BitsAndBytesConfig.bnb_4bit_use_double_quant`; wins over `compress_statistics`.
    pub use_double_quant: Option<bool>,
    /// Elements per absmax block: a power of two in 32..=4096.
    pub blocksize: usize,
}

impl Default for QuantizationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            quant_type: QuantKind::Nf4,
            compute_dtype: ComputeDtype::Bfloat16,
            skip_modules: Vec::new(),
            mode: QuantMode::Manual,
            compress_statistics: None,
            use_double_quant: None,
            blocksize: 64,
        }
    }
}

impl QuantizationConfig {
    /// Whether the absmax statistics are themselves quantized (double quantization).
    ///
    /// `use_double_quant` wins when both it and `compress_statistics` are set (it is the
    /// `BitsAndBytesConfig` name); `true` when neither is set.
    pub fn double_quant(&self) -> bool {
        self.use_double_quant
            .or(self.compress_statistics)
            .unwrap_or(true)
    }

    /// Non-fatal notes about this section.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let (Some(c), Some(u)) = (self.compress_statistics, self.use_double_quant)
            && c != u
        {
            w.push(format!(
                "model.quantization: compress_statistics ({c}) and use_double_quant ({u}) \
                 disagree; use_double_quant wins, double quantization is {}",
                if u { "on" } else { "off" }
            ));
        }
        w
    }
}
