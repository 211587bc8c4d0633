//! The backbone seen by the rest of the project: DINOv3, DINOv2 or classic ViT, random or
//! pretrained. This module only dispatches to the families; what they share is in [`crate::layers`],
//! the `config.json` parsing in [`crate::arch`].
//!
//! Both produce the full token sequence `[batch, tokens, hidden]` and the patch tokens as a grid
//! `[batch, H/patch, W/patch, hidden]` for the decoder.

use std::path::Path;

use burn::prelude::*;
use tracknet_lora::{LoraError, TargetSpec};

pub use crate::arch::{BackboneArch, Family};
use crate::dinov2::Dinov2Model;
use crate::dinov3::Dinov3Model;
use crate::error::VitError;
use crate::hf;
use crate::layers::check_pixel_dims;
pub use crate::layers::{BackboneOutput, BlockContext, HiddenAct, TokenStack};
use crate::proj::Proj;
use crate::vit::VitModel;

/// A backbone read from a snapshot, with what a 4-bit snapshot brings besides.
#[derive(Debug)]
pub struct LoadedSnapshot<B: Backend> {
    /// The backbone; 4-bit layers of the snapshot are 4-bit projections.
    pub backbone: Backbone<B>,
    /// The snapshot's `quantization_config` (bitsandbytes), if any.
    pub bnb: Option<tracknet_quant::BnbConfig>,
    /// The code books shared by the 4-bit layers, when there are any.
    pub code_books: Option<tracknet_quant::CodeBooks<B>>,
}

/// A part of the backbone, as recomputation segments it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackbonePart {
    /// Patch embedding and tokens.
    Embed,
    /// Transformer block `i`.
    Block(usize),
    /// The final norm.
    Norm,
}

/// A DINOv3, DINOv2 or classic ViT backbone.
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    Dinov3(Dinov3Model<B>),
    Vit(VitModel<B>),
    Dinov2(Dinov2Model<B>),
}

impl<B: crate::ModelBackend> Backbone<B> {
    /// Randomly initialised backbone (transformers' init: trunc-normal weights, zero biases).
    pub fn random(arch: &BackboneArch, device: &B::Device) -> Result<Self, VitError> {
        arch.validate(Path::new("<in-memory config>"))?;
        Ok(match arch {
            BackboneArch::Dinov3(c) => Backbone::Dinov3(Dinov3Model::random(c, device)?),
            BackboneArch::Vit(c) => Backbone::Vit(VitModel::random(c, device)?),
            BackboneArch::Dinov2(c) => Backbone::Dinov2(Dinov2Model::random(c, device)?),
        })
    }

    /// Load `config.json` and the safetensors weights of a local snapshot directory (see
    /// [`hf::resolve_snapshot`] to turn a model id into a directory).
    pub fn from_snapshot(dir: &Path, device: &B::Device) -> Result<Self, VitError> {
        Ok(Self::load_snapshot(dir, device)?.backbone)
    }

    /// As [`Self::from_snapshot`], also handing out what a 4-bit (bitsandbytes) snapshot
    /// brings: its `quantization_config` and the code books its 4-bit layers share. Those
    /// layers keep the stored codes; nothing is dequantized.
    pub fn load_snapshot(dir: &Path, device: &B::Device) -> Result<LoadedSnapshot<B>, VitError> {
        let arch = BackboneArch::from_config_file(&dir.join("config.json"))?;
        let mut store = hf::WeightStore::<B>::open(dir, &arch, device)?;
        let backbone = match &arch {
            BackboneArch::Dinov3(c) => Backbone::Dinov3(Dinov3Model::build(c, &mut store)?),
            BackboneArch::Vit(c) => Backbone::Vit(VitModel::build(c, &mut store)?),
            BackboneArch::Dinov2(c) => Backbone::Dinov2(Dinov2Model::build(c, &mut store)?),
        };
        let (bnb, code_books) = (store.bnb.clone(), store.books.clone());
        store.finish()?;
        Ok(LoadedSnapshot {
            backbone,
            bnb,
            code_books,
        })
    }

