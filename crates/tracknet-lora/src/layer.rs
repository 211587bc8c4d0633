//! `LoraLinear`: a base linear layer (dense or 4-bit) plus an optional low-rank adapter.
//!
//! `y = base(x) + dropout(x) · Aᵀ · Bᵀ · scaling` with PEFT's shapes `A: [r, in]`,
//! `B: [out, r]`. Burn keeps a linear weight as `[in, out]`, so `lora_a.weight` here is `Aᵀ`
//! (`[in, r]`) and `lora_b.weight` is `Bᵀ` (`[r, out]`); the PEFT I/O transposes.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use tracknet_quant::linear::{CodeBooks, QuantSpec, QuantizedLinear};
use tracknet_quant::ops::QuantBackend;

use crate::config::{LoraInit, LoraSettings};
use crate::error::LoraError;

/// The frozen (or, without LoRA, trainable) layer under the adapter.
#[derive(Module, Debug)]
pub enum BaseLinear<B: Backend> {
    /// A dense f32 layer.
    Dense(Linear<B>),
    /// A 4-bit layer.
    Quant(QuantizedLinear<B>),
}

impl<B: QuantBackend> BaseLinear<B> {
    /// `x [..., in] → [..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Self::Dense(l) => tracknet_quant::dense::linear_layer(l, x),
            Self::Quant(q) => q.forward(x),
        }
    }
}

impl<B: Backend> BaseLinear<B> {
    /// `(in_features, out_features)`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Self::Dense(l) => {
                let [i, o] = l.weight.dims();
                (i, o)
            }
            Self::Quant(q) => (q.layout.in_features, q.layout.out_features),
        }
    }

    /// Whether the base is 4-bit.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quant(_))
    }

    /// The bias parameter, if any.
    pub fn bias(&self) -> Option<&Param<Tensor<B, 1>>> {
        match self {
            Self::Dense(l) => l.bias.as_ref(),
            Self::Quant(q) => q.bias.as_ref(),
        }
    }
}

/// Configuration of a fresh [`LoraLinear`]: a dense base initialised like `torch.nn.Linear`
/// (Kaiming-uniform a = √5, so U(±1/√d_input)), and no adapter yet — PEFT's order: the base
/// layer exists, then an adapter is attached ([`LoraLinear::with_adapter`]) or the base is
/// quantized ([`LoraLinear::quantize`]). Existing layers are wrapped with [`LoraLinear::dense`]
/// and [`LoraLinear::quantized`].
#[derive(Config, Debug)]
pub struct LoraLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// Whether the base has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl LoraLinearConfig {
    /// The layer on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LoraLinear<B> {
        LoraLinear::dense(tracknet_quant::torch_linear(
            self.d_input,
            self.d_output,
            self.bias,
            device,
        ))
    }
}

/// A linear layer that may carry a LoRA adapter. Every backbone projection has this type, with
/// or without an adapter, so quantizing and wrapping never change the model's type.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The wrapped layer.
    pub base: BaseLinear<B>,
    /// `A` as a Burn linear `in → r` (weight `[in, r]` = PEFT `lora_A.weight`ᵀ).
    pub lora_a: Option<Linear<B>>,
    /// `B` as a Burn linear `r → out` (weight `[r, out]` = PEFT `lora_B.weight`ᵀ).
    pub lora_b: Option<Linear<B>>,
    /// Dropout on the adapter's input (identity outside training).
    pub lora_dropout: Option<Dropout>,
    /// `alpha / r` or `alpha / sqrt(r)`.
    #[module(skip)]
    pub scaling: f64,
    /// Whether the adapter is folded into a dense base weight.
    #[module(skip)]
    pub merged: bool,
}

impl<B: Backend> LoraLinear<B> {
    /// Wrap a dense layer, no adapter.
    pub fn dense(linear: Linear<B>) -> Self {
        Self {
            base: BaseLinear::Dense(linear),
            lora_a: None,
            lora_b: None,
            lora_dropout: None,
            scaling: 0.0,
            merged: false,
        }
    }

    /// Wrap a 4-bit layer (e.g. one read from a bitsandbytes snapshot), no adapter.
    pub fn quantized(layer: QuantizedLinear<B>) -> Self {
        Self {
            base: BaseLinear::Quant(layer),
            lora_a: None,
            lora_b: None,
            lora_dropout: None,
            scaling: 0.0,
            merged: false,
        }
    }

