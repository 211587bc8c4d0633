//! A model's adapters: the LoRA factors, trained biases and `modules_to_save` read, set, and
//! saved or loaded as PEFT adapter files.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tracknet_lora::peft::AdapterTensors;
use tracknet_lora::{BiasMode, LoraError, LoraLinear, LoraSettings};
use tracknet_quant::LinearInfo;

use super::{HeatmapModel, ModelError, is_saved_module};

impl<B: crate::ModelBackend> HeatmapModel<B> {
    /// Path, shape and finiteness of every backbone projection.
    pub fn projection_infos(&self) -> Vec<LinearInfo> {
        let mut infos = Vec::new();
        let _ = self.backbone.clone().map_projections(&mut |path: &str,
                                                            p: LoraLinear<B>|
         -> Result<_, ()> {
            let (i, o) = p.dims();
            let finite = match &p.base {
                tracknet_lora::BaseLinear::Dense(l) => {
                    l.weight.val().is_finite().all().into_scalar().to_bool()
                }
                tracknet_lora::BaseLinear::Quant(_) => true,
            };
            infos.push(LinearInfo {
                path: path.to_string(),
                in_features: i,
                out_features: o,
                finite,
            });
            Ok(p)
        });
        infos
    }

    /// Every backbone projection with an adapter, in PEFT layout `(path, A [r,in], B [out,r])`.
    pub fn adapters(&self) -> Vec<(String, Tensor<B, 2>, Tensor<B, 2>)> {
        let mut out = Vec::new();
        let _ = self.backbone.clone().map_projections(&mut |path: &str,
                                                            p: LoraLinear<B>|
         -> Result<_, ()> {
            if let Some((a, b)) = p.adapter_weights() {
                out.push((path.to_string(), a, b));
            }
            Ok(p)
        });
        out
    }

    /// What PEFT saves in the adapter besides the LoRA factors, keyed as PEFT keys them (without
    /// `base_model.model.`), PyTorch layout: biases trained by `bias: all | lora_only`
    /// (`….q_proj.base_layer.bias` on an adapted layer, as PEFT's wrapper names it) and every
    /// parameter of a `modules_to_save` module (`norm.weight`; `decoder.…`, `head.…` for ours).
    pub fn adapter_extras(&self, settings: &LoraSettings) -> tracknet_lora::params::NamedTensors {
        // Paths only: `adapters()` would copy every LoRA factor to the host for nothing.
        let mut adapted = Vec::new();
        let _ = self.backbone.clone().map_projections(&mut |path: &str,
                                                            p: LoraLinear<B>|
         -> Result<_, ()> {
            if p.has_adapter() {
                adapted.push(path.to_string());
            }
            Ok(p)
        });
        let params = tracknet_lora::params::collect_params::<B, _>(self, |p, _| {
            !(p.contains(".lora_a.") || p.contains(".lora_b."))
        });
        let mut out = tracknet_lora::params::NamedTensors::new();
        for (path, (shape, values)) in params {
            let rel = path.strip_prefix("backbone.");
            let in_backbone = rel.is_some();
            let rel = rel.unwrap_or(&path);
            let module = rel.rsplit_once('.').map_or("", |(m, _)| m);
            let owner = module.strip_suffix(".base").unwrap_or(module);
            let is_adapted = adapted.iter().any(|t| t == owner);
            let is_bias = rel.ends_with(".bias") || rel.ends_with(".beta");
            let bias_saved = in_backbone
                && is_bias
                && match settings.bias {
                    BiasMode::None => false,
                    BiasMode::All => true,
                    BiasMode::LoraOnly => is_adapted,
                };
            let module_saved = settings
                .modules_to_save
                .iter()
                .any(|m| is_saved_module(&path, m));
            if !(bias_saved || module_saved) {
                continue;
            }
            let (mut key, transposed) = crate::hf::hf_name(rel);
            if is_adapted && let Some(p) = key.strip_suffix(".bias") {
                key = format!("{p}.base_layer.bias");
            }
            let tensor = if transposed {
                crate::hf::transpose2(&shape, &values)
            } else {
                (shape, values)
            };
            out.insert(key, tensor);
        }
        out
    }

