//! `HeatmapModel`: backbone → (4-bit base) → (LoRA) → decoder → 1×1 head, from the config.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tracknet_config::{
    Activation, BackboneFamily, ComputeDtype as CfgDtype, DecoderNorm, LoraBias, ModelConfig,
    QuantKind, TargetModules,
};
use tracknet_lora::{
    BiasMode, LoraError, LoraInit, LoraLinear, LoraSettings, ParamReport, TargetSpec, param_report,
    saved_module_match, select_targets, set_trainable,
};
use tracknet_quant::{
    CodeBooks, ComputeDtype, LayerMemory, LinearInfo, MemoryReport, QuantBackend, QuantError,
    QuantPlan, QuantSpec, QuantType,
};

use crate::backbone::{Backbone, BackboneArch, LoadedSnapshot};
use crate::decoder::{
    DecoderActivation, DecoderError, DecoderNormKind, HeatmapDecoder, HeatmapDecoderConfig,
};
use crate::error::VitError;
use crate::head::{HeatmapHead, HeatmapHeadConfig};
use crate::hf;

/// Anything that stops a model from being built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Backbone weights or architecture.
    #[error(transparent)]
    Vit(#[from] VitError),
    /// Decoder configuration.
    #[error(transparent)]
    Decoder(#[from] DecoderError),
    /// Quantization.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// LoRA.
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// A config value that does not fit the model.
    #[error("{key}: {message}")]
    Config {
        /// Key path.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// The TrackNet heatmap model. Module paths: `backbone.<HF path>`, `decoder.…`, `head.…`.
#[derive(Module, Debug)]
pub struct HeatmapModel<B: Backend> {
    /// DINOv3 or ViT.
    pub backbone: Backbone<B>,
    /// Upsampling decoder.
    pub decoder: HeatmapDecoder<B>,
    /// 1×1 conv to one channel.
    pub head: HeatmapHead<B>,
    /// Shared 4-bit code books (present when the backbone is quantized).
    pub code_books: Option<CodeBooks<B>>,
}

/// What building the model decided, for the reports printed at the start of a run.
#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    /// Where the backbone came from.
    pub backbone_source: String,
    /// The quantization decision per layer (when enabled).
    pub quant_plan: Option<QuantPlan>,
    /// Paths that got a LoRA adapter.
    pub lora_targets: Vec<String>,
    /// Non-fatal notes.
    pub warnings: Vec<String>,
    /// Multi-frame input: how the patch embedding takes the stacked frames.
    pub input_note: Option<String>,
}

impl<B: QuantBackend> HeatmapModel<B> {
    /// Build the whole model from the `model:` section, for single-frame input.
    pub fn from_config(
        cfg: &ModelConfig,
        device: &B::Device,
    ) -> Result<(Self, BuildReport), ModelError> {
        Self::from_config_frames(cfg, 1, device)
    }

    /// Build the whole model for `frames` stacked input frames (`data.sequence.frames()`):
    /// input `[batch, 3·frames, H, W]`. A 3-channel backbone's patch embedding is inflated (see
    /// [`Backbone::with_input_frames`]) and, with more than one frame, trains even where the
    /// rest of the backbone is frozen.
    pub fn from_config_frames(
        cfg: &ModelConfig,
        frames: usize,
        device: &B::Device,
    ) -> Result<(Self, BuildReport), ModelError> {
        let mut report = BuildReport::default();
        let (effective, notes) = with_adapter_config(cfg)?;
        let cfg = &effective;
        report.warnings.extend(notes);
        let (loaded, source) = load_backbone::<B>(cfg, device)?;
        check_stored_quantization(cfg, &loaded)?;
        let backbone = loaded.backbone;
        report.backbone_source = source;
        let channels_before = backbone.num_channels();
        let backbone = backbone.with_input_frames(frames)?;
        if frames > 1 {
            let dims = match &backbone {
                Backbone::Dinov3(m) => m.embeddings.patch_embeddings.weight.dims(),
                Backbone::Vit(m) => m.embeddings.patch_embeddings.projection.weight.dims(),
            };
            report.input_note = Some(format!(
                "input: {frames} frames stacked on the channel axis ({} channels); patch \
                 embedding backbone.{}.weight {dims:?} ({}), trainable",
                3 * frames,
                backbone.patch_embedding_path(),
                if channels_before == 3 {
                    "inflated from the 3-channel kernel, divided by the frame count".to_string()
                } else {
                    format!("as stored: {channels_before} channels")
                }
            ));
        }
        if backbone.patch_size() != cfg.backbone.patch_size {
            report.warnings.push(format!(
                "model.backbone.patch_size is {} but the backbone uses {}; the backbone's value is used",
                cfg.backbone.patch_size,
                backbone.patch_size()
            ));
        }
        let decoder_cfg = decoder_config(cfg, backbone.hidden_size())?;
        let decoder = decoder_cfg.init(device)?;
        let head = HeatmapHeadConfig::new(*decoder_cfg.channels.last().unwrap_or(&1)).init(device);
        let mut model = Self {
            backbone,
            decoder,
            head,
            code_books: loaded.code_books,
        };

        // The backbone trains only when not frozen and not adapted (LoRA trains adapters instead).
        let backbone_trains = !cfg.backbone.freeze && !cfg.lora.enabled;
        model = model.set_backbone_base_trainable(backbone_trains);

        if cfg.quantization.enabled {
            let (m, plan) = model.quantize_backbone(
                &quant_spec(cfg),
                &cfg.quantization.skip_modules,
                device,
            )?;
            model = m;
            report.warnings.extend(plan.warnings());
            report.quant_plan = Some(plan);
        }
        if cfg.lora.enabled {
            let settings = lora_settings(cfg);
            let (m, targets) = model.add_lora(&settings, device)?;
            model = m;
            report.lora_targets = targets;
            if let Some(dir) = &cfg.lora.adapter_path {
                model = model.load_peft_weights(dir, device)?;
            }
        }
        Ok((model.map(&mut Materialize), report))
    }

    /// True when the input is several stacked frames (the patch embedding takes more than 3
    /// channels); that embedding then always trains.
    pub fn multi_frame(&self) -> bool {
        self.backbone.num_channels() != 3
    }

    /// Set whether the base backbone trains (the freeze schedule of a full fine-tuning). The
    /// multi-frame patch embedding trains either way; adapters are not touched.
    pub fn set_backbone_base_trainable(mut self, trains: bool) -> Self {
        let patch = self
            .multi_frame()
            .then(|| self.backbone.patch_embedding_path());
        self.backbone = set_trainable(self.backbone, |param: &str| {
            if param.contains(".lora_a.") || param.contains(".lora_b.") {
                return None;
            }
            if patch.is_some_and(|p| is_under(param, p)) {
                return Some(true);
            }
            Some(trains)
        });
        self
    }

    /// Quantize the backbone's projections (QLoRA order: before LoRA). The head is never
    /// quantized (it is a conv, outside the backbone).
    pub fn quantize_backbone(
        mut self,
        spec: &QuantSpec,
        skip_modules: &[String],
        device: &B::Device,
    ) -> Result<(Self, QuantPlan), ModelError> {
        let infos = self.projection_infos();
        let plan = QuantPlan::new(&infos, skip_modules, &[], spec.blocksize);
        // A backbone read from a 4-bit snapshot already has code books: its layers share them.
        let books = self
            .code_books
            .clone()
            .unwrap_or_else(|| CodeBooks::<B>::new(device));
        let selected = plan.quantize.clone();
        self.backbone =
            self.backbone
                .map_projections(&mut |path: &str, mut p: LoraLinear<B>| {
                    // Layers stored in 4 bits keep their codes and take the run's compute dtype.
                    if let tracknet_lora::BaseLinear::Quant(q) = p.base {
                        p.base = tracknet_lora::BaseLinear::Quant(q.with_compute(spec.compute));
                        return Ok(p);
                    }
                    if selected.iter().any(|s| s == path) {
                        p.quantize(*spec, &books)
                    } else {
                        Ok(p)
                    }
                })?;
        self.code_books = Some(books);
        Ok((self, plan))
    }

    /// Attach LoRA adapters to the targeted projections and apply the bias mode and
    /// `modules_to_save`. Returns the adapted paths.
    pub fn add_lora(
        mut self,
        settings: &LoraSettings,
        device: &B::Device,
    ) -> Result<(Self, Vec<String>), ModelError> {
        settings.validate()?;
        let paths = self.backbone.projection_paths();
        let targets = select_targets(&paths, &settings.targets)?;
        self.backbone = self
            .backbone
            .map_projections(&mut |path: &str, p: LoraLinear<B>| {
                if targets.iter().any(|t| t == path) {
                    p.with_adapter(settings, device)
                } else {
                    Ok(p)
                }
            })?;
        let adapted = targets.clone();
        let to_save = settings.modules_to_save.clone();
        // Every `modules_to_save` entry must name a module of this model (backbone paths as in
        // the HF model; `decoder`, `head`): one that names nothing would silently save nothing.
        let mut all_params = Vec::new();
        self.visit(&mut tracknet_lora::PathVisitor::new(
            |p: &str, _: usize, _: bool| all_params.push(p.to_string()),
        ));
        let unmatched: Vec<&String> = to_save
            .iter()
            .filter(|m| !all_params.iter().any(|p| is_saved_module(p, m)))
            .collect();
        if !unmatched.is_empty() {
            return Err(ModelError::Config {
                key: "model.lora.modules_to_save".into(),
                message: format!(
                    "{unmatched:?} name no module of the model (PEFT's rule: a module path ending \
                     with the name; backbone paths as in the Hugging Face model, e.g. `norm`; \
                     ours from the model root: `decoder`, `head`)"
                ),
            });
        }
        let bias = settings.bias;
        let patch = self
            .multi_frame()
            .then(|| self.backbone.patch_embedding_path());
        self.backbone = set_trainable(self.backbone, |param: &str| {
            if param.contains(".lora_a.") || param.contains(".lora_b.") {
                return Some(true);
            }
            if patch.is_some_and(|p| is_under(param, p)) {
                return Some(true);
            }
            let module = param.rsplit_once('.').map_or("", |(m, _)| m);
            if to_save.iter().any(|m| saved_module_match(param, m)) {
                return Some(true);
            }
            // PEFT's bias="all" trains every parameter named like a bias, LayerNorm's
            // included (Burn calls it `beta`).
            if param.ends_with(".bias") || param.ends_with(".beta") {
                let owner = module.strip_suffix(".base").unwrap_or(module);
                return Some(match bias {
                    BiasMode::None => false,
                    BiasMode::All => true,
                    BiasMode::LoraOnly => adapted.iter().any(|t| t == owner),
                });
            }
            Some(false)
        });
        Ok((self, targets))
    }

    /// `images [batch, 3, H, W] → heatmap logits [batch, 1, Hh, Wh]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let grid = self.backbone.forward(images).patch_grid; // [B, h, w, C]
        let x = grid.permute([0, 3, 1, 2]); // [B, C, h, w]
        self.head.forward(self.decoder.forward(x))
    }

    /// Checks the input size `[W, H]` (`data.preprocess.resize`) against the backbone as built
    /// — a snapshot's own patch size, not `model.backbone.patch_size` — before any step runs.
    pub fn check_input_size(&self, resize: [usize; 2]) -> Result<(), ModelError> {
        let patch = self.backbone.patch_size();
        if resize.iter().any(|&v| v == 0 || !v.is_multiple_of(patch)) {
            return Err(ModelError::Config {
                key: "data.preprocess.resize".into(),
                message: format!(
                    "expected [W, H] both positive multiples of the backbone's patch size \
                     {patch}, got {resize:?}"
                ),
            });
        }
        Ok(())
    }

    /// As [`Self::forward`], with the input shape checked first (a clear error, not a panic).
    pub fn try_forward(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 4>, ModelError> {
        self.backbone.check_input(images.dims())?;
        Ok(self.forward(images))
    }
}

impl<B: tracknet_quant::QuantBackend> HeatmapModel<B> {
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
        let loaded = tracknet_lora::peft::load_adapter(dir)?;
        loaded.config.to_settings(dir)?;
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

    /// Measured storage of every backbone projection (4-bit or f32) and the shared code books.
    pub fn memory_report(&self) -> MemoryReport {
        let mut layers = Vec::new();
        let _ = self.backbone.clone().map_projections(&mut |path: &str,
                                                            p: LoraLinear<B>|
         -> Result<_, ()> {
            let (i, o) = p.dims();
            let (stored, quantized) = match &p.base {
                tracknet_lora::BaseLinear::Dense(_) => (i * o * 4, false),
                tracknet_lora::BaseLinear::Quant(q) => (q.stored_weight_bytes(), true),
            };
            layers.push(LayerMemory {
                path: path.to_string(),
                params: i * o,
                stored_bytes: stored,
                quantized,
            });
            Ok(p)
        });
        let shared_bytes = self.code_books.as_ref().map_or(0, |b| b.stored_bytes());
        MemoryReport {
            layers,
            shared_bytes,
        }
    }

    /// Weights held as 4-bit constants (not Burn parameters).
    pub fn quantized_weights(&self) -> usize {
        self.memory_report().quantized_params()
    }

    /// PEFT's trainable-parameter report (meaningful on an autodiff backend).
    pub fn param_report(&self) -> ParamReport {
        param_report::<B, _>(self, self.quantized_weights())
    }
}

fn load_backbone<B: QuantBackend>(
    cfg: &ModelConfig,
    device: &B::Device,
) -> Result<(LoadedSnapshot<B>, String), ModelError> {
    let described = |loaded: &LoadedSnapshot<B>, what: String| match &loaded.bnb {
        Some(q) => format!(
            "{what} (bitsandbytes 4-bit {}{}: {} layers read as stored)",
            q.quant_type,
            if q.double_quant { ", double quant" } else { "" },
            quantized_paths(&loaded.backbone).len()
        ),
        None => what,
    };
    if let Some(dir) = snapshot_dir(cfg)? {
        let loaded = Backbone::load_snapshot(&dir, device)?;
        let what = match (&cfg.backbone.weights, &cfg.pretrained_model_name) {
            (None, Some(name)) => format!("{name} ({})", dir.display()),
            _ => format!("snapshot {}", dir.display()),
        };
        let source = described(&loaded, what);
        return Ok((loaded, source));
    }
    let arch = arch_from_config(cfg)?;
    Ok((
        LoadedSnapshot {
            backbone: Backbone::random(&arch, device)?,
            bnb: None,
            code_books: None,
        },
        "random init (model.backbone architecture fields)".into(),
    ))
}

/// `cfg` with `model.lora` taken from the adapter at `model.lora.adapter_path` (rank, alpha,
/// rsLoRA, dropout, targets, bias, `modules_to_save`: the adapter's weights only fit its own
/// settings), and one note per value that differs from what the config said. Unchanged when no
/// adapter is given. An adapter using PEFT features that change the math is refused by key.
pub fn with_adapter_config(cfg: &ModelConfig) -> Result<(ModelConfig, Vec<String>), ModelError> {
    let mut out = cfg.clone();
    let Some(dir) = &cfg.lora.adapter_path else {
        return Ok((out, Vec::new()));
    };
    let s = tracknet_lora::peft::read_adapter_config(dir)?.to_settings(dir)?;
    let l = &mut out.lora;
    let mut notes = Vec::new();
    let mut note = |key: &str, was: String, now: String| {
        if was != now {
            notes.push(format!(
                "model.lora.{key}: {now} from the adapter {} (the config said {was})",
                dir.display()
            ));
        }
    };
    note("r", l.r.to_string(), s.r.to_string());
    note("lora_alpha", l.lora_alpha.to_string(), s.alpha.to_string());
    note(
        "lora_dropout",
        l.lora_dropout.to_string(),
        s.dropout.to_string(),
    );
    note(
        "use_rslora",
        l.use_rslora.to_string(),
        s.use_rslora.to_string(),
    );
    let targets = match &s.targets {
        TargetSpec::List(v) => TargetModules::List(v.clone()),
        TargetSpec::Regex(r) => TargetModules::Regex(r.clone()),
        TargetSpec::Auto => TargetModules::Auto,
    };
    note(
        "target_modules",
        format!("{:?}", l.target_modules),
        format!("{targets:?}"),
    );
    let bias = match s.bias {
        BiasMode::None => LoraBias::None,
        BiasMode::All => LoraBias::All,
        BiasMode::LoraOnly => LoraBias::LoraOnly,
    };
    note("bias", l.bias.as_str().into(), bias.as_str().into());
    note(
        "modules_to_save",
        format!("{:?}", l.modules_to_save),
        format!("{:?}", s.modules_to_save),
    );
    l.r = s.r;
    l.lora_alpha = s.alpha;
    l.lora_dropout = s.dropout;
    l.use_rslora = s.use_rslora;
    l.target_modules = targets;
    l.bias = bias;
    l.modules_to_save = s.modules_to_save;
    if s.task_type.is_some() {
        l.task_type = s.task_type;
    }
    Ok((out, notes))
}

/// The snapshot folder the backbone is read from: `model.backbone.weights`, else (with
/// `pretrained`) `pretrained_model_name` from the local hub cache; `None` for a random init.
pub fn snapshot_dir(cfg: &ModelConfig) -> Result<Option<PathBuf>, ModelError> {
    if let Some(dir) = &cfg.backbone.weights {
        return Ok(Some(hf::resolve_snapshot(&dir.to_string_lossy(), true)?));
    }
    if cfg.backbone.pretrained
        && let Some(name) = &cfg.pretrained_model_name
    {
        return Ok(Some(hf::resolve_snapshot(
            name,
            cfg.backbone.local_files_only,
        )?));
    }
    Ok(None)
}

/// The transformers `config.json` of the backbone: the snapshot's own (every key it had), else
/// the one `model.backbone` describes ([`arch_json`]).
pub fn backbone_hf_config(cfg: &ModelConfig) -> Result<serde_json::Value, ModelError> {
    let Some(dir) = snapshot_dir(cfg)? else {
        return Ok(arch_json(cfg));
    };
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| VitError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(serde_json::from_str(&text).map_err(|e| VitError::Json {
        path,
        message: e.to_string(),
    })?)
}

/// Paths of the projections whose base is 4-bit.
fn quantized_paths<B: QuantBackend>(backbone: &Backbone<B>) -> Vec<(String, QuantSpec)> {
    let mut out = Vec::new();
    let _ = backbone.clone().map_projections(&mut |path: &str,
                                                   p: LoraLinear<B>|
     -> Result<_, ()> {
        if let tracknet_lora::BaseLinear::Quant(q) = &p.base {
            out.push((path.to_string(), q.spec));
        }
        Ok(p)
    });
    out
}

/// A snapshot stored in 4 bits fixes the format of its layers: the `model.quantization`
/// section must say the same (enabled, code book, block size, double quantization) and must
/// not ask to keep one of them in full precision. An error names the key that disagrees.
fn check_stored_quantization<B: QuantBackend>(
    cfg: &ModelConfig,
    loaded: &LoadedSnapshot<B>,
) -> Result<(), ModelError> {
    let stored = quantized_paths(&loaded.backbone);
    let Some((_, spec)) = stored.first() else {
        return Ok(());
    };
    let q = &cfg.quantization;
    let err = |key: &str, message: String| ModelError::Config {
        key: format!("model.quantization.{key}"),
        message,
    };
    let fmt = format!(
        "the backbone snapshot stores {} layers in 4 bits ({}, blocksize {}, double quant {})",
        stored.len(),
        spec.quant_type,
        spec.blocksize,
        spec.double_quant
    );
    if !q.enabled {
        return Err(err(
            "enabled",
            format!("{fmt}; set enabled: true (the codes are used as stored, LoRA trains on them)"),
        ));
    }
    let want_type = quant_spec(cfg).quant_type;
    for (path, s) in &stored {
        if s.quant_type != want_type {
            return Err(err(
                "quant_type",
                format!(
                    "{fmt}; `{path}` is {}, the config says {want_type}",
                    s.quant_type
                ),
            ));
        }
        if s.blocksize != q.blocksize {
            return Err(err(
                "blocksize",
                format!(
                    "{fmt}; `{path}` uses {}, the config says {}",
                    s.blocksize, q.blocksize
                ),
            ));
        }
        if s.double_quant != q.double_quant() {
            return Err(err(
                "use_double_quant",
                format!(
                    "{fmt}; `{path}` has double quant {}, the config says {}",
                    s.double_quant,
                    q.double_quant()
                ),
            ));
        }
        if let Some(name) = q
            .skip_modules
            .iter()
            .find(|n| tracknet_quant::segment_match(path, n))
        {
            return Err(err(
                "skip_modules",
                format!(
                    "`{name}` names `{path}`, which the snapshot stores in 4 bits (its full-precision weights are not in the snapshot)"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether the model parameter `path` (`backbone.…`, `decoder.…`, `head.…`) belongs to the
/// `modules_to_save` entry `name`: inside the backbone by PEFT's rule on the Hugging Face path
/// (as PEFT applied to the backbone model would match), in the decoder and head only for names
/// given from the model root (`decoder`, `head`, `decoder.stages.1`), so that a backbone name
/// like `norm` never reaches the decoder's norms.
fn is_saved_module(path: &str, name: &str) -> bool {
    match path.strip_prefix("backbone.") {
        Some(rel) => saved_module_match(rel, name),
        None => {
            let root = name.split('.').next().unwrap_or("");
            (root == "decoder" || root == "head") && is_under(path, name)
        }
    }
}

/// `param` is `prefix` itself or a parameter below it (`prefix.weight`).
fn is_under(param: &str, prefix: &str) -> bool {
    param
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Draws every lazily initialised parameter now. Burn's `Param::clone` of a parameter that was
/// never read gives the clone its own lazy initialiser, drawn from the RNG whenever the clone is
/// first read: a clone taken before the model ran (`adapters()`, `projection_infos()`, a
/// checkpoint) would otherwise hold other values than the model computes with. The default
/// `ModuleMapper` methods consume each parameter, which initialises it.
struct Materialize;

impl<B: Backend> burn::module::ModuleMapper<B> for Materialize {}

/// The architecture the config describes, for a randomly initialised backbone.
pub fn arch_from_config(cfg: &ModelConfig) -> Result<BackboneArch, ModelError> {
    let json = arch_json(cfg);
    Ok(BackboneArch::from_config_str(
        &json.to_string(),
        Path::new("model.backbone"),
    )?)
}

/// The transformers `config.json` of the architecture `model.backbone` describes.
pub fn arch_json(cfg: &ModelConfig) -> serde_json::Value {
    let b = &cfg.backbone;
    match b.family {
        BackboneFamily::Dinov3 => serde_json::json!({
            "model_type": "dinov3_vit",
            "hidden_size": b.hidden_size,
            "num_hidden_layers": b.num_hidden_layers,
            "num_attention_heads": b.num_attention_heads,
            "intermediate_size": b.intermediate_size,
            "num_register_tokens": b.num_register_tokens,
            "use_gated_mlp": b.use_gated_mlp,
            "layerscale_value": b.layerscale_value,
            "rope_theta": b.rope_theta,
            "layer_norm_eps": b.layer_norm_eps,
            "patch_size": b.patch_size,
        }),
        BackboneFamily::Vit => serde_json::json!({
            "model_type": "vit",
            "hidden_size": b.hidden_size,
            "num_hidden_layers": b.num_hidden_layers,
            "num_attention_heads": b.num_attention_heads,
            "intermediate_size": b.intermediate_size,
            "layer_norm_eps": b.layer_norm_eps,
            "patch_size": b.patch_size,
            "image_size": 224,
        }),
    }
}

/// The decoder's config from `model.decoder` + `model.heatmap`; the first channel count must
/// equal the backbone's hidden size.
pub fn decoder_config(
    cfg: &ModelConfig,
    hidden: usize,
) -> Result<HeatmapDecoderConfig, ModelError> {
    let d = &cfg.decoder;
    if d.channels.first() != Some(&hidden) {
        return Err(ModelError::Config {
            key: "model.decoder.channels".into(),
            message: format!(
                "the first entry must equal the backbone's hidden size {hidden}, got {:?}",
                d.channels.first()
            ),
        });
    }
    Ok(
        HeatmapDecoderConfig::new(d.channels.clone(), d.upsample.clone(), cfg.heatmap.size)
            .with_blocks_per_stage(d.blocks_per_stage)
            .with_norm(match d.norm {
                DecoderNorm::Gn => DecoderNormKind::Group,
                DecoderNorm::Bn => DecoderNormKind::Batch,
            })
            .with_activation(match d.activation {
                Activation::Gelu => DecoderActivation::Gelu,
                Activation::Relu => DecoderActivation::Relu,
            })
            .with_use_depthwise(d.use_depthwise)
            .with_use_se(d.use_se)
            .with_se_reduction(d.se_reduction)
            .with_dropout(d.dropout),
    )
}

/// `model.quantization` as a layer spec.
pub fn quant_spec(cfg: &ModelConfig) -> QuantSpec {
    let q = &cfg.quantization;
    QuantSpec {
        quant_type: match q.quant_type {
            QuantKind::Nf4 => QuantType::Nf4,
            QuantKind::Fp4 => QuantType::Fp4,
        },
        blocksize: q.blocksize,
        double_quant: q.double_quant(),
        compute: match q.compute_dtype {
            CfgDtype::Bfloat16 => ComputeDtype::BF16,
            CfgDtype::Float16 => ComputeDtype::F16,
            CfgDtype::Float32 => ComputeDtype::F32,
        },
    }
}

/// `model.lora` as LoRA settings.
pub fn lora_settings(cfg: &ModelConfig) -> LoraSettings {
    let l = &cfg.lora;
    LoraSettings {
        r: l.r,
        alpha: l.lora_alpha,
        dropout: l.lora_dropout,
        use_rslora: l.use_rslora,
        bias: match l.bias {
            LoraBias::None => BiasMode::None,
            LoraBias::All => BiasMode::All,
            LoraBias::LoraOnly => BiasMode::LoraOnly,
        },
        targets: match &l.target_modules {
            TargetModules::List(v) => TargetSpec::List(v.clone()),
            TargetModules::Regex(r) => TargetSpec::Regex(r.clone()),
            TargetModules::Auto => TargetSpec::Auto,
        },
        modules_to_save: l.modules_to_save.clone(),
        init: if l.init_lora_weights {
            LoraInit::PeftDefault
        } else {
            LoraInit::RandomB
        },
        task_type: l.task_type.clone(),
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
