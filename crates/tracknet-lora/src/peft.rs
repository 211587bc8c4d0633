//! PEFT adapter files: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys are `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and
//! `.lora_B.weight` (`[out, r]`), f32, exactly as `PeftModel.save_pretrained` writes them, so
//! PEFT can load what we save and we can load what PEFT saves.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::LoraError;
use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};

/// Prefix PEFT puts before a module path in adapter keys.
pub const KEY_PREFIX: &str = "base_model.model.";
/// Config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

mod config;

pub use config::AdapterConfig;

/// One adapter's tensors in PEFT layout: `A [r, in]`, `B [out, r]`, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterTensors {
    /// Module path (HF names), e.g. `model.layer.0.attention.q_proj`.
    pub path: String,
    /// `[r, in]`.
    pub a_shape: [usize; 2],
    /// Values of A.
    pub a: Vec<f32>,
    /// `[out, r]`.
    pub b_shape: [usize; 2],
    /// Values of B.
    pub b: Vec<f32>,
}

impl AdapterTensors {
    /// From device tensors.
    pub fn from_tensors<B: Backend>(path: &str, a: Tensor<B, 2>, b: Tensor<B, 2>) -> Self {
        let host = |t: Tensor<B, 2>| {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default()
        };
        Self {
            path: path.into(),
            a_shape: a.dims(),
            b_shape: b.dims(),
            a: host(a),
            b: host(b),
        }
    }

    /// To device tensors `(A, B)`.
    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (
            Tensor::from_data(TensorData::new(self.a.clone(), self.a_shape), device),
            Tensor::from_data(TensorData::new(self.b.clone(), self.b_shape), device),
        )
    }
}

/// Write `bytes` to `path` atomically (temp file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LoraError> {
    let io = |source| LoraError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)
}

/// Save an adapter folder as PEFT does. `extra` holds what PEFT saves besides the LoRA
/// factors, by module path with PEFT's names and PyTorch layout: the trained biases of
/// `bias: all | lora_only` (`….q_proj.base_layer.bias` on an adapted layer) and the weights of
/// `modules_to_save` (`norm.weight`); see `HeatmapModel::adapter_extras` in tracknet-vit.
pub fn save_adapter(
    dir: &Path,
    config: &AdapterConfig,
    adapters: &[AdapterTensors],
    extra: &crate::params::NamedTensors,
) -> Result<(), LoraError> {
    let mut named = crate::params::NamedTensors::new();
    for (k, v) in extra {
        named.insert(format!("{KEY_PREFIX}{k}"), v.clone());
    }
    for t in adapters {
        named.insert(
            format!("{KEY_PREFIX}{}.lora_A.weight", t.path),
            (t.a_shape.to_vec(), t.a.clone()),
        );
        named.insert(
            format!("{KEY_PREFIX}{}.lora_B.weight", t.path),
            (t.b_shape.to_vec(), t.b.clone()),
        );
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let st = crate::params::safetensors_bytes(&named, meta).map_err(|e| LoraError::Format {
        path: dir.join(WEIGHTS_FILE),
        message: e.to_string(),
    })?;
    let json =
        serde_json::to_vec_pretty(&config.to_peft_json()).map_err(|e| LoraError::Format {
            path: dir.join(CONFIG_FILE),
            message: e.to_string(),
        })?;
    write_atomic(&dir.join(WEIGHTS_FILE), &st)?;
    write_atomic(&dir.join(CONFIG_FILE), &json)
}

/// Shape and values of a tensor read from a file.
type HostTensor = (Vec<usize>, Vec<f32>);

/// A loaded adapter folder.
#[derive(Debug, Clone)]
pub struct LoadedAdapter {
    /// The folder.
    pub dir: PathBuf,
    /// `adapter_config.json`.
    pub config: AdapterConfig,
    /// Tensors by module path (prefix removed).
    pub tensors: BTreeMap<String, AdapterTensors>,
    /// Everything else PEFT saved (trained biases, `modules_to_save` weights), by the module
    /// path of the parameter in the base model (PyTorch layout): PEFT's wrapper segments
    /// (`base_layer.`, `modules_to_save.[default.]`) removed, `original_module` copies dropped.
    pub extra: crate::params::NamedTensors,
}

/// The base model's parameter name for a key PEFT saved outside the LoRA factors, or `None`
/// for the untrained `original_module` copy PEFT also writes.
pub fn peft_extra_key(key: &str) -> Option<String> {
    if key.contains(".original_module.") {
        return None;
    }
    Some(
        key.replace(".modules_to_save.default.", ".")
            .replace(".modules_to_save.", ".")
            .replace(".base_layer.", "."),
    )
}

/// Only `dir/adapter_config.json` (the settings, without reading the weights).
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig, LoraError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let raw = fs::read(&cfg_path).map_err(|source| LoraError::Io {
        path: cfg_path.clone(),
        source,
    })?;
    serde_json::from_slice(&raw).map_err(|e| LoraError::Format {
        path: cfg_path,
        message: e.to_string(),
    })
}

