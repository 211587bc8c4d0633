//! DINOv2, with or without register tokens, numerically as transformers' `Dinov2Model` and
//! `Dinov2WithRegistersModel` (no pooler).
//!
//! Field names follow transformers 5's module tree (`encoder.layer.N.attention.q_proj`,
//! `encoder.layer.N.mlp.fc1` or `…mlp.gate_proj/up_proj/down_proj`), so Burn module paths are the
//! names transformers 5 and PEFT use in memory; the hub's names (`attention.attention.query`,
//! `attention.output.dense`, the fused SwiGLU `mlp.weights_in`) are mapped on load
//! ([`crate::hf::canonical_key`]). Learned position embeddings are resized to the input's patch
//! grid as `interpolate_pos_encoding` does: plain bicubic for DINOv2, antialiased bicubic for
//! DINOv2 with registers.

use std::path::Path;

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::VitError;
use crate::layers::params::{
    Init, ParamSource, RandomInit, inflate_conv, layer_norm, linear, patch_conv,
};
use crate::layers::pos_embed::{Bicubic, resize_position_embeddings};
use crate::layers::{
    BackboneOutput, BlockContext, HiddenAct, LayerNorm, LayerScale, TokenStack, drop_path,
    flatten_patches, layer_scale,
};
use crate::proj::Proj;
use crate::vit::{ImageSize, VitAttention};

/// transformers' `Dinov2Config` / `Dinov2WithRegistersConfig`; absent keys take their defaults
/// (ViT-B/14). Dropout probabilities are read but not applied (fine-tuning runs with them at 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dinov2Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// MLP width ÷ `hidden_size` (DINOv2 has no `intermediate_size`).
    pub mlp_ratio: f64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    /// The pretraining size: the position embeddings are a `image_size / patch_size` grid.
    pub image_size: ImageSize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub qkv_bias: bool,
    pub layerscale_value: f64,
    pub drop_path_rate: f64,
    /// The SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`; the giant variants).
    pub use_swiglu_ffn: bool,
    /// Whether the checkpoint holds `embeddings.mask_token` (masked-image pre-training only;
    /// kept in exports so transformers finds it).
    pub use_mask_token: bool,
    /// Register tokens (`Dinov2WithRegistersModel`; 0 for `Dinov2Model`).
    pub num_register_tokens: usize,
    /// Set from `model_type`: `dinov2_with_registers` (antialiased position resize).
    #[serde(skip)]
    pub with_registers: bool,
}

impl Default for Dinov2Config {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            mlp_ratio: 4.0,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-6,
            image_size: ImageSize::Square(224),
            patch_size: 14,
            num_channels: 3,
            qkv_bias: true,
            layerscale_value: 1.0,
            drop_path_rate: 0.0,
            use_swiglu_ffn: false,
            use_mask_token: true,
            num_register_tokens: 0,
            with_registers: false,
        }
    }
}

