//! PEFT adapter files: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys are `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and
//! `.lora_B.weight` (`[out, r]`), f32, exactly as `PeftModel.save_pretrained` writes them, so
//! PEFT can load what we save and we can load what PEFT saves.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{BiasMode, LoraInit, LoraSettings, TargetSpec};
use crate::error::LoraError;

/// Prefix PEFT puts before a module path in adapter keys.
pub const KEY_PREFIX: &str = "base_model.model.";
/// Config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

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