    /// `pixel_values [batch, channels, H, W]` → tokens and patch grid. H and W should be
    /// multiples of the patch size; like transformers, trailing pixels that do not fill a patch
    /// are ignored. Use [`Self::try_forward`] to reject such inputs instead.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> BackboneOutput<B> {
        self.stack().forward(pixel_values)
    }

    /// The per-forward context of the blocks for an input of `dims` `[batch, channels, H, W]`.
    pub fn block_context(&self, dims: [usize; 4], device: &B::Device) -> BlockContext<B> {
        self.stack().block_context(dims, device)
    }

    /// The embeddings: `pixel_values [batch, channels, H, W]` → tokens `[batch, tokens, hidden]`.
    pub fn embed(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        self.stack().embed(pixel_values)
    }

    /// Whether any parameter of `part` trains.
    pub(crate) fn part_trains(&self, part: BackbonePart) -> bool {
        use BackbonePart::{Block, Embed, Norm};
        match (self, part) {
            (Backbone::Dinov3(m), Embed) => trains(&m.embeddings),
            (Backbone::Dinov3(m), Block(i)) => trains(&m.model.layer[i]),
            (Backbone::Dinov3(m), Norm) => trains(&m.norm),
            (Backbone::Vit(m), Embed) => trains(&m.embeddings),
            (Backbone::Vit(m), Block(i)) => trains(&m.layers[i]),
            (Backbone::Vit(m), Norm) => trains(&m.layernorm),
            (Backbone::Dinov2(m), Embed) => trains(&m.embeddings),
            (Backbone::Dinov2(m), Block(i)) => trains(&m.encoder.layer[i]),
            (Backbone::Dinov2(m), Norm) => trains(&m.layernorm),
        }
    }

    /// The family's model as a [`TokenStack`]: what every forward goes through.
    pub fn stack(&self) -> &dyn TokenStack<B> {
        match self {
            Backbone::Dinov3(m) => m,
            Backbone::Vit(m) => m,
            Backbone::Dinov2(m) => m,
        }
    }

    /// The family, which decides checkpoint and PEFT module names.
    pub fn family(&self) -> Family {
        match self {
            Backbone::Dinov3(_) => Family::Dinov3,
            Backbone::Vit(_) => Family::Vit,
            Backbone::Dinov2(_) => Family::Dinov2,
        }
    }

    /// Number of transformer blocks.
    pub fn num_layers(&self) -> usize {
        self.stack().num_layers()
    }

    /// Block `i`: tokens `[batch, tokens, hidden]` → the same shape.
    pub fn block(&self, i: usize, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 3> {
        self.stack().block(i, x, ctx)
    }

    /// The final norm and the patch grid, after the last block.
    pub fn finish(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> BackboneOutput<B> {
        self.stack().finish(x, ctx)
    }

    /// [`Self::forward`] after [`Self::check_input`].
    pub fn try_forward(&self, pixel_values: Tensor<B, 4>) -> Result<BackboneOutput<B>, VitError> {
        self.check_input(pixel_values.dims())?;
        Ok(self.forward(pixel_values))
    }

    /// Errors unless `dims` is `[batch >= 1, num_channels, H, W]` with H, W positive multiples of
    /// the patch size. Cheap; call it once per input size.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), VitError> {
        check_pixel_dims(dims, self.num_channels(), self.patch_size())
    }

    /// Width of the tokens, `hidden_size`.
    pub fn hidden_size(&self) -> usize {
        self.stack().hidden_size()
    }

    /// Side of the square patches in pixels.
    pub fn patch_size(&self) -> usize {
        self.stack().patch_size()
    }

    /// Input channels the patch convolution expects.
    pub fn num_channels(&self) -> usize {
        self.stack().num_channels()
    }

    /// Takes `frames` RGB frames stacked on the channel axis (`[batch, 3·frames, H, W]`, oldest
    /// first). A 3-channel backbone is *inflated*: its patch kernel repeated over the frames and
    /// divided by `frames`, so a still sequence gives exactly the single-frame output. A
    /// backbone that already takes `3·frames` channels (a multi-frame run's export) is kept.
    pub fn with_input_frames(self, frames: usize) -> Result<Self, VitError> {
        let frames = frames.max(1);
        let have = self.num_channels();
        if have == 3 * frames {
            return Ok(self);
        }
        if have != 3 {
            return Err(VitError::InputFrames {
                frames,
                channels: have,
            });
        }
        Ok(match self {
            Backbone::Dinov3(m) => Backbone::Dinov3(m.inflate_patch_embeddings(frames)),
            Backbone::Vit(m) => Backbone::Vit(m.inflate_patch_embeddings(frames)),
            Backbone::Dinov2(m) => Backbone::Dinov2(m.inflate_patch_embeddings(frames)),
        })
    }

    /// Module path prefix (relative to the backbone) of the patch embedding's parameters.
    pub fn patch_embedding_path(&self) -> &'static str {
        match self {
            Backbone::Dinov3(_) => "embeddings.patch_embeddings",
            Backbone::Vit(_) => "embeddings.patch_embeddings.projection",
            Backbone::Dinov2(_) => "embeddings.patch_embeddings.projection",
        }
    }

    /// Replace every projection through `f(hf_path, proj)`, in [`Self::projection_paths`] order.
    pub fn map_projections<E>(
        self,
        f: &mut impl FnMut(&str, Proj<B>) -> Result<Proj<B>, E>,
    ) -> Result<Self, E> {
        Ok(match self {
            Backbone::Dinov3(m) => Backbone::Dinov3(m.map_projections(f)?),
            Backbone::Vit(m) => Backbone::Vit(m.map_projections(f)?),
            Backbone::Dinov2(m) => Backbone::Dinov2(m.map_projections(f)?),
        })
    }

    /// The projection paths `spec` selects, matching each path by our (transformers 5) name or
    /// by the hub's ([`hf::hub_module_path`]): `query` selects DINOv2's and ViT's `q_proj`, as
    /// PEFT on transformers 4 did. Auto selects every attention and MLP projection.
    pub fn select_targets(&self, spec: &TargetSpec) -> Result<Vec<String>, LoraError> {
        let paths = self.projection_paths();
        let direct = tracknet_lora::select_targets(&paths, spec);
        if matches!(spec, TargetSpec::Auto) {
            return direct;
        }
        let family = self.family();
        let hub: Vec<(String, &String)> = paths
            .iter()
            .filter_map(|p| Some((hf::hub_module_path(family, p)?, p)))
            .collect();
        let hub_paths: Vec<String> = hub.iter().map(|(h, _)| h.clone()).collect();
        // No hub spelling (DINOv3), or nothing matched by it: none selected this way.
        let via_hub = tracknet_lora::select_targets(&hub_paths, spec).unwrap_or_default();
        let by_name = direct.as_ref().cloned().unwrap_or_default();
        let selected: Vec<String> = paths
            .iter()
            .filter(|p| {
                by_name.contains(p) || hub.iter().any(|(h, q)| q == p && via_hub.contains(h))
            })
            .cloned()
            .collect();
        if selected.is_empty() {
            return direct; // the error naming the targets and some paths
        }
        Ok(selected)
    }

    /// Hugging Face module paths (relative to the backbone model) of all projections.
    pub fn projection_paths(&self) -> Vec<String> {
        match self {
            Backbone::Dinov3(m) => m.projection_paths(),
            Backbone::Vit(m) => m.projection_paths(),
            Backbone::Dinov2(m) => m.projection_paths(),
        }
    }
}

/// Whether any parameter of `module` requires a gradient.
pub(crate) fn trains<B: Backend, M: Module<B>>(module: &M) -> bool {
    struct Any(bool);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Any {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            self.0 |= param.val().is_require_grad();
        }
    }
    let mut v = Any(false);
    module.visit(&mut v);
    v.0
}