    /// Build from PyTorch tensors: `weight [out, in]`, `bias [out]` (transposed once here).
    pub fn from_torch(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        let [d_out, d_in] = weight.dims();
        let mut layer = LinearConfig::new(d_in, d_out)
            .with_bias(bias.is_some())
            .init(&weight.device());
        layer.weight = Param::from_tensor(weight.transpose().detach());
        layer.bias = bias.map(|b| Param::from_tensor(b.detach()));
        Self::dense(layer)
    }

    /// `(in_features, out_features)`.
    pub fn dims(&self) -> (usize, usize) {
        self.base.dims()
    }

    /// Rank of the adapter, if any.
    pub fn rank(&self) -> Option<usize> {
        self.lora_a.as_ref().map(|a| a.weight.dims()[1])
    }

    /// Whether an adapter is attached.
    pub fn has_adapter(&self) -> bool {
        self.lora_a.is_some()
    }

    /// Attach a fresh adapter and freeze the base weight (its bias is left to the bias mode).
    pub fn with_adapter(
        mut self,
        settings: &LoraSettings,
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        settings.validate()?;
        let (d_in, d_out) = self.dims();
        let r = settings.r;
        let uniform = |fan_in: usize| {
            let b = 1.0 / (fan_in as f64).sqrt();
            Initializer::Uniform { min: -b, max: b }
        };
        let a = LinearConfig::new(d_in, r)
            .with_bias(false)
            .with_initializer(uniform(d_in))
            .init(device);
        let b_init = match settings.init {
            LoraInit::PeftDefault => Initializer::Zeros,
            LoraInit::RandomB => uniform(r),
        };
        let b = LinearConfig::new(r, d_out)
            .with_bias(false)
            .with_initializer(b_init)
            .init(device);
        self.lora_a = Some(a);
        self.lora_b = Some(b);
        self.lora_dropout =
            (settings.dropout > 0.0).then(|| DropoutConfig::new(settings.dropout).init());
        self.scaling = settings.scaling();
        self.merged = false;
        self.base = freeze_base_weight(self.base);
        Ok(self)
    }

    /// Set adapter weights from PEFT tensors `A [r, in]`, `B [out, r]`.
    pub fn set_adapter_weights(
        &mut self,
        a: Tensor<B, 2>,
        b: Tensor<B, 2>,
    ) -> Result<(), LoraError> {
        let (d_in, d_out) = self.dims();
        let [r, ai] = a.dims();
        let [bo, br] = b.dims();
        if ai != d_in || bo != d_out || br != r {
            return Err(LoraError::Invalid {
                key: "adapter".into(),
                message: format!(
                    "expected lora_A [r, {d_in}] and lora_B [{d_out}, r], got {:?} and {:?}",
                    a.dims(),
                    b.dims()
                ),
            });
        }
        let (Some(la), Some(lb)) = (self.lora_a.as_mut(), self.lora_b.as_mut()) else {
            return Err(LoraError::Invalid {
                key: "adapter".into(),
                message: "layer has no adapter to load into".into(),
            });
        };
        if la.weight.dims()[1] != r {
            return Err(LoraError::Invalid {
                key: "lora.r".into(),
                message: format!(
                    "adapter rank {r} differs from the layer's rank {}",
                    la.weight.dims()[1]
                ),
            });
        }
        la.weight = Param::from_tensor(a.transpose().detach());
        lb.weight = Param::from_tensor(b.transpose().detach());
        Ok(())
    }

    /// PEFT tensors `(A [r, in], B [out, r])`, if an adapter is attached.
    pub fn adapter_weights(&self) -> Option<(Tensor<B, 2>, Tensor<B, 2>)> {
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => Some((a.weight.val().transpose(), b.weight.val().transpose())),
            _ => None,
        }
    }

    /// The low-rank update `scaling · Aᵀ·Bᵀ` in Burn layout `[in, out]`.
    fn delta(&self) -> Option<Tensor<B, 2>> {
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => Some(
                a.weight
                    .val()
                    .matmul(b.weight.val())
                    .mul_scalar(self.scaling),
            ),
            _ => None,
        }
    }

    /// Fold the adapter into a dense base weight (forward unchanged, one matmul cheaper).
    /// A 4-bit base cannot hold the sum: use [`LoraLinear::merge_and_unload`].
    pub fn merge(&mut self) -> Result<(), LoraError> {
        if self.merged {
            return Ok(());
        }
        let Some(delta) = self.delta() else {
            return Ok(());
        };
        match &mut self.base {
            BaseLinear::Dense(l) => {
                let w = l.weight.val() + delta;
                l.weight = Param::from_tensor(w.detach()).set_require_grad(false);
                self.merged = true;
                Ok(())
            }
            BaseLinear::Quant(_) => Err(LoraError::Invalid {
                key: "merge".into(),
                message: "a 4-bit base cannot hold the merged weight; use merge_and_unload (dequantizes to f32)".into(),
            }),
        }
    }

    /// Undo [`LoraLinear::merge`].
    pub fn unmerge(&mut self) {
        if !self.merged {
            return;
        }
        if let (Some(delta), BaseLinear::Dense(l)) = (self.delta(), &mut self.base) {
            let w = l.weight.val() - delta;
            l.weight = Param::from_tensor(w.detach()).set_require_grad(false);
        }
        self.merged = false;
    }
}

