//! The backbone seen by the rest of the project: DINOv3 or classic ViT, random or pretrained.
//!
//! Both produce the full token sequence `[batch, tokens, hidden]` and the patch tokens as a grid
//! `[batch, H/patch, W/patch, hidden]` for the decoder.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation;

use crate::dinov3::{Dinov3Config, Dinov3Model};
use crate::error::VitError;
use crate::hf;
use crate::proj::Proj;
use crate::vit::{VitConfig, VitModel};

pub(crate) mod params;

/// Output of a backbone forward pass.
#[derive(Debug, Clone)]
pub struct BackboneOutput<B: Backend> {
    /// Final-norm output, `[batch, 1 + registers + patches, hidden]` (CLS first, then register
    /// tokens, then patch tokens in row-major order), exactly transformers' `last_hidden_state`.
    pub last_hidden_state: Tensor<B, 3>,
    /// Patch tokens only, `[batch, H/patch, W/patch, hidden]`.
    pub patch_grid: Tensor<B, 4>,
}

/// The architecture of a backbone, read from a Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum BackboneArch {
    /// `model_type: "dinov3_vit"`.
    Dinov3(Dinov3Config),
    /// `model_type: "vit"`.
    Vit(VitConfig),
}

impl BackboneArch {
    /// Parse a transformers `config.json`, dispatching on `model_type`. Absent keys take
    /// transformers' defaults; unknown keys are ignored (HF configs carry many unrelated ones).
    pub fn from_config_file(path: &Path) -> Result<Self, VitError> {
        let text = std::fs::read_to_string(path).map_err(|source| VitError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_config_str(&text, path)
    }

    /// As [`Self::from_config_file`], from the JSON text; `path` is only used in errors.
    pub fn from_config_str(text: &str, path: &Path) -> Result<Self, VitError> {
        let json_err = |e: serde_json::Error| VitError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let arch = match model_type.to_ascii_lowercase().as_str() {
            "dinov3_vit" | "dinov3vit" => {
                BackboneArch::Dinov3(serde_json::from_value(value).map_err(json_err)?)
            }
            "vit" => BackboneArch::Vit(serde_json::from_value(value).map_err(json_err)?),
            other => {
                return Err(VitError::Config {
                    path: path.to_path_buf(),
                    message: format!(
                        "model_type `{other}` is not supported; expected `dinov3_vit` or `vit`"
                    ),
                });
            }
        };
        arch.validate(path)?;
        Ok(arch)
    }

    /// Checks the sizes this crate relies on (heads divide the hidden size, ...).
    pub fn validate(&self, path: &Path) -> Result<(), VitError> {
        match self {
            BackboneArch::Dinov3(c) => c.validate(path),
            BackboneArch::Vit(c) => c.validate(path),
        }
    }
}

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

/// A DINOv3 or classic ViT backbone.
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    Dinov3(Dinov3Model<B>),
    Vit(VitModel<B>),
}

impl<B: tracknet_quant::QuantBackend> Backbone<B> {
    /// Randomly initialised backbone (transformers' init: trunc-normal weights, zero biases).
    pub fn random(arch: &BackboneArch, device: &B::Device) -> Result<Self, VitError> {
        arch.validate(Path::new("<in-memory config>"))?;
        Ok(match arch {
            BackboneArch::Dinov3(c) => Backbone::Dinov3(Dinov3Model::random(c, device)?),
            BackboneArch::Vit(c) => Backbone::Vit(VitModel::random(c, device)?),
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
        match self {
            Backbone::Dinov3(m) => m.forward(pixel_values),
            Backbone::Vit(m) => m.forward(pixel_values),
        }
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
        match self {
            Backbone::Dinov3(m) => m.hidden_size(),
            Backbone::Vit(m) => m.hidden_size(),
        }
    }

    /// Side of the square patches in pixels.
    pub fn patch_size(&self) -> usize {
        match self {
            Backbone::Dinov3(m) => m.patch_size(),
            Backbone::Vit(m) => m.patch_size(),
        }
    }

    /// Input channels the patch convolution expects.
    pub fn num_channels(&self) -> usize {
        match self {
            Backbone::Dinov3(m) => m.num_channels(),
            Backbone::Vit(m) => m.num_channels(),
        }
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
        })
    }

