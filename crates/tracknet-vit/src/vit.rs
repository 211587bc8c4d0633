//! Classic ViT, numerically as transformers' `ViTModel` without the pooler.
//!
//! Field names follow transformers 5 (`layers.N.attention.q_proj`, `layers.N.mlp.fc1`, ...).
//! Learned position embeddings are resized with PyTorch's bicubic interpolation
//! (`align_corners=False`, A = -0.75), as `interpolate_pos_encoding`, whenever the input patch grid
//! differs from the one the checkpoint was trained on (e.g. 512×288 input, 224-trained weights).

use std::path::Path;

use crate::layers::LayerNorm;
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::VitError;
use crate::layers::params::{
    Init, ParamSource, RandomInit, inflate_conv, layer_norm, linear, patch_conv,
};
pub use crate::layers::pos_embed::bicubic_matrix;
use crate::layers::pos_embed::{Bicubic, resize_position_embeddings};
use crate::layers::{
    BackboneOutput, BlockContext, HiddenAct, TokenStack, attention, drop_path, flatten_patches,
    split_heads,
};
use crate::proj::Proj;

/// `image_size` as an int or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    Square(usize),
    Rect([usize; 2]),
}

impl ImageSize {
    /// `(height, width)`.
    pub fn hw(&self) -> (usize, usize) {
        match *self {
            ImageSize::Square(s) => (s, s),
            ImageSize::Rect([h, w]) => (h, w),
        }
    }
}

/// transformers' `ViTConfig`; absent keys take its defaults (ViT-B/16, 224 px). Dropout
/// probabilities are read but not applied (the project fine-tunes with them at 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub image_size: ImageSize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    /// Not in transformers' ViT; lets a config ask for stochastic depth when fine-tuning.
    pub drop_path_rate: f64,
}

impl Default for VitConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            image_size: ImageSize::Square(224),
            patch_size: 16,
            num_channels: 3,
            qkv_bias: true,
            drop_path_rate: 0.0,
        }
    }
}

impl VitConfig {
    /// Errors on sizes the model cannot be built with; `path` names the config in the error.
    pub fn validate(&self, path: &Path) -> Result<(), VitError> {
        crate::layers::check_common(
            path,
            self.patch_size,
            self.hidden_size,
            self.num_attention_heads,
            self.drop_path_rate,
            &self.hidden_act,
        )?;
        let fail = |message: String| {
            Err(VitError::Config {
                path: path.to_path_buf(),
                message,
            })
        };
        let (h, w) = self.image_size.hw();
        if h < self.patch_size || w < self.patch_size {
            return fail(format!(
                "image_size {h}x{w} is smaller than patch_size {}",
                self.patch_size
            ));
        }
        Ok(())
    }

    /// Patch grid `(rows, cols)` the position embeddings were trained for.
    pub fn trained_grid(&self) -> (usize, usize) {
        let (h, w) = self.image_size.hw();
        (h / self.patch_size, w / self.patch_size)
    }
}

/// Patch convolution (`patch_embeddings.projection`).
#[derive(Module, Debug)]
pub struct VitPatchEmbeddings<B: Backend> {
    /// `[hidden, channels, patch, patch]`, stride `patch`.
    pub projection: Conv2d<B>,
}

/// CLS token, patch convolution and learned position embeddings.
#[derive(Module, Debug)]
pub struct VitEmbeddings<B: Backend> {
    /// `[1, 1, hidden]`.
    pub cls_token: Param<Tensor<B, 3>>,
    pub patch_embeddings: VitPatchEmbeddings<B>,
    /// `[1, 1 + trained_rows * trained_cols, hidden]`.
    pub position_embeddings: Param<Tensor<B, 3>>,
    trained_grid: (usize, usize),
}

impl<B: crate::ModelBackend> VitEmbeddings<B> {
    /// `[batch, channels, H, W]` → `[batch, 1 + patches, hidden]`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let batch = pixel_values.dims()[0];
        let patches = crate::fastconv::conv2d(&self.patch_embeddings.projection, pixel_values);
        let [_, _, gh, gw] = patches.dims();
        let patches = flatten_patches(patches);
        let cls = self.cls_token.val().repeat_dim(0, batch);
        let tokens = Tensor::cat(vec![cls, patches], 1);
        tokens + self.position_embeddings_for(gh, gw)
    }

    /// Position embeddings `[1, 1 + gh * gw, hidden]` for a `gh × gw` patch grid: the trained ones,
    /// or their bicubic resize (the CLS position is kept as is).
    pub fn position_embeddings_for(&self, gh: usize, gw: usize) -> Tensor<B, 3> {
        resize_position_embeddings(
            self.position_embeddings.val(),
            self.trained_grid,
            (gh, gw),
            Bicubic::Plain,
        )
    }
}

