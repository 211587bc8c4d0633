//! Write a backbone as a Hugging Face snapshot — `config.json` + `model.safetensors` with
//! transformers 5 key names — that loads back through [`crate::backbone::Backbone::from_snapshot`]
//! and into transformers: dense f32 ([`save_snapshot`], LoRA merged with [`merged`]), or in
//! bitsandbytes' 4-bit serialization ([`save_4bit_snapshot`]), loadable by
//! `AutoModel.from_pretrained` with bitsandbytes installed. The decoder and head go beside it
//! ([`save_heads`], [`load_exported_model`]) so the whole heatmap model can be rebuilt.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tracknet_lora::LoraLinear;
use tracknet_lora::params::{NamedTensors, collect_params};
use tracknet_quant::bnb::{self, BnbConfig, StoredTensor};

use crate::backbone::{Backbone, BackboneArch};
use crate::decoder::HeatmapDecoderConfig;
use crate::error::VitError;
use crate::head::HeatmapHeadConfig;
use crate::hf::{self, KeyMapping};
pub use crate::hf::{hf_name, transpose2};
use crate::model::{HeatmapModel, ModelError};

/// Tensors a Hugging Face model has that this crate does not use (see [`hf::KeyMapping::Ignored`]):
/// `embeddings.mask_token`, ViT's `pooler.*`. Exports carry them so that transformers finds every
/// key it expects.
pub type Passthrough = BTreeMap<String, StoredTensor>;

/// HF key and PyTorch-layout values of every backbone parameter. LoRA adapters are left out;
/// a 4-bit base cannot be exported (its projection has no dense weight parameter).
pub fn backbone_state_dict<B: Backend>(backbone: &Backbone<B>) -> NamedTensors {
    collect_params::<B, _>(backbone, |path, _| {
        !(path.contains(".lora_a.") || path.contains(".lora_b."))
    })
    .into_iter()
    .map(|(path, (shape, values))| {
        let (key, transposed) = hf_name(&path);
        if transposed {
            (key, transpose2(&shape, &values))
        } else {
            (key, (shape, values))
        }
    })
    .collect()
}

/// The unused tensors of the snapshot `dir` (as stored), or, for a backbone built without
/// one, DINOv3's and DINOv2's `embeddings.mask_token` as transformers initialises it (zeros).
pub fn passthrough<B: Backend>(
    dir: Option<&Path>,
    backbone: &Backbone<B>,
) -> Result<Passthrough, VitError> {
    let Some(dir) = dir else {
        return Ok(match backbone {
            Backbone::Dinov3(m) => {
                let c = m.embeddings.cls_token.dims()[2];
                [(
                    "embeddings.mask_token".to_string(),
                    StoredTensor::from_f32(vec![1, 1, c], &vec![0.0; c]),
                )]
                .into()
            }
            Backbone::Dinov2(m) if m.has_mask_token() => {
                let c = m.embeddings.cls_token.dims()[2];
                [(
                    "embeddings.mask_token".to_string(),
                    StoredTensor::from_f32(vec![1, c], &vec![0.0; c]),
                )]
                .into()
            }
            Backbone::Vit(_) | Backbone::Dinov2(_) => Passthrough::new(),
        });
    };
    let arch = BackboneArch::from_config_file(&dir.join("config.json"))?;
    let mut out = Passthrough::new();
    for file in hf::weight_files(dir)? {
        for (key, t) in hf::read_stored(&file)? {
            if hf::canonical_key(&arch, &key) == KeyMapping::Ignored && !key.ends_with("inv_freq") {
                out.insert(key, t);
            }
        }
    }
    Ok(out)
}

/// The backbone with every projection dense and its LoRA adapter folded in: a 4-bit base is
/// dequantized to f32 first (bitsandbytes' `dequantize_4bit`), as PEFT's `merge_and_unload`.
pub fn merged<B: crate::ModelBackend>(backbone: Backbone<B>) -> Backbone<B> {
    backbone
        .map_projections(&mut |_: &str, p: LoraLinear<B>| {
            Ok::<_, ()>(LoraLinear::dense(p.merge_and_unload()))
        })
        .unwrap_or_else(|()| unreachable!("the merge cannot fail"))
}

/// Write `dir/config.json` (`config`, a transformers config; `num_channels` set from the patch
/// kernel, any `quantization_config` dropped) and `dir/model.safetensors`: every parameter of a
/// dense backbone plus `extra`. Files are written atomically.
pub fn save_snapshot<B: Backend>(
    backbone: &Backbone<B>,
    config: &serde_json::Value,
    extra: &Passthrough,
    dir: &Path,
) -> Result<(), VitError> {
    let mut config = config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.remove("quantization_config");
    }
    let tensors = stored(backbone_state_dict(backbone));
    write_snapshot(tensors, extra, config, dir)
}