impl Dinov2Config {
    /// The config of a `config.json` whose `model_type` is `dinov2` (`registers: false`) or
    /// `dinov2_with_registers` (`registers: true`, 4 register tokens unless it says otherwise).
    pub fn from_json(value: serde_json::Value, registers: bool) -> serde_json::Result<Self> {
        let has_registers = value.get("num_register_tokens").is_some();
        let mut c: Self = serde_json::from_value(value)?;
        c.with_registers = registers;
        if registers {
            c.use_mask_token = true;
            if !has_registers {
                c.num_register_tokens = 4;
            }
        } else {
            c.num_register_tokens = 0;
        }
        Ok(c)
    }

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
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_width() == 0 {
            return fail(format!("mlp_ratio {} must be positive", self.mlp_ratio));
        }
        let (th, tw) = self.trained_grid();
        if th == 0 || th != tw {
            let (h, w) = self.image_size.hw();
            return fail(format!(
                "image_size {h}x{w} with patch_size {} is not a square grid of patches; \
                 transformers' DINOv2 reads its position embeddings as one",
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

    /// The MLP's hidden width: `int(hidden_size * mlp_ratio)`, and for SwiGLU two thirds of
    /// it rounded up to a multiple of 8, as transformers computes them.
    pub fn mlp_width(&self) -> usize {
        let width = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        if self.use_swiglu_ffn {
            ((width as f64 * 2.0 / 3.0) as usize).div_ceil(8) * 8
        } else {
            width
        }
    }
}

/// Patch convolution (`patch_embeddings.projection`).
#[derive(Module, Debug)]
pub struct Dinov2PatchEmbeddings<B: Backend> {
    /// `[hidden, channels, patch, patch]`, stride `patch`.
    pub projection: Conv2d<B>,
}

/// CLS token, patch convolution, learned position embeddings and, with registers, the register
/// tokens (inserted after the position embeddings are added, as transformers does).
#[derive(Module, Debug)]
pub struct Dinov2Embeddings<B: Backend> {
    /// `[1, 1, hidden]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// `[1, registers, hidden]`; `None` without registers.
    pub register_tokens: Option<Param<Tensor<B, 3>>>,
    pub patch_embeddings: Dinov2PatchEmbeddings<B>,
    /// `[1, 1 + trained_rows * trained_cols, hidden]`.
    pub position_embeddings: Param<Tensor<B, 3>>,
    trained_grid: (usize, usize),
    /// Antialiased resize (with registers) or plain.
    antialias: bool,
}

impl<B: crate::ModelBackend> Dinov2Embeddings<B> {
    /// `[batch, channels, H, W]` → `[batch, 1 + registers + patches, hidden]`.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let batch = pixel_values.dims()[0];
        let patches = crate::fastconv::conv2d(&self.patch_embeddings.projection, pixel_values);
        let [_, _, gh, gw] = patches.dims();
        let patches = flatten_patches(patches);
        let cls = self.cls_token.val().repeat_dim(0, batch);
        let tokens = Tensor::cat(vec![cls, patches], 1) + self.position_embeddings_for(gh, gw);
        let Some(registers) = &self.register_tokens else {
            return tokens;
        };
        let [_, t, c] = tokens.dims();
        Tensor::cat(
            vec![
                tokens.clone().slice([0..batch, 0..1, 0..c]),
                registers.val().repeat_dim(0, batch),
                tokens.slice([0..batch, 1..t, 0..c]),
            ],
            1,
        )
    }

    /// Position embeddings `[1, 1 + gh * gw, hidden]` for a `gh × gw` patch grid.
    pub fn position_embeddings_for(&self, gh: usize, gw: usize) -> Tensor<B, 3> {
        let kind = if self.antialias {
            Bicubic::Antialias
        } else {
            Bicubic::Plain
        };
        resize_position_embeddings(
            self.position_embeddings.val(),
            self.trained_grid,
            (gh, gw),
            kind,
        )
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Module, Debug)]
pub struct Dinov2PlainMlp<B: Backend> {
    pub fc1: Proj<B>,
    pub fc2: Proj<B>,
    act: HiddenAct,
}

/// `down_proj(silu(gate_proj(x)) * up_proj(x))` (the hub's fused `weights_in` is split on load).
#[derive(Module, Debug)]
pub struct Dinov2SwiGlu<B: Backend> {
    pub gate_proj: Proj<B>,
    pub up_proj: Proj<B>,
    pub down_proj: Proj<B>,
}

/// The block's MLP (enum variants are not part of module paths). One per layer, built once: the
/// size difference of the variants (two vs three projections) costs nothing worth a box.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Dinov2Mlp<B: Backend> {
    Plain(Dinov2PlainMlp<B>),
    SwiGlu(Dinov2SwiGlu<B>),
}

impl<B: crate::ModelBackend> Dinov2Mlp<B> {
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            Dinov2Mlp::Plain(m) => m.fc2.forward(m.act.forward(m.fc1.forward(x))),
            Dinov2Mlp::SwiGlu(m) => {
                let gate = HiddenAct::Silu.forward(m.gate_proj.forward(x.clone()));
                m.down_proj.forward(gate * m.up_proj.forward(x))
            }
        }
    }

    /// The projections' names under `mlp.`, in order.
    fn names(&self) -> &'static [&'static str] {
        match self {
            Dinov2Mlp::Plain(_) => &["fc1", "fc2"],
            Dinov2Mlp::SwiGlu(_) => &["gate_proj", "up_proj", "down_proj"],
        }
    }
}

