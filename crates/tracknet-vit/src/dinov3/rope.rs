//! DINOv3's 2-D rotary position embedding on the patch tokens.
//!
//! Patch centres are normalised to `[-1, 1]` per axis (`(i + 0.5) / n * 2 - 1`), the angle of
//! frequency `j` on axis `a` is `2π · coord_a · θ^(-4j / head_dim)`, and the `[y-angles,
//! x-angles]` vector is tiled twice to cover `head_dim`, as transformers computes it.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::rng::uniform;

use super::Dinov3Config;

/// RoPE settings; holds no parameters (the frequencies are fixed by the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov3Rope {
    /// `[head_dim / 4]`: `1 / theta^(4j / head_dim)`.
    inv_freq: Vec<f32>,
    shift: Option<f64>,
    jitter: Option<f64>,
    rescale: Option<f64>,
}

impl Dinov3Rope {
    pub fn new(config: &Dinov3Config) -> Self {
        let head_dim = config.hidden_size / config.num_attention_heads;
        let step = 4.0 / head_dim as f64;
        let inv_freq = (0..head_dim / 4)
            .map(|j| (1.0 / config.rope_theta.powf(j as f64 * step)) as f32)
            .collect();
        Self {
            inv_freq,
            shift: config.pos_embed_shift,
            jitter: config.pos_embed_jitter,
            rescale: config.pos_embed_rescale,
        }
    }

    /// The same embedding without the training-time coordinate augmentation (shift, jitter
    /// and rescale off): training sees the coordinates inference uses.
    pub fn without_augmentation(self) -> Self {
        Self {
            shift: None,
            jitter: None,
            rescale: None,
            ..self
        }
    }

    /// Whether training perturbs the patch coordinates (shift, jitter or rescale set).
    pub fn augments(&self) -> bool {
        let on = |r: Option<f64>, neutral: f64| r.is_some_and(|v| v.is_finite() && v != neutral);
        on(self.shift, 0.0) || on(self.jitter, 1.0) || on(self.rescale, 1.0)
    }

    /// `(cos, sin)`, each `[gh * gw, head_dim]`, for a `gh × gw` patch grid. With `training`,
    /// the coordinates get the config's random shift / jitter / rescale first.
    pub fn cos_sin<B: Backend>(
        &self,
        gh: usize,
        gw: usize,
        training: bool,
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let n = gh * gw;
        let q = self.inv_freq.len();
        // The grid's coordinates and the frequencies live on the device once per grid; without
        // augmentation so do the angles' cos and sin.
        let key = format!("rope {gh}x{gw} {:?}", self.inv_freq);
        let (coords, inv_freq) = crate::layers::consts::cached::<B, _>(key.clone(), device, || {
            let mut coords = Vec::with_capacity(n * 2);
            for y in 0..gh {
                for x in 0..gw {
                    coords.push(2.0 * ((y as f32 + 0.5) / gh as f32) - 1.0);
                    coords.push(2.0 * ((x as f32 + 0.5) / gw as f32) - 1.0);
                }
            }
            let coords: Tensor<B, 2> = Tensor::from_data(TensorData::new(coords, [n, 2]), device);
            let inv_freq: Tensor<B, 3> =
                Tensor::from_data(TensorData::new(self.inv_freq.clone(), [1, 1, q]), device);
            (coords, inv_freq)
        });
        let augments = training && self.augments();
        if !augments {
            return crate::layers::consts::cached::<B, _>(key + " cos sin", device, || {
                Self::angles(coords, inv_freq)
            });
        }
        Self::angles(self.augment(coords), inv_freq)
    }

    /// `(cos, sin)` of the angles of `coords` `[n, 2]` at frequencies `inv_freq` `[1, 1, q]`.
    fn angles<B: Backend>(
        coords: Tensor<B, 2>,
        inv_freq: Tensor<B, 3>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [n, _] = coords.dims();
        let q = inv_freq.dims()[2];
        // [n, 2, 1] * [1, 1, q] -> [n, 2q] (y frequencies, then x frequencies)
        let angles = (coords.reshape([n, 2, 1]) * (2.0 * std::f64::consts::PI) * inv_freq)
            .reshape([n, 2 * q]);
        let angles = Tensor::cat(vec![angles.clone(), angles], 1);
        (angles.clone().cos(), angles.sin())
    }

    /// transformers' `augment_patches_center_coordinates`. `coords`: `[n, 2]`.
    fn augment<B: Backend>(&self, mut coords: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = coords.device();
        // A zero range is a no-op (as in torch) but an empty range for Burn's sampler: skip it.
        let range = |r: f64| (r.is_finite() && r != 0.0).then_some(r.abs());
        if let Some(s) = self.shift.and_then(range) {
            coords = coords + uniform([1, 2], -s, s, &device);
        }
        if let Some(r) = self.jitter.map(f64::ln).and_then(range) {
            coords = coords * uniform([1, 2], -r, r, &device).exp();
        }
        if let Some(r) = self.rescale.map(f64::ln).and_then(range) {
            coords = coords * uniform([1, 1], -r, r, &device).exp();
        }
        coords
    }
}

/// Rotate the last `cos.dims()[0]` tokens of `x [batch, heads, tokens, head_dim]`; the leading
/// CLS/register tokens pass unchanged. `cos`, `sin`: `[patches, head_dim]`.
/// ([`crate::fused::rope`]: one host kernel with its adjoint as backward on NdArray.)
pub(crate) fn apply<B: crate::fused::FusedBackend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Tensor<B, 4> {
    crate::fused::rope(x, cos, sin)
}
