//! DINOv3 ViT, numerically as transformers' `DINOv3ViTModel`.
//!
//! Field names follow the Hugging Face module tree (`embeddings`, `model.layer.N.attention.q_proj`,
//! ...) so that Burn module paths equal the transformers 5 state-dict names.

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
use crate::layers::{
    BackboneOutput, BlockContext, HiddenAct, TokenStack, attention, drop_path, flatten_patches,
    layer_scale, split_heads,
};
use crate::proj::Proj;

mod rope;

pub use rope::Dinov3Rope;

/// transformers' `DINOv3ViTConfig`; absent keys take its defaults (ViT-S/16 without registers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dinov3Config {
    pub patch_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Activation of the MLP, also of the gated MLP (`act(gate) * up`).
    pub hidden_act: String,
    pub attention_dropout: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub rope_theta: f64,
    pub image_size: usize,
    pub num_channels: usize,
    pub query_bias: bool,
    pub key_bias: bool,
    pub value_bias: bool,
    pub proj_bias: bool,
    pub mlp_bias: bool,
    pub layerscale_value: f64,
    pub drop_path_rate: f64,
    /// `use_swiglu_ffn` in older transformers releases.
    #[serde(alias = "use_swiglu_ffn")]
    pub use_gated_mlp: bool,
    pub num_register_tokens: usize,
    /// Training-only RoPE coordinate shift in `[-shift, shift]`.
    pub pos_embed_shift: Option<f64>,
    /// Training-only RoPE coordinate jitter, log-uniform in `[1/jitter, jitter]` per axis.
    pub pos_embed_jitter: Option<f64>,
    /// Training-only RoPE coordinate rescale, log-uniform in `[1/rescale, rescale]`.
    pub pos_embed_rescale: Option<f64>,
}

impl Default for Dinov3Config {
    fn default() -> Self {
        Self {
            patch_size: 16,
            hidden_size: 384,
            intermediate_size: 1536,
            num_hidden_layers: 12,
            num_attention_heads: 6,
            hidden_act: "gelu".into(),
            attention_dropout: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-5,
            rope_theta: 100.0,
            image_size: 224,
            num_channels: 3,
            query_bias: true,
            key_bias: false,
            value_bias: true,
            proj_bias: true,
            mlp_bias: true,
            layerscale_value: 1.0,
            drop_path_rate: 0.0,
            use_gated_mlp: false,
            num_register_tokens: 0,
            pos_embed_shift: None,
            pos_embed_jitter: None,
            pos_embed_rescale: Some(2.0),
        }
    }
}

impl Dinov3Config {
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
        if !(self.hidden_size / self.num_attention_heads).is_multiple_of(4) {
            return fail(format!(
                "head dim {} must be a multiple of 4 for the 2-D RoPE",
                self.hidden_size / self.num_attention_heads
            ));
        }
        for (name, v) in [
            ("pos_embed_jitter", self.pos_embed_jitter),
            ("pos_embed_rescale", self.pos_embed_rescale),
        ] {
            if v.is_some_and(|v| v.is_nan() || v <= 0.0) {
                return fail(format!(
                    "{name} must be positive (a log-uniform range [1/x, x])"
                ));
            }
        }
        Ok(())
    }

    fn act(&self) -> Result<HiddenAct, VitError> {
        HiddenAct::parse(&self.hidden_act).ok_or_else(|| VitError::Config {
            path: "config.json".into(),
            message: format!("hidden_act `{}` is not supported", self.hidden_act),
        })
    }
}

/// CLS token, register tokens and the patch convolution.
#[derive(Module, Debug)]
pub struct Dinov3Embeddings<B: Backend> {
    /// `[1, 1, hidden]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, registers, hidden]`; `None` when the config has no register tokens.
    pub register_tokens: Option<Param<Tensor<B, 3>>>,
    /// `[hidden, channels, patch, patch]`, stride `patch`.
    pub patch_embeddings: Conv2d<B>,
}