    /// Load what [`Self::adapter_extras`] (or PEFT) saved: keys as PEFT writes them or as
    /// [`tracknet_lora::peft::LoadedAdapter::extra`] holds them. Every key must name a
    /// parameter of this model with its shape, else one error lists the problems.
    pub fn set_adapter_extras(
        self,
        extra: &tracknet_lora::params::NamedTensors,
        file: &Path,
    ) -> Result<Self, ModelError> {
        // HF name → (model path, transposed) for every parameter.
        let mut by_name = std::collections::BTreeMap::new();
        self.visit(&mut tracknet_lora::PathVisitor::new(
            |p: &str, _: usize, _: bool| {
                let rel = p.strip_prefix("backbone.").unwrap_or(p);
                let (name, transposed) = crate::hf::hf_name(rel);
                by_name.insert(name, (p.to_string(), transposed));
            },
        ));
        let mut tensors = tracknet_lora::params::NamedTensors::new();
        let mut unexpected = Vec::new();
        for (key, (shape, values)) in extra {
            // PEFT's wrapper names (`base_layer.`, `modules_to_save.`) name the base parameter.
            let Some(key) = tracknet_lora::peft::peft_extra_key(key) else {
                continue;
            };
            match by_name.get(&key) {
                Some((path, true)) if shape.len() == 2 => {
                    tensors.insert(path.clone(), crate::hf::transpose2(shape, values));
                }
                Some((path, _)) => {
                    tensors.insert(path.clone(), (shape.clone(), values.clone()));
                }
                None => unexpected.push(format!("base_model.model.{key}")),
            }
        }
        let result = tracknet_lora::load_params(self, &tensors, &|_| false);
        match result {
            Ok(model) if unexpected.is_empty() => Ok(model),
            Ok(_) => Err(LoraError::Mismatch {
                path: file.to_path_buf(),
                missing: Vec::new(),
                unexpected,
                mismatched: Vec::new(),
            }
            .into()),
            Err(m) => Err(LoraError::Mismatch {
                path: file.to_path_buf(),
                missing: m.missing,
                unexpected: [unexpected, m.unexpected].concat(),
                mismatched: m.mismatched,
            }
            .into()),
        }
    }

    /// Load the weights of a PEFT adapter folder (LoRA factors, trained biases,
    /// `modules_to_save`) into this model's adapters: every adapted layer must get its factors
    /// with its rank, and every tensor of the file must land, else one error lists the problems.
    /// The adapter's settings are not changed here (see [`with_adapter_config`]).
    pub fn load_peft_weights(self, dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let mut loaded = tracknet_lora::peft::load_adapter(dir)?;
        loaded.config.to_settings(dir)?;
        in_our_spelling(self.backbone.family(), &mut loaded);
        let mut dims = std::collections::BTreeMap::new();
        let _ = self.backbone.clone().map_projections(&mut |path: &str,
                                                            p: LoraLinear<B>|
         -> Result<_, ()> {
            if p.has_adapter() {
                dims.insert(path.to_string(), p.dims());
            }
            Ok(p)
        });
        let targets: Vec<String> = dims.keys().cloned().collect();
        let assigned = loaded.assign(&targets, &|p: &str| dims.get(p).copied())?;
        let tensors = assigned
            .into_iter()
            .map(|(p, t)| (p, t.to_tensors::<B>(device)))
            .collect();
        let model = self.set_adapters(&tensors)?;
        model.set_adapter_extras(&loaded.extra, &dir.join(tracknet_lora::peft::WEIGHTS_FILE))
    }

    /// Write this model's adapters as a PEFT adapter folder (`adapter_config.json` +
    /// `adapter_model.safetensors`, with the biases and `modules_to_save` of `settings`).
    pub fn save_peft_adapter(
        &self,
        dir: &Path,
        settings: &LoraSettings,
        base_model: Option<String>,
    ) -> Result<(), ModelError> {
        use tracknet_lora::peft::{AdapterConfig, AdapterTensors, save_adapter};
        let adapters: Vec<AdapterTensors> = self
            .adapters()
            .into_iter()
            .map(|(p, a, b)| AdapterTensors::from_tensors(&p, a, b))
            .collect();
        let paths: Vec<String> = adapters.iter().map(|a| a.path.clone()).collect();
        // Hub spellings in `target_modules` (`query`, `dense`) are written as ours (`q_proj`,
        // `o_proj`): PEFT on transformers 5 finds only those.
        let mut settings = settings.clone();
        if let tracknet_lora::TargetSpec::List(names) = &settings.targets {
            settings.targets = tracknet_lora::TargetSpec::List(
                crate::hf::target_names_in_our_spelling(self.backbone.family(), names, &paths),
            );
        }
        let settings = &settings;
        let config = AdapterConfig::from_settings(settings, &paths, base_model);
        let extra = self.adapter_extras(settings);
        Ok(save_adapter(dir, &config, &adapters, &extra)?)
    }