    /// Module path prefix (relative to the backbone) of the patch embedding's parameters.
    pub fn patch_embedding_path(&self) -> &'static str {
        match self {
            Backbone::Dinov3(_) => "embeddings.patch_embeddings",
            Backbone::Vit(_) => "embeddings.patch_embeddings.projection",
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
        })
    }

    /// Hugging Face module paths (relative to the backbone model) of all projections.
    pub fn projection_paths(&self) -> Vec<String> {
        match self {
            Backbone::Dinov3(m) => m.projection_paths(),
            Backbone::Vit(m) => m.projection_paths(),
        }
    }
}

pub(crate) fn check_pixel_dims(
    dims: [usize; 4],
    channels: usize,
    patch: usize,
) -> Result<(), VitError> {
    let [b, c, h, w] = dims;
    let fail = |message: String| {
        Err(VitError::Input {
            shape: dims.to_vec(),
            message,
        })
    };
    if b == 0 {
        return fail("empty batch".into());
    }
    if c != channels {
        return fail(format!("expected {channels} channels, found {c}"));
    }
    if h == 0 || w == 0 || !h.is_multiple_of(patch) || !w.is_multiple_of(patch) {
        return fail(format!(
            "height and width must be positive multiples of the patch size {patch}"
        ));
    }
    Ok(())
}

/// Activation named by `hidden_act` in a transformers config (`ACT2FN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: tanh approximation.
    GeluTanh,
    /// `silu` / `swish`.
    Silu,
    /// `relu`.
    Relu,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
}

impl HiddenAct {
    /// Parse a transformers activation name; `None` when unsupported.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => HiddenAct::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => HiddenAct::GeluTanh,
            "silu" | "swish" => HiddenAct::Silu,
            "relu" => HiddenAct::Relu,
            "quick_gelu" => HiddenAct::QuickGelu,
            _ => return None,
        })
    }

    pub fn forward<const D: usize, B: Backend>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            HiddenAct::Gelu => activation::gelu(x),
            HiddenAct::GeluTanh => activation::gelu_approximate(x),
            HiddenAct::Silu => activation::silu(x),
            HiddenAct::Relu => activation::relu(x),
            HiddenAct::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
        }
    }
}

/// Softmax attention over heads. q, k, v: `[batch, heads, tokens, head_dim]` →
/// `[batch, tokens, heads * head_dim]`.
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 3> {
    let [b, h, t, d] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5);
    let probs = activation::softmax(scores, 3);
    probs.matmul(v).swap_dims(1, 2).reshape([b, t, h * d])
}

/// `[batch, tokens, hidden]` → `[batch, heads, tokens, hidden / heads]`.
pub(crate) fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, c] = x.dims();
    x.reshape([b, t, heads, c / heads]).swap_dims(1, 2)
}

/// Stochastic depth (per-sample residual-branch drop), active only when autodiff is on, like
/// Burn's `Dropout`. `x`: `[batch, tokens, hidden]`.
pub(crate) fn drop_path<B: Backend>(x: Tensor<B, 3>, prob: f64) -> Tensor<B, 3> {
    if prob <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let [b, _, _] = x.dims();
    let keep = 1.0 - prob;
    let mask: Tensor<B, 3> = Tensor::random([b, 1, 1], Distribution::Bernoulli(keep), &x.device());
    x * mask / keep
}

/// Patch convolution output `[batch, hidden, gh, gw]` → tokens `[batch, gh * gw, hidden]`
/// (row-major patches).
pub(crate) fn flatten_patches<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, c, gh, gw] = x.dims();
    x.reshape([b, c, gh * gw]).swap_dims(1, 2)
}

/// Drop the `prefix` CLS/register tokens and lay the patch tokens out as
/// `[batch, gh, gw, hidden]`.
pub(crate) fn patch_grid<B: Backend>(
    tokens: Tensor<B, 3>,
    prefix: usize,
    gh: usize,
    gw: usize,
) -> Tensor<B, 4> {
    let [b, t, c] = tokens.dims();
    tokens
        .slice([0..b, prefix..t, 0..c])
        .reshape([b, gh, gw, c])
}