impl<B: crate::ModelBackend> Dinov3Embeddings<B> {
    /// `[batch, channels, H, W]` → `[batch, 1 + registers + patches, hidden]`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let batch = pixel_values.dims()[0];
        let patches = flatten_patches(crate::fastconv::conv2d(
            &self.patch_embeddings,
            pixel_values,
        ));
        let mut tokens = vec![self.cls_token.val().repeat_dim(0, batch)];
        if let Some(registers) = &self.register_tokens {
            tokens.push(registers.val().repeat_dim(0, batch));
        }
        tokens.push(patches);
        Tensor::cat(tokens, 1)
    }
}

/// Multi-head self-attention with RoPE on the patch tokens.
#[derive(Module, Debug)]
pub struct Dinov3Attention<B: Backend> {
    pub q_proj: Proj<B>,
    pub k_proj: Proj<B>,
    pub v_proj: Proj<B>,
    pub o_proj: Proj<B>,
    num_heads: usize,
}

impl<B: crate::ModelBackend> Dinov3Attention<B> {
    /// `x [batch, tokens, hidden]`, `cos`/`sin` `[patches, head_dim]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 3> {
        let q = split_heads(self.q_proj.forward(x.clone()), self.num_heads);
        let k = split_heads(self.k_proj.forward(x.clone()), self.num_heads);
        let v = split_heads(self.v_proj.forward(x), self.num_heads);
        let q = rope::apply(q, cos.clone(), sin.clone());
        let k = rope::apply(k, cos, sin);
        self.o_proj.forward(attention(q, k, v))
    }
}

/// Per-channel residual-branch scale (shared with DINOv2).
pub type Dinov3LayerScale<B> = crate::layers::LayerScale<B>;

/// Feed-forward block: `down(act(up(x)))`, or gated `down(act(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Dinov3Mlp<B: Backend> {
    pub up_proj: Proj<B>,
    pub down_proj: Proj<B>,
    /// Present for the gated MLP (`use_gated_mlp`).
    pub gate_proj: Option<Proj<B>>,
    act: HiddenAct,
}

impl<B: crate::ModelBackend> Dinov3Mlp<B> {
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = match &self.gate_proj {
            Some(gate) => self.act.forward(gate.forward(x.clone())) * self.up_proj.forward(x),
            None => self.act.forward(self.up_proj.forward(x)),
        };
        self.down_proj.forward(hidden)
    }
}

/// Pre-norm transformer block with LayerScale.
#[derive(Module, Debug)]
pub struct Dinov3Layer<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attention: Dinov3Attention<B>,
    pub layer_scale1: Dinov3LayerScale<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Dinov3Mlp<B>,
    pub layer_scale2: Dinov3LayerScale<B>,
    drop_path_rate: f64,
}

impl<B: crate::ModelBackend> Dinov3Layer<B> {
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 3> {
        let h = self
            .attention
            .forward(self.norm1.forward(x.clone()), cos, sin);
        let h = self.layer_scale1.forward(h);
        let x = drop_path(h, self.drop_path_rate) + x;

        let h = self.mlp.forward(self.norm2.forward(x.clone()));
        let h = self.layer_scale2.forward(h);
        drop_path(h, self.drop_path_rate) + x
    }
}

/// The stack of blocks (`model.layer` in transformers 5).
#[derive(Module, Debug)]
pub struct Dinov3Encoder<B: Backend> {
    pub layer: Vec<Dinov3Layer<B>>,
}

/// DINOv3 ViT without pooling: embeddings → blocks with 2-D RoPE → final LayerNorm.
#[derive(Module, Debug)]
pub struct Dinov3Model<B: Backend> {
    pub embeddings: Dinov3Embeddings<B>,
    pub model: Dinov3Encoder<B>,
    pub norm: LayerNorm<B>,
    rope: Dinov3Rope,
    hidden_size: usize,
    patch_size: usize,
    num_channels: usize,
    num_register_tokens: usize,
}