impl<B: QuantBackend> LoraLinear<B> {
    /// Whether the update goes through [`tracknet_quant::low_rank`]'s node: a backend with host
    /// kernels, f32 (no autocast region), factors without bias (PEFT's default).
    fn fused_update(&self, a: &Linear<B>, b: &Linear<B>, device: &B::Device) -> bool {
        B::host_dense()
            && tracknet_quant::autocast::active::<B>(device).is_none()
            && a.bias.is_none()
            && b.bias.is_none()
    }

    /// PEFT's LoRA forward: `base(x) + scaling · B(A(dropout(x)))` (the base alone when
    /// there is no adapter or it is merged).
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = self.base.forward(x.clone());
        match (&self.lora_a, &self.lora_b, self.merged) {
            (Some(a), Some(b), false) if self.fused_update(a, b, &x.device()) => {
                // One node (NdArray): the mask is regenerated in the backward, not stored.
                let drop = self.lora_dropout.as_ref().and_then(|d| {
                    (d.prob > 0.0 && B::ad_enabled(&x.device())).then(|| {
                        tracknet_quant::low_rank::DropMask::new(
                            1.0 - d.prob,
                            crate::rng::mask_state::<B>(x.shape().num_elements(), &x.device()),
                        )
                    })
                });
                tracknet_quant::low_rank::low_rank_update(
                    y,
                    x,
                    a.weight.val(),
                    b.weight.val(),
                    self.scaling as f32,
                    drop,
                )
            }
            (Some(a), Some(b), false) => {
                // Burn's `Dropout` math, its mask drawn through `rng` (a shard's own stream).
                let x = match &self.lora_dropout {
                    Some(d) => crate::rng::dropout(x, d.prob),
                    None => x,
                };
                use tracknet_quant::dense::linear_layer;
                y + linear_layer(b, linear_layer(a, x)).mul_scalar(self.scaling)
            }
            _ => y,
        }
    }

    /// Quantize the (dense) base in place; a LoRA adapter, if any, is kept (QLoRA order:
    /// quantize first, then wrap).
    pub fn quantize(mut self, spec: QuantSpec, books: &CodeBooks<B>) -> Result<Self, LoraError> {
        if self.merged {
            self.unmerge();
        }
        if let BaseLinear::Dense(l) = &self.base {
            let q = QuantizedLinear::from_linear(l, spec, books)?;
            self.base = BaseLinear::Quant(q);
        }
        Ok(self)
    }

    /// A plain dense layer with the adapter folded in. On a 4-bit base this dequantizes: the
    /// weight goes back to full precision (4 bytes per weight).
    pub fn merge_and_unload(self) -> Linear<B> {
        let delta = if self.merged { None } else { self.delta() };
        let (weight, bias) = match self.base {
            BaseLinear::Dense(l) => (l.weight.val(), l.bias.map(|b| b.val())),
            BaseLinear::Quant(q) => (q.dequantize(), q.bias.map(|b| b.val())),
        };
        let weight = match delta {
            Some(d) => weight + d,
            None => weight,
        };
        let [d_in, d_out] = weight.dims();
        let mut l = LinearConfig::new(d_in, d_out)
            .with_bias(bias.is_some())
            .init(&weight.device());
        l.weight = Param::from_tensor(weight.detach());
        l.bias = bias.map(|b| Param::from_tensor(b.detach()));
        l
    }
}

fn freeze_base_weight<B: Backend>(base: BaseLinear<B>) -> BaseLinear<B> {
    match base {
        BaseLinear::Dense(mut l) => {
            l.weight = l.weight.set_require_grad(false);
            BaseLinear::Dense(l)
        }
        // 4-bit weights are constants; nothing to freeze.
        q @ BaseLinear::Quant(_) => q,
    }
}