/// Pre-norm transformer block with LayerScale.
#[derive(Module, Debug)]
pub struct Dinov2Layer<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attention: VitAttention<B>,
    pub layer_scale1: LayerScale<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Dinov2Mlp<B>,
    pub layer_scale2: LayerScale<B>,
    drop_path_rate: f64,
}

impl<B: crate::ModelBackend> Dinov2Layer<B> {
    /// `[batch, tokens, hidden]` → `[batch, tokens, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.attention.forward(self.norm1.forward(x.clone()));
        let x = drop_path(self.layer_scale1.forward(h), self.drop_path_rate) + x;
        let h = self.mlp.forward(self.norm2.forward(x.clone()));
        drop_path(self.layer_scale2.forward(h), self.drop_path_rate) + x
    }
}

/// The stack of blocks (`encoder.layer`).
#[derive(Module, Debug)]
pub struct Dinov2Encoder<B: Backend> {
    pub layer: Vec<Dinov2Layer<B>>,
}

/// DINOv2 without pooler: embeddings → blocks → final `layernorm`.
#[derive(Module, Debug)]
pub struct Dinov2Model<B: Backend> {
    pub embeddings: Dinov2Embeddings<B>,
    pub encoder: Dinov2Encoder<B>,
    pub layernorm: LayerNorm<B>,
    hidden_size: usize,
    patch_size: usize,
    num_channels: usize,
    num_register_tokens: usize,
    /// Whether the snapshot format has `embeddings.mask_token` (for exports).
    mask_token: bool,
}

impl<B: Backend> Dinov2Model<B> {
    /// Whether the checkpoint format carries `embeddings.mask_token` (`[1, hidden]`).
    pub fn has_mask_token(&self) -> bool {
        self.mask_token
    }
}

impl<B: crate::ModelBackend> Dinov2Model<B> {
    /// Random init as transformers (trunc-normal `initializer_range`, zero biases, LayerScale
    /// `layerscale_value`).
    pub fn random(config: &Dinov2Config, device: &B::Device) -> Result<Self, VitError> {
        config.validate(Path::new("<in-memory config>"))?;
        Self::build(
            config,
            &mut RandomInit {
                device: device.clone(),
            },
        )
    }