impl<B: crate::ModelBackend> Dinov3Model<B> {
    /// Random init as transformers (trunc-normal `initializer_range`, LayerScale
    /// `layerscale_value`).
    pub fn random(config: &Dinov3Config, device: &B::Device) -> Result<Self, VitError> {
        config.validate(Path::new("<in-memory config>"))?;
        Self::build(
            config,
            &mut RandomInit {
                device: device.clone(),
            },
        )
    }

    pub(crate) fn build(
        config: &Dinov3Config,
        src: &mut impl ParamSource<B>,
    ) -> Result<Self, VitError> {
        let act = config.act()?;
        let c = config.hidden_size;
        let std = config.initializer_range;
        let eps = config.layer_norm_eps;
        let embeddings = Dinov3Embeddings {
            cls_token: Param::from_tensor(src.tensor(
                "embeddings.cls_token",
                [1, 1, c],
                Init::TruncNormal(std),
            )),
            register_tokens: (config.num_register_tokens > 0).then(|| {
                Param::from_tensor(src.tensor(
                    "embeddings.register_tokens",
                    [1, config.num_register_tokens, c],
                    Init::TruncNormal(std),
                ))
            }),
            patch_embeddings: patch_conv(
                src,
                "embeddings.patch_embeddings",
                config.num_channels,
                c,
                config.patch_size,
                std,
            ),
        };
        let mut layer = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layer.{i}");
            let n = config.intermediate_size;
            let bias = config.mlp_bias;
            layer.push(Dinov3Layer {
                norm1: layer_norm(src, &format!("{p}.norm1"), c, eps),
                attention: Dinov3Attention {
                    q_proj: linear(
                        src,
                        &format!("{p}.attention.q_proj"),
                        c,
                        c,
                        config.query_bias,
                        std,
                    ),
                    k_proj: linear(
                        src,
                        &format!("{p}.attention.k_proj"),
                        c,
                        c,
                        config.key_bias,
                        std,
                    ),
                    v_proj: linear(
                        src,
                        &format!("{p}.attention.v_proj"),
                        c,
                        c,
                        config.value_bias,
                        std,
                    ),
                    o_proj: linear(
                        src,
                        &format!("{p}.attention.o_proj"),
                        c,
                        c,
                        config.proj_bias,
                        std,
                    ),
                    num_heads: config.num_attention_heads,
                },
                layer_scale1: layer_scale(
                    src,
                    &format!("{p}.layer_scale1"),
                    c,
                    config.layerscale_value,
                ),
                norm2: layer_norm(src, &format!("{p}.norm2"), c, eps),
                mlp: Dinov3Mlp {
                    gate_proj: config
                        .use_gated_mlp
                        .then(|| linear(src, &format!("{p}.mlp.gate_proj"), c, n, bias, std)),
                    up_proj: linear(src, &format!("{p}.mlp.up_proj"), c, n, bias, std),
                    down_proj: linear(src, &format!("{p}.mlp.down_proj"), n, c, bias, std),
                    act,
                },
                layer_scale2: layer_scale(
                    src,
                    &format!("{p}.layer_scale2"),
                    c,
                    config.layerscale_value,
                ),
                drop_path_rate: config.drop_path_rate,
            });
        }
        Ok(Self {
            embeddings,
            model: Dinov3Encoder { layer },
            norm: layer_norm(src, "norm", c, eps),
            rope: Dinov3Rope::new(config),
            hidden_size: c,
            patch_size: config.patch_size,
            num_channels: config.num_channels,
            num_register_tokens: config.num_register_tokens,
        })
    }

    /// The model with its training-time RoPE coordinate augmentation off
    /// (`model.backbone.rope_augmentation: false`).
    pub fn without_rope_augmentation(mut self) -> Self {
        self.rope = self.rope.without_augmentation();
        self
    }

    /// Whether training perturbs the RoPE patch coordinates.
    pub fn rope_augments(&self) -> bool {
        self.rope.augments()
    }

    /// `frames` stacked frames in: see [`crate::Backbone::with_input_frames`].
    pub(crate) fn inflate_patch_embeddings(mut self, frames: usize) -> Self {
        self.embeddings.patch_embeddings = inflate_conv(self.embeddings.patch_embeddings, frames);
        self.num_channels *= frames.max(1);
        self
    }

    /// Replace every projection via `f(hf_path, proj)`; order as [`Self::projection_paths`].
    pub fn map_projections<E>(
        mut self,
        f: &mut impl FnMut(&str, Proj<B>) -> Result<Proj<B>, E>,
    ) -> Result<Self, E> {
        let layers = std::mem::take(&mut self.model.layer);
        for (i, mut l) in layers.into_iter().enumerate() {
            let p = format!("model.layer.{i}");
            let a = l.attention;
            l.attention = Dinov3Attention {
                q_proj: f(&format!("{p}.attention.q_proj"), a.q_proj)?,
                k_proj: f(&format!("{p}.attention.k_proj"), a.k_proj)?,
                v_proj: f(&format!("{p}.attention.v_proj"), a.v_proj)?,
                o_proj: f(&format!("{p}.attention.o_proj"), a.o_proj)?,
                num_heads: a.num_heads,
            };
            let m = l.mlp;
            l.mlp = Dinov3Mlp {
                gate_proj: match m.gate_proj {
                    Some(g) => Some(f(&format!("{p}.mlp.gate_proj"), g)?),
                    None => None,
                },
                up_proj: f(&format!("{p}.mlp.up_proj"), m.up_proj)?,
                down_proj: f(&format!("{p}.mlp.down_proj"), m.down_proj)?,
                act: m.act,
            };
            self.model.layer.push(l);
        }
        Ok(self)
    }

    /// HF paths of all projections: per layer q, k, v, o, then [gate,] up, down.
    pub fn projection_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        for (i, l) in self.model.layer.iter().enumerate() {
            let p = format!("model.layer.{i}");
            for name in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                paths.push(format!("{p}.attention.{name}"));
            }
            if l.mlp.gate_proj.is_some() {
                paths.push(format!("{p}.mlp.gate_proj"));
            }
            paths.push(format!("{p}.mlp.up_proj"));
            paths.push(format!("{p}.mlp.down_proj"));
        }
        paths
    }
}

