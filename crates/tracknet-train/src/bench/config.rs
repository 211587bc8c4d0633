//! A bench case's configuration: the mode's overrides and the model and step sizes.

use serde_json::{Value, json};
use tracknet_config::RunConfig;

use super::args::CaseArgs;
use crate::QUICKSTART_CONFIG;
use crate::cli::parse_size;
use crate::error::TrainError;

const MODES: [&str; 5] = ["full", "lora", "qlora-nf4", "qlora-nf4-dq", "qlora-fp4"];

/// Config overrides selecting a mode (on top of the quickstart QLoRA config).
pub fn mode_overrides(mode: &str) -> Result<Vec<String>, TrainError> {
    let v: &[&str] = match mode {
        "full" => &[
            "model.quantization.enabled=false",
            "model.lora.enabled=false",
            "model.backbone.freeze=false",
        ],
        "lora" => &[
            "model.quantization.enabled=false",
            "model.lora.enabled=true",
        ],
        "qlora-nf4" => &[
            "model.quantization.enabled=true",
            "model.quantization.quant_type=nf4",
            "model.quantization.use_double_quant=false",
            "model.lora.enabled=true",
        ],
        "qlora-nf4-dq" => &[
            "model.quantization.enabled=true",
            "model.quantization.quant_type=nf4",
            "model.quantization.use_double_quant=true",
            "model.lora.enabled=true",
        ],
        "qlora-fp4" => &[
            "model.quantization.enabled=true",
            "model.quantization.quant_type=fp4",
            "model.quantization.use_double_quant=false",
            "model.lora.enabled=true",
        ],
        other => {
            return Err(TrainError::InvalidOption {
                option: "--mode",
                message: format!(
                    "unknown mode `{other}`; expected one of {}",
                    MODES.join(", ")
                ),
            });
        }
    };
    Ok(v.iter().map(|s| s.to_string()).collect())
}

/// Resolved sizes of a case.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp: usize,
    pub registers: usize,
    pub patch: usize,
    pub width: usize,
    pub height: usize,
    pub heatmap: (usize, usize),
    pub decoder: Vec<usize>,
    pub rank: usize,
    pub alpha: usize,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub infer_runs: usize,
}

fn parse_list(s: &str) -> Result<Vec<usize>, TrainError> {
    s.split(',')
        .map(|x| {
            x.trim().parse().map_err(|e| TrainError::InvalidOption {
                option: "--decoder",
                message: format!("`{s}`: {e}"),
            })
        })
        .collect()
}

impl Sizes {
    pub fn resolve(a: &CaseArgs) -> Result<Self, TrainError> {
        // Defaults: DINOv3 ViT-S/16 at the original's 512x288 input, 256x144 heatmap, LoRA
        // r16/alpha32, batch 2. Quick: a toy of the same shape family.
        let q = a.quick;
        let hidden = a.hidden.unwrap_or(if q { 64 } else { 384 });
        let decoder = match &a.decoder {
            Some(s) => parse_list(s)?,
            None if q => vec![hidden, 32, 16, 8],
            None => vec![hidden, 256, 128, 64],
        };
        Ok(Self {
            hidden,
            layers: a.layers.unwrap_or(if q { 2 } else { 12 }),
            heads: a.heads.unwrap_or(if q { 2 } else { 6 }),
            mlp: a.mlp.unwrap_or(if q { 256 } else { 1536 }),
            registers: a.registers.unwrap_or(4),
            patch: a.patch.unwrap_or(16),
            width: a.width.unwrap_or(if q { 128 } else { 512 }),
            height: a.height.unwrap_or(if q { 64 } else { 288 }),
            heatmap: match &a.heatmap {
                Some(s) => parse_size("--heatmap", s)?,
                None if q => (64, 32),
                None => (256, 144),
            },
            decoder,
            rank: a.rank.unwrap_or(if q { 4 } else { 16 }),
            alpha: a.alpha.unwrap_or(if q { 8 } else { 32 }),
            batch: a.batch.unwrap_or(2).max(1),
            steps: a.steps.unwrap_or(if q { 3 } else { 5 }).max(1),
            warmup: a.warmup.unwrap_or(1),
            infer_runs: a.infer_runs.unwrap_or(if q { 3 } else { 5 }).max(1),
        })
    }

    pub fn overrides(&self, a: &CaseArgs) -> Vec<String> {
        let mut v = self.size_overrides(a);
        if let Some(precision) = &a.amp {
            v.push("training.amp=true".into());
            v.push(format!("training.precision={precision}"));
        }
        v
    }

    fn size_overrides(&self, a: &CaseArgs) -> Vec<String> {
        let list = |v: &[usize]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let ups = vec![2; self.decoder.len().saturating_sub(1)];
        vec![
            format!("model.backbone.hidden_size={}", self.hidden),
            format!("model.backbone.num_hidden_layers={}", self.layers),
            format!("model.backbone.num_attention_heads={}", self.heads),
            format!("model.backbone.intermediate_size={}", self.mlp),
            format!("model.backbone.num_register_tokens={}", self.registers),
            // Explicit: the base config (the quick-start's) has its own patch size.
            format!("model.backbone.patch_size={}", self.patch),
            format!("model.decoder.channels={}", list(&self.decoder)),
            format!("model.decoder.upsample={}", list(&ups)),
            format!("model.heatmap.size=[{},{}]", self.heatmap.0, self.heatmap.1),
            format!("model.lora.r={}", self.rank),
            format!("model.lora.lora_alpha={}", self.alpha),
            format!("model.lora.lora_dropout={}", a.lora_dropout),
            format!("model.quantization.compute_dtype={}", a.compute_dtype),
            format!("data.preprocess.resize=[{},{}]", self.width, self.height),
            format!("training.batch_size={}", self.batch),
        ]
    }

    pub fn to_json(&self) -> Value {
        json!({
            "hidden": self.hidden, "layers": self.layers, "heads": self.heads, "mlp": self.mlp,
            "registers": self.registers, "patch": self.patch, "width": self.width, "height": self.height,
            "heatmap": [self.heatmap.0, self.heatmap.1], "decoder": self.decoder,
            "rank": self.rank, "alpha": self.alpha, "batch": self.batch,
            "steps": self.steps, "warmup": self.warmup,
        })
    }
}

pub fn quickstart_with(overrides: &[String]) -> Result<RunConfig, TrainError> {
    let base = RunConfig::from_yaml_str(QUICKSTART_CONFIG)?;
    let cfg = base.with_overrides(overrides)?;
    cfg.validate()?;
    Ok(cfg)
}