/// Write the backbone in bitsandbytes' 4-bit serialization (`dir/config.json` with
/// `quantization_config` = `bnb`, `dir/model.safetensors`): each 4-bit projection's codes and
/// scales exactly as held (the bytes bitsandbytes' `quantize_4bit` gives for the same f32
/// weights), every other tensor f32, plus `extra`.
pub fn save_4bit_snapshot<B: crate::ModelBackend>(
    backbone: &Backbone<B>,
    config: &serde_json::Value,
    bnb_config: &BnbConfig,
    extra: &Passthrough,
    dir: &Path,
) -> Result<(), VitError> {
    let mut tensors = stored(backbone_state_dict(backbone));
    let _ = backbone.clone().map_projections(&mut |path: &str,
                                                   p: LoraLinear<B>|
     -> Result<_, ()> {
        if let tracknet_lora::BaseLinear::Quant(q) = &p.base {
            let shape = [q.layout.out_features, q.layout.in_features];
            tensors.extend(bnb::layer_tensors(
                &format!("{path}.weight"),
                &q.to_quantized(),
                &shape,
            ));
        }
        Ok(p)
    });
    let mut config = config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("quantization_config".into(), bnb_config.to_json());
    }
    write_snapshot(tensors, extra, config, dir)
}

fn stored(state: NamedTensors) -> BTreeMap<String, StoredTensor> {
    state
        .into_iter()
        .map(|(k, (shape, values))| (k, StoredTensor::from_f32(shape, &values)))
        .collect()
}

fn write_snapshot(
    mut tensors: BTreeMap<String, StoredTensor>,
    extra: &Passthrough,
    mut config: serde_json::Value,
    dir: &Path,
) -> Result<(), VitError> {
    let io = |source| VitError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    for (k, t) in extra {
        tensors.entry(k.clone()).or_insert_with(|| t.clone());
    }
    // The stored patch kernel's input width wins: a multi-frame backbone takes 3·frames channels.
    let channels = tensors
        .iter()
        .find(|(k, _)| {
            k.ends_with("patch_embeddings.weight")
                || k.ends_with("patch_embeddings.projection.weight")
        })
        .and_then(|(_, t)| t.shape.get(1).copied());
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let st = bnb::safetensors_bytes(&tensors, meta).map_err(|e| VitError::Safetensors {
        path: dir.join(hf::WEIGHTS_FILE),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join(hf::WEIGHTS_FILE), &st)?;
    if let (Some(obj), Some(c)) = (config.as_object_mut(), channels) {
        obj.insert("num_channels".into(), c.into());
    }
    let json = serde_json::to_vec_pretty(&config).map_err(|e| VitError::Json {
        path: dir.join("config.json"),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join("config.json"), &json)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VitError> {
    let io = |source| VitError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// File names of the decoder + head beside an exported backbone.
pub const HEADS_FILE: &str = "heads.safetensors";
/// Their description.
pub const HEADS_CONFIG: &str = "heads.json";

/// What rebuilds the decoder and head of an export (`heads.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadsConfig {
    /// Always `tracknet-heads`.
    pub format: String,
    /// The decoder as built.
    pub decoder: HeatmapDecoderConfig,
    /// The 1×1 head.
    pub head: HeatmapHeadConfig,
    /// Frames stacked on the channel axis of the input (`data.sequence`).
    pub input_frames: usize,
    /// Input size `[W, H]` the model was trained at (`data.preprocess.resize`).
    pub resize: [usize; 2],
    /// Whether inputs are ImageNet-normalised (`data.preprocess.normalize`).
    pub normalize: bool,
    /// The backbone folder (relative to the export) these heads sit on.
    pub backbone: String,
}

/// Write the decoder and head parameters (BatchNorm running statistics included) as
/// `dir/heads.safetensors` (keys `decoder.…`, `head.…`, Burn layout) and `dir/heads.json`.
pub fn save_heads<B: crate::ModelBackend>(
    model: &HeatmapModel<B>,
    config: &HeadsConfig,
    dir: &Path,
) -> Result<(), VitError> {
    std::fs::create_dir_all(dir).map_err(|source| VitError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let params = collect_params::<B, _>(model, |path, _| {
        path.starts_with("decoder.") || path.starts_with("head.")
    });
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "tracknet-heads".to_string());
    let st = bnb::safetensors_bytes(&stored(params), meta).map_err(|e| VitError::Safetensors {
        path: dir.join(HEADS_FILE),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join(HEADS_FILE), &st)?;
    let json = serde_json::to_vec_pretty(config).map_err(|e| VitError::Json {
        path: dir.join(HEADS_CONFIG),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join(HEADS_CONFIG), &json)
}

/// Rebuild the whole heatmap model of an export folder: the backbone folder `heads.json` names
/// (e.g. `backbone-merged`), the decoder and head from `heads.json` + `heads.safetensors`.
pub fn load_exported_model<B: crate::ModelBackend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(HeatmapModel<B>, HeadsConfig), ModelError> {
    let path = dir.join(HEADS_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|source| VitError::Io {
        path: path.clone(),
        source,
    })?;
    let config: HeadsConfig = serde_json::from_str(&text).map_err(|e| VitError::Json {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let loaded = Backbone::load_snapshot(&dir.join(&config.backbone), device)?;
    let model = HeatmapModel {
        backbone: loaded.backbone,
        decoder: config.decoder.init(device)?,
        head: config.head.init(device),
        code_books: loaded.code_books,
    };
    let file = dir.join(HEADS_FILE);
    let tensors: NamedTensors = hf::read_safetensors(&file)?
        .into_iter()
        .map(|(k, t)| (k, (t.shape, t.data)))
        .collect();
    let required = |p: &str| p.starts_with("decoder.") || p.starts_with("head.");
    let model = tracknet_lora::load_params(model, &tensors, &required).map_err(|m| {
        tracknet_lora::LoraError::Mismatch {
            path: file.clone(),
            missing: m.missing,
            unexpected: m.unexpected,
            mismatched: m.mismatched,
        }
    })?;
    Ok((model, config))
}