impl<B: crate::ModelBackend> TokenStack<B> for Dinov3Model<B> {
    /// What every block of one forward shares: the patch grid and the RoPE tables, drawn once
    /// per forward (the coordinate augmentation is random when autodiff is on).
    fn block_context(&self, dims: [usize; 4], device: &B::Device) -> BlockContext<B> {
        let [_, _, h, w] = dims;
        let (gh, gw) = (h / self.patch_size, w / self.patch_size);
        let rope = self
            .rope
            .cos_sin::<B>(gh, gw, B::ad_enabled(device), device);
        BlockContext {
            grid: [gh, gw],
            rope: Some(rope),
        }
    }

    /// `pixel_values [batch, channels, H, W]` → tokens `[batch, 1 + R + N, hidden]`.
    fn embed(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        self.embeddings.forward(pixel_values)
    }

    /// Number of transformer blocks.
    fn num_layers(&self) -> usize {
        self.model.layer.len()
    }

    /// Block `i`: tokens `[batch, tokens, hidden]` → the same shape.
    fn block(&self, i: usize, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 3> {
        let (cos, sin) = ctx
            .rope
            .clone()
            .expect("DINOv3 block context carries RoPE tables");
        self.model.layer[i].forward(x, cos, sin)
    }

    /// The final LayerNorm and the patch grid `[batch, H/p, W/p, hidden]`.
    fn finish(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> BackboneOutput<B> {
        BackboneOutput::from_tokens(self.norm.forward(x), 1 + self.num_register_tokens, ctx.grid)
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