    /// Load PEFT adapter tensors by path (after [`tracknet_lora::peft::LoadedAdapter::assign`]).
    pub fn set_adapters(
        mut self,
        tensors: &std::collections::BTreeMap<String, (Tensor<B, 2>, Tensor<B, 2>)>,
    ) -> Result<Self, ModelError> {
        self.backbone =
            self.backbone
                .map_projections(&mut |path: &str, mut p: LoraLinear<B>| {
                    if let Some((a, b)) = tensors.get(path) {
                        p.set_adapter_weights(a.clone(), b.clone())?;
                    }
                    Ok::<_, LoraError>(p)
                })?;
        Ok(self)
    }
}

/// Where an adapter's base model lives. PEFT records `base_model_name_or_path` as the saving
/// script saw it (relative to its working directory), so a relative path is tried against the
/// adapter folder, then its parent, then the current directory; the first that exists wins
/// (else the adapter-relative path, for the error message).
pub fn adapter_base_dir(adapter_dir: &Path, base: &str) -> PathBuf {
    let p = Path::new(base);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let candidates = [
        Some(adapter_dir.join(p)),
        adapter_dir.parent().map(|d| d.join(p)),
        Some(p.to_path_buf()),
    ];
    candidates
        .iter()
        .flatten()
        .find(|c| c.exists())
        .cloned()
        .unwrap_or_else(|| adapter_dir.join(p))
}

/// A loaded adapter's module and parameter paths in our names: an adapter PEFT saved on
/// transformers 4 names DINOv2's and ViT's projections as the hub does
/// (`…attention.attention.query`, `…mlp.weights_in`). A fused SwiGLU `weights_in` adapter
/// becomes two with the same A and B's halves (`gate_proj`, `up_proj`): the same function.
fn in_our_spelling(family: crate::arch::Family, loaded: &mut tracknet_lora::peft::LoadedAdapter) {
    for (path, t) in std::mem::take(&mut loaded.tensors) {
        for (ours, half) in our_parts(family, &path, t.b_shape[0]) {
            let (b_shape, b) = rows_half(&t.b_shape, &t.b, half);
            let t = AdapterTensors {
                path: ours.clone(),
                b_shape: [b_shape[0], b_shape[1]],
                b,
                ..t.clone()
            };
            loaded.tensors.insert(ours, t);
        }
    }
    for (key, (shape, values)) in std::mem::take(&mut loaded.extra) {
        let Some((module, leaf)) = key.rsplit_once('.') else {
            loaded.extra.insert(key, (shape, values));
            continue;
        };
        let rows = shape.first().copied().unwrap_or(0);
        for (ours, half) in our_parts(family, module, rows) {
            loaded
                .extra
                .insert(format!("{ours}.{leaf}"), rows_half(&shape, &values, half));
        }
    }
}

/// `path` in our spelling, each with the half of a fused tensor (`rows` rows) it takes, or
/// `None` for all of it. A fused path whose rows do not halve keeps its first name only (the
/// assignment then reports the other as missing).
fn our_parts(family: crate::arch::Family, path: &str, rows: usize) -> Vec<(String, Option<usize>)> {
    let ours = crate::hf::peft_paths_in_our_spelling(family, path);
    if ours.len() == 2 && rows.is_multiple_of(2) {
        ours.into_iter().zip([Some(0), Some(1)]).collect()
    } else {
        ours.into_iter().take(1).map(|p| (p, None)).collect()
    }
}

/// Half `half` of a row-major tensor along its first axis, or all of it.
fn rows_half(shape: &[usize], values: &[f32], half: Option<usize>) -> (Vec<usize>, Vec<f32>) {
    let Some(i) = half else {
        return (shape.to_vec(), values.to_vec());
    };
    let n = values.len() / 2;
    let mut shape = shape.to_vec();
    shape[0] /= 2;
    (shape, values[i * n..(i + 1) * n].to_vec())
}