    pub(crate) fn build(
        config: &Dinov2Config,
        src: &mut impl ParamSource<B>,
    ) -> Result<Self, VitError> {
        let act = HiddenAct::parse(&config.hidden_act).ok_or_else(|| VitError::Config {
            path: "config.json".into(),
            message: format!("hidden_act `{}` is not supported", config.hidden_act),
        })?;
        let c = config.hidden_size;
        let n = config.mlp_width();
        let std = config.initializer_range;
        let eps = config.layer_norm_eps;
        let bias = config.qkv_bias;
        let (th, tw) = config.trained_grid();
        let registers = config.num_register_tokens;
        let embeddings = Dinov2Embeddings {
            cls_token: Param::from_tensor(src.tensor(
                "embeddings.cls_token",
                [1, 1, c],
                Init::TruncNormal(std),
            )),
            register_tokens: (registers > 0).then(|| {
                Param::from_tensor(src.tensor(
                    "embeddings.register_tokens",
                    [1, registers, c],
                    Init::Zeros,
                ))
            }),
            patch_embeddings: Dinov2PatchEmbeddings {
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
            antialias: config.with_registers,
        };
        let mut layer = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let proj = |src: &mut _, name: &str, d_in, d_out, bias| {
                linear(src, &format!("{p}.{name}"), d_in, d_out, bias, std)
            };
            let attention = VitAttention {
                q_proj: proj(src, "attention.q_proj", c, c, bias),
                k_proj: proj(src, "attention.k_proj", c, c, bias),
                v_proj: proj(src, "attention.v_proj", c, c, bias),
                o_proj: proj(src, "attention.o_proj", c, c, true),
                num_heads: config.num_attention_heads,
            };
            let norm1 = layer_norm(src, &format!("{p}.norm1"), c, eps);
            let layer_scale1 = layer_scale(
                src,
                &format!("{p}.layer_scale1"),
                c,
                config.layerscale_value,
            );
            let norm2 = layer_norm(src, &format!("{p}.norm2"), c, eps);
            let mlp = if config.use_swiglu_ffn {
                Dinov2Mlp::SwiGlu(Dinov2SwiGlu {
                    gate_proj: proj(src, "mlp.gate_proj", c, n, true),
                    up_proj: proj(src, "mlp.up_proj", c, n, true),
                    down_proj: proj(src, "mlp.down_proj", n, c, true),
                })
            } else {
                Dinov2Mlp::Plain(Dinov2PlainMlp {
                    fc1: proj(src, "mlp.fc1", c, n, true),
                    fc2: proj(src, "mlp.fc2", n, c, true),
                    act,
                })
            };
            let layer_scale2 = layer_scale(
                src,
                &format!("{p}.layer_scale2"),
                c,
                config.layerscale_value,
            );
            layer.push(Dinov2Layer {
                norm1,
                attention,
                layer_scale1,
                norm2,
                mlp,
                layer_scale2,
                drop_path_rate: config.drop_path_rate,
            });
        }
        Ok(Self {
            embeddings,
            encoder: Dinov2Encoder { layer },
            layernorm: layer_norm(src, "layernorm", c, eps),
            hidden_size: c,
            patch_size: config.patch_size,
            num_channels: config.num_channels,
            num_register_tokens: registers,
            mask_token: config.use_mask_token,
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
        let layers = std::mem::take(&mut self.encoder.layer);
        for (i, mut l) in layers.into_iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            l.attention = l.attention.map_projections(&format!("{p}.attention"), f)?;
            l.mlp = match l.mlp {
                Dinov2Mlp::Plain(m) => Dinov2Mlp::Plain(Dinov2PlainMlp {
                    fc1: f(&format!("{p}.mlp.fc1"), m.fc1)?,
                    fc2: f(&format!("{p}.mlp.fc2"), m.fc2)?,
                    act: m.act,
                }),
                Dinov2Mlp::SwiGlu(m) => Dinov2Mlp::SwiGlu(Dinov2SwiGlu {
                    gate_proj: f(&format!("{p}.mlp.gate_proj"), m.gate_proj)?,
                    up_proj: f(&format!("{p}.mlp.up_proj"), m.up_proj)?,
                    down_proj: f(&format!("{p}.mlp.down_proj"), m.down_proj)?,
                }),
            };
            self.encoder.layer.push(l);
        }
        Ok(self)
    }

    /// HF paths of all projections: per layer q, k, v, o, then fc1, fc2 or gate, up, down.
    pub fn projection_paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        for (i, l) in self.encoder.layer.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            for name in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                paths.push(format!("{p}.attention.{name}"));
            }
            for name in l.mlp.names() {
                paths.push(format!("{p}.mlp.{name}"));
            }
        }
        paths
    }
}

impl<B: crate::ModelBackend> TokenStack<B> for Dinov2Model<B> {
    /// What every block of one forward shares: the patch grid (no RoPE).
    fn block_context(&self, dims: [usize; 4], _device: &B::Device) -> BlockContext<B> {
        let [_, _, h, w] = dims;
        BlockContext {
            grid: [h / self.patch_size, w / self.patch_size],
            rope: None,
        }
    }

    /// `pixel_values [batch, channels, H, W]` → tokens `[batch, 1 + R + N, hidden]`.
    fn embed(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        self.embeddings.forward(pixel_values)
    }

    /// Number of transformer blocks.
    fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }

    /// Block `i`: tokens `[batch, tokens, hidden]` → the same shape.
    fn block(&self, i: usize, x: Tensor<B, 3>, _ctx: &BlockContext<B>) -> Tensor<B, 3> {
        self.encoder.layer[i].forward(x)
    }

    /// The final `layernorm` and the patch grid `[batch, H/p, W/p, hidden]`.
    fn finish(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>) -> BackboneOutput<B> {
        BackboneOutput::from_tokens(
            self.layernorm.forward(x),
            1 + self.num_register_tokens,
            ctx.grid,
        )
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
