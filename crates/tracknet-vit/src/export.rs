//! Write a (dense) backbone as a Hugging Face snapshot — `config.json` + `model.safetensors`
//! with transformers 5 key names — so it loads back through [`crate::backbone::Backbone::from_snapshot`]
//! (and into transformers). Used to hand a pre-trained backbone to a QLoRA run.

use std::path::Path;

use burn::prelude::*;
use tracknet_lora::params::{NamedTensors, collect_params, safetensors_bytes};

use crate::backbone::Backbone;
use crate::error::VitError;

/// The Hugging Face name of a parameter path (`….base.weight` → `….weight`, LayerNorm's
/// `gamma`/`beta` → `weight`/`bias`) and whether its values are stored transposed there
/// (Burn's `Linear` is `[in, out]`, PyTorch's `[out, in]`).
pub fn hf_name(path: &str) -> (String, bool) {
    if let Some(p) = path.strip_suffix(".base.weight") {
        (format!("{p}.weight"), true)
    } else if let Some(p) = path.strip_suffix(".base.bias") {
        (format!("{p}.bias"), false)
    } else if let Some(p) = path.strip_suffix(".gamma") {
        (format!("{p}.weight"), false)
    } else if let Some(p) = path.strip_suffix(".beta") {
        (format!("{p}.bias"), false)
    } else {
        (path.to_string(), false)
    }
}

/// `[d0, d1]` row-major → `[d1, d0]` row-major.
pub fn transpose2(shape: &[usize], values: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (d0, d1) = (shape[0], shape[1]);
    let t = (0..d0 * d1)
        .map(|k| values[(k % d0) * d1 + k / d0])
        .collect();
    (vec![d1, d0], t)
}

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

/// Write `dir/config.json` (`config` as given, a transformers config) and `dir/model.safetensors`.
pub fn save_snapshot<B: Backend>(
    backbone: &Backbone<B>,
    config: &serde_json::Value,
    dir: &Path,
) -> Result<(), VitError> {
    let io = |source| VitError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let state = backbone_state_dict(backbone);
    // The stored patch kernel's input width wins: a multi-frame backbone takes 3·frames channels.
    let channels = state
        .iter()
        .find(|(k, _)| {
            k.ends_with("patch_embeddings.weight")
                || k.ends_with("patch_embeddings.projection.weight")
        })
        .and_then(|(_, (shape, _))| shape.get(1).copied());
    let st = safetensors_bytes(&state, meta).map_err(|e| VitError::Safetensors {
        path: dir.join("model.safetensors"),
        message: e.to_string(),
    })?;
    write_atomic(&dir.join("model.safetensors"), &st)?;
    let mut config = config.clone();
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
