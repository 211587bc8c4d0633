//! Tokens in and out of a backbone: the input check, patch flattening, the patch grid the
//! decoder reads, and stochastic depth on the residual branches.

use burn::prelude::*;

use crate::error::VitError;

/// Output of a backbone forward pass.
#[derive(Debug, Clone)]
pub struct BackboneOutput<B: Backend> {
    /// Final-norm output, `[batch, 1 + registers + patches, hidden]` (CLS first, then register
    /// tokens, then patch tokens in row-major order), exactly transformers' `last_hidden_state`.
    pub last_hidden_state: Tensor<B, 3>,
    /// Patch tokens only, `[batch, H/patch, W/patch, hidden]`.
    pub patch_grid: Tensor<B, 4>,
}

impl<B: Backend> BackboneOutput<B> {
    /// The output for the final norm's tokens `[batch, prefix + gh * gw, hidden]`: the patch
    /// grid is the tail after the `prefix` tokens (CLS, registers), row-major on `grid`.
    pub fn from_tokens(last_hidden_state: Tensor<B, 3>, prefix: usize, grid: [usize; 2]) -> Self {
        let [gh, gw] = grid;
        let patch_grid = patch_grid(last_hidden_state.clone(), prefix, gh, gw);
        Self {
            last_hidden_state,
            patch_grid,
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

/// Stochastic depth (per-sample residual-branch drop), active only when autodiff is on, like
/// Burn's `Dropout`. `x`: `[batch, tokens, hidden]`.
pub(crate) fn drop_path<B: Backend>(x: Tensor<B, 3>, prob: f64) -> Tensor<B, 3> {
    let [b, _, _] = x.dims();
    crate::rng::dropout_shaped(x, prob, [b, 1, 1])
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
