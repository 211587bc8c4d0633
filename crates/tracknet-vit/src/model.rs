//! `HeatmapModel`: backbone → (4-bit base) → (LoRA) → decoder → 1×1 head, from the config.

use burn::prelude::*;
use tracknet_lora::{
    BiasMode, LoraError, LoraLinear, LoraSettings, ParamReport, param_report, saved_module_match,
    set_trainable,
};
use tracknet_quant::{CodeBooks, LayerMemory, MemoryReport, QuantError, QuantPlan, QuantSpec};

use crate::backbone::Backbone;
use crate::decoder::{DecoderError, HeatmapDecoder};
use crate::error::VitError;
use crate::head::HeatmapHead;

mod adapters;
mod assembly;
mod recompute;

pub use adapters::adapter_base_dir;
pub use assembly::{
    arch_from_config, arch_json, backbone_hf_config, decoder_config, lora_settings, quant_spec,
    snapshot_dir, with_adapter_config,
};
pub use recompute::{Activation, Segment};

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
    /// `model.quantization` disagrees with the 4-bit format the backbone snapshot stores.
    #[error("{key}: {message}")]
    StoredQuantization {
        /// The `model.quantization.*` key that disagrees.
        key: String,
        /// What the snapshot stores and what the config says.
        message: String,
    },
    /// `model.decoder.channels` does not start at the backbone's width.
    #[error(
        "model.decoder.channels: the first entry must equal the backbone's hidden size {hidden}, got {first:?}"
    )]
    DecoderWidth {
        /// The backbone's hidden size.
        hidden: usize,
        /// The decoder's first width, if any.
        first: Option<usize>,
    },
    /// `model.lora.modules_to_save` entries that match no module.
    #[error(
        "model.lora.modules_to_save: {names:?} name no module of the model (PEFT's rule: a module path ending with the name; backbone paths as in the Hugging Face model, e.g. `norm`; ours from the model root: `decoder`, `head`)"
    )]
    UnmatchedModulesToSave {
        /// The names that match nothing.
        names: Vec<String>,
    },
    /// `data.preprocess.resize` that the backbone's patches do not tile.
    #[error(
        "data.preprocess.resize: expected [W, H] both positive multiples of the backbone's patch size {patch}, got {resize:?}; the nearest valid sizes are {below:?} and {above:?}"
    )]
    InputSize {
        /// The backbone's patch size (a snapshot's own).
        patch: usize,
        /// `[W, H]` as configured.
        resize: [usize; 2],
        /// Each side rounded down to a multiple of the patch (at least one patch).
        below: [usize; 2],
        /// Each side rounded up to a multiple of the patch.
        above: [usize; 2],
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

impl<B: crate::ModelBackend> HeatmapModel<B> {
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
        let targets = self.backbone.select_targets(&settings.targets)?;
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
            return Err(ModelError::UnmatchedModulesToSave {
                names: unmatched.into_iter().cloned().collect(),
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
            let below = resize.map(|v| (v / patch).max(1) * patch);
            let above = resize.map(|v| v.div_ceil(patch).max(1) * patch);
            return Err(ModelError::InputSize {
                patch,
                resize,
                below,
                above,
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

impl<B: crate::ModelBackend> HeatmapModel<B> {
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

/// Whether the model parameter `path` (`backbone.…`, `decoder.…`, `head.…`) belongs to the
/// `modules_to_save` entry `name`: inside the backbone by PEFT's rule on the Hugging Face path
/// (as PEFT applied to the backbone model would match), in the decoder and head only for names
/// given from the model root (`decoder`, `head`, `decoder.stages.1`), so that a backbone name
/// like `norm` never reaches the decoder's norms.
pub(crate) fn is_saved_module(path: &str, name: &str) -> bool {
    match path.strip_prefix("backbone.") {
        Some(rel) => saved_module_match(rel, name),
        None => {
            let root = name.split('.').next().unwrap_or("");
            (root == "decoder" || root == "head") && is_under(path, name)
        }
    }
}

/// `param` is `prefix` itself or a parameter below it (`prefix.weight`).
pub(crate) fn is_under(param: &str, prefix: &str) -> bool {
    param
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Draws every lazily initialised parameter now. Burn's `Param::clone` of a parameter that was
/// never read gives the clone its own lazy initialiser, drawn from the RNG whenever the clone is
/// first read: a clone taken before the model ran (`adapters()`, `projection_infos()`, a
/// checkpoint) would otherwise hold other values than the model computes with. The default
/// `ModuleMapper` methods consume each parameter, which initialises it.
pub(crate) struct Materialize;

impl<B: Backend> burn::module::ModuleMapper<B> for Materialize {}