/// Self-attention (`query/key/value` + `output.dense` in older checkpoints).
#[derive(Module, Debug)]
pub struct VitAttention<B: Backend> {
    pub q_proj: Proj<B>,
    pub k_proj: Proj<B>,
    pub v_proj: Proj<B>,
    pub o_proj: Proj<B>,
    pub(crate) num_heads: usize,
}

impl<B: crate::ModelBackend> VitAttention<B> {
    /// Each projection replaced by `f(prefix.q_proj, …)` … `f(prefix.o_proj, …)`.
    pub(crate) fn map_projections<E>(
        self,
        prefix: &str,
        f: &mut impl FnMut(&str, Proj<B>) -> Result<Proj<B>, E>,
    ) -> Result<Self, E> {
        Ok(Self {
            q_proj: f(&format!("{prefix}.q_proj"), self.q_proj)?,
            k_proj: f(&format!("{prefix}.k_proj"), self.k_proj)?,
            v_proj: f(&format!("{prefix}.v_proj"), self.v_proj)?,
            o_proj: f(&format!("{prefix}.o_proj"), self.o_proj)?,
            num_heads: self.num_heads,
        })
    }

    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = split_heads(self.q_proj.forward(x.clone()), self.num_heads);
        let k = split_heads(self.k_proj.forward(x.clone()), self.num_heads);
        let v = split_heads(self.v_proj.forward(x), self.num_heads);
        self.o_proj.forward(attention(q, k, v))
    }
}

/// `fc2(act(fc1(x)))` (`intermediate.dense` / `output.dense` in older checkpoints).
#[derive(Module, Debug)]
pub struct VitMlp<B: Backend> {
    pub fc1: Proj<B>,
    pub fc2: Proj<B>,
    act: HiddenAct,
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct VitLayer<B: Backend> {
    pub layernorm_before: LayerNorm<B>,
    pub attention: VitAttention<B>,
    pub layernorm_after: LayerNorm<B>,
    pub mlp: VitMlp<B>,
    drop_path_rate: f64,
}

impl<B: crate::ModelBackend> VitLayer<B> {
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self
            .attention
            .forward(self.layernorm_before.forward(x.clone()));
        let x = drop_path(h, self.drop_path_rate) + x;
        let h = self.layernorm_after.forward(x.clone());
        let h = self
            .mlp
            .fc2
            .forward(self.mlp.act.forward(self.mlp.fc1.forward(h)));
        drop_path(h, self.drop_path_rate) + x
    }
}

/// ViT without pooler: embeddings → blocks → final `layernorm`.
#[derive(Module, Debug)]
pub struct VitModel<B: Backend> {
    pub embeddings: VitEmbeddings<B>,
    pub layers: Vec<VitLayer<B>>,
    pub layernorm: LayerNorm<B>,
    hidden_size: usize,
    patch_size: usize,
    num_channels: usize,
}

impl<B: crate::ModelBackend> VitModel<B> {
    /// Random init as transformers (trunc-normal `initializer_range`, zero biases).
    pub fn random(config: &VitConfig, device: &B::Device) -> Result<Self, VitError> {
        config.validate(Path::new("<in-memory config>"))?;
        Self::build(
            config,
            &mut RandomInit {
                device: device.clone(),
            },
        )
    }