/// Read an adapter folder. Keys may carry PEFT's `base_model.model.` prefix or not.
pub fn load_adapter(dir: &Path) -> Result<LoadedAdapter, LoraError> {
    let config = read_adapter_config(dir)?;
    let w_path = dir.join(WEIGHTS_FILE);
    let raw = fs::read(&w_path).map_err(|source| LoraError::Io {
        path: w_path.clone(),
        source,
    })?;
    let st = SafeTensors::deserialize(&raw).map_err(|e| LoraError::Format {
        path: w_path.clone(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    let mut halves: BTreeMap<String, [Option<HostTensor>; 2]> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut extra = crate::params::NamedTensors::new();
    // Besides LoRA factors PEFT saves only trained biases (`bias` not `none`) and the
    // `modules_to_save` weights; anything else does not belong in an adapter of this config.
    let saves_biases = config.bias != "none";
    let to_save = config.modules_to_save.clone().unwrap_or_default();
    let expected_extra = |name: &str| {
        (saves_biases && name.ends_with(".bias"))
            || to_save
                .iter()
                .any(|m| crate::target::saved_module_match(name, m))
    };
    for (key, view) in st.tensors() {
        let stripped = key.strip_prefix(KEY_PREFIX).unwrap_or(&key);
        let values = || {
            to_f32(view.dtype(), view.data()).ok_or_else(|| LoraError::Format {
                path: w_path.clone(),
                message: format!("{key}: unsupported dtype {:?}", view.dtype()),
            })
        };
        let (path, which) = if let Some(p) = stripped.strip_suffix(".lora_A.weight") {
            (p, 0)
        } else if let Some(p) = stripped.strip_suffix(".lora_B.weight") {
            (p, 1)
        } else {
            match peft_extra_key(stripped) {
                Some(name) if expected_extra(&name) => {
                    extra.insert(name, (view.shape().to_vec(), values()?));
                }
                Some(_) => unexpected.push(key.clone()),
                None => {}
            }
            continue;
        };
        halves.entry(path.to_string()).or_default()[which] =
            Some((view.shape().to_vec(), values()?));
    }
    let mut tensors = BTreeMap::new();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (path, [a, b]) in halves {
        match (a, b) {
            (Some((sa, a)), Some((sb, b))) => {
                if sa.len() != 2 || sb.len() != 2 || sa[0] != config.r || sb[1] != config.r {
                    mismatched.push((
                        format!("{path}.lora_A/B.weight"),
                        vec![config.r, 0],
                        [sa, sb].concat(),
                    ));
                    continue;
                }
                tensors.insert(
                    path.clone(),
                    AdapterTensors {
                        path,
                        a_shape: [sa[0], sa[1]],
                        a,
                        b_shape: [sb[0], sb[1]],
                        b,
                    },
                );
            }
            (None, _) => missing.push(format!("{KEY_PREFIX}{path}.lora_A.weight")),
            (_, None) => missing.push(format!("{KEY_PREFIX}{path}.lora_B.weight")),
        }
    }
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        return Err(LoraError::Mismatch {
            path: w_path,
            missing,
            unexpected,
            mismatched,
        });
    }
    Ok(LoadedAdapter {
        dir: dir.to_path_buf(),
        config,
        tensors,
        extra,
    })
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            data.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

impl LoadedAdapter {
    /// Match the file's module paths to the model's: exact, or — where a checkpoint's names
    /// differ only by a prefix — the unique model path that ends with the file's path or whose
    /// end the file's path is. Returns `model path → tensors`; every file path must land
    /// somewhere and every model target must be covered, else one error lists all problems.
    pub fn assign(
        &self,
        model_targets: &[String],
        model_dims: &dyn Fn(&str) -> Option<(usize, usize)>,
    ) -> Result<BTreeMap<String, &AdapterTensors>, LoraError> {
        let mut out = BTreeMap::new();
        let mut unexpected = Vec::new();
        let mut mismatched = Vec::new();
        for (fpath, t) in &self.tensors {
            let target = if model_targets.iter().any(|m| m == fpath) {
                Some(fpath.clone())
            } else {
                let cands: Vec<&String> = model_targets
                    .iter()
                    .filter(|m| {
                        m.ends_with(&format!(".{fpath}")) || fpath.ends_with(&format!(".{m}"))
                    })
                    .collect();
                (cands.len() == 1).then(|| cands[0].clone())
            };
            let Some(target) = target else {
                unexpected.push(format!("{KEY_PREFIX}{fpath}.lora_A.weight"));
                continue;
            };
            if let Some((d_in, d_out)) = model_dims(&target)
                && (t.a_shape[1] != d_in || t.b_shape[0] != d_out)
            {
                mismatched.push((
                    format!("{KEY_PREFIX}{fpath}.lora_A.weight / lora_B.weight"),
                    vec![self.config.r, d_in, d_out, self.config.r],
                    vec![t.a_shape[0], t.a_shape[1], t.b_shape[0], t.b_shape[1]],
                ));
                continue;
            }
            out.insert(target, t);
        }
        let missing: Vec<String> = model_targets
            .iter()
            .filter(|m| !out.contains_key(*m))
            .map(|m| format!("{KEY_PREFIX}{m}.lora_A.weight"))
            .collect();
        if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
            return Err(LoraError::Mismatch {
                path: self.dir.join(WEIGHTS_FILE),
                missing,
                unexpected,
                mismatched,
            });
        }
        Ok(out)
    }
}