    pub(crate) fn build(
        config: &VitConfig,
        src: &mut impl ParamSource<B>,
    ) -> Result<Self, VitError> {
        let act = HiddenAct::parse(&config.hidden_act).ok_or_else(|| VitError::Config {
            path: "config.json".into(),
            message: format!("hidden_act `{}` is not supported", config.hidden_act),
        })?;
        let c = config.hidden_size;
        let n = config.intermediate_size;
        let std = config.initializer_range;
        let eps = config.layer_norm_eps;
        let bias = config.qkv_bias;
        let (th, tw) = config.trained_grid();
        let embeddings = VitEmbeddings {
            cls_token: Param::from_tensor(src.tensor(
                "embeddings.cls_token",
                [1, 1, c],
                Init::TruncNormal(std),
            )),
            patch_embeddings: VitPatchEmbeddings {
                projection: patch_conv(
                    src,
                    "embeddings.patch_embeddings.projection",
                    config.num_channels,
                    c,
                    config.patch_size,
                    std,
                ),
            },
            position_embeddings: Param::from_tensor(src.tensor(
                "embeddings.position_embeddings",
                [1, 1 + th * tw, c],
                Init::TruncNormal(std),
            )),
            trained_grid: (th, tw),
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("layers.{i}");
            layers.push(VitLayer {
                layernorm_before: layer_norm(src, &format!("{p}.layernorm_before"), c, eps),
                attention: VitAttention {
                    q_proj: linear(src, &format!("{p}.attention.q_proj"), c, c, bias, std),
                    k_proj: linear(src, &format!("{p}.attention.k_proj"), c, c, bias, std),
                    v_proj: linear(src, &format!("{p}.attention.v_proj"), c, c, bias, std),
                    o_proj: linear(src, &format!("{p}.attention.o_proj"), c, c, true, std),
                    num_heads: config.num_attention_heads,
                },
                layernorm_after: layer_norm(src, &format!("{p}.layernorm_after"), c, eps),
                mlp: VitMlp {
                    fc1: linear(src, &format!("{p}.mlp.fc1"), c, n, true, std),
                    fc2: linear(src, &format!("{p}.mlp.fc2"), n, c, true, std),
                    act,
                },
                drop_path_rate: config.drop_path_rate,
            });
        }
        Ok(Self {
            embeddings,
            layers,
            layernorm: layer_norm(src, "layernorm", c, eps),
            hidden_size: c,
            patch_size: config.patch_size,
            num_channels: config.num_channels,
        })
    }

    /// `frames` stacked frames in: see [`crate::Backbone::with_input_frames`].
    pub(crate) fn inflate_patch_embeddings(mut self, frames: usize) -> Self {
        self.embeddings.patch_embeddings.projection =
            inflate_conv(self.embeddings.patch_embeddings.projection, frames);
        self.num_channels *= frames.max(1);
        self
    }

    /// Replace every projection via `f(hf_path, proj)`; order as [`Self::projection_paths`].
    pub fn map_projections<E>(
        mut self,
        f: &mut impl FnMut(&str, Proj<B>) -> Result<Proj<B>, E>,
    ) -> Result<Self, E> {
        let layers = std::mem::take(&mut self.layers);
        for (i, mut l) in layers.into_iter().enumerate() {
            let p = format!("layers.{i}");
            l.attention = l.attention.map_projections(&format!("{p}.attention"), f)?;
            l.mlp = VitMlp {
                fc1: f(&format!("{p}.mlp.fc1"), l.mlp.fc1)?,
                fc2: f(&format!("{p}.mlp.fc2"), l.mlp.fc2)?,
                act: l.mlp.act,
            };
            self.layers.push(l);
        }
        Ok(self)
    }

    /// HF paths of all projections: per layer q, k, v, o, fc1, fc2.
    pub fn projection_paths(&self) -> Vec<String> {
        (0..self.layers.len())
            .flat_map(|i| {
                [
                    "attention.q_proj",
                    "attention.k_proj",
                    "attention.v_proj",
                    "attention.o_proj",
                    "mlp.fc1",
                    "mlp.fc2",
                ]
                .map(|name| format!("layers.{i}.{name}"))
            })
            .collect()
    }
}

impl<B: crate::ModelBackend> TokenStack<B> for VitModel<B> {
    /// What every block of one forward shares: the patch grid (ViT has no RoPE).
    fn block_context(&self, dims: [usize; 4], _device: &B::Device) -> BlockContext<B> {
        let [_, _, h, w] = dims;
        BlockContext {
            grid: [h / self.patch_size, w / self.patch_size],
            rope: None,
        }
    }

    /// `pixel_values [batch, channels, H, W]` → tokens `[batch, 1 + N, hidden]` (position
    /// embeddings added).
    fn embed(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        self.embeddings.forward(pixel_values)
    }

    /// Number of transformer blocks.
    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Block `i`: tokens `[batch, tokens, hidden]` → the same shape.
    fn block(&self, i: usize, x: Tensor<B, 3>, _ctx: &BlockContext<B>) -> Tensor<B, 3> {
        self.layers[i].forward(x)
    }

    /// The final `layernorm` and the patch grid `[batch, H/p, W/p, hidden]`.
    fn finish(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> BackboneOutput<B> {
        BackboneOutput::from_tokens(self.layernorm.forward(x), 1, ctx.grid)
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn patch_size(&self) -> usize {
        self.patch_size
    }

    fn num_channels(&self) -> usize {
        self.num_channels
    }
}
